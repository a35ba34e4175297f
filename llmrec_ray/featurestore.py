"""The Feast repository: registry, materialization, online reads, retrieval.

`FeatureRepo` wraps one Feast repo directory (feature_store.yaml + declarations in features.py;
the views' parquet files under data/, written atomically by the `views.ViewFiles` it holds).
Every materialization is followed by a count check against the online store, because Feast has
been seen to swallow write errors. Historical retrieval goes through the project's offline store
(`offline_store.py`, `retrieval.py`), which keeps one output row per entity row by construction.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from llmrec_ray.console import quiet
from llmrec_ray.views import BUILT_VIEWS, TEXT_VIEWS, VIEW_KEYS, VIEWS, ViewFiles

logger = logging.getLogger(__name__)


class FeatureRepo:
    """One Feast repository directory: its view files (`files`, a `views.ViewFiles`) and its
    Feast store. The view-file methods the pipeline uses are forwarded to `files`."""

    def __init__(self, repo_path: str | Path, offline_store: str | None = None,
                 online_store: str | None = None, redis_connection: str | None = None):
        if not (Path(repo_path).resolve() / "feature_store.yaml").exists():
            raise FileNotFoundError(f"featurestore.repo_path: {Path(repo_path).resolve()} has no "
                                    "feature_store.yaml")
        if online_store == "redis" and not redis_connection:
            raise ValueError("featurestore.online_store=redis needs a connection string "
                             "(host:port[,password=...]) in the environment variable named by "
                             "featurestore.redis_connection_env")
        self.files = ViewFiles(repo_path)
        self.path = self.files.path
        self.offline_store, self.online_store = offline_store, online_store
        self._redis = redis_connection
        self._store = None

    # ---- view files (views.ViewFiles) ----------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        return self.files.data_dir

    def sources(self) -> dict:
        return self.files.sources()

    def source_path(self, view: str) -> Path:
        return self.files.source_path(view)

    def read_view(self, view: str, columns: list[str] | None = None) -> pa.Table:
        return self.files.read_view(view, columns)

    def write_view(self, view: str, table: pa.Table, encoder_key: str | None = None,
                   tags: dict | None = None) -> Path:
        return self.files.write_view(view, table, encoder_key, tags)

    def write_manifest(self, manifest: dict) -> None:
        self.files.write_manifest(manifest)

    def read_manifest(self) -> dict:
        return self.files.read_manifest()

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
        stale = [v for v in views if v.name in self.files.encoder_changed]
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
        with quiet():
            self.store.apply(objects)
        self.files.encoder_changed.clear()
        names = sorted(o.name for o in objects)
        logger.info("feast apply: %s", ", ".join(names))
        return names

    def check_encoder(self, encoder_key: str, view_keys: dict | None = None) -> None:
        """The registered embedding views hold vectors of `encoder_key` (from their tags), or of
        `view_keys[view]` for a view whose vectors are built otherwise (user vectors pooled from
        item vectors: the encoder's key plus the pooling, llmrec_ray.user_vectors)."""
        for view in TEXT_VIEWS:
            want = (view_keys or {}).get(view, encoder_key)
            tags = self.store.get_feature_view(view).tags or {}
            if tags.get("encoder_key") != want:
                raise ValueError(f"feature view {view!r} holds vectors of encoder "
                                 f"{tags.get('encoder_key')!r}, not {want!r}: rebuild the "
                                 "features with this encoder (`llmrec build-features`)")

    # ---- online --------------------------------------------------------------------------------
    def present_views(self) -> list[str]:
        """The built views, and the tower views once a training has exported them."""
        written = self.sources()
        return [v for v in VIEWS if v in BUILT_VIEWS or v in written]

    def materialize(self, start: datetime, end: datetime, views: list[str] | None = None) -> dict:
        """Materialize [start, end], then check that every entity with a row by `end` is online."""
        from llmrec_ray.console import progress

        views = views or self.present_views()
        counts = {}
        with progress("materialize", len(views), "views", brief=True) as bar:
            for view in views:  # one at a time: the progress names each, and each is verified
                with quiet():  # Feast prints its own lines and bars: to the log file
                    self.store.materialize(start_date=start, end_date=end, feature_views=[view])
                counts[view] = self.verify_online(view, end)
                bar.update(1, view)
        return counts

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
            with quiet():
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

    def historical_table(self, entity_rows, features) -> pa.Table:
        """Point-in-time join -> an Arrow table in this process (small entity sets: queries)."""
        return self.retrieval(entity_rows, features).to_arrow()


DECLARATIONS = ("feature_store.yaml", "features.py")
PROJECT_REPO = Path(__file__).resolve().parents[1] / "feature_repo"  # the declarations everyone shares


def create_repo(repo_path: str | Path) -> Path | None:
    """Make `repo_path` a Feast repository of its own when it does not exist yet (or is an empty
    directory): a copy of the project's declarations (feature_repo/feature_store.yaml and
    features.py), so a run can keep its features apart from every other run's. Returns the path
    created, or None when there was nothing to do."""
    path = Path(repo_path).resolve()
    if (path / "feature_store.yaml").exists() or (path.exists() and any(path.iterdir())):
        return None
    if not all((PROJECT_REPO / name).exists() for name in DECLARATIONS):
        raise FileNotFoundError(f"featurestore.repo_path: {path} does not exist, and the project's "
                                f"declarations ({PROJECT_REPO}) to create it from are not here; copy "
                                "feature_repo/feature_store.yaml and features.py there")
    import shutil

    path.mkdir(parents=True, exist_ok=True)
    for name in DECLARATIONS:
        shutil.copy(PROJECT_REPO / name, path / name)
    logger.info("featurestore.repo_path %s created with the project's declarations", path)
    return path


def open_repo(fs_cfg) -> FeatureRepo:
    """The FeatureRepo a `FeatureStoreConfig` describes (Redis connection from the environment)."""
    redis = os.environ.get(fs_cfg.redis_connection_env) if fs_cfg.online_store == "redis" else None
    if fs_cfg.online_store == "redis" and not redis:
        raise ValueError(f"featurestore.online_store=redis: set the environment variable "
                         f"{fs_cfg.redis_connection_env} to host:port[,password=...]")
    return FeatureRepo(fs_cfg.repo_path, online_store=fs_cfg.online_store, redis_connection=redis)


def _same(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return a == b or (a != a and b != b) or np.isclose(a, b, rtol=1e-6)
    if isinstance(a, list):
        return b is not None and np.allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=1e-6)
    return a == b


