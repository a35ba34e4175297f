"""The Feast repo wrapper: atomic writes, duplicate keys refused, count checks that fail loudly."""

from __future__ import annotations

from datetime import timedelta

import pandas as pd
import pyarrow as pa
import pytest
from conftest import T0

from llmrec_ray.featurestore import FeatureRepo
from llmrec_ray.views import (ITEM_METADATA_VIEW, ITEM_STATS_VIEW, ITEM_TEXT_VIEW, USER_HISTORY_VIEW,
                              USER_STATS_VIEW)
from llmrec_ray.schemas import EMBEDDING, TIMESTAMP
from llmrec_ray.stats import ITEM_STATS, USER_STATS


def user_table(rows):
    return pa.table({
        "user_id": [r[0] for r in rows],
        "event_timestamp": pa.array([T0 + timedelta(days=r[1]) for r in rows], TIMESTAMP),
        "embedding": pa.array([r[2] for r in rows], EMBEDDING),
        "n_tokens": pa.array([3] * len(rows), pa.int64()),
        "truncated": [False] * len(rows),
        "n_history": pa.array([r[3] for r in rows], pa.int64()),
    })


def item_tables(ids):
    ts = pa.array([T0] * len(ids), TIMESTAMP)
    emb = pa.table({"item_id": ids, "event_timestamp": ts,
                    "embedding": pa.array([[float(k), 1.0] for k in range(len(ids))], EMBEDDING),
                    "n_tokens": pa.array([2] * len(ids), pa.int64()), "truncated": [False] * len(ids)})
    meta = pa.table({"item_id": ids, "event_timestamp": ts, "title": [f"t{i}" for i in ids],
                     "genres": ["g"] * len(ids)})
    return emb, meta


def stats_rows(schema, key, rows):
    """(id, day, n_interactions) rows -> a stats table of `schema` (other columns derived)."""
    data = {key: [r[0] for r in rows],
            "event_timestamp": pa.array([T0 + timedelta(days=r[1]) for r in rows], TIMESTAMP),
            "n_interactions": [r[2] for r in rows], "mean_rating": [3.0] * len(rows),
            "last_interaction_unix": [0] * len(rows)}
    for f in schema.names:
        data.setdefault(f, [r[2] for r in rows])
    return pa.table(data).cast(schema)


def write_all(r, users=(("u1", 0, [0.0, 0.0], 0), ("u1", 2, [1.0, 0.0], 1), ("u2", 1, [0.0, 1.0], 0)),
              items=("i1", "i2"), encoder_key="enc-A"):
    r.write_view(USER_HISTORY_VIEW, user_table(list(users)), encoder_key=encoder_key)
    emb, meta = item_tables(list(items))
    r.write_view(ITEM_TEXT_VIEW, emb, encoder_key=encoder_key)
    r.write_view(ITEM_METADATA_VIEW, meta)
    r.write_view(USER_STATS_VIEW, stats_rows(USER_STATS, "user_id", [(u[0], u[1], u[3]) for u in users]))
    r.write_view(ITEM_STATS_VIEW, stats_rows(ITEM_STATS, "item_id", [(i, 0, 0) for i in items]))


@pytest.fixture
def repo(repo_dir):
    r = FeatureRepo(repo_dir)
    write_all(r)
    r.apply()
    return r


def test_write_refuses_duplicate_keys(repo_dir):
    r = FeatureRepo(repo_dir)
    with pytest.raises(ValueError, match="duplicate"):
        r.write_view(USER_HISTORY_VIEW, user_table([("u1", 0, [0.0], 0), ("u1", 0, [1.0], 1)]))
    assert not r.source_path(USER_HISTORY_VIEW).exists()
    assert not list(r.data_dir.glob("*.tmp-*"))


