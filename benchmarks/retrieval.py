"""Training-set retrieval benchmark: the project's `get_historical_features` against a plain
in-process as-of join and against Feast's file store, side by side in one run.

    python benchmarks/retrieval.py --rows 1000000 --out retrieval.json
    python benchmarks/retrieval.py --rows 10000000 --variants project --out retrieval-10m.json
    python benchmarks/retrieval.py --rows 1000000 --shape lognormal --out retrieval-lognormal.json

Data (synthetic, seeded; the feature-store benchmark's): `--users` users with `--snapshots`
user-history snapshots each (`--shape lognormal`: heavy-tailed, a few users with thousands, same
total), 384-d float32 vectors, written through `FeatureRepo.write_view`; `--rows` entity rows
(user, time) over the same period (lognormal: users drawn in proportion to their snapshots).
Variants, each in its own process so its peak memory (benchmarks/variants.py) is its own:

- `reference_asof`: `pandas.merge_asof(by=user_id, direction=backward)` of the entity rows with
  the view's (user_id, event_timestamp, embedding), all in one process (skipped above 2M rows:
  its output holds every vector as a Python object);
- `project`: `FeatureStore.get_historical_features` through the project's offline store ->
  `to_ray_dataset()` consumed to the end with `iter_batches` (rows, vector shape and presence
  checked); timed on a fresh Ray (`wall_s`), then once more in the same session (`warm_wall_s`,
  not used for the ratios);
- `feast_file`: Feast's own file (dask) store, `to_df()` (skipped above 1M rows).

JSON: {"variants": {name: {"rows", "wall_s", "rows_per_s", "peak_pss_mb", "peak_rss_mb"}},
"ratios": {...}}. Memory is that of the variant's process and all its descendants (with Ray: the
GCS, the raylet and its object store, every worker): `peak_pss_mb` counts a shared page once
(split among the processes mapping it), `peak_rss_mb` once per process (object-store blocks that
several workers map are counted several times). Targets: project rows/s >= 0.5x reference_asof's
and peak memory <= 2x at 1M rows; at 10M rows the project finishes under 8 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from featurestore import asof_join, build_repo, entity_rows, snapshot_counts
from variants import by_name, child_main, ratios, run_child, table

VIEW = "user_history_embedding"
SKIP_ABOVE = {"reference_asof": 2_000_000, "feast_file": 1_000_000}


def entity_table(args):
    weights = None
    if args.shape == "lognormal":
        weights = snapshot_counts(args.users, args.snapshots, args.shape, args.seed).astype(np.float64)
    return entity_rows(args.rows, args.users, args.seed, weights)


def run_project(args) -> dict:
    import pyarrow as pa
    import ray

    from llmrec_ray.featurestore import FeatureRepo

    ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    entities = pa.Table.from_pandas(entity_table(args), preserve_index=False)
    r = FeatureRepo(Path(args.repo))
    r.store  # the registry is read before the clock starts, as in the other variants

    def consume() -> tuple[float, int, int, int | None]:
        start = time.perf_counter()
        ds = r.retrieval(entities, [f"{VIEW}:embedding", f"{VIEW}:n_history"]).to_ray_dataset()
        rows = present = 0
        dim = None
        for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None, prefetch_batches=1):
            col = batch.column(f"{VIEW}__embedding")
            rows += batch.num_rows
            present += batch.num_rows - col.null_count
            dim = col.type.list_size
        return time.perf_counter() - start, rows, present, dim

    # the first retrieval on a fresh Ray pays Ray Data's start-up (its stats and autoscaling
    # actors, worker imports): that is the measured one; a second one shows the steady cost
    wall, rows, present, dim = consume()
    warm, *_ = consume()
    ray.shutdown()
    assert rows == args.rows and present == rows and dim == args.dim, (rows, present, dim)
    on_ray = args.rows >= r.store.config.offline_store.ray_min_rows
    return {"wall_s": wall, "rows": rows, "warm_wall_s": warm, "path": "ray" if on_ray else "in-process"}


def run_feast_file(args) -> dict:
    from llmrec_ray.featurestore import FeatureRepo

    df = entity_table(args)
    store = FeatureRepo(Path(args.repo), offline_store="file").store
    start = time.perf_counter()
    out = store.get_historical_features(entity_df=df, features=[f"{VIEW}:embedding"],
                                        full_feature_names=True).to_df()
    wall = time.perf_counter() - start
    return {"wall_s": wall, "rows": len(out)}


RUNNERS = {"reference_asof": lambda args: asof_join(Path(args.repo), entity_table(args)),
           "project": run_project, "feast_file": run_feast_file}
CHILD_KEYS = ("rows", "users", "snapshots", "shape", "dim", "cpus", "seed")
RATIOS = {"project_over_reference_rows_per_s": ("project", "reference_asof", "rows_per_s"),
          "project_over_reference_peak_pss": ("project", "reference_asof", "peak_pss_mb"),
          "project_over_reference_peak_rss": ("project", "reference_asof", "peak_rss_mb"),
          "project_over_feast_file_rows_per_s": ("project", "feast_file", "rows_per_s")}
COLUMNS = {"variant": "{variant}", "rows": "{rows:,}", "wall s": "{wall_s:.1f}", "rows/s": "{rows_per_s:,.0f}",
           "peak PSS MB": "{peak_pss_mb:.0f}", "peak RSS-sum MB": "{peak_rss_mb:.0f}"}


def markdown(results: dict) -> str:
    rows = table(COLUMNS, by_name(results["variants"]))
    rows += [f"\n{k}: {v:.2f}" for k, v in results.get("ratios", {}).items()]
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="JSON output file")
    p.add_argument("--rows", type=int, default=1_000_000, help="entity rows to retrieve")
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--snapshots", type=int, default=20, help="user-history snapshots per user (mean)")
    p.add_argument("--shape", default="uniform", choices=["uniform", "lognormal"])
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--variants", default="reference_asof,project,feast_file")
    p.add_argument("--cpus", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variant", help=argparse.SUPPRESS)
    p.add_argument("--repo", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.variant:  # child process
        child_main(RUNNERS, args)
        return
    if not args.out:
        p.error("--out is required")
    results = {"variants": {}, "skipped": {}, "rows": args.rows, "users": args.users,
               "snapshots": args.snapshots, "shape": args.shape, "dim": args.dim,
               "machine": {"cpus": os.cpu_count()}}
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "feature_repo"
        start = time.perf_counter()
        build_repo(repo, args.users, args.snapshots, args.dim, args.seed, args.shape)
        counts = snapshot_counts(args.users, args.snapshots, args.shape, args.seed)
        results["snapshot_rows"], results["max_snapshots_per_user"] = int(counts.sum()), int(counts.max())
        print(f"[setup] {counts.sum():,} snapshot rows (max {counts.max():,} per user) in "
              f"{time.perf_counter() - start:.1f}s", file=sys.stderr, flush=True)
        for name in args.variants.split(","):
            if args.rows > SKIP_ABOVE.get(name, float("inf")):
                results["skipped"][name] = f"above {SKIP_ABOVE[name]:,} rows"
                print(f"[{name}] skipped above {SKIP_ABOVE[name]:,} rows", file=sys.stderr, flush=True)
                continue
            results["variants"][name] = run_child(__file__, name, args, CHILD_KEYS, repo=repo)
    results["ratios"] = ratios(results["variants"], RATIOS)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(markdown(results))


if __name__ == "__main__":
    main()
