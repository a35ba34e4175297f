"""The Feast repository: write the feature parquet, apply, materialize, verify, retrieve.

`FeatureRepo` wraps one Feast repo directory (feature_store.yaml + declarations in features.py;
data under data/). Writes are atomic (temp file, then rename). Every materialization is followed by
a count check against the online store, because Feast has been seen to swallow write errors.
Historical retrieval goes through the project's offline store (`offline_store.py`), which keeps
one output row per entity row by construction.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from llmrec_ray.schemas import EMBEDDING, TIMESTAMP

logger = logging.getLogger(__name__)

ITEM_TEXT_VIEW = "item_text_embedding"
ITEM_METADATA_VIEW = "item_metadata"
USER_HISTORY_VIEW = "user_history_embedding"
USER_STATS_VIEW = "user_stats"
ITEM_STATS_VIEW = "item_stats"
ITEM_TOWER_VIEW = "item_tower_embedding"  # written by `llmrec train` (the trained item tower)
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


class FeatureRepo:
    """One Feast repository directory."""

    def __init__(self, repo_path: str | Path, offline_store: str | None = None,
                 online_store: str | None = None, redis_connection: str | None = None):
        self.path = Path(repo_path).resolve()
        if not (self.path / "feature_store.yaml").exists():
            raise FileNotFoundError(f"featurestore.repo_path: {self.path} has no feature_store.yaml")
        if online_store == "redis" and not redis_connection:
            raise ValueError("featurestore.online_store=redis needs a connection string "
                             "(host:port[,password=...]) in the environment variable named by "
                             "featurestore.redis_connection_env")
        self.data_dir = self.path / "data"
        self.offline_store, self.online_store = offline_store, online_store
        self._redis = redis_connection
        self._store = None
        self._drop_online: set[str] = set()  # views whose encoder changed: online rows to drop
        self._recover()

    @property
    def store(self):
        """The Feast FeatureStore of this repo. `offline_store` ("llmrec"/"file") and `online_store`
        ("sqlite"/"redis") override the YAML's; the Redis connection (a secret) stays in memory."""
        if self._store is None:
            from feast import FeatureStore

            if self.offline_store is None and self.online_store is None:
                self._store = FeatureStore(repo_path=str(self.path))
            else:
                import yaml
                from feast.repo_config import RepoConfig

                data = yaml.safe_load((self.path / "feature_store.yaml").read_text())
                from llmrec_ray.offline_store import STORE_TYPE

                wanted = {"llmrec": STORE_TYPE}.get(self.offline_store, self.offline_store)
                if wanted and (data.get("offline_store") or {}).get("type") != wanted:
                    data["offline_store"] = {"type": wanted}
                if self.online_store == "redis":
                    data["online_store"] = {"type": "redis", "connection_string": self._redis}
                elif self.online_store == "sqlite" and (data.get("online_store") or {}).get("type") != "sqlite":
                    data["online_store"] = {"type": "sqlite", "path": "data/online_store.db"}
                self._store = FeatureStore(config=RepoConfig(repo_path=self.path, **data),
                                           repo_path=str(self.path))
        return self._store

    # ---- writing -------------------------------------------------------------------------------
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
        ds = pads.dataset(str(path), format="parquet", partitioning="hive")
        names = [c for c in ds.schema.names if c != PARTITION] if columns is None else columns
        return ds.to_table(columns=names)

    def write_view(self, view: str, table: pa.Table, encoder_key: str | None = None,
                   tags: dict | None = None) -> Path:
        """Validate, then replace the view's source with `table`, partitioned by month.

        Idempotent: the same table written twice leaves the same rows (a build replaces its views,
        it never appends). Atomic: the partitions go to a temp directory that then takes the
        place of the old one, so a reader sees the old rows or the new ones, never a mix. An
        embedding view lives under a directory of its encoder (`enc-<hash>`), with the encoder
        in its tags: a build with another model writes beside, never into, the old vectors, and
        the online rows of the old model are dropped on the next `apply`.
        """
        table = validate_view(view, table)
        spec = VIEWS[view]
        tags = {**(tags or {})}
        dest = self.data_dir / view
        if spec.embedding:
            dest = dest / encoder_id(encoder_key)
            dim = len(table.column("embedding")[0]) if table.num_rows else 0
            tags.update(encoder_key=encoder_key or "unspecified", dim=str(dim))
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.parent / f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}"
        month = pc.strftime(table.column("event_timestamp"), format="%Y-%m")
        try:
            if table.num_rows:
                pads.write_dataset(table.append_column(PARTITION, month), tmp, format="parquet",
                                   partitioning=[PARTITION], partitioning_flavor="hive",
                                   basename_template="part-{i}.parquet")
            else:  # an empty view is still a view: one empty file carries its schema
                tmp.mkdir()
                pq.write_table(table, tmp / "part-0.parquet")
            if dest.exists():
                old = dest.parent / f".{dest.name}.old-{uuid.uuid4().hex[:8]}"
                os.replace(dest, old)
                os.replace(tmp, dest)
                shutil.rmtree(old)
            else:
                os.replace(tmp, dest)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
        sources = self.sources()
        previous = sources.get(view, {}).get("tags", {}).get("encoder_key")
        if spec.embedding and previous not in (None, tags["encoder_key"]):
            self._drop_online.add(view)
        sources[view] = {"path": str(dest.relative_to(self.path)), "rows": table.num_rows,
                         "tags": {k: str(v) for k, v in tags.items()}}
        self._write_json(SOURCES, sources)
        logger.info("wrote %s: %d rows -> %s", view, table.num_rows, dest)
        return dest

    def _recover(self) -> None:
        """Finish a swap a crash interrupted: an `.X.old-*` directory without `X` goes back."""
        if not self.data_dir.exists():
            return
        import time

        # only leftovers older than a minute: a swap in flight in another process is not touched
        cutoff = time.time() - 60
        for old in self.data_dir.glob("**/.*.old-*"):
            dest = old.parent / old.name[1:].split(".old-")[0]
            if old.stat().st_mtime > cutoff:
                continue
            if dest.exists():
                shutil.rmtree(old)
            else:
                os.replace(old, dest)
                logger.warning("restored %s from an interrupted write", dest)
        for tmp in self.data_dir.glob("**/.*.tmp-*"):
            if tmp.stat().st_mtime < cutoff:
                shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()

    def _write_json(self, name: str, data: dict) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.data_dir / f".{name}.tmp-{os.getpid()}"
        tmp.write_text(json.dumps(data, indent=2, default=str))
        os.replace(tmp, self.data_dir / name)

    def write_manifest(self, manifest: dict) -> None:
        self._write_json(MANIFEST, manifest)

    def read_manifest(self) -> dict:
        path = self.data_dir / MANIFEST
        if not path.exists():
            raise FileNotFoundError(f"{path}: no features built yet; run `llmrec build-features` first")
        return json.loads(path.read_text())

    # ---- registry ------------------------------------------------------------------------------
    def declarations(self) -> list:
        """The Feast objects declared in the repo's features.py (imported by path)."""
        from feast import Entity, FeatureService, FeatureView

        path = self.path / "features.py"
        spec = importlib.util.spec_from_file_location(f"llmrec_feature_repo_{abs(hash(path))}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return [v for v in vars(module).values() if isinstance(v, (Entity, FeatureView, FeatureService))]

    def check_sources(self, views=None) -> None:
        """Every feature view's source exists (a view pointing to a missing file is named)."""
        from feast import FeatureView

        for fv in views or [o for o in self.declarations() if isinstance(o, FeatureView)]:
            path = Path(fv.batch_source.path)
            path = path if path.is_absolute() else self.path / path
            if not path.exists():
                raise FileNotFoundError(f"feature view {fv.name!r}: source {path} does not exist; "
                                        "run `llmrec build-features` (or fix the path in features.py)")

    def apply(self) -> list[str]:
        """Register the declarations (after checking their sources exist). The online rows of a
        view whose encoder changed since they were written are dropped first, so the online store
        never serves vectors of two models."""
        from feast import FeatureView

        objects = self.declarations()
        views = [o for o in objects if isinstance(o, FeatureView)]
        self.check_sources(views)
        stale = [v for v in views if v.name in self._drop_online]
        if stale:
            try:
                registered = [self.store.get_feature_view(v.name) for v in stale]
            except Exception:  # never applied: nothing online to drop
                registered = []
            if registered:
                self.store._get_provider().update_infra(
                    self.store.project, tables_to_delete=registered, tables_to_keep=[],
                    entities_to_delete=[], entities_to_keep=[], partial=True)
                logger.info("encoder changed: online rows of %s dropped", [v.name for v in registered])
        self.store.apply(objects)
        self._drop_online.clear()
        names = sorted(o.name for o in objects)
        logger.info("feast apply: %s", ", ".join(names))
        return names

    def check_encoder(self, encoder_key: str) -> None:
        """The registered embedding views hold vectors of `encoder_key` (from their tags)."""
        for view in TEXT_VIEWS:
            tags = self.store.get_feature_view(view).tags or {}
            if tags.get("encoder_key") != encoder_key:
                raise ValueError(f"feature view {view!r} holds vectors of encoder "
                                 f"{tags.get('encoder_key')!r}, not {encoder_key!r}: rebuild the "
                                 "features with this encoder (`llmrec build-features`)")

    # ---- online --------------------------------------------------------------------------------
    def present_views(self) -> list[str]:
        """The built views, and the tower views once a training has exported them."""
        written = self.sources()
        return [v for v in VIEWS if v in BUILT_VIEWS or v in written]

    def materialize(self, start: datetime, end: datetime, views: list[str] | None = None) -> dict:
        """Materialize [start, end], then check that every entity with a row by `end` is online."""
        views = views or self.present_views()
        self.store.materialize(start_date=start, end_date=end, feature_views=views)
        return {v: self.verify_online(v, end) for v in views}

    def materialize_incremental(self, end: datetime, views: list[str] | None = None) -> dict:
        """Materialize what is new since each view's last materialization up to `end`, then check.

        Not Feast's `materialize_incremental`: for a view never materialized and without TTL it
        starts one year before *now* (so older data never goes online), and Feast 0.67's Ray store
        fails on a window without rows. Here a view starts at its earliest row the first time, at
        its last materialized end after that, and a window without new rows is skipped.
        """
        views = views or self.present_views()
        for view in views:
            ts = self.read_view(view, columns=["event_timestamp"]).column("event_timestamp")
            last = self.store.get_feature_view(view).most_recent_end_time
            if last is None:
                first = pc.min(ts).as_py()
                if first is None:
                    continue
                start = first - timedelta(seconds=1)
            else:
                start = last if last.tzinfo else last.replace(tzinfo=timezone.utc)
            if start >= end:
                continue
            window = pc.and_(pc.greater(ts, pa.scalar(start, ts.type)), pc.less_equal(ts, pa.scalar(end, ts.type)))
            if not pc.any(window).as_py():
                logger.info("materialize %s: no rows in (%s, %s]", view, start, end)
                continue
            self.store.materialize(start_date=start, end_date=end, feature_views=[view])
        return {v: self.verify_online(v, end) for v in views}

    def verify_online(self, view: str, end: datetime) -> int:
        """Count check: every entity with a source row at or before `end` has an online row, and
        online rows are the newest of the offline ones (checked on the first entities)."""
        key = VIEW_KEYS[view]
        table = self.read_view(view)
        ts = table.column("event_timestamp")
        valid = table.filter(pc.less_equal(ts, pa.scalar(end, ts.type)))
        expected = pc.unique(valid.column(key)).to_pylist()
        feature = next(f.name for f in self.store.get_feature_view(view).features)
        found = 0
        for i in range(0, len(expected), 1000):
            rows = [{key: k} for k in expected[i:i + 1000]]
            got = self.store.get_online_features(features=[f"{view}:{feature}"], entity_rows=rows).to_dict()
            found += sum(v is not None for v in got[feature])
        if found != len(expected):
            raise RuntimeError(f"materialize {view}: {found} of {len(expected)} entities are in the "
                               "online store; the write lost rows")
        if expected:  # spot check: the online value is the newest offline one
            newest = valid.sort_by([(key, "ascending"), ("event_timestamp", "descending")])
            first = pc.index_in(pa.array(expected[:20]), newest.column(key))
            want = newest.take(first).column(feature).to_pylist()
            got = self.store.get_online_features(features=[f"{view}:{feature}"],
                                                 entity_rows=[{key: k} for k in expected[:20]]).to_dict()
            for k, w, g in zip(expected, want, got[feature]):
                if not _same(w, g):
                    raise RuntimeError(f"materialize {view}: online {feature} of {key}={k!r} is not "
                                       "the newest offline row")
        logger.info("online %s: %d entities verified", view, found)
        return found

    def online(self, features: list[str], entity_rows: list[dict]) -> dict:
        return self.store.get_online_features(features=features, entity_rows=entity_rows).to_dict()

    # ---- offline -------------------------------------------------------------------------------
    def retrieval(self, entity_rows, features):
        """`get_historical_features` through this project's offline store (a lazy RetrievalJob).

        `entity_rows`: a pandas DataFrame, a pyarrow Table, a Ray Dataset or a parquet path, with
        the views' join keys and `event_timestamp`; `features`: a feature service name, a
        FeatureService or "view:feature" refs. Output columns are `view__feature`; one output row
        per entity row, in their order (llmrec_ray/offline_store.py).
        """
        from llmrec_ray.offline_store import LlmrecOfflineStoreConfig

        if not isinstance(self.store.config.offline_store, LlmrecOfflineStoreConfig):
            raise ValueError(f"{self.path}/feature_store.yaml: offline_store.type is "
                             f"{self.store.config.offline_store.type!r}; training retrieval needs "
                             "llmrec_ray.offline_store.LlmrecOfflineStore (Feast's file and Ray "
                             "stores collapse repeated entity rows and are not exact point in time)")
        if isinstance(features, str):
            features = self.store.get_feature_service(features)
        return self.store.get_historical_features(entity_df=entity_rows, features=features,
                                                  full_feature_names=True)

    def historical(self, entity_rows, features):
        """Point-in-time join -> a lazy Ray Dataset, one row per entity row (see `retrieval`);
        vectors as fixed-size float32 lists."""
        return self.retrieval(entity_rows, features).to_ray_dataset()

    def historical_table(self, entity_rows, features) -> pa.Table:
        """Point-in-time join -> an Arrow table in this process (small entity sets: queries)."""
        return self.retrieval(entity_rows, features).to_arrow()


def open_repo(fs_cfg) -> FeatureRepo:
    """The FeatureRepo a `FeatureStoreConfig` describes (Redis connection from the environment)."""
    from llmrec_ray.config import expand_env

    redis = os.environ.get(fs_cfg.redis_connection_env) if fs_cfg.online_store == "redis" else None
    if fs_cfg.online_store == "redis" and not redis:
        raise ValueError(f"featurestore.online_store=redis: set the environment variable "
                         f"{fs_cfg.redis_connection_env} to host:port[,password=...]")
    return FeatureRepo(expand_env(fs_cfg.repo_path), fs_cfg.offline_store, fs_cfg.online_store, redis)


def _same(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return a == b or (a != a and b != b) or np.isclose(a, b, rtol=1e-6)
    if isinstance(a, list):
        return b is not None and np.allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=1e-6)
    return a == b


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
