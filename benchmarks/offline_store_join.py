"""Time Feast's point-in-time join for the training rows of a built run, per offline store.

    llmrec run --config configs/ml-100k.yaml          # builds feature_repo and runs/ml-100k
    python benchmarks/offline_store_join.py --run runs/ml-100k --store file --rows 80000
    python benchmarks/offline_store_join.py --run runs/ml-100k --store ray --rows 5000

Prints one JSON line: store, rows asked, rows returned, seconds. Used for the choice of the file
store in configs/ml-100k.yaml (Feast 0.67's Ray store joins multi-entity views row by row).
"""

from __future__ import annotations

import argparse
import json
import time

import pyarrow.parquet as pq
import ray

from llmrec_ray.featurestore import FeatureRepo
from llmrec_ray.split import user_temporal_split
from llmrec_ray.train import entity_frame


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="run directory (holds dataset/)")
    p.add_argument("--repo", default="feature_repo")
    p.add_argument("--store", choices=["ray", "file"], required=True)
    p.add_argument("--rows", type=int, default=80_000)
    args = p.parse_args()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    inter = pq.read_table(f"{args.run}/dataset/interactions.parquet")
    items = sorted(pq.read_table(f"{args.run}/dataset/items.parquet").column("item_id").to_pylist())
    train, _, _ = user_temporal_split(inter, 0.2)
    df = entity_frame(train, {i: k for k, i in enumerate(items)}).iloc[:args.rows]
    repo = FeatureRepo(args.repo, args.store)
    start = time.perf_counter()
    n = repo.historical(df, "training").count()
    print(json.dumps({"store": args.store, "rows": len(df), "returned": n,
                      "seconds": round(time.perf_counter() - start, 1)}))


if __name__ == "__main__":
    main()
