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
    assert sorted((tmp_path / "c").iterdir()) == cache.parts()  # no temp files left


def test_a_hash_in_two_parts_comes_back_once(tmp_path):
    cache = EmbeddingCache(tmp_path / "c")
    cache.add(vectors(["a"]))
    cache.add(vectors(["a"]))  # two builds raced on the same text
    assert cache.lookup(pa.array(["a"])).num_rows == 1


def test_a_dtype_change_reencodes_and_the_same_dtype_hits(ray_session, tmp_path):
    """Builds (serialize -> key -> cache -> MiniLM on Ray) sharing one cache: a build in another
    dtype misses the cache and encodes again; the same dtype hits it, and so does auto, keyed as
    the dtype it resolves to. (A build that finds part of its texts in the cache encodes only the
    rest: test_faults.py, the killed driver's resumed build.)"""
    import numpy as np

    from llmrec_ray.build import feature_tables
    from llmrec_ray.config import load_config
    from llmrec_ray.datasets import load_dataset
    from llmrec_ray.text_model import dtype_name, encode_device, encoder_key
    from llmrec_ray.views import ITEM_TEXT_VIEW

    def build(dtype):
        cfg = load_config(None, [
            "data.synthetic.n_users=3", "data.synthetic.n_items=4",
            "data.synthetic.interactions_per_user=3", f"output_dir={tmp_path / 'runs'}",
            "encode.batch_size=8", "encode.cpus_per_actor=1", f"encode.dtype={dtype}",
            f"encode.cache_dir={tmp_path / 'cache'}"])
        views, stats = feature_tables(load_dataset(cfg.data), cfg)
        item = views[ITEM_TEXT_VIEW]
        vecs = dict(zip(item.column("item_id").to_pylist(), item.column("embedding").to_pylist()))
        return vecs, stats, encoder_key(cfg.encode)

    fp32, s1, key32 = build("float32")
    n = s1["distinct"]
    assert (s1["encoded"], s1["cached"]) == (n, 0) and n > 4
    again, s2, _ = build("float32")
    assert (s2["encoded"], s2["cached"]) == (0, n) and again == fp32
    bf16, s3, key16 = build("bfloat16")
    assert (s3["encoded"], s3["cached"]) == (n, 0) and key16 != key32
    diff = max(np.abs(np.array(bf16[i]) - np.array(fp32[i])).max() for i in fp32)
    assert diff > 1e-5  # bf16 vectors, not the cached fp32 ones
    assert len(EmbeddingCache(tmp_path / "cache")) == 2 * n
    # auto (bf16 on CPUs with bf16 units, fp32 elsewhere) keys its texts as the dtype it resolves
    # to, so its build finds the vectors of that dtype in the cache (test_encode.py checks that
    # the encoder resolves auto the same way)
    auto = load_config(None, []).encode
    resolved = dtype_name("auto", encode_device(auto))
    assert encoder_key(auto) == {"float32": key32, "bfloat16": key16}[resolved]
