"""Bad-input corpus (issue 6): every kind of bad input either stops the run before anything is
written, with an error naming the file (and the row and column where a row is concerned), or goes
to the rejects ledger with its reason, so that for every table rows in = accepted + rejected.

Each case goes through the real entry points: `load_config` overrides for the generic source,
`load_dataset`, and `build_features` (whose first step is the load) for the errors, checking that
the run directory was not created. Files are written into tmp_path.

Rows in the ledger of the generic loader are 0-based data rows: a CSV's line number minus 2.
"""

from __future__ import annotations

import gzip
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import check_invariant, ledger, utc

from llmrec_ray.build import build_features, save_dataset
from llmrec_ray.config import Config, load_config
from llmrec_ray.datasets import Dataset, load_dataset

INTER = ("user_id,item_id,event_timestamp,rating\n"
         "u1,i1,2024-01-01T00:00:00Z,4\n"
         "u2,i2,2024-01-02T00:00:00Z,3.5\n"
         "u3,i3,2024-01-03T00:00:00Z,5\n"
         "u1,i2,2024-01-04T00:00:00Z,\n")
ITEMS = ("item_id,title,genres,description\n"
         "i1,Alpha,Drama,A film\n"
         "i2,Beta,Comedy,\n"
         "i3,Gamma,,Space\n")
USERS = "user_id\nu1\nu2\nu3\n"
HEADERS = {"interactions": "user_id,item_id,event_timestamp,rating\n",
           "items": "item_id,title,genres,description\n", "users": "user_id\n"}
GOOD = {"interactions": INTER, "items": ITEMS, "users": USERS}
UNKNOWN_ITEM = "unknown item_id (not in the accepted items)"
FIELDS = ("table", "file", "row", "column", "reason")  # the ledger's fields compared here


def write(path: Path, content: str | bytes | pa.Table) -> Path:
    if isinstance(content, pa.Table):
        pq.write_table(content, path)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def config(tmp_path: Path, *overrides: str, interactions: str | bytes | pa.Table = INTER,
           items: str | bytes | pa.Table = ITEMS, users: str | bytes | pa.Table | None = USERS,
           names: dict[str, str] | None = None) -> Config:
    """A generic-source run in tmp_path; tables given as CSV text, raw bytes or an Arrow table
    (written as parquet). ISO timestamps; max_reject_fraction=1 so that rejects do not stop it."""
    names = names or {}
    tables = {"interactions": interactions, "items": items, "users": users}
    args = ["data.source=generic", "data.timestamp_unit=iso", "data.max_reject_fraction=1.0",
            f"output_dir={tmp_path / 'runs'}", "name=bad",
            f"featurestore.repo_path={tmp_path / 'feature_repo'}"]
    for table, content in tables.items():
        if content is None:
            continue
        ext = "parquet" if isinstance(content, pa.Table) else "csv"
        path = write(tmp_path / names.get(table, f"{table}.{ext}"), content)
        args.append(f"data.{table}={path}")
    return load_config(None, args + list(overrides))


def load(tmp_path: Path, *overrides: str, **tables) -> Dataset:
    ds = load_dataset(config(tmp_path, *overrides, **tables).data)
    check_invariant(ds)
    return ds


def ids(table: pa.Table, column: str) -> list[str]:
    return table.column(column).to_pylist()


def stops(cfg: Config, *fragments: str, error: type[Exception] = ValueError) -> str:
    """The build stops at the load, before writing anything; the message holds `fragments`."""
    with pytest.raises(error) as err:
        build_features(cfg)
    message = str(err.value)
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    assert not cfg.run_dir.exists()
    return message


def test_good_corpus_loads_without_rejects(tmp_path: Path) -> None:
    ds = load(tmp_path)
    assert ds.summary() == {t: {"in": n, "accepted": n, "rejected": 0}
                            for t, n in (("interactions", 4), ("items", 3), ("users", 3))}


