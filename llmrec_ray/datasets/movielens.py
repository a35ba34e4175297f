"""MovieLens loaders: the 100K, 1M and latest (ml-latest, ml-latest-small, ml-25m, ml-32m) layouts
become the canonical tables of `llmrec_ray.schemas`.

Every line of every file is either accepted or recorded in the `Rejects` ledger with its 1-based
line number and reason (blank lines at the end of a file are not rows). Parsing catches malformed
lines (field count, non-integer ids/timestamps, non-numeric ratings); `validate` then applies the
rules shared by all datasets (duplicates, rating range, unknown ids). The large ratings files are
parsed by pyarrow's CSV reader, never by a Python loop per line; ML-1M's `::` separator is read as
`:` with empty columns between the fields.

Long because it holds four file layouts, each with its own line-level checks, in one place.
"""

from __future__ import annotations

import csv
import re
import logging
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from llmrec_ray.config import DataConfig
from llmrec_ray.datasets.base import Dataset
from llmrec_ray.datasets.validate import finish_dataset
from llmrec_ray.schemas import TIMESTAMP, Rejects

log = logging.getLogger(__name__)

DOWNLOAD = "https://files.grouplens.org/datasets/movielens/{}.zip"
# source -> (archive names, the environment variable the example configs read, required files)
LAYOUTS = {
    "movielens-100k": (("ml-100k",), "LLMREC_ML100K", ("u.data", "u.item", "u.genre", "u.user")),
    "movielens-1m": (("ml-1m",), "LLMREC_ML1M", ("ratings.dat", "movies.dat", "users.dat")),
    "movielens-latest": (("ml-latest-small", "ml-latest", "ml-25m", "ml-32m"), "LLMREC_MLLATEST",
                         ("ratings.csv", "movies.csv")),
}
RATING_COLUMNS = ("user_id", "item_id", "rating", "event_timestamp")
SEPARATOR_NAMES = {"\t": "tab", ",": "comma", "::": "'::'", "|": "'|'"}
# Regexes over the raw bytes of a field; a field that matches is safe to cast.
INTEGER = r"^\s*[+-]?[0-9]{1,18}\s*$"
NUMBER = r"^\s*[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]{1,3})?\s*$"
MAX_SECONDS = 253402300799  # 9999-12-31T23:59:59Z
ML1M_OCCUPATIONS = (
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student",
    "customer service", "doctor/health care", "executive/managerial", "farmer", "homemaker",
    "K-12 student", "lawyer", "programmer", "retired", "sales/marketing", "scientist",
    "self-employed", "technician/engineer", "tradesman/craftsman", "unemployed", "writer",
)
MAX_TAGS = 10


def load_movielens(cfg: DataConfig) -> Dataset:
    """Load the MovieLens layout named by `cfg.source` from the directory `cfg.path`."""
    if cfg.source not in LAYOUTS:
        raise ValueError(f"data.source: {cfg.source!r} is not a MovieLens source ({list(LAYOUTS)})")
    root = _dataset_dir(cfg)
    start = time.perf_counter()
    rejects = Rejects()
    parse = {"movielens-100k": _parse_100k, "movielens-1m": _parse_1m,
             "movielens-latest": _parse_latest}[cfg.source]
    inter, items, users, sources, rows_in = parse(root, rejects)
    dataset = _finish(cfg, inter, items, users, rejects, sources, rows_in)
    log.info("%s from %s in %.1fs: %s", cfg.source, root, time.perf_counter() - start,
             dataset.summary())
    return dataset


def _dataset_dir(cfg: DataConfig) -> Path:
    names, env, required = LAYOUTS[cfg.source]
    hint = (f"download {' or '.join(DOWNLOAD.format(n) for n in names)} and unzip it, then set "
            f"{env}=/path/to/{names[0]} or data.path")
    text = cfg.path.strip() if cfg.path else ""
    # never fall back to the working directory; a `$` left in the path: a config built without
    # load_config, which expands the environment variables
    if not text or "$" in text:
        raise FileNotFoundError(f"data.path is not set for {cfg.source} ({cfg.path!r}; an "
                                f"environment variable not expanded?): {hint}")
    root = Path(text)
    if not root.is_dir():
        raise FileNotFoundError(f"{cfg.source}: directory {root} does not exist: {hint}")
    for name in required:
        if not (root / name).is_file():
            raise FileNotFoundError(f"{cfg.source}: {root / name} is missing: {hint}")
    return root


