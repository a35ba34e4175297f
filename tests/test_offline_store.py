"""The offline-store plugin: exact point-in-time answers through Feast's own API.

`pit.FeatureIndex` against a brute-force scan on literal and random data (same-second repeats,
ties broken by created timestamp, TTL, unknown keys, empty views); then
`FeatureStore.get_historical_features` on a repo declared with the plugin (a view with two entity
keys, a created timestamp, a TTL, an empty view), in-process and as a Ray Data job (hash buckets),
against the same reference.
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import T0

from llmrec_ray.offline_store import STORE_TYPE, LlmrecRetrievalJob
from llmrec_ray.retrieval import ViewPlan, positions
from llmrec_ray.pit import FeatureIndex, asof_reference, bucket_of

US = 1_000_000


def index(keys, ts, created=None):
    return FeatureIndex.build(pa.array(keys), np.asarray(ts, np.int64), np.arange(len(keys)),
                              None if created is None else np.asarray(created, np.int64))


def test_lookup_on_literal_rows():
    # u1: rows at 10, 20, 20 (created 5 and 7: the later created wins), 30; u2: one row at 15
    fi = index(["u1", "u2", "u1", "u1", "u1"], [20, 15, 10, 20, 30], created=[7, 0, 0, 5, 0])
    keys = pa.array(["u1", "u1", "u1", "u1", "u1", "u2", "u2", "u3", None])
    ts = np.array([9, 10, 19, 20, 99, 14, 15, 50, 50])
    got = fi.lookup(keys, ts).tolist()
    # before the first row: none; at a row's own time: that row (at or before); ties: created 7
    assert got == [-1, 2, 2, 0, 4, -1, 1, -1, -1]
    # TTL 5: the row at 10 seen from 19 is 9 old (expired); age exactly 5 still valid
    assert fi.lookup(pa.array(["u1", "u1", "u1"]), np.array([19, 15, 36]), ttl_us=5).tolist() == [-1, 2, -1]


def test_repeated_entity_rows_each_get_an_answer():
    fi = index(["a", "a"], [1, 5])
    got = fi.lookup(pa.array(["a"] * 4), np.array([5, 5, 5, 0]))
    assert got.tolist() == [1, 1, 1, -1]


def test_empty_view_and_unknown_keys():
    fi = FeatureIndex.build(pa.array([], pa.string()), np.zeros(0, np.int64), np.zeros(0, np.int64))
    assert fi.lookup(pa.array(["a", None]), np.array([1, 2]), ttl_us=3).tolist() == [-1, -1]


def test_null_feature_key_is_refused():
    with pytest.raises(ValueError, match="feature row 1 has a null join key"):
        index(["a", None], [1, 2])


@pytest.mark.parametrize("seed", range(5))
def test_lookup_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    f = 300
    fkeys = [f"k{k}" for k in rng.integers(0, 12, f)]
    fts = rng.integers(0, 60, f).tolist()          # many same-time rows per key
    created = rng.integers(0, 4, f).tolist()       # and ties on created too (file order decides)
    # one (key, ts, created) triple per row, as Feast requires of a source
    seen, keep = set(), []
    for j in range(f):
        if (fkeys[j], fts[j], created[j]) not in seen:
            seen.add((fkeys[j], fts[j], created[j]))
            keep.append(j)
    fkeys, fts, created = ([x[j] for j in keep] for x in (fkeys, fts, created))
    e = 500
    ekeys = [f"k{k}" for k in rng.integers(0, 14, e)]  # k12, k13: keys without feature rows
    ets = rng.integers(-5, 70, e).tolist()
    fi = index(fkeys, fts, created)
    for ttl in (None, 7):
        want = asof_reference(ekeys, ets, fkeys, fts, created, ttl)
        assert fi.lookup(pa.array(ekeys), np.asarray(ets), ttl).tolist() == want
    # hash-bucketed: each bucket's index answers for its keys only; together the same answer
    buckets = 3
    fb = bucket_of(pa.array(fkeys), buckets)
    parts = []
    for b in range(buckets):
        rows = np.flatnonzero(fb == b)
        parts.append(FeatureIndex.build(pa.array([fkeys[j] for j in rows]), np.asarray(fts)[rows],
                                        rows, np.asarray(created)[rows]))

    class Buckets:
        def __init__(self):
            self.buckets = buckets

        def __call__(self, b):
            return parts[b]



    plan = ViewPlan("v", (), None, ("k",), ("k",), "ts", None, ())
    block = pa.table({"k": ekeys, "event_timestamp": pa.array(np.asarray(ets) * US, pa.timestamp("us", "UTC"))})
    # the block's timestamps are in us; the index's in "ticks": rescale the index to us
    for p in parts:
        p.ts = p.ts * US
    assert positions(plan, Buckets(), block, "event_timestamp").tolist() == \
        asof_reference(ekeys, ets, fkeys, fts, created)


def test_buckets_are_stable_and_spread():
    keys = pa.array([f"user{k}" for k in range(10_000)])
    b = bucket_of(keys, 8)
    assert b.tolist() == bucket_of(keys, 8).tolist()
    assert np.bincount(b, minlength=8).min() > 1000  # roughly even
    assert bucket_of(pa.array(["x"]), 8)[0] == bucket_of(pa.array(["y", "x"]), 8)[1]


# ---- through Feast ---------------------------------------------------------------------------

def ts(hours):
    return pa.array([T0 + timedelta(hours=h) for h in hours], pa.timestamp("us", "UTC"))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A Feast repo on the plugin: `rated` has two entities and a created timestamp; `recent` a
    TTL of 2 hours; `empty` no rows at all."""
    from feast import Entity, FeatureStore, FeatureView, Field, FileSource
    from feast.repo_config import RepoConfig
    from feast.types import Array, Float32, Int64
    from feast.value_type import ValueType

    root = tmp_path_factory.mktemp("plugin_repo")
    (root / "data").mkdir()
    rated = pa.table({"user_id": ["u1", "u1", "u1", "u2", "u1"], "item_id": ["i1", "i1", "i2", "i1", "i1"],
                      "event_timestamp": ts([1, 3, 3, 2, 3]), "created": ts([0, 5, 0, 0, 4]),
                      "score": pa.array([10, 30, 20, 40, 31], pa.int64())})
    pq.write_table(rated, root / "data" / "rated.parquet")
    recent = pa.table({"user_id": ["u1", "u2", "u1"], "event_timestamp": ts([0, 0, 10]),
                       "vec": pa.array([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]], pa.list_(pa.float32())),
                       "n": pa.array([1, 2, 3], pa.int64())})
    pq.write_table(recent, root / "data" / "recent.parquet")
    empty = pa.table({"user_id": pa.array([], pa.string()), "event_timestamp": ts([]),
                      "m": pa.array([], pa.int64())})
    pq.write_table(empty, root / "data" / "empty.parquet")
    user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING)
    item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.STRING)
    views = [
        FeatureView(name="rated", entities=[user, item], ttl=timedelta(0),
                    source=FileSource(path="data/rated.parquet", timestamp_field="event_timestamp",
                                      created_timestamp_column="created"),
                    schema=[Field(name="score", dtype=Int64)]),
        FeatureView(name="recent", entities=[user], ttl=timedelta(hours=2),
                    source=FileSource(path="data/recent.parquet", timestamp_field="event_timestamp"),
                    schema=[Field(name="vec", dtype=Array(Float32)), Field(name="n", dtype=Int64)]),
        FeatureView(name="empty", entities=[user], ttl=timedelta(0),
                    source=FileSource(path="data/empty.parquet", timestamp_field="event_timestamp"),
                    schema=[Field(name="m", dtype=Int64)]),
    ]
    config = RepoConfig(project="plugin", provider="local", registry=str(root / "data" / "registry.db"),
                        online_store={"type": "sqlite", "path": str(root / "data" / "online.db")},
                        offline_store={"type": STORE_TYPE, "ray_min_rows": 1_000_000, "bucket_rows": 2},
                        entity_key_serialization_version=3, repo_path=root)
    fs = FeatureStore(config=config, repo_path=str(root))
    fs.apply([user, item, *views])
    return fs