# 1. A missing required column stops the run: ValueError naming the file and the column.
@pytest.mark.parametrize("table,column", [
    ("interactions", "user_id"), ("interactions", "item_id"), ("interactions", "event_timestamp"),
    ("items", "item_id"), ("users", "user_id")])
def test_missing_required_column(tmp_path: Path, table: str, column: str) -> None:
    lines = GOOD[table].splitlines()
    header = lines[0].split(",")
    keep = [i for i, name in enumerate(header) if name != column]
    text = "".join(",".join(line.split(",")[i] for i in keep) + "\n" for line in lines)
    if table == "users":  # a users file without its only column: some other column
        text = "country\nFR\nDE\nIT\n"
    cfg = config(tmp_path, **{table: text})
    stops(cfg, str(tmp_path / f"{table}.csv"), f"{table} column {column!r}",
          f"data.columns.{column}")


def test_invalid_utf8_in_a_header(tmp_path: Path) -> None:
    # No row to reject: the header itself is bad, so the run stops naming the file.
    bad = ITEMS.replace("title", "ti\udcfftle").encode("utf-8", "surrogateescape")
    stops(config(tmp_path, items=bad),
          f"{tmp_path / 'items.csv'}: the items file's header (column names) is not valid UTF-8")


# 2. Null, empty and whitespace-only ids are rejected: "null or empty <column>".
def test_blank_ids_in_csv_are_rejected(tmp_path: Path) -> None:
    ds = load(tmp_path,
              interactions=INTER + ",i1,2024-02-01T00:00:00Z,4\n"      # row 4: empty user
                                   '"   ",i1,2024-02-02T00:00:00Z,4\n'  # row 5: spaces
                                   "u1,,2024-02-03T00:00:00Z,4\n"       # row 6: empty item
                                   'u1,"\t",2024-02-04T00:00:00Z,4\n',  # row 7: a tab
              items=ITEMS + ",Delta,,\n" + '"  ",Epsilon,,\n',
              users=USERS + '""\n"  "\n')
    assert ledger(ds, FIELDS) == [
        ("interactions", "interactions.csv", 4, "user_id", "null or empty user_id"),
        ("interactions", "interactions.csv", 5, "user_id", "null or empty user_id"),
        ("interactions", "interactions.csv", 6, "item_id", "null or empty item_id"),
        ("interactions", "interactions.csv", 7, "item_id", "null or empty item_id"),
        ("items", "items.csv", 3, "item_id", "null or empty item_id"),
        ("items", "items.csv", 4, "item_id", "null or empty item_id"),
        ("users", "users.csv", 3, "user_id", "null or empty user_id"),
        ("users", "users.csv", 4, "user_id", "null or empty user_id"),
    ]
    assert ids(ds.items, "item_id") == ["i1", "i2", "i3"]
    assert ids(ds.users, "user_id") == ["u1", "u2", "u3"]
    assert ds.interactions.num_rows == 4
    assert ds.summary()["interactions"] == {"in": 8, "accepted": 4, "rejected": 4}


def test_null_ids_in_parquet_are_rejected(tmp_path: Path) -> None:
    t = [utc(2024, 1, d) for d in (1, 2, 3)]
    ds = load(tmp_path,
              interactions=pa.table({"user_id": ["u1", None, "u2"], "item_id": ["i1", "i1", None],
                                     "event_timestamp": pa.array(t, pa.timestamp("s", "UTC"))}),
              items=pa.table({"item_id": ["i1", None], "title": ["Alpha", "Nobody"]}),
              users=pa.table({"user_id": pa.array(["u1", "u2", None], pa.string())}))
    assert ledger(ds, FIELDS) == [
        ("interactions", "interactions.parquet", 1, "user_id", "null or empty user_id"),
        ("interactions", "interactions.parquet", 2, "item_id", "null or empty item_id"),
        ("items", "items.parquet", 1, "item_id", "null or empty item_id"),
        ("users", "users.parquet", 2, "user_id", "null or empty user_id"),
    ]
    assert ds.interactions.to_pylist() == [
        {"user_id": "u1", "item_id": "i1", "event_timestamp": t[0], "rating": None}]


