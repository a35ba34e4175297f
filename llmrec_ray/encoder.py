"""The model-resident callables of the encode stage: `Tokenizer` (CPU actors: prompt, EOS,
truncation, each window ordered by token length) and `Encoder` (the model, loaded once per actor,
CUDA when the cluster has GPUs; forward passes of at most `token_budget` padded tokens, pooled).
`encode.py` runs them in Ray Data actor pools. Model, dtype: text_model.
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa

from llmrec_ray.text_model import gguf_location, pick_device, pick_dtype
from llmrec_ray.schemas import EMBEDDING

logger = logging.getLogger(__name__)

DECODER_TYPES = {"gpt2", "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi", "phi3",
                 "gpt_neox", "falcon", "mixtral", "olmo", "stablelm"}


def is_decoder(config) -> bool:
    """A causal (decoder-only) LLM: attends left to right, so the last token sees the whole text."""
    archs = getattr(config, "architectures", None) or []
    return config.model_type in DECODER_TYPES or any(a.endswith("ForCausalLM") for a in archs)


def tokenize(tokenizer, texts: list[str], max_length: int, append_eos: bool) -> tuple[list[list[int]], np.ndarray]:
    """Texts -> (token ids truncated to `max_length`, untruncated lengths). No padding.

    With `append_eos`, each text ends with the EOS token (kept when truncating), so a last-token
    pooling reads a state that has seen the whole (truncated) text. Without it the tokenizer's own
    truncation keeps its special tokens ([CLS] ... [SEP]).
    """
    full = tokenizer(texts, add_special_tokens=True, truncation=False)["input_ids"]
    if not append_eos:
        # only the (few) texts over max_length are tokenized again, with the tokenizer's truncation
        long = [i for i, x in enumerate(full) if len(x) > max_length]
        ids = list(full)
        if long:
            cut = tokenizer([texts[i] for i in long], add_special_tokens=True, truncation=True,
                            max_length=max_length)["input_ids"]
            for i, x in zip(long, cut):
                ids[i] = x
        return ids, np.array([len(x) for x in full], dtype=np.int64)
    eos = tokenizer.eos_token_id
    full = [x if x and x[-1] == eos else x + [eos] for x in full]
    ids = [x if len(x) <= max_length else x[:max_length - 1] + [eos] for x in full]
    return ids, np.array([len(x) for x in full], dtype=np.int64)


def token_budget_batches(lengths: np.ndarray, budget: int) -> list[np.ndarray]:
    """Row indices grouped into batches, longest first, each with rows x longest <= `budget`
    padded tokens (a single row longer than the budget forms its own batch)."""
    order = np.argsort(-lengths, kind="stable")
    batches, start = [], 0
    while start < len(order):
        longest = max(int(lengths[order[start]]), 1)
        size = max(1, budget // longest)  # rows are sorted, so the first row is the longest
        batches.append(order[start:start + size])
        start += size
    return batches


def pad_batch(ids: list[list[int]], pad_id: int, left: bool) -> tuple[np.ndarray, np.ndarray]:
    """Token id lists -> (input_ids, attention_mask), (B, T) int64, padded on the left or right."""
    longest = max(1, max(len(x) for x in ids))
    input_ids = np.full((len(ids), longest), pad_id, dtype=np.int64)
    mask = np.zeros((len(ids), longest), dtype=np.int64)
    for r, x in enumerate(ids):
        if not x:
            continue
        if left:
            input_ids[r, longest - len(x):], mask[r, longest - len(x):] = x, 1
        else:
            input_ids[r, :len(x)], mask[r, :len(x)] = x, 1
    return input_ids, mask


def load_tokenizer(model_path: str, pooling: str, trust_remote_code: bool = False,
                   add_eos: str | bool = "auto", gguf_file: str | None = None):
    """(tokenizer, is_decoder, append_eos) for a model directory or hub name.

    A tokenizer without a pad token pads with EOS. Decoders with last-token pooling pad on the left
    (their last position is then the last real token); everything else pads on the right.
    """
    from transformers import AutoConfig, AutoTokenizer

    model_path, gguf_file = gguf_location(model_path, gguf_file)
    gguf = {"gguf_file": gguf_file} if gguf_file else {}
    config = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code, **gguf)
    decoder = is_decoder(config)
    tok = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code, **gguf)
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ValueError(f"{model_path}: the tokenizer has neither a pad nor an EOS token")
        tok.pad_token = tok.eos_token
    tok.padding_side = "left" if decoder and pooling == "last" else "right"
    if add_eos == "auto":
        add_eos = decoder and pooling in ("last", "weighted_mean")
    if add_eos and tok.eos_token_id is None:
        raise ValueError(f"{model_path}: encode.add_eos needs a tokenizer with an EOS token")
    return tok, config, bool(add_eos)


TOKENIZED = pa.schema([("text_hash", pa.string()), ("input_ids", pa.list_(pa.int32())),
                       ("n_tokens", pa.int64()), ("truncated", pa.bool_())])


class Tokenizer:
    """Ray Data callable class (CPU): a window of texts -> token ids, ordered by token length.

    Runs in its own CPU actors ahead of the encoder actors, so tokenizing overlaps the forward
    passes (on a GPU the model then never waits for the tokenizer). Applies the prompt template
    and EOS, truncates to `max_length` and records whether each text was truncated. The window
    comes back sorted longest first, so the encoder cuts it into batches with little padding.
    """

    def __init__(self, model_path: str, pooling: str, max_length: int, trust_remote_code: bool = False,
                 prompt_template: str | None = None, add_eos: str | bool = "auto",
                 gguf_file: str | None = None):
        self.tokenizer, self.config, self.append_eos = load_tokenizer(
            model_path, pooling, trust_remote_code, add_eos, gguf_file)
        self.max_length, self.prompt_template = max_length, prompt_template

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.tokenize_table(batch, sort=True)

    def tokenize_table(self, batch: pa.Table, sort: bool) -> pa.Table:
        """(text_hash, text) rows -> TOKENIZED rows, longest first with `sort`, else in input order."""
        texts = batch.column("text").to_pylist()
        if self.prompt_template:
            texts = [self.prompt_template.format(text=t) for t in texts]
        ids, n_full = tokenize(self.tokenizer, texts, self.max_length, self.append_eos)
        lengths = np.array([len(x) for x in ids], dtype=np.int64)
        order = np.argsort(-lengths, kind="stable") if sort else np.arange(len(ids))
        return pa.table({
            "text_hash": batch.column("text_hash").take(pa.array(order)),
            "input_ids": pa.array([ids[i] for i in order], pa.list_(pa.int32())),
            "n_tokens": pa.array(lengths[order]),
            "truncated": pa.array(n_full[order] > self.max_length),
        }, schema=TOKENIZED)


class Encoder:
    """Ray Data callable class: model resident in the actor, batches of token ids in, vectors out.

    Works for encoders (BERT, RoBERTa, MiniLM, E5/BGE) and decoder LLMs (Llama, Qwen2, Mistral,
    GPT-2) through `AutoModel`. For a decoder with last-token pooling texts are left-padded and end
    with EOS; decoders get position ids that start at each text's first real token, so a text's vector does
    not depend on the batch it is padded in. A tokenizer without a pad token pads with EOS.
    Batches carry `input_ids` (from `Tokenizer`) or raw `text`, which is then tokenized here.
    """

    def __init__(self, model_path: str, pooling: str, max_length: int, normalize: bool,
                 device: str = "auto", dtype: str = "auto", trust_remote_code: bool = False,
                 num_threads: int | None = None, layers: int = 1, prompt_template: str | None = None,
                 add_eos: str | bool = "auto", allow_unsafe_weights: bool = False,
                 token_budget: int | None = None, gguf_file: str | None = None):
        import inspect

        import torch
        from transformers import AutoModel

        from llmrec_ray.pooling import POOLINGS

        if pooling not in POOLINGS:
            raise ValueError(f"encode.pooling: unknown pooling {pooling!r} (known: {sorted(POOLINGS)})")
        if num_threads:
            torch.set_num_threads(num_threads)
        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        self.pooling, self.normalize, self.layers = pooling, normalize, layers
        self.token_budget = token_budget or default_token_budget(self.device)
        self.tok = Tokenizer(model_path, pooling, max_length, trust_remote_code, prompt_template, add_eos,
                             gguf_file)
        self.tokenizer, config = self.tok.tokenizer, self.tok.config
        self.decoder, self.append_eos = is_decoder(config), self.tok.append_eos
        if self.decoder and pooling == "cls":
            raise ValueError(f"encode.pooling=cls on a decoder ({config.model_type}): its first token "
                             "sees only itself; use last, weighted_mean or mean")
        self.left_pad = self.tokenizer.padding_side == "left"
        model_path, gguf_file = gguf_location(model_path, gguf_file)
        # GGUF (no pickle): its quantized tensors are dequantized to float, then cast to dtype; the
        # config parsed by the tokenizer is reused (each GGUF parse takes seconds)
        gguf = {"gguf_file": gguf_file, "config": config} if gguf_file else {}
        self.model = AutoModel.from_pretrained(
            model_path, trust_remote_code=trust_remote_code,
            use_safetensors=None if allow_unsafe_weights else True,
            dtype=self.dtype, **gguf).to(self.device).eval()
        self.pass_positions = self.decoder and "position_ids" in inspect.signature(self.model.forward).parameters
        logger.info("encoder loaded %s%s (%s, %s) on %s (%s), pooling=%s, append_eos=%s, token_budget=%d",
                    model_path, f" [{gguf_file}]" if gguf_file else "", config.model_type,
                    "decoder" if self.decoder else "encoder", self.device,
                    self.dtype, pooling, self.append_eos, self.token_budget)

    def __call__(self, batch: pa.Table) -> pa.Table:
        """A window of texts -> their vectors, cut into forward passes of at most `token_budget`
        padded tokens over rows of similar length, so padding stays small."""
        if "input_ids" not in batch.column_names:
            batch = self.tok.tokenize_table(batch, sort=False)  # rows come back in input order
        ids = batch.column("input_ids").to_pylist()
        lengths = np.array([len(x) for x in ids], dtype=np.int64)
        vecs: np.ndarray | None = None
        padded = np.zeros(len(ids), dtype=np.int64)  # the padded length of each row's batch
        for rows in token_budget_batches(lengths, self.token_budget):
            out = self.forward([ids[i] for i in rows])  # (b, H)
            if vecs is None:
                vecs = np.empty((len(ids), out.shape[1]), dtype=np.float32)
            vecs[rows] = out
            padded[rows] = lengths[rows].max()
        flat = pa.array(vecs.reshape(-1), pa.float32())
        emb = pa.FixedSizeListArray.from_arrays(flat, vecs.shape[1]).cast(EMBEDDING)
        return pa.table({
            "text_hash": batch.column("text_hash"),
            "embedding": emb,
            "n_tokens": pa.array(lengths),
            "truncated": batch.column("truncated"),
            "padded_length": pa.array(padded),
        })

    def forward(self, ids: list[list[int]]) -> np.ndarray:
        """Token ids of one batch -> pooled vectors (b, H) float32."""
        import torch

        from llmrec_ray.pooling import pool, select_layers

        input_ids, attention_mask = pad_batch(ids, self.tokenizer.pad_token_id, self.left_pad)
        mask = torch.from_numpy(attention_mask).to(self.device)  # (B, T)
        enc = {"input_ids": torch.from_numpy(input_ids).to(self.device), "attention_mask": mask}
        if self.pass_positions:
            enc["position_ids"] = (mask.cumsum(dim=1) - 1).clamp(min=0)  # (B, T)
        with torch.inference_mode():
            out = self.model(**enc, output_hidden_states=self.layers > 1)
            hidden = out.last_hidden_state if self.layers == 1 else select_layers(out.hidden_states, self.layers)
            vecs = pool(self.pooling, hidden, mask, self.normalize)  # (B, H)
        return vecs.float().cpu().numpy()


def default_token_budget(device: str) -> int:
    """Padded tokens per forward pass. CPUs run fastest on batches that stay in cache (measured on
    MiniLM, 2 AVX2 cores: 2-4k tokens ~15% faster than 8k); GPUs want big batches."""
    return 32768 if device == "cuda" else 4096
