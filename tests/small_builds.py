"""One small synthetic feature build, shared by the cluster and fault tests.

Every build here has the same data and encoder, so what a build on a cluster, a submitted job or a
resumed build writes can be compared with one reference build (the session fixture
`reference_build` in conftest.py).

- The encoder runs in float32: in bf16 (the default on CPUs with bf16 units) a vector depends on
  the other texts of its forward pass at the 1e-3 level, and a resumed build batches the texts it
  still has to encode differently from an uninterrupted one.
- Materialization goes through the project's offline store (Feast's file-store path: under a
  second for the five views; Feast's Ray store took 13-74 s for them, `benchmarks/small_build.py`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
N_USERS, N_ITEMS = 30, 40  # 229 distinct texts to encode (item texts and user snapshots)


def write_config(tmp: Path, name: str, extra: dict | None = None) -> Path:
    """A config (JSON is YAML) for the small build: its own Feast repo, run dir and cache."""
    repo = tmp / f"{name}_repo"
    repo.mkdir(parents=True, exist_ok=True)
    for f in ("feature_store.yaml", "features.py"):
        shutil.copy(ROOT / "feature_repo" / f, repo / f)
    cfg = {"name": name, "output_dir": str(tmp / f"{name}_runs"),
           "data": {"source": "synthetic", "synthetic": {"n_users": N_USERS, "n_items": N_ITEMS,
                                                         "interactions_per_user": 10}},
           "encode": {"batch_size": 8, "cpus_per_actor": 1, "device": "cpu", "dtype": "float32",
                      "cache_flush_rows": 24, "cache_dir": str(tmp / f"{name}_cache")},
           "featurestore": {"repo_path": str(repo)}, "ray": {"num_cpus": 2}}
    for key, value in (extra or {}).items():
        cfg[key] = {**cfg.get(key, {}), **value}
    path = tmp / f"{name}.yaml"
    path.write_text(json.dumps(cfg))
    return path


def read_views(repo: Path) -> dict:
    """Every built view of a repo as a DataFrame in key order."""
    from llmrec_ray.featurestore import FeatureRepo
    from llmrec_ray.views import BUILT_VIEWS

    r = FeatureRepo(repo)
    out = {}
    for view in BUILT_VIEWS:
        df = r.read_view(view).to_pandas()
        keys = [c for c in df.columns if c.endswith("_id")] + ["event_timestamp"]
        out[view] = df.sort_values(keys).reset_index(drop=True)
    return out


def assert_same_views(got: dict, want: dict, atol: float = 1e-5) -> None:
    """The same views with the same rows; vectors within `atol`, everything else equal."""
    assert got.keys() == want.keys()
    for view in want:
        a, b = got[view], want[view]
        assert list(a.columns) == list(b.columns) and len(a) == len(b) > 0, (view, len(a), len(b))
        for col in a.columns:
            if col == "embedding":
                np.testing.assert_allclose(np.stack(a[col]), np.stack(b[col]), atol=atol, err_msg=view)
            else:
                assert a[col].tolist() == b[col].tolist(), (view, col)


def encoder_actors(raylets: set[int]) -> dict[int, int]:
    """Live encoder actor processes under one of the raylet PIDs `raylets` (their process title
    names the actor class; other Ray instances may run on the machine): actor PID -> raylet PID."""
    import psutil

    found = {}
    for p in psutil.process_iter(["pid", "cmdline"]):
        if " ".join(p.info["cmdline"] or []).startswith("ray::MapWorker(MapBatches(Encoder))"):
            try:
                parent = next((q.pid for q in p.parents() if q.pid in raylets), None)
            except psutil.NoSuchProcess:
                continue
            if parent is not None:
                found[p.info["pid"]] = parent
    return found
