"""Feature-store benchmark: training-set retrieval through Feast against a plain pandas
point-in-time join, and materialization into SQLite and Redis, side by side in one run.

    python benchmarks/featurestore.py --out featurestore.json   # 1M entity rows, 384-d vectors

Data (synthetic, seeded): `--users` users with `--snapshots` user-history snapshots each, 384-d
float32 vectors, written through `FeatureRepo.write_view` into a temp copy of feature_repo/;
`--rows` entity rows (user, time) drawn over the same period. Variants, each in its own process so
its peak memory (the process and all its descendants: benchmarks/variants.py) is its own:

- `feast`: `FeatureRepo.retrieval(...)` (`get_historical_features` through the project's offline
  store -> Ray Dataset, materialized; row count checked);
- `merge_asof`: `pandas.merge_asof(by=user_id, direction=backward)` on the same parquet;
- `materialize_sqlite` / `materialize_redis`: `FeatureRepo.materialize` of the user view over the
  whole period (then the count check), into SQLite and into a redis-server started on loopback.

The ratio that matters is feast rows/s over merge_asof rows/s, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

from variants import ROOT, by_name, child_main, ratios, run_child, table

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
DAYS = 180


def snapshot_counts(users: int, snapshots: int, shape: str, seed: int) -> np.ndarray:
    """(users,) snapshots per user: `snapshots` each (uniform), or heavy-tailed like real
    interaction data (lognormal, sigma 1.5, at least 1, scaled to the same total)."""
    if shape == "uniform":
        return np.full(users, snapshots, np.int64)
    if shape != "lognormal":
        raise ValueError(f"--shape: uniform or lognormal, not {shape!r}")
    raw = np.random.default_rng(seed + 7).lognormal(0.0, 1.5, users)
    return np.maximum(1, np.round(raw / raw.sum() * users * snapshots)).astype(np.int64)


def build_repo(repo: Path, users: int, snapshots: int, dim: int, seed: int,
               shape: str = "uniform", items: int = 10) -> None:
    """A feature repo with a user-history view of about users x snapshots rows (per user:
    `snapshot_counts`) and the other views."""
    import pyarrow as pa

    from llmrec_ray.featurestore import FeatureRepo
    from llmrec_ray.views import (ITEM_METADATA_VIEW, ITEM_STATS_VIEW, ITEM_TEXT_VIEW,
                                  USER_HISTORY_VIEW, USER_STATS_VIEW)
    from llmrec_ray.schemas import TIMESTAMP
    from llmrec_ray.stats import ITEM_STATS, USER_STATS

    repo.mkdir(parents=True)
    for name in ("feature_store.yaml", "features.py"):
        shutil.copy(ROOT / "feature_repo" / name, repo / name)
    rng = np.random.default_rng(seed)
    counts = snapshot_counts(users, snapshots, shape, seed)
    n = int(counts.sum())
    owner = np.repeat(np.arange(users), counts)
    user_ids = owner.astype(str)
    offsets = rng.integers(0, DAYS * 86_400 * 1_000_000, n)  # microseconds
    offsets = offsets[np.lexsort((offsets, owner))]
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    offsets[first] = 0  # every user's first snapshot at the start: every row finds one
    offsets += np.arange(n) - np.repeat(first, counts)  # +1 us per rank: one row per (user, time)
    ts = pa.array(int(T0.timestamp()) * 1_000_000 + offsets, pa.int64()).cast(TIMESTAMP)
    vectors = rng.standard_normal((n, dim), dtype=np.float32)
    emb = pa.ListArray.from_arrays(pa.array(np.arange(0, n * dim + 1, dim, dtype=np.int32)),
                                   pa.array(vectors.reshape(-1)))
    r = FeatureRepo(repo)
    r.write_view(USER_HISTORY_VIEW, pa.table({
        "user_id": user_ids, "event_timestamp": ts, "embedding": emb,
        "n_tokens": pa.array(np.full(n, 64), pa.int64()), "truncated": pa.array(np.zeros(n, bool)),
        "n_history": pa.array(np.arange(n) - np.repeat(first, counts), pa.int64())}), encoder_key="bench")
    zeros = pa.array(np.zeros(n, np.int64))
    r.write_view(USER_STATS_VIEW, pa.table({
        "user_id": user_ids, "event_timestamp": ts, "n_interactions": zeros,
        "mean_rating": pa.array(np.zeros(n, np.float32)), "last_interaction_unix": zeros,
        "n_30d": zeros}).cast(USER_STATS))
    item_ts = pa.array([T0] * items, TIMESTAMP)
    ids = [f"i{k}" for k in range(items)]
    item_vectors = rng.standard_normal((items, dim), dtype=np.float32)
    r.write_view(ITEM_TEXT_VIEW, pa.table({
        "item_id": ids, "event_timestamp": item_ts, "embedding": pa.array(list(item_vectors), pa.list_(pa.float32())),
        "n_tokens": pa.array([1] * items, pa.int64()), "truncated": [False] * items}), encoder_key="bench")
    r.write_view(ITEM_METADATA_VIEW, pa.table({"item_id": ids, "event_timestamp": item_ts,
                                               "title": ids, "genres": ids}))
    z = [0] * items
    r.write_view(ITEM_STATS_VIEW, pa.table({"item_id": ids, "event_timestamp": item_ts, "n_interactions": z,
                                            "mean_rating": [0.0] * items, "last_interaction_unix": z,
                                            "n_7d": z, "n_30d": z}).cast(ITEM_STATS))
    r.apply()


def entity_rows(rows: int, users: int, seed: int, weights: np.ndarray | None = None):
    """`rows` (row_id, user_id, event_timestamp) rows; users drawn uniformly, or in proportion to
    `weights` (a heavy user has many interactions as well as many snapshots)."""
    import pandas as pd

    rng = np.random.default_rng(seed + 1)
    p = None if weights is None else weights / weights.sum()
    return pd.DataFrame({
        "row_id": np.arange(rows, dtype=np.int64),
        "user_id": rng.choice(users, rows, p=p).astype(str) if p is not None
        else rng.integers(0, users, rows).astype(str),
        "event_timestamp": pd.to_datetime(int(T0.timestamp()) + rng.integers(0, DAYS * 86_400, rows),
                                          unit="s", utc=True)})


def run_feast(args) -> dict:
    import ray

    from llmrec_ray.featurestore import FeatureRepo
    from llmrec_ray.views import USER_HISTORY_VIEW

    ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    df = entity_rows(args.rows, args.users, args.seed)
    r = FeatureRepo(Path(args.repo))
    start = time.perf_counter()
    ds = r.retrieval(df, [f"{USER_HISTORY_VIEW}:embedding"]).to_ray_dataset().materialize()
    n = ds.count()
    wall = time.perf_counter() - start
    sample = ds.take(1)[0][f"{USER_HISTORY_VIEW}__embedding"]
    ray.shutdown()
    assert n == args.rows and len(sample) == args.dim
    return {"wall_s": wall, "rows": n}


def asof_join(repo: Path, df) -> dict:
    """The plain reference: `pandas.merge_asof(by=user_id, direction=backward)` of the entity
    rows `df` with the user-history view's (user_id, event_timestamp, embedding), in this process
    (every row must find a vector)."""
    import pandas as pd

    from llmrec_ray.featurestore import FeatureRepo
    from llmrec_ray.views import USER_HISTORY_VIEW

    start = time.perf_counter()
    view = FeatureRepo(repo).read_view(USER_HISTORY_VIEW, columns=["user_id", "event_timestamp", "embedding"]).to_pandas()
    view["event_timestamp"] = pd.to_datetime(view["event_timestamp"], utc=True).astype(df["event_timestamp"].dtype)
    out = pd.merge_asof(df.sort_values("event_timestamp"), view.sort_values("event_timestamp"),
                        on="event_timestamp", by="user_id", direction="backward")
    wall = time.perf_counter() - start
    assert len(out) == len(df) and out["embedding"].notna().all()
    return {"wall_s": wall, "rows": len(out)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_materialize(args, online: str) -> dict:
    import ray

    from llmrec_ray.featurestore import FeatureRepo
    from llmrec_ray.views import USER_HISTORY_VIEW

    ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    server = None
    conn = None
    if online == "redis":
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server is not installed (scripts/setup.sh installs it)")
        port = free_port()
        tmp = tempfile.mkdtemp()
        server = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                   "--appendonly", "no", "--dir", tmp], stdout=subprocess.DEVNULL)
        time.sleep(1.0)
        conn = f"127.0.0.1:{port}"
    try:
        r = FeatureRepo(Path(args.repo), online_store=online, redis_connection=conn)
        r.apply()
        source_rows = r.read_view(USER_HISTORY_VIEW, columns=["user_id"]).num_rows
        start = time.perf_counter()
        r.store.materialize(start_date=T0 - timedelta(days=1), end_date=T0 + timedelta(days=DAYS + 1),
                            feature_views=[USER_HISTORY_VIEW])
        wall = time.perf_counter() - start
        verified = r.verify_online(USER_HISTORY_VIEW, T0 + timedelta(days=DAYS + 1))
    finally:
        if server:
            server.terminate()
        ray.shutdown()
    return {"wall_s": wall, "source_rows": source_rows, "entities": verified,
            "rows": source_rows}


RUNNERS = {"feast": run_feast,
           "merge_asof": lambda args: asof_join(Path(args.repo), entity_rows(args.rows, args.users, args.seed)),
           "materialize_sqlite": lambda args: run_materialize(args, "sqlite"),
           "materialize_redis": lambda args: run_materialize(args, "redis")}
CHILD_KEYS = ("rows", "users", "snapshots", "dim", "store", "cpus", "seed")
RATIOS = {"feast_over_merge_asof_rows_per_s": ("feast", "merge_asof", "rows_per_s"),
          "feast_over_merge_asof_peak_rss": ("feast", "merge_asof", "peak_rss_mb")}
COLUMNS = {"variant": "{variant}", "rows": "{rows:,}", "wall s": "{wall_s:.1f}", "rows/s": "{rows_per_s:,.0f}",
           "peak RSS MB": "{peak_rss_mb:.0f}"}


def markdown(results: dict) -> str:
    r = results["ratios"]
    rows = table(COLUMNS, by_name(results["variants"]))
    rows += ["", f"Feast ({results['store']} offline store) rows/s / pandas merge_asof rows/s: "
             f"{r['feast_over_merge_asof_rows_per_s']:.3f}; peak memory Feast / merge_asof: "
             f"{r['feast_over_merge_asof_peak_rss']:.2f}x."]
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="JSON output file")
    p.add_argument("--render", help="print the markdown table of an existing JSON result and exit")
    p.add_argument("--rows", type=int, default=1_000_000, help="entity rows to retrieve")
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--snapshots", type=int, default=20, help="user-history snapshots per user")
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--store", default="llmrec", choices=["llmrec"],
                   help="offline store (the project's plugin; benchmarks/retrieval.py compares "
                        "retrieval with Feast's file store)")
    p.add_argument("--variants", default="merge_asof,feast,materialize_sqlite,materialize_redis")
    p.add_argument("--cpus", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variant", help=argparse.SUPPRESS)
    p.add_argument("--repo", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.render:
        print(markdown(json.loads(Path(args.render).read_text())))
        return
    if args.variant:  # child process
        child_main(RUNNERS, args)
        return
    if not args.out:
        p.error("--out is required")
    results = {"variants": {}, "store": args.store, "rows": args.rows, "users": args.users,
               "snapshots": args.snapshots, "dim": args.dim, "machine": {"cpus": os.cpu_count()}}
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "feature_repo"
        start = time.perf_counter()
        build_repo(repo, args.users, args.snapshots, args.dim, args.seed)
        print(f"[setup] repo with {args.users * args.snapshots:,} snapshot rows in "
              f"{time.perf_counter() - start:.1f}s", file=sys.stderr, flush=True)
        for name in args.variants.split(","):
            results["variants"][name] = run_child(__file__, name, args, CHILD_KEYS, repo=repo)
    if "feast" in results["variants"] and "merge_asof" in results["variants"]:
        results["ratios"] = ratios(results["variants"], RATIOS)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    if "ratios" in results:
        print(markdown(results))


if __name__ == "__main__":
    main()