def test_historical_is_point_in_time_and_one_row_per_entity_row(repo):
    # the same (user, timestamp) twice: both rows must come back (Feast's file store collapses them)
    df = pd.DataFrame({"row_id": [0, 1, 2, 3, 4], "user_id": ["u1", "u1", "u1", "u1", "u2"],
                       "event_timestamp": pd.to_datetime([T0 + timedelta(days=1), T0 + timedelta(days=1),
                                                          T0 + timedelta(days=2), T0 + timedelta(days=5),
                                                          T0 + timedelta(hours=12)], utc=True)})
    out = repo.historical_table(df, [f"{USER_HISTORY_VIEW}:n_history"]).to_pandas().sort_values("row_id")
    n = out[f"{USER_HISTORY_VIEW}__n_history"].tolist()
    # day 1 sees the day-0 snapshot; day 2 sees the day-2 one (at or before); u2 at 12h: none yet
    assert n[:4] == [0, 0, 1, 1]
    assert pd.isna(n[4])


def test_historical_refuses_a_store_that_is_not_the_plugin(repo):
    df = pd.DataFrame({"user_id": ["u1"], "event_timestamp": pd.to_datetime([T0], utc=True)})
    with pytest.raises(ValueError, match="LlmrecOfflineStore"):
        FeatureRepo(repo.path, offline_store="file").historical_table(df, [f"{USER_HISTORY_VIEW}:n_history"])


def test_materialize_verifies_online_counts(repo):
    counts = repo.materialize(T0 - timedelta(days=1), T0 + timedelta(days=3))
    assert counts == {ITEM_TEXT_VIEW: 2, ITEM_METADATA_VIEW: 2, USER_HISTORY_VIEW: 2,
                      USER_STATS_VIEW: 2, ITEM_STATS_VIEW: 2}
    got = repo.online([f"{USER_HISTORY_VIEW}:embedding"], [{"user_id": "u1"}])
    assert got["embedding"] == [[1.0, 0.0]]  # the newest snapshot
    # a row that was never materialized makes the check fail loudly
    emb, meta = item_tables(["i1", "i2", "i3"])
    repo.write_view(ITEM_TEXT_VIEW, emb, encoder_key="enc-A")
    with pytest.raises(RuntimeError, match="2 of 3 entities"):
        repo.verify_online(ITEM_TEXT_VIEW, T0 + timedelta(days=3))


def test_missing_repo_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="feature_store.yaml"):
        FeatureRepo(tmp_path / "nowhere")


def test_plugin_agrees_with_feast_file_store(repo):
    """On distinct (key, timestamp) rows without TTL, where Feast's file store is correct, the
    plugin gives the same features (values and vectors)."""
    df = pd.DataFrame({"row_id": range(6), "user_id": ["u1", "u1", "u2", "u1", "u2", "u3"],
                       "event_timestamp": pd.to_datetime(
                           [T0, T0 + timedelta(days=1), T0 + timedelta(days=1), T0 + timedelta(days=2),
                            T0 + timedelta(days=9), T0 + timedelta(days=2)], utc=True)})
    refs = [f"{USER_HISTORY_VIEW}:embedding", f"{USER_HISTORY_VIEW}:n_history", f"{USER_STATS_VIEW}:n_30d"]
    ours = repo.historical_table(df, refs).to_pandas()
    assert ours["row_id"].tolist() == list(range(6))  # input order
    file_repo = FeatureRepo(repo.path, offline_store="file")
    theirs = file_repo.store.get_historical_features(entity_df=df, features=refs, full_feature_names=True)
    theirs = theirs.to_df().sort_values("row_id").reset_index(drop=True)
    assert len(theirs) == 6
    for col in (f"{USER_HISTORY_VIEW}__n_history", f"{USER_STATS_VIEW}__n_30d"):
        assert ours[col].fillna(-1).tolist() == theirs[col].fillna(-1).tolist(), col
    assert ours[f"{USER_HISTORY_VIEW}__n_history"].fillna(-1).tolist() == [0, 0, 0, 1, 0, -1]
    def vec(v):
        return list(v) if hasattr(v, "__len__") else None

    assert [vec(v) for v in ours[f"{USER_HISTORY_VIEW}__embedding"]] == \
        [vec(v) for v in theirs[f"{USER_HISTORY_VIEW}__embedding"]]
    assert vec(ours[f"{USER_HISTORY_VIEW}__embedding"][5]) is None


# ---- writes: partitioned, idempotent, one encoder per directory ---------------------------------

