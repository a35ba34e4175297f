"""The feature views' files: names, schemas, and atomic parquet writes.

Each view's source is a month-partitioned parquet directory under `<repo>/data/`, replaced whole
and atomically by `ViewFiles.write_view` (`storage.atomic_dir`: a new directory, then one rename
of the symlink that names it; what a killed write leaves is cleared on the next open);
`sources.json` records each view's current directory and tags (the repo's features.py reads it)
and `manifest.json` the build. The Feast side (registry, materialization, online store,
retrieval) is `featurestore.FeatureRepo`, which holds one of these.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from llmrec_ray.schemas import EMBEDDING, TIMESTAMP
from llmrec_ray.storage import atomic_dir, sweep, write_atomic

logger = logging.getLogger(__name__)

ITEM_TEXT_VIEW = "item_text_embedding"
ITEM_METADATA_VIEW = "item_metadata"
USER_HISTORY_VIEW = "user_history_embedding"
USER_STATS_VIEW = "user_stats"
ITEM_STATS_VIEW = "item_stats"
ITEM_TOWER_VIEW = "item_tower_embedding"  # written by `llmrec train`: the trained model's item vectors
USER_TOWER_VIEW = "user_tower_embedding"
MANIFEST = "manifest.json"
SOURCES = "sources.json"  # view -> source directory and tags; features.py reads it
PARTITION = "month"  # hive partition column of every view's parquet (from event_timestamp)


@dataclass(frozen=True)
class ViewSpec:
    """What a view's source parquet must hold besides its key and event_timestamp."""

    key: str
    columns: dict
    embedding: bool = False  # vectors of one encoder: written under a directory of that encoder


def _stats_columns(windows):
    return {"n_interactions": pa.int64(), "mean_rating": pa.float32(),
            "last_interaction_unix": pa.int64(), **{f"n_{w}": pa.int64() for w in windows}}


VIEWS = {
    ITEM_TEXT_VIEW: ViewSpec("item_id", {"embedding": EMBEDDING, "n_tokens": pa.int64(),
                                         "truncated": pa.bool_()}, embedding=True),
    ITEM_METADATA_VIEW: ViewSpec("item_id", {"title": pa.string(), "genres": pa.string()}),
    USER_HISTORY_VIEW: ViewSpec("user_id", {"embedding": EMBEDDING, "n_tokens": pa.int64(),
                                            "truncated": pa.bool_(), "n_history": pa.int64()},
                                embedding=True),
    USER_STATS_VIEW: ViewSpec("user_id", _stats_columns(("30d",))),
    ITEM_STATS_VIEW: ViewSpec("item_id", _stats_columns(("7d", "30d"))),
    ITEM_TOWER_VIEW: ViewSpec("item_id", {"embedding": EMBEDDING}, embedding=True),
    USER_TOWER_VIEW: ViewSpec("user_id", {"embedding": EMBEDDING}, embedding=True),
}


VIEW_KEYS = {name: spec.key for name, spec in VIEWS.items()}

BUILT_VIEWS = (ITEM_TEXT_VIEW, ITEM_METADATA_VIEW, USER_HISTORY_VIEW, USER_STATS_VIEW, ITEM_STATS_VIEW)

TEXT_VIEWS = (ITEM_TEXT_VIEW, USER_HISTORY_VIEW)  # the encoder's vectors


def encoder_id(encoder_key: str | None) -> str:
    """Short, stable directory name of an encoder's vectors."""
    return "enc-" + hashlib.sha256((encoder_key or "unspecified").encode()).hexdigest()[:12]


