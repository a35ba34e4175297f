"""A checkpoint's ID vocabulary (`vocab`: the fit rows' users, every item, the items trained on)
and the ID rows it gives users and items; -1 is the unknown ID."""

from __future__ import annotations

import pyarrow as pa
import torch


def vocabulary(fit_rows: pa.Table, item_ids: list[str]) -> dict:
    """The checkpoint's ID vocabulary: the fit rows' users, every item, and the items trained on."""
    return {"users": sorted(set(fit_rows.column("user_id").to_pylist())), "items": list(item_ids),
            "trained_items": sorted(set(fit_rows.column("item_id").to_pylist()))}


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
