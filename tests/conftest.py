"""Shared fixtures: one local Ray per session (capped), a Feast repo copied to a temp dir, the
reference build that the cluster and fault tests compare with."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def ray_session():
    import ray

    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 object_store_memory=512 * 1024 * 1024)
    yield ray
    ray.shutdown()


@pytest.fixture
def repo_dir(tmp_path) -> Path:
    """The project's feature repo (declarations + feature_store.yaml), without data, in tmp."""
    dst = tmp_path / "feature_repo"
    dst.mkdir()
    for name in ("feature_store.yaml", "features.py"):
        shutil.copy(ROOT / "feature_repo" / name, dst / name)
    return dst


@pytest.fixture(scope="session")
def ml100k_path() -> Path:
    return Path(os.environ.get("LLMREC_ML100K", ROOT.parent / "shared" / "data" / "ml-100k"))


@pytest.fixture(scope="session")
def reference_build(ray_session, tmp_path_factory) -> dict:
    """The small build of `small_builds`, uninterrupted, on this session's single-node Ray: its
    summary and the views it wrote."""
    from small_builds import read_views, write_config

    from llmrec_ray import pipeline
    from llmrec_ray.config import load_config

    tmp = tmp_path_factory.mktemp("reference")
    summary = pipeline.build_stage(load_config(write_config(tmp, "reference"), []))
    return {"summary": summary, "views": read_views(tmp / "reference_repo")}