def _finish(cfg: DataConfig, inter: pa.Table, items: pa.Table, users: pa.Table | None,
            rejects: Rejects, sources: dict[str, str], rows_in: dict[str, int]) -> Dataset:
    return finish_dataset(cfg.source, inter, items, users, rejects, sources, rows_in,
                          cfg.rating_range, cfg.max_reject_fraction)


# ---------------------------------------------------------------- the three layouts

def _parse_100k(root: Path, rejects: Rejects):
    paths = {t: root / f for t, f in
             (("interactions", "u.data"), ("items", "u.item"), ("users", "u.user"))}
    inter, n_inter = _read_ratings(paths["interactions"], "\t", False, RATING_COLUMNS, rejects)
    genres = _genre_names(root / "u.genre")
    items, n_items = _items_100k(paths["items"], genres, rejects)
    users, n_users = _users_100k(paths["users"], rejects)
    sources = {t: str(p) for t, p in paths.items()}
    return inter, items, users, sources, {"interactions": n_inter, "items": n_items,
                                          "users": n_users}


def _parse_1m(root: Path, rejects: Rejects):
    paths = {t: root / f for t, f in
             (("interactions", "ratings.dat"), ("items", "movies.dat"), ("users", "users.dat"))}
    inter, n_inter = _read_ratings(paths["interactions"], "::", False, RATING_COLUMNS, rejects)
    items, n_items = _items_1m(paths["items"], rejects)
    users, n_users = _users_1m(paths["users"], rejects)
    sources = {t: str(p) for t, p in paths.items()}
    return inter, items, users, sources, {"interactions": n_inter, "items": n_items,
                                          "users": n_users}


def _parse_latest(root: Path, rejects: Rejects):
    paths = {"interactions": root / "ratings.csv", "items": root / "movies.csv"}
    header = _csv_header(paths["interactions"], ("userId", "movieId", "rating", "timestamp"))
    canonical = dict(zip(("userId", "movieId", "rating", "timestamp"), RATING_COLUMNS))
    names = tuple(canonical.get(h, f"_extra{i}") for i, h in enumerate(header))
    inter, n_inter = _read_ratings(paths["interactions"], ",", True, names, rejects)
    tags_path = root / "tags.csv"
    tags, n_tags = _read_tags(tags_path, rejects) if tags_path.is_file() else ({}, 0)
    items, n_items = _items_latest(paths["items"], tags, rejects)
    sources = {t: str(p) for t, p in paths.items()}
    sources.update(users=str(paths["interactions"]), tags=str(tags_path))
    rows_in = {"interactions": n_inter, "items": n_items, "tags": n_tags}
    return inter, items, None, sources, rows_in


# ---------------------------------------------------------------- ratings: pyarrow, no line loop

def _read_ratings(path: Path, sep: str, header: bool, names: tuple[str, ...],
                  rejects: Rejects) -> tuple[pa.Table, int]:
    """Parse a ratings file into typed interactions with `_row`; return (table, rows in)."""
    raw, invalid, n_lines = _read_raw(path, sep, header, names)
    source, expected = str(path), len(names)
    for line, text in invalid:
        got = len(text.split(sep))
        rejects.add("interactions", source, line, None,
                    f"expected {expected} {SEPARATOR_NAMES[sep]}-separated fields, got {got}", text)
    rows = raw.column("_row").to_numpy()
    blank = np.ones(raw.num_rows, dtype=bool)
    for name in raw.column_names[:-1]:
        blank &= np.asarray(pc.equal(pc.binary_length(raw.column(name)), 0))
    ok = ~blank
    for i in np.flatnonzero(blank):
        rejects.add("interactions", source, int(rows[i]), None, "empty line")
    columns = {}
    for name in RATING_COLUMNS:
        target = pa.float32() if name == "rating" else pa.int64()
        number, valid = _parse_numbers(raw.column(name), target)
        _reject_first(rejects, source, raw, rows, ok & ~valid, name,
                      "non-numeric rating" if name == "rating" else f"non-integer {name}")
        ok &= valid
        if name == "rating":
            columns[name] = number
            continue
        if name != "event_timestamp":
            columns[name] = number.cast(pa.string())
            continue
        in_range = np.asarray(pc.fill_null(pc.less_equal(pc.abs(number), MAX_SECONDS), False))
        _reject_first(rejects, source, raw, rows, ok & ~in_range, name,
                      "event_timestamp out of range")
        ok &= in_range
        seconds = pc.if_else(pa.array(ok), number, 0)
        columns[name] = pc.multiply(seconds, 1_000_000).cast(TIMESTAMP)
    columns["_row"] = raw.column("_row")
    table = pa.table(columns).filter(pa.array(ok))
    return table, n_lines