def test_writes_are_partitioned_and_idempotent(repo):
    path = repo.source_path(USER_HISTORY_VIEW)
    assert path.parent.name == USER_HISTORY_VIEW and path.name.startswith("enc-")
    assert sorted(p.name for p in path.iterdir()) == ["month=2024-01"]
    before = repo.read_view(USER_HISTORY_VIEW).sort_by([("user_id", "ascending"), ("event_timestamp", "ascending")])
    write_all(repo)  # the same build again
    after = repo.read_view(USER_HISTORY_VIEW).sort_by([("user_id", "ascending"), ("event_timestamp", "ascending")])
    assert after.num_rows == before.num_rows == 3 and after.equals(before)
    assert not [p for p in repo.data_dir.rglob(".*") if ".tmp-" in p.name or ".old-" in p.name]


def test_rows_spread_over_month_partitions(repo_dir):
    r = FeatureRepo(repo_dir)
    r.write_view(USER_STATS_VIEW, stats_rows(USER_STATS, "user_id", [("u1", 0, 0), ("u1", 40, 1), ("u2", 70, 0)]))
    assert sorted(p.name for p in r.source_path(USER_STATS_VIEW).iterdir()) == [
        "month=2024-01", "month=2024-02", "month=2024-03"]
    assert r.read_view(USER_STATS_VIEW).num_rows == 3


def test_a_new_encoder_never_mixes_with_the_old(repo):
    repo.materialize(T0 - timedelta(days=1), T0 + timedelta(days=3))
    old_dir = repo.source_path(ITEM_TEXT_VIEW)
    repo.check_encoder("enc-A")
    # the new model's build: other vectors, and item i2 is gone from the catalogue
    r = FeatureRepo(repo.path)
    write_all(r, items=("i1",), encoder_key="enc-B")
    new_dir = r.source_path(ITEM_TEXT_VIEW)
    assert new_dir != old_dir and old_dir.exists()  # beside, not into, the old vectors
    r.apply()
    with pytest.raises(ValueError, match="enc-A"):
        r.check_encoder("enc-A")
    r.check_encoder("enc-B")
    assert r.store.get_feature_view(ITEM_TEXT_VIEW).tags["dim"] == "2"
    # the online rows of the old model are gone: i2 (only in the old build) is not served
    got = r.online([f"{ITEM_TEXT_VIEW}:embedding"], [{"item_id": "i1"}, {"item_id": "i2"}])
    assert got["embedding"] == [None, None]
    r.materialize(T0 - timedelta(days=1), T0 + timedelta(days=3))
    got = r.online([f"{ITEM_TEXT_VIEW}:embedding"], [{"item_id": "i1"}, {"item_id": "i2"}])
    assert got["embedding"][0] is not None and got["embedding"][1] is None


# ---- bad input: a clear error before anything is written ---------------------------------------

@pytest.mark.parametrize("mutate, message", [
    (lambda t: t.drop_columns(["n_history"]), "missing columns \\['n_history'\\]"),
    (lambda t: t.append_column("extra", pa.array([1] * t.num_rows)), "unexpected columns \\['extra'\\]"),
    (lambda t: t.set_column(0, "user_id", pa.array([1, 1, 2])), "entity key 'user_id' has type int64"),
    (lambda t: t.set_column(1, "event_timestamp", t.column("event_timestamp").cast(pa.timestamp("us"))),
     "timezone-aware"),
    (lambda t: t.set_column(5, "n_history", pa.array(["a", "b", "c"])), "column 'n_history' of type string"),
    (lambda t: t.set_column(0, "user_id", pa.array(["u1", None, "u2"])), "user_id is null in row 1"),
    (lambda t: t.set_column(2, "embedding", pa.array([[0.0, 1.0], [1.0], [0.0, 1.0]], EMBEDDING)),
     "different lengths"),
    (lambda t: t.set_column(2, "embedding", pa.array([[0.0, 1.0], None, [0.0, 1.0]], EMBEDDING)),
     "row 1 has no vector"),
])
def test_bad_view_tables_are_refused_before_writing(repo_dir, mutate, message):
    r = FeatureRepo(repo_dir)
    table = mutate(user_table([("u1", 0, [0.0, 0.0], 0), ("u1", 2, [1.0, 0.0], 1), ("u2", 1, [0.0, 1.0], 0)]))
    with pytest.raises(ValueError, match=message):
        r.write_view(USER_HISTORY_VIEW, table, encoder_key="enc-A")
    assert not r.data_dir.exists() or not list(r.data_dir.rglob("*.parquet"))


