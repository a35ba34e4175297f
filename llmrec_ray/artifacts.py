"""The trained model's artifacts: building a model from its hyperparameters, the served
checkpoint (`<run_dir>/model/model.pt`: weights, hyperparameters, kind and ID vocabulary),
loading it, the served blend (`<run_dir>/model/blend.npz`: the peer's fitted arrays, the weight
chosen on validation, tied to the checkpoint it was tuned with), and exporting its vectors back
into Feast as views.
"""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

import pyarrow as pa
import torch

from llmrec_ray.featurestore import FeatureRepo
from llmrec_ray.storage import atomic_file
from llmrec_ray.views import ITEM_TEXT_VIEW, USER_HISTORY_VIEW, USER_STATS_VIEW
from llmrec_ray.model_inputs import user_extra_features
from llmrec_ray.models.graph import LLMGraph
from llmrec_ray.models.two_tower import TwoTower

MODEL_FILE = "model.pt"
BLEND_FILE = "blend.npz"
logger = logging.getLogger(__name__)


def build_model(kind: str, kwargs: dict, graph: dict | None = None):
    """A model of `kind` from its hyperparameters; the graph model also takes its training graph
    and item vectors (`graph`: edge_users, edge_items, item_emb), which its checkpoint carries."""
    if kind == "llm_graph":
        model = LLMGraph(**kwargs, edge_users=None if graph is None else graph["edge_users"],
                         edge_items=None if graph is None else graph["edge_items"])
        if graph is not None:
            model.set_item_vectors(torch.from_numpy(graph["item_emb"]))
        return model
    return TwoTower(**kwargs)


def save_model(state: dict, kind: str, vocab: dict, run_dir: Path) -> Path:
    """The served model: a training checkpoint's weights, hyperparameters and training state,
    without the optimizer, plus the model kind and ID vocabulary."""
    out = Path(run_dir) / "model"
    state = {k: v for k, v in state.items() if k != "optimizer"}
    with atomic_file(out / MODEL_FILE) as tmp:
        torch.save({**state, "kind": kind, "vocab": vocab}, tmp)
    (out / BLEND_FILE).unlink(missing_ok=True)  # a blend is tuned with one checkpoint: evaluate again
    return out / MODEL_FILE


def _model_digest(run_dir: Path) -> str:
    return hashlib.sha256((Path(run_dir) / "model" / MODEL_FILE).read_bytes()).hexdigest()


def save_blend(run_dir: Path, blend, item_ids: list[str]) -> Path | None:
    """Keep the scorer `evaluate` chose to serve for `recommend`: a `recommender.Blend` of the
    run's trained model with a fitted peer (the peer's arrays (`state()`), its parameters, the
    weight and new-item boost, the items the peer scores), or a fitted scorer served alone (a
    peer or a closed-form model with `state()`, when validation put it above the trained model's
    every form), with `item_ids` (their order) and the checkpoint's digest.
    None, the trained model itself, or a scorer without `state()` (ALS, BPR, popularity): None,
    any earlier file is removed, and `recommend` serves the trained model alone."""
    from llmrec_ray.recommender import Blend

    path = Path(run_dir) / "model" / BLEND_FILE
    alone = blend is not None and not isinstance(blend, Blend)
    peer = blend if alone else (None if blend is None else blend.b)
    if peer is None or not hasattr(peer, "state"):
        if peer is not None and not getattr(peer, "model", None):
            logger.info("%s is not kept for serving; recommend serves the trained model alone",
                        peer.name)
        path.unlink(missing_ok=True)
        return None
    meta = {"peer": peer.name, "params": peer.params, "alone": alone,
            "weight": None if alone else blend.weight,
            "cold_boost": 0.0 if alone else blend.cold_boost, "model_sha256": _model_digest(run_dir)}
    b_items = None if alone else blend.b_items
    with atomic_file(path) as tmp:
        np.savez(tmp, meta=np.array(json.dumps(meta)), item_ids=np.array(item_ids, dtype=str),
                 b_items=b_items if b_items is not None else np.ones(len(item_ids), bool),
                 **{f"peer_{k}": v for k, v in peer.state().items()})
    return path


