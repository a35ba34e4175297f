"""Top-K recommendations for a known user, or a new one described in words, served from the Feast
online store.

A known user's newest history embedding and statistics, and every item's text embedding and title,
come from the online store; the scorer `llmrec evaluate` chose on validation (the blend of the
trained model with a peer, or a closed-form model, `artifacts.load_blend`), or the trained model
(two-tower, hybrid or the LLM graph model), scores them through the `Recommender` interface; items
the user already interacted with are excluded. A new user in words is matched against the items'
text (`recommend_for_text`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from llmrec_ray.console import quiet
from llmrec_ray.featurestore import FeatureRepo
from llmrec_ray.views import (ITEM_METADATA_VIEW, ITEM_STATS_VIEW, ITEM_TEXT_VIEW, USER_HISTORY_VIEW,
                              USER_STATS_VIEW, embedding_matrix)
from llmrec_ray.model_inputs import STAT_COLUMNS, user_extra_features
from llmrec_ray.models.vocab import item_id_index, user_id_index
from llmrec_ray.recommender import Queries, TrainedModel


def recommend_for_user(repo: FeatureRepo, model, user_id: str, seen: set[str], k: int,
                       blend_dir=None) -> list[dict]:
    """[{rank, item_id, title, score, model}] for `user_id`, best first, `seen` excluded; with
    `blend_dir` (a run directory), scored by the blend evaluate kept there, if any."""
    refs = [f"{USER_HISTORY_VIEW}:embedding"] + [f"{USER_STATS_VIEW}:{f}" for f in STAT_COLUMNS]
    got = repo.online(refs, [{"user_id": user_id}])
    if got["embedding"][0] is None:
        raise ValueError(f"user {user_id!r} is not in the online store ({USER_HISTORY_VIEW}); known "
                       "users are those with interactions in the built dataset")
    user_emb = np.asarray(got["embedding"][0], dtype=np.float32)[None, :]  # (1, H)
    now = pd.Timestamp.now(tz="UTC")
    extra = user_extra_features({f: [got[f][0]] for f in STAT_COLUMNS}, [now])
    return _rank_items(repo, model, user_emb, extra, user_id, seen, k, blend_dir, now)


def text_match_scores(query: np.ndarray, item_emb: np.ndarray, counts: np.ndarray,
                      popularity: float) -> np.ndarray:
    """(I,) scores of a query in words: z(cos(query, item text)) + popularity *
    z(log1p(interactions)), z standardizing over the items (a constant column gives 0); items
    without text (zero vectors) come last (-inf)."""
    from llmrec_ray.recommender import has_text, standardize

    v = item_emb / np.maximum(np.linalg.norm(item_emb, axis=1, keepdims=True), 1e-12)
    q = query / max(float(np.linalg.norm(query)), 1e-12)
    cos = (v @ q)[None, :]  # (1, I)
    prior = np.log1p(np.asarray(counts, dtype=np.float64)).astype(np.float32)[None, :]
    scores = (standardize(cos) + popularity * standardize(prior))[0]
    scores[~has_text(item_emb)] = -np.inf  # an item without text cannot match words: last
    return scores


def recommend_for_text(repo: FeatureRepo, model, encode_cfg, text: str, k: int,
                       popularity: float = 0.5) -> list[dict]:
    """A brand-new user described in words, matched against the items' own text: the query is
    encoded with the features' encoder (same model, pooling, prompt), so it lies in the space of
    the item text vectors; items are ranked by that cosine with a popularity prior
    (`text_match_scores`; the items' interaction counts from the online item statistics).
    The trained user tower is not used: it learned from history texts, not from requests."""
    import torch

    from llmrec_ray.encode import encoder_kwargs
    from llmrec_ray.encoder import Encoder
    from llmrec_ray.text_model import dtype_name, resolve_model

    if not text.strip():
        raise ValueError("--text is empty")
    path, _ = resolve_model(encode_cfg.model)
    device = "cuda" if encode_cfg.device != "cpu" and torch.cuda.is_available() else "cpu"
    with quiet():  # transformers' weight-loading bar: to the log file
        enc = Encoder(**encoder_kwargs(encode_cfg, path, device=device,
                                       dtype=dtype_name(encode_cfg.dtype, device)))
    out = enc(pa.table({"text_hash": ["query"], "text": [text]}))
    query = np.asarray(out.column("embedding")[0].as_py(), dtype=np.float32)
    item_ids = model.vocab["items"]
    items = _online_items(repo, item_ids, [f"{ITEM_STATS_VIEW}:n_interactions"])
    counts = np.array([n or 0 for n in items["n_interactions"]], dtype=np.float64)
    scores = text_match_scores(query, embedding_matrix(items["embedding"]), counts, popularity)
    order = np.argsort(-scores, kind="stable")[:k]
    return [{"rank": r + 1, "item_id": item_ids[i], "title": items["title"][i],
             "score": float(scores[i]), "model": "text_match"} for r, i in enumerate(order)]


def _online_items(repo: FeatureRepo, item_ids: list[str], extra: list[str] = ()) -> dict:
    """Every item's text embedding and title (and `extra` features) from the online store."""
    items = repo.online([f"{ITEM_TEXT_VIEW}:embedding", f"{ITEM_METADATA_VIEW}:title", *extra],
                        [{"item_id": i} for i in item_ids])
    missing = [i for i, v in zip(item_ids, items["embedding"]) if v is None]
    if missing:
        raise ValueError(f"{len(missing)} items of the model are not in the online store "
                       f"({ITEM_TEXT_VIEW}; first: {missing[0]!r}): materialize the features again")
    return items


def _rank_items(repo: FeatureRepo, model, user_emb: np.ndarray, user_extra: np.ndarray,
                user_id: str | None, seen: set[str], k: int, blend_dir=None, now=None) -> list[dict]:
    """Score one user (their features, their history `seen`) at time `now` against every item of
    the model's vocabulary, with the items' features from the online store, through the model's
    `Recommender` interface; top k unseen, with titles."""
    from llmrec_ray.models.age import times_days

    from llmrec_ray.baselines import history_matrix

    if k < 1:
        raise ValueError(f"-k {k}: ask for at least one item")

    vocab = model.vocab
    item_ids = vocab["items"]
    items = _online_items(repo, item_ids)
    users = [user_id if user_id is not None else ""]
    features = {"user_emb": user_emb, "user_extra": user_extra,
                "item_emb": embedding_matrix(items["embedding"]),
                "user_idx": user_id_index(vocab, users).numpy(),
                "item_idx": item_id_index(vocab, item_ids).numpy(),
                "query_day": times_days([now if now is not None else pd.Timestamp.now(tz="UTC")])}
    known = set(item_ids)
    queries = Queries(history_matrix([[i for i in seen if i in known]], item_ids),
                      features["user_idx"].astype(np.int64), features)
    rec = TrainedModel(model)
    if blend_dir is not None:
        from llmrec_ray.artifacts import load_blend

        rec = load_blend(blend_dir, rec, item_ids) or rec
    scores = rec.score(queries)[0]
    out = []
    for i in np.argsort(-scores, kind="stable"):
        if item_ids[i] in seen:
            continue
        out.append({"rank": len(out) + 1, "item_id": item_ids[i], "title": items["title"][i],
                    "score": float(scores[i]), "model": rec.name})
        if len(out) == k:
            break
    return out