def validate_view(view: str, table: pa.Table) -> pa.Table:
    """The view's table conformed to its spec, or a ValueError naming the view, column and row.

    Checked before anything is written: every declared column present and castable (no other
    columns), the entity key a string, event_timestamp timezone-aware, no null key or timestamp,
    one row per (key, event_timestamp), and for embedding views one non-empty vector length.
    """
    if view not in VIEWS:
        raise ValueError(f"unknown feature view {view!r} (known: {sorted(VIEWS)})")
    spec = VIEWS[view]
    wanted = {spec.key: pa.string(), "event_timestamp": TIMESTAMP, **spec.columns}
    missing = [c for c in wanted if c not in table.column_names]
    extra = [c for c in table.column_names if c not in wanted]
    if missing or extra:
        raise ValueError(f"{view}: schema mismatch: missing columns {missing}, unexpected columns "
                         f"{extra} (expected {list(wanted)})")
    key_type = table.schema.field(spec.key).type
    if not (pa.types.is_string(key_type) or pa.types.is_large_string(key_type)):
        raise ValueError(f"{view}: entity key {spec.key!r} has type {key_type}; the Feast entity is a "
                         "STRING (cast the ids to strings)")
    ts_type = table.schema.field("event_timestamp").type
    if not pa.types.is_timestamp(ts_type) or ts_type.tz is None:
        raise ValueError(f"{view}: event_timestamp has type {ts_type}; expected a timezone-aware "
                         "timestamp (UTC)")
    columns = {}
    for name, typ in wanted.items():
        try:
            columns[name] = table.column(name).cast(typ)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            raise ValueError(f"{view}: column {name!r} of type {table.schema.field(name).type} "
                             f"cannot be read as {typ}: {e}") from None
    out = pa.table(columns)
    for name in (spec.key, "event_timestamp"):
        nulls = out.column(name).is_null()
        if pc.any(nulls).as_py():
            row = pc.index(nulls, True).as_py()
            raise ValueError(f"{view}: {name} is null in row {row}")
    pairs = out.select([spec.key, "event_timestamp"])
    counted = pairs.group_by([spec.key, "event_timestamp"]).aggregate([([], "count_all")])
    if counted.num_rows != out.num_rows:
        dup = counted.filter(pc.greater(counted.column("count_all"), 1)).slice(0, 1).to_pylist()[0]
        raise ValueError(f"{view}: duplicate ({spec.key}, event_timestamp) rows, e.g. "
                         f"{dup[spec.key]!r} at {dup['event_timestamp']} ({dup['count_all']} rows); "
                         "the point-in-time join would be ambiguous")
    if spec.embedding and out.num_rows:
        lengths = pc.list_value_length(out.column("embedding"))
        bad = pc.or_kleene(lengths.is_null(), pc.equal(lengths, 0))
        if pc.any(bad).as_py():
            raise ValueError(f"{view}: row {pc.index(bad, True).as_py()} has no vector")
        lo, hi = pc.min(lengths).as_py(), pc.max(lengths).as_py()
        if lo != hi:
            raise ValueError(f"{view}: vectors of different lengths ({lo} and {hi}): two encoders mixed")
    return out


