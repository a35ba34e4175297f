"""Mean and spread over seeds: train and evaluate one config at each seed, in one run.

    python benchmarks/seeds.py --config configs/ml-100k.yaml --seeds 0 1 2 \
        --out benchmarks/results/ml-100k-seeds.json [--set KEY=VALUE ...]

Builds the features once (`llmrec build-features`; the embedding cache makes a rebuild cheap),
then for each seed runs `llmrec train` and `llmrec evaluate --out <stem>-seed<s>.json` with
`seed=<s>` (the training seed and the baselines' seeds; the data and split do not depend on it:
the split is by time). Writes `<out>` (JSON: per slice, model and metric the values of every
seed, their mean, sample standard deviation and range) and `<stem>.md` (the mean +- std table of
Recall and NDCG at every K).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from variants import table


def aggregate(per_seed: dict[int, dict]) -> dict:
    """{slice: {model: {metric: {"values", "mean", "std", "min", "max"}}}} over the seeds' results
    (a model or metric missing from a seed's results is an error: the runs must be comparable)."""
    seeds = sorted(per_seed)
    first = per_seed[seeds[0]]
    out: dict = {}
    for slice_name, models in first.items():
        out[slice_name] = {}
        for model, metrics in models.items():
            out[slice_name][model] = {}
            for metric in metrics:
                try:
                    values = [float(per_seed[s][slice_name][model][metric]) for s in seeds]
                except KeyError as e:
                    raise KeyError(f"seed results differ: {slice_name}/{model}/{metric} missing "
                                   f"from a seed ({e})") from None
                out[slice_name][model][metric] = {
                    "values": values, "mean": statistics.fmean(values),
                    "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                    "min": min(values), "max": max(values)}
    return out


def markdown(agg: dict, ks: list[int], seeds: list[int]) -> str:
    """Per slice, the mean +- std over the seeds of Recall and NDCG at every K, one row per model."""
    columns = {"model": "{model}"}
    for k in ks:
        for name, label in (("recall", "Recall"), ("ndcg", "NDCG")):
            columns[f"{label}@{k}"] = lambda m, key=f"{name}@{k}": f"{m[key]['mean']:.4f} +- {m[key]['std']:.4f}"
    lines = []
    for slice_name, models in agg.items():
        users = int(next(iter(models.values()))["users"]["mean"])
        lines += [f"### {slice_name} ({users} users; mean +- std over seeds {seeds})", "",
                  *table(columns, ({"model": model, **m} for model, m in models.items())), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", required=True, help="JSON path; per-seed metrics go beside it")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--skip-build", action="store_true", help="the features are built already")
    p.add_argument("-v", "--verbose", action="store_true", help="library logs on the terminal too")
    args = p.parse_args(argv)

    from llmrec_ray import console, pipeline
    from llmrec_ray.config import load_config

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    cfg = load_config(args.config, args.overrides)
    # as `llmrec` does: Ray's, Feast's and transformers' output to the run's log, not the terminal
    log = console.setup(cfg.run_dir / "logs", verbose=args.verbose)
    print(f"logs and warnings: {log} (-v shows them here)", flush=True)
    if not args.skip_build:
        s = pipeline.build_stage(cfg)
        print(f"[build-features] {s['seconds']}s", flush=True)
    per_seed, runs = {}, {}
    for seed in args.seeds:
        cfg = load_config(args.config, [*args.overrides, f"seed={seed}"])
        t = pipeline.train_stage(cfg)
        e = pipeline.evaluate_stage(cfg, str(out.with_name(f"{out.stem}-seed{seed}.json")))
        per_seed[seed] = e["metrics"]
        runs[seed] = {"best_epoch": t["best_epoch"], "epochs_run": t["epochs_run"],
                      "train_s": t["seconds"], "evaluate_s": e["seconds"], "tuning": e["tuning"],
                      "metrics_file": e["path"]}
        print(f"[seed {seed}] model of epoch {t['best_epoch']}, train {t['seconds']}s, "
              f"evaluate {e['seconds']}s", flush=True)
    agg = aggregate(per_seed)
    result = {"config": args.config, "overrides": args.overrides, "seeds": args.seeds,
              "metrics": agg, "runs": runs, "seconds": round(time.perf_counter() - start, 1)}
    out.write_text(json.dumps(result, indent=2) + "\n")
    md = markdown(agg, cfg.evaluate.ks, args.seeds)
    out.with_suffix(".md").write_text(md + "\n")
    print(md)
    print(f"written {out} and {out.with_suffix('.md')} in {result['seconds']}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
