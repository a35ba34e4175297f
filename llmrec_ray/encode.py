"""Encode text rows into vectors with a Hugging Face model inside Ray Data actor pools.

`encode_texts` deduplicates the texts by `text_hash`, skips those in the cache, orders the rest by
length and cuts windows of `encode.batch_size` texts in the driver; then `Tokenizer` (CPU actors:
prompt, EOS, truncation, each window ordered by token length) and `Encoder` (the model, loaded once
per actor, CUDA when the cluster has GPUs; forward passes of at most `token_budget` padded tokens,
pooled) return one vector row per distinct `text_hash` (VECTOR_ROWS). Model, dtype: text_model.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from llmrec_ray.console import progress
from llmrec_ray.text_model import dtype_name, encode_device, gguf_location, pick_device, pick_dtype, resolve_model
from llmrec_ray.schemas import EMBEDDING, VECTOR_ROWS

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


def plan_pool(cfg, resources: dict, n_texts: int) -> dict:
    """Actors and resources of the two stages (tokenizer, encoder) for a cluster's `resources`
    (`ray.cluster_resources()`) and `n_texts` texts to encode.

    GPU clusters: `num_actors` defaults to one actor per `gpus_per_actor` of the cluster's GPUs
    (1 = one per GPU; 0.5 = two small models per GPU), each with one CPU. CPU clusters: as many
    actors of `cpus_per_actor` CPUs as fit beside the tokenizers; torch threads = cpus_per_actor.
    Every actor of both stages must be placed at once, or the pipeline waits for ever; so when the
    cluster is too small for what was asked, the encoder actors reserve fewer (logical) CPUs, and
    keep their threads. Never more actors than windows of work.
    """
    cpus, gpus = float(resources.get("CPU", 0)), float(resources.get("GPU", 0))
    if cfg.device == "cuda" and gpus == 0:
        raise RuntimeError("encode.device=cuda but the Ray cluster has no GPU resource")
    use_gpu = encode_device(cfg, resources) == "cuda"
    windows = max(1, -(-n_texts // cfg.batch_size))
    if use_gpu:
        n = cfg.num_actors or max(1, int(gpus / cfg.gpus_per_actor + 1e-9))
        if n * cfg.gpus_per_actor > gpus + 1e-9:
            raise ValueError(f"encode.num_actors={n} x encode.gpus_per_actor={cfg.gpus_per_actor} "
                             f"needs more than the cluster's {gpus:g} GPUs")
        actor_cpus, actor_gpus, threads = 1.0, cfg.gpus_per_actor, None
    else:
        n = cfg.num_actors or max(1, int((cpus - cfg.tokenize_cpus) // cfg.cpus_per_actor))
        actor_cpus, actor_gpus, threads = cfg.cpus_per_actor, 0, max(1, round(cfg.cpus_per_actor))
    n = min(n, windows)
    n_tok = min(cfg.tokenize_actors or n, windows)
    room = cpus - n_tok * cfg.tokenize_cpus
    if n * actor_cpus > room + 1e-9:
        if room <= 0.05 * n:
            raise ValueError(f"the cluster's {cpus:g} CPUs cannot hold {n_tok} tokenizer actors of "
                             f"{cfg.tokenize_cpus:g} CPU and {n} encoder actors: lower "
                             "encode.tokenize_cpus, encode.tokenize_actors or encode.num_actors")
        logger.info("encode: %d actors x %.2f CPUs asked, %.2f CPUs left beside the tokenizers: each "
                    "actor reserves %.2f (torch threads unchanged)", n, actor_cpus, room, room / n)
        actor_cpus = room / n
    return {"use_gpu": use_gpu, "num_actors": n, "actor_cpus": round(actor_cpus, 4),
            "actor_gpus": actor_gpus, "threads": threads, "tokenize_actors": n_tok,
            "tokenize_cpus": cfg.tokenize_cpus,
            "token_budget": cfg.token_budget or default_token_budget("cuda" if use_gpu else "cpu")}


def tokenizer_kwargs(cfg, model_path: str) -> dict:
    """`Tokenizer(**...)` from an `EncodeConfig`: the one place its settings become arguments."""
    return dict(model_path=model_path, pooling=cfg.pooling, max_length=cfg.max_length,
                trust_remote_code=cfg.trust_remote_code, prompt_template=cfg.prompt_template,
                add_eos=cfg.add_eos, gguf_file=cfg.gguf_file)


def encoder_kwargs(cfg, model_path: str, device: str = "auto", dtype: str | None = None,
                   num_threads: int | None = None, token_budget: int | None = None) -> dict:
    """`Encoder(**...)` from an `EncodeConfig` (the pool and `recommend --text` both build their
    encoder from this): `dtype` None = the config's."""
    return dict(model_path=model_path, pooling=cfg.pooling, max_length=cfg.max_length,
                normalize=cfg.normalize, device=device, dtype=cfg.dtype if dtype is None else dtype,
                trust_remote_code=cfg.trust_remote_code, num_threads=num_threads, layers=cfg.layers,
                prompt_template=cfg.prompt_template, add_eos=cfg.add_eos,
                allow_unsafe_weights=cfg.allow_unsafe_weights, token_budget=token_budget,
                gguf_file=cfg.gguf_file)


