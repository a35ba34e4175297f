"""Encode benchmark: the seed's naive method, a plain loop, our Ray Data pipeline (cold and warm
cache), the model-compute floor and the hardware roof, side by side in one run.

    python benchmarks/encode.py --out encode.json        # MovieLens path from LLMREC_ML100K

Each variant runs in its own subprocess so its peak memory is its own (benchmarks/variants.py:
the variant's process and all its descendants, with the pipeline Ray's GCS, raylet and workers,
sampled every second; loading the texts is in its scope). Texts are what `llmrec build-features`
encodes for configs/ml-100k.yaml (item texts and user snapshots). The naive variant encodes one
sentence per interaction; it is timed on `--naive-sample` interactions and its full-data time is
projected from that measured rate (marked `projected`).

`pipeline_items` is the build under `serialize.user_vectors: items_mean` (AlphaRec's input): the
pipeline encodes the item texts only (cold cache) and every user snapshot is the mean of its
history's item vectors (llmrec_ray/user_vectors.py, in the driver); its wall time is the encode
plus the pooling, the same scope as `pipeline_cold` (serialization and Ray start outside both).
`--variants` runs a subset (e.g. `naive,pipeline_items`); the naive baseline is the same either way.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from variants import ROOT, by_name, child_main, ratios, run_child, table


def ml100k_texts(path: str) -> tuple[list[str], list[str]]:
    """(distinct texts the pipeline encodes for ML-100K, one naive sentence per interaction)."""
    import pyarrow as pa

    from llmrec_ray import serialize
    from llmrec_ray.config import load_config
    from llmrec_ray.datasets import load_dataset

    cfg = load_config(ROOT / "configs" / "ml-100k.yaml", [f"data.path={path}"])
    ds = load_dataset(cfg.data)
    items, users = serialize.serialize_dataset(ds.items, ds.interactions, cfg.serialize, 0)
    texts = list(dict.fromkeys(items.column("text").to_pylist() + users.column("text").to_pylist()))
    inter = ds.interactions
    naive = [f"user {u} watched item {i} at time {t}, rated {r:g}" for u, i, t, r in zip(
        inter.column("user_id").to_pylist(), inter.column("item_id").to_pylist(),
        inter.column("event_timestamp").cast(pa.int64()).to_pylist(), inter.column("rating").to_pylist())]
    return texts, naive


VARIANTS = ("naive", "plain", "floor", "pipeline_cold", "pipeline_warm", "pipeline_items", "roof",
            "memory_1x", "memory_10x")
DEVICE, DTYPE, BUDGET = "cpu", "auto", 8192  # set from the arguments in each variant's process


def load_model(dtype: str):
    from transformers import AutoModel, AutoTokenizer

    from llmrec_ray.text_model import pick_dtype, resolve_model

    path, _ = resolve_model("minilm")
    dt = pick_dtype(dtype, DEVICE)
    model = AutoModel.from_pretrained(path, dtype=dt).to(DEVICE).eval()
    return AutoTokenizer.from_pretrained(path), model, dt


def sync() -> None:
    if DEVICE == "cuda":
        import torch

        torch.cuda.synchronize()


def loop_encode(texts: list[str], batch_size: int, dtype: str, sort: bool) -> dict:
    """A single-process loop: fixed batches, optionally sorted by length."""
    import torch

    from llmrec_ray.pooling import pool

    tok, model, _ = load_model(dtype)
    if sort:
        lengths = [len(x) for x in tok(texts)["input_ids"]]
        texts = [texts[i] for i in np.argsort(lengths)[::-1]]
    real = padded = 0
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            enc = tok(texts[i:i + batch_size], padding=True, truncation=True, max_length=256,
                      return_tensors="pt").to(DEVICE)
            pool("mean", model(**enc).last_hidden_state, enc["attention_mask"], True)
            real += int(enc["attention_mask"].sum())
            padded += enc["attention_mask"].numel()
    sync()
    wall = time.perf_counter() - start
    return {"wall_s": wall, "texts": len(texts), "tokens": real, "padding_efficiency": real / padded}


def floor_encode(texts: list[str], dtype: str, budget: int) -> dict:
    """The model's forward alone, on pre-tokenized, length-sorted, token-budget batches."""
    import torch

    from llmrec_ray.encode import token_budget_batches, tokenize
    from llmrec_ray.pooling import pool

    tok, model, _ = load_model(dtype)
    ids, _ = tokenize(tok, texts, 256, False)
    lengths = np.array([len(x) for x in ids])
    batches = [tok.pad({"input_ids": [ids[i] for i in rows]}, return_tensors="pt").to(DEVICE)
               for rows in token_budget_batches(lengths, budget)]
    padded = sum(b["attention_mask"].numel() for b in batches)
    start = time.perf_counter()
    with torch.inference_mode():
        for b in batches:
            pool("mean", model(**b).last_hidden_state, b["attention_mask"], True)
    sync()
    wall = time.perf_counter() - start
    return {"wall_s": wall, "texts": len(texts), "tokens": int(lengths.sum()),
            "padding_efficiency": int(lengths.sum()) / padded}