def _parse_numbers(col: pa.ChunkedArray, target: pa.DataType) -> tuple[pa.ChunkedArray, np.ndarray]:
    """Cast raw fields to `target`; return (values, valid mask). One cast when every field is
    clean; otherwise the fields matching a number pattern are cast and the rest become null."""
    try:
        return col.cast(target), np.ones(len(col), dtype=bool)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    pattern = INTEGER if pa.types.is_integer(target) else NUMBER
    valid = np.asarray(pc.fill_null(pc.match_substring_regex(col, pattern), False))
    text = pc.utf8_trim_whitespace(pc.if_else(pa.array(valid), col, None).cast(pa.string()))
    return text.cast(target), valid


def _reject_first(rejects: Rejects, source: str, raw: pa.Table, rows: np.ndarray, bad: np.ndarray,
                  column: str, reason: str) -> None:
    """Record the rows where `bad` is True (each row fails on its first bad column only)."""
    idx = np.flatnonzero(bad)
    if not len(idx):
        return
    values = raw.column(column).take(pa.array(idx)).to_pylist()
    for i, value in zip(idx, values):
        text = None if value is None else value.decode("utf-8", errors="replace")
        rejects.add("interactions", source, int(rows[i]), column, reason, text)


def _read_raw(path: Path, sep: str, header: bool,
              names: tuple[str, ...]) -> tuple[pa.Table, list[tuple[int, str]], int]:
    """Read a delimited file as binary columns plus `_row` (1-based line number).

    Returns (table, [(line, text) of lines with a wrong field count], rows in). A two-character
    separator such as `::` is read as `:` with empty columns between the fields; a line whose
    in-between columns are not empty is moved to the wrong-field-count list. Trailing blank lines
    are dropped and not counted.
    """
    delimiter, step = sep[0], len(sep)
    cols: list[str] = []
    for i, name in enumerate(names):
        cols += [f"_sep{i}", name] if i and step == 2 else [name]
    first = 2 if header else 1
    try:
        table, invalid = _pyarrow_read(path, delimiter, header, cols, use_threads=True)
        if invalid:  # line numbers of skipped rows are only known to the serial reader
            table, invalid = _pyarrow_read(path, delimiter, header, cols, use_threads=False)
    except pa.ArrowInvalid as e:  # a safety net: pyarrow gave up on the file
        log.warning("%s: pyarrow cannot parse it (%s); parsing line by line", path, e)
        return _python_read(path, sep, first, names)
    n_total = table.num_rows + len(invalid)
    lines = np.arange(first, first + n_total, dtype=np.int64)
    bad_lines = np.array([line for line, _ in invalid], dtype=np.int64)
    rows = lines[~np.isin(lines, bad_lines)]
    table = table.append_column("_row", pa.array(rows))
    if step == 2:
        seps = [c for c in cols if c.startswith("_sep")]
        stray = np.zeros(table.num_rows, dtype=bool)
        for c in seps:
            stray |= np.asarray(pc.not_equal(pc.binary_length(table.column(c)), 0))
        for i in np.flatnonzero(stray):
            fields = [table.column(c)[int(i)].as_py().decode("latin-1") for c in cols]
            invalid.append((int(rows[i]), ":".join(fields)))
        table = table.filter(pa.array(~stray)).drop_columns(seps)
        invalid.sort()
    n_lines = _drop_trailing_blank(path, n_total, first)
    if n_lines < n_total:
        table = table.filter(pc.less(table.column("_row"), first + n_lines))
        invalid = [(line, text) for line, text in invalid if line < first + n_lines]
    return table, invalid, n_lines