def encode_texts(text_rows: pa.Table, cfg, cache=None) -> tuple[pa.Table, dict]:
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
    plan = plan_pool(cfg, ray.cluster_resources(), unique.num_rows)
    # the actors compute in the dtype the key (the text hashes) names, not each in its own auto
    dtype = dtype_name(cfg.dtype, "cuda" if plan["use_gpu"] else "cpu")
    model_path, _ = resolve_model(cfg.model)
    # Windows cut here, not by a repartition task: a CPU task the actors leave no room for would
    # wait for ever. The driver has already ordered the texts by length, so each window holds texts
    # of similar length; the tokenizer then orders each window by its token lengths.
    step = cfg.batch_size
    ds = ray.data.from_arrow([unique.slice(i, step) for i in range(0, unique.num_rows, step)])
    logger.info("encoding %d texts in %d windows: %s", unique.num_rows, -(-unique.num_rows // step), plan)
    start = time.perf_counter()
    tokens = ds.map_batches(
        Tokenizer,
        fn_constructor_kwargs=tokenizer_kwargs(cfg, model_path),
        batch_size=None, batch_format="pyarrow",
        compute=ActorPoolStrategy(size=plan["tokenize_actors"]),
        num_cpus=plan["tokenize_cpus"],
    )
    out = tokens.map_batches(
        Encoder,
        fn_constructor_kwargs=encoder_kwargs(cfg, model_path, device="cuda" if plan["use_gpu"] else "cpu",
                                             dtype=dtype, num_threads=plan["threads"],
                                             token_budget=plan["token_budget"]),
        batch_size=None, batch_format="pyarrow",
        compute=ActorPoolStrategy(size=plan["num_actors"]),
        num_cpus=plan["actor_cpus"],
        num_gpus=plan["actor_gpus"],
    )
    # Stream the output: vectors reach the cache every `cache_flush_rows` rows, so a build whose
    # driver dies resumes from what was encoded (the next run finds those texts in the cache).
    blocks, pending = [], []
    with progress("encode", unique.num_rows, "texts") as bar:
        for block in out.iter_batches(batch_size=None, batch_format="pyarrow"):
            blocks.append(block)
            pending.append(block)
            if cache is not None and sum(b.num_rows for b in pending) >= cfg.cache_flush_rows:
                cache.add(pa.concat_tables(pending).select(VECTOR_ROWS.names).cast(VECTOR_ROWS))
                pending = []
            bar.update(block.num_rows)
    vectors = pa.concat_tables(blocks) if blocks else pa.table({})
    elapsed = time.perf_counter() - start
    if vectors.num_rows != unique.num_rows or pc.count_distinct(vectors.column("text_hash")).as_py() != unique.num_rows:
        raise RuntimeError(f"encoder returned {vectors.num_rows} rows for {unique.num_rows} distinct "
                           "texts: rows were lost or duplicated")
    padded_tokens = int(pc.sum(vectors.column("padded_length")).as_py())
    vectors = vectors.select(VECTOR_ROWS.names).cast(VECTOR_ROWS)
    if cache is not None and pending:
        cache.add(pa.concat_tables(pending).select(VECTOR_ROWS.names).cast(VECTOR_ROWS))
    n_tok = int(pc.sum(vectors.column("n_tokens")).as_py())
    stats.update(encoded=unique.num_rows, tokens=n_tok, seconds=round(elapsed, 2),
                 actors=plan["num_actors"], device="cuda" if plan["use_gpu"] else "cpu",
                 padding_efficiency=round(n_tok / max(padded_tokens, 1), 4),
                 truncated=int(pc.sum(vectors.column("truncated")).as_py()),
                 tokens_per_s=round(n_tok / max(elapsed, 1e-9), 1),
                 dim=len(vectors.column("embedding")[0].as_py()))
    logger.info("encoded %d texts (%d from the cache, %d duplicates skipped), %d tokens in %.1fs",
                unique.num_rows, stats["cached"], stats["deduplicated"], n_tok, elapsed)
    return pa.concat_tables([cached, vectors]), stats
