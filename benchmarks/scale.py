"""Scale benchmark: encode throughput with 1, 2 and 4 encoder actors on a simulated multi-node cluster.

    python benchmarks/scale.py --out benchmarks/results/scale-cpu.json --limit 3000 --repeats 2
    python benchmarks/scale.py --out /tmp/scale.json --limit 1024    # quick: ~2 min on an idle 2-core machine
    python benchmarks/scale.py --out /tmp/scale.json --data synthetic
    python benchmarks/scale.py --render benchmarks/results/scale-cpu.json    # the table again

One `ray.cluster_utils.Cluster` (a head node and two worker nodes, each a raylet of its own with its
own logical CPUs and object store) serves all variants, so every variant sees the same cluster;
it is shut down at the end whatever happens (try/finally). The driver connects with
`ray.init(address=cluster.address)`, runs an untimed 1-actor warm-up on a few texts (the cluster's
first Ray Data run and first worker processes), then encodes the same texts with
`llmrec_ray.encode.encode_texts` (`encode.num_actors` = 1, 2, 4, no embedding cache), `--repeats`
rounds in alternating order (1, 2, 4, then 4, 2, 1, ...); a variant's times are its medians.
Texts: what `llmrec build-features` encodes for configs/ml-100k.yaml (item texts and user
snapshots; `--data synthetic`: the synthetic dataset); `--limit N`: a fixed random sample of them.
Recorded per variant: the nodes the encoder actors landed on (from `ray.util.state.list_actors`),
wall time of `encode_texts` (actor start and model load included, as in a real build), tokens/s,
the ratio to 1 actor, CPU seconds of the whole simulated cluster and tokens per CPU second (which,
unlike wall time, hardly depend on other work on the machine), peak RSS-sum of the driver and all
its descendants (the simulated nodes are its children: their raylets, GCS and workers; both
measured by `variants.PeakMemory` every 0.2 s), the machine's load average, and the largest
absolute difference of its vectors from the first 1-actor run.

The simulated nodes are processes on *this* machine: their logical CPUs (default head 1 + 2 x 2 = 5)
may exceed the physical cores, so on a small machine more actors share the same cores and the
ratio shows the overhead of the actor pool (model replicas, cross-node object transfers, thread
contention); on a real cluster each node brings its own cores and the ratio shows the scaling.

Threads per actor (`--threads`, the actor's `encode.cpus_per_actor`, which sets both its logical CPU
reservation and its torch threads): `share` (default) gives each actor physical_cores // actors
threads (at least 1), so 1 actor uses every core of the machine (it is not starved to make more
actors look good) and n actors share those cores (4 actors: 1 thread each, 4 threads on 2
cores, as a thread cannot be split). A number fixes the threads of every actor (e.g. 2: what a
node of 2 cores would give each actor on a real cluster; here 4 actors then run 8 threads on 2
cores).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from variants import ROOT, PeakMemory, ratios, table

ACTORS = (1, 2, 4)


def physical_cores() -> int:
    try:
        import psutil

        return psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:
        return os.cpu_count() or 1


def load_texts(data: str, ml100k: str, limit: int | None) -> list[str]:
    """The distinct texts `llmrec build-features` encodes (item texts and user snapshots), for
    configs/ml-100k.yaml or the synthetic dataset; with `limit`, a fixed random sample (seed 0) of
    them, so short item texts and long user snapshots keep their share."""
    from llmrec_ray import serialize
    from llmrec_ray.config import load_config
    from llmrec_ray.datasets import load_dataset

    if data == "ml-100k":
        cfg = load_config(ROOT / "configs" / "ml-100k.yaml", [f"data.path={ml100k}"])
    else:
        cfg = load_config(ROOT / "configs" / "synthetic.yaml", [])
    ds = load_dataset(cfg.data)
    items, users = serialize.serialize_dataset(ds.items, ds.interactions, cfg.serialize, 0)
    texts = list(dict.fromkeys(items.column("text").to_pylist() + users.column("text").to_pylist()))
    if limit and limit < len(texts):
        keep = np.sort(np.random.default_rng(0).choice(len(texts), limit, replace=False))
        texts = [texts[i] for i in keep]
    return texts


def start_cluster(head_cpus: int, worker_cpus: int, workers: int, store_mb: int):
    """A head node and `workers` worker nodes, each a raylet with its own logical CPUs."""
    from ray.cluster_utils import Cluster

    store = store_mb * 2**20
    # the dashboard (head only) serves the state API that `list_actors` reads
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": head_cpus, "object_store_memory": store, "include_dashboard": True,
        "dashboard_port": 0})
    try:
        for _ in range(workers):
            cluster.add_node(num_cpus=worker_cpus, object_store_memory=store)
        cluster.wait_for_nodes()
    except BaseException:
        cluster.shutdown()
        raise
    return cluster


def encoder_actors(dashboard: str) -> dict[str, str]:
    """actor id -> node id of every encoder actor the cluster has seen (alive or dead), from the
    state API of this cluster's dashboard (other Ray instances may run on the same machine)."""
    from ray.util.state import list_actors

    actors = list_actors(address=dashboard, detail=True, limit=10_000, raise_on_missing_output=False)
    return {a.actor_id: a.node_id for a in actors
            if "Encoder" in f"{a.class_name} {getattr(a, 'repr_name', '') or ''}"}


