"""MovieLens loaders: tiny literal files of each layout, one of each kind of bad line."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from conftest import check_invariant, ledger, utc

from llmrec_ray.config import DataConfig
from llmrec_ray.datasets import load_dataset
from llmrec_ray.datasets.movielens import load_movielens


def write(directory: Path, files: dict[str, str | bytes]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        data = text if isinstance(text, bytes) else text.encode("latin-1")
        (directory / name).write_bytes(data)
    return directory


def cfg(source: str, path: Path, **kw) -> DataConfig:
    return DataConfig(source=source, path=str(path), max_reject_fraction=1.0, **kw)


ML100K = {
    "u.genre": "unknown|0\nAction|1\nAnimation|2\nChildren's|3\nComedy|4\n\n",
    "u.item": (
        "1|Toy Story (1995)|01-Jan-1995||http://x|0|0|1|1|1\n"
        "2|GoldenEye (1995)|01-Jan-1995||http://y|0|1|0|0|0\n"
        "3||01-Jan-1995||http://z|0|0|0|0|1\n"  # no title: kept (genres, date)
        "4|Bad flags (1995)|||http://w|0|2|0|0|0\n"  # genre flag 2
        "5|No date (1996)|||http://v|1|0|0|0|0\n"
        "6|Bad date (1996)|31-Foo-1996||http://u|1|0|0|0|0\n"  # not DD-Mon-YYYY
    ),
    "u.user": "1|24|M|technician|85711\n2|53|F|other|94043\nx|30|M|writer|12345\n",
    "u.data": (
        "1\t1\t5\t881250949\n"
        "1\t2\t3\t881250950\n"
        "2\t1\t4\t881250951\n"
        "2\t2\t3\n"  # 3 fields
        "2\t99\t4\t881250952\n"  # unknown item
        "1\t5\t6\t881250953\n"  # rating 6 > 5
        "2\t3\t4\t881250954\n"  # item 3 has no title: kept
        "1\t1\t5\t881250949\n"  # duplicate of line 1
        "2\t5\t2\t88125095x\n"  # non-integer timestamp
        "3\t1\t4\t881250955\n"  # user 3 is not in u.user
        "2\t5\t1\t881250960\n"
        "\n\n"
    ),
}


def test_ml100k(tmp_path: Path) -> None:
    root = write(tmp_path / "ml-100k", ML100K)
    ds = load_dataset(cfg("movielens-100k", root))
    inter = ds.interactions.to_pylist()
    assert [(r["user_id"], r["item_id"], r["rating"]) for r in inter] == [
        ("1", "1", 5.0), ("1", "2", 3.0), ("2", "1", 4.0), ("2", "3", 4.0), ("2", "5", 1.0)]
    assert inter[0]["event_timestamp"] == utc(1997, 12, 4, 15, 55, 49)
    assert ds.interactions.schema.field("event_timestamp").type == pa.timestamp("us", tz="UTC")
    assert ds.interactions.schema.field("rating").type == pa.float32()
    items = {r["item_id"]: r for r in ds.items.to_pylist()}
    assert sorted(items) == ["1", "2", "3", "5"]
    assert items["3"]["title"] in (None, "") and items["3"]["genres"] == "Comedy"
    assert items["1"]["genres"] == "Animation, Children's, Comedy"
    assert items["1"]["description"] == "Released 01-Jan-1995."
    assert items["5"]["genres"] == "unknown" and items["5"]["description"] is None
    assert all(r["available_from"] is None for r in items.values())
    assert items["1"]["released"] == utc(1995, 1, 1) and items["5"]["released"] is None
    assert ds.users.to_pylist() == [
        {"user_id": "1", "age": 24, "gender": "M", "occupation": "technician", "zip": "85711"},
        {"user_id": "2", "age": 53, "gender": "F", "occupation": "other", "zip": "94043"}]
    assert ledger(ds) == [
        ("interactions", 4, None, "expected 4 tab-separated fields, got 3"),
        ("interactions", 5, "item_id", "unknown item_id (not in the accepted items)"),
        ("interactions", 6, "rating", "rating outside [0.5, 5]"),
        ("interactions", 8, None, "duplicate (user_id, item_id, event_timestamp)"),
        ("interactions", 9, "event_timestamp", "non-integer event_timestamp"),
        ("interactions", 10, "user_id", "unknown user_id (not in the accepted users)"),
        ("items", 4, "genres", "genre flags must be 0 or 1"),
        ("items", 6, "released", "release date is not DD-Mon-YYYY"),
        ("users", 3, "user_id", "non-integer user_id"),
    ]
    assert ds.rows_in == {"interactions": 11, "items": 6, "users": 3}
    assert {r["source"] for r in ds.rejects.rows if r["table"] == "interactions"} == {
        str(root / "u.data")}
    check_invariant(ds)


def test_ml100k_reject_fraction_is_enforced(tmp_path: Path) -> None:
    root = write(tmp_path / "ml-100k", ML100K)
    with pytest.raises(ValueError, match=r"u\.data: 6 of 11 interactions rows rejected"):
        load_movielens(DataConfig(source="movielens-100k", path=str(root)))


ML1M = {
    "movies.dat": ("1::Toy Story (1995)::Animation|Children's|Comedy\n"
                   "2::Jumanji (1995)::Adventure|Children's|Fantasy\n"
                   "3::Broken line\n"
                   "4::Caf\xe9 (1990)::Drama\n"),
    "users.dat": "1::F::1::10::48067\n2::M::56::16::70072\n",
    "ratings.dat": ("1::1::5::978300760\n"
                    "1::2::3::978302109\n"
                    "2::1::4::978301968\n"
                    "2::4::2::978300275\n"
                    "2::2::3\n"  # 3 fields
                    "1:2::3::978300000\n"  # a single ':' glues two fields
                    "2::3::4::978300001\n"  # item 3 was rejected
                    "1::1::x::978300002\n"  # non-numeric rating
                    "2::1:x:4::978300003\n"  # stray ':' inside a field
                    "\n"),
}


def test_ml1m(tmp_path: Path) -> None:
    root = write(tmp_path / "ml-1m", ML1M)
    ds = load_dataset(cfg("movielens-1m", root))
    inter = ds.interactions.to_pylist()
    assert [(r["user_id"], r["item_id"], r["rating"]) for r in inter] == [
        ("1", "1", 5.0), ("1", "2", 3.0), ("2", "1", 4.0), ("2", "4", 2.0)]
    assert inter[0]["event_timestamp"] == utc(2000, 12, 31, 22, 12, 40)
    items = {r["item_id"]: r for r in ds.items.to_pylist()}
    assert items["1"]["genres"] == "Animation, Children's, Comedy"
    assert items["4"]["title"] == "Café (1990)"
    assert items["4"]["description"] is None
    assert items["4"]["released"] == utc(1990, 1, 1)  # the title's year: ML-1M has no date
    assert [(u["user_id"], u["age"], u["occupation"]) for u in ds.users.to_pylist()] == [
        ("1", 1, "K-12 student"), ("2", 56, "self-employed")]
    assert ledger(ds) == [
        ("interactions", 5, None, "expected 4 '::'-separated fields, got 3"),
        ("interactions", 6, None, "expected 4 '::'-separated fields, got 3"),
        ("interactions", 7, "item_id", "unknown item_id (not in the accepted items)"),
        ("interactions", 8, "rating", "non-numeric rating"),
        ("interactions", 9, None, "expected 4 '::'-separated fields, got 3"),
        ("items", 3, None, "expected 3 '::'-separated fields, got 2"),
    ]
    assert ds.rows_in == {"interactions": 9, "items": 4, "users": 2}
    check_invariant(ds)


def test_ml_latest(tmp_path: Path) -> None:
    files = {
        "movies.csv": ("movieId,title,genres\n"
                       "1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy\n"
                       '2,"American President, The (1995)",Comedy|Drama|Romance\n'
                       "3,Untitled (2019),(no genres listed)\n"
                       '4,"Broken, quote\n'  # unterminated quote: 2 fields
                       "5,,Drama\n").encode(),  # no title: kept
        "tags.csv": ("userId,movieId,tag,timestamp\n"
                     "1,1,pixar,1139045764\n2,1,Pixar,1139045765\n3,1,fun,1139045766\n"
                     "4,1,fun,1139045766\n5,1,pixar,1139045767\n1,2,politics,1139045767\n"
                     "bad line\n").encode(),
        "ratings.csv": ("userId,movieId,rating,timestamp\n"
                        "1,1,4.0,1139045764\n"
                        "1,2,3.5,1139045765\n"
                        "2,1,5.0,1139045766\n"
                        "2,3,0.0,1139045767\n"  # rating below 0.5
                        "2,4,4.0,1139045768\n"  # item 4 was rejected
                        "3,9,4.0,1139045769\n"  # unknown item
                        "2,2,4.5\n"  # 3 fields
                        "\n"  # empty line inside the file
                        "3,2,2.5,1139045770\n").encode(),
    }
    root = write(tmp_path / "ml-latest-small", files)
    ds = load_dataset(cfg("movielens-latest", root))
    inter = ds.interactions.to_pylist()
    assert [(r["user_id"], r["item_id"], r["rating"]) for r in inter] == [
        ("1", "1", 4.0), ("1", "2", 3.5), ("2", "1", 5.0), ("3", "2", 2.5)]
    assert inter[0]["event_timestamp"] == utc(2006, 2, 4, 9, 36, 4)
    items = {r["item_id"]: r for r in ds.items.to_pylist()}
    assert sorted(items) == ["1", "2", "3", "5"]
    assert items["2"]["title"] == "American President, The (1995)"
    assert items["1"]["genres"] == "Adventure, Animation, Children, Comedy, Fantasy"
    assert items["3"]["genres"] is None
    assert items["1"]["description"] == "Tags: pixar, fun."
    assert items["2"]["description"] == "Tags: politics."
    assert items["3"]["description"] is None
    assert (items["2"]["released"], items["3"]["released"]) == (utc(1995, 1, 1), utc(2019, 1, 1))
    assert ds.users.column("user_id").to_pylist() == ["1", "2", "3"]
    assert ledger(ds) == [
        ("interactions", 5, "rating", "rating outside [0.5, 5]"),
        ("interactions", 6, "item_id", "unknown item_id (not in the accepted items)"),
        ("interactions", 7, "item_id", "unknown item_id (not in the accepted items)"),
        ("interactions", 8, None, "expected 4 comma-separated fields, got 3"),
        ("interactions", 9, None, "empty line"),
        ("items", 5, None, "expected 3 comma-separated fields, got 2"),
        ("tags", 8, None, "expected 4 comma-separated fields, got 1"),
    ]
    assert ds.rows_in == {"interactions": 9, "items": 5, "users": 3}
    check_invariant(ds)


def test_undecodable_bytes_are_rejects(tmp_path: Path) -> None:
    root = write(tmp_path / "ml-latest", {
        "movies.csv": b"movieId,title,genres\n1,One (2000),Drama\n2,Caf\xe9 (1990),Drama\n",
        "ratings.csv": b"userId,movieId,rating,timestamp\n1,1,4.0,1\n1,\xff,4.0,2\n\xfe\xff\n",
    })
    ds = load_movielens(cfg("movielens-latest", root))
    assert ledger(ds) == [
        ("interactions", 3, "item_id", "non-integer item_id"),
        ("interactions", 4, None, "expected 4 comma-separated fields, got 1"),
        ("items", 3, None, "line is not valid utf-8"),
    ]
    assert ds.interactions.num_rows == 1
    check_invariant(ds)


@pytest.mark.parametrize("source,files", [("movielens-100k", ML100K), ("movielens-1m", ML1M)])
def test_line_by_line_fallback_matches_pyarrow(tmp_path: Path, monkeypatch, source, files) -> None:
    from llmrec_ray.datasets import movielens

    root = write(tmp_path / "data", files)
    fast = load_movielens(cfg(source, root))

    def refuse(*args, **kwargs):
        raise pa.ArrowInvalid("refused")

    monkeypatch.setattr(movielens, "read_delimited", refuse)
    slow = load_movielens(cfg(source, root))
    assert ledger(slow) == ledger(fast)
    assert slow.interactions.equals(fast.interactions)
    assert slow.rows_in == fast.rows_in


def test_ml_latest_tags_keep_ten_most_frequent(tmp_path: Path) -> None:
    tags = "".join(f"{u},1,tag{k},1\n" for k in range(12) for u in range(12 - k))
    root = write(tmp_path / "ml-latest", {
        "movies.csv": "movieId,title,genres\n1,One (2000),Drama\n",
        "ratings.csv": "userId,movieId,rating,timestamp\n1,1,4.0,1\n",
        "tags.csv": "userId,movieId,tag,timestamp\n" + tags,
    })
    ds = load_movielens(cfg("movielens-latest", root))
    assert ds.items.column("description").to_pylist() == [
        "Tags: " + ", ".join(f"tag{k}" for k in range(10)) + "."]


def test_fast_path_without_bad_lines(tmp_path: Path) -> None:
    root = write(tmp_path / "ml-1m", {
        "movies.dat": "1::A (2000)::Drama\n2::B (2001)::Comedy|Drama\n",
        "users.dat": "1::F::1::10::48067\n",
        "ratings.dat": "1::1::5::978300760\r\n1::2::3::978302109\r\n\r\n",
    })
    ds = load_movielens(cfg("movielens-1m", root))
    assert ds.interactions.column("item_id").to_pylist() == ["1", "2"]
    assert ds.rows_in["interactions"] == 2 and len(ds.rejects) == 0
    assert ds.items.column("genres").to_pylist() == ["Drama", "Comedy, Drama"]


def test_timestamps_past_year_9999_are_out_of_range(tmp_path: Path) -> None:
    """Clean integers all (one cast), some beyond 9999-12-31 either way, the smallest int64
    included (whose absolute value overflows): rejected, never wrapped to another time."""
    root = write(tmp_path / "ml-1m", {
        "movies.dat": "1::A (2000)::Drama\n2::B (2001)::Comedy\n",
        "users.dat": "1::F::1::10::48067\n",
        "ratings.dat": ("1::1::5::-9223372036854775808\n1::2::3::253402300800\n"
                        "1::1::4::-253402300800\n1::2::4::978300760\n"),
    })
    ds = load_movielens(cfg("movielens-1m", root))
    assert ledger(ds) == [("interactions", n, "event_timestamp", "event_timestamp out of range")
                          for n in (1, 2, 3)]
    assert ds.interactions.column("event_timestamp").to_pylist() == [utc(978300760)]
    check_invariant(ds)


def test_missing_directory_and_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"ml-100k\.zip.*LLMREC_ML100K"):
        load_movielens(cfg("movielens-100k", tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=r"data\.path is not set .*LLMREC_NOT_SET"):
        load_movielens(cfg("movielens-latest", "${LLMREC_NOT_SET}"))
    root = write(tmp_path / "ml-1m", {"ratings.dat": "1::1::5::1\n", "movies.dat": "1::A::B\n"})
    with pytest.raises(FileNotFoundError, match=r"users\.dat is missing.*ml-1m\.zip"):
        load_movielens(cfg("movielens-1m", root))


def real_ml100k() -> Path:
    default = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "ml-100k"
    return Path(os.environ.get("LLMREC_ML100K") or default)


@pytest.mark.skipif(not (real_ml100k() / "u.data").is_file(), reason="ML-100K not present")
def test_real_ml100k() -> None:
    start = time.perf_counter()
    ds = load_movielens(DataConfig(source="movielens-100k", path=str(real_ml100k())))
    elapsed = time.perf_counter() - start
    assert ds.interactions.num_rows == 100_000
    assert ds.items.num_rows == 1682
    assert ds.users.num_rows == 943
    assert len(ds.rejects) == 0
    check_invariant(ds)
    toy = ds.items.filter(pc.equal(ds.items.column("item_id"), "1")).to_pylist()[0]
    assert toy["title"] == "Toy Story (1995)"
    assert toy["genres"] == "Animation, Children's, Comedy"
    assert elapsed < 30
