"""The Feast repository: write the feature parquet, apply, materialize, verify, retrieve.

`FeatureRepo` wraps one Feast repo directory (feature_store.yaml + declarations in features.py;
data under data/). Writes are atomic (temp file, then rename). Every materialization is followed by
a count check against the online store, and every historical retrieval by a row-count check, because
Feast has been seen to swallow write errors and to collapse repeated entity rows (DESIGN.md).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

logger = logging.getLogger(__name__)

ITEM_TEXT_VIEW = "item_text_embedding"
ITEM_METADATA_VIEW = "item_metadata"
USER_HISTORY_VIEW = "user_history_embedding"
VIEW_KEYS = {ITEM_TEXT_VIEW: "item_id", ITEM_METADATA_VIEW: "item_id", USER_HISTORY_VIEW: "user_id"}
MANIFEST = "manifest.json"


class FeatureRepo:
    """One Feast repository directory."""

    def __init__(self, repo_path: str | Path, offline_store: str | None = None):
        self.path = Path(repo_path).resolve()
        if not (self.path / "feature_store.yaml").exists():
            raise FileNotFoundError(f"featurestore.repo_path: {self.path} has no feature_store.yaml")
        self.data_dir = self.path / "data"
        self.offline_store = offline_store
        self._store = None

    @property
    def store(self):
        """The Feast FeatureStore of this repo; `offline_store` ("ray"/"file") overrides the YAML's."""
        if self._store is None:
            from feast import FeatureStore

            if self.offline_store is None:
                self._store = FeatureStore(repo_path=str(self.path))
            else:
                import yaml
                from feast.repo_config import RepoConfig

                data = yaml.safe_load((self.path / "feature_store.yaml").read_text())
                declared = data.get("offline_store") or {}
                if declared.get("type") != self.offline_store:
                    data["offline_store"] = {"type": self.offline_store}
                self._store = FeatureStore(config=RepoConfig(repo_path=self.path, **data),
                                           repo_path=str(self.path))
        return self._store

    # ---- writing -------------------------------------------------------------------------------
    def source_path(self, view: str) -> Path:
        return self.data_dir / f"{view}.parquet"

    def write_view(self, view: str, table: pa.Table) -> Path:
        """Write a view's source parquet atomically; one row per (key, event_timestamp) required."""
        key = VIEW_KEYS[view]
        for col in (key, "event_timestamp"):
            if col not in table.column_names:
                raise ValueError(f"{view}: column {col!r} missing (columns: {table.column_names})")
        pairs = pa.table({"k": table.column(key), "t": table.column("event_timestamp")})
        if pairs.group_by(["k", "t"]).aggregate([]).num_rows != table.num_rows:
            raise ValueError(f"{view}: duplicate ({key}, event_timestamp) rows; the join would be "
                             "ambiguous")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        path = self.source_path(view)
        tmp = path.with_suffix(f".parquet.tmp-{os.getpid()}")
        pq.write_table(table, tmp)
        os.replace(tmp, path)
        logger.info("wrote %s: %d rows -> %s", view, table.num_rows, path)
        return path

    def write_manifest(self, manifest: dict) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.data_dir / f"{MANIFEST}.tmp-{os.getpid()}"
        tmp.write_text(json.dumps(manifest, indent=2, default=str))
        os.replace(tmp, self.data_dir / MANIFEST)

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

    def apply(self) -> list[str]:
        objects = self.declarations()
        self.store.apply(objects)
        names = sorted(o.name for o in objects)
        logger.info("feast apply: %s", ", ".join(names))
        return names

    # ---- online --------------------------------------------------------------------------------
    def materialize(self, start: datetime, end: datetime, views: list[str] | None = None) -> dict:
        """Materialize [start, end] and check that every entity with a row by `end` is online."""
        views = views or list(VIEW_KEYS)
        self.store.materialize(start_date=start, end_date=end, feature_views=views)
        return {v: self.verify_online(v, end) for v in views}

    def verify_online(self, view: str, end: datetime) -> int:
        key = VIEW_KEYS[view]
        table = pq.read_table(self.source_path(view), columns=[key, "event_timestamp"])
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
        logger.info("online %s: %d entities verified", view, found)
        return found

    def online(self, features: list[str], entity_rows: list[dict]) -> dict:
        return self.store.get_online_features(features=features, entity_rows=entity_rows).to_dict()

    # ---- offline -------------------------------------------------------------------------------
    def historical(self, entity_df: pd.DataFrame, features, row_id: str = "row_id"):
        """Point-in-time join -> Ray Dataset with exactly one output row per entity row.

        Feast's offline stores (Ray and file, as of 0.67) collapse entity rows that share a view's
        join keys and timestamp (a user who rated two items in the same second). So each view is
        queried with its distinct (keys, timestamp) pairs only, and the features are joined back
        onto every entity row by those pairs; `row_id` must be unique and the count is checked.
        """
        import ray

        if row_id not in entity_df.columns or not entity_df[row_id].is_unique:
            raise ValueError(f"entity_df needs a unique {row_id!r} column (Feast's offline stores "
                             "collapse repeated entity rows)")
        result = entity_df.copy()
        result["event_timestamp"] = pd.to_datetime(result["event_timestamp"], utc=True)
        for view, refs in self._refs_by_view(features).items():
            keys = self.store.get_feature_view(view).join_keys
            missing = [k for k in keys if k not in result.columns]
            if missing:
                raise ValueError(f"entity_df lacks {missing} needed by feature view {view!r}")
            distinct = result[keys + ["event_timestamp"]].drop_duplicates(ignore_index=True)
            job = self.store.get_historical_features(entity_df=distinct, features=refs,
                                                     full_feature_names=True)
            got = job.to_df()
            if len(got) != len(distinct):
                raise RuntimeError(f"get_historical_features({view}) returned {len(got)} rows for "
                                   f"{len(distinct)} distinct entity rows")
            got["event_timestamp"] = pd.to_datetime(got["event_timestamp"], utc=True)
            columns = [f"{view}__{r.split(':', 1)[1]}" for r in refs]
            result = result.merge(got[keys + ["event_timestamp"] + columns],
                                  on=keys + ["event_timestamp"], how="left", validate="many_to_one")
        if len(result) != len(entity_df):
            raise RuntimeError(f"point-in-time join returned {len(result)} rows for {len(entity_df)}")
        return ray.data.from_pandas(result)

    def _refs_by_view(self, features) -> dict[str, list[str]]:
        """A feature service name, a FeatureService or "view:feature" refs -> refs per view."""
        if isinstance(features, str):
            features = self.store.get_feature_service(features)
        if not isinstance(features, list):
            features = [f"{p.name}:{f.name}" for p in features.feature_view_projections
                        for f in p.features]
        out: dict[str, list[str]] = {}
        for ref in features:
            out.setdefault(ref.split(":", 1)[0], []).append(ref)
        return out


def embedding_matrix(column) -> np.ndarray:
    """A column of equal-length vectors (list<float>, tensor or object array) -> (N, D) float32.

    A missing vector (null or empty) is an error: callers decide before this what to do with them.
    """
    values = column.to_pylist() if isinstance(column, (pa.Array, pa.ChunkedArray)) else list(column)
    values = [None if v is None else np.asarray(v, dtype=np.float32) for v in values]
    bad = [i for i, v in enumerate(values) if v is None or v.size == 0]
    if bad:
        raise ValueError(f"{len(bad)} rows have no vector (first at position {bad[0]})")
    return np.stack(values)
