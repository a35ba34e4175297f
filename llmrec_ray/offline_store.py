"""Feast offline store of llmrec-ray: exact point-in-time retrieval on narrow columns, on Ray Data.

Declared in `feature_store.yaml` as

    offline_store:
      type: llmrec_ray.offline_store.LlmrecOfflineStore

so that `FeatureStore.get_historical_features(...)` itself (from this project, the `feast` CLI or
a notebook) answers with, for every entity row, the newest feature row of its key at or before
the entity row's time (ties broken by the created timestamp where the view has one), null when
there is none or it is older than the view's TTL, one output row per entity row in the entity
rows' order (repeated (key, timestamp) rows included).

How: per feature view, only the join keys and timestamps are read (`pit.FeatureIndex`); each
entity row gets the position of its feature row; the feature values are then gathered from the
view's parquet by position. No vector travels through the join. Below `ray_min_rows` entity rows
the positions are computed in this process (Ray's fixed cost is seconds); from it, as a Ray Data
job: the feature side hash-bucketed by key into `pit.FeatureIndex` objects built by Ray tasks,
each entity block looked up against the buckets of its keys. `to_ray_dataset()` is lazy either
way and streams blocks whose vectors are fixed-size float32 lists, gathered by position from the
view's columns (held once in the object store).

Everything else (materialization, `pull_latest_from_table_or_query`, writes, retrieval without an
entity_df) is Feast's file (dask) store, which this store subclasses.
"""

from __future__ import annotations

import logging
import math
import os
from datetime import timedelta
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from feast.infra.offline_stores.dask import DaskOfflineStore, DaskOfflineStoreConfig
from feast.infra.offline_stores.offline_store import RetrievalJob, RetrievalMetadata
from pydantic import Field

from llmrec_ray.retrieval import (LocalIndex, ViewPlan, blocks, build_index, entity_timestamp_column,
                                  feature_table, gather, join_block, plan_rows, positions)

logger = logging.getLogger(__name__)

STORE_TYPE = "llmrec_ray.offline_store.LlmrecOfflineStore"


class LlmrecOfflineStoreConfig(DaskOfflineStoreConfig):
    """Offline store of llmrec-ray (Feast's file store with exact, narrow point-in-time joins)."""

    type: Literal["llmrec_ray.offline_store.LlmrecOfflineStore"] = STORE_TYPE
    """Offline store type selector (this class's import path)."""
    ray_min_rows: int = Field(1_000_000, ge=0)
    """Entity rows from which the join runs as a Ray Data job (below: in this process; 0 = always Ray)."""
    bucket_rows: int = Field(4_000_000, ge=1)
    """Feature rows per hash bucket of a view's index on the Ray path (one task builds each)."""
    block_rows: int = Field(50_000, ge=1)
    """Entity rows per block of the Ray Dataset built from an in-memory entity_df."""


def plan_views(config, feature_views, feature_refs, full_feature_names: bool) -> list[ViewPlan]:
    """One ViewPlan per requested feature view (files listed now, read later)."""
    import pyarrow.dataset as pads
    from feast.infra.offline_stores.file_source import FileSource

    wanted: dict[str, list[str]] = {}
    for ref in feature_refs:
        view, feature = ref.split(":", 1)
        wanted.setdefault(view, []).append(feature)
    plans = []
    for fv in feature_views:
        name = fv.projection.name_to_use()
        source = fv.batch_source
        if not isinstance(source, FileSource):
            raise ValueError(f"feature view {fv.name!r}: {STORE_TYPE} reads FileSource views only, "
                             f"not {type(source).__name__}")
        uri = FileSource.get_uri_for_file_path(config.repo_path, source.file_options.uri)
        filesystem, path = FileSource.create_filesystem_and_path(
            str(uri), source.file_options.s3_endpoint_override)
        if filesystem is None and "://" not in path:
            # a local view's current version (storage.atomic_dir), resolved once: a rewrite of the
            # view meanwhile cannot mix the files of two versions
            path = os.path.realpath(path)
        ds = pads.dataset(path, filesystem=filesystem, format="parquet", partitioning="hive")
        files = tuple(sorted(ds.files))
        inverse = {v: k for k, v in (source.field_mapping or {}).items()}
        source_keys, entity_keys = [], []
        for column in fv.entity_columns:
            source_keys.append(inverse.get(column.name, column.name))
            entity_keys.append(fv.projection.join_key_map.get(column.name, column.name))
        features = wanted.get(name) or wanted.get(fv.name) or []
        prefix = f"{name}__" if full_feature_names else ""
        ttl = fv.ttl if fv.ttl and fv.ttl > timedelta(0) else None
        plans.append(ViewPlan(
            name=name, files=files, filesystem=ds.filesystem, source_keys=tuple(source_keys),
            entity_keys=tuple(entity_keys), ts_field=source.timestamp_field,
            created_field=source.created_timestamp_column or None,
            features=tuple((inverse.get(f, f), prefix + f) for f in features),
            ttl_us=None if ttl is None else int(ttl / timedelta(microseconds=1))))
    return plans