def load_blend(run_dir: Path, trained, item_ids: list[str]):
    """The scorer `save_blend` kept for this run's checkpoint (a `Blend` with `trained`, or a
    scorer served alone), over `item_ids` (the model's vocabulary order), or None when there is
    none. One tuned with another checkpoint or another item list is an error: evaluate again."""
    from llmrec_ray.baselines import BASELINES
    from llmrec_ray.recommender import Blend

    path = Path(run_dir) / "model" / BLEND_FILE
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    meta = json.loads(str(arrays["meta"]))
    if meta["model_sha256"] != _model_digest(run_dir):
        raise ValueError(f"{path}: tuned with another checkpoint than {MODEL_FILE}; run `llmrec "
                         "evaluate` again (or recommend --model-only)")
    if arrays["item_ids"].tolist() != list(item_ids):
        raise ValueError(f"{path}: its items differ from the model's vocabulary; run `llmrec "
                         "evaluate` again (or recommend --model-only)")
    peer = BASELINES[meta["peer"]].restore(meta["params"], {k[5:]: v for k, v in arrays.items()
                                                            if k.startswith("peer_")})
    if meta.get("alone"):
        return peer
    return Blend(trained, peer, meta["weight"], arrays["b_items"], meta.get("cold_boost", 0.0))


def load_model(run_dir: Path):
    """The trained model of a run, with its ID vocabulary (`model.vocab`: users, items,
    trained_items) from the checkpoint."""
    path = run_dir / "model" / MODEL_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: no trained model; run `llmrec train` first")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if "vocab" not in state:
        raise ValueError(f"{path}: a checkpoint without its vocabulary (users, items, "
                         "trained_items); run `llmrec train` again")
    model = build_model(state.get("kind", "two_tower"), state["hparams"])
    model.load_state_dict(state["state_dict"])
    model.vocab = state["vocab"]
    return model.eval()


def export_towers(repo: FeatureRepo, model, model_dir: Path, encoder_key: str,
                  fingerprint: str) -> dict[str, int]:
    """Write the trained model's vectors back as Feast views and put them online.

    item_tower_embedding: one vector per item text row; user_tower_embedding: one per user
    snapshot (history embedding + statistics of that snapshot), for the models that have user
    vectors per snapshot (`model.export_vectors` says which: the graph model folds users in from
    their history at request time, so it exports items only). Tagged with the encoder and the
    trained model.
    """
    from datetime import timedelta

    import pyarrow.compute as pc

    from llmrec_ray.views import ITEM_TOWER_VIEW, USER_TOWER_VIEW
    from llmrec_ray.schemas import EMBEDDING

    items = repo.read_view(ITEM_TEXT_VIEW, columns=["item_id", "event_timestamp", "embedding"])
    users = repo.read_view(USER_HISTORY_VIEW, columns=["user_id", "event_timestamp", "embedding"])
    stats = repo.read_view(USER_STATS_VIEW).to_pandas()
    frame = users.select(["user_id", "event_timestamp"]).to_pandas().merge(
        stats, on=["user_id", "event_timestamp"], how="left", validate="one_to_one")
    user_extra = user_extra_features(frame, frame["event_timestamp"])  # each snapshot's statistics
    with torch.inference_mode():
        vectors = model.export_vectors(items, users, user_extra)
    key = f"{encoder_key}|model={fingerprint}"
    tags = {"model_fingerprint": fingerprint, "dim": str(vectors["items"].shape[1])}
    views = [(ITEM_TOWER_VIEW, items, vectors["items"])]
    if "users" in vectors:
        views.append((USER_TOWER_VIEW, users, vectors["users"]))
    for view, table, v in views:
        out = table.select([0, 1]).append_column("embedding", pa.array(list(v), EMBEDDING))
        repo.write_view(view, out, encoder_key=key, tags=tags)
    repo.apply()
    ts = pa.concat_arrays([t.column("event_timestamp").combine_chunks() for _, t, _ in views])
    start = pc.min(ts).as_py() - timedelta(seconds=1)
    end = max(pc.max(ts).as_py(), datetime.now(timezone.utc)) + timedelta(seconds=1)
    return repo.materialize(start, end, [view for view, _, _ in views])
