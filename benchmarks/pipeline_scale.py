"""Pipeline scale: the whole `llmrec run` (build-features, train, evaluate) on the synthetic
generator at several sizes, each stage's wall seconds and peak RSS, in one run.

    python benchmarks/pipeline_scale.py --interactions 100000,1000000 --out pipeline-scale.json
    python benchmarks/pipeline_scale.py --interactions 100000,1000000 --shape lognormal --out ...
    python benchmarks/pipeline_scale.py --interactions 1000000 --shape lognormal --encoder minilm \
        --user-vectors items_mean --out benchmarks/results/pipeline-scale-minilm.json

Per size: users = interactions / 30 (30 interactions per user on average, `--shape poisson` or
heavy-tailed `lognormal`), items = users * 0.6 (ML-1M's ratio), one training epoch, Feast's
SQLite online store, and `--encoder tiny` (default: a random BERT of 2 layers, 32 wide, with the
MiniLM tokenizer, so that the data path is what is measured) or `minilm` (the real encoder);
`--user-vectors` text (default) or items_mean. Each stage is its own `llmrec <stage>` process;
its peak memory is that process's plus every Ray worker's, sampled every 0.5 s, as RSS and as
PSS (shared pages counted once, divided among the processes that share them).

JSON: {"sizes": {n: {"stages": {stage: {"wall_s", "peak_rss_mb", "peak_pss_mb", "s_per_1k_interactions"}}}},
"ratios": {stage: cost per interaction at the largest size / at the smallest}}.
Targets: every ratio <= 1.5 (no worse than linear), peak RSS at 1M under 6 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("build-features", "train", "evaluate")


def tiny_encoder(path: Path) -> str:
    import torch
    from transformers import AutoModel, AutoTokenizer, BertConfig

    from llmrec_ray.text_model import resolve_model

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=512)
    AutoModel.from_config(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(resolve_model("minilm")[0]).save_pretrained(path)
    return str(path)


def run_stage(cmd: list[str], log: Path) -> dict:
    """Run one CLI stage; wall seconds and peak RSS of it and of the Ray workers."""
    import psutil

    start = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
        root, peak, peak_pss = psutil.Process(proc.pid), 0, 0
        while proc.poll() is None:
            total = 0
            try:
                family = [root] + root.children(recursive=True)
            except psutil.Error:
                family = []
            seen = {p.pid for p in family}
            family += [p for p in psutil.process_iter(["name"])
                       if (p.info["name"] or "").startswith("ray::") and p.pid not in seen]
            pss = 0
            for p in family:
                try:
                    info = p.memory_full_info()
                    total += info.rss
                    pss += info.pss
                except psutil.Error:
                    pass
            peak = max(peak, total)
            peak_pss = max(peak_pss, pss)
            time.sleep(0.5)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed (rc {proc.returncode}); log: {log}\n"
                         + log.read_text()[-3000:])
    return {"wall_s": wall, "peak_rss_mb": peak / 2**20, "peak_pss_mb": peak_pss / 2**20}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--interactions", default="100000,1000000", help="comma-separated sizes")
    p.add_argument("--shape", default="poisson", choices=["poisson", "lognormal"])
    p.add_argument("--out", required=True)
    p.add_argument("--keep", help="keep run directories here (default: a temp dir)")
    p.add_argument("--encoder", default="tiny", choices=["tiny", "minilm"])
    p.add_argument("--user-vectors", default="text", choices=["text", "items_mean"])
    args = p.parse_args()
    sizes = [int(s) for s in args.interactions.split(",")]
    results = {"shape": args.shape, "encoder": args.encoder, "user_vectors": args.user_vectors,
               "sizes": {}, "machine": {"cpus": os.cpu_count()}}
    llmrec = str(Path(sys.executable).with_name("llmrec"))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.keep or tmp)
        model = tiny_encoder(work / "tiny-bert") if args.encoder == "tiny" else "minilm"
        for n in sizes:
            users = max(10, n // 30)
            items = max(20, int(users * 0.6))
            run = work / f"run-{n}"
            repo = run / "feature_repo"
            repo.mkdir(parents=True, exist_ok=True)
            for name in ("feature_store.yaml", "features.py"):
                (repo / name).write_bytes((ROOT / "feature_repo" / name).read_bytes())
            overrides = [
                f"data.synthetic.n_users={users}", f"data.synthetic.n_items={items}",
                "data.synthetic.interactions_per_user=30", f"data.synthetic.history_shape={args.shape}",
                f"encode.model={model}", "encode.dtype=float32", "encode.max_length=128",
                f"serialize.user_vectors={args.user_vectors}",
                f"featurestore.repo_path={repo}", f"output_dir={run / 'runs'}", "train.epochs=1",
                "train.model=hybrid", "train.export=false"]
            cmd_tail = ["--config", str(ROOT / "configs" / "synthetic.yaml")] + [
                a for o in overrides for a in ("--set", o)]
            stages = {}
            for stage in STAGES:
                print(f"[{n:,}] {stage} ...", file=sys.stderr, flush=True)
                out = run_stage([llmrec, stage] + cmd_tail, run / f"{stage}.log")
                out["s_per_1k_interactions"] = out["wall_s"] / n * 1000
                stages[stage] = out
                print(f"[{n:,}] {stage}: {out['wall_s']:.1f}s, {out['peak_rss_mb']:.0f} MB",
                      file=sys.stderr, flush=True)
            results["sizes"][str(n)] = {"users": users, "items": items, "stages": stages}
            Path(args.out).write_text(json.dumps(results, indent=2))
    lo, hi = str(min(sizes)), str(max(sizes))
    if lo != hi:
        results["ratios"] = {s: results["sizes"][hi]["stages"][s]["s_per_1k_interactions"]
                             / results["sizes"][lo]["stages"][s]["s_per_1k_interactions"] for s in STAGES}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(json.dumps(results.get("ratios", {}), indent=2))


if __name__ == "__main__":
    main()