# 3. A repeated item_id is never silently merged: the first row is kept, a later row with a
#    different text field is rejected naming that field, an identical later row as a duplicate.
def test_duplicate_items_with_different_text(tmp_path: Path) -> None:
    ds = load(tmp_path, items=ITEMS + "i1,Alpha 2,Drama,A film\n"   # row 3: other title
                                      "i2,Beta,Comedy,Now with text\n"  # row 4: other description
                                      "i3,Gamma,,Space\n"              # row 5: identical
                                      "i2,Beta,Horror,\n")             # row 6: other genres
    assert ledger(ds, FIELDS) == [
        ("items", "items.csv", 3, "title", "duplicate item_id with different title"),
        ("items", "items.csv", 4, "description", "duplicate item_id with different description"),
        ("items", "items.csv", 5, "item_id", "duplicate item_id"),
        ("items", "items.csv", 6, "genres", "duplicate item_id with different genres"),
    ]
    assert ds.items.select(["item_id", "title", "genres", "description"]).to_pylist() == [
        {"item_id": "i1", "title": "Alpha", "genres": "Drama", "description": "A film"},
        {"item_id": "i2", "title": "Beta", "genres": "Comedy", "description": ""},
        {"item_id": "i3", "title": "Gamma", "genres": "", "description": "Space"},
    ]
    assert ds.interactions.num_rows == 4  # interactions join the kept (first) rows
    assert ds.summary()["items"] == {"in": 7, "accepted": 3, "rejected": 4}


# 4. No text field is required: an item whose fields are all empty or whitespace is kept with its
#    interactions (it gets no text vector at build time), as is an item with only a description.
def test_items_without_text_are_kept_with_their_interactions(tmp_path: Path) -> None:
    ds = load(tmp_path,
              items=ITEMS + "i4,,,\n"                          # row 3: every field empty
                            'i5,"   ","  ", \n'                # row 4: whitespace only
                            'i6,"\t\u00a0",,\n'                 # row 5: tab + no-break space
                            "i7,,Drama,Only a description\n",  # row 6: no title
              interactions=INTER + "u1,i4,2024-02-01T00:00:00Z,4\n"   # row 4
                                   "u2,i5,2024-02-01T00:00:00Z,4\n"   # row 5
                                   "u3,i6,2024-02-01T00:00:00Z,4\n"   # row 6
                                   "u3,i7,2024-02-02T00:00:00Z,4\n")  # row 7
    assert ledger(ds, FIELDS) == []
    assert sorted(ids(ds.items, "item_id")) == ["i1", "i2", "i3", "i4", "i5", "i6", "i7"]
    assert ds.summary() == {"interactions": {"in": 8, "accepted": 8, "rejected": 0},
                            "items": {"in": 7, "accepted": 7, "rejected": 0},
                            "users": {"in": 3, "accepted": 3, "rejected": 0}}


# 5. Invalid UTF-8 rejects its row ("invalid UTF-8 in <column>"), in any column of a CSV (ids are
#    read as bytes) or in a binary parquet column; the value in the ledger shows the bytes.
def test_invalid_utf8_in_csv_rejects_the_row(tmp_path: Path) -> None:
    items = (ITEMS + "i4,Caf\xe9,Drama,\n"        # row 3: latin-1 in the title
                     "i5,Ok,Drama,bad \xc3\x28\n"  # row 4: broken sequence in the description
                     "i\xff,Ok,,\n").encode("latin-1")  # row 5: in the id
    inter = (INTER + "u\xff,i1,2024-02-01T00:00:00Z,4\n"   # row 4: in the user_id
                     "u1,i4,2024-02-01T00:00:00Z,4\n").encode("latin-1")  # row 5: item i4
    ds = load(tmp_path, items=items, interactions=inter)
    assert ledger(ds, FIELDS) == [
        ("interactions", "interactions.csv", 4, "user_id", "invalid UTF-8 in user_id"),
        ("interactions", "interactions.csv", 5, "item_id", UNKNOWN_ITEM),
        ("items", "items.csv", 3, "title", "invalid UTF-8 in title"),
        ("items", "items.csv", 4, "description", "invalid UTF-8 in description"),
        ("items", "items.csv", 5, "item_id", "invalid UTF-8 in item_id"),
    ]
    values = {r["row"]: r["value"] for r in ds.rejects.rows if r["table"] == "items"}
    assert values[3] == repr(b"Caf\xe9")
    assert ids(ds.items, "item_id") == ["i1", "i2", "i3"]
    assert ds.items.schema.field("title").type == pa.string()


