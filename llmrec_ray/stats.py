"""User and item statistics as point-in-time snapshots: one group function per user / item, run
as a Ray Data groupby on the cluster from `ray_min_rows` rows on (featurestore.stats_ray_min_rows,
default a million), in the calling process below.

The point-in-time rule is the one of the user snapshots (docs/design.md): a snapshot at `s` covers the
interactions with timestamp `< s`, so a training row at interaction time `t` joined to the newest
snapshot at or before `t` never sees its own interaction.

- **User stats** are taken at the user's snapshot times (one row per `user_history_embedding`
  row, whatever `serialize.user_vectors`): interactions so far, mean rating, time of the last
  interaction, interactions in the last 30 days.
- **Item stats** are taken at the start of the item's life (all zeros: a cold item has stats, not
  nulls) and at the first `every` boundary after any value changed: after an interaction, and after
  an interaction leaves the 7- or 30-day popularity window.

On Ray the work is a `groupby(key).map_groups(...)` over interactions and snapshot times
together, so it runs on every node of the cluster; each group is sorted once and answered with
cumulative sums and binary search. Below `ray_min_rows` rows the same group function runs in the
calling process: the table is already there, and a Ray Data shuffle costs seconds of scheduling on
any size of input.
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from llmrec_ray.schemas import TIMESTAMP

logger = logging.getLogger(__name__)

DAY_US = 86_400 * 1_000_000
WINDOWS = {"7d": 7 * DAY_US, "30d": 30 * DAY_US}
USER_WINDOWS = ("30d",)
ITEM_WINDOWS = ("7d", "30d")

USER_STATS = pa.schema([("user_id", pa.string()), ("event_timestamp", TIMESTAMP),
                        ("n_interactions", pa.int64()), ("mean_rating", pa.float32()),
                        ("last_interaction_unix", pa.int64()), ("n_30d", pa.int64())])
ITEM_STATS = pa.schema([("item_id", pa.string()), ("event_timestamp", TIMESTAMP),
                        ("n_interactions", pa.int64()), ("mean_rating", pa.float32()),
                        ("last_interaction_unix", pa.int64()), ("n_7d", pa.int64()),
                        ("n_30d", pa.int64())])


def stats_at(ts: np.ndarray, ratings: np.ndarray, snaps: np.ndarray, windows: tuple[str, ...]) -> dict:
    """Statistics of the interactions at sorted times `ts` (µs) with `ratings` (NaN = unrated), as
    of each snapshot time in `snaps`, counting only interactions with `t < s`.

    mean_rating is 0 when nothing rated is covered; last_interaction_unix is 0 when nothing is.
    """
    covered = np.searchsorted(ts, snaps, side="left")  # interactions with t < s
    rated = ~np.isnan(ratings)
    n_rated = np.concatenate([[0], np.cumsum(rated)])
    sum_rated = np.concatenate([[0.0], np.cumsum(np.where(rated, ratings, 0.0))])
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n_rated[covered] > 0, sum_rated[covered] / np.maximum(n_rated[covered], 1), 0.0)
    last = np.where(covered > 0, ts[np.maximum(covered - 1, 0)] // 1_000_000, 0) if len(ts) else \
        np.zeros(len(snaps), dtype=np.int64)
    out = {"n_interactions": covered.astype(np.int64), "mean_rating": mean.astype(np.float32),
           "last_interaction_unix": last.astype(np.int64)}
    for w in windows:
        start = np.searchsorted(ts, snaps - WINDOWS[w], side="left")  # t >= s - w
        out[f"n_{w}"] = (covered - start).astype(np.int64)
    return out


def item_snapshot_times(ts: np.ndarray, every_us: int, start_us: int) -> np.ndarray:
    """`start_us`, and the first `every` boundary after each interaction and after each
    interaction leaves each popularity window; sorted, distinct."""
    marks = [ts] + [ts + WINDOWS[w] for w in ITEM_WINDOWS]
    boundaries = (np.concatenate(marks) // every_us + 1) * every_us if len(ts) else np.array([], np.int64)
    return np.unique(np.concatenate([[start_us], boundaries[boundaries > start_us]]).astype(np.int64))


def _group_frame(key: str, interactions: pa.Table, marks: pa.Table) -> pa.Table:
    """Interactions (kind 0) and snapshot/start marks (kind 1) of every entity in one table."""
    inter = pa.table({
        "key": interactions.column(key).cast(pa.string()),
        "t": interactions.column("event_timestamp").cast(TIMESTAMP).cast(pa.int64()),
        "rating": pc.fill_null(interactions.column("rating").cast(pa.float64()), float("nan")),
        "kind": pa.array(np.zeros(interactions.num_rows, np.int8)),
    })
    snaps = pa.table({
        "key": marks.column(key).cast(pa.string()),
        "t": marks.column("event_timestamp").cast(TIMESTAMP).cast(pa.int64()),
        "rating": pa.array(np.full(marks.num_rows, np.nan)),
        "kind": pa.array(np.ones(marks.num_rows, np.int8)),
    })
    return pa.concat_tables([inter, snaps])


def _user_group(batch: pa.Table) -> pa.Table:
    kind = batch.column("kind").to_numpy()
    t = batch.column("t").to_numpy()
    rating = batch.column("rating").to_numpy()
    order = np.argsort(t[kind == 0], kind="stable")
    ts, r = t[kind == 0][order], rating[kind == 0][order]
    snaps = np.unique(t[kind == 1])
    s = stats_at(ts, r, snaps, USER_WINDOWS)
    key = batch.column("key")[0].as_py()
    return pa.table({"user_id": pa.array([key] * len(snaps), pa.string()),
                     "event_timestamp": pa.array(snaps).cast(TIMESTAMP), **s}, schema=USER_STATS)


def _item_group(batch: pa.Table, every_us: int) -> pa.Table:
    kind = batch.column("kind").to_numpy()
    t = batch.column("t").to_numpy()
    rating = batch.column("rating").to_numpy()
    order = np.argsort(t[kind == 0], kind="stable")
    ts, r = t[kind == 0][order], rating[kind == 0][order]
    start = int(t[kind == 1].min()) if (kind == 1).any() else int(ts.min())
    snaps = item_snapshot_times(ts, every_us, start)
    s = stats_at(ts, r, snaps, ITEM_WINDOWS)
    key = batch.column("key")[0].as_py()
    return pa.table({"item_id": pa.array([key] * len(snaps), pa.string()),
                     "event_timestamp": pa.array(snaps).cast(TIMESTAMP), **s}, schema=ITEM_STATS)


RAY_MIN_ROWS = 1_000_000  # default: from a million rows (interactions + marks) on, on the cluster


def _groups_here(frame: pa.Table, fn, fn_kwargs: dict) -> list[pa.Table]:
    """`fn` over each key's rows, in this process (what map_groups does on the cluster)."""
    if frame.num_rows == 0:
        return []
    frame = frame.sort_by("key")
    keys = frame.column("key").combine_chunks()
    changed = pc.fill_null(pc.not_equal(keys.slice(1), keys.slice(0, len(keys) - 1)), True)
    starts = np.concatenate([[0], np.flatnonzero(changed.to_numpy(zero_copy_only=False)) + 1])
    ends = np.append(starts[1:], frame.num_rows)
    return [fn(frame.slice(s, e - s), **fn_kwargs) for s, e in zip(starts, ends)]