def test_duplicates_are_named(repo_dir):
    r = FeatureRepo(repo_dir)
    with pytest.raises(ValueError, match="'u1' at 2024-01-01 00:00:00\\+00:00 \\(2 rows\\)"):
        r.write_view(USER_HISTORY_VIEW, user_table([("u1", 0, [0.0], 0), ("u1", 0, [1.0], 1)]))


def test_a_view_pointing_to_a_missing_source_is_named(repo):
    import shutil

    shutil.rmtree(repo.source_path(ITEM_METADATA_VIEW).resolve())  # its files gone, the link dangling
    with pytest.raises(FileNotFoundError, match="feature view 'item_metadata': source .* does not exist"):
        FeatureRepo(repo.path).apply()


# ---- point in time: TTL, incremental materialization ------------------------------------------

def test_ttl_is_respected(repo_dir):
    """A view with a 1-day TTL: a row older than that is invisible to the join."""
    decl = (repo_dir / "features.py").read_text().replace(
        'name="user_stats", entities=[user], ttl=timedelta(0)', 'name="user_stats", entities=[user], ttl=timedelta(days=1)')
    (repo_dir / "features.py").write_text(decl)
    r = FeatureRepo(repo_dir)
    write_all(r)
    r.apply()
    df = pd.DataFrame({"row_id": [0, 1, 2], "user_id": ["u1", "u1", "u1"],
                       "event_timestamp": pd.to_datetime([T0 + timedelta(hours=12), T0 + timedelta(days=1, hours=1),
                                                          T0 + timedelta(days=2, hours=12)], utc=True)})
    out = r.historical_table(df, [f"{USER_STATS_VIEW}:n_interactions", f"{USER_HISTORY_VIEW}:n_history"]).to_pandas()
    assert out["row_id"].tolist() == [0, 1, 2]
    n = out[f"{USER_STATS_VIEW}__n_interactions"].tolist()
    # 12 h after the day-0 row: visible; 25 h after: expired (null, the row kept); 12 h after the
    # day-2 row: visible
    assert n[0] == 0 and pd.isna(n[1]) and n[2] == 1
    # a view without TTL keeps its rows
    assert out[f"{USER_HISTORY_VIEW}__n_history"].tolist() == [0, 0, 1]


def test_materialize_incremental_picks_up_new_rows(repo):
    first = repo.materialize_incremental(T0 + timedelta(days=1, hours=12))
    assert first[USER_HISTORY_VIEW] == 2
    got = repo.online([f"{USER_HISTORY_VIEW}:n_history"], [{"user_id": "u1"}])
    assert got["n_history"] == [0]  # the day-2 snapshot is not due yet
    second = repo.materialize_incremental(T0 + timedelta(days=3))
    assert second[USER_HISTORY_VIEW] == 2
    assert repo.online([f"{USER_HISTORY_VIEW}:n_history"], [{"user_id": "u1"}])["n_history"] == [1]


# ---- Redis online store -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    """A real redis-server on loopback (CI installs it; see scripts/setup.sh)."""
    import os
    import shutil
    import socket
    import subprocess
    import time

    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("LLMREC_REQUIRE_REDIS"):
            pytest.fail("redis-server is not installed (scripts/setup.sh installs it)")
        pytest.skip("redis-server is not installed")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(tmp_path_factory.mktemp("redis"))],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import redis

    client = redis.Redis(host="127.0.0.1", port=port)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.1)
    yield f"127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)


def test_redis_online_store_serves_the_offline_values(repo, redis_server):
    r = FeatureRepo(repo.path, online_store="redis", redis_connection=redis_server)
    r.apply()
    counts = r.materialize(T0 - timedelta(days=1), T0 + timedelta(days=3))
    assert counts[USER_HISTORY_VIEW] == 2 and counts[ITEM_STATS_VIEW] == 2
    got = r.online([f"{USER_HISTORY_VIEW}:embedding", f"{USER_STATS_VIEW}:n_interactions"],
                   [{"user_id": "u1"}, {"user_id": "u2"}])
    assert got["embedding"] == [[1.0, 0.0], [0.0, 1.0]] and got["n_interactions"] == [1, 0]
    inc = r.materialize_incremental(T0 + timedelta(days=4))
    assert inc[USER_HISTORY_VIEW] == 2
    # the SQLite store of the same repo was not touched
    assert repo.online([f"{USER_HISTORY_VIEW}:embedding"], [{"user_id": "u1"}])["embedding"] == [None]


