"""Generic parquet/CSV loader: column mapping, timestamp units and ISO strings, rejects, errors."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llmrec_ray.config import DataConfig
from llmrec_ray.datasets import load_dataset
from llmrec_ray.datasets.generic import load_generic


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


def ledger(dataset) -> list[tuple]:
    return sorted((r["table"], r["row"], r["column"], r["reason"], r["value"])
                  for r in dataset.rejects.rows)


def check_invariant(dataset) -> None:
    for table, counts in dataset.summary().items():
        assert counts["in"] == counts["accepted"] + counts["rejected"], table


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
    cfg = DataConfig(source="generic", interactions="${GENERIC_DIR}/events.parquet",
                     items="${GENERIC_DIR}/movies.parquet", users="${GENERIC_DIR}/people.parquet",
                     columns={"user_id": "uid", "item_id": "movie", "event_timestamp": "ts_ms",
                              "rating": "score", "title": "name", "genres": "tags",
                              "available_from": "released"},
                     timestamp_unit="ms")
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
    assert ds.items.to_pylist() == [
        {"item_id": "m1", "title": "Alpha", "genres": "drama, war", "description": None,
         "available_from": utc(2020, 1, 1, 12), "year": 2020},
        {"item_id": "m2", "title": "Beta", "genres": "", "description": None,
         "available_from": None, "year": 2019},
        {"item_id": "m3", "title": "Gamma", "genres": None, "description": None,
         "available_from": utc(2021, 6, 1), "year": 2021},
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
    assert ledger(ds) == [
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
    assert ledger(ds) == [("interactions", 2, "event_timestamp",
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