def test_invalid_utf8_in_gzipped_csv_and_binary_parquet(tmp_path: Path) -> None:
    inter = gzip.compress((INTER + "u1,i1,2024-02-01T00:00:00Z,\xff\n").encode("latin-1"))
    items = pa.table({"item_id": ["i1", "i2", "i3", "i4"],
                      "title": pa.array([b"Alpha", b"Beta", b"Gamma", b"D\xffelta"], pa.binary())})
    ds = load(tmp_path, interactions=inter, items=items,
              names={"interactions": "interactions.csv.gz"})
    assert ledger(ds, FIELDS) == [
        ("interactions", "interactions.csv.gz", 4, "rating", "invalid UTF-8 in rating"),
        ("items", "items.parquet", 3, "title", "invalid UTF-8 in title"),
    ]
    assert ids(ds.items, "title") == ["Alpha", "Beta", "Gamma"]


# 6. Text has no length limit at load time (the encoder truncates at its max_length): a 1 MB title
#    and a 2 MB description (longer than pyarrow's 1 MiB CSV block) are accepted whole.
def test_megabyte_texts_are_accepted(tmp_path: Path) -> None:
    title, description = "x" * (1 << 20), "é" * (1 << 20)  # 1 MiB; 2 MiB of UTF-8
    ds = load(tmp_path, items=ITEMS + f'i4,{title},Drama,"{description}"\n',
              interactions=INTER + "u1,i4,2024-02-01T00:00:00Z,4\n")
    assert len(ds.rejects) == 0
    item = ds.items.filter(pc.equal(ds.items.column("item_id"), "i4")).to_pylist()[0]
    assert (item["title"], item["description"]) == (title, description)
    assert ds.interactions.num_rows == 5


# 7. Unparseable timestamps reject their row, with the parser's reason.
def test_unparseable_iso_timestamps(tmp_path: Path) -> None:
    ds = load(tmp_path,
              interactions=INTER + "u1,i1,yesterday,4\n"          # row 4
                                   "u1,i1,2024-13-45,4\n"         # row 5
                                   "u1,i1,2024-02-30T10:00:00,4\n"  # row 6
                                   "u1,i1,,4\n",                  # row 7: missing
              items="item_id,title,available_from\ni1,Alpha,2023-01-01\ni2,Beta,\n"
                    "i3,Gamma,soon\n")                           # row 2
    bad = "unparseable ISO-8601 event_timestamp"
    assert ledger(ds, FIELDS) == [
        ("interactions", "interactions.csv", 2, "item_id", UNKNOWN_ITEM),  # i3 was rejected
        ("interactions", "interactions.csv", 4, "event_timestamp", bad),
        ("interactions", "interactions.csv", 5, "event_timestamp", bad),
        ("interactions", "interactions.csv", 6, "event_timestamp", bad),
        ("interactions", "interactions.csv", 7, "event_timestamp",
         "null or unparseable event_timestamp"),
        ("items", "items.csv", 2, "available_from", "unparseable ISO-8601 available_from"),
    ]


def test_unparseable_integer_timestamps(tmp_path: Path) -> None:
    inter = ("user_id,item_id,event_timestamp\n"
             "u1,i1,1704067200\nu2,i2,yesterday\nu3,i3,1.5e9\n")
    ds = load(tmp_path, "data.timestamp_unit=s", interactions=inter)
    reason = "event_timestamp is not an integer of unit s or is out of range"
    assert ledger(ds, FIELDS) == [("interactions", "interactions.csv", 1, "event_timestamp", reason),
                          ("interactions", "interactions.csv", 2, "event_timestamp", reason)]
    assert ids(ds.interactions, "event_timestamp") == [utc(2024, 1, 1)]


