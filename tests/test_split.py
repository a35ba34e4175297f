"""The evaluation splits (llmrec_ray.split: user-temporal, global-temporal) on literal interaction tables."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from llmrec_ray.schemas import INTERACTIONS, TIMESTAMP
from llmrec_ray.split import global_temporal_eval_split, user_temporal_eval_split


def interactions(rows: list[tuple[str, str, int]]) -> pa.Table:
    """rows: (user, item, timestamp in µs). Rating = timestamp / 10 so rows stay recognisable."""
    users, items, times = zip(*rows) if rows else ((), (), ())
    return pa.table({
        "user_id": pa.array(users, pa.string()),
        "item_id": pa.array(items, pa.string()),
        "event_timestamp": pa.array(times, pa.int64()).cast(TIMESTAMP),
        "rating": pa.array([t / 10 for t in times], pa.float32()),
    }, schema=INTERACTIONS)


def triples(t: pa.Table) -> list[tuple[str, str, int]]:
    ts = t.column("event_timestamp").cast(pa.int64()).to_pylist()
    return list(zip(t.column("user_id").to_pylist(), t.column("item_id").to_pylist(), ts))


def queries(q) -> list[tuple]:
    """(user, query time in µs, truth, seen) of each query."""
    return [(r.user_id, int(r.query_time.value // 1000), r.truth, r.seen) for r in q.itertuples()]


def split_times(q) -> dict[str, int]:
    return {user: t for user, t, _, _ in queries(q)}


# Deliberately unsorted, users interleaved.
ROWS = [
    ("u1", "i5", 50), ("u2", "i1", 10), ("u1", "i1", 10), ("u3", "i9", 70),
    ("u1", "i4", 40), ("u4", "b", 40), ("u2", "i2", 20), ("u1", "i2", 20),
    ("u4", "a", 40), ("u2", "i3", 30), ("u1", "i3", 30), ("u4", "x", 10),
    ("u2", "i4", 40), ("u4", "y", 20), ("u4", "z", 30), ("u5", "k", 5),
    ("u5", "j", 6),
]
# test_fraction 0.2, no validation:
# u1: 5 interactions, floor(5*0.2) = 1 test: the latest, i5 at 50 -> split time 50
# u2: 4 interactions, floor(4*0.2) = 0 test -> all fit, no query
# u3: 1 interaction -> all fit, no query
# u4: 5 interactions, the last two tie at 40: ordered by item id (a, b), so b is test; split time 40
# u5: 2 interactions -> all fit


def user_split(rows, test_fraction=0.2, valid_fraction=0.0):
    return user_temporal_eval_split(interactions(rows), test_fraction=test_fraction,
                                    valid_fraction=valid_fraction)


def test_user_temporal_hand_computed():
    s = user_split(ROWS)
    assert sorted(triples(s.test)) == [("u1", "i5", 50), ("u4", "b", 40)]
    assert s.valid.num_rows == 0 and s.valid_queries.empty
    assert sorted(triples(s.fit)) == sorted(set(ROWS) - {("u1", "i5", 50), ("u4", "b", 40)})
    assert queries(s.test_queries) == [("u4", 40, ["b"], ["a", "x", "y", "z"]),
                                       ("u1", 50, ["i5"], ["i1", "i2", "i3", "i4"])]


def test_user_temporal_keeps_schema_and_row_count():
    table = interactions(ROWS)
    s = user_temporal_eval_split(table, test_fraction=0.2, valid_fraction=0.25)
    assert s.fit.num_rows + s.valid.num_rows + s.test.num_rows == table.num_rows == 17
    for part in (s.fit, s.valid, s.test):
        assert part.schema.equals(INTERACTIONS)
    assert list(s.test_queries.columns) == ["user_id", "query_time", "truth", "seen"]
    # the rating column travels with its row
    for part in (s.fit, s.valid, s.test):
        for (_, _, ts), rating in zip(triples(part), part.column("rating").to_pylist()):
            assert rating == pytest.approx(ts / 10)


def test_users_with_too_few_interactions_stay_in_fit_and_are_not_queried():
    s = user_split(ROWS)
    for user in ("u2", "u3", "u5"):
        assert user not in s.test.column("user_id").to_pylist()
        assert user not in s.test_queries["user_id"].tolist()
        assert user in s.fit.column("user_id").to_pylist()
    # with validation: u2 (4 rows, no test row) has floor(4 * 0.5) = 2 validation rows; u3 (one
    # interaction) has none and stays entirely in fit
    s = user_split(ROWS, 0.2, 0.5)
    assert sorted(triples(s.valid.filter(pc.equal(s.valid.column("user_id"), "u2")))) == \
        [("u2", "i3", 30), ("u2", "i4", 40)]
    assert "u2" in s.valid_queries["user_id"].tolist() and "u2" not in s.test_queries["user_id"].tolist()
    assert [u for u, _, _ in triples(s.fit) + triples(s.valid) + triples(s.test)].count("u3") == 1
    assert "u3" in s.fit.column("user_id").to_pylist()
    assert "u3" not in s.valid_queries["user_id"].tolist() + s.test_queries["user_id"].tolist()


@pytest.mark.parametrize("n, fraction, n_test", [
    (5, 0.2, 1), (4, 0.2, 0), (10, 0.2, 2), (9, 0.2, 1), (4, 0.25, 1), (3, 0.5, 1), (2, 0.5, 1),
    (1, 0.5, 0), (10, 0.3, 3), (3, 0.99, 2),
])
def test_number_of_test_rows_is_floor_of_n_times_fraction(n, fraction, n_test):
    # timestamps given in reverse so the input is unsorted
    rows = [("u", f"i{k:02d}", 100 + k) for k in reversed(range(n))]
    s = user_split(rows, fraction)
    assert s.test.num_rows == n_test
    assert s.fit.num_rows == n - n_test
    # test = the n_test latest
    assert sorted(triples(s.test)) == [("u", f"i{k:02d}", 100 + k) for k in range(n - n_test, n)]
    if n_test:
        assert split_times(s.test_queries) == {"u": 100 + n - n_test}
    else:
        assert s.test_queries.empty


@pytest.mark.parametrize("n, valid_fraction, n_valid", [
    (10, 0.25, 2), (10, 0.5, 4), (10, 0.1, 0), (5, 0.25, 1), (5, 0.2, 0), (11, 0.125, 1),
])
def test_number_of_validation_rows_is_floor_of_the_rest_times_fraction(n, valid_fraction, n_valid):
    # test = floor(n * 0.2); validation = floor((n - test) * valid_fraction), just before the test rows
    rows = [("u", f"i{k:02d}", 100 + k) for k in reversed(range(n))]
    s = user_split(rows, 0.2, valid_fraction)
    n_test = int(n * 0.2 + 1e-9)
    assert (s.fit.num_rows, s.valid.num_rows, s.test.num_rows) == (n - n_test - n_valid, n_valid, n_test)
    start = n - n_test - n_valid
    assert sorted(triples(s.valid)) == [("u", f"i{k:02d}", 100 + k) for k in range(start, n - n_test)]
    assert split_times(s.valid_queries) == ({"u": 100 + start} if n_valid else {})


def test_split_time_is_first_test_timestamp_and_separates_fit_from_test():
    rows = [("u", f"i{k}", t) for k, t in enumerate([90, 10, 70, 30, 50, 20, 80, 60, 40, 100])]
    # sorted times 10..100; floor(10*0.2) = 2 test: 90 and 100 -> split time 90
    s = user_split(rows)
    assert split_times(s.test_queries) == {"u": 90}
    assert sorted(t for _, _, t in triples(s.test)) == [90, 100]
    assert max(t for _, _, t in triples(s.fit)) < 90


def test_ties_at_the_cut_broken_by_item_id():
    # five interactions all at the same time, ordered a..e by item id: the last, e, is test
    rows = [("u", item, 7) for item in ["e", "a", "d", "c", "b"]]
    s = user_split(rows)
    assert triples(s.test) == [("u", "e", 7)]
    assert sorted(i for _, i, _ in triples(s.fit)) == ["a", "b", "c", "d"]
    assert queries(s.test_queries) == [("u", 7, ["e"], ["a", "b", "c", "d"])]


def test_no_user_item_pair_in_two_parts():
    rows = [(u, f"i{k}", 1000 * j + k) for j, u in enumerate(["a", "b", "c"]) for k in range(10)]
    s = user_temporal_eval_split(interactions(rows[::-1]), test_fraction=0.3, valid_fraction=0.3)
    # 10 interactions per user: floor(10*0.3) = 3 test, floor(7*0.3) = 2 validation
    assert (s.fit.num_rows, s.valid.num_rows, s.test.num_rows) == (15, 6, 9)
    pairs = lambda t: {(u, i) for u, i, _ in triples(t)}  # noqa: E731
    assert pairs(s.fit).isdisjoint(pairs(s.test))
    assert pairs(s.fit).isdisjoint(pairs(s.valid))
    assert pairs(s.valid).isdisjoint(pairs(s.test))
    assert len(pairs(s.fit)) + len(pairs(s.valid)) + len(pairs(s.test)) == len(rows)


def test_empty_table():
    s = user_split([])
    assert (s.fit.num_rows, s.valid.num_rows, s.test.num_rows) == (0, 0, 0)
    assert s.fit.schema.equals(INTERACTIONS)
    assert s.valid_queries.empty and s.test_queries.empty


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_bad_test_fraction_raises(fraction):
    with pytest.raises(ValueError, match="test_fraction"):
        user_split(ROWS, fraction)


@pytest.mark.parametrize("fraction", [1.0, -0.1, 1.5, float("nan")])
def test_bad_valid_fraction_raises(fraction):
    with pytest.raises(ValueError, match="valid_fraction"):
        user_split(ROWS, 0.2, fraction)



def test_user_temporal_eval_split_by_hand():
    # u1: 10 interactions at 10..100 -> test = last 2 (floor 2.0), valid = floor(8 * 0.25) = 2
    rows = [("u1", f"i{k}", 10 * k) for k in range(1, 11)] + [("u2", "a", 5), ("u2", "b", 6)]
    s = user_temporal_eval_split(interactions(rows), test_fraction=0.2, valid_fraction=0.25)
    assert sorted(triples(s.test)) == [("u1", "i10", 100), ("u1", "i9", 90)]
    assert sorted(triples(s.valid)) == [("u1", "i7", 70), ("u1", "i8", 80)]
    assert s.fit.num_rows == 8 and ("u2", "a", 5) in triples(s.fit)  # u2: too few to hold out
    assert s.fit.num_rows + s.valid.num_rows + s.test.num_rows == len(rows)
    fit_items = [f"i{k}" for k in range(1, 7)]
    assert queries(s.valid_queries) == [("u1", 70, ["i7", "i8"], sorted(fit_items))]
    # the test query masks everything before it: fit and validation items
    assert queries(s.test_queries) == [("u1", 90, ["i9", "i10"], sorted(fit_items + ["i7", "i8"]))]


def test_global_temporal_eval_split_groups_by_serving_snapshot():
    # 10 interactions at 10..100: quantile 0.8 -> 82, 0.9 -> 91 (linear interpolation)
    rows = [("old", "a", 10), ("old", "b", 20), ("old", "c", 30), ("old", "d", 40),
            ("new", "e", 50), ("old", "f", 60), ("old", "g", 70), ("old", "h", 80),
            ("old", "i", 90), ("new2", "j", 100)]
    snaps = pa.table({"user_id": ["old", "old", "old", "new", "new2"],
                      "event_timestamp": pa.array([10, 35, 85, 50, 100], pa.int64()).cast(TIMESTAMP)})
    s = global_temporal_eval_split(interactions(rows), (0.8, 0.9), snaps)
    assert s.fit.num_rows == 8 and s.valid.num_rows == 1 and s.test.num_rows == 1
    assert queries(s.valid_queries) == [("old", 90, ["i"], sorted("abcdfgh"))]
    assert queries(s.test_queries) == [("new2", 100, ["j"], [])]
    assert s.info["test_users_new_after_cut"] == 1
    # one query per serving snapshot: old's 60, 70, 80 are all served by the snapshot at 35
    s = global_temporal_eval_split(interactions(rows), (0.3, 0.4), snaps)
    got = queries(s.test_queries)
    assert ("old", 60, ["f", "g", "h"], ["a", "b", "c", "d"]) in got
    assert ("old", 90, ["i"], sorted("abcdfgh")) in got  # the snapshot at 85 serves i
    # without snapshots every distinct (user, time) is a query
    s = global_temporal_eval_split(interactions(rows), (0.3, 0.4))
    assert len(s.test_queries) == 6


def test_global_temporal_rejects_bad_quantiles():
    with pytest.raises(ValueError, match="global_quantiles"):
        global_temporal_eval_split(interactions(ROWS), (0.9, 0.8))
