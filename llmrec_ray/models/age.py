"""Item age at the query time as a learned logit term (`train.item_age`).

Whether a user picks an item depends on how long the item has been out when they choose: films
are watched around their release, and an item released after the query cannot be picked at all.
No tower sees this: an item's text vector is the same at every query time. `ItemAge` adds a
learned bias b[bucket(t_query - released_item)] to every (query, item) logit, for the two-tower
and hybrid models, in training (each row's time against every in-batch item's release) and at
scoring. Items without a release date share their own bucket. A cold item (no training
interaction) has a release date as soon as its metadata does, so it gets the term like any
other item.

The buckets are fixed, in days: before release (< 0), then [0, 7), [7, 30), [30, 90),
[90, 180), [180, 365), [365, 730), [730, 1825), >= 1825, and unknown. The release time of every
item row of the vocabulary (days since the epoch, NaN = unknown) is a buffer: it travels in the
checkpoint with the bias.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch import nn

EDGES_DAYS = (0.0, 7.0, 30.0, 90.0, 180.0, 365.0, 730.0, 1825.0)
N_BUCKETS = len(EDGES_DAYS) + 2  # before release, one per edge, unknown
US_PER_DAY = 86_400 * 1_000_000


def days_by_id(table: pa.Table, column: str, ids: list[str]) -> np.ndarray:
    """(len(ids),) float64: the timestamp `column` of `table`'s row with each `item_id` of `ids`,
    in days since the epoch; NaN for a null or an id the table lacks."""
    order = pc.index_in(pa.array(ids, pa.string()), value_set=table.column("item_id").combine_chunks())
    col = table.column(column).combine_chunks().cast(pa.timestamp("us", tz="UTC")).cast(pa.int64())
    return np.asarray(col.take(order).to_numpy(zero_copy_only=False), dtype=np.float64) / US_PER_DAY


def released_days(items: pa.Table, item_ids: list[str]) -> np.ndarray:
    """(I,) float64 release time of each of `item_ids` in days since the epoch: the items table's
    `released`, else its `available_from`; NaN where the item has neither."""
    out = np.full(len(item_ids), np.nan)
    for name in ("available_from", "released"):  # released, where set, wins
        if name in items.column_names:
            values = days_by_id(items, name, item_ids)
            out = np.where(np.isnan(values), out, values)
    return out


def times_days(times) -> np.ndarray:
    """Query times (anything pandas reads as UTC times) -> (Q,) float64 days since the epoch."""
    import pandas as pd

    t = pd.to_datetime(pd.Series(list(times) if not isinstance(times, pd.Series) else times), utc=True)
    return t.astype("datetime64[us, UTC]").astype("int64").to_numpy() / US_PER_DAY


def buckets(age_days: torch.Tensor) -> torch.Tensor:
    """Ages in days (NaN = unknown release) -> bucket indices (same shape, int64)."""
    edges = torch.tensor(EDGES_DAYS, dtype=age_days.dtype, device=age_days.device)
    b = torch.bucketize(age_days, edges, right=True)  # < 0 -> 0, [0, 7) -> 1, ..., >= 1825 -> 8
    return torch.where(torch.isnan(age_days), torch.full_like(b, N_BUCKETS - 1), b)


class ItemAge(nn.Module):
    """`tables` = 2 (the hybrid): one bias per bucket for items whose ID the model knows at the
    query, one for items it does not (a cold item: age is then most of what is known of it)."""

    def __init__(self, n_items: int, tables: int = 1):
        super().__init__()
        self.bias = nn.Embedding(N_BUCKETS * tables, 1)
        nn.init.zeros_(self.bias.weight)  # starts neutral
        # float64 days: float32 would round today's ~20,000 days to ~0.002 day, fine, but keep exact
        self.register_buffer("released", torch.full((n_items,), float("nan"), dtype=torch.float64))

    def set_released(self, days) -> None:
        days = torch.as_tensor(np.asarray(days, dtype=np.float64))
        if days.shape != self.released.shape:
            raise ValueError(f"item_age: {tuple(days.shape)} release times for {len(self.released)} items")
        self.released.copy_(days)

    def forward(self, query_days: torch.Tensor, item_rows: torch.Tensor | None = None,
                unknown: torch.Tensor | None = None) -> torch.Tensor:
        """(Q,) query times in days, item rows (I,) of the vocabulary (None: every item, in
        order), `unknown` (with two tables) True where the item's ID is unknown at the query,
        (I,) or (Q, I) -> (Q, I) logit terms."""
        released = self.released if item_rows is None else self.released[item_rows]
        age = query_days.to(torch.float64).unsqueeze(1) - released.unsqueeze(0)
        b = buckets(age)
        if unknown is not None:
            b = b + N_BUCKETS * unknown.expand_as(b).long()
        return self.bias(b).squeeze(-1).to(self.bias.weight.dtype)
