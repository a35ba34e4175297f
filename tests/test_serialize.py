"""Entity -> text (llmrec_ray.serialize): durations, templates, item rows, user snapshots.

Timestamps are integer microseconds since the epoch, cast to timestamp[us, UTC].
"""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pytest

from llmrec_ray.serialize import (item_text_rows, parse_duration_us, render, snapshot_times,
                                  user_snapshot_rows)

S = 1_000_000
D = 86_400 * S
JAN1 = 1_704_067_200 * S  # 2024-01-01T00:00:00Z


def ts(values: list[int | None]) -> pa.Array:
    return pa.array(values, pa.int64()).cast(pa.timestamp("us", tz="UTC"))


# --- parse_duration_us ---------------------------------------------------------------------------

@pytest.mark.parametrize("text, us", [
    ("30s", 30 * S), ("5m", 300 * S), ("6h", 6 * 3600 * S), ("1d", D), ("2w", 14 * D),
    (" 12h ", 12 * 3600 * S), ("1 d", D), ("90s", 90 * S),
])
def test_parse_duration(text, us):
    assert parse_duration_us(text) == us


@pytest.mark.parametrize("text", ["", "d", "1", "0d", "0s", "-1d", "1.5h", "1y", "1D", "1dd", "d1",
                                  "1h30m"])
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError, match="bad duration"):
        parse_duration_us(text)


# --- render --------------------------------------------------------------------------------------

def test_render_none_is_empty_and_whitespace_collapses():
    got = render("{title}. Genres: {genres}. {description}",
                 {"title": "Heat", "genres": "Crime|Thriller", "description": None}, "item 'i1'")
    # "Heat. Genres: Crime|Thriller. " -> trailing space stripped
    assert got == "Heat. Genres: Crime|Thriller."
    got = render("  {a}\n\n{b}\t {c}  ", {"a": "x  y", "b": "z", "c": None}, "w")
    assert got == "x y z"


def test_render_extra_values_ignored_and_numbers_formatted():
    assert render("{title} ({year})", {"title": "Up", "year": 2009, "unused": 1}, "w") == "Up (2009)"


def test_render_missing_field_names_it():
    with pytest.raises(ValueError) as err:
        render("{title} ({year})", {"title": "Up"}, "item 'i7'")
    message = str(err.value)
    assert "{year}" in message
    assert "item 'i7'" in message
    assert "title" in message  # the available columns are listed


# --- item_text_rows ------------------------------------------------------------------------------

ITEM_TEMPLATE = "{title}. Genres: {genres}."


def test_item_text_rows_available_from_or_valid_from():
    items = pa.table({
        "item_id": pa.array(["i1", "i2", "i3"], pa.string()),
        "title": pa.array(["Heat", "Up  ", None], pa.string()),
        "genres": pa.array(["Crime", None, "Drama"], pa.string()),
        "available_from": ts([JAN1 + 5 * D, None, JAN1 - 3]),
    })
    valid_from = JAN1 + 17
    out = item_text_rows(items, ITEM_TEMPLATE, valid_from)
    assert out.column("entity").to_pylist() == ["item"] * 3
    assert out.column("entity_id").to_pylist() == ["i1", "i2", "i3"]
    assert out.column("event_timestamp").type == pa.timestamp("us", tz="UTC")
    assert out.column("event_timestamp").cast(pa.int64()).to_pylist() == [
        JAN1 + 5 * D, valid_from, JAN1 - 3]
    # a missing value takes its words with it ("Genres: ." and a lone "." never appear)
    assert out.column("text").to_pylist() == ["Heat. Genres: Crime.", "Up .", "Genres: Drama."]


def test_item_text_rows_without_available_from_column():
    items = pa.table({"item_id": pa.array(["a", "b"]), "title": pa.array(["A", "B"]),
                      "genres": pa.array(["x", "y"])})
    out = item_text_rows(items, ITEM_TEMPLATE, JAN1)
    assert out.column("event_timestamp").cast(pa.int64()).to_pylist() == [JAN1, JAN1]
    assert out.column("text").to_pylist() == ["A. Genres: x.", "B. Genres: y."]


