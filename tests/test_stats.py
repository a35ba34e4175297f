"""User and item statistics snapshots against a by-hand loop, computed both ways: as a Ray Data
groupby on local Ray and in the calling process (small inputs); the two agree."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pyarrow as pa
import pytest
from conftest import T0

from llmrec_ray.schemas import TIMESTAMP
from llmrec_ray.stats import DAY_US, item_snapshot_times, item_stats, stats_at, user_stats

T0_US = int(T0.timestamp() * 1_000_000)


def reference(ts, ratings, s, windows):
    """Stats at time s by brute force: only interactions with t < s count."""
    before = [(t, r) for t, r in zip(ts, ratings) if t < s]
    rated = [r for _, r in before if r == r]
    out = {"n_interactions": len(before), "mean_rating": np.float32(np.mean(rated)) if rated else 0.0,
           "last_interaction_unix": max(t for t, _ in before) // 1_000_000 if before else 0}
    for w, days in windows.items():
        out[f"n_{w}"] = sum(1 for t, _ in before if t >= s - days * DAY_US)
    return out


def test_stats_at_matches_brute_force():
    rng = np.random.default_rng(0)
    ts = np.sort(T0_US + rng.integers(0, 60 * DAY_US, 40))
    ts[5] = ts[4]  # two interactions in the same microsecond
    ratings = rng.integers(1, 6, 40).astype(float)
    ratings[[3, 7]] = np.nan  # unrated interactions count, but not in the mean
    snaps = np.concatenate([[ts[0], ts[4], ts[4] + 1], T0_US + rng.integers(0, 100 * DAY_US, 20)])
    got = stats_at(ts, ratings, snaps, ("7d", "30d"))
    for k, s in enumerate(snaps):
        want = reference(ts, ratings, s, {"7d": 7, "30d": 30})
        for name, value in want.items():
            assert np.isclose(got[name][k], value), (name, s)
    # a snapshot at an interaction's own time never counts it (the point-in-time rule)
    assert got["n_interactions"][0] == 0 and got["n_interactions"][1] == 4 and got["n_interactions"][2] == 6


def test_item_snapshot_times_follow_every_change():
    every = DAY_US
    ts = np.array([T0_US + 3 * DAY_US + 5, T0_US + 3 * DAY_US + 9])
    snaps = item_snapshot_times(ts, every, T0_US)
    day = lambda d: T0_US + d * DAY_US
    # start; the day after the interactions; the day after they leave the 7- and 30-day windows
    assert snaps.tolist() == [day(0), day(4), day(11), day(34)]
    s = stats_at(ts, np.array([4.0, 5.0]), snaps, ("7d", "30d"))
    assert s["n_7d"].tolist() == [0, 2, 0, 0] and s["n_30d"].tolist() == [0, 2, 2, 0]
    assert s["n_interactions"].tolist() == [0, 2, 2, 2]


def _interactions(rows):
    return pa.table({
        "user_id": [r[0] for r in rows], "item_id": [r[1] for r in rows],
        "event_timestamp": pa.array([T0 + timedelta(days=r[2]) for r in rows], TIMESTAMP),
        "rating": pa.array([r[3] for r in rows], pa.float32()),
    })


ON_RAY, HERE = 0, 10**9  # ray_min_rows: always on Ray / always in this process


# The known answers are checked in this process; the Ray path is held to the same rows, bit for
# bit, by test_ray_and_in_process_stats_are_identical (one Ray Data groupby costs ~10 s here).

def test_user_and_item_stats():
    inter = _interactions([("u1", "a", 1, 4.0), ("u1", "b", 2, 2.0), ("u2", "a", 2, 5.0),
                           ("u1", "a", 40, 3.0)])
    snaps = pa.table({"user_id": ["u1", "u1", "u1", "u2"],
                      "event_timestamp": pa.array([T0 + timedelta(days=d) for d in (1, 3, 41, 2)], TIMESTAMP)})
    users = user_stats(inter, snaps, HERE).to_pylist()
    assert [(u["user_id"], u["n_interactions"], u["mean_rating"], u["n_30d"]) for u in users] == [
        ("u1", 0, 0.0, 0), ("u1", 2, 3.0, 2), ("u1", 3, 3.0, 1), ("u2", 0, 0.0, 0)]
    assert users[1]["last_interaction_unix"] == int((T0 + timedelta(days=2)).timestamp())

    starts = pa.table({"item_id": ["a", "b", "cold"],
                       "event_timestamp": pa.array([T0] * 3, TIMESTAMP)})
    items = item_stats(inter, starts, DAY_US, HERE)
    by_item = {}
    for r in items.to_pylist():
        by_item.setdefault(r["item_id"], []).append(r)
    assert by_item["cold"] == [{"item_id": "cold", "event_timestamp": T0, "n_interactions": 0,
                                "mean_rating": 0.0, "last_interaction_unix": 0, "n_7d": 0, "n_30d": 0}]
    a = {(r["event_timestamp"] - T0).days: r for r in by_item["a"]}
    assert a[0]["n_interactions"] == 0
    assert (a[2]["n_interactions"], a[2]["n_7d"]) == (1, 1)  # the day-1 rating, seen from day 2
    assert (a[3]["n_interactions"], a[3]["mean_rating"], a[3]["n_7d"]) == (2, 4.5, 2)
    assert a[41]["n_30d"] == 1 and a[41]["n_interactions"] == 3
    # one row per (item, time), sorted
    keys = [(r["item_id"], r["event_timestamp"]) for r in items.to_pylist()]
    assert keys == sorted(set(keys))


def test_user_stats_rows_match_snapshots():
    rng = np.random.default_rng(3)
    rows = [(f"u{rng.integers(0, 5)}", f"i{rng.integers(0, 9)}", float(rng.integers(0, 90)), 3.0)
            for _ in range(60)]
    inter = _interactions(rows)
    users = sorted({r[0] for r in rows})
    snaps = pa.table({"user_id": users * 3,
                      "event_timestamp": pa.array([T0 + timedelta(days=d) for d in [10] * 5 + [50] * 5 + [95] * 5],
                                                  TIMESTAMP)})
    got = user_stats(inter, snaps, HERE)
    assert got.num_rows == 15
    for r in got.to_pylist():
        s = int(r["event_timestamp"].timestamp() * 1_000_000)
        mine = sorted(int((T0 + timedelta(days=x[2])).timestamp() * 1_000_000) for x in rows if x[0] == r["user_id"])
        want = reference(mine, [3.0] * len(mine), s, {"30d": 30})
        assert (r["n_interactions"], r["n_30d"]) == (want["n_interactions"], want["n_30d"])


@pytest.mark.parametrize("rating", [None])
def test_unrated_interactions_count_but_have_no_mean(ray_session, rating):
    inter = _interactions([("u1", "a", 1, rating), ("u1", "b", 2, rating)])
    snaps = pa.table({"user_id": ["u1"], "event_timestamp": pa.array([T0 + timedelta(days=5)], TIMESTAMP)})
    r = user_stats(inter, snaps).to_pylist()[0]
    assert (r["n_interactions"], r["mean_rating"]) == (2, 0.0)


def test_ray_and_in_process_stats_are_identical(ray_session):
    """The threshold only moves the work: both paths return the same rows, bit for bit."""
    rng = np.random.default_rng(7)
    rows = [(f"u{rng.integers(0, 40)}", f"i{rng.integers(0, 60)}", float(rng.integers(0, 200)),
             None if rng.random() < 0.2 else float(rng.integers(1, 6))) for _ in range(500)]
    inter = _interactions(rows)
    users = sorted({r[0] for r in rows})
    snaps = pa.table({"user_id": users * 2, "event_timestamp": pa.array(
        [T0 + timedelta(days=int(d)) for d in rng.integers(0, 220, 2 * len(users))], TIMESTAMP)})
    starts = pa.table({"item_id": [f"i{k}" for k in range(65)],  # i60..i64: never interacted with
                       "event_timestamp": pa.array([T0] * 65, TIMESTAMP)})
    assert user_stats(inter, snaps, ON_RAY).equals(user_stats(inter, snaps, HERE))
    ray_items, here_items = item_stats(inter, starts, DAY_US, ON_RAY), item_stats(inter, starts, DAY_US, HERE)
    assert here_items.num_rows > 65 and ray_items.equals(here_items)