def encode_once(rows, cfg) -> tuple[dict, np.ndarray, float]:
    """(stats, vectors ordered by text_hash, wall seconds of `encode_texts`)."""
    from llmrec_ray.encode import encode_texts

    start = time.perf_counter()
    vectors, stats = encode_texts(rows, cfg, cache=None)
    wall = time.perf_counter() - start
    vectors = vectors.sort_by("text_hash")
    emb = np.asarray(vectors.column("embedding").combine_chunks().flatten(), dtype=np.float32)
    return stats, emb.reshape(vectors.num_rows, -1), wall


def node_names() -> dict[str, str]:
    """node id -> "head" or "worker-<i>", in the order the nodes joined."""
    import ray

    nodes = sorted(ray.nodes(), key=lambda x: (not x["Resources"].get("node:__internal_head__"),
                                               x["NodeManagerPort"]))
    return {x["NodeID"]: ("head" if i == 0 else f"worker-{i}") for i, x in enumerate(nodes)}


def measure(rows, cfg, threads: int) -> tuple[dict, np.ndarray]:
    """One encode of `rows` under `cfg`: its figures (the cluster's CPU seconds and peak memory
    from `PeakMemory`, every 0.2 s, resident sizes only) and its vectors ordered by text_hash."""
    load_before = os.getloadavg()[0]
    with PeakMemory(interval=0.2, pss=False) as usage:
        stats, vecs, wall = encode_once(rows, cfg)
    load_after = os.getloadavg()[0]
    n = cfg.num_actors
    if stats.get("actors") != n:
        print(f"warning: {n} actors asked, {stats.get('actors')} started: fewer windows of "
              f"{cfg.batch_size} texts than actors (raise --limit)", file=sys.stderr)
    return {"actors": stats.get("actors"), "threads_per_actor": threads,
            "tokenize_actors": cfg.tokenize_actors or n, "wall_s": wall,
            "pipeline_s": stats.get("seconds"), "texts": stats["encoded"], "tokens": stats["tokens"],
            "padding_efficiency": stats.get("padding_efficiency"), "cpu_s": usage.cpu_s,
            "peak_rss_mb": usage.rss_mb,
            # 1-minute load average of the machine: other work on it skews wall times
            "loadavg_1m_before": round(load_before, 2), "loadavg_1m_after": round(load_after, 2)}, vecs


