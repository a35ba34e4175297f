"""The Ray side of point-in-time retrieval: what a Ray task needs, without importing Feast.

Kept apart from `offline_store.py` so that Ray workers import pyarrow and numpy only (Feast takes
seconds to import, in every worker). Its interface, used by the offline store:

- `ViewPlan`: one feature view's parquet files, keys, timestamps and requested features (small,
  shipped to tasks); `plan_rows(plan)`: its source's row count.
- `positions(plan, index_of, block, ts_col)`: each entity row's feature row position, from the
  view's `pit.FeatureIndex` (`LocalIndex(plan)` builds it in this process); `gather` then takes
  the feature values at those positions.
- Ray task functions: `build_index(plan, bucket, buckets)` (one hash bucket's FeatureIndex) and
  `feature_table(plan)` (the requested feature columns, in position order).
- `join_block`: the map_batches function that turns one block of entity rows into the same rows
  with their features (or with their positions, `position_column`).
- `entity_timestamp_column(schema)`, `blocks(table, rows)`: the entity rows' time column, and
  an in-memory table cut into Ray Data blocks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from llmrec_ray.pit import FeatureIndex, bucket_of, combined_key, micros

ENTITY_TS = "event_timestamp"


@dataclass(frozen=True)
class ViewPlan:
    """What retrieval needs of one feature view; small and picklable (shipped to Ray tasks)."""

    name: str                 # the projection's name (output column prefix)
    files: tuple              # the source's parquet files, sorted: position = row in their concat
    filesystem: Any           # pyarrow filesystem of `files`
    source_keys: tuple        # join key columns in the source
    entity_keys: tuple        # the same keys' columns in the entity rows (join_key_map applied)
    ts_field: str
    created_field: str | None
    features: tuple           # (source column, output column) pairs
    ttl_us: int | None = None

    def read(self, columns: list[str]) -> pa.Table:
        """`columns` of every source file, concatenated in file order (the row positions)."""
        parts = [pq.read_table(f, columns=columns, filesystem=self.filesystem) for f in self.files]
        if not parts:
            raise FileNotFoundError(f"feature view {self.name!r}: its source has no parquet files")
        return pa.concat_tables(parts, promote_options="permissive")

    def index(self, bucket: int = 0, buckets: int = 1) -> FeatureIndex:
        """The view's (or one hash bucket's) join keys and timestamps, sorted for lookups."""
        cols = list(self.source_keys) + [self.ts_field] + ([self.created_field] if self.created_field else [])
        narrow = self.read(cols)
        keys = combined_key([narrow.column(k) for k in self.source_keys])
        try:
            ts = micros(narrow.column(self.ts_field))
        except ValueError as e:
            raise ValueError(f"feature view {self.name!r}: {self.ts_field} {e}") from None
        created = (micros(narrow.column(self.created_field), null_as=np.iinfo(np.int64).min)
                   if self.created_field else None)
        rows = np.arange(narrow.num_rows, dtype=np.int64)
        if buckets > 1:
            mine = bucket_of(keys, buckets) == bucket
            keys, ts, rows = keys.filter(pa.array(mine)), ts[mine], rows[mine]
            created = created[mine] if created is not None else None
        try:
            return FeatureIndex.build(keys, ts, rows, created)
        except ValueError as e:
            raise ValueError(f"feature view {self.name!r}: {e}") from None

    def feature_table(self) -> pa.Table:
        """The requested feature columns under their output names; equal-length float lists as
        fixed-size float32 lists (one vector length per view)."""
        table = self.read([src for src, _ in self.features])
        columns = {}
        for src, out in self.features:
            col = table.column(src).combine_chunks()
            columns[out] = fixed_size(col)
        return pa.table(columns)


def fixed_size(col: pa.Array) -> pa.Array:
    """A list<float> column without nulls whose rows all have one length d ->
    fixed_size_list<float32, d> (numpy-ready); any other column unchanged."""
    if not (pa.types.is_list(col.type) or pa.types.is_large_list(col.type)) or \
            not pa.types.is_floating(col.type.value_type) or col.null_count or len(col) == 0:
        return col  # (a null vector has no values to flatten: it stays a variable-length list)
    lo, hi = pc.min_max(pc.list_value_length(col)).values()
    if lo.as_py() != hi.as_py() or lo.as_py() == 0:
        return col
    return pa.FixedSizeListArray.from_arrays(pc.list_flatten(col).cast(pa.float32()), lo.as_py())


def gather(features: pa.Table, positions: np.ndarray) -> pa.Table:
    """Rows of `features` at `positions` (-1 -> nulls)."""
    return features.take(pa.array(positions, pa.int64(), mask=positions < 0))


def entity_timestamp_column(schema: pa.Schema) -> str:
    """Feast's rule: `event_timestamp`, else the entity rows' only timestamp column."""
    if ENTITY_TS in schema.names:
        return ENTITY_TS
    stamps = [f.name for f in schema if pa.types.is_timestamp(f.type)]
    if len(stamps) == 1:
        return stamps[0]
    raise ValueError(f"entity_df: no {ENTITY_TS!r} column and {len(stamps)} timestamp columns "
                     f"({stamps}): name the entity rows' time column {ENTITY_TS!r}")


def positions(plan: ViewPlan, index_of, block: pa.Table, ts_col: str) -> np.ndarray:
    """(rows,) feature row position of every entity row of `block` in `plan`'s view (-1: none).
    `index_of(bucket)` returns the FeatureIndex of a bucket; `index_of.buckets` their count."""
    missing = [k for k in plan.entity_keys if k not in block.column_names]
    if missing:
        raise ValueError(f"entity_df lacks {missing}, the join keys of feature view {plan.name!r}")
    keys = combined_key([block.column(k) for k in plan.entity_keys])
    try:
        ts = micros(block.column(ts_col))
    except ValueError as e:
        raise ValueError(f"entity_df: {ts_col} {e}") from None
    buckets = index_of.buckets
    if buckets == 1:
        return index_of(0).lookup(keys, ts, plan.ttl_us)
    out = np.full(block.num_rows, -1, np.int64)
    bucket = bucket_of(keys, buckets)
    for b in np.unique(bucket):
        rows = np.flatnonzero(bucket == b)
        out[rows] = index_of(int(b)).lookup(keys.take(pa.array(rows)), ts[rows], plan.ttl_us)
    return out


class LocalIndex:
    """`index_of` for `positions` in this process: one bucket, the view's whole index, built here."""

    buckets = 1

    def __init__(self, plan: ViewPlan):
        self._index = plan.index()

    def __call__(self, bucket: int) -> FeatureIndex:
        return self._index