class LlmrecRetrievalJob(RetrievalJob):
    """A lazy point-in-time retrieval: nothing is read until to_df/to_arrow/to_ray_dataset."""

    def __init__(self, entity, plans: list[ViewPlan], config: LlmrecOfflineStoreConfig,
                 full_feature_names: bool, on_demand_feature_views, feature_refs: list[str],
                 repo_path: str):
        self._entity = entity  # pa.Table, ray.data.Dataset or a parquet path/URI
        self._plans = plans
        self._config = config
        self._full = full_feature_names
        self._odfvs = on_demand_feature_views or []
        self._refs = feature_refs
        self.repo_path = repo_path
        self._metadata = None
        self._feature_refs = None  # view -> ObjectRef of its feature columns (feature_values)

    @property
    def full_feature_names(self) -> bool:
        return self._full

    @property
    def on_demand_feature_views(self):
        return self._odfvs

    # ---- entity rows -----------------------------------------------------------------------
    def _parquet(self):
        """The entity rows' parquet (a path or URI), as a pyarrow dataset: schema and row count
        from the footers, nothing read yet."""
        import pyarrow.dataset as pads

        return pads.dataset(self._entity, format="parquet", partitioning="hive")

    def _local(self) -> bool:
        """Whether the positions are computed in this process (in-memory or parquet entity rows
        below `ray_min_rows`); a Ray Dataset always stays on Ray."""
        if _is_dataset(self._entity):
            return False
        rows = self._parquet().count_rows() if isinstance(self._entity, str) else self._entity.num_rows
        return rows < self._config.ray_min_rows

    def _entity_table(self) -> pa.Table:
        """The entity rows in this process (the in-process path only)."""
        if isinstance(self._entity, str):
            self._entity = self._parquet().to_table()
        return self._entity

    def _ts_col(self) -> str:
        if _is_dataset(self._entity):
            schema = self._entity.schema()
            schema = schema if isinstance(schema, pa.Schema) else schema.base_schema  # ray.data.Schema
        else:
            schema = self._parquet().schema if isinstance(self._entity, str) else self._entity.schema
        return entity_timestamp_column(schema)

    def _local_positions(self, table: pa.Table) -> list[np.ndarray]:
        ts_col = self._ts_col()
        out = []
        for plan in self._plans:
            pos = positions(plan, LocalIndex(plan), table, ts_col)
            logger.info("point-in-time join %s: %d entity rows, %d with a feature row", plan.name,
                        table.num_rows, int((pos >= 0).sum()))
            out.append(pos)
        return out

    # ---- results ---------------------------------------------------------------------------
    def _to_arrow_internal(self, timeout: int | None = None) -> pa.Table:
        if self._local():
            table = self._entity_table()
            out = table
            for plan, pos in zip(self._plans, self._local_positions(table)):
                feats = gather(plan.feature_table(), pos)
                for name in feats.column_names:
                    out = out.append_column(name, feats.column(name))
            return out
        import ray

        refs = self.to_ray_dataset().to_arrow_refs()
        return pa.concat_tables(ray.get(refs))

    def _to_df_internal(self, timeout: int | None = None) -> pd.DataFrame:
        return self._to_arrow_internal(timeout).to_pandas()

    def to_ray_dataset(self, by_position: tuple[str, ...] = ()):
        """A lazy Ray Dataset: the entity rows (in their order) with their features; vectors as
        fixed-size float32 lists gathered by position from each view (held once in the object
        store). Below `ray_min_rows` in-memory entity rows, the positions are computed here.

        `by_position` (views by name, an extension of Feast's API): those views' features are not
        gathered; their rows carry `<view>__position` instead, the position of the feature row in
        `feature_values()[view]` (-1: none), so a consumer holding the view once (a trainer with
        snapshots x d on its device) reads rows of a few bytes."""
        import ray

        if self._odfvs:
            raise NotImplementedError("on-demand feature views: use to_df()/to_arrow(), which apply "
                                      "their transformations")
        unknown = set(by_position) - {p.name for p in self._plans}
        if unknown:
            raise ValueError(f"by_position: {sorted(unknown)} are not views of this retrieval "
                             f"({[p.name for p in self._plans]})")
        ts_col = self._ts_col()
        feature_refs = [self.feature_values()[plan.name] for plan in self._plans]
        if self._local():
            table = self._entity_table()
            for k, pos in enumerate(self._local_positions(table)):
                table = table.append_column(f"__pos_{k}", pa.array(pos, pa.int64()))
            ds = ray.data.from_arrow(blocks(table, self._config.block_rows))
            index_refs, precomputed = [], True
        else:
            ds = self._entity_dataset()
            build = ray.remote(build_index)
            index_refs = []
            for plan in self._plans:
                buckets = max(1, math.ceil(plan_rows(plan) / self._config.bucket_rows))
                index_refs.append([build.remote(plan, b, buckets) for b in range(buckets)])
            precomputed = False
        return ds.map_batches(join_block, batch_format="pyarrow", batch_size=None,
                              zero_copy_batch=True,
                              fn_kwargs={"plans": self._plans, "index_refs": index_refs,
                                         "feature_refs": feature_refs, "ts_col": ts_col,
                                         "precomputed": precomputed,
                                         "by_position": tuple(by_position)})

    def feature_values(self) -> dict:
        """view -> ObjectRef of its requested feature columns (an Arrow table in position order;
        vectors as fixed-size float32 lists), read once by a Ray task and kept for this job."""
        import ray

        if self._feature_refs is None:
            task = ray.remote(feature_table)
            self._feature_refs = {plan.name: task.remote(plan) for plan in self._plans}
        return self._feature_refs

    def _entity_dataset(self):
        """The entity rows as a Ray Dataset (a parquet path is read by Ray tasks, not here)."""
        import ray

        if _is_dataset(self._entity):
            return self._entity
        if isinstance(self._entity, str):
            return ray.data.read_parquet(self._entity)
        return ray.data.from_arrow(blocks(self._entity, self._config.block_rows))

    def persist(self, storage, allow_overwrite: bool = False, timeout: int | None = None):
        from feast.errors import SavedDatasetLocationAlreadyExists
        from feast.infra.offline_stores.file_source import FileSource

        uri = FileSource.get_uri_for_file_path(self.repo_path, storage.file_options.uri)
        if not allow_overwrite and os.path.exists(uri):
            raise SavedDatasetLocationAlreadyExists(location=uri)
        filesystem, path = FileSource.create_filesystem_and_path(
            str(uri), storage.file_options.s3_endpoint_override)
        if path.endswith(".parquet"):
            pq.write_table(self.to_arrow(), where=path, filesystem=filesystem)
        else:
            pq.write_to_dataset(self.to_arrow(), root_path=path, filesystem=filesystem)

    @property
    def metadata(self) -> RetrievalMetadata | None:
        if self._metadata is None:
            ts_col = self._ts_col()
            if self._local():
                table = self._entity_table()
                names = table.column_names
                lo, hi = (v.as_py() for v in pc.min_max(table.column(ts_col)).values())
            else:
                ds = self._entity_dataset()
                names = ds.schema().names
                lo, hi = ds.min(ts_col), ds.max(ts_col)
            self._metadata = RetrievalMetadata(features=self._refs,
                                               keys=[c for c in names if c != ts_col],
                                               min_event_timestamp=lo, max_event_timestamp=hi)
        return self._metadata

    def supports_remote_storage_export(self) -> bool:
        return False