def test_item_text_rows_all_null_and_no_null_available_from():
    base = {"item_id": pa.array(["a", "b"]), "title": pa.array(["A", "B"]),
            "genres": pa.array(["x", "y"])}
    all_null = item_text_rows(pa.table({**base, "available_from": ts([None, None])}),
                              ITEM_TEMPLATE, JAN1)
    assert all_null.column("event_timestamp").cast(pa.int64()).to_pylist() == [JAN1, JAN1]
    # exact µs values survive (no float rounding of ~1.7e15)
    none_null = item_text_rows(pa.table({**base, "available_from": ts([JAN1 + 1, JAN1 + 3])}),
                               ITEM_TEMPLATE, 0)
    assert none_null.column("event_timestamp").cast(pa.int64()).to_pylist() == [JAN1 + 1, JAN1 + 3]


def test_item_text_rows_missing_field():
    items = pa.table({"item_id": pa.array(["a"]), "title": pa.array(["A"])})
    with pytest.raises(ValueError, match="genres"):
        item_text_rows(items, ITEM_TEMPLATE, 0)


# --- snapshot_times ------------------------------------------------------------------------------

@pytest.mark.parametrize("timestamps, every, max_new, expected", [
    # nothing -> nothing
    ([], 100, 5, []),
    # one interaction: the cold snapshot at 5, then the pending one at the next boundary 100
    ([5], 100, 5, [5, 100]),
    # cadence: 5 and 30 pending; at 150 the boundary 100 (<= 150) is passed -> snapshot at 100;
    # 150 is pending at the end -> next boundary (150//100 + 1)*100 = 200
    ([5, 30, 150], 100, 10, [5, 100, 200]),
    # an interaction exactly on the boundary: snapshot at 100 covers t < 100 (only 5); 100 pending -> 200
    ([5, 100], 100, 10, [5, 100, 200]),
    # a gap over several boundaries: only the first boundary after the pending one (100), then 300
    ([5, 7, 250], 100, 10, [5, 100, 300]),
    # max_new = 2: after 5, 6 -> snapshot at 6+1 = 7 (covers 5, 6); after 7, 8 -> 9; nothing pending
    ([5, 6, 7, 8], 100, 2, [5, 7, 9]),
    # shared timestamps are covered together: three at 5 exceed max_new = 2 -> one snapshot at 6
    ([5, 5, 5, 50], 100, 2, [5, 6, 100]),
    # the 2nd interaction reaches max_new, but the 3rd shares its time: snapshot at 21 covers all
    ([5, 20, 20], 100, 2, [5, 21]),
    # max_new = 1: a snapshot right after each distinct time
    ([5, 5, 9], 100, 1, [5, 6, 10]),
    # boundary and max_new together: 5 pending; at 120 boundary 100 -> snapshot 100; 120, 130 -> 131
    ([5, 120, 130, 180], 100, 2, [5, 100, 131, 200]),
])
def test_snapshot_times_hand_computed(timestamps, every, max_new, expected):
    assert snapshot_times(timestamps, every, max_new) == expected


def test_snapshot_times_accepts_numpy_int64():
    assert snapshot_times(np.array([5, 6, 7, 8], dtype=np.int64), 100, 2) == [5, 7, 9]


@pytest.mark.parametrize("seed", range(20))
def test_snapshot_times_invariants(seed):
    rng = random.Random(seed)
    times = sorted(rng.randrange(0, 1000) for _ in range(rng.randrange(1, 30)))
    every, max_new = rng.choice([7, 50, 100, 1000]), rng.randrange(1, 6)
    snaps = snapshot_times(times, every, max_new)
    covered = [sum(t < s for t in times) for s in snaps]
    assert snaps[0] == times[0] and covered[0] == 0  # the cold snapshot
    assert snaps == sorted(set(snaps))  # strictly increasing
    assert covered == sorted(set(covered))  # never a snapshot when nothing changed
    assert covered[-1] == len(times)  # every interaction ends up covered
    for prev, cur in zip(covered, covered[1:]):
        # no snapshot falls inside a group of equal timestamps
        assert cur == len(times) or times[cur - 1] != times[cur]
        # max_new bounds how many interactions of distinct times one snapshot adds, unless a
        # group of equal times is larger
        new = times[prev:cur]
        if len(set(new)) > 1:
            assert len(new) - new.count(new[-1]) < max_new


# --- user_snapshot_rows --------------------------------------------------------------------------

