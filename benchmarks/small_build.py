"""Small-build costs: the fixed costs a tiny feature build pays, side by side in one run.

    python benchmarks/small_build.py --out benchmarks/results/small-build-cpu.json
    python benchmarks/small_build.py --out /tmp/small-cluster.json --cluster   # 3 simulated nodes

One small synthetic build (30 users, 40 items, 10 interactions a user: the build of
tests/small_builds.py) is made once, materialized through Feast's file store, on a local Ray of 2
CPUs or (`--cluster`) on a `ray.cluster_utils.Cluster` of a 1-CPU head and two 2-CPU workers. Then,
on that Ray, alternating `--repeats` times:

- **statistics**: `user_stats` + `item_stats` of the build's interactions as Ray Data groupbys
  (`ray_min_rows=0`) and in the driver (the default below 1M rows); the tables must be equal;
- **materialize**: `FeatureRepo.materialize` of the five views (then the count check) through the
  Ray offline store and through the file store;
- **batch dependence**: the build's distinct texts encoded all together and a 64-text subset alone
  (so the subset's texts sit in other batches), in `encode.dtype` auto and float32: the largest
  absolute difference of a text's vector between the two.

The first Ray-store materialization of the run also starts Ray's worker processes: the JSON keeps
every run, and the table shows the first and the median of the others.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np

from variants import ROOT, table


def small_config(tmp: Path):
    from llmrec_ray.config import load_config

    repo = tmp / "repo"
    repo.mkdir(parents=True)
    for f in ("feature_store.yaml", "features.py"):
        shutil.copy(ROOT / "feature_repo" / f, repo / f)
    return load_config(None, [
        "name=small", f"output_dir={tmp / 'runs'}", f"featurestore.repo_path={repo}",
        "data.synthetic.n_users=30", "data.synthetic.n_items=40",
        "data.synthetic.interactions_per_user=10", "encode.batch_size=8", "encode.cpus_per_actor=1",
        "encode.device=cpu", "encode.cache=false"])


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def measure_stats(cfg, repo) -> dict:
    from llmrec_ray.build import load_saved_dataset
    from llmrec_ray.views import ITEM_TEXT_VIEW, USER_HISTORY_VIEW
    from llmrec_ray.stats import DAY_US, item_stats, user_stats

    inter = load_saved_dataset(cfg.run_dir)["interactions"]
    snaps, starts = repo.read_view(USER_HISTORY_VIEW), repo.read_view(ITEM_TEXT_VIEW)

    def both(min_rows):
        return user_stats(inter, snaps, min_rows), item_stats(inter, starts, DAY_US, min_rows)

    s_ray, (u_ray, i_ray) = timed(lambda: both(0))
    s_here, (u_here, i_here) = timed(lambda: both(10**9))
    assert u_ray.equals(u_here) and i_ray.equals(i_here), "the two paths disagree"
    return {"interactions": inter.num_rows, "ray_s": round(s_ray, 3), "driver_s": round(s_here, 4)}


def measure_materialize(cfg, store: str) -> dict:
    from llmrec_ray.featurestore import FeatureRepo

    repo = FeatureRepo(cfg.featurestore.repo_path, offline_store=store)
    start, end = (datetime.fromisoformat(t) for t in repo.read_manifest()["materialized"])
    seconds, online = timed(lambda: repo.materialize(start, end))
    return {"store": store, "seconds": round(seconds, 2), "views": len(online), "online": online}


def measure_batch_dependence(cfg) -> dict:
    import pyarrow as pa

    from llmrec_ray.build import load_saved_dataset
    from llmrec_ray import serialize
    from llmrec_ray.encode import encode_texts
    from llmrec_ray.text_model import cpu_has_bf16, encoder_key, text_hashes

    ds = load_saved_dataset(cfg.run_dir)
    items, users = serialize.serialize_dataset(ds["items"], ds["interactions"], cfg.serialize, 0)
    texts = sorted(set(items.column("text").to_pylist()) | set(users.column("text").to_pylist()))
    out = {"texts": len(texts), "cpu_has_bf16": cpu_has_bf16()}
    for dtype in ("auto", "float32"):
        enc = cfg.encode.model_copy(update={"dtype": dtype})
        rows = pa.table({"text": texts, "text_hash": text_hashes(pa.array(texts), encoder_key(enc))})
        full, _ = encode_texts(rows, enc)
        sub, _ = encode_texts(rows.take(np.arange(0, len(texts), max(1, len(texts) // 64))[:64]), enc)
        want = dict(zip(full.column("text_hash").to_pylist(), full.column("embedding").to_pylist()))
        diff = max(float(np.abs(np.asarray(v) - np.asarray(want[h])).max())
                   for h, v in zip(sub.column("text_hash").to_pylist(), sub.column("embedding").to_pylist()))
        out[dtype] = {"max_abs_diff": diff, "subset": sub.num_rows}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="JSON output file")
    p.add_argument("--cluster", action="store_true", help="a simulated 3-node cluster, not a local Ray")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()

    import ray

    from llmrec_ray import pipeline
    from llmrec_ray.featurestore import FeatureRepo

    tmp = Path(tempfile.mkdtemp(prefix="small-build-"))
    cluster, node_dirs = None, []
    try:
        if args.cluster:
            from ray.cluster_utils import Cluster

            # each worker node its own temp dir, as on separate machines (see tests/test_cluster.py)
            node_dirs = [tempfile.mkdtemp(prefix="rn", dir="/tmp") for _ in range(2)]
            cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
            for d in node_dirs:
                cluster.add_node(num_cpus=2, temp_dir=d)
            cluster.wait_for_nodes()
            ray.init(address=cluster.address)
        else:
            ray.init(address="local", num_cpus=2, include_dashboard=False)
        cfg = small_config(tmp)
        build_s, build = timed(lambda: pipeline.build_stage(cfg))
        repo = FeatureRepo(cfg.featurestore.repo_path)
        result = {"cluster": "3 simulated nodes (1 + 2 x 2 CPUs)" if args.cluster else "local Ray, 2 CPUs",
                  "build_s": round(build_s, 1), "views": build["views"], "stats": [], "materialize": []}
        for _ in range(args.repeats):
            result["stats"].append(measure_stats(cfg, repo))
            for store in ("ray", "file"):
                result["materialize"].append(measure_materialize(cfg, store))
                print(json.dumps(result["materialize"][-1]), flush=True)
        result["batch_dependence"] = measure_batch_dependence(cfg)
    finally:
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
        for d in [*node_dirs, tmp]:
            shutil.rmtree(d, ignore_errors=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    render(result)


def render(r: dict) -> None:
    def first_and_rest(values):
        rest = values[1:]
        return f"{values[0]:.2f} / {statistics.median(rest):.2f}" if rest else f"{values[0]:.2f}"

    mat = {s: [m["seconds"] for m in r["materialize"] if m["store"] == s] for s in ("ray", "file")}
    rows = [("statistics, Ray Data groupbys", [s["ray_s"] for s in r["stats"]]),
            ("statistics, in the driver", [s["driver_s"] for s in r["stats"]]),
            ("materialize 5 views, Ray offline store", mat["ray"]),
            ("materialize 5 views, file offline store", mat["file"])]
    print(f"\n{r['cluster']}; build {r['build_s']} s; views {r['views']}\n")
    print("\n".join(table({"what": "{what}", "first run s / median of the rest": "{times}"},
                          [{"what": what, "times": first_and_rest(v)} for what, v in rows])))
    b = r["batch_dependence"]
    print(f"\nbatch dependence ({b['texts']} texts, cpu_has_bf16={b['cpu_has_bf16']}): max abs diff "
          f"auto {b['auto']['max_abs_diff']:.2e}, float32 {b['float32']['max_abs_diff']:.2e}")


if __name__ == "__main__":
    sys.exit(main())
