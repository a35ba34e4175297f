"""Faults a cluster has: an encoder actor killed mid-run, the driver killed mid-build.

(A training worker killed mid-run is in test_train.py: Ray Train restarts from the
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
import pyarrow as pa
from small_builds import ROOT, assert_same_views, encoder_actors, read_views, write_config

from llmrec_ray.cache import EmbeddingCache
from llmrec_ray.config import EncodeConfig
from llmrec_ray.encode import Encoder, encode_texts
from llmrec_ray.text_model import encoder_key, resolve_model, text_hashes


def _texts(n: int) -> list[str]:
    words = ["space", "heist", "romance", "comedy", "noir", "western", "robot", "dragon", "detective"]
    rng = np.random.default_rng(0)
    return [f"text {k}: " + " ".join(rng.choice(words, 24)) for k in range(n)]


def _encoder_pids() -> set[int]:
    """PIDs of this session's live encoder actors."""
    import ray

    return set(encoder_actors({ray._private.worker._global_node.all_processes["raylet"][0].process.pid}))


def test_killed_encoder_actor_run_finishes_with_one_row_per_input(ray_session, tmp_path):
    """SIGKILL the encoder actor's process once it has written vectors: Ray Data restarts it and
    retries its task; the output still has exactly one row per distinct input text."""
    # float32: in bf16 a vector depends at the 1e-3 level on the texts it is batched with, and the
    # reference below batches a subset
    cfg = EncodeConfig(batch_size=16, cpus_per_actor=1, num_actors=1, cache_flush_rows=32, dtype="float32")
    texts = _texts(400)
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
    # the vectors are the encoder's: equal to the same encoder without faults, in this process
    direct = Encoder(resolve_model(cfg.model)[0], cfg.pooling, max_length=cfg.max_length,
                     normalize=cfg.normalize, device="cpu", dtype="float32")
    again = direct(rows.slice(0, 64))
    ref = dict(zip(again.column("text_hash").to_pylist(), again.column("embedding").to_pylist()))
    got = dict(zip(hashes, vectors.column("embedding").to_pylist()))
    for h, v in ref.items():
        np.testing.assert_allclose(got[h], v, atol=1e-5)


def _build(config: Path, log: Path) -> subprocess.Popen:
    """`llmrec build-features` in its own process group (its driver and its local Ray), its
    output to `log` (a pipe nobody reads while it runs would fill up and stop it)."""
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-m", "llmrec_ray.cli", "build-features", "--config", str(config)],
                                cwd=ROOT, env={**os.environ, "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"},
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def test_killed_driver_build_resumes_and_equals_an_uninterrupted_build(tmp_path, reference_build):
    """SIGKILL the driver (and its local Ray) in the middle of encoding, start the build again:
    it takes what was encoded from the cache, encodes only the rest, and writes the same
    features as a build that was never interrupted (the session's reference build)."""
    config = write_config(tmp_path, "resume")
    cache = EmbeddingCache(tmp_path / "resume_cache")
    distinct = reference_build["summary"]["encode"]["distinct"]
    proc = _build(config, tmp_path / "killed.log")
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None and len(cache.parts()) < 2:
        time.sleep(0.1)  # two flushes of encode.cache_flush_rows vectors: well into the encoding
    assert proc.poll() is None, "the build ended before it was killed:\n" + \
        (tmp_path / "killed.log").read_text()[-4000:]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    partial = len(cache)
    assert 0 < partial < distinct, f"killed with {partial} of {distinct} texts encoded:\n" + \
        (tmp_path / "killed.log").read_text()[-4000:]

    resumed = _build(config, tmp_path / "resumed.log")
    assert resumed.wait(timeout=600) == 0, (tmp_path / "resumed.log").read_text()[-4000:]
    enc = json.loads((tmp_path / "resume_runs" / "resume" / "summary.json").read_text())["build_features"]["encode"]
    assert enc["cached"] == partial and enc["encoded"] == distinct - partial, enc
    assert_same_views(read_views(tmp_path / "resume_repo"), reference_build["views"])