ITEMS = pa.table({
    "item_id": pa.array(["i1", "i2", "i3", "i4", "i5", "i6"], pa.string()),
    "title": pa.array(["Alpha", "Bravo", "Charlie", "Delta", "Echo", "Foxtrot"], pa.string()),
    "genres": pa.array(["G1", "G2", None, "G4", "G5", "G6"], pa.string()),
})
TITLE = dict(zip(ITEMS.column("item_id").to_pylist(), ITEMS.column("title").to_pylist()))


def interactions(rows: list[tuple[str, str, int, float | None]]) -> pa.Table:
    users, items, times, ratings = zip(*rows)
    return pa.table({"user_id": pa.array(users, pa.string()), "item_id": pa.array(items, pa.string()),
                     "event_timestamp": ts(list(times)), "rating": pa.array(ratings, pa.float32())})


def snapshots(inter: pa.Table, history_length: int = 2, every: str = "1d", max_new: int = 2,
              template: str = "{title} ({rating})", empty: str = "none yet") -> list[tuple]:
    out = user_snapshot_rows(inter, ITEMS, template, "{user_id}: {history}", " | ", history_length,
                             every, max_new, empty)
    assert out.column("entity").to_pylist() == ["user"] * out.num_rows
    return list(zip(out.column("entity_id").to_pylist(),
                    out.column("event_timestamp").cast(pa.int64()).to_pylist(),
                    out.column("n_history").to_pylist(), out.column("text").to_pylist()))


# Unsorted; u1: 100, 200, 300 on day 0 and 2D+5; u0: a single interaction.
ROWS = [
    ("u1", "i3", JAN1 + 300, 3.5), ("u0", "i6", JAN1 + 50, 2.0), ("u1", "i1", JAN1 + 100, 5.0),
    ("u1", "i4", JAN1 + 2 * D + 5, None), ("u1", "i2", JAN1 + 200, 4.0),
]


def test_user_snapshot_rows_hand_computed():
    # u0: snapshot_times([50]) -> cold at 50, pending -> next day boundary JAN1 + D
    # u1: times [100, 200, 300, 2D+5] (+JAN1, which is a day boundary), every 1d, max_new 2:
    #   cold at 100; 100, 200 reach max_new -> 201; 300 pending; at 2D+5 the boundary D is passed
    #   -> D; 2D+5 pending at the end -> 3D.
    assert snapshots(interactions(ROWS)) == [
        ("u0", JAN1 + 50, 0, "u0: none yet"),
        ("u0", JAN1 + D, 1, "u0: Foxtrot (2)"),
        ("u1", JAN1 + 100, 0, "u1: none yet"),
        ("u1", JAN1 + 201, 2, "u1: Bravo (4) | Alpha (5)"),
        ("u1", JAN1 + D, 3, "u1: Charlie (3.5) | Bravo (4)"),  # history_length 2: newest two
        ("u1", JAN1 + 3 * D, 4, "u1: Delta | Charlie (3.5)"),  # no rating: no "()"
    ]


def test_user_snapshot_rows_date_and_item_fields():
    rows = [("u", "i3", JAN1 + 5, 1.0), ("u", "i1", JAN1 + D + 5, 4.5)]
    got = snapshots(interactions(rows), history_length=5, max_new=10,
                    template="{title} [{genres}] on {date}: {rating}")
    # None genres take their brackets with them; dates from the interaction timestamp (UTC)
    assert got == [
        ("u", JAN1 + 5, 0, "u: none yet"),
        ("u", JAN1 + D, 1, "u: Charlie on 2024-01-01: 1"),
        ("u", JAN1 + 2 * D, 2, "u: Alpha [G1] on 2024-01-02: 4.5 | Charlie on 2024-01-01: 1"),
    ]


def test_default_empty_history():
    out = user_snapshot_rows(interactions([("u", "i1", JAN1, 1.0)]), ITEMS, "{title}", "{history}",
                             "; ", 3, "1d", 5)
    assert out.column("text").to_pylist() == ["nothing yet", "Alpha"]


