"""Faults a cluster has: an encoder actor killed mid-run, the driver killed mid-build.

(A training worker killed mid-run is in test_pipeline_e2e.py: Ray Train restarts from the
checkpoint.)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import pyarrow as pa

from llmrec_ray.cache import EmbeddingCache
from llmrec_ray.config import EncodeConfig
from llmrec_ray.encode import encode_texts, encoder_key, text_hashes

ROOT = Path(__file__).resolve().parents[1]


def _texts(n: int) -> list[str]:
    words = ["space", "heist", "romance", "comedy", "noir", "western", "robot", "dragon", "detective"]
    rng = np.random.default_rng(0)
    return [f"text {k}: " + " ".join(rng.choice(words, 24)) for k in range(n)]


def _encoder_pids() -> set[int]:
    """PIDs of this session's live encoder actors (their process title names the actor class;
    only processes under this session's raylet: other Ray instances may run on the machine)."""
    import psutil
    import ray

    raylet = ray._private.worker._global_node.all_processes["raylet"][0].process.pid
    pids = set()
    for p in psutil.process_iter(["pid", "cmdline"]):
        title = " ".join(p.info["cmdline"] or [])
        if title.startswith("ray::MapWorker(MapBatches(Encoder))"):
            try:
                if raylet in {q.pid for q in p.parents()}:
                    pids.add(p.info["pid"])
            except psutil.NoSuchProcess:
                pass
    return pids


def test_killed_encoder_actor_run_finishes_with_one_row_per_input(ray_session, tmp_path):
    """SIGKILL the encoder actor's process once it has written vectors: Ray Data restarts it and
    retries its task; the output still has exactly one row per distinct input text."""
    cfg = EncodeConfig(batch_size=16, cpus_per_actor=1, num_actors=1, cache_flush_rows=32)
    texts = _texts(600)
    rows = pa.table({"text": texts, "text_hash": text_hashes(pa.array(texts), encoder_key(cfg))})
    cache = EmbeddingCache(tmp_path / "cache")
    killed: list[int] = []
    seen: set[int] = set()

    def killer():
        deadline = time.time() + 300
        while time.time() < deadline and not cache.parts():
            seen.update(_encoder_pids())
            time.sleep(0.2)  # wait until the pipeline has produced vectors
        for pid in _encoder_pids():
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        while time.time() < deadline and not (_encoder_pids() - set(killed)):
            time.sleep(0.2)
        seen.update(_encoder_pids())

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    vectors, stats = encode_texts(rows, cfg, cache=cache)
    thread.join(timeout=30)
    assert killed, "the encoder actor was never seen alive"
    assert seen - set(killed), "no encoder actor took over after the kill"
    # exactly one row per input, no duplicates, every hash present
    hashes = vectors.column("text_hash").to_pylist()
    assert len(hashes) == len(set(hashes)) == len(texts) == stats["encoded"]
    assert set(hashes) == set(rows.column("text_hash").to_pylist())
    # the vectors are the encoder's: equal to a run without faults (a different cache)
    again, _ = encode_texts(rows.slice(0, 64), cfg)
    ref = dict(zip(again.column("text_hash").to_pylist(), again.column("embedding").to_pylist()))
    got = dict(zip(hashes, vectors.column("embedding").to_pylist()))
    for h, v in ref.items():
        np.testing.assert_allclose(got[h], v, atol=1e-5)


def _config(tmp: Path, runs: Path, repo: Path, cache: Path) -> Path:
    """A synthetic build that encodes for a while on 2 cores (several hundred texts)."""
    import shutil

    repo.mkdir(parents=True, exist_ok=True)
    for f in ("feature_store.yaml", "features.py"):
        shutil.copy(ROOT / "feature_repo" / f, repo / f)
    path = tmp / f"{repo.name}.yaml"
    path.write_text(json.dumps({
        "name": "resume", "output_dir": str(runs),
        "data": {"source": "synthetic", "synthetic": {"n_users": 60, "n_items": 60,
                                                      "interactions_per_user": 15}},
        "encode": {"batch_size": 8, "cpus_per_actor": 1, "cache_flush_rows": 24,
                   "cache_dir": str(cache)},
        "featurestore": {"repo_path": str(repo)},
        "ray": {"num_cpus": 2},
    }))
    return path


def _build(config: Path, env: dict, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "llmrec_ray.cli", "build-features", "--config", str(config)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True, **kw)


def _views(repo: Path) -> dict:
    from llmrec_ray.featurestore import BUILT_VIEWS, FeatureRepo

    r = FeatureRepo(repo)
    out = {}
    for view in BUILT_VIEWS:
        df = r.read_view(view).to_pandas()
        keys = [c for c in df.columns if c.endswith("_id")] + ["event_timestamp"]
        out[view] = df.sort_values(keys).reset_index(drop=True)
    return out


@pytest.mark.slow
def test_killed_driver_build_resumes_and_equals_an_uninterrupted_build(tmp_path):
    """SIGKILL the driver (and its local Ray) in the middle of encoding, start the build again:
    it takes what was encoded from the cache, encodes only the rest, and writes the same
    features as a build that was never interrupted."""
    env = {**os.environ, "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}
    cache = tmp_path / "cache"
    config = _config(tmp_path, tmp_path / "runs", tmp_path / "repo", cache)
    proc = _build(config, env)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None and not list(cache.glob("part-*.parquet")):
        time.sleep(0.2)
    assert proc.poll() is None, "the build ended before it could be killed:\n" + proc.stdout.read()
    time.sleep(2)  # a little more encoded
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    partial = len(EmbeddingCache(cache))
    assert partial > 0

    resumed = _build(config, env)
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out
    summary = json.loads((tmp_path / "runs" / "resume" / "summary.json").read_text())["build_features"]
    enc = summary["encode"]
    assert enc["cached"] >= partial > 0 and enc["encoded"] > 0, enc
    assert enc["cached"] + enc["encoded"] == enc["distinct"]

    # the reference: an uninterrupted build of the same data, with an empty cache
    ref_config = _config(tmp_path, tmp_path / "ref_runs", tmp_path / "ref_repo", tmp_path / "ref_cache")
    ref = _build(ref_config, env)
    out, _ = ref.communicate(timeout=600)
    assert ref.returncode == 0, out
    got, want = _views(tmp_path / "repo"), _views(tmp_path / "ref_repo")
    assert got.keys() == want.keys()
    for view in want:
        a, b = got[view], want[view]
        assert list(a.columns) == list(b.columns) and len(a) == len(b), view
        for col in a.columns:
            if col == "embedding":
                np.testing.assert_allclose(np.stack(a[col]), np.stack(b[col]), atol=1e-5, err_msg=view)
            else:
                assert a[col].tolist() == b[col].tolist(), (view, col)