def pipeline_encode(texts: list[str], cache_dir: str) -> dict:
    import pyarrow as pa
    import ray

    from llmrec_ray.cache import EmbeddingCache
    from llmrec_ray.config import EncodeConfig
    from llmrec_ray.encode import encode_texts
    from llmrec_ray.text_model import encoder_key, text_hashes

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    cfg = EncodeConfig(device="cuda" if DEVICE == "cuda" else "cpu", dtype=DTYPE, token_budget=BUDGET)
    rows = pa.table({"text": texts, "text_hash": text_hashes(pa.array(texts), encoder_key(cfg))})
    start = time.perf_counter()
    _, stats = encode_texts(rows, cfg, cache=EmbeddingCache(cache_dir))
    wall = time.perf_counter() - start
    ray.shutdown()
    return {"wall_s": wall, "texts": len(texts), "tokens": stats.get("tokens", 0),
            "padding_efficiency": stats.get("padding_efficiency"), "encoded": stats["encoded"],
            "cached": stats["cached"]}


def pipeline_items(path: str, cache_dir: str) -> dict:
    """The ML-100K features with user vectors pooled from item vectors: encode the item texts on
    the pipeline, then pool every user snapshot (serialize.user_vectors items_mean)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import ray

    from llmrec_ray import serialize
    from llmrec_ray.cache import EmbeddingCache
    from llmrec_ray.config import EncodeConfig, load_config
    from llmrec_ray.datasets import load_dataset
    from llmrec_ray.encode import encode_texts
    from llmrec_ray.text_model import encoder_key, text_hashes
    from llmrec_ray.user_vectors import pooled_user_view

    cfg = load_config(ROOT / "configs" / "ml-100k.yaml", [f"data.path={path}", "serialize.user_vectors=items_mean"])
    ds = load_dataset(cfg.data)
    t0 = time.perf_counter()
    items, users = serialize.serialize_dataset(ds.items, ds.interactions, cfg.serialize, 0)
    serialize_s = time.perf_counter() - t0
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    ecfg = EncodeConfig(device="cuda" if DEVICE == "cuda" else "cpu", dtype=DTYPE, token_budget=BUDGET)
    rows = items.append_column("text_hash", text_hashes(items.column("text"), encoder_key(ecfg)))
    start = time.perf_counter()
    vectors, stats = encode_texts(rows, ecfg, cache=EmbeddingCache(cache_dir))
    encoded = time.perf_counter()
    idx = pc.index_in(rows.column("text_hash"), value_set=vectors.column("text_hash"))
    item_view = pa.table({"item_id": rows.column("entity_id"), "embedding": vectors.column("embedding").take(idx)})
    user_view = pooled_user_view(ds.interactions, users, item_view, cfg.serialize, ecfg.normalize)
    wall = time.perf_counter() - start
    ray.shutdown()
    return {"wall_s": wall, "texts": rows.num_rows, "tokens": stats.get("tokens", 0),
            "padding_efficiency": stats.get("padding_efficiency"), "encoded": stats["encoded"],
            "cached": stats["cached"], "user_texts": 0, "user_snapshots": user_view.num_rows,
            "encode_s": encoded - start, "pool_s": wall - (encoded - start),
            "serialize_s_untimed": serialize_s, "dim": stats.get("dim")}


def roof(dtype: str, seq_len: float) -> dict:
    """Matmul rate of this machine (2 threads) / the model's FLOPs per token."""
    import torch

    _, model, dt = load_model(dtype)
    torch.set_num_threads(2)
    n = 2048 if DEVICE == "cpu" else 8192
    a = torch.randn(n, n, dtype=dt, device=DEVICE)
    b = torch.randn(n, n, dtype=dt, device=DEVICE)
    a @ b
    sync()
    reps, start = 5, time.perf_counter()
    for _ in range(reps):
        a @ b
    sync()
    flops_per_s = 2 * n**3 * reps / (time.perf_counter() - start)
    c = model.config
    params = sum(p.numel() for n_, p in model.named_parameters() if "embeddings" not in n_)
    per_token = 2 * params + 4 * c.num_hidden_layers * seq_len * c.hidden_size  # dense + attention
    return {"matmul_flops_per_s": flops_per_s, "flops_per_token": per_token,
            "roof_tokens_per_s": flops_per_s / per_token}


