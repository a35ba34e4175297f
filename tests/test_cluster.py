"""The project on a real Ray cluster: a job submitted to a head node, and a build spread over nodes.

Each test runs its cluster in a child process (`python tests/test_cluster.py <mode> <tmp>`): a
pytest process already holds the session's local Ray, and a driver connects to one cluster only.
`ray.cluster_utils.Cluster` starts real head and worker node processes (GCS, raylets, dashboard)
on loopback, each node with its own resources.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _write_config(tmp: Path, name: str, extra: dict | None = None) -> Path:
    import shutil

    repo = tmp / f"{name}_repo"
    repo.mkdir(parents=True, exist_ok=True)
    for f in ("feature_store.yaml", "features.py"):
        shutil.copy(ROOT / "feature_repo" / f, repo / f)
    cfg = {"name": name, "output_dir": str(tmp / f"{name}_runs"),
           "data": {"source": "synthetic", "synthetic": {"n_users": 30, "n_items": 40,
                                                         "interactions_per_user": 10}},
           "encode": {"batch_size": 8, "cpus_per_actor": 1, "device": "cpu"},
           "featurestore": {"repo_path": str(repo)}, "ray": {"num_cpus": 2}}
    for key, value in (extra or {}).items():
        cfg[key] = {**cfg.get(key, {}), **value}
    path = tmp / f"{name}.yaml"
    path.write_text(json.dumps(cfg))
    return path


def _child(mode: str, tmp: Path) -> dict:
    proc = subprocess.run([sys.executable, __file__, mode, str(tmp)], cwd=ROOT, capture_output=True,
                          text=True, timeout=900, env={**os.environ, "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-8000:]
    return json.loads((tmp / f"{mode}.json").read_text())


# ------------------------------------------------------------------------------------------
# The child process side
# ------------------------------------------------------------------------------------------

def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_job(tmp: Path) -> dict:
    """A head node with its dashboard (the job server); submit `jobs/build_features.py` as a Ray
    job with a working dir and env vars, wait, and collect status, logs and output."""
    from ray.cluster_utils import Cluster
    from ray.job_submission import JobStatus, JobSubmissionClient

    config = _write_config(tmp, "job")
    # The job agent's HTTP port must be free: another Ray on this machine (the test session's)
    # already holds the default 52365, and the job server then has no agent to submit to.
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "include_dashboard": True, "dashboard_host": "127.0.0.1",
        "dashboard_port": 0, "dashboard_agent_listen_port": _free_port()})
    try:
        address = cluster.head_node.address_info["webui_url"]
        client = JobSubmissionClient(f"http://{address}")
        for attempt in range(30):  # the head's job agent takes a moment to come up
            try:
                job_id = client.submit_job(
                    # this interpreter: the job's `python` would be whatever PATH finds first (in
                    # CI the virtualenv is not activated); on a real cluster the image's python
                    entrypoint=f"{sys.executable} jobs/build_features.py --config {config}",
                    runtime_env={"working_dir": str(ROOT),
                                 "env_vars": {"RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}})
                break
            except RuntimeError as e:
                if "No available agent" not in str(e) or attempt == 29:
                    raise
                time.sleep(2)
        deadline = time.time() + 600
        status = client.get_job_status(job_id)
        while time.time() < deadline and not status.is_terminal():
            time.sleep(2)
            status = client.get_job_status(job_id)
        logs = client.get_job_logs(job_id)
        info = client.get_job_info(job_id)
        return {"status": str(status), "succeeded": status == JobStatus.SUCCEEDED, "logs": logs[-20000:],
                "entrypoint": info.entrypoint,
                "summary": json.loads((tmp / "job_runs" / "job" / "summary.json").read_text())
                if (tmp / "job_runs" / "job" / "summary.json").exists() else None}
    finally:
        cluster.shutdown()


def _views(repo: Path) -> dict:
    from llmrec_ray.featurestore import BUILT_VIEWS, FeatureRepo

    r = FeatureRepo(repo)
    out = {}
    for view in BUILT_VIEWS:
        df = r.read_view(view).to_pandas()
        keys = [c for c in df.columns if c.endswith("_id")] + ["event_timestamp"]
        out[view] = df.sort_values(keys).reset_index(drop=True)
    return out


def run_multinode(tmp: Path) -> dict:
    """A head and two worker nodes (one with a logical GPU): build the features there, then on
    one local node, and compare what was written."""
    import psutil
    import ray
    from ray.cluster_utils import Cluster

    from llmrec_ray import pipeline
    from llmrec_ray.config import load_config

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    workers = [cluster.add_node(num_cpus=2), cluster.add_node(num_cpus=2, num_gpus=1)]
    seen_nodes: dict[int, str] = {}
    try:
        cluster.wait_for_nodes()
        ray.init(address=cluster.address)
        raylets = {n.all_processes["raylet"][0].process.pid: n.node_id
                   for n in [cluster.head_node, *workers]}
        import threading

        stop = threading.Event()

        def watch():  # the node of every encoder actor process (its raylet is its parent)
            while not stop.is_set():
                for p in psutil.process_iter(["pid", "cmdline"]):
                    if " ".join(p.info["cmdline"] or []).startswith("ray::MapWorker(MapBatches(Encoder))"):
                        try:
                            parents = {q.pid for q in p.parents()}
                        except psutil.NoSuchProcess:
                            continue
                        for pid, node in raylets.items():
                            if pid in parents:
                                seen_nodes[p.info["pid"]] = node
                time.sleep(0.3)

        thread = threading.Thread(target=watch, daemon=True)
        thread.start()
        cfg = load_config(_write_config(tmp, "multi"), [])
        summary = pipeline.build_stage(cfg)
        stop.set()
        thread.join()
        resources = ray.cluster_resources()
        ray.shutdown()
    finally:
        cluster.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    try:
        single = pipeline.build_stage(load_config(_write_config(tmp, "single"), []))
    finally:
        ray.shutdown()
    got, want = _views(tmp / "multi_repo"), _views(tmp / "single_repo")
    diffs = {}
    for view in want:
        a, b = got[view], want[view]
        same_rows = list(a.columns) == list(b.columns) and len(a) == len(b)
        diff = 0.0
        for col in a.columns if same_rows else []:
            if col == "embedding":
                diff = max(diff, float(np.abs(np.stack(a[col]) - np.stack(b[col])).max()))
            elif a[col].tolist() != b[col].tolist():
                same_rows = False
        diffs[view] = {"same_rows": same_rows, "max_abs_diff": diff, "rows": len(a)}
    return {"nodes": len(set(raylets.values())), "encoder_nodes": sorted(set(seen_nodes.values())),
            "encoder_actors": len(seen_nodes), "resources": {k: resources.get(k) for k in ("CPU", "GPU")},
            "encode": summary["encode"], "single_encode": single["encode"], "views": diffs}


# ------------------------------------------------------------------------------------------
# The tests
# ------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_ray_job_submission_builds_features(tmp_path):
    out = _child("job", tmp_path)
    assert out["succeeded"], out["status"] + "\n" + out["logs"][-3000:]
    assert "jobs/build_features.py" in out["entrypoint"]
    # the job's own output: the CLI's summary lines, and rows in = accepted + rejected
    assert "[build-features]" in out["logs"] and "interactions" in out["logs"]
    data = out["summary"]["build_features"]["data"]
    for table, c in data.items():
        assert c["in"] == c["accepted"] + c["rejected"], table
    assert out["summary"]["build_features"]["online"]["item_text_embedding"] == 40


@pytest.mark.slow
def test_multinode_build_spreads_encoders_and_equals_single_node(tmp_path):
    out = _child("multinode", tmp_path)
    assert out["nodes"] == 3 and out["resources"] == {"CPU": 5.0, "GPU": 1.0}
    # encode.device=cpu on a cluster with a (logical) GPU: CPU actors, spread over the nodes
    assert out["encode"]["device"] == "cpu" and out["encode"]["actors"] >= 2
    assert len(out["encoder_nodes"]) >= 2, out
    assert out["encode"]["encoded"] == out["single_encode"]["encoded"]
    for view, d in out["views"].items():
        assert d["same_rows"] and d["rows"] > 0, (view, d)
        assert d["max_abs_diff"] <= 1e-5, (view, d)


if __name__ == "__main__":
    mode, tmp = sys.argv[1], Path(sys.argv[2])
    result = {"job": run_job, "multinode": run_multinode}[mode](tmp)
    (tmp / f"{mode}.json").write_text(json.dumps(result, default=str))