def _run(frame: pa.Table, fn, schema: pa.Schema, fn_kwargs: dict | None = None,
         ray_min_rows: int = RAY_MIN_ROWS) -> pa.Table:
    if frame.num_rows < ray_min_rows:
        logger.info("%s: %d rows, in the driver (below featurestore.stats_ray_min_rows=%d)",
                    schema.names[0].removesuffix("_id") + " stats", frame.num_rows, ray_min_rows)
        tables = [t for t in _groups_here(frame, fn, fn_kwargs or {}) if t.num_rows]
    else:
        import ray

        ds = ray.data.from_arrow(frame)
        out = ds.groupby("key").map_groups(fn, batch_format="pyarrow", fn_kwargs=fn_kwargs or {})
        tables = [t for t in ray.get(out.to_arrow_refs()) if t.num_rows]
    if not tables:
        return schema.empty_table()
    result = pa.concat_tables([t.cast(schema) for t in tables])
    return result.sort_by([(schema.names[0], "ascending"), ("event_timestamp", "ascending")])


def user_stats(interactions: pa.Table, snapshots: pa.Table, ray_min_rows: int = RAY_MIN_ROWS) -> pa.Table:
    """One USER_STATS row per (user_id, event_timestamp) of `snapshots` (the user snapshots);
    on Ray from `ray_min_rows` rows (interactions + snapshots) on."""
    result = _run(_group_frame("user_id", interactions, snapshots.select(["user_id", "event_timestamp"])),
                  _user_group, USER_STATS, ray_min_rows=ray_min_rows)
    expected = snapshots.select(["user_id", "event_timestamp"]).group_by(["user_id", "event_timestamp"]) \
        .aggregate([]).num_rows
    if result.num_rows != expected:
        raise RuntimeError(f"user stats: {result.num_rows} rows for {expected} snapshots")
    return result


def item_stats(interactions: pa.Table, item_starts: pa.Table, every_us: int,
               ray_min_rows: int = RAY_MIN_ROWS) -> pa.Table:
    """ITEM_STATS snapshots for every item of `item_starts` (item_id, event_timestamp = the start of
    the item's life, as in the item text view); items without interactions get their start row.
    On Ray from `ray_min_rows` rows (interactions + items) on."""
    result = _run(_group_frame("item_id", interactions, item_starts.select(["item_id", "event_timestamp"])),
                  _item_group, ITEM_STATS, {"every_us": every_us}, ray_min_rows)
    missing = pc.invert(pc.is_in(item_starts.column("item_id"), value_set=result.column("item_id")))
    if pc.any(missing).as_py():
        raise RuntimeError(f"item stats: no rows for {pc.sum(missing).as_py()} items")
    return result