def synthetic_texts(scale: int) -> list[str]:
    from llmrec_ray import serialize
    from llmrec_ray.config import load_config
    from llmrec_ray.datasets import load_dataset

    cfg = load_config(None, [f"data.synthetic.n_users={20 * scale}", f"data.synthetic.n_items={30 * scale}"])
    ds = load_dataset(cfg.data)
    items, users = serialize.serialize_dataset(ds.items, ds.interactions, cfg.serialize, 0)
    return list(dict.fromkeys(items.column("text").to_pylist() + users.column("text").to_pylist()))


def run_naive(args) -> dict:
    """The seed's method, fp32 on the CPU, one sentence per interaction: timed on the first
    `--naive-sample` sentences, the full data's time projected from that rate."""
    global DEVICE
    _, naive = ml100k_texts(args.ml100k)
    sample = naive[:args.naive_sample]
    device, DEVICE = DEVICE, "cpu"
    out = loop_encode(sample, 64, "float32", sort=False)
    DEVICE = device
    return {**out, "projected": True, "measured_texts": len(sample), "measured_wall_s": out["wall_s"],
            "texts": len(naive), "wall_s": out["wall_s"] * len(naive) / len(sample),
            "tokens": int(out["tokens"] * len(naive) / len(sample))}


def run_memory(scale: int):
    """The pipeline (cold cache) on the synthetic data at `scale` x its default size."""
    def run(args) -> dict:
        with tempfile.TemporaryDirectory() as tmp:
            return pipeline_encode(synthetic_texts(scale), tmp)
    return run


def run_pipeline_items(args) -> dict:
    with tempfile.TemporaryDirectory() as own:  # its own, cold cache
        return pipeline_items(args.ml100k, own)


RUNNERS = {
    "naive": run_naive,
    "plain": lambda args: loop_encode(ml100k_texts(args.ml100k)[0], 64, args.dtype, sort=True),
    "floor": lambda args: floor_encode(ml100k_texts(args.ml100k)[0], args.dtype, args.token_budget),
    "pipeline_cold": lambda args: pipeline_encode(ml100k_texts(args.ml100k)[0], args.cache_dir),
    "pipeline_warm": lambda args: pipeline_encode(ml100k_texts(args.ml100k)[0], args.cache_dir),
    "pipeline_items": run_pipeline_items,
    "roof": lambda args: roof(args.dtype, args.seq_len),
    "memory_1x": run_memory(1),
    "memory_10x": run_memory(10),
}
# the child's flags: every argument a variant reads (--cache-dir is passed apart)
CHILD_KEYS = ("ml100k", "naive_sample", "dtype", "device", "token_budget", "seq_len")
# ratios of the variants side by side; FULL only when all its variants (and the roof) ran
FULL = {"pipeline_vs_plain_tokens_per_s": ("pipeline_cold", "plain", "tokens_per_s"),
        "naive_wall_over_pipeline_wall": ("naive", "pipeline_cold", "wall_s"),
        "pipeline_cold_over_warm_wall": ("pipeline_cold", "pipeline_warm", "wall_s"),
        "pipeline_vs_floor_tokens_per_s": ("pipeline_cold", "floor", "tokens_per_s"),
        "pipeline_fraction_of_roof": ("pipeline_cold", "roof", "tokens_per_s")}
ITEMS = {"naive_wall_over_pipeline_items_wall": ("naive", "pipeline_items", "wall_s"),
         "pipeline_cold_over_items_wall": ("pipeline_cold", "pipeline_items", "wall_s")}
COLUMNS = {
    "variant": "{variant}",
    "wall s": lambda v: f"{v['wall_s']:.1f}" + (" (projected)" if v.get("projected") else ""),
    "texts/s": "{texts_per_s:.0f}", "tokens/s": "{tokens_per_s:.0f}",
    "padding eff.": lambda v: "-" if v.get("padding_efficiency") is None else f"{v['padding_efficiency']:.3f}",
    "peak RSS MB": "{peak_rss_mb:.0f}"}


def child(args) -> None:
    """In a variant's process: the device, dtype and token budget, 2 torch threads, the run."""
    import torch

    global DEVICE, DTYPE, BUDGET
    DEVICE, DTYPE, BUDGET = args.device, args.dtype, args.token_budget
    torch.set_num_threads(2)
    child_main(RUNNERS, args, per_s=("texts", "tokens"))


