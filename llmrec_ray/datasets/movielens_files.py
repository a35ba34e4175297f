"""MovieLens side files, line by line (they are small): the items, users and tags of each release
with their quirks, for `datasets.movielens`.

ML-100K: `u.item` with 19 genre flags named by `u.genre` and a DD-Mon-YYYY release date, `u.user`;
ML-1M: `movies.dat` and `users.dat` (`::`-separated; occupations are codes, ages the lower bound of
an age group); latest: `movies.csv` (quoted CSV, UTF-8) and an optional `tags.csv` whose most
frequent tags become the item description. ML-1M and latest items carry no release date, only the
title's year. Every line is either a row or a reject with its 1-based line number and reason.
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

import pyarrow as pa

from llmrec_ray.datasets.reader import field_count_reason, file_lines
from llmrec_ray.schemas import Rejects

ML1M_OCCUPATIONS = (
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student",
    "customer service", "doctor/health care", "executive/managerial", "farmer", "homemaker",
    "K-12 student", "lawyer", "programmer", "retired", "sales/marketing", "scientist",
    "self-employed", "technician/engineer", "tradesman/craftsman", "unemployed", "writer",
)
MAX_TAGS = 10


class SideTables(NamedTuple):
    """A release's items and users (None: the users of the ratings), the file behind each table
    and the rows read from each."""

    items: pa.Table
    users: pa.Table | None
    sources: dict[str, str]
    rows_in: dict[str, int]


def side_100k(root: Path, rejects: Rejects) -> SideTables:
    genres = _genre_names(root / "u.genre")
    items, n_items = _items_100k(root / "u.item", genres, rejects)
    users, n_users = _users_100k(root / "u.user", rejects)
    return SideTables(items, users, {"items": str(root / "u.item"), "users": str(root / "u.user")},
                      {"items": n_items, "users": n_users})


def side_1m(root: Path, rejects: Rejects) -> SideTables:
    items, n_items = _items_1m(root / "movies.dat", rejects)
    users, n_users = _users_1m(root / "users.dat", rejects)
    return SideTables(items, users,
                      {"items": str(root / "movies.dat"), "users": str(root / "users.dat")},
                      {"items": n_items, "users": n_users})


def side_latest(root: Path, rejects: Rejects) -> SideTables:
    """movies.csv, its descriptions from the optional tags.csv; no users file."""
    tags_path = root / "tags.csv"
    tags, n_tags = _read_tags(tags_path, rejects) if tags_path.is_file() else ({}, 0)
    items, n_items = _items_latest(root / "movies.csv", tags, rejects)
    return SideTables(items, None, {"items": str(root / "movies.csv"), "tags": str(tags_path)},
                      {"items": n_items, "tags": n_tags})


# ---------------------------------------------------------------- lines and fields

def _lines(path: Path, encoding: str, first: int = 1) -> Iterator[tuple[int, str | None, bytes]]:
    """(1-based line number, decoded text or None when undecodable, raw bytes) for each line from
    `first`, trailing blank lines left out."""
    raw = file_lines(path)
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
                rejects.add(table, str(path), line, None, field_count_reason(n, len(fields), sep),
                            text)
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


def csv_header(path: Path, required: tuple[str, ...]) -> list[str]:
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        header = next(csv.reader([f.readline().strip()]), [])
    missing = [c for c in required if c not in header]
    if missing:
        raise ValueError(f"{path}: header {header} lacks column(s) {missing}")
    return header


def _items_latest(path: Path, tags: dict[str, str], rejects: Rejects) -> tuple[pa.Table, int]:
    header = csv_header(path, ("movieId", "title", "genres"))
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
    header = csv_header(path, ("movieId", "tag"))
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