# 8. Naive timestamps follow the documented rule of the generic loader: they are UTC (there is no
#    data.timezone setting); ISO strings with an offset and zoned parquet columns are converted.
def test_naive_timestamps_are_utc(tmp_path: Path) -> None:
    inter = ("user_id,item_id,event_timestamp,rating\n"
             "u1,i1,2024-01-01T12:00:00,4\n"        # naive
             "u2,i2,2024-01-01 12:00,4\n"           # naive, space, no seconds
             "u3,i3,2024-01-01,4\n"                 # a date: midnight UTC
             "u1,i2,2024-01-01T12:00:00+02:00,4\n"  # offset: converted
             "u2,i1,2024-01-01T12:00:00Z,4\n")
    ds = load(tmp_path, interactions=inter)
    assert len(ds.rejects) == 0
    assert ids(ds.interactions, "event_timestamp") == [
        utc(2024, 1, 1, 12), utc(2024, 1, 1, 12), utc(2024, 1, 1), utc(2024, 1, 1, 10),
        utc(2024, 1, 1, 12)]
    naive = pa.array([datetime(2024, 1, 1, 12)] * 3, pa.timestamp("ms"))
    ds = load(tmp_path, interactions=pa.table({"user_id": ["u1", "u2", "u3"],
                                               "item_id": ["i1", "i2", "i3"],
                                               "event_timestamp": naive}))
    assert ids(ds.interactions, "event_timestamp") == [utc(2024, 1, 1, 12)] * 3


# 9. Events after now are rejected (a feature store must not hold events from the future).
def test_future_timestamps_are_rejected(tmp_path: Path) -> None:
    tomorrow = (datetime.now(timezone.utc) + timedelta(days=1)).isoformat()
    ds = load(tmp_path, interactions=INTER + f"u1,i1,{tomorrow},4\n"  # row 4
                                             "u1,i1,2100-01-01T00:00:00Z,4\n"  # row 5
                                             "u1,i1,9999-12-31T00:00:00,4\n")  # row 6
    future = "event_timestamp in the future"
    assert ledger(ds, FIELDS) == [("interactions", "interactions.csv", row, "event_timestamp", future)
                          for row in (4, 5, 6)]
    value = next(r["value"] for r in ds.rejects.rows if r["row"] == 6)
    assert value.startswith("9999-12-31 00:00:00")
    assert ds.interactions.num_rows == 4
    in_seconds = "user_id,item_id,event_timestamp\nu1,i1,1704067200\nu2,i2,4102444800\n"
    ds = load(tmp_path, "data.timestamp_unit=s", interactions=in_seconds)
    assert ledger(ds, FIELDS) == [("interactions", "interactions.csv", 1, "event_timestamp", future)]


# 10. Ratings outside data.rating_range (or not numbers) are rejected; a blank rating is missing.
def test_ratings_out_of_range(tmp_path: Path) -> None:
    ds = load(tmp_path, interactions=INTER + "u1,i1,2024-02-01T00:00:00Z,0\n"    # row 4
                                             "u1,i1,2024-02-02T00:00:00Z,5.5\n"  # row 5
                                             "u1,i1,2024-02-03T00:00:00Z,-1\n"   # row 6
                                             "u1,i1,2024-02-04T00:00:00Z,five\n")  # row 7
    outside = "rating outside [0.5, 5]"
    assert ledger(ds, FIELDS) == [
        ("interactions", "interactions.csv", 4, "rating", outside),
        ("interactions", "interactions.csv", 5, "rating", outside),
        ("interactions", "interactions.csv", 6, "rating", outside),
        ("interactions", "interactions.csv", 7, "rating", "non-numeric rating"),
    ]
    assert ids(ds.interactions, "rating") == [4.0, 3.5, 5.0, None]
    ds = load(tmp_path, "data.rating_range=[1, 10]",
              interactions=INTER.replace(",3.5\n", ",0.5\n").replace(",5\n", ",10\n"))
    assert ledger(ds, FIELDS) == [("interactions", "interactions.csv", 1, "rating",
                           "rating outside [1, 10]")]
    assert ids(ds.interactions, "rating") == [4.0, 10.0, None]