def rounds(args, rows, dashboard: str, cores: int) -> dict[int, list[dict]]:
    """`--repeats` rounds over 1, 2 and 4 actors in alternating order (a load that drifts during
    the benchmark does not favour one end): every run's figures, by actors."""
    from llmrec_ray.config import EncodeConfig

    names, seen = node_names(), set(encoder_actors(dashboard))
    runs: dict[int, list[dict]] = {n: [] for n in ACTORS}
    base = None
    for r in range(args.repeats):
        for n in ACTORS if r % 2 == 0 else ACTORS[::-1]:
            threads = max(1, cores // n) if args.threads == "share" else int(args.threads)
            cfg = EncodeConfig(device="cpu", dtype=args.dtype, num_actors=n,
                               cpus_per_actor=float(threads), tokenize_actors=args.tokenize_actors)
            print(f"[round {r + 1}, {n} actors] running ({threads} threads each)", file=sys.stderr, flush=True)
            run_, vecs = measure(rows, cfg, threads)
            now = encoder_actors(dashboard)
            run_["encoder_nodes"] = sorted(names.get(node, node or "?") for a, node in now.items() if a not in seen)
            seen |= set(now)
            base = vecs if base is None else base  # the first run is a 1-actor run
            if vecs.shape != base.shape:
                raise RuntimeError(f"{n} actors: vectors {vecs.shape} vs {base.shape} with 1 actor")
            run_["max_abs_diff_vs_1_actor"] = float(np.abs(vecs - base).max())
            runs[n].append(run_)
            print(f"[round {r + 1}, {n} actors] {json.dumps(run_)}", file=sys.stderr, flush=True)
    return runs


def summarize(runs: dict[int, list[dict]]) -> dict[str, dict]:
    """Per actor count: the median wall and CPU seconds of its runs, its rates, and its ratios to
    1 actor's (side by side in the same run)."""
    variants = {}
    for n, rs in runs.items():
        wall, cpu = float(np.median([x["wall_s"] for x in rs])), float(np.median([x["cpu_s"] for x in rs]))
        first = rs[0]
        variants[str(n)] = {
            "actors": first["actors"], "actors_asked": n, "threads_per_actor": first["threads_per_actor"],
            "cpus_per_actor": float(first["threads_per_actor"]),
            "tokenize_actors": first["tokenize_actors"], "encoder_nodes": first["encoder_nodes"],
            "distinct_nodes": len(set(first["encoder_nodes"])), "wall_s": wall,
            "texts": first["texts"], "tokens": first["tokens"], "tokens_per_s": first["tokens"] / wall,
            "texts_per_s": first["texts"] / wall, "cpu_s": cpu, "tokens_per_cpu_s": first["tokens"] / cpu,
            "padding_efficiency": first["padding_efficiency"],
            "peak_rss_mb": max(x["peak_rss_mb"] for x in rs),
            "max_abs_diff_vs_1_actor": max(x["max_abs_diff_vs_1_actor"] for x in rs), "runs": rs}
    for n, v in variants.items():
        r = ratios(variants, {"ratio_to_1_actor": (n, "1", "tokens_per_s"),
                              "cpu_efficiency_vs_1_actor": (n, "1", "tokens_per_cpu_s")})
        v.update(r)
    return variants


def run(args, texts: list[str]) -> dict:
    """Start the cluster, warm it up, encode the texts with 1, 2 and 4 actors, shut it down."""
    import pyarrow as pa
    import ray

    from llmrec_ray.config import EncodeConfig
    from llmrec_ray.text_model import encoder_key, text_hashes

    cores = physical_cores()
    cluster = start_cluster(args.head_cpus, args.worker_cpus, args.workers, args.store_mb)
    try:
        info = ray.init(address=cluster.address, log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        out: dict = {"cluster_cpus": ray.cluster_resources().get("CPU")}
        key = encoder_key(EncodeConfig(dtype=args.dtype))
        rows = pa.table({"text": texts, "text_hash": text_hashes(pa.array(texts), key)})
        if args.warmup:  # the cluster's first Ray Data run and first actors: not timed
            cfg = EncodeConfig(device="cpu", dtype=args.dtype, num_actors=1, cpus_per_actor=float(cores))
            _, _, out["warmup_s"] = encode_once(rows.slice(0, args.warmup), cfg)
        out["variants"] = summarize(rounds(args, rows, "http://" + info.dashboard_url, cores))
        return out
    finally:
        ray.shutdown()
        cluster.shutdown()


COLUMNS = {
    "actors": "{actors}", "threads/actor": "{threads_per_actor}",
    "encoder actors on": lambda v: ", ".join(v["encoder_nodes"]), "wall s": "{wall_s:.1f}",
    "tokens/s": "{tokens_per_s:.0f}", "ratio to 1 actor": "{ratio_to_1_actor:.2f}", "CPU s": "{cpu_s:.0f}",
    "tokens per CPU s (vs 1 actor)": "{tokens_per_cpu_s:.0f} ({cpu_efficiency_vs_1_actor:.2f})",
    "max abs diff vs 1 actor": "{max_abs_diff_vs_1_actor:.1e}", "peak RSS MB": "{peak_rss_mb:.0f}"}


def markdown(results: dict) -> str:
    c = results["cluster"]
    rows = table(COLUMNS, results["variants"].values(), align="rrlrrrrrrr")
    loads = [x[k] for v in results["variants"].values() for x in v["runs"]
             for k in ("loadavg_1m_before", "loadavg_1m_after")]
    rows += ["", f"{results['texts']} texts ({results['data']}), {results['tokens']} tokens; median of "
             f"{results['repeats']} run(s) per variant. Simulated cluster: head {c['head_cpus']} CPU + "
             f"{c['workers']} workers x {c['worker_cpus']} CPUs = {c['logical_cpus']} logical CPUs on a "
             f"machine with {c['physical_cores']} physical cores"
             + (" (logical CPUs exceed the physical cores: more actors share the same cores, so the "
                "ratio shows overhead, not scaling)" if c['logical_cpus'] > c['physical_cores'] else "")
             + f"; 1-min load average during the runs {min(loads):.1f}-{max(loads):.1f}"
             + (" (other work on the machine: wall times are unreliable, CPU seconds less so)."
                if max(loads) > 1.5 * c['physical_cores'] else ".")]
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="JSON output file")
    p.add_argument("--render", help="print the markdown table of an existing JSON result and exit")
    p.add_argument("--data", default="ml-100k", choices=["ml-100k", "synthetic"])
    p.add_argument("--ml100k", default=os.environ.get("LLMREC_ML100K"),
                   help="the MovieLens 100K folder (default: $LLMREC_ML100K)")
    p.add_argument("--limit", type=int, default=None, help="encode a fixed random sample of N texts "
                   "(at least 4 x 256, so that 4 actors get a window each)")
    p.add_argument("--threads", default="share", help="threads (and logical CPUs) per encoder actor: "
                   "share = physical cores // actors (at least 1), or a number")
    p.add_argument("--tokenize-actors", type=int, default=None,
                   help="tokenizer actors (default: the pipeline's, one per encoder actor)")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--head-cpus", type=int, default=1)
    p.add_argument("--worker-cpus", type=int, default=2)
    p.add_argument("--workers", type=int, default=2, help="worker nodes")
    p.add_argument("--store-mb", type=int, default=512, help="object store per node")
    p.add_argument("--repeats", type=int, default=1, help="rounds over the variants (alternating "
                   "order); wall and CPU times are the medians")
    p.add_argument("--warmup", type=int, default=64,
                   help="texts of an untimed 1-actor encode before the variants (0: none)")
    args = p.parse_args()
    if args.data == "ml-100k" and not args.ml100k:
        p.error("--data ml-100k needs the MovieLens 100K folder: --ml100k DIR or LLMREC_ML100K")
    if args.render:
        print(markdown(json.loads(Path(args.render).read_text())))
        return
    if not args.out:
        p.error("--out is required")
    started = time.perf_counter()
    texts = load_texts(args.data, args.ml100k, args.limit)
    out = run(args, texts)
    first = out["variants"]["1"]
    results = {
        "variants": out["variants"], "data": args.data, "limit": args.limit, "texts": first["texts"],
        "tokens": first["tokens"], "repeats": args.repeats, "dtype": args.dtype, "threads_policy": args.threads,
        "warmup_texts": args.warmup, "warmup_s": out.get("warmup_s"),
        "total_s": time.perf_counter() - started,
        "ratios": {f"{n}_vs_1_actor_tokens_per_s": v["ratio_to_1_actor"] for n, v in out["variants"].items()},
        "cluster": {"head_cpus": args.head_cpus, "workers": args.workers, "worker_cpus": args.worker_cpus,
                    "logical_cpus": args.head_cpus + args.workers * args.worker_cpus,
                    "ray_cluster_cpus": out["cluster_cpus"], "physical_cores": physical_cores(),
                    "machine_cpus": os.cpu_count(), "simulated": True,
                    "same_cluster_for_all_variants": True,
                    "note": "ray.cluster_utils.Cluster: every node is a raylet on this one machine"}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(markdown(results))


if __name__ == "__main__":
    main()