ENTITY = pd.DataFrame({
    "user_id": ["u1", "u1", "u1", "u1", "u2", "u3", "u1", "u2"],
    "item_id": ["i1", "i1", "i2", "i1", "i1", "i1", "i1", "i1"],
    "event_timestamp": [T0 + timedelta(hours=h) for h in (0.5, 1, 3, 3, 9, 3, 11.5, 1)],
})
REFS = ["rated:score", "recent:vec", "recent:n", "empty:m"]
# rated (u,i) as of t: u1/i1 at 0.5: none; at 1: 10; u1/i2 at 3: 20; u1/i1 at 3: the two rows at 3
# tie -> created 5 wins (30); u2/i1 at 9: 40; u3: none; u1/i1 at 11.5: 30; u2/i1 at 1: none.
# recent (TTL 2 h): u1 at 0.5, 1: row 0 ([1, 0]); at 3: expired; at 11.5: row at 10 ([2, 2]);
# u2 at 9: expired, at 1: [0, 1]; u3: none. empty: always null.
WANT_SCORE = [None, 10, 20, 30, 40, None, 30, None]
WANT_N = [1, 1, None, None, None, None, 3, 2]


def check(out: pd.DataFrame):
    assert len(out) == len(ENTITY)
    assert out["user_id"].tolist() == ENTITY["user_id"].tolist()  # entity order kept
    score = [None if pd.isna(v) else int(v) for v in out["rated__score"]]
    n = [None if pd.isna(v) else int(v) for v in out["recent__n"]]
    assert score == WANT_SCORE
    assert n == WANT_N
    vec = [None if v is None or (not hasattr(v, "__len__") and pd.isna(v)) else list(v) for v in out["recent__vec"]]
    assert vec == [[1, 0], [1, 0], None, None, None, None, [2, 2], [0, 1]]
    assert out["empty__m"].isna().all()