# 11. Interactions with users or items that are not in (the accepted rows of) their tables.
def test_unknown_users_and_items(tmp_path: Path) -> None:
    ds = load(tmp_path, interactions=INTER + "u9,i1,2024-02-01T00:00:00Z,4\n"  # row 4
                                             "u1,i9,2024-02-01T00:00:00Z,4\n"  # row 5
                                             "u9,i9,2024-02-02T00:00:00Z,4\n")  # row 6
    assert ledger(ds, FIELDS) == [
        ("interactions", "interactions.csv", 4, "user_id",
         "unknown user_id (not in the accepted users)"),
        ("interactions", "interactions.csv", 5, "item_id", UNKNOWN_ITEM),
        ("interactions", "interactions.csv", 6, "item_id", UNKNOWN_ITEM),  # item checked first
    ]
    # Without a users file the users are those of the accepted interactions: no unknown user.
    ds = load(tmp_path, interactions=INTER + "u9,i1,2024-02-01T00:00:00Z,4\n", users=None)
    assert len(ds.rejects) == 0 and "u9" in ids(ds.users, "user_id")


# 12. An empty (0-byte) or header-only file stops the run with an error naming the file.
@pytest.mark.parametrize("table", ["interactions", "items", "users"])
@pytest.mark.parametrize("content,fragment", [("", "file is empty (0 bytes)"),
                                              ("header", "file has no rows")])
def test_empty_and_header_only_files(tmp_path: Path, table: str, content: str,
                                     fragment: str) -> None:
    text = HEADERS[table] if content == "header" else ""
    stops(config(tmp_path, **{table: text}), f"{tmp_path / (table + '.csv')}: {table} {fragment}")


def test_empty_parquet_files(tmp_path: Path) -> None:
    stops(config(tmp_path, items=b"", names={"items": "items.parquet"}),
          f"{tmp_path / 'items.parquet'}: items file is empty (0 bytes)")
    rows = pa.table({"item_id": pa.array([], pa.string()), "title": pa.array([], pa.string())})
    stops(config(tmp_path, items=rows), f"{tmp_path / 'items.parquet'}: items file has no rows")
    stops(config(tmp_path, items=b"PAR1 not parquet PAR1", names={"items": "items.parquet"}),
          f"{tmp_path / 'items.parquet'}: cannot read the items file")


def test_unsupported_file_type(tmp_path: Path) -> None:
    # JSON lines are not a generic input format: an error naming the file, not a parser trace.
    stops(config(tmp_path, items='{"item_id": "i1", "title": "Alpha"}\n',
                 names={"items": "items.jsonl"}),
          f"{tmp_path / 'items.jsonl'}: unsupported file type")