def _python_read(path: Path, sep: str, first: int,
                 names: tuple[str, ...]) -> tuple[pa.Table, list[tuple[int, str]], int]:
    """The slow, exact fallback of `_read_raw`: split every line in Python."""
    lines = path.read_bytes().split(b"\n")
    while lines and not lines[-1].strip():
        lines.pop()
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


def _pyarrow_read(path: Path, delimiter: str, header: bool, cols: list[str],
                  use_threads: bool) -> tuple[pa.Table, list[tuple[int, str]]]:
    invalid: list[tuple[int, str]] = []

    def on_invalid(row) -> str:
        invalid.append((row.number, row.text))
        return "skip"

    table = pcsv.read_csv(
        path,
        # latin-1: every byte decodes, so a stray byte is a bad field, not a failed read
        read_options=pcsv.ReadOptions(column_names=cols, skip_rows=1 if header else 0,
                                      use_threads=use_threads, encoding="latin-1"),
        parse_options=pcsv.ParseOptions(delimiter=delimiter, quote_char='"' if delimiter == ","
                                        else False, ignore_empty_lines=False,
                                        invalid_row_handler=on_invalid),
        convert_options=pcsv.ConvertOptions(column_types={c: pa.binary() for c in cols}))
    return table, invalid


def _drop_trailing_blank(path: Path, n_total: int, first: int) -> int:
    """Rows in: lines after the header, less the blank lines at the end of the file."""
    with open(path, "rb") as f:
        f.seek(0, 2)
        size = f.tell()
        f.seek(max(0, size - 65536))
        tail = f.read()
    trailing = 0
    lines = tail.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the newline that ends the last line
    for line in reversed(lines):
        if line.strip():
            break
        trailing += 1
    return max(0, n_total - trailing)


# ---------------------------------------------------------------- small files: a loop per line

def _lines(path: Path, encoding: str, first: int = 1) -> Iterator[tuple[int, str | None, bytes]]:
    """(1-based line number, decoded text or None when undecodable, raw bytes) for each line from
    `first`, trailing blank lines left out."""
    raw = path.read_bytes().split(b"\n")
    while raw and not raw[-1].strip():
        raw.pop()
    for i in range(first - 1, len(raw)):
        line = raw[i].rstrip(b"\r")
        try:
            yield i + 1, line.decode(encoding), line
        except UnicodeDecodeError:
            yield i + 1, None, line


def _split(path: Path, table: str, sep: str, n: int, encoding: str, rejects: Rejects,
           first: int = 1) -> tuple[list[tuple[int, list[str]]], int]:
    """Split each line from `first` into fields; return ([(line, fields) of lines with exactly `n`
    fields], rows in). Undecodable, empty and wrong-length lines are rejected."""
    out, count = [], 0
    for line, text, raw in _lines(path, encoding, first):
        count += 1
        if text is None:
            rejects.add(table, str(path), line, None, f"line is not valid {encoding}",
                        raw.decode("latin-1"))
        elif not text.strip():
            rejects.add(table, str(path), line, None, "empty line")
        else:
            fields = next(csv.reader([text])) if sep == "," else text.split(sep)
            if len(fields) == n:
                out.append((line, fields))
            else:
                rejects.add(table, str(path), line, None, f"expected {n} "
                            f"{SEPARATOR_NAMES[sep]}-separated fields, got {len(fields)}", text)
    return out, count


def _int(text: str) -> int | None:
    try:
        return int(text.strip())
    except ValueError:
        return None


def _id_or_reject(value: str, table: str, column: str, path: Path, line: int,
                  rejects: Rejects) -> str | None:
    number = _int(value)
    if number is None:
        rejects.add(table, str(path), line, column, f"non-integer {column}", value)
        return None
    return str(number)


