"""Training throughput: one epoch of the hybrid model fed through Ray Train from the retrieval's
Ray Dataset, against a plain torch loop over the same tensors in one process, in one run.

    python benchmarks/train_throughput.py --rows 1000000 --out train-throughput.json

Data: the feature-store benchmark's repo (`--users` x `--snapshots` 384-d user snapshots, user
statistics, `--items` items with 384-d vectors) and `--rows` interactions (user, item, time).
Variants, each in its own process:

- `ray_train`: `train_data.training_dataset` as `llmrec train` uses it (get_historical_features
  through the project's store -> lazy Ray Dataset of rows carrying each embedding's position in
  its view; the worker holds the two views) -> `TorchTrainer` running the project's
  `train_loop_per_worker` for one epoch on 1 worker (1 CPU; the other feeds the data), no
  validation. Wall = `trainer.fit()`, so retrieval, worker start and the checkpoint are in it.
- `ray_train_values`: the same with the vectors in the rows (`by_position=False`).
- `plain`: the retrieval with vectors collected into tensors first (its time reported apart,
  `collect_s`), then one epoch of the same model, batch size and optimizer in a plain loop
  (torch on both cores).

JSON: {"variants": {name: {"rows", "wall_s", "rows_per_s", "peak_pss_mb", "peak_rss_mb"}},
"ratios": {...}}; memory as in benchmarks/variants.py (the variant's process and its descendants).
Target: ray_train rows/s >= 0.8x plain's.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from featurestore import DAYS, T0, build_repo
from variants import child_main, ratios, run_child


def interactions(args):
    import pyarrow as pa

    from llmrec_ray.schemas import TIMESTAMP

    rng = np.random.default_rng(args.seed + 3)
    secs = int(T0.timestamp()) + rng.integers(0, DAYS * 86_400, args.rows)
    return pa.table({"user_id": rng.integers(0, args.users, args.rows).astype(str),
                     "item_id": np.char.add("i", rng.integers(0, args.items, args.rows).astype(str)),
                     "event_timestamp": pa.array(secs * 1_000_000, pa.int64()).cast(TIMESTAMP)})


def setup(repo: Path, args, by_position: bool = True):
    """The training dataset and the model/loop config, as `train.fit` builds them."""
    from llmrec_ray.config import TrainConfig
    from llmrec_ray.featurestore import FeatureRepo
    from llmrec_ray.model_inputs import USER_EXTRA_DIM
    from llmrec_ray.train_data import entity_rows, training_dataset

    table = interactions(args)
    item_ids = [f"i{k}" for k in range(args.items)]
    users = sorted(set(table.column("user_id").to_pylist()))
    item_index = {i: k for k, i in enumerate(item_ids)}
    user_index = {u: k for k, u in enumerate(users)}
    t = TrainConfig(model="hybrid", batch_size=args.batch_size)
    ds, tables = training_dataset(FeatureRepo(repo), entity_rows(table, item_index, user_index), by_position)
    model = dict(user_dim=args.dim, item_dim=args.dim, hidden_dim=t.hidden_dim, out_dim=t.out_dim,
                 dropout=t.dropout, temperature=t.temperature, user_extra_dim=USER_EXTRA_DIM,
                 n_users=len(users), n_items=len(item_ids), id_dim=t.id_dim, id_dropout=t.id_dropout,
                 id_mode=t.id_mode, user_id_dropout=t.user_id_dropout, text_aux=t.text_aux)
    loop = {"seed": 0, "epochs": 1, "kind": "hybrid", "batch_size": t.batch_size, "lr": t.lr,
            "weight_decay": t.weight_decay, "fingerprint": "bench", "model": model, "valid": None,
            "metric": t.early_stopping_metric, "patience": 0, "tables": tables}
    return ds, loop


def run_ray_train(args, by_position: bool = True) -> dict:
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from llmrec_ray.train import torch_threads
    from llmrec_ray.train_data import ROW_BYTES, keep_rows
    from llmrec_ray.train_worker import train_loop_per_worker

    ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as storage:
        ds, loop = setup(Path(args.repo), args, by_position)
        start = time.perf_counter()
        # as `llmrec train` does (train.materialize auto): rows kept when they fit, then threads
        kept = keep_rows("auto", args.rows, ray.cluster_resources().get("object_store_memory", 0),
                         ROW_BYTES if by_position else ROW_BYTES + 4 * 2 * args.dim)
        if kept:
            ds = ds.materialize()
        loop["torch_threads"] = torch_threads(kept, False, 1)
        trainer = TorchTrainer(train_loop_per_worker, train_loop_config=loop, datasets={"train": ds},
                               scaling_config=ScalingConfig(num_workers=1, use_gpu=False,
                                                            resources_per_worker={"CPU": 1}),
                               run_config=RunConfig(name="bench", storage_path=storage))
        result = trainer.fit()
        wall = time.perf_counter() - start
    ray.shutdown()
    if result.error:
        raise result.error
    batches = int(result.metrics["batches"])
    return {"wall_s": wall, "rows": args.rows, "batches": batches, "loss": float(result.metrics["loss"]),
            "materialized": kept, "torch_threads": loop["torch_threads"]}


def run_plain(args) -> dict:
    import ray
    import torch

    from llmrec_ray.models.two_tower import TwoTower

    ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    ds, loop = setup(Path(args.repo), args, by_position=False)
    start = time.perf_counter()
    parts: dict[str, list] = {}
    for batch in ds.iter_batches(batch_format="numpy", batch_size=None):
        for k, v in batch.items():
            parts.setdefault(k, []).append(v)
    tensors = {k: torch.from_numpy(np.concatenate(v)) for k, v in parts.items()}
    collect = time.perf_counter() - start
    ray.shutdown()
    torch.manual_seed(0)
    model = TwoTower(**loop["model"])
    opt = torch.optim.AdamW(model.parameters(), lr=loop["lr"], weight_decay=loop["weight_decay"])
    n, bs = len(tensors["item_idx"]), loop["batch_size"]
    start = time.perf_counter()
    order = torch.randperm(n)
    total, batches = 0.0, 0
    model.train()
    for i in range(0, n - bs + 1, bs):  # drop_last, as the Ray Train loop
        idx = order[i:i + bs]
        loss = model({k: v[idx] for k, v in tensors.items()})
        opt.zero_grad()
        loss.backward()
        opt.step()
        total += float(loss.detach())
        batches += 1
    wall = time.perf_counter() - start
    return {"wall_s": wall, "rows": n, "batches": batches, "loss": total / max(batches, 1),
            "collect_s": collect}


RUNNERS = {"ray_train": run_ray_train, "plain": run_plain,
           "ray_train_values": lambda args: run_ray_train(args, by_position=False)}
CHILD_KEYS = ("rows", "users", "snapshots", "items", "dim", "batch_size", "cpus", "seed")
RATIOS = {f"{k}_over_plain_rows_per_s": (k, "plain", "rows_per_s") for k in ("ray_train", "ray_train_values")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="JSON output file")
    p.add_argument("--rows", type=int, default=1_000_000, help="training rows (interactions)")
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--snapshots", type=int, default=20)
    p.add_argument("--items", type=int, default=3_700)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--batch-size", type=int, default=128, dest="batch_size",
                   help="rows per batch (the default train.batch_size)")
    p.add_argument("--variants", default="plain,ray_train,ray_train_values")
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
    results = {"variants": {}, "rows": args.rows, "users": args.users, "snapshots": args.snapshots,
               "items": args.items, "dim": args.dim, "batch_size": args.batch_size,
               "machine": {"cpus": os.cpu_count()}}
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "feature_repo"
        build_repo(repo, args.users, args.snapshots, args.dim, args.seed, items=args.items)
        for name in args.variants.split(","):
            results["variants"][name] = run_child(__file__, name, args, CHILD_KEYS, repo=repo)
    if "ray_train" in results["variants"] and "plain" in results["variants"]:
        results["ratios"] = ratios(results["variants"], RATIOS)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(json.dumps(results.get("ratios", {}), indent=2))


if __name__ == "__main__":
    main()