# 13. A CSV line with the wrong number of fields (an extra or a missing one) rejects its row, not
#     the file: "expected N comma-separated fields, got M", the line's text as the value. Its row
#     follows the rule of every generic reject (the line number minus 2; a blank line or a quoted
#     field over several lines before it would count as pyarrow counts rows: not at all, once).
def test_lines_with_a_wrong_field_count_are_rejected(tmp_path: Path) -> None:
    ds = load(tmp_path,
              interactions=INTER + "u1,i3,2024-02-01T00:00:00Z,4,5\n"   # row 4: extra field
                                   "u2,i3,2024-02-01T00:00:00Z\n"       # row 5: missing field
                                   "u3,i1,2024-02-01T00:00:00Z,4\n",    # row 6: fine
              items=ITEMS + "i4,Delta,Drama,A film,extra\n"             # row 3
                            "i5,Epsilon\n",                              # row 4
              users=USERS + "u4,FR\n")                                   # row 3
    assert ledger(ds, FIELDS) == [
        ("interactions", "interactions.csv", 4, None, "expected 4 comma-separated fields, got 5"),
        ("interactions", "interactions.csv", 5, None, "expected 4 comma-separated fields, got 3"),
        ("items", "items.csv", 3, None, "expected 4 comma-separated fields, got 5"),
        ("items", "items.csv", 4, None, "expected 4 comma-separated fields, got 2"),
        ("users", "users.csv", 3, None, "expected 1 comma-separated fields, got 2"),
    ]
    values = {(r["table"], r["row"]): r["value"] for r in ds.rejects.rows}
    assert values[("interactions", 4)] == "u1,i3,2024-02-01T00:00:00Z,4,5"
    assert ds.summary() == {"interactions": {"in": 7, "accepted": 5, "rejected": 2},
                            "items": {"in": 5, "accepted": 3, "rejected": 2},
                            "users": {"in": 4, "accepted": 3, "rejected": 1}}


def test_too_many_lines_with_a_wrong_field_count_stop_the_run(tmp_path: Path) -> None:
    cfg = config(tmp_path, "data.max_reject_fraction=0.01",
                 interactions=INTER + "u1,i3,2024-02-01T00:00:00Z,4,5\n")
    stops(cfg, str(tmp_path / "interactions.csv"), "1 of 5 interactions rows rejected",
          "row 4, column None: expected 4 comma-separated fields, got 5")


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_wrong_field_count_and_invalid_utf8_in_one_line_stops_the_run(tmp_path: Path) -> None:
    # pyarrow cannot hand such a line to the loader (it decodes it first): the run stops, naming
    # the file and the row in pyarrow's count (the header is row 1), i.e. the line number here.
    inter = (INTER + "u\xff,i3,2024-02-01T00:00:00Z,4,5\n").encode("latin-1")
    stops(config(tmp_path, interactions=inter),
          f"{tmp_path / 'interactions.csv'}: cannot read the interactions file",
          "Row #6: Expected 4 columns, got 5")


def test_no_accepted_interaction_stops_the_run(tmp_path: Path) -> None:
    inter = HEADERS["interactions"] + "u1,i9,2024-01-01T00:00:00Z,4\nu2,i1,yesterday,4\n"
    stops(config(tmp_path, interactions=inter), str(tmp_path / "interactions.csv"),
          "no interactions accepted out of 2", UNKNOWN_ITEM)


def test_too_many_rejects_stop_the_run_naming_file_row_and_column(tmp_path: Path) -> None:
    # The default max_reject_fraction (1%): one bad rating in five rows is too many.
    cfg = config(tmp_path, "data.max_reject_fraction=0.01",
                 interactions=INTER + "u1,i1,2024-02-01T00:00:00Z,9\n")
    stops(cfg, str(tmp_path / "interactions.csv"), "1 of 5 interactions rows rejected",
          "row 4, column rating: rating outside [0.5, 5]")


