"""The Feast repo wrapper: atomic writes, duplicate keys refused, count checks that fail loudly."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pandas as pd
import pyarrow as pa
import pytest

from llmrec_ray.featurestore import ITEM_METADATA_VIEW, ITEM_TEXT_VIEW, USER_HISTORY_VIEW, FeatureRepo
from llmrec_ray.schemas import EMBEDDING, TIMESTAMP

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)


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


@pytest.fixture
def repo(repo_dir, ray_session):
    r = FeatureRepo(repo_dir)
    r.write_view(USER_HISTORY_VIEW, user_table([("u1", 0, [0.0, 0.0], 0), ("u1", 2, [1.0, 0.0], 1),
                                                ("u2", 1, [0.0, 1.0], 0)]))
    emb, meta = item_tables(["i1", "i2"])
    r.write_view(ITEM_TEXT_VIEW, emb)
    r.write_view(ITEM_METADATA_VIEW, meta)
    r.apply()
    return r


def test_write_refuses_duplicate_keys(repo_dir):
    r = FeatureRepo(repo_dir)
    with pytest.raises(ValueError, match="duplicate"):
        r.write_view(USER_HISTORY_VIEW, user_table([("u1", 0, [0.0], 0), ("u1", 0, [1.0], 1)]))
    assert not r.source_path(USER_HISTORY_VIEW).exists()
    assert not list(r.data_dir.glob("*.tmp-*"))


def test_historical_is_point_in_time_and_one_row_per_entity_row(repo):
    # the same (user, timestamp) twice: both rows must come back (Feast once collapsed them)
    df = pd.DataFrame({"row_id": [0, 1, 2, 3, 4], "user_id": ["u1", "u1", "u1", "u1", "u2"],
                       "event_timestamp": pd.to_datetime([T0 + timedelta(days=1), T0 + timedelta(days=1),
                                                          T0 + timedelta(days=2), T0 + timedelta(days=5),
                                                          T0 + timedelta(hours=12)], utc=True)})
    out = repo.historical(df, [f"{USER_HISTORY_VIEW}:n_history"]).to_pandas().sort_values("row_id")
    n = out[f"{USER_HISTORY_VIEW}__n_history"].tolist()
    # day 1 sees the day-0 snapshot; day 2 sees the day-2 one (at or before); u2 at 12h: none yet
    assert n[:4] == [0, 0, 1, 1]
    assert pd.isna(n[4])


def test_historical_needs_unique_row_ids(repo):
    df = pd.DataFrame({"row_id": [0, 0], "user_id": ["u1", "u1"],
                       "event_timestamp": pd.to_datetime([T0, T0], utc=True)})
    with pytest.raises(ValueError, match="unique 'row_id'"):
        repo.historical(df, [f"{USER_HISTORY_VIEW}:n_history"])


def test_materialize_verifies_online_counts(repo):
    counts = repo.materialize(T0 - timedelta(days=1), T0 + timedelta(days=3))
    assert counts == {ITEM_TEXT_VIEW: 2, ITEM_METADATA_VIEW: 2, USER_HISTORY_VIEW: 2}
    got = repo.online([f"{USER_HISTORY_VIEW}:embedding"], [{"user_id": "u1"}])
    assert got["embedding"] == [[1.0, 0.0]]  # the newest snapshot
    # a row that was never materialized makes the check fail loudly
    emb, meta = item_tables(["i1", "i2", "i3"])
    repo.write_view(ITEM_TEXT_VIEW, emb)
    with pytest.raises(RuntimeError, match="2 of 3 entities"):
        repo.verify_online(ITEM_TEXT_VIEW, T0 + timedelta(days=3))


def test_missing_repo_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="feature_store.yaml"):
        FeatureRepo(tmp_path / "nowhere")


def test_ray_and_file_offline_stores_agree(repo):
    df = pd.DataFrame({"row_id": range(6), "user_id": ["u1", "u1", "u2", "u1", "u2", "u1"],
                       "event_timestamp": pd.to_datetime(
                           [T0, T0 + timedelta(days=1), T0 + timedelta(days=1), T0 + timedelta(days=2),
                            T0 + timedelta(days=9), T0 + timedelta(days=2)], utc=True)})
    refs = [f"{USER_HISTORY_VIEW}:embedding", f"{USER_HISTORY_VIEW}:n_history"]
    by_ray = repo.historical(df, refs).to_pandas().sort_values("row_id")
    file_repo = FeatureRepo(repo.path, offline_store="file")
    by_file = file_repo.historical(df, refs).to_pandas().sort_values("row_id")
    assert by_ray[f"{USER_HISTORY_VIEW}__n_history"].tolist() == [0, 0, 0, 1, 0, 1]
    assert by_file[f"{USER_HISTORY_VIEW}__n_history"].tolist() == [0, 0, 0, 1, 0, 1]
    for a, b in zip(by_ray[f"{USER_HISTORY_VIEW}__embedding"], by_file[f"{USER_HISTORY_VIEW}__embedding"]):
        assert list(a) == list(b)
