"""MovieLens loaders: the 100K, 1M and latest (ml-latest, ml-latest-small, ml-25m, ml-32m) releases
become the canonical tables of `llmrec_ray.schemas`.

A release is a declaration (`Release`): its files, the separator and column mapping of its
ratings file, read by the loaders' one reader (`datasets.reader`), and its quirks: integer ids,
timestamps in seconds, 1-based line numbers, ML-1M's `::` separator (read as `:` with empty
columns between the fields), and side files of its own (`datasets.movielens_files`).

Every line of every file is either accepted or recorded in the `Rejects` ledger with its 1-based
line number and reason (blank lines at the end of a file are not rows). Parsing catches malformed
lines (field count, non-integer ids/timestamps, non-numeric ratings); `validate` then applies the
rules shared by all datasets (duplicates, rating range, unknown ids). The large ratings files are
parsed by pyarrow's CSV reader, never by a Python loop per line, except as the exact fallback
when pyarrow gives up on a file.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from llmrec_ray.config import DataConfig
from llmrec_ray.datasets.base import Dataset
from llmrec_ray.datasets.columns import from_numbers, parse_numbers, reject_rows
from llmrec_ray.datasets.movielens_files import SideTables, csv_header, side_1m, side_100k, side_latest
from llmrec_ray.datasets.reader import (CsvFormat, field_count_reason, file_lines, read_delimited,
                                        row_numbers, trailing_blank_lines)
from llmrec_ray.datasets.validate import finish_dataset
from llmrec_ray.schemas import Rejects

log = logging.getLogger(__name__)

DOWNLOAD = "https://files.grouplens.org/datasets/movielens/{}.zip"
RATING_COLUMNS = ("user_id", "item_id", "rating", "event_timestamp")


@dataclass(frozen=True)
class Release:
    """One MovieLens layout: where it comes from, its ratings file and how that maps to the
    canonical interactions, and the reader of its other files."""

    archives: tuple[str, ...]  # the zip names on files.grouplens.org
    env: str  # the environment variable the example configs read
    required: tuple[str, ...]  # files that must be there
    ratings: str  # the ratings file: user, item, rating, timestamp (seconds)
    separator: str
    header: dict[str, str] | None  # header name -> canonical column; None: no header, the
    # fields in RATING_COLUMNS order
    side_files: Callable[[Path, Rejects], SideTables]  # items (and users) with their quirks


RELEASES = {
    "movielens-100k": Release(("ml-100k",), "LLMREC_ML100K", ("u.data", "u.item", "u.genre", "u.user"),
                              "u.data", "\t", None, side_100k),
    "movielens-1m": Release(("ml-1m",), "LLMREC_ML1M", ("ratings.dat", "movies.dat", "users.dat"),
                            "ratings.dat", "::", None, side_1m),
    "movielens-latest": Release(
        ("ml-latest-small", "ml-latest", "ml-25m", "ml-32m"), "LLMREC_MLLATEST",
        ("ratings.csv", "movies.csv"), "ratings.csv", ",",
        {"userId": "user_id", "movieId": "item_id", "rating": "rating", "timestamp": "event_timestamp"},
        side_latest),
}


def load_movielens(cfg: DataConfig) -> Dataset:
    """Load the MovieLens release named by `cfg.source` from the directory `cfg.path`."""
    if cfg.source not in RELEASES:
        raise ValueError(f"data.source: {cfg.source!r} is not a MovieLens source ({list(RELEASES)})")
    release = RELEASES[cfg.source]
    root = _dataset_dir(cfg, release)
    start = time.perf_counter()
    rejects = Rejects()
    ratings = root / release.ratings
    inter, n_inter = _read_ratings(ratings, release, rejects)
    side = release.side_files(root, rejects)
    sources = {"interactions": str(ratings), **side.sources}
    sources.setdefault("users", str(ratings))  # no users file: the users of the ratings
    dataset = finish_dataset(cfg, inter, side.items, side.users, rejects, sources,
                             {"interactions": n_inter, **side.rows_in})
    log.info("%s from %s in %.1fs: %s", cfg.source, root, time.perf_counter() - start,
             dataset.summary())
    return dataset


def _dataset_dir(cfg: DataConfig, release: Release) -> Path:
    names = release.archives
    hint = (f"download {' or '.join(DOWNLOAD.format(n) for n in names)} and unzip it, then set "
            f"{release.env}=/path/to/{names[0]} or data.path")
    text = cfg.path.strip() if cfg.path else ""
    # never fall back to the working directory; a `$` left in the path: a config built without
    # load_config, which expands the environment variables
    if not text or "$" in text:
        raise FileNotFoundError(f"data.path is not set for {cfg.source} ({cfg.path!r}; an "
                                f"environment variable not expanded?): {hint}")
    root = Path(text)
    if not root.is_dir():
        raise FileNotFoundError(f"{cfg.source}: directory {root} does not exist: {hint}")
    for name in release.required:
        if not (root / name).is_file():
            raise FileNotFoundError(f"{cfg.source}: {root / name} is missing: {hint}")
    return root


# ---------------------------------------------------------------- ratings: typed, with `_row`

def _read_ratings(path: Path, release: Release, rejects: Rejects) -> tuple[pa.Table, int]:
    """Parse a ratings file into typed interactions with `_row`; return (table, rows in)."""
    names = RATING_COLUMNS
    if release.header is not None:
        header = csv_header(path, tuple(release.header))
        names = tuple(release.header.get(h, f"_extra{i}") for i, h in enumerate(header))
    sep = release.separator
    raw, invalid, n_lines = _read_raw(path, sep, release.header is not None, names)
    source = str(path)
    for line, text in invalid:
        rejects.add("interactions", source, line, None,
                    field_count_reason(len(names), len(text.split(sep)), sep), text)
    rows = raw.column("_row").to_numpy()
    empty = np.ones(raw.num_rows, dtype=bool)
    for name in raw.column_names[:-1]:
        empty &= np.asarray(pc.equal(pc.binary_length(raw.column(name)), 0))
    for i in np.flatnonzero(empty):
        rejects.add("interactions", source, int(rows[i]), None, "empty line")
    return _typed_ratings(raw, rows, ~empty, rejects, source), n_lines


def _typed_ratings(raw: pa.Table, rows: np.ndarray, ok: np.ndarray, rejects: Rejects,
                   source: str) -> pa.Table:
    """Integer ids (as strings), float ratings, timestamps from seconds; a row fails on its first
    bad field only."""
    columns = {}
    for name in RATING_COLUMNS:
        target = pa.float32() if name == "rating" else pa.int64()
        number, valid = parse_numbers(raw.column(name), target, cast_first=True)
        reject_rows(rejects, "interactions", source, rows, ok & ~valid, raw.column(name), name,
                    "non-numeric rating" if name == "rating" else f"non-integer {name}", decode=True)
        ok &= valid
        if name == "rating":
            columns[name] = number
        elif name != "event_timestamp":
            columns[name] = number.cast(pa.string())
        else:
            columns[name], late, reason = from_numbers(number, "s")
            reject_rows(rejects, "interactions", source, rows, ok & late, raw.column(name), name,
                        reason.format(c=name), decode=True)
            ok &= ~late
    columns["_row"] = raw.column("_row")
    return pa.table(columns).filter(pa.array(ok))


# ---------------------------------------------------------------- ratings: raw fields

def _read_raw(path: Path, sep: str, header: bool,
              names: tuple[str, ...]) -> tuple[pa.Table, list[tuple[int, str]], int]:
    """Read a delimited file as binary columns plus `_row` (1-based line number).

    Returns (table, [(line, text) of lines with a wrong field count], rows in). A two-character
    separator such as `::` is read as `:` with empty columns between the fields; a line whose
    in-between columns are not empty is moved to the wrong-field-count list. Trailing blank lines
    are dropped and not counted.
    """
    cols: list[str] = []
    for i, name in enumerate(names):
        cols += [f"_sep{i}", name] if i and len(sep) == 2 else [name]
    first = 2 if header else 1
    # latin-1: every byte decodes, so a stray byte is a bad field, not a failed read
    fmt = CsvFormat(delimiter=sep[0], names=tuple(cols), skip_header=header, encoding="latin-1",
                    quoted=sep == ",", newlines_in_values=False, keep_empty_lines=True,
                    types={c: pa.binary() for c in cols})
    try:
        table, bad = read_delimited(path, fmt)
    except pa.ArrowInvalid as e:  # a safety net: pyarrow gave up on the file
        log.warning("%s: pyarrow cannot parse it (%s); parsing line by line", path, e)
        return _python_read(path, sep, first, names)
    invalid = [(b.number, b.text) for b in bad]
    n_total = table.num_rows + len(invalid)
    rows = row_numbers(first, n_total, [line for line, _ in invalid])
    table = table.append_column("_row", pa.array(rows))
    if len(sep) == 2:
        table = _stray_separators(table, cols, rows, invalid)
    n_lines = max(0, n_total - trailing_blank_lines(path))
    if n_lines < n_total:
        table = table.filter(pc.less(table.column("_row"), first + n_lines))
        invalid = [(line, text) for line, text in invalid if line < first + n_lines]
    return table, invalid, n_lines


def _stray_separators(table: pa.Table, cols: list[str], rows: np.ndarray,
                      invalid: list[tuple[int, str]]) -> pa.Table:
    """Move the lines whose in-between (`_sep`) columns are not empty (a single `:` inside or
    between fields) to `invalid` (kept sorted); return the rest without the `_sep` columns."""
    seps = [c for c in cols if c.startswith("_sep")]
    stray = np.zeros(table.num_rows, dtype=bool)
    for c in seps:
        stray |= np.asarray(pc.not_equal(pc.binary_length(table.column(c)), 0))
    for i in np.flatnonzero(stray):
        fields = [table.column(c)[int(i)].as_py().decode("latin-1") for c in cols]
        invalid.append((int(rows[i]), ":".join(fields)))
    invalid.sort()
    return table.filter(pa.array(~stray)).drop_columns(seps)


def _python_read(path: Path, sep: str, first: int,
                 names: tuple[str, ...]) -> tuple[pa.Table, list[tuple[int, str]], int]:
    """The slow, exact fallback of `_read_raw`: split every line in Python."""
    lines = file_lines(path)
    fields_by_column: list[list[bytes]] = [[] for _ in names]
    rows, invalid = [], []
    for i in range(first - 1, len(lines)):
        line = lines[i].rstrip(b"\r")
        fields = line.split(sep.encode()) if line else [b""] * len(names)
        if len(fields) != len(names):
            invalid.append((i + 1, line.decode("utf-8", errors="replace")))
            continue
        for column, value in zip(fields_by_column, fields):
            column.append(value)
        rows.append(i + 1)
    table = pa.table({name: pa.array(values, pa.binary())
                      for name, values in zip(names, fields_by_column)})
    table = table.append_column("_row", pa.array(rows, pa.int64()))
    return table, invalid, max(0, len(lines) - first + 1)
