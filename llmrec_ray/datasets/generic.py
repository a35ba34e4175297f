"""Generic loader: interactions, items and optional users from parquet or CSV files, with a column
mapping, become the canonical tables of `llmrec_ray.schemas`.

`data.columns` maps canonical names (user_id, item_id, event_timestamp, rating, title, genres,
description, available_from, released) to the files' column names; an unmapped canonical name is looked up
by its own name. Ids become strings. Timestamps (`event_timestamp`, `available_from`, `released`):
- integer (or float) columns count `data.timestamp_unit` (s, ms or us) since the Unix epoch;
- string columns are ISO-8601 when `timestamp_unit` is `iso`, integers in that unit otherwise;
  an ISO string with an offset is converted to UTC, a naive one (no offset) is taken as UTC;
- timestamp columns are converted to UTC, naive ones taken as UTC; date columns are midnight UTC.
A value that is present but cannot be parsed (a timestamp, a rating) or is not valid UTF-8 rejects
its row, with the 0-based row index in its file (`_row`); a missing required column is a ValueError
naming the file, the column and the columns the file has; so is an empty (0-byte), header-only or
unreadable file. Text fields have no length limit here (the encoder truncates at its max_length);
a CSV row longer than the reader's block is read with a larger block. CSV fields in quotes may
hold newlines (RFC 4180, as Python's csv module writes them), anywhere in the file. Extra columns of items and
users are kept.

A CSV (or TSV) row with the wrong number of fields (an extra or a missing field) is rejected, not
the whole file: reason `expected 4 comma-separated fields, got 5` (the MovieLens loaders' wording),
value the row's text, row its 0-based data row like every other reject, i.e. pyarrow's row number
minus 2: pyarrow counts the header as row 1, does not count blank lines and counts a quoted field
spanning lines as one row, so the row is the file's line number minus 2 when no blank line or
multi-line field comes before it. Such rows count in the rows in and toward
`data.max_reject_fraction`. pyarrow knows their numbers only when it reads without threads, so a
file that has such rows is read a second time, serially. One limit: pyarrow cannot hand over a
row that has both the wrong number of fields and invalid UTF-8; the read stops with pyarrow's
message naming the file and the row (`Row #N`, header = row 1).

The given split (`load_generic(cfg, given_split=True)`, evaluate.protocol given): each interaction
carries `split` = train, valid or test, either from a `split` column (values train, valid /
validation / val, test, case and surrounding spaces ignored; any other value, or none, rejects the
row) or from its file: `data.interactions` = train, `data.valid_interactions`,
`data.test_interactions` (each optional; a split column in them is an error). Timestamps become
optional: a file without the timestamp column, or whose timestamp column holds no value at all,
gets synthetic ones, SYNTHETIC_START + n seconds where n is the row's position in the files read
one after the other (train, valid, test). By default (`data.untimed_order: shuffle`) the rows of
each file are first put in a fixed random order: without timestamps the file order is not time
(published random splits list each user's items by id, which ranks them by first appearance, so
the rows listed last are the rarest items), and a history ordered by it teaches models that
order. With `untimed_order: file` each user's rows keep their file order (history truncation
keeps the last rows in file order). Repeated (user, item) rows stay distinct either way. In a
file that does have timestamps, a row without one is still rejected. Synthetic times start in
2000: leave `available_from` unmapped for such data (an interaction before it is rejected).
Without `given_split` a `split` column is an ordinary extra column (dropped). `unsplit`
(evaluate.protocol random) reads the interactions as under the given split with every row `train`
(timestamps optional; a split column ignored); the build then carves test and validation rows.
Items need only `item_id`: title, genres and description are optional, and an item with none of
them is kept (it gets no text vector at build time).

CSV and TSV files go through the loaders' one reader (`datasets.reader`), their fields through
the shared column parsers (`datasets.columns`); this module holds the column mapping, the split
and the untimed order.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from llmrec_ray.config import DataConfig
from llmrec_ray.datasets.base import Dataset
from llmrec_ray.datasets.columns import (blank, is_binary, is_string, parse_numbers, reject_rows,
                                         text, timestamps, utf8)
from llmrec_ray.datasets.reader import CsvFormat, field_count_reason, read_delimited, row_numbers
from llmrec_ray.datasets.validate import finish_dataset
from llmrec_ray.schemas import TIMESTAMP, Rejects
from llmrec_ray.storage import Location, locate

log = logging.getLogger(__name__)

CANONICAL = {
    "interactions": ("user_id", "item_id", "event_timestamp", "rating", "split"),
    "items": ("item_id", "title", "genres", "description", "available_from", "released"),
    "users": ("user_id",),
}
REQUIRED = {"interactions": ("user_id", "item_id", "event_timestamp"),
            "items": ("item_id",), "users": ("user_id",)}
TIMESTAMP_COLUMNS = ("event_timestamp", "available_from", "released")
SPLIT_VALUES = {"train": "train", "valid": "valid", "validation": "valid", "val": "valid",
                "test": "test"}
SYNTHETIC_START = datetime(2000, 1, 1, tzinfo=timezone.utc)  # given split without timestamps
UNTIMED_SEED = 0  # the permutation of untimed rows (data.untimed_order shuffle): fixed, part of the data


def load_generic(cfg: DataConfig, given_split: bool = False, unsplit: bool = False) -> Dataset:
    """Load `cfg.interactions`, `cfg.items` and optional `cfg.users` with `cfg.columns`; with
    `given_split`, the interactions carry their split (module docstring); with `unsplit` too
    (evaluate.protocol random), every row is `train` whatever the file holds."""
    known = {c for cols in CANONICAL.values() for c in cols}
    unknown = sorted(set(cfg.columns) - known)
    if unknown:
        raise ValueError(f"data.columns: unknown canonical column(s) {unknown}; "
                         f"known: {sorted(known)}")
    split_files = {"valid": cfg.valid_interactions, "test": cfg.test_interactions}
    if any(split_files.values()) and not given_split:
        raise ValueError("data.valid_interactions / data.test_interactions are read under "
                         "evaluate.protocol given only")
    start = time.perf_counter()
    paths = {"interactions": _path(cfg.interactions, "data.interactions"),
             "items": _path(cfg.items, "data.items")}
    if cfg.users:
        paths["users"] = _path(cfg.users, "data.users")
    rejects = Rejects()
    tables, rows_in = {}, {}
    for kind, path in paths.items():
        if kind == "interactions":
            files = [(None if not (any(split_files.values()) or unsplit) else "train", path)]
            files += [(label, _path(value, f"data.{label}_interactions"))
                      for label, value in split_files.items() if value]
            tables[kind], rows_in[kind] = _interactions(files, cfg, rejects, given_split, unsplit)
            continue
        raw, rows, rows_in[kind] = _read_rows(path, kind, cfg, rejects)
        tables[kind] = _canonical(raw, kind, path, cfg, rejects, rows=rows)
    sources = {kind: str(p) for kind, p in paths.items()}
    sources.setdefault("users", sources["interactions"])
    dataset = finish_dataset(cfg, tables["interactions"], tables["items"], tables.get("users"),
                             rejects, sources, rows_in)
    log.info("generic data from %s in %.1fs: %s", sources["interactions"],
             time.perf_counter() - start, dataset.summary())
    return dataset


def _read_rows(path: Location, kind: str, cfg: DataConfig,
               rejects: Rejects) -> tuple[pa.Table, np.ndarray, int]:
    """(the file's rows, each one's 0-based data row in the file, rows in). CSV rows with the wrong
    number of fields are not in the table: they go to the ledger here (and count in rows in)."""
    raw, invalid = _read(path, kind, cfg)
    try:
        _ = raw.column_names
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: the {kind} file's header (column names) is not valid "
                         f"UTF-8: {e}") from None
    if raw.num_rows == 0 and not invalid:
        raise ValueError(f"{path}: {kind} file has no rows (columns: {raw.column_names})")
    n_in = raw.num_rows + len(invalid)
    rows = row_numbers(0, n_in, [number - 2 for number, _, _ in invalid])  # header = row 1
    if len(rows) != raw.num_rows:
        raise RuntimeError(f"{path}: the row numbers pyarrow gave the {len(invalid)} rows it "
                           f"skipped do not fit the {raw.num_rows} rows it read")
    for number, reason, text in invalid:
        rejects.add(kind, str(path), number - 2, None, reason, text)
    if raw.num_rows == 0:  # every row skipped: columns without a value have type null
        raw = pa.table({c: raw.column(c).cast(pa.string()) if pa.types.is_null(raw.column(c).type)
                        else raw.column(c) for c in raw.column_names})
    return raw, rows, n_in


def _interactions(files: list[tuple[str | None, Location]], cfg: DataConfig, rejects: Rejects,
                  given_split: bool, unsplit: bool = False) -> tuple[pa.Table, int]:
    """The interaction files (label: the split the file holds, None = from a split column) as one
    canonical table with `_row` and `_source`, and the number of rows read. `unsplit`: a split
    column of the file is ignored (every row is train)."""
    tables, offset = [], 0
    ts_src = _source_name(cfg, "event_timestamp")
    for label, path in files:
        raw, rows, n_in = _read_rows(path, "interactions", cfg, rejects)
        synthetic = given_split and (ts_src not in raw.column_names or _no_values(raw.column(ts_src)))
        if synthetic and ts_src in raw.column_names:
            raw = raw.drop_columns([ts_src])
        t = _canonical(raw, "interactions", path, cfg, rejects,
                       optional=("event_timestamp",) if synthetic else (), rows=rows)
        if synthetic:
            pos = np.asarray(t.column("_row").to_numpy(), dtype=np.int64)
            if cfg.untimed_order == "shuffle":
                # The file order is not time: ordered by it, a user's later rows would be whatever
                # the file lists last (in published splits: the items numbered last, the rarest),
                # and every model fed point-in-time histories learns that order instead of tastes.
                pos = np.random.default_rng(UNTIMED_SEED).permutation(n_in)[pos]
                log.info("%s: no timestamps; rows in a fixed random order (data.untimed_order "
                         "shuffle): a user's history is a set", path)
            pos = offset + pos
            start_us = int(SYNTHETIC_START.timestamp()) * 1_000_000
            t = t.append_column("event_timestamp",
                                pa.array(start_us + pos * 1_000_000, pa.int64()).cast(TIMESTAMP))
        if unsplit and "split" in t.column_names:
            t = t.drop_columns(["split"])
        if given_split:
            t = _split_labels(t, label, path, rejects, _source_name(cfg, "split"), raw.column_names)
        elif "split" in t.column_names:
            t = t.drop_columns(["split"])
        keep = [c for c in CANONICAL["interactions"] if c in t.column_names] + ["_row"]
        t = t.select(keep)
        tables.append(t.append_column("_source", pa.repeat(pa.scalar(str(path)), t.num_rows)))
        offset += n_in
    out = pa.concat_tables(tables, promote_options="default") if len(tables) > 1 else tables[0]
    return out, offset


def _no_values(col: pa.ChunkedArray) -> bool:
    """True when every value of a column is null or blank (a timestamp column left empty)."""
    if col.null_count == len(col):
        return True
    if is_binary(col.type):
        try:
            col = col.cast(pa.string())
        except pa.ArrowInvalid:
            return False
    return is_string(col.type) and bool(blank(col).all())


def _split_labels(t: pa.Table, label: str | None, path: Location, rejects: Rejects, src: str,
                  file_columns: list[str]) -> pa.Table:
    """`split` = the file's label, or the split column normalised (train / valid / test); a row
    with any other value is rejected."""
    if label is not None:
        if "split" in t.column_names:
            raise ValueError(f"{path}: interactions column {src!r} (split) given while the split "
                             "comes from data.valid_interactions / data.test_interactions; give "
                             "the split one way only")
        return t.append_column("split", pa.repeat(pa.scalar(label), t.num_rows))
    if "split" not in t.column_names:
        raise ValueError(f"{path}: evaluate.protocol given needs the split: no interactions column "
                         f"{src!r} (the file has columns {file_columns}); map it with "
                         "data.columns.split, or give data.valid_interactions / "
                         "data.test_interactions files")
    col = t.column("split")
    key = pc.utf8_lower(pc.utf8_trim_whitespace(col))
    values = pa.array(list(SPLIT_VALUES.values())).take(
        pc.index_in(key, value_set=pa.array(list(SPLIT_VALUES))))
    bad = np.asarray(pc.is_null(values))
    rows = np.asarray(t.column("_row").to_numpy(), dtype=np.int64)
    reject_rows(rejects, "interactions", str(path), rows, bad, col, "split",
                "split value not one of train, valid (validation, val), test")
    t = t.set_column(t.column_names.index("split"), "split", values)
    return t.filter(pa.array(~bad))


def _path(value: str | None, key: str) -> Location:
    """A local path or a filesystem URI (s3://, gs://, file://: `llmrec_ray.storage`)."""
    if not value:
        raise ValueError(f"{key} is not set (data.source is generic)")
    loc = locate(value)
    if loc.info().type != pafs.FileType.File:
        raise FileNotFoundError(f"{key}: file {loc} does not exist")
    return loc


def _source_name(cfg: DataConfig, canonical: str) -> str:
    return cfg.columns.get(canonical, canonical)


def _read(path: Location, kind: str,
          cfg: DataConfig) -> tuple[pa.Table, list[tuple[int, str, str]]]:
    """Read parquet or CSV (by extension); a file that cannot be read is a ValueError naming it.
    Returns (table, CSV rows skipped for their number of fields: (pyarrow's row number, header =
    row 1; reason; text)).

    CSV ids (and ISO timestamps) are read as bytes, so `007` stays `007` and invalid UTF-8 rejects
    a row in `_canonical` instead of failing the whole read."""
    name = path.name.lower()
    if path.info().size == 0:
        raise ValueError(f"{path}: {kind} file is empty (0 bytes)")
    try:
        if name.endswith((".parquet", ".pq")):
            return pq.read_table(path.path, filesystem=path.fs), []
        for ext, delimiter in ((".csv", ","), (".tsv", "\t")):
            if name.endswith((ext, ext + ".gz", ext + ".bz2")):
                as_text = [c for c in CANONICAL[kind] if c.endswith("_id")
                           or (c in TIMESTAMP_COLUMNS and cfg.timestamp_unit == "iso")]
                types = {_source_name(cfg, c): pa.binary() for c in as_text}
                table, bad = read_delimited(path, CsvFormat(delimiter=delimiter, types=types))
                return table, [(b.number, field_count_reason(b.expected, b.actual, delimiter),
                                b.text) for b in bad]
    except (pa.ArrowException, OSError) as e:
        raise ValueError(f"{path}: cannot read the {kind} file: {e}") from e
    raise ValueError(f"{path}: unsupported file type; use .parquet, .pq, .csv or .tsv "
                     "(optionally .gz/.bz2 compressed)")


def _canonical(raw: pa.Table, kind: str, path: Location, cfg: DataConfig,
               rejects: Rejects, optional: tuple[str, ...] = (),
               rows: np.ndarray | None = None) -> pa.Table:
    """Rename mapped columns, convert types, reject unparseable values; add `_row` (`rows`: each
    row's 0-based data row in its file, default its position). `optional`: required columns that
    this file may lack."""
    for c in REQUIRED[kind]:
        if c not in optional and _source_name(cfg, c) not in raw.column_names:
            raise ValueError(f"{path}: {kind} column {_source_name(cfg, c)!r} (for {c}) not "
                             f"found; the file has columns {raw.column_names}; map it with "
                             f"data.columns.{c}")
    rows = np.arange(raw.num_rows, dtype=np.int64) if rows is None else rows
    ok = np.ones(raw.num_rows, dtype=bool)
    columns: dict[str, pa.ChunkedArray] = {}
    for c in CANONICAL[kind]:
        src = _source_name(cfg, c)
        if src not in raw.column_names:
            continue
        col = raw.column(src)
        if is_binary(col.type):
            col, bad = utf8(col)
            if bad is not None:
                reject_rows(rejects, kind, str(path), rows, bad & ok, raw.column(src), c,
                            f"invalid UTF-8 in {c}")
                ok &= ~bad
        if c.endswith("_id"):
            values, bad, reason = col.cast(pa.string()), None, ""
        elif c in TIMESTAMP_COLUMNS:
            values, bad, reason = timestamps(col, cfg.timestamp_unit, f"{path}: column {src!r}")
        elif c == "rating":
            values, bad, reason = _ratings(col)
        else:
            values, bad, reason = text(col), None, ""
        if bad is not None and bad.any():
            reject_rows(rejects, kind, str(path), rows, bad & ok, col, c, reason.format(c=c))
            ok &= ~bad
        columns[c] = values
    used = {_source_name(cfg, c) for c in columns}
    for extra in raw.column_names:
        if extra in used or extra == "_row":
            continue
        if extra in CANONICAL[kind]:
            log.warning("%s: column %r ignored: %s comes from column %r", path, extra, extra,
                        _source_name(cfg, extra))
            continue
        columns[extra] = raw.column(extra)
    columns["_row"] = pa.chunked_array([rows])
    return pa.table(columns).filter(pa.array(ok))



def _ratings(col: pa.ChunkedArray) -> tuple[pa.ChunkedArray, np.ndarray | None, str]:
    """(float32 ratings, mask of unparseable values, reason template). Blank strings are missing
    ratings."""
    if not is_string(col.type):
        return col.cast(pa.float32()), None, ""
    values, valid = parse_numbers(col, pa.float32())
    return values, ~blank(col) & ~valid, "non-numeric {c}"
