"""The persistent embedding cache."""

from __future__ import annotations

import pyarrow as pa

from llmrec_ray.cache import EmbeddingCache
from llmrec_ray.schemas import VECTOR_ROWS


def vectors(hashes, value=0.0):
    return pa.table({"text_hash": hashes,
                     "embedding": [[value + k, 1.0] for k in range(len(hashes))],
                     "n_tokens": [3] * len(hashes), "truncated": [False] * len(hashes)},
                    schema=VECTOR_ROWS)


def test_empty_cache_finds_nothing(tmp_path):
    cache = EmbeddingCache(tmp_path / "c")
    assert cache.lookup(pa.array(["a"])).num_rows == 0 and len(cache) == 0


def test_add_then_lookup(tmp_path):
    cache = EmbeddingCache(tmp_path / "c")
    cache.add(vectors(["a", "b"]))
    cache.add(vectors(["c"], value=10.0))
    assert len(cache.parts()) == 2 and len(cache) == 3
    hits = cache.lookup(pa.array(["c", "a", "zz"]))
    got = dict(zip(hits.column("text_hash").to_pylist(), hits.column("embedding").to_pylist()))
    assert got == {"a": [0.0, 1.0], "c": [10.0, 1.0]}
    assert not list((tmp_path / "c").glob(".*.tmp"))  # no temp files left


def test_a_hash_in_two_parts_comes_back_once(tmp_path):
    cache = EmbeddingCache(tmp_path / "c")
    cache.add(vectors(["a"]))
    cache.add(vectors(["a"]))  # two builds raced on the same text
    assert cache.lookup(pa.array(["a"])).num_rows == 1