def test_get_historical_features_in_process(store):
    job = store.get_historical_features(entity_df=ENTITY, features=REFS, full_feature_names=True)
    assert isinstance(job, LlmrecRetrievalJob)
    check(job.to_df())
    table = job.to_arrow()
    assert pa.types.is_fixed_size_list(table.schema.field("recent__vec").type)
    assert table.schema.field("recent__vec").type.value_type == pa.float32()
    meta = job.metadata
    assert meta.min_event_timestamp == T0 + timedelta(hours=0.5)


def test_get_historical_features_as_a_ray_job(store, ray_session):
    """ray_min_rows=0: the join runs on Ray Data, the feature side in 2-row hash buckets."""
    job = store.get_historical_features(entity_df=ENTITY, features=REFS, full_feature_names=True)
    job._config = job._config.model_copy(update={"ray_min_rows": 0, "block_rows": 3})
    ds = job.to_ray_dataset()
    assert "MapBatches" in str(ds) or "map_batches" in str(ds).lower()  # lazy: a plan, not rows
    check(ds.to_pandas())
    check(job.to_df())
    # a Ray Dataset as the entity rows, straight into Feast's API
    import ray

    job = store.get_historical_features(entity_df=ray.data.from_pandas(ENTITY), features=REFS,
                                        full_feature_names=True)
    check(job.to_ray_dataset().to_pandas())


def test_short_feature_names_and_bad_entity_rows(store):
    out = store.get_historical_features(entity_df=ENTITY, features=["rated:score"]).to_df()
    assert [None if pd.isna(v) else int(v) for v in out["score"]] == WANT_SCORE
    with pytest.raises(ValueError, match=r"lacks \['item_id'\].*'rated'"):
        store.get_historical_features(entity_df=ENTITY.drop(columns="item_id"), features=["rated:score"]).to_df()
    bad = ENTITY.rename(columns={"event_timestamp": "when"}).assign(other=ENTITY["event_timestamp"])
    with pytest.raises(ValueError, match="2 timestamp columns"):
        store.get_historical_features(entity_df=bad, features=["rated:score"]).to_df()
    nat = ENTITY.copy()
    nat.loc[2, "event_timestamp"] = pd.NaT
    with pytest.raises(ValueError, match="event_timestamp timestamp is null in row 2"):
        store.get_historical_features(entity_df=nat, features=["rated:score"]).to_df()


@pytest.mark.parametrize("ray_min_rows", [1_000_000, 0])
def test_by_position_points_at_the_gathered_values(store, ray_session, ray_min_rows):
    """`to_ray_dataset(by_position=...)`: the view's rows carry positions into feature_values();
    looking them up gives exactly what the gathering path returns."""
    import ray

    from llmrec_ray.views import embedding_matrix
    from llmrec_ray.retrieval import position_column

    job = store.get_historical_features(entity_df=ENTITY, features=REFS, full_feature_names=True)
    job._config = job._config.model_copy(update={"ray_min_rows": ray_min_rows})
    rows = job.to_ray_dataset(by_position=("recent",)).to_pandas()
    assert "recent__vec" not in rows.columns
    assert [None if pd.isna(v) else int(v) for v in rows["rated__score"]] == WANT_SCORE
    pos = rows[position_column("recent")].to_numpy()
    assert ((pos >= 0) == [n is not None for n in WANT_N]).all()
    values = ray.get(job.feature_values()["recent"])
    assert values.column_names == ["recent__vec", "recent__n"]
    vectors = embedding_matrix(values.column("recent__vec"))
    want = [[1, 0], [1, 0], None, None, None, None, [2, 2], [0, 1]]
    assert [list(vectors[p]) if p >= 0 else None for p in pos] == want
    with pytest.raises(ValueError, match="not views of this retrieval"):
        job.to_ray_dataset(by_position=("nope",))


def test_training_batch_names_the_row_without_a_feature():
    from llmrec_ray.retrieval import position_column
    from llmrec_ray.train_data import to_training_batch

    batch = pa.table({"row_id": [7, 8], "item_idx": [0, 1],
                      position_column("user_history_embedding"): [3, -1],
                      position_column("item_text_embedding"): [0, 1]})
    with pytest.raises(ValueError, match="row_id 8: no user_history_embedding__embedding"):
        to_training_batch(batch)
    ok = to_training_batch(batch.set_column(2, position_column("user_history_embedding"), pa.array([3, 4])))
    assert ok["user_emb_pos"].tolist() == [3, 4] and ok["item_emb_pos"].tolist() == [0, 1]


@pytest.mark.parametrize("ray_min_rows", [1_000_000, 0])
def test_a_parquet_path_as_entity_rows(store, ray_session, tmp_path, ray_min_rows):
    """A parquet path: read here below ray_min_rows, by Ray tasks from it (never in the driver)."""
    path = tmp_path / "entity.parquet"
    pq.write_table(pa.Table.from_pandas(ENTITY, preserve_index=False), path)
    job = store.get_historical_features(entity_df=str(path), features=REFS, full_feature_names=True)
    job._config = job._config.model_copy(update={"ray_min_rows": ray_min_rows})
    check(job.to_ray_dataset().to_pandas())
    assert isinstance(job._entity, str) == (ray_min_rows == 0)  # the Ray path left it on disk
