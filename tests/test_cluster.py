"""The project on a real multi-node Ray cluster, driven as a user drives it: a job submitted to the
head's job server builds the features on a head and two worker nodes, then a second job trains
on them (retrieved through the project's offline-store plugin) on the same cluster.

`ray.cluster_utils.Cluster` starts real node processes (GCS, raylets, the dashboard's job server)
on loopback, each node with its own resources; one worker carries a logical GPU. The cluster runs
in a child process (`python tests/test_cluster.py <tmp>`): the pytest process already holds the
session's local Ray, and a Ray driver connects to one cluster only. The child submits
`jobs/build_features.py` with `JobSubmissionClient` (a working dir and env vars, as
`ray job submit` sends them), watches on which node each encoder actor runs, waits for the job and
collects its status, logs and summary, then submits `jobs/train.py`; the test compares the
features the job wrote with the session's single-node reference build and checks the training.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from small_builds import ROOT, assert_same_views, encoder_actors, read_views, write_config


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _watch_encoders(raylets: dict[int, str], seen: dict[int, str], stop: threading.Event) -> None:
    """Record the node of every encoder actor process (its raylet is among its parents)."""
    while not stop.is_set():
        for pid, raylet in encoder_actors(set(raylets)).items():
            seen[pid] = raylets[raylet]
        time.sleep(0.3)


def _submit(client, config: Path, job: str = "build_features") -> str:
    for attempt in range(30):  # the head's job agent takes a moment to come up
        try:
            return client.submit_job(
                # this interpreter: the job's `python` would be whatever PATH finds first (in CI
                # the virtualenv is not activated); on a real cluster, the image's python
                entrypoint=f"{sys.executable} jobs/{job}.py --config {config}",
                runtime_env={"working_dir": str(ROOT),
                             "env_vars": {"RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}})
        except RuntimeError as e:
            if "No available agent" not in str(e) or attempt == 29:
                raise
            time.sleep(2)
    raise AssertionError("unreachable")


def run_cluster(tmp: Path) -> dict:
    """The child: a head (1 CPU, job server) and two workers (2 CPUs each, one with a GPU);
    submit the build as a job, wait for it, and report what happened."""
    import ray
    from ray.cluster_utils import Cluster
    from ray.job_submission import JobStatus, JobSubmissionClient

    # two encoder actors (and two tokenizers): enough to spread over nodes; each more costs seconds
    # of model loading on the two cores that carry all three nodes
    # then a training job on the same cluster, through the offline-store plugin: two epochs, on
    # the CPUs (the GPU of the second node is logical only), without the tower export
    # (streaming the rows from the retrieval in each epoch, across the nodes: the tests' other
    # trainings keep them in the object store, train.materialize auto)
    config = write_config(tmp, "job", {"encode": {"num_actors": 2},
                                       "train": {"epochs": 2, "use_gpu": False, "export": False,
                                                 "materialize": False}})
    # Each worker node its own temp dir, as each machine of a cluster has its own disk: a node
    # unpacks the job's working dir afresh (rmtree, unzip) into its temp dir, which on one shared
    # dir pulls the files from under the running driver. (Short paths: Ray's unix sockets live
    # there.) The head keeps the default one, where the job finds the cluster's address.
    temp = [tempfile.mkdtemp(prefix="rn", dir="/tmp") for _ in range(2)]
    # The job agent's HTTP port must be free: another Ray on this machine (the test session's)
    # already holds the default 52365, and the job server then has no agent to submit to.
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "include_dashboard": True, "dashboard_host": "127.0.0.1",
        "dashboard_port": 0, "dashboard_agent_listen_port": _free_port()})
    try:
        workers = [cluster.add_node(num_cpus=2, temp_dir=temp[0]),
                   cluster.add_node(num_cpus=2, num_gpus=1, temp_dir=temp[1])]
        cluster.wait_for_nodes()
        ray.init(address=cluster.address)
        resources = ray.cluster_resources()
        ray.shutdown()
        raylets = {n.all_processes["raylet"][0].process.pid: n.node_id for n in [cluster.head_node, *workers]}
        seen: dict[int, str] = {}
        stop = threading.Event()
        watcher = threading.Thread(target=_watch_encoders, args=(raylets, seen, stop), daemon=True)
        watcher.start()
        client = JobSubmissionClient(f"http://{cluster.head_node.address_info['webui_url']}")
        def run(job: str) -> tuple[str, object]:
            job_id = _submit(client, config, job)
            deadline = time.time() + 600
            status = client.get_job_status(job_id)
            while time.time() < deadline and not status.is_terminal():
                time.sleep(1)
                status = client.get_job_status(job_id)
            return job_id, status

        job_id, status = run("build_features")
        stop.set()
        watcher.join()
        train_id, train_status = run("train") if status == JobStatus.SUCCEEDED else (None, None)
        summary = tmp / "job_runs" / "job" / "summary.json"
        return {"status": str(status), "succeeded": status == JobStatus.SUCCEEDED,
                "logs": client.get_job_logs(job_id)[-20000:], "entrypoint": client.get_job_info(job_id).entrypoint,
                "train_succeeded": train_status == JobStatus.SUCCEEDED,
                "train_logs": client.get_job_logs(train_id)[-20000:] if train_id else "",
                "summary": json.loads(summary.read_text()) if summary.exists() else None,
                "nodes": len(set(raylets.values())), "encoder_nodes": sorted(set(seen.values())),
                "resources": {k: resources.get(k) for k in ("CPU", "GPU")}}
    finally:
        cluster.shutdown()
        for d in temp:
            shutil.rmtree(d, ignore_errors=True)


def test_job_on_three_nodes_builds_the_features_of_one_node(tmp_path, reference_build):
    proc = subprocess.run([sys.executable, __file__, str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                          timeout=900, env={**os.environ, "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-8000:]
    out = json.loads((tmp_path / "cluster.json").read_text())

    # the job: submitted with its entrypoint, succeeded, printed the CLI's summary
    assert out["succeeded"], out["status"] + "\n" + out["logs"][-3000:]
    assert "jobs/build_features.py" in out["entrypoint"]
    assert "[build-features]" in out["logs"] and "interactions" in out["logs"]
    build = out["summary"]["build_features"]
    for table, c in build["data"].items():  # rows in = accepted + rejected, for every table
        assert c["in"] == c["accepted"] + c["rejected"], table
    assert build["online"]["item_text_embedding"] == 40

    # the cluster: three nodes, one with a (logical) GPU; encode.device=cpu keeps the encoders on
    # CPUs, and the actors spread over the nodes
    assert out["nodes"] == 3 and out["resources"] == {"CPU": 5.0, "GPU": 1.0}
    assert build["encode"]["device"] == "cpu" and build["encode"]["actors"] == 2
    assert len(out["encoder_nodes"]) >= 2, out["encoder_nodes"]  # two actors, two nodes

    # what the job wrote is what one node writes
    assert build["encode"]["encoded"] == reference_build["summary"]["encode"]["encoded"]
    assert build["views"] == reference_build["summary"]["views"]
    assert_same_views(read_views(tmp_path / "job_repo"), reference_build["views"])

    # a training job on the same cluster trains on the features retrieved through the plugin
    assert out["train_succeeded"], out["train_logs"][-3000:]
    train = out["summary"]["train"]
    assert train["rows"] == train["split"]["fit"] > 0 and train["epochs_run"] == 2
    assert train["dataset"] == "streamed"
    assert "[train]" in out["train_logs"] and train["final_loss"] == train["final_loss"]  # not NaN


if __name__ == "__main__":
    tmp = Path(sys.argv[1])
    (tmp / "cluster.json").write_text(json.dumps(run_cluster(tmp), default=str))
