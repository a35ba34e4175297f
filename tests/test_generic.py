"""Generic parquet/CSV loader: column mapping, timestamp units and ISO strings, rejects, errors."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import LEDGER, check_invariant, ledger, utc

from llmrec_ray.config import DataConfig, load_config
from llmrec_ray.datasets import load_dataset
from llmrec_ray.datasets.generic import load_generic

FIELDS = LEDGER + ("value",)  # the ledger's fields compared here


def test_parquet_with_column_mapping(tmp_path: Path, monkeypatch) -> None:
    pq.write_table(pa.table({
        "uid": pa.array([1, 1, 2, 2], pa.int64()),
        "movie": ["m1", "m2", "m1", "m3"],
        "ts_ms": pa.array([1_700_000_000_123, 1_700_000_060_000, 1_700_000_120_000,
                           1_700_000_180_000], pa.int64()),
        "score": pa.array([4.5, 3.0, None, 5.0], pa.float64()),
    }), tmp_path / "events.parquet")
    pq.write_table(pa.table({
        "movie": ["m1", "m2", "m3"],
        "name": ["Alpha", "Beta", "Gamma"],
        "tags": pa.array([["drama", "war"], [], None], pa.list_(pa.string())),
        "released": pa.array([datetime(2020, 1, 1, 12), None, datetime(2021, 6, 1)],
                             pa.timestamp("ns")),
        "year": [2020, 2019, 2021],
        "title": ["ignored", "ignored", "ignored"],
    }), tmp_path / "movies.parquet")
    pq.write_table(pa.table({"uid": ["1", "2"], "country": ["FR", "DE"]}),
                   tmp_path / "people.parquet")
    monkeypatch.setenv("GENERIC_DIR", str(tmp_path))
    # the file paths name an environment variable: expanded by load_config
    cfg = load_config(None, [
        "data.source=generic", "data.interactions=${GENERIC_DIR}/events.parquet",
        "data.items=${GENERIC_DIR}/movies.parquet", "data.users=${GENERIC_DIR}/people.parquet",
        "data.columns={user_id: uid, item_id: movie, event_timestamp: ts_ms, rating: score, "
        "title: name, genres: tags, available_from: released}", "data.timestamp_unit=ms"]).data
    assert cfg.interactions == f"{tmp_path}/events.parquet"
    ds = load_dataset(cfg)
    assert ds.interactions.to_pylist() == [
        {"user_id": "1", "item_id": "m1", "event_timestamp": utc(2023, 11, 14, 22, 13, 20, 123000),
         "rating": 4.5},
        {"user_id": "1", "item_id": "m2", "event_timestamp": utc(2023, 11, 14, 22, 14, 20),
         "rating": 3.0},
        {"user_id": "2", "item_id": "m1", "event_timestamp": utc(2023, 11, 14, 22, 15, 20),
         "rating": None},
        {"user_id": "2", "item_id": "m3", "event_timestamp": utc(2023, 11, 14, 22, 16, 20),
         "rating": 5.0},
    ]
    # the file's `released` column is mapped to available_from and, by its own name, is `released`
    assert ds.items.to_pylist() == [
        {"item_id": "m1", "title": "Alpha", "genres": "drama, war", "description": None,
         "available_from": utc(2020, 1, 1, 12), "released": utc(2020, 1, 1, 12), "year": 2020},
        {"item_id": "m2", "title": "Beta", "genres": "", "description": None,
         "available_from": None, "released": None, "year": 2019},
        {"item_id": "m3", "title": "Gamma", "genres": None, "description": None,
         "available_from": utc(2021, 6, 1), "released": utc(2021, 6, 1), "year": 2021},
    ]
    assert ds.users.to_pylist() == [{"user_id": "1", "country": "FR"},
                                    {"user_id": "2", "country": "DE"}]
    assert len(ds.rejects) == 0
    assert ds.rows_in == {"interactions": 4, "items": 3, "users": 2}


def test_csv_iso_timestamps_and_rejects(tmp_path: Path) -> None:
    (tmp_path / "inter.csv").write_text(
        "user_id,item_id,event_timestamp,rating\n"
        "u1,007,2024-01-01T00:00:00,4\n"  # naive: taken as UTC
        "u1,008,2024-01-01T05:00:00+02:00,\n"  # offset converted; blank rating = missing
        "u2,007,2024-01-02 10:30:00Z,abc\n"  # non-numeric rating
        "u2,008,yesterday,3\n"  # unparseable timestamp
        "u3,007,,2\n"  # no timestamp
        "u3,009,2024-01-03,9\n"  # rating out of range; also an unknown item
        "u3,008,2024-01-03,5\n"
    )
    (tmp_path / "items.csv").write_text("item_id,title,genres\n007,Seven,Spy\n008,Eight,\n")
    cfg = DataConfig(source="generic", interactions=str(tmp_path / "inter.csv"),
                     items=str(tmp_path / "items.csv"), timestamp_unit="iso",
                     max_reject_fraction=1.0)
    ds = load_generic(cfg)
    assert ds.interactions.to_pylist() == [
        {"user_id": "u1", "item_id": "007", "event_timestamp": utc(2024, 1, 1), "rating": 4.0},
        {"user_id": "u1", "item_id": "008", "event_timestamp": utc(2024, 1, 1, 3),
         "rating": None},
        {"user_id": "u3", "item_id": "008", "event_timestamp": utc(2024, 1, 3), "rating": 5.0},
    ]
    src = str(tmp_path / "inter.csv")
    assert ledger(ds, FIELDS) == [
        ("interactions", 2, "rating", "non-numeric rating", "abc"),
        ("interactions", 3, "event_timestamp", "unparseable ISO-8601 event_timestamp",
         "yesterday"),
        ("interactions", 4, "event_timestamp", "null or unparseable event_timestamp", None),
        ("interactions", 5, "rating", "rating outside [0.5, 5]", "9.0"),
    ]
    assert {r["source"] for r in ds.rejects.rows} == {src}
    assert ds.items.column("item_id").to_pylist() == ["007", "008"]
    assert ds.users.column("user_id").to_pylist() == ["u1", "u3"]
    assert ds.rows_in == {"interactions": 7, "items": 2, "users": 2}
    check_invariant(ds)


def test_integer_strings_and_zoned_timestamps(tmp_path: Path) -> None:
    pq.write_table(pa.table({
        "user_id": ["a", "b", "c"],
        "item_id": ["i", "i", "i"],
        "event_timestamp": ["1700000000", " 1700000001 ", "17e8"],
    }), tmp_path / "inter.parquet")
    paris = pa.array([datetime(2020, 1, 1, 0, 0, tzinfo=timezone.utc)],
                     pa.timestamp("s", tz="Europe/Paris"))
    pq.write_table(pa.table({"item_id": ["i"], "title": ["I"], "available_from": paris}),
                   tmp_path / "items.parquet")
    cfg = DataConfig(source="generic", interactions=str(tmp_path / "inter.parquet"),
                     items=str(tmp_path / "items.parquet"), max_reject_fraction=1.0)
    ds = load_generic(cfg)
    assert ds.interactions.column("event_timestamp").to_pylist() == [
        utc(2023, 11, 14, 22, 13, 20), utc(2023, 11, 14, 22, 13, 21)]
    assert ledger(ds, FIELDS) == [("interactions", 2, "event_timestamp",
                           "event_timestamp is not an integer of unit s or is out of range",
                           "17e8")]
    assert ds.items.column("available_from").to_pylist() == [utc(2020, 1, 1)]
    assert ds.items.schema.field("available_from").type == pa.timestamp("us", tz="UTC")


def test_missing_column_names_file_and_columns(tmp_path: Path) -> None:
    (tmp_path / "inter.csv").write_text("uid,item_id,when\n1,2,3\n")
    (tmp_path / "items.csv").write_text("item_id,title\n2,Two\n")
    cfg = DataConfig(source="generic", interactions=str(tmp_path / "inter.csv"),
                     items=str(tmp_path / "items.csv"), columns={"event_timestamp": "when"})
    with pytest.raises(ValueError) as err:
        load_generic(cfg)
    message = str(err.value)
    assert str(tmp_path / "inter.csv") in message
    assert "'user_id'" in message and "['uid', 'item_id', 'when']" in message
    assert "data.columns.user_id" in message
    good = cfg.model_copy(update={"columns": {"event_timestamp": "when", "user_id": "uid"}})
    assert load_generic(good).interactions.num_rows == 1


def test_config_errors(tmp_path: Path) -> None:
    (tmp_path / "inter.csv").write_text("user_id,item_id,event_timestamp\n1,2,3\n")
    (tmp_path / "items.csv").write_text("item_id,title\n2,Two\n")
    base = dict(source="generic", interactions=str(tmp_path / "inter.csv"),
                items=str(tmp_path / "items.csv"))
    with pytest.raises(ValueError, match=r"unknown canonical column\(s\) \['uid'\]"):
        load_generic(DataConfig(**base, columns={"uid": "user"}))
    pq.write_table(pa.table({"user_id": ["1"], "item_id": ["2"], "event_timestamp": [3]}),
                   tmp_path / "inter.parquet")
    with pytest.raises(ValueError, match="'event_timestamp' holds numbers but data.timestamp_unit"):
        load_generic(DataConfig(**{**base, "interactions": str(tmp_path / "inter.parquet")},
                                timestamp_unit="iso"))
    with pytest.raises(FileNotFoundError, match="data.items: file .*nope.parquet"):
        load_generic(DataConfig(**{**base, "items": str(tmp_path / "nope.parquet")}))
    with pytest.raises(ValueError, match="data.interactions is not set"):
        load_generic(DataConfig(source="generic", items=str(tmp_path / "items.csv")))


def test_files_given_as_filesystem_uris(tmp_path: Path) -> None:
    """Input paths may be any pyarrow filesystem URI (s3://, gs://, ...): file:// here, a
    gzip-compressed CSV read through the filesystem's stream, and Ray's local:// prefix."""
    import gzip

    with gzip.open(tmp_path / "events.csv.gz", "wt") as f:
        f.write("user_id,item_id,event_timestamp,rating\nu1,a,1700000000,4\nu2,b,1700000100,5\n")
    pq.write_table(pa.table({"item_id": ["a", "b"], "title": ["Alpha", "Beta"]}), tmp_path / "items.parquet")
    cfg = DataConfig(source="generic", interactions=f"file://{tmp_path}/events.csv.gz",
                     items=f"local://{tmp_path}/items.parquet")
    ds = load_dataset(cfg)
    assert ds.interactions.num_rows == 2 and ds.items.num_rows == 2
    check_invariant(ds)
    missing = DataConfig(source="generic", interactions=f"file://{tmp_path}/nope.csv",
                         items=f"file://{tmp_path}/items.parquet")
    with pytest.raises(FileNotFoundError, match="nope.csv does not exist"):
        load_dataset(missing)
    bad = DataConfig(source="generic", interactions="nosuchfs://bucket/events.csv",
                     items=f"file://{tmp_path}/items.parquet")
    with pytest.raises(ValueError, match="nosuchfs://bucket/events.csv: cannot open this filesystem URI"):
        load_dataset(bad)


def test_csv_lines_with_a_wrong_field_count_are_rejected(tmp_path: Path) -> None:
    """A line with an extra or a missing field rejects that row only, in the interactions and the
    items; its row is the 0-based data row like every other reject (here: line number - 2),
    counted the pyarrow way: a blank line is no row, a quoted field spanning lines is one row."""
    (tmp_path / "inter.csv").write_text(
        "user_id,item_id,event_timestamp,rating\n"
        "u1,a,1700000000,4\n"             # row 0
        "u1,b,1700000100,4,oops\n"        # row 1: extra field
        "u2,a,1700000200\n"               # row 2: missing field
        "u2,b,1700000300,5\n"             # row 3
        "u3,a,1700000400,3.5\n"           # row 4
    )
    (tmp_path / "items.csv").write_text(
        "item_id,title,description\n"
        'a,Alpha,"two\nlines"\n'          # row 0 (lines 2-3)
        "\n"                              # a blank line: not a row
        "b,Beta,\n"                       # row 1
        "c,Gamma,x,y\n"                   # row 2: extra field
        "d\n"                             # row 3: missing fields
    )
    cfg = DataConfig(source="generic", interactions=str(tmp_path / "inter.csv"),
                     items=str(tmp_path / "items.csv"), max_reject_fraction=0.5)
    ds = load_generic(cfg)
    assert ledger(ds, FIELDS) == [
        ("interactions", 1, None, "expected 4 comma-separated fields, got 5",
         "u1,b,1700000100,4,oops"),
        ("interactions", 2, None, "expected 4 comma-separated fields, got 3", "u2,a,1700000200"),
        ("items", 2, None, "expected 3 comma-separated fields, got 4", "c,Gamma,x,y"),
        ("items", 3, None, "expected 3 comma-separated fields, got 1", "d"),
    ]
    assert {(r["table"], r["source"]) for r in ds.rejects.rows} == {
        ("interactions", str(tmp_path / "inter.csv")), ("items", str(tmp_path / "items.csv"))}
    assert ds.summary() == {"interactions": {"in": 5, "accepted": 3, "rejected": 2},
                            "items": {"in": 4, "accepted": 2, "rejected": 2},
                            "users": {"in": 3, "accepted": 3, "rejected": 0}}
    assert ds.interactions.select(["user_id", "item_id"]).to_pylist() == [
        {"user_id": "u1", "item_id": "a"}, {"user_id": "u2", "item_id": "b"},
        {"user_id": "u3", "item_id": "a"}]
    assert ds.items.column("description").to_pylist() == ["two\nlines", ""]
    check_invariant(ds)
    # a later reject of the same file keeps the file's data rows: row 4 is still row 4
    (tmp_path / "inter.csv").write_text((tmp_path / "inter.csv").read_text() + "u4,z,1700000500,1\n")
    ds = load_generic(cfg)
    assert ledger(ds, FIELDS)[2] == ("interactions", 5, "item_id",
                             "unknown item_id (not in the accepted items)", "z")


def test_wrong_field_counts_in_tsv_and_over_many_blocks(tmp_path: Path, monkeypatch) -> None:
    """Row numbers stay exact when pyarrow reads the file in many blocks (read again without
    threads: with threads pyarrow has no row number to give); TSV names its separator."""
    import llmrec_ray.datasets.reader as reader

    monkeypatch.setattr(reader, "CSV_BLOCK", 256)
    lines = ["user_id\titem_id\tevent_timestamp"]
    bad = {7, 300, 301, 998}
    for i in range(1000):
        lines.append(f"u{i}\ta" + ("" if i in bad else f"\t{1_700_000_000 + i}"))
    (tmp_path / "inter.tsv").write_text("\n".join(lines) + "\n")
    (tmp_path / "items.tsv").write_text("item_id\ttitle\na\tAlpha\n")
    ds = load_generic(DataConfig(source="generic", interactions=str(tmp_path / "inter.tsv"),
                                 items=str(tmp_path / "items.tsv")))
    assert ledger(ds, FIELDS) == [("interactions", i, None, "expected 3 tab-separated fields, got 2",
                           f"u{i}\ta") for i in sorted(bad)]
    assert ds.summary()["interactions"] == {"in": 1000, "accepted": 996, "rejected": 4}


def test_mostly_malformed_csv_stops_at_max_reject_fraction(tmp_path: Path) -> None:
    (tmp_path / "inter.csv").write_text("user_id,item_id,event_timestamp\n"
                                        "u1,a,1700000000\n" + "u2,a\n" * 3 + "u3,a,1,2\n")
    (tmp_path / "items.csv").write_text("item_id,title\na,Alpha\n")
    cfg = DataConfig(source="generic", interactions=str(tmp_path / "inter.csv"),
                     items=str(tmp_path / "items.csv"), max_reject_fraction=0.5)
    with pytest.raises(ValueError) as err:
        load_generic(cfg)
    assert str(err.value) == (
        f"{tmp_path / 'inter.csv'}: 4 of 5 interactions rows rejected (more than "
        "data.max_reject_fraction=0.5); reasons: expected 3 comma-separated fields, got 2 (3), "
        "expected 3 comma-separated fields, got 4 (1); first: row 1, column None: expected 3 "
        "comma-separated fields, got 2")
    # every line bad: the same error, not a type error on columns without values
    (tmp_path / "inter.csv").write_text("user_id,item_id,event_timestamp\nu2,a\nu3,a,1,2\n")
    with pytest.raises(ValueError, match="2 of 2 interactions rows rejected"):
        load_generic(cfg)


def test_quoted_newlines_anywhere_in_a_csv_are_read(tmp_path: Path) -> None:
    """An RFC 4180 catalogue (Python's csv module) whose descriptions hold newlines inside quotes,
    over more than one of pyarrow's blocks (so quoted newlines straddle block boundaries, where
    pyarrow's default chunker loses sync): every row is read, each text exactly as written, and
    a row with a wrong field count is still rejected with its row (a multi-line row counts one)."""
    import csv
    import random

    rng = random.Random(0)
    rows = [[str(i), f"title {i}", " ".join(rng.choice(["alpha", "beta\nline", "gamma\r\nend", "delta"])
                                           for _ in range(80))] for i in range(3000)]
    with open(tmp_path / "items.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["item_id", "title", "description"])
        for k, r in enumerate(rows):
            w.writerow(r + (["extra"] if k == 2500 else []))
    assert (tmp_path / "items.csv").stat().st_size > 1.5 * (1 << 20)  # more than one 1 MiB block
    (tmp_path / "inter.csv").write_text("user_id,item_id,event_timestamp\nu1,0,1700000000\n")
    ds = load_generic(DataConfig(source="generic", interactions=str(tmp_path / "inter.csv"),
                                 items=str(tmp_path / "items.csv")))
    assert ds.summary()["items"] == {"in": 3000, "accepted": 2999, "rejected": 1}
    assert [(r["row"], r["reason"]) for r in ds.rejects.rows] == [
        (2500, "expected 3 comma-separated fields, got 4")]
    got = dict(zip(ds.items.column("item_id").to_pylist(), ds.items.column("description").to_pylist()))
    assert all(got[r[0]] == r[2] for k, r in enumerate(rows) if k != 2500)
