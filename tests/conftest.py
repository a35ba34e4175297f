"""Shared fixtures: one local Ray per session (capped), a Feast repo copied to a temp dir, the
reference build that the cluster and fault tests compare with; and the helpers that test modules
import (`from conftest import T0, utc, ledger, check_invariant`)."""

from __future__ import annotations

import os
import shutil
from datetime import datetime, timezone
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# ---- helpers for literal data and the rejects ledger ---------------------------------------------

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)  # a fixed instant for literal tables
T0_SECONDS = 1_700_000_000  # a fixed instant in Unix seconds, for literal CSV files
LEDGER = ("table", "row", "column", "reason")  # the fields `ledger` gives by default


def utc(*args: int) -> datetime:
    """A UTC datetime: `utc(2024, 1, 2)` (or more fields) from its fields, `utc(seconds)` from Unix
    seconds."""
    if len(args) == 1:
        return datetime.fromtimestamp(args[0], tz=timezone.utc)
    return datetime(*args, tzinfo=timezone.utc)


def ledger(rejects, fields: tuple[str, ...] = LEDGER, sort: bool = True) -> list[tuple]:
    """The rejects of a `Dataset`, a `Rejects` ledger or a list of its rows (a saved ledger) as
    tuples of `fields`, sorted (in ledger order with `sort=False`). Field `file` is the name of
    the row's source file."""
    rows = getattr(getattr(rejects, "rejects", rejects), "rows", rejects)
    out = [tuple(Path(r["source"]).name if f == "file" else r[f] for f in fields) for r in rows]
    return sorted(out) if sort else out


def check_invariant(dataset) -> None:
    """For every table: rows in = accepted + rejected, and `rows_in` holds those rows in."""
    for table, counts in dataset.summary().items():
        assert counts["in"] == counts["accepted"] + counts["rejected"], (table, counts)
        assert dataset.rows_in[table] == counts["in"], (table, dataset.rows_in)



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


# ---- one small trained run, shared by the end-to-end, training and recommendation tests ----------

def tiny_overrides(tmp: Path, repo: Path) -> list[str]:
    """The shared run's config (`--set` overrides of the defaults): 30 users, 40 items, 8 epochs of
    18 batches of 16. The model then beats popularity by 1.32x at Recall@20 and 1.27x at NDCG@20
    (test_pipeline_e2e); after the 2 epochs of 9 batches of 32 used before, only by 1.17x / 1.12x."""
    return ["name=tiny", f"output_dir={tmp / 'runs'}", f"featurestore.repo_path={repo}",
            "data.synthetic.n_users=30", "data.synthetic.n_items=40", "data.synthetic.interactions_per_user=12",
            "encode.batch_size=32", "encode.cpus_per_actor=1", "train.epochs=8", "train.batch_size=16"]


@pytest.fixture(scope="session")
def trained_run(ray_session, tmp_path_factory) -> dict:
    """build -> train -> evaluate once per session on the tiny synthetic run, as a user runs it:
    `llmrec run` in its own process (its own Ray): {"cfg", "overrides", "build", "train",
    "evaluate"} (the stages' summaries, from the run's summary.json) and "cli" (its return code,
    stdout and stderr). Tests may train this run again with the same config (it resumes and
    hands back the same model); a test that trains another config on it restores the original
    before it ends, or trains a copy (`fork_run`)."""
    import json
    import subprocess
    import sys

    from llmrec_ray.config import load_config

    tmp = tmp_path_factory.mktemp("e2e")
    repo = tmp / "feature_repo"
    repo.mkdir()
    for name in ("feature_store.yaml", "features.py"):
        shutil.copy(ROOT / "feature_repo" / name, repo / name)
    overrides = tiny_overrides(tmp, repo)
    cfg = load_config(None, overrides)
    cmd = [sys.executable, "-m", "llmrec_ray.cli", "run"] + [a for o in overrides for a in ("--set", o)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT,
                         env={**os.environ, "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"})
    assert out.returncode == 0, out.stdout + out.stderr
    summary = json.loads((cfg.run_dir / "summary.json").read_text())
    return {"cfg": cfg, "overrides": overrides, "build": summary["build_features"],
            "train": summary["train"], "evaluate": summary["evaluate"],
            "cli": {"returncode": out.returncode, "stdout": out.stdout, "stderr": out.stderr}}


def fork_run(cfg, output_dir: Path, **train):
    """A copy of run `cfg` under `output_dir` (its saved dataset; no model yet) on the same
    features, with the `train` settings given changed and export off: training it leaves the
    shared run, its model and its Feast views as they are."""
    dst = Path(output_dir) / cfg.name
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copytree(cfg.run_dir / "dataset", dst / "dataset")
    fork = cfg.model_copy(update={"output_dir": str(output_dir)}, deep=True)
    fork.train.export = False
    for key, value in train.items():
        setattr(fork.train, key, value)
    return fork