def _is_dataset(obj) -> bool:
    try:
        import ray.data
    except ImportError:  # pragma: no cover
        return False
    return isinstance(obj, ray.data.Dataset)


def _entity_rows(entity_df):
    """pandas -> Arrow (index dropped); Arrow, a Ray Dataset or a parquet path as they are."""
    if isinstance(entity_df, pd.DataFrame):
        return pa.Table.from_pandas(entity_df, preserve_index=False)
    if isinstance(entity_df, (pa.Table, str)) or _is_dataset(entity_df):
        return entity_df
    raise ValueError(f"entity_df must be a pandas DataFrame, a pyarrow Table, a Ray Dataset or a "
                     f"parquet path, not {type(entity_df).__name__}")


class LlmrecOfflineStore(DaskOfflineStore):
    """Feast's file store with this project's exact, narrow point-in-time join (see module doc)."""

    supports_filter_by_created_timestamp = False

    @staticmethod
    def get_historical_features(config, feature_views, feature_refs, entity_df, registry, project,
                                full_feature_names: bool = False, **kwargs) -> RetrievalJob:
        if entity_df is None:  # a time range instead of entity rows: Feast's file store answers
            return DaskOfflineStore.get_historical_features(
                config, feature_views, feature_refs, entity_df, registry, project,
                full_feature_names, **kwargs)
        from feast.on_demand_feature_view import OnDemandFeatureView

        store_config = config.offline_store
        if not isinstance(store_config, LlmrecOfflineStoreConfig):
            store_config = LlmrecOfflineStoreConfig()
        plans = plan_views(config, feature_views, feature_refs, full_feature_names)
        return LlmrecRetrievalJob(
            _entity_rows(entity_df), plans, store_config, full_feature_names,
            OnDemandFeatureView.get_requested_odfvs(feature_refs, project, registry),
            feature_refs, str(config.repo_path))
