"""Top-K recommendations for a known user, served from the Feast online store.

The user's newest history embedding and every item's text embedding and title come from the
online store; the trained towers score them; items the user already interacted with are excluded.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import torch

from llmrec_ray.featurestore import (ITEM_METADATA_VIEW, ITEM_TEXT_VIEW, USER_HISTORY_VIEW,
                                     USER_STATS_VIEW, FeatureRepo, embedding_matrix)
from llmrec_ray.train import user_extra_features


def recommend_for_user(repo: FeatureRepo, model, user_id: str, seen: set[str], k: int,
                       model_dir: Path | None = None) -> list[dict]:
    """[{rank, item_id, title, score}] for `user_id`, best first, `seen` excluded."""
    stats = ["n_interactions", "mean_rating", "n_30d", "last_interaction_unix"]
    refs = [f"{USER_HISTORY_VIEW}:embedding"] + [f"{USER_STATS_VIEW}:{f}" for f in stats]
    got = repo.online(refs, [{"user_id": user_id}])
    if got["embedding"][0] is None:
        raise KeyError(f"user {user_id!r} is not in the online store ({USER_HISTORY_VIEW}); known "
                       "users are those with interactions in the built dataset")
    user_emb = np.asarray(got["embedding"][0], dtype=np.float32)[None, :]  # (1, H)
    item_ids = pc.unique(repo.read_view(ITEM_TEXT_VIEW, columns=["item_id"]).column("item_id")).to_pylist()
    rows = [{"item_id": i} for i in item_ids]
    items = repo.online([f"{ITEM_TEXT_VIEW}:embedding", f"{ITEM_METADATA_VIEW}:title"], rows)
    item_emb = embedding_matrix(items["embedding"])  # (I, H)
    frame = pd.DataFrame({f"{USER_STATS_VIEW}__{f}": [got[f][0]] for f in stats})
    frame["event_timestamp"] = pd.Timestamp.now(tz="UTC")
    user_extra = torch.from_numpy(user_extra_features(frame))
    user_idx = item_idx = None
    if getattr(model, "hybrid", False):
        known = json.loads((model_dir / "users.json").read_text())
        if user_id not in known:
            raise KeyError(f"user {user_id!r} has no ID embedding in this hybrid model")
        trained = set(json.loads((model_dir / "trained_items.json").read_text()))
        user_idx = torch.tensor([known.index(user_id)])
        all_items = json.loads((model_dir / "items.json").read_text())
        position = {i: n for n, i in enumerate(all_items)}
        item_idx = torch.tensor([position[i] if i in trained else -1 for i in item_ids])
    with torch.inference_mode():
        scores = model.score(torch.from_numpy(user_emb), torch.from_numpy(item_emb), user_extra,
                             user_idx, item_idx)[0].numpy()
    order = np.argsort(-scores, kind="stable")
    out = []
    for i in order:
        if item_ids[i] in seen:
            continue
        out.append({"rank": len(out) + 1, "item_id": item_ids[i], "title": items["title"][i],
                    "score": float(scores[i])})
        if len(out) == k:
            break
    return out
