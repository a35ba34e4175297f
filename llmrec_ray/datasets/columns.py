"""Typed columns from raw fields, for every loader: numbers, timestamps, text, and the ledger
entries of the rows whose field fails.

A raw field (bytes or a string) that matches INTEGER or NUMBER is safe to cast; the others become
null and the caller rejects their rows with its reason. Timestamps count a unit (s, ms, us) since
the Unix epoch, or are ISO-8601 strings (an offset converted to UTC, a naive one taken as UTC);
values after 9999-12-31 are out of range. Pure functions over Arrow columns, no I/O.
"""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from llmrec_ray.schemas import TIMESTAMP, Rejects

# Regexes over the raw bytes of a field; a field that matches is safe to cast.
INTEGER = r"^\s*[+-]?[0-9]{1,18}\s*$"
NUMBER = r"^\s*[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]{1,3})?\s*$"
MAX_SECONDS = 253402300799  # 9999-12-31T23:59:59Z
UNIT_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000}


def blank(col: pa.ChunkedArray) -> np.ndarray:
    """True where a string column is null, empty or whitespace only."""
    stripped = pc.utf8_trim_whitespace(col)
    return np.asarray(pc.fill_null(pc.equal(stripped, ""), True), dtype=bool)


def is_binary(t: pa.DataType) -> bool:
    return pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t)


