"""Model inputs shared by training, evaluation and serving: user statistics as features, and
the hybrid model's ID rows of users and items (-1, the unknown ID, for those training never saw).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from llmrec_ray.featurestore import USER_STATS_VIEW

USER_EXTRA_DIM = 4


def user_extra_features(frame) -> np.ndarray:
    """User statistics as of each row (Feast's user_stats columns, a pandas frame or an Arrow
    table) -> (N, 4) float32: log counts, mean rating / 5, log days since the last interaction
    (0 for a user without one)."""
    def col(name):
        c = frame[name] if isinstance(frame, pd.DataFrame) else frame.column(name).to_pandas()
        return c.fillna(0).to_numpy(np.float64)

    n = col(f"{USER_STATS_VIEW}__n_interactions")
    mean = col(f"{USER_STATS_VIEW}__mean_rating")
    n30 = col(f"{USER_STATS_VIEW}__n_30d")
    last = col(f"{USER_STATS_VIEW}__last_interaction_unix")
    ts = frame["event_timestamp"] if isinstance(frame, pd.DataFrame) else frame.column("event_timestamp").to_pandas()
    now = pd.to_datetime(ts, utc=True).astype("datetime64[us, UTC]").astype("int64").to_numpy() / 1e6
    days = np.where(n > 0, np.maximum(now - last, 0) / 86_400, 0.0)
    return np.stack([np.log1p(n), mean / 5.0, np.log1p(n30), np.log1p(days)], axis=1).astype(np.float32)


def user_id_index(vocab: dict, users: list[str]) -> torch.Tensor:
    """Hybrid ID rows of `users` in a checkpoint's vocabulary (`vocab["users"]`); -1 (the unknown
    ID) for a user absent from the training rows."""
    known = {u: k for k, u in enumerate(vocab["users"])}
    return torch.tensor([known.get(u, -1) for u in users], dtype=torch.long)


def item_id_index(vocab: dict, item_ids: list[str]) -> torch.Tensor:
    """Hybrid ID rows of `item_ids` in a checkpoint's vocabulary (`vocab["items"]`); -1 (the
    unknown ID) for an item without training interactions (`vocab["trained_items"]`)."""
    position = {i: k for k, i in enumerate(vocab["items"])}
    trained = set(vocab["trained_items"])
    return torch.tensor([position.get(i, -1) if i in trained else -1 for i in item_ids], dtype=torch.long)