ITEM_SCHEMA = pa.schema([("item_id", pa.string()), ("title", pa.string()), ("genres", pa.string()),
                         ("description", pa.string()), ("released", pa.timestamp("us", tz="UTC")),
                         ("_row", pa.int64())])


def _genre_names(path: Path) -> list[str]:
    """u.genre: `name|index` lines -> names in index order."""
    by_index = {}
    for line, text, _ in _lines(path, "latin-1"):
        name, _, index = text.strip().rpartition("|")
        if not name or _int(index) is None:
            raise ValueError(f"{path}:{line}: expected `name|index`, got {text!r}")
        by_index[int(index)] = name
    if sorted(by_index) != list(range(len(by_index))):
        raise ValueError(f"{path}: genre indexes are not 0..{len(by_index) - 1}: "
                         f"{sorted(by_index)}")
    return [by_index[i] for i in range(len(by_index))]


def _items_100k(path: Path, genres: list[str], rejects: Rejects) -> tuple[pa.Table, int]:
    rows = []
    parsed, n = _split(path, "items", "|", 5 + len(genres), "latin-1", rejects)
    for line, f in parsed:
        item_id = _id_or_reject(f[0], "items", "item_id", path, line, rejects)
        if item_id is None:
            continue
        flags = [x.strip() for x in f[5:]]
        if any(x not in ("0", "1") for x in flags):
            rejects.add("items", str(path), line, "genres", "genre flags must be 0 or 1",
                        "|".join(flags))
            continue
        names = [g for g, x in zip(genres, flags) if x == "1"]
        date = f[2].strip()
        released = None
        if date:
            try:  # u.item's release dates: 01-Jan-1995
                released = datetime.strptime(date, "%d-%b-%Y").replace(tzinfo=timezone.utc)
            except ValueError:
                rejects.add("items", str(path), line, "released", "release date is not DD-Mon-YYYY", date)
                continue
        rows.append({"item_id": item_id, "title": f[1].strip(), "genres": ", ".join(names) or None,
                     "description": f"Released {date}." if date else None, "released": released,
                     "_row": line})
    return pa.Table.from_pylist(rows, schema=ITEM_SCHEMA), n


def _user_id_and_age(uid: str, age: str, path: Path, line: int,
                     rejects: Rejects) -> tuple[str, int] | None:
    """A users-file row's id and integer age, or None after recording why it is rejected."""
    user_id = _id_or_reject(uid, "users", "user_id", path, line, rejects)
    if user_id is None:
        return None
    if _int(age) is None:
        rejects.add("users", str(path), line, "age", "non-integer age", age)
        return None
    return user_id, _int(age)


def _users_100k(path: Path, rejects: Rejects) -> tuple[pa.Table, int]:
    rows = []
    parsed, n = _split(path, "users", "|", 5, "latin-1", rejects)
    for line, (uid, age, gender, occupation, zip_code) in parsed:
        user = _user_id_and_age(uid, age, path, line, rejects)
        if user is not None:
            rows.append({"user_id": user[0], "age": user[1], "gender": gender.strip(),
                         "occupation": occupation.strip(), "zip": zip_code.strip(), "_row": line})
    return _users_table(rows), n


TITLE_YEAR = re.compile(r"\((\d{4})\)\s*$")


def _title_year(title: str) -> datetime | None:
    """ML-1M / ml-latest carry no release date, only the year at the end of the title ("Heat
    (1995)"): January 1st of it (age at year precision, never after a legitimate rating), or
    None without a year."""
    m = TITLE_YEAR.search(title)
    if m is None or not 1800 <= int(m.group(1)) <= 2200:
        return None
    return datetime(int(m.group(1)), 1, 1, tzinfo=timezone.utc)


def _items_1m(path: Path, rejects: Rejects) -> tuple[pa.Table, int]:
    rows = []
    parsed, n = _split(path, "items", "::", 3, "latin-1", rejects)
    for line, (mid, title, genres) in parsed:
        item_id = _id_or_reject(mid, "items", "item_id", path, line, rejects)
        if item_id is not None:
            rows.append({"item_id": item_id, "title": title.strip(),
                         "genres": _join_genres(genres), "description": None,
                         "released": _title_year(title), "_row": line})
    return pa.Table.from_pylist(rows, schema=ITEM_SCHEMA), n