def is_string(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def utf8(col: pa.ChunkedArray) -> tuple[pa.ChunkedArray, np.ndarray | None]:
    """Bytes -> strings; (strings with invalid UTF-8 as null, mask of invalid values or None).
    The per-value decode runs only when the vectorised cast finds invalid UTF-8."""
    try:
        return col.cast(pa.string()), None
    except pa.ArrowInvalid:
        pass
    values, bad = [], []
    for v in col.to_pylist():
        try:
            values.append(None if v is None else v.decode("utf-8"))
            bad.append(False)
        except UnicodeDecodeError:
            values.append(None)
            bad.append(True)
    return pa.chunked_array([pa.array(values, pa.string())]), np.array(bad, dtype=bool)


def text(col: pa.ChunkedArray) -> pa.ChunkedArray:
    """A text field as strings; a list of strings (e.g. genres) is joined with ", "."""
    if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
        return pc.binary_join(col.cast(pa.list_(pa.string())), ", ")
    return col.cast(pa.string())


def parse_numbers(col: pa.ChunkedArray, target: pa.DataType,
                  cast_first: bool = False) -> tuple[pa.ChunkedArray, np.ndarray]:
    """Raw fields (bytes or strings) -> `target` numbers; return (values, valid mask). The fields
    matching INTEGER (an integer `target`) or NUMBER are cast, the rest become null. `cast_first`:
    try one cast of the whole column first (all valid when it succeeds; Arrow's cast also takes
    `nan` and `inf`)."""
    if cast_first:
        try:
            return col.cast(target), np.ones(len(col), dtype=bool)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
    pattern = INTEGER if pa.types.is_integer(target) else NUMBER
    valid = np.asarray(pc.fill_null(pc.match_substring_regex(col, pattern), False))
    fields = pc.utf8_trim_whitespace(pc.if_else(pa.array(valid), col, None).cast(pa.string()))
    return fields.cast(target), valid


def from_numbers(col: pa.ChunkedArray, unit: str) -> tuple[pa.ChunkedArray, np.ndarray, str]:
    """Numbers of `unit` since the epoch -> (timestamps, mask of values beyond year 9999, reason
    template with `{c}`); nulls stay null."""
    per_second = UNIT_PER_SECOND[unit]
    null = np.asarray(pc.is_null(col, nan_is_null=True))
    as_float = pc.fill_null(col, 0).to_numpy().astype(np.float64)
    bad = ~null & ~(np.abs(np.nan_to_num(as_float, nan=0.0)) <= MAX_SECONDS * per_second)
    skip = null | bad
    if pa.types.is_integer(col.type):  # exact integer arithmetic
        exact = pc.fill_null(col, 0).to_numpy().astype(np.int64)
        micros = np.where(skip, 0, exact) * (1_000_000 // per_second)
    else:
        micros = np.round(np.where(skip, 0.0, as_float) * (1_000_000 / per_second))
    array = pa.array(micros.astype(np.int64), type=pa.int64(), mask=skip).cast(TIMESTAMP)
    return pa.chunked_array([array]), bad, "{c} out of range"


def iso_timestamps(col: pa.ChunkedArray) -> tuple[pa.ChunkedArray, np.ndarray, str]:
    """ISO-8601 strings -> UTC; naive strings are taken as UTC. Dates beyond pandas' nanosecond
    range (years before 1677 or after 2262, e.g. 9999-12-31) are parsed one by one."""
    series = col.to_pandas()
    parsed = pd.to_datetime(series, format="ISO8601", utc=True, errors="coerce")
    bad = parsed.isna().to_numpy() & ~blank(col)
    array = pa.array(parsed, type=pa.timestamp("ns", tz="UTC")).cast(TIMESTAMP, safe=False)
    if bad.any():
        late = {}
        for i in np.flatnonzero(bad):
            try:
                t = datetime.fromisoformat(series.iloc[i].strip())
            except ValueError:
                continue
            if not pd.Timestamp.min.year < t.year < pd.Timestamp.max.year:
                late[i] = t if t.tzinfo else t.replace(tzinfo=timezone.utc)
        if late:
            mask = np.zeros(len(bad), dtype=bool)
            mask[list(late)] = True
            array = pc.replace_with_mask(array, pa.array(mask),
                                         pa.array(list(late.values()), TIMESTAMP))
            bad &= ~mask
    return pa.chunked_array([array]), bad, "unparseable ISO-8601 {c}"


def timestamps(col: pa.ChunkedArray, unit: str,
               where: str) -> tuple[pa.ChunkedArray, np.ndarray | None, str]:
    """(timestamp[us, UTC] values, mask of unparseable values, reason template with `{c}`);
    nulls stay null. Strings are ISO-8601 when `unit` is `iso`, integers of `unit` otherwise
    (blank ones are missing values); `where` names the column in errors."""
    t = col.type
    if pa.types.is_timestamp(t):
        if t.tz is None:
            col = pc.assume_timezone(col, "UTC")
        return col.cast(TIMESTAMP, safe=False), None, ""
    if pa.types.is_date(t):
        return col.cast(pa.timestamp("us")).cast(TIMESTAMP), None, ""
    if is_string(t):
        if unit == "iso":
            return iso_timestamps(col)
        numbers, valid = parse_numbers(col, pa.int64())
        values, bad, _ = from_numbers(numbers, unit)
        return (values, bad | (~valid & ~blank(col)),
                f"{{c}} is not an integer of unit {unit} or is out of range")
    if pa.types.is_integer(t) or pa.types.is_floating(t):
        if unit == "iso":
            raise ValueError(f"{where} holds numbers but data.timestamp_unit is iso; "
                             "set it to s, ms or us")
        return from_numbers(col, unit)
    raise ValueError(f"{where} has type {t}; expected a timestamp, a date, integers or strings")


def reject_rows(rejects: Rejects, table: str, source: str, rows: np.ndarray, bad: np.ndarray,
                col: pa.ChunkedArray, column: str, reason: str, decode: bool = False) -> None:
    """Add the rows where `bad` to the ledger, each with its row number (`rows`) and its value in
    `col` (`decode`: bytes decoded as UTF-8, bad bytes replaced)."""
    idx = np.flatnonzero(bad)
    if not len(idx):
        return
    for i, value in zip(idx, col.take(pa.array(idx)).to_pylist()):
        if decode and value is not None:
            value = value.decode("utf-8", errors="replace")
        rejects.add(table, source, int(rows[i]), column, reason, value)