def test_interactions_sharing_a_timestamp_are_covered_together():
    # i1, i2, i3 at the same time: max_new = 2 is reached inside the group -> one snapshot at t+1
    rows = [("u", "i2", JAN1 + 10, 2.0), ("u", "i1", JAN1 + 10, 1.0), ("u", "i3", JAN1 + 10, 3.0),
            ("u", "i4", JAN1 + 20, 4.0)]
    got = snapshots(interactions(rows), history_length=5)
    assert [(s, n) for _, s, n, _ in got] == [(JAN1 + 10, 0), (JAN1 + 11, 3), (JAN1 + D, 4)]
    # equal times: item-id order i1, i2, i3, so newest first is i3, i2, i1
    assert got[1][3] == "u: Charlie (3) | Bravo (2) | Alpha (1)"


def reference_history(rows, user, s, history_length):
    """Items of `user` with time < s, newest first (ties: higher item id first), at most N."""
    past = sorted((t, item) for u, item, t, _ in rows if u == user and t < s)
    return [item for _, item in reversed(past)][:history_length], len(past)


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("history_length, every, max_new", [(2, "1d", 2), (3, "6h", 4), (10, "1w", 1)])
def test_point_in_time(seed, history_length, every, max_new):
    rng = random.Random(seed)
    rows = []
    for user in ["a", "b", "c"]:
        for _ in range(rng.randrange(1, 9)):
            t = JAN1 + rng.randrange(0, 10) * rng.choice([3600 * S, D])  # some shared timestamps
            rows.append((user, rng.choice(list(TITLE)), t, float(rng.randrange(1, 6))))
    # a user never rates the same item twice at the same time (keeps the reference ordering exact)
    rows = list({(u, i, t): (u, i, t, r) for u, i, t, r in rows}.values())
    rng.shuffle(rows)
    got = snapshots(interactions(rows), history_length, every, max_new, template="{title}")
    assert {u for u, *_ in got} == {u for u, *_ in rows}
    for user, s, n_history, text in got:
        expected_items, n_before = reference_history(rows, user, s, history_length)
        assert n_history == n_before
        history = " | ".join(TITLE[i] for i in expected_items) or "none yet"
        assert text == f"{user}: {history}"
        # nothing at or after s leaks in (titles are unique words)
        future = {TITLE[i] for u, i, t, _ in rows if u == user and t >= s} - {
            TITLE[i] for u, i, t, _ in rows if u == user and t < s}
        assert not any(title in text for title in future)
    for user in {u for u, *_ in rows}:
        mine = [(s, n) for u, s, n, _ in got if u == user]
        first_t = min(t for u, _, t, _ in rows if u == user)
        assert mine[0] == (first_t, 0)  # the cold snapshot at the first interaction
        assert mine[-1][1] == sum(u == user for u, *_ in rows)  # all covered eventually


def test_render_leaves_out_the_words_of_missing_fields():
    """Data without ratings or genres needs no template changes: a word of the template (a
    label such as "Genres:" with the word after it) whose fields all lack a value is left out,
    with its brackets and punctuation; a word with one field present keeps it."""
    history = "{title} ({genres}) {rating}/5"
    assert render(history, {"title": "Heat", "genres": None, "rating": "4"}, "w") == "Heat 4/5"
    assert render(history, {"title": "Heat", "genres": "Crime", "rating": None}, "w") == "Heat (Crime)"
    assert render(history, {"title": "Heat", "genres": " ", "rating": float("nan")}, "w") == "Heat"
    item = "{title}. Genres: {genres}. {description}"
    assert render(item, {"title": "Heat", "genres": None, "description": "A heist."}, "w") == "Heat. A heist."
    assert render(item, {"title": None, "genres": "Crime", "description": None}, "w") == "Genres: Crime."
    assert render("{a}|{b}", {"a": "x", "b": None}, "w") == "x|"  # one word, one field present


def test_an_item_without_text_is_left_out_of_the_history_text():
    # i4 has no title here and the template has no other field of it: it renders as nothing,
    # and the history lists the others without an empty entry ("Charlie |  | Bravo")
    items = ITEMS.set_column(1, "title", pa.array(["Alpha", "Bravo", "Charlie", None, "Echo", "Foxtrot"]))
    rows = [("u1", "i2", JAN1 + 100, None), ("u1", "i4", JAN1 + 200, None),
            ("u1", "i3", JAN1 + 300, None)]
    out = user_snapshot_rows(interactions(rows), items, "{title}", "{history}", " | ", 5, "1d", 5,
                             "none yet")
    assert out.column("text").to_pylist()[-1] == "Charlie | Bravo"