def test_whole_corpus_at_once(tmp_path: Path) -> None:
    """Every row-level case in one dataset: totals add up and rejects.parquet holds each reason."""
    tomorrow = (datetime.now(timezone.utc) + timedelta(days=1)).isoformat()
    items = (ITEMS
             + ",Nameless,,\n"                       # 3 blank id
             + "i1,Alpha 2,Drama,A film\n"           # 4 duplicate, other title
             + "i3,Gamma,,Space\n"                   # 5 exact duplicate
             + 'i4,"  ",, \n'                         # 6 no text: kept
             + "i5,Caf\xe9,,\n"                      # 7 invalid UTF-8
             + f"i6,{'x' * (1 << 20)},,\n"           # 8 1 MiB title: accepted
             + "i7,Eta,,\n"                          # 9 fine
             + "i8,Theta,,\n"                        # 10 fine, no interactions
             + "i9,Iota,,,\n").encode("latin-1")    # 11 extra field
    users = USERS + '"  "\n' + "u1\n" + "u4\n"      # 3 blank, 4 duplicate, 5 fine
    inter = (INTER
             + ",i1,2024-02-01T00:00:00Z,4\n"        # 4 blank user
             + "u1,i4,2024-02-01T00:00:00Z,4\n"      # 5 item without text: fine
             + "u1,i5,2024-02-01T00:00:00Z,4\n"      # 6 item with invalid UTF-8
             + "u1,i6,2024-02-01T00:00:00Z,4\n"      # 7 fine (1 MiB item)
             + "u\xff,i7,2024-02-01T00:00:00Z,4\n"   # 8 invalid UTF-8
             + "u1,i7,2024-13-45,4\n"                # 9 unparseable
             + "u1,i7,2024-02-02T00:00:00,4\n"       # 10 naive: fine
             + f"u1,i7,{tomorrow},4\n"               # 11 future
             + "u2,i7,2024-02-03T00:00:00Z,7\n"      # 12 rating out of range
             + "u2,i7,2024-02-04T00:00:00Z,x\n"      # 13 non-numeric rating
             + "u9,i7,2024-02-05T00:00:00Z,4\n"      # 14 unknown user
             + "u4,i9,2024-02-05T00:00:00Z,4\n"      # 15 unknown item
             + "u4,i7,2024-02-05T00:00:00Z,4\n"      # 16 fine
             + "u4,i7,2024-02-05T00:00:00Z,3\n"      # 17 duplicate event
             + "u4,i8,2024-02-06T00:00:00Z\n"        # 18 missing field
             ).encode("latin-1")
    cfg = config(tmp_path, interactions=inter, items=items, users=users)
    ds = load_dataset(cfg.data)
    assert ds.summary() == {"interactions": {"in": 19, "accepted": 8, "rejected": 11},
                            "items": {"in": 12, "accepted": 7, "rejected": 5},
                            "users": {"in": 6, "accepted": 4, "rejected": 2}}
    check_invariant(ds)
    save_dataset(ds, cfg.run_dir)
    saved = pq.read_table(cfg.run_dir / "dataset" / "rejects.parquet")
    assert saved.num_rows == 18
    assert ledger(saved.to_pylist(), FIELDS) == [
        ("interactions", "interactions.csv", 4, "user_id", "null or empty user_id"),
        ("interactions", "interactions.csv", 6, "item_id", UNKNOWN_ITEM),
        ("interactions", "interactions.csv", 8, "user_id", "invalid UTF-8 in user_id"),
        ("interactions", "interactions.csv", 9, "event_timestamp",
         "unparseable ISO-8601 event_timestamp"),
        ("interactions", "interactions.csv", 11, "event_timestamp",
         "event_timestamp in the future"),
        ("interactions", "interactions.csv", 12, "rating", "rating outside [0.5, 5]"),
        ("interactions", "interactions.csv", 13, "rating", "non-numeric rating"),
        ("interactions", "interactions.csv", 14, "user_id",
         "unknown user_id (not in the accepted users)"),
        ("interactions", "interactions.csv", 15, "item_id", UNKNOWN_ITEM),
        ("interactions", "interactions.csv", 17, None,
         "duplicate (user_id, item_id, event_timestamp)"),
        ("interactions", "interactions.csv", 18, None, "expected 4 comma-separated fields, got 3"),
        ("items", "items.csv", 3, "item_id", "null or empty item_id"),
        ("items", "items.csv", 4, "title", "duplicate item_id with different title"),
        ("items", "items.csv", 5, "item_id", "duplicate item_id"),
        ("items", "items.csv", 7, "title", "invalid UTF-8 in title"),
        ("items", "items.csv", 11, None, "expected 4 comma-separated fields, got 5"),
        ("users", "users.csv", 3, "user_id", "null or empty user_id"),
        ("users", "users.csv", 4, "user_id", "duplicate user_id"),
    ]
    assert saved.to_pylist() == ds.rejects.to_table().to_pylist()
