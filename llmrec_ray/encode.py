"""Encode text rows into vectors with a Hugging Face model inside Ray Data actor pools.

`encode_texts` deduplicates the texts by `text_hash`, skips those in the cache, orders the rest by
length and cuts windows of `encode.batch_size` texts in the driver; then the `Tokenizer` and
`Encoder` actors (`encoder.py`) return one vector row per distinct `text_hash` (VECTOR_ROWS),
streamed back and flushed to the cache as they come. `plan_pool` sizes the pools.
"""

from __future__ import annotations

import logging
import time

import pyarrow as pa
import pyarrow.compute as pc

from llmrec_ray.console import progress
from llmrec_ray.encoder import Encoder, Tokenizer, default_token_budget
from llmrec_ray.text_model import dtype_name, encode_device, resolve_model
from llmrec_ray.schemas import VECTOR_ROWS

logger = logging.getLogger(__name__)


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


def distinct_texts(text_rows: pa.Table) -> pa.Table:
    """One row (text_hash, text) per distinct hash, longest text first: neighbours in a batch have
    similar lengths, so padding is small."""
    unique_idx = pc.index_in(pc.unique(text_rows.column("text_hash")), text_rows.column("text_hash"))
    unique = text_rows.select(["text_hash", "text"]).take(unique_idx)
    order = pc.sort_indices(pa.table({"n": pc.utf8_length(unique.column("text"))}), [("n", "descending")])
    return unique.take(order)


def encoding_dataset(unique: pa.Table, cfg, plan: dict):
    """The Ray Data pipeline: windows of `encode.batch_size` texts -> Tokenizer actors -> Encoder
    actors (lazy). Windows are cut here, not by a repartition task: a CPU task the actors leave no
    room for would wait for ever. The texts are ordered by length, so each window holds texts of
    similar length; the tokenizer then orders each window by its token lengths."""
    import ray
    from ray.data import ActorPoolStrategy

    # the actors compute in the dtype the key (the text hashes) names, not each in its own auto
    device = "cuda" if plan["use_gpu"] else "cpu"
    model_path, _ = resolve_model(cfg.model)
    step = cfg.batch_size
    ds = ray.data.from_arrow([unique.slice(i, step) for i in range(0, unique.num_rows, step)])
    logger.info("encoding %d texts in %d windows: %s", unique.num_rows, -(-unique.num_rows // step), plan)
    tokens = ds.map_batches(
        Tokenizer, fn_constructor_kwargs=tokenizer_kwargs(cfg, model_path),
        batch_size=None, batch_format="pyarrow",
        compute=ActorPoolStrategy(size=plan["tokenize_actors"]), num_cpus=plan["tokenize_cpus"])
    return tokens.map_batches(
        Encoder,
        fn_constructor_kwargs=encoder_kwargs(cfg, model_path, device=device,
                                             dtype=dtype_name(cfg.dtype, device),
                                             num_threads=plan["threads"], token_budget=plan["token_budget"]),
        batch_size=None, batch_format="pyarrow",
        compute=ActorPoolStrategy(size=plan["num_actors"]),
        num_cpus=plan["actor_cpus"], num_gpus=plan["actor_gpus"])


def collect(out, n_texts: int, cache, flush_rows: int) -> pa.Table:
    """Stream the encoder's output under a progress bar: vectors reach the cache every
    `flush_rows` rows, so a build whose driver dies resumes from what was encoded (the next run
    finds those texts in the cache). Returns the raw output rows, checked one per text."""
    blocks, pending = [], []
    with progress("encode", n_texts, "texts") as bar:
        for block in out.iter_batches(batch_size=None, batch_format="pyarrow"):
            blocks.append(block)
            pending.append(block)
            if cache is not None and sum(b.num_rows for b in pending) >= flush_rows:
                cache.add(pa.concat_tables(pending).select(VECTOR_ROWS.names).cast(VECTOR_ROWS))
                pending = []
            bar.update(block.num_rows)
    vectors = pa.concat_tables(blocks) if blocks else pa.table({})
    if vectors.num_rows != n_texts or pc.count_distinct(vectors.column("text_hash")).as_py() != n_texts:
        raise RuntimeError(f"encoder returned {vectors.num_rows} rows for {n_texts} distinct "
                           "texts: rows were lost or duplicated")
    if cache is not None and pending:
        cache.add(pa.concat_tables(pending).select(VECTOR_ROWS.names).cast(VECTOR_ROWS))
    return vectors


def encode_texts(text_rows: pa.Table, cfg, cache=None) -> tuple[pa.Table, dict]:
    """Encode the distinct texts of `text_rows` (which carry `text` and `text_hash`).

    Returns (vector rows, one per distinct text_hash; stats). Runs on the current Ray cluster.
    With an `EmbeddingCache`, cached hashes are reused and only the rest is encoded (then cached).
    Stats: texts = distinct + deduplicated; distinct = cached + encoded.
    """
    import ray

    unique = distinct_texts(text_rows)
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
    start = time.perf_counter()
    raw = collect(encoding_dataset(unique, cfg, plan), unique.num_rows, cache, cfg.cache_flush_rows)
    elapsed = time.perf_counter() - start
    padded_tokens = int(pc.sum(raw.column("padded_length")).as_py())
    vectors = raw.select(VECTOR_ROWS.names).cast(VECTOR_ROWS)
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