class _RefIndex:
    """index_of for Ray tasks: the buckets' FeatureIndex objects from the object store."""

    def __init__(self, refs: list):
        self.refs, self.buckets, self._got = refs, len(refs), {}

    def __call__(self, bucket: int) -> FeatureIndex:
        import ray

        if bucket not in self._got:
            self._got[bucket] = ray.get(self.refs[bucket])
        return self._got[bucket]


def position_column(view: str) -> str:
    """The column that carries a view's feature row positions (`to_ray_dataset(by_position=)`)."""
    return f"{view}__position"


def join_block(block: pa.Table, plans: list, index_refs: list, feature_refs: list,
               ts_col: str, precomputed: bool, by_position: tuple = ()) -> pa.Table:
    """Ray Data map_batches function: one entity block -> the same rows with their features, or,
    for the views in `by_position`, with the position of their feature row (-1: none).

    Per plan k: `index_refs[k]` the ObjectRefs of its buckets' FeatureIndex (`build_index`),
    `feature_refs[k]` the ObjectRef of its feature columns (`feature_table`); `precomputed`: the
    positions are already in the block's `__pos_<k>` columns (computed in the driver), which are
    dropped."""
    import ray

    out = block
    for k, plan in enumerate(plans):
        pos_col = f"__pos_{k}"
        if precomputed:
            pos = np.asarray(block.column(pos_col).to_numpy(zero_copy_only=False), np.int64)
            out = out.drop_columns([pos_col])
        else:
            pos = positions(plan, _RefIndex(index_refs[k]), block, ts_col)
        if plan.name in by_position:
            out = out.append_column(position_column(plan.name), pa.array(pos, pa.int64()))
            continue
        feats = gather(ray.get(feature_refs[k]), pos)
        for name in feats.column_names:
            out = out.append_column(name, feats.column(name))
    return out


def build_index(plan: ViewPlan, bucket: int, buckets: int) -> FeatureIndex:
    """Ray task: the FeatureIndex of one of `buckets` hash buckets of the view's keys."""
    return plan.index(bucket, buckets)


def feature_table(plan: ViewPlan) -> pa.Table:
    """Ray task: the view's requested feature columns, in position order (`ViewPlan.feature_table`)."""
    return plan.feature_table()


def plan_rows(plan: ViewPlan) -> int:
    """Rows of a view's source (from the parquet footers)."""
    return sum(pq.ParquetFile(f, filesystem=plan.filesystem).metadata.num_rows for f in plan.files)


def blocks(table: pa.Table, rows: int) -> list[pa.Table]:
    """`table` cut into slices of `rows` rows (at least one slice, empty for an empty table)."""
    return [table.slice(i, rows) for i in range(0, max(table.num_rows, 1), rows)]