def _users_1m(path: Path, rejects: Rejects) -> tuple[pa.Table, int]:
    """users.dat: UserID::Gender::Age::Occupation::Zip-code; age is the lower bound of the age
    group, occupation codes become their names from the ML-1M README."""
    rows = []
    parsed, n = _split(path, "users", "::", 5, "latin-1", rejects)
    for line, (uid, gender, age, occupation, zip_code) in parsed:
        user = _user_id_and_age(uid, age, path, line, rejects)
        if user is None:
            continue
        user_id = user[0]
        code = _int(occupation)
        name = (ML1M_OCCUPATIONS[code] if code is not None and 0 <= code < len(ML1M_OCCUPATIONS)
                else occupation.strip())
        rows.append({"user_id": user_id, "age": user[1], "gender": gender.strip(),
                     "occupation": name, "zip": zip_code.strip(), "_row": line})
    return _users_table(rows), n


def _users_table(rows: list[dict]) -> pa.Table:
    schema = pa.schema([("user_id", pa.string()), ("age", pa.int64()), ("gender", pa.string()),
                        ("occupation", pa.string()), ("zip", pa.string()), ("_row", pa.int64())])
    return pa.Table.from_pylist(rows, schema=schema)


def _join_genres(text: str) -> str | None:
    names = [g.strip() for g in text.split("|") if g.strip() and g.strip() != "(no genres listed)"]
    return ", ".join(names) or None


def _csv_header(path: Path, required: tuple[str, ...]) -> list[str]:
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        header = next(csv.reader([f.readline().strip()]), [])
    missing = [c for c in required if c not in header]
    if missing:
        raise ValueError(f"{path}: header {header} lacks column(s) {missing}")
    return header


def _items_latest(path: Path, tags: dict[str, str], rejects: Rejects) -> tuple[pa.Table, int]:
    header = _csv_header(path, ("movieId", "title", "genres"))
    pos = {name: header.index(name) for name in ("movieId", "title", "genres")}
    rows = []
    parsed, n = _split(path, "items", ",", len(header), "utf-8", rejects, first=2)
    for line, f in parsed:
        item_id = _id_or_reject(f[pos["movieId"]], "items", "item_id", path, line, rejects)
        if item_id is not None:
            rows.append({"item_id": item_id, "title": f[pos["title"]].strip(),
                         "genres": _join_genres(f[pos["genres"]]),
                         "description": tags.get(item_id),
                         "released": _title_year(f[pos["title"]]), "_row": line})
    return pa.Table.from_pylist(rows, schema=ITEM_SCHEMA), n


def _read_tags(path: Path, rejects: Rejects) -> tuple[dict[str, str], int]:
    """tags.csv -> {movie id: "Tags: a, b, c."}: distinct tags (case-insensitive), most frequent
    first, ties alphabetical, at most MAX_TAGS. Malformed lines go to the ledger as table "tags"."""
    header = _csv_header(path, ("movieId", "tag"))
    mid, tag = header.index("movieId"), header.index("tag")
    counts: dict[str, Counter] = {}
    spelling: dict[tuple[str, str], str] = {}
    parsed, n = _split(path, "tags", ",", len(header), "utf-8", rejects, first=2)
    for line, f in parsed:
        item_id = _id_or_reject(f[mid], "tags", "item_id", path, line, rejects)
        text = f[tag].strip()
        if item_id is None:
            continue
        if not text:
            rejects.add("tags", str(path), line, "tag", "empty tag")
            continue
        key = text.lower()
        counts.setdefault(item_id, Counter())[key] += 1
        spelling.setdefault((item_id, key), text)
    out = {}
    for item_id, counter in counts.items():
        top = sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_TAGS]
        out[item_id] = "Tags: " + ", ".join(spelling[(item_id, k)] for k, _ in top) + "."
    return out, n
