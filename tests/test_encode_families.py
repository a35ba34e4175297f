"""The encoder across model families, on tiny random models saved to disk and loaded back through
the real `from_pretrained` path (no download): BERT, RoBERTa, Llama, Qwen2, Mistral, GPT-2."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from llmrec_ray.encoder import Encoder, pad_batch, tokenize
from llmrec_ray.text_model import resolve_model

TEXTS = ["space opera", "a crew of thieves plans one last robbery in a casino vault at night",
         "romance", "the detective finds the missing heiress"]
FAMILIES = ["bert", "roberta", "llama", "qwen2", "mistral", "gpt2"]
DECODERS = {"llama", "qwen2", "mistral", "gpt2"}


CORPUS = TEXTS + ['This item: "space opera" means in one word:"', "hi", "ok"]


def _config(family: str):
    import transformers as t

    small = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                 max_position_embeddings=128)
    if family == "bert":
        return t.BertConfig(vocab_size=30522, **small)
    if family == "roberta":
        return t.RobertaConfig(vocab_size=30522, **{**small, "max_position_embeddings": 130},
                               pad_token_id=0)
    ids = dict(vocab_size=512, bos_token_id=1, eos_token_id=0)
    if family == "llama":
        return t.LlamaConfig(**small, **ids, num_key_value_heads=2)
    if family == "qwen2":
        return t.Qwen2Config(**small, **ids, num_key_value_heads=2)
    if family == "mistral":
        return t.MistralConfig(**small, **ids, num_key_value_heads=2)
    return t.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=128, **ids)


def _tokenizer(family: str):
    """Encoders: the MiniLM WordPiece tokenizer. Decoders: a byte-level BPE trained here, shaped
    like theirs (BOS first, no EOS added, no pad token: the encoder must pad with EOS)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if family not in DECODERS:
        return AutoTokenizer.from_pretrained(resolve_model("minilm")[0])
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(CORPUS * 10, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>", "<s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="<|endoftext|>")


@pytest.fixture(scope="module", params=FAMILIES)
def tiny(request, tmp_path_factory):
    from transformers import AutoModel

    family = request.param
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp(family)
    AutoModel.from_config(_config(family)).save_pretrained(path)
    _tokenizer(family).save_pretrained(path)
    assert (path / "model.safetensors").exists()
    return family, str(path)


def _encode(path: str, texts: list[str], pooling: str, **kw) -> np.ndarray:
    enc = Encoder(path, pooling, max_length=kw.pop("max_length", 64), normalize=False, device="cpu",
                  dtype="float32", **kw)
    out = enc(pa.table({"text_hash": [str(i) for i in range(len(texts))], "text": texts}))
    return np.stack(out.column("embedding").to_pylist())


@pytest.mark.parametrize("pooling", ["mean", "max", "cls", "last", "weighted_mean"])
def test_vector_does_not_depend_on_batch_padding(tiny, pooling):
    """A text alone and the same text padded in a batch with longer ones: the same vector."""
    family, path = tiny
    if family in DECODERS and pooling == "cls":
        with pytest.raises(ValueError, match="first token"):
            _encode(path, TEXTS, pooling)
        return
    batch = _encode(path, TEXTS, pooling)
    assert batch.shape == (4, 32) and np.isfinite(batch).all()
    for k, text in enumerate(TEXTS):
        alone = _encode(path, [text], pooling)[0]
        np.testing.assert_allclose(batch[k], alone, rtol=1e-4, atol=1e-5, err_msg=f"{family} {text!r}")
    assert not np.allclose(batch[0], batch[2])  # different texts, different vectors


def test_decoders_pad_left_and_end_with_eos(tiny):
    family, path = tiny
    enc = Encoder(path, "last", max_length=64, normalize=True, device="cpu", dtype="float32")
    tok = enc.tokenizer
    assert enc.decoder == (family in DECODERS)
    assert tok.pad_token is not None
    ids, mask = pad_batch(tokenize(tok, TEXTS[:2], 64, enc.append_eos)[0], tok.pad_token_id, enc.left_pad)
    if family in DECODERS:
        assert tok.padding_side == "left"
        assert mask[0, 0] == 0 and mask[0, -1] == 1  # the shorter text is padded on the left
        assert enc.append_eos
        assert (ids[:, -1] == tok.eos_token_id).all()
    else:
        assert tok.padding_side == "right" and mask[0, 0] == 1 and mask[0, -1] == 0
        assert not enc.append_eos  # BERT-style tokenizers end with [SEP] already
    if family in ("gpt2", "llama", "mistral"):
        assert tok.pad_token == tok.eos_token  # the tokenizer had none


def test_truncation_keeps_eos_and_is_counted(tiny):
    family, path = tiny
    if family not in DECODERS:
        pytest.skip("EOS is appended for decoders only")
    enc = Encoder(path, "last", max_length=6, normalize=True, device="cpu", dtype="float32")
    out = enc(pa.table({"text_hash": ["a", "b"], "text": ["hi", TEXTS[1]]}))
    assert out.column("truncated").to_pylist() == [False, True]
    assert out.column("n_tokens").to_pylist()[1] == 6
    ids, n_full = tokenize(enc.tokenizer, [TEXTS[1]], 6, True)
    assert len(ids[0]) == 6 and ids[0][-1] == enc.tokenizer.eos_token_id and n_full[0] > 6


def test_prompt_template_is_applied(tiny):
    _, path = tiny
    template = 'This item: "{text}" means in one word:"'
    wrapped = _encode(path, ["space opera"], "last", prompt_template=template)[0]
    by_hand = _encode(path, [template.format(text="space opera")], "last")[0]
    plain = _encode(path, ["space opera"], "last")[0]
    np.testing.assert_allclose(wrapped, by_hand, rtol=1e-5, atol=1e-6)
    assert not np.allclose(wrapped, plain)


def test_mean_of_last_layers(tiny):
    _, path = tiny
    one = _encode(path, TEXTS[:2], "mean", layers=1)
    two = _encode(path, TEXTS[:2], "mean", layers=2)
    assert one.shape == two.shape and not np.allclose(one, two)
    with pytest.raises(ValueError, match="encode.layers"):
        _encode(path, TEXTS[:1], "mean", layers=3)


def test_pickle_weights_need_opt_in(tmp_path):
    import transformers as t

    torch.manual_seed(0)
    model = t.BertModel(_config("bert"))
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")  # a pickle checkpoint only
    _tokenizer("bert").save_pretrained(tmp_path)
    with pytest.raises(OSError):
        Encoder(str(tmp_path), "mean", 32, True, device="cpu", dtype="float32")
    enc = Encoder(str(tmp_path), "mean", 32, True, device="cpu", dtype="float32",
                  allow_unsafe_weights=True)
    assert enc(pa.table({"text_hash": ["a"], "text": ["ok"]})).num_rows == 1


def test_minilm_parity_with_sentence_transformers():
    """Our mean-pooled, normalised MiniLM vector is what sentence-transformers computes."""
    from sentence_transformers import SentenceTransformer

    path, _ = resolve_model("minilm")
    texts = TEXTS + ["Toy Story (1995). Genres: Animation, Children's, Comedy."]
    ours = _encode(path, texts, "mean", max_length=256)
    ours /= np.linalg.norm(ours, axis=1, keepdims=True)
    reference = SentenceTransformer(path, device="cpu").encode(texts, normalize_embeddings=True)
    cosine = (ours * reference).sum(axis=1)
    assert cosine.min() > 0.9999, cosine