def test_redis_needs_a_connection_from_the_environment(repo_dir, monkeypatch):
    from llmrec_ray.config import FeatureStoreConfig
    from llmrec_ray.featurestore import open_repo

    monkeypatch.delenv("LLMREC_REDIS", raising=False)
    cfg = FeatureStoreConfig(repo_path=str(repo_dir), online_store="redis")
    with pytest.raises(ValueError, match="LLMREC_REDIS"):
        open_repo(cfg)
    monkeypatch.setenv("LLMREC_REDIS", "127.0.0.1:1,password=s3cret")
    r = open_repo(cfg)
    assert "s3cret" not in (repo_dir / "feature_store.yaml").read_text()
    assert r.store.config.online_store.type == "redis"


# ---- the Feast CLI on the repo as the project leaves it ----------------------------------------

def test_feast_cli_works_on_the_repo(repo):
    """`feast -c <repo>` on the repo as the project leaves it (the project's feature_store.yaml and
    features.py): plan finds nothing to change, configuration names the plugin, materialize loads
    the online store."""
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    from llmrec_ray.offline_store import STORE_TYPE

    feast = str(Path(sys.executable).parent / "feast")

    def run(*args):
        proc = subprocess.run([feast, "-c", str(repo.path), *args], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc.stdout

    # the project's own apply left the registry as features.py declares it: `feast plan` (exit 0,
    # checked by `run`) finds nothing to create, update or delete in the registry
    plan = run("plan").splitlines()
    assert "No changes to registry" in plan, plan
    # (on a registry that differs it prints e.g. "Created entity user", "Created feature view
    # user_stats", "Created feature service training"; sqlite tables are infrastructure)
    changes = ("Created ", "Updated ", "Deleted ")
    objects = ("project", "entity", "feature view", "feature service", "data source")
    assert not [line for line in plan if line.startswith(changes)
                and line.split(" ", 1)[1].startswith(objects)], plan
    # (the views the registry lists are checked through `feast ui`'s API below; each CLI call
    # costs ~8 s of importing Feast, so this test makes three)
    # the CLI reads the project's feature_store.yaml as configured: the offline store is the plugin
    declared = yaml.safe_load((repo.path / "feature_store.yaml").read_text())["offline_store"]
    assert declared["type"] == STORE_TYPE
    configuration = run("configuration")
    assert STORE_TYPE in configuration and "ray_min_rows" in configuration, configuration
    run("materialize", (T0 - timedelta(days=1)).isoformat(), (T0 + timedelta(days=3)).isoformat(),
        "--views", ITEM_METADATA_VIEW)
    assert FeatureRepo(repo.path).online([f"{ITEM_METADATA_VIEW}:title"], [{"item_id": "i1"}])["title"] == ["ti1"]


def test_feast_ui_shows_the_views(repo):
    """`feast ui` serves the registry: every view of the repo is listed by its API."""
    import json
    import socket
    import subprocess
    import sys
    import time
    import urllib.request
    from pathlib import Path

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    feast = str(Path(sys.executable).parent / "feast")
    proc = subprocess.Popen([feast, "-c", str(repo.path), "ui", "-h", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}/api/v1/feature_views?project=llmrec"
        for _ in range(120):
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    body = json.loads(r.read())
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
                time.sleep(0.5)
        else:
            pytest.fail("feast ui did not answer within 60 s")
        names = {v["spec"]["name"] for v in body["featureViews"]}
        assert names == {ITEM_TEXT_VIEW, ITEM_METADATA_VIEW, USER_HISTORY_VIEW, USER_STATS_VIEW, ITEM_STATS_VIEW}
    finally:
        proc.terminate()
        proc.wait(timeout=20)
