"""Per-user temporal split (llmrec_ray.split.user_temporal_split) on literal interaction tables."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from llmrec_ray.schemas import INTERACTIONS, TIMESTAMP
from llmrec_ray.split import user_temporal_split


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


def cuts_dict(cuts: pa.Table) -> dict[str, int]:
    return dict(zip(cuts.column("user_id").to_pylist(),
                    cuts.column("split_time").cast(pa.int64()).to_pylist()))


# Deliberately unsorted, users interleaved.
ROWS = [
    ("u1", "i5", 50), ("u2", "i1", 10), ("u1", "i1", 10), ("u3", "i9", 70),
    ("u1", "i4", 40), ("u4", "b", 40), ("u2", "i2", 20), ("u1", "i2", 20),
    ("u4", "a", 40), ("u2", "i3", 30), ("u1", "i3", 30), ("u4", "x", 10),
    ("u2", "i4", 40), ("u4", "y", 20), ("u4", "z", 30), ("u5", "k", 5),
    ("u5", "j", 6),
]
# u1: 5 interactions, floor(5*0.2) = 1 test: the latest, i5 at 50 -> split_time 50
# u2: 4 interactions, floor(4*0.2) = 0 test -> all train, no cut
# u3: 1 interaction -> all train, no cut
# u4: 5 interactions, the last two tie at 40: ordered by item id (a, b), so b is test; split_time 40
# u5: 2 interactions -> all train


def test_split_hand_computed():
    train, test, cuts = user_temporal_split(interactions(ROWS), 0.2)
    assert sorted(triples(test)) == [("u1", "i5", 50), ("u4", "b", 40)]
    assert cuts_dict(cuts) == {"u1": 50, "u4": 40}
    assert sorted(triples(train)) == sorted(set(ROWS) - {("u1", "i5", 50), ("u4", "b", 40)})


def test_split_keeps_schema_and_row_count():
    table = interactions(ROWS)
    train, test, cuts = user_temporal_split(table, 0.2)
    assert train.num_rows + test.num_rows == table.num_rows == 17
    assert train.schema.equals(INTERACTIONS)
    assert test.schema.equals(INTERACTIONS)
    assert cuts.column_names == ["user_id", "split_time"]
    assert cuts.schema.field("split_time").type == TIMESTAMP
    # the rating column travels with its row
    for user, item, ts in triples(test):
        row = test.filter(pc.equal(test.column("item_id"), item)).to_pylist()[0]
        assert row["rating"] == pytest.approx(ts / 10)


def test_users_with_too_few_interactions_are_absent_from_cuts():
    _, test, cuts = user_temporal_split(interactions(ROWS), 0.2)
    for user in ("u2", "u3", "u5"):
        assert user not in cuts.column("user_id").to_pylist()
        assert user not in test.column("user_id").to_pylist()


@pytest.mark.parametrize("n, fraction, n_test", [
    (5, 0.2, 1), (4, 0.2, 0), (10, 0.2, 2), (9, 0.2, 1), (4, 0.25, 1), (3, 0.5, 1), (2, 0.5, 1),
    (1, 0.5, 0), (10, 0.3, 3), (3, 0.99, 2),
])
def test_number_of_test_rows_is_floor_of_n_times_fraction(n, fraction, n_test):
    # timestamps given in reverse so the input is unsorted
    rows = [("u", f"i{k:02d}", 100 + k) for k in reversed(range(n))]
    train, test, cuts = user_temporal_split(interactions(rows), fraction)
    assert test.num_rows == n_test
    assert train.num_rows == n - n_test
    # test = the n_test latest
    assert sorted(triples(test)) == [("u", f"i{k:02d}", 100 + k) for k in range(n - n_test, n)]
    if n_test:
        assert cuts_dict(cuts) == {"u": 100 + n - n_test}
    else:
        assert cuts.num_rows == 0


def test_split_time_is_first_test_timestamp_and_separates_train_from_test():
    rows = [("u", f"i{k}", t) for k, t in enumerate([90, 10, 70, 30, 50, 20, 80, 60, 40, 100])]
    # sorted times 10..100; floor(10*0.2) = 2 test: 90 and 100 -> split_time 90
    train, test, cuts = user_temporal_split(interactions(rows), 0.2)
    assert cuts_dict(cuts) == {"u": 90}
    assert sorted(t for _, _, t in triples(test)) == [90, 100]
    assert max(t for _, _, t in triples(train)) < 90


def test_ties_at_the_cut_broken_by_item_id():
    # five interactions all at the same time, ordered a..e by item id: the last, e, is test
    rows = [("u", item, 7) for item in ["e", "a", "d", "c", "b"]]
    train, test, cuts = user_temporal_split(interactions(rows), 0.2)
    assert triples(test) == [("u", "e", 7)]
    assert sorted(i for _, i, _ in triples(train)) == ["a", "b", "c", "d"]
    assert cuts_dict(cuts) == {"u": 7}


def test_no_user_item_pair_in_both_train_and_test():
    rows = [(u, f"i{k}", 1000 * j + k) for j, u in enumerate(["a", "b", "c"]) for k in range(7)]
    train, test, _ = user_temporal_split(interactions(rows[::-1]), 0.3)
    # 7 interactions, floor(7*0.3) = 2 test per user
    assert test.num_rows == 6
    pairs = lambda t: {(u, i) for u, i, _ in triples(t)}  # noqa: E731
    assert pairs(train).isdisjoint(pairs(test))
    assert len(pairs(train)) + len(pairs(test)) == len(rows)


def test_empty_table():
    train, test, cuts = user_temporal_split(interactions([]), 0.2)
    assert (train.num_rows, test.num_rows, cuts.num_rows) == (0, 0, 0)
    assert cuts.schema.field("split_time").type == TIMESTAMP


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_bad_fraction_raises(fraction):
    with pytest.raises(ValueError, match="test_fraction"):
        user_temporal_split(interactions(ROWS), fraction)


# ---- the evaluation protocols (fit / validation / test and their queries) ----

from llmrec_ray.split import global_temporal_eval_split, user_temporal_eval_split  # noqa: E402


def queries(q) -> list[tuple]:
    return [(r.user_id, int(r.query_time.value // 1000), r.truth, r.seen) for r in q.itertuples()]


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