def run_all(args, wanted: list[str]) -> dict:
    """Every wanted variant in its own process, in the order of VARIANTS; the results' JSON."""
    from llmrec_ray.text_model import cpu_has_bf16

    results: dict = {"variants": {}, "machine": {"cpus": os.cpu_count(), "device": args.device,
                                                 "cpu_bf16": cpu_has_bf16()},
                     "dtype": args.dtype, "token_budget": args.token_budget}
    with tempfile.TemporaryDirectory() as cache:
        for name in [v for v in VARIANTS if v in wanted]:
            out = run_child(__file__, name, args, CHILD_KEYS, cache_dir=cache)
            if name == "roof":
                roof_ = {k: v for k, v in out.items() if not k.startswith("peak_")}
                results.update(roof_tokens_per_s=out["roof_tokens_per_s"], roof=roof_)
            elif name.startswith("memory_"):
                results.setdefault("memory_scaling", {})[name.split("_")[1]] = out["peak_rss_mb"]
                results.setdefault("memory_scaling_texts", {})[name.split("_")[1]] = out["texts"]
            else:
                results["variants"][name] = out
    v = dict(results["variants"])
    if "roof_tokens_per_s" in results:
        v["roof"] = {"tokens_per_s": results["roof_tokens_per_s"]}
    full = ratios(v, FULL)
    results["ratios"] = {**(full if len(full) == len(FULL) else {}), **ratios(v, ITEMS)}
    return results


def markdown(results: dict) -> str:
    """The README table: one row per variant, then the ratios the issue sets targets on."""
    rows = table(COLUMNS, by_name(results["variants"]))
    r = results["ratios"]
    m = results.get("memory_scaling")
    if "naive_wall_over_pipeline_items_wall" in r:
        it = results["variants"]["pipeline_items"]
        rows += ["", f"User vectors pooled from item vectors (pipeline_items: {it['texts']} item texts "
                 f"encoded, 0 user texts, {it['user_snapshots']} snapshots pooled in {it['pool_s']:.1f} s): "
                 f"naive wall / pipeline_items wall: {r['naive_wall_over_pipeline_items_wall']:.1f}x."]
    if m is None or "pipeline_vs_plain_tokens_per_s" not in r:
        return "\n".join(rows)
    rows += ["", f"Roof: {results['roof_tokens_per_s']:.0f} tokens/s (matmul rate / FLOPs per token). "
             f"Pipeline (cold) vs plain: {r['pipeline_vs_plain_tokens_per_s']:.2f}x tokens/s; vs floor: "
             f"{r['pipeline_vs_floor_tokens_per_s']:.2f}x; fraction of roof: "
             f"{r['pipeline_fraction_of_roof']:.2f}; naive wall / pipeline wall: "
             f"{r['naive_wall_over_pipeline_wall']:.1f}x; cold / warm wall: "
             f"{r['pipeline_cold_over_warm_wall']:.0f}x. Peak memory, synthetic 1x / 10x data: "
             f"{m['1x']:.0f} / {m['10x']:.0f} MB."]
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="JSON output file")
    p.add_argument("--render", help="print the markdown table of an existing JSON result and exit")
    p.add_argument("--ml100k", default=os.environ.get("LLMREC_ML100K"),
                   help="the MovieLens 100K folder (default: $LLMREC_ML100K)")
    p.add_argument("--naive-sample", type=int, default=10_000, help="interactions timed for the naive variant")
    p.add_argument("--dtype", default="auto", help="dtype of plain/pipeline/floor (auto: bf16 where the CPU has it)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where plain/floor/pipeline/roof run")
    p.add_argument("--token-budget", type=int, default=None, help="padded tokens per forward pass (default: the pipeline's, 4096 CPU / 32768 GPU)")
    p.add_argument("--seq-len", type=float, default=80.0, help="mean tokens per text, for the roof's attention term")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {','.join(VARIANTS)}")
    p.add_argument("--variant", help=argparse.SUPPRESS)
    p.add_argument("--cache-dir", help=argparse.SUPPRESS)
    args = p.parse_args()
    if not args.ml100k and not args.render:
        p.error("the MovieLens 100K folder is needed: --ml100k DIR or LLMREC_ML100K")
    if args.render:
        print(markdown(json.loads(Path(args.render).read_text())))
        return
    if args.token_budget is None:
        from llmrec_ray.encode import default_token_budget

        args.token_budget = default_token_budget(args.device)
    if args.variant:  # child process
        child(args)
        return
    if not args.out:
        p.error("--out is required")
    wanted = args.variants.split(",")
    unknown = sorted(set(wanted) - set(VARIANTS))
    if unknown:
        p.error(f"--variants: unknown {unknown} (known: {', '.join(VARIANTS)})")
    results = run_all(args, wanted)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(markdown(results))


if __name__ == "__main__":
    main()
