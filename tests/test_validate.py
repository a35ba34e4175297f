"""Dataset rules shared by every loader (llmrec_ray.datasets.validate)."""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pytest
from conftest import T0, ledger

from llmrec_ray.datasets.validate import _duplicates, check_reject_fraction, validate
from llmrec_ray.schemas import INTERACTIONS, TIMESTAMP, Rejects

SOURCES = {"interactions": "inter.txt", "items": "items.txt", "users": "users.txt"}
T1 = datetime(2024, 1, 2, tzinfo=timezone.utc)
FIELDS = ("table", "source", "row", "column", "reason", "value")  # the ledger's fields compared here


def items(ids, titles, rows=None) -> pa.Table:
    columns = {"item_id": pa.array(ids, pa.string()), "title": pa.array(titles, pa.string())}
    if rows is not None:
        columns["_row"] = pa.array(rows, pa.int64())
    return pa.table(columns)


def interactions(rows: list[tuple]) -> pa.Table:
    """rows: (user, item, timestamp, rating, line)."""
    users, item_ids, times, ratings, lines = zip(*rows)
    return pa.table({"user_id": pa.array(users, pa.string()),
                     "item_id": pa.array(item_ids, pa.string()),
                     "event_timestamp": pa.array(times, TIMESTAMP),
                     "rating": pa.array(ratings, pa.float32()),
                     "_row": pa.array(lines, pa.int64())})


def test_duplicate_blank_and_missing_items() -> None:
    rejects = Rejects()
    table = items(["a", "b", "a", "", None, "c", "d"], ["A", "B", "A again", "E", "N", "  ", None],
                  rows=[1, 2, 3, 4, 5, 6, 7])
    inter = interactions([("u", "a", T0, 4.0, 1)])
    _, out, _ = validate(inter, table, None, rejects, SOURCES, (0.5, 5.0))
    assert out.to_pylist() == [
        {"item_id": "a", "title": "A", "genres": None, "description": None, "available_from": None,
         "released": None},
        {"item_id": "b", "title": "B", "genres": None, "description": None, "available_from": None,
         "released": None},
        # no text field is required: an item without any text is kept (it gets no text vector)
        {"item_id": "c", "title": "  ", "genres": None, "description": None, "available_from": None,
         "released": None},
        {"item_id": "d", "title": None, "genres": None, "description": None, "available_from": None,
         "released": None},
    ]
    assert ledger(rejects, FIELDS, sort=False) == [
        ("items", "items.txt", 4, "item_id", "null or empty item_id", ""),
        ("items", "items.txt", 5, "item_id", "null or empty item_id", None),
        ("items", "items.txt", 3, "item_id", "duplicate item_id", "a"),
    ]


def test_unknown_user_and_item_and_duplicate_user() -> None:
    rejects = Rejects()
    users = pa.table({"user_id": ["u1", "u2", "u1"], "_row": [1, 2, 3]})
    inter = interactions([("u1", "a", T0, 4.0, 10), ("zz", "a", T0, 4.0, 11),
                          ("u2", "nope", T0, 4.0, 12), ("u2", "a", T1, 1.0, 13)])
    out, _, users_out = validate(inter, items(["a"], ["A"]), users, rejects, SOURCES, (0.5, 5.0))
    assert out.column("user_id").to_pylist() == ["u1", "u2"]
    assert users_out.to_pylist() == [{"user_id": "u1"}, {"user_id": "u2"}]
    assert ledger(rejects, FIELDS, sort=False) == [
        ("users", "users.txt", 3, "user_id", "duplicate user_id", "u1"),
        ("interactions", "inter.txt", 12, "item_id",
         "unknown item_id (not in the accepted items)", "nope"),
        ("interactions", "inter.txt", 11, "user_id",
         "unknown user_id (not in the accepted users)", "zz"),
    ]


def test_duplicate_interactions_keep_the_first() -> None:
    rejects = Rejects()
    inter = interactions([("u2", "a", T0, 1.0, 1), ("u1", "a", T0, 2.0, 2), ("u2", "a", T0, 3.0, 3),
                          ("u2", "a", T1, 4.0, 4), ("u1", "a", T0, 5.0, 5)])
    out, _, users = validate(inter, items(["a"], ["A"]), None, rejects, SOURCES, (0.5, 5.0))
    assert out.column("rating").to_pylist() == [1.0, 2.0, 4.0]
    assert out.schema == INTERACTIONS
    assert [r["row"] for r in rejects.rows] == [3, 5]
    assert {r["reason"] for r in rejects.rows} == {"duplicate (user_id, item_id, event_timestamp)"}
    assert users.column("user_id").to_pylist() == ["u2", "u1"]


def test_rating_range_bounds_nan_and_null() -> None:
    rejects = Rejects()
    ratings = [0.5, 5.0, 0.0, 5.5, float("nan"), None]
    inter = interactions([("u", "a", datetime(2024, 1, 1 + i, tzinfo=timezone.utc), r, i)
                          for i, r in enumerate(ratings)])
    out, _, _ = validate(inter, items(["a"], ["A"]), None, rejects, SOURCES, (0.5, 5.0))
    assert out.column("rating").to_pylist() == [0.5, 5.0, None]
    assert [(r["row"], r["reason"]) for r in rejects.rows] == [
        (2, "rating outside [0.5, 5]"), (3, "rating outside [0.5, 5]"),
        (4, "rating outside [0.5, 5]")]


def test_rows_without_line_numbers_use_the_row_index() -> None:
    rejects = Rejects()
    inter = interactions([("u", "a", T0, 4.0, 0), ("", "a", T0, 4.0, 0)]).drop_columns(["_row"])
    validate(inter, items(["a"], ["A"]), None, rejects, SOURCES, (0.5, 5.0))
    assert [(r["row"], r["column"], r["reason"]) for r in rejects.rows] == [
        (1, "user_id", "null or empty user_id")]


def test_null_timestamp_is_rejected() -> None:
    rejects = Rejects()
    inter = interactions([("u", "a", None, 4.0, 7), ("u", "a", T0, 4.0, 8)])
    out, _, _ = validate(inter, items(["a"], ["A"]), None, rejects, SOURCES, (0.5, 5.0))
    assert out.num_rows == 1
    assert ledger(rejects, FIELDS, sort=False) == [("interactions", "inter.txt", 7, "event_timestamp",
                                "null or unparseable event_timestamp", None)]


def test_duplicates_mark_later_occurrences_in_input_order() -> None:
    table = pa.table({"k": ["b", "a", "b", "a", None, None], "t": [1, 1, 1, 1, 2, 2]})
    assert _duplicates(table, ["k", "t"]).tolist() == [False, False, True, True, False, True]
    assert _duplicates(table.slice(0, 0), ["k"]).tolist() == []
    big = pa.table({"k": np.arange(100_000) % 1000})
    assert int(_duplicates(big, ["k"]).sum()) == 99_000


def test_check_reject_fraction() -> None:
    rejects = Rejects()
    rejects.add("interactions", "f", 3, "rating", "rating outside [0.5, 5]")
    rejects.add("interactions", "f", 4, "rating", "rating outside [0.5, 5]")
    counts = {"interactions": {"in": 10, "rejected": 2}}
    check_reject_fraction(counts, rejects, 0.2, SOURCES)  # 20% is allowed
    with pytest.raises(ValueError, match=r"inter\.txt: 2 of 10 interactions rows rejected .*"
                                         r"rating outside \[0\.5, 5\] \(2\).*row 3"):
        check_reject_fraction(counts, rejects, 0.1, SOURCES)