class ViewFiles:
    """The view files of one Feast repository directory (`<path>/data/`).

    `encoder_changed`: the views written with another encoder than their previous rows; their
    online rows are stale (the owner of the Feast store drops them and clears the set).
    """

    def __init__(self, repo_path: str | Path):
        self.path = Path(repo_path).resolve()
        self.data_dir = self.path / "data"
        self.encoder_changed: set[str] = set()
        if self.data_dir.exists():
            sweep(self.data_dir)  # what a killed write left (storage.atomic_dir)

    def sources(self) -> dict:
        path = self.data_dir / SOURCES
        return json.loads(path.read_text()) if path.exists() else {}

    def source_path(self, view: str) -> Path:
        """The directory of the view's current source parquet (partitioned by month)."""
        entry = self.sources().get(view)
        return self.path / entry["path"] if entry else self.data_dir / view

    def read_view(self, view: str, columns: list[str] | None = None) -> pa.Table:
        """The view's current source rows (without the partition column)."""
        path = self.source_path(view)
        if not path.exists():
            raise FileNotFoundError(f"feature view {view!r}: its source {path} does not exist; "
                                    "run `llmrec build-features` first")
        # resolved once: the files listed and the files read are of one version of the view
        ds = pads.dataset(str(path.resolve()), format="parquet", partitioning="hive")
        names = [c for c in ds.schema.names if c != PARTITION] if columns is None else columns
        return ds.to_table(columns=names)

    def write_view(self, view: str, table: pa.Table, encoder_key: str | None = None,
                   tags: dict | None = None) -> Path:
        """Validate, then replace the view's source with `table`, partitioned by month.

        Idempotent: the same table written twice leaves the same rows (a build replaces its views,
        it never appends). Atomic (`storage.atomic_dir`): the partitions go to a new directory
        that takes the old one's place in one rename, so a reader sees the old rows or the new
        ones, never a mix and never none. An embedding view lives under a directory of its
        encoder (`enc-<hash>`), with the encoder in its tags: a build with another model writes
        beside, never into, the old vectors, and the online rows of the old model are dropped on
        the next `apply`.
        """
        table = validate_view(view, table)
        spec = VIEWS[view]
        tags = {**(tags or {})}
        dest = self.data_dir / view
        if spec.embedding:
            dest = dest / encoder_id(encoder_key)
            dim = len(table.column("embedding")[0]) if table.num_rows else 0
            tags.update(encoder_key=encoder_key or "unspecified", dim=str(dim))
        with atomic_dir(dest) as tmp:
            _write_partitions(table, tmp)
        sources = self.sources()
        previous = sources.get(view, {}).get("tags", {}).get("encoder_key")
        if spec.embedding and previous not in (None, tags["encoder_key"]):
            self.encoder_changed.add(view)
        sources[view] = {"path": str(dest.relative_to(self.path)), "rows": table.num_rows,
                         "tags": {k: str(v) for k, v in tags.items()}}
        self._write_json(SOURCES, sources)
        logger.info("wrote %s: %d rows -> %s", view, table.num_rows, dest)
        return dest

    def _write_json(self, name: str, data: dict) -> None:
        write_atomic(self.data_dir / name, json.dumps(data, indent=2, default=str))

    def write_manifest(self, manifest: dict) -> None:
        self._write_json(MANIFEST, manifest)

    def read_manifest(self) -> dict:
        path = self.data_dir / MANIFEST
        if not path.exists():
            raise FileNotFoundError(f"{path}: no features built yet; run `llmrec build-features` first")
        return json.loads(path.read_text())


def _write_partitions(table: pa.Table, directory: Path) -> None:
    """`table` as hive partitions by month (`month=YYYY-MM/part-0.parquet`) into the empty
    `directory`; an empty table as one empty file that carries the schema."""
    if not table.num_rows:
        pq.write_table(table, directory / "part-0.parquet")
        return
    month = pc.strftime(table.column("event_timestamp"), format="%Y-%m")
    pads.write_dataset(table.append_column(PARTITION, month), directory, format="parquet",
                       partitioning=[PARTITION], partitioning_flavor="hive",
                       basename_template="part-{i}.parquet")


def embedding_matrix(column) -> np.ndarray:
    """A column of equal-length vectors (fixed-size or variable list<float>, or a pandas/object
    column of arrays) -> (N, D) float32.

    A missing vector (null or empty) is an error: callers decide before this what to do with them.
    """
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if isinstance(column, pa.Array):
        if column.null_count:
            raise ValueError(f"{column.null_count} rows have no vector (first at position "
                             f"{pc.index(column.is_null(), True).as_py()})")
        if pa.types.is_fixed_size_list(column.type):
            flat = column.flatten().to_numpy(zero_copy_only=False)
            return np.asarray(flat, np.float32).reshape(len(column), column.type.list_size)
        column = column.to_pylist()
    values = [None if v is None else np.asarray(v, dtype=np.float32) for v in column]
    bad = [i for i, v in enumerate(values) if v is None or v.size == 0]
    if bad:
        raise ValueError(f"{len(bad)} rows have no vector (first at position {bad[0]})")
    return np.stack(values) if values else np.zeros((0, 0), np.float32)
