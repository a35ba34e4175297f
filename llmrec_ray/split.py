"""Temporal splits. Pure functions over the interactions table.

`user_temporal_split`: each user's interactions in time order (ties by item id), the last
`test_fraction` of them (rounded down) are test. The user's split time is the timestamp of the first
test interaction; features for evaluation are taken as of that time. A user with too few
interactions for one test row stays entirely in train.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def user_temporal_split(interactions: pa.Table, test_fraction: float) -> tuple[pa.Table, pa.Table, pa.Table]:
    """Return (train, test, cuts) where cuts has one row per test user: user_id, split_time."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    order = pc.sort_indices(interactions, [("user_id", "ascending"), ("event_timestamp", "ascending"),
                                           ("item_id", "ascending")])
    t = interactions.take(order)
    users = t.column("user_id").combine_chunks()
    n = t.num_rows
    if n == 0:
        empty = pa.table({"user_id": pa.array([], pa.string()),
                          "split_time": pa.array([], t.schema.field("event_timestamp").type)})
        return t, t, empty
    codes = pc.dictionary_encode(users).indices.to_numpy(zero_copy_only=False)
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
    sizes = np.diff(np.r_[starts, n])
    n_test = np.floor(sizes * test_fraction + 1e-9).astype(np.int64)
    pos = np.arange(n) - np.repeat(starts, sizes)  # position within the user
    is_test = pos >= np.repeat(sizes - n_test, sizes)
    train, test = t.filter(pa.array(~is_test)), t.filter(pa.array(is_test))
    first_test = starts + sizes - n_test
    has_test = n_test > 0
    cuts = pa.table({"user_id": users.take(pa.array(first_test[has_test])),
                     "split_time": t.column("event_timestamp").take(pa.array(first_test[has_test]))})
    return train, test, cuts
