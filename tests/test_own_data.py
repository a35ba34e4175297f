"""A new user's own data, end to end, as the README's worked example runs it: configs/example.yaml
over configs/example/ (RFC 4180 CSVs with quoted newlines, products without a name, a
description or any text, no ratings, no timestamps, no split), `llmrec run` in its own process.
Then the guard against one run's build replacing another run's features."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from llmrec_ray.config import load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "example.yaml"


def llmrec(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmrec_ray.cli", *args], capture_output=True,
                          text=True, timeout=900, cwd=ROOT,
                          env={**os.environ, "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"})


def sets(overrides: list[str]) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


@pytest.fixture(scope="module")
def example_run(tmp_path_factory) -> dict:
    import shutil

    tmp = tmp_path_factory.mktemp("own")
    repo = tmp / "feature_repo"
    repo.mkdir()
    for name in ("feature_store.yaml", "features.py"):
        shutil.copy(ROOT / "feature_repo" / name, repo / name)
    overrides = [f"output_dir={tmp / 'runs'}", f"featurestore.repo_path={repo}", "train.epochs=3",
                 "evaluate.baselines=[popularity,ease]"]
    out = llmrec("run", "--config", str(CONFIG), *sets(overrides))
    assert out.returncode == 0, out.stdout + out.stderr
    cfg = load_config(str(CONFIG), overrides)
    return {"cfg": cfg, "overrides": overrides, "out": out, "repo": repo,
            "summary": json.loads((cfg.run_dir / "summary.json").read_text())}


def example_files() -> tuple[list[dict], list[dict]]:
    with open(ROOT / "configs" / "example" / "products.csv", newline="", encoding="utf-8") as f:
        products = list(csv.DictReader(f))
    with open(ROOT / "configs" / "example" / "purchases.csv", newline="", encoding="utf-8") as f:
        purchases = list(csv.DictReader(f))
    return products, purchases


def test_the_example_files_are_what_real_exports_look_like() -> None:
    products, purchases = example_files()
    assert set(purchases[0]) == {"customer", "sku"}  # no timestamp, no rating, no split
    assert any("\n" in p["about"] for p in products)  # quoted newlines
    assert any(not p["name"] and p["about"] for p in products)
    assert any(p["name"] and not p["about"] for p in products)
    assert any(not (p["name"] or p["shelf"] or p["about"]) for p in products)


def test_the_example_runs_end_to_end_and_keeps_every_row(example_run) -> None:
    products, purchases = example_files()
    s, out = example_run["summary"], example_run["out"].stdout
    build = s["build_features"]
    assert build["data"]["interactions"] == {"in": len(purchases), "accepted": len(purchases), "rejected": 0}
    assert build["data"]["items"] == {"in": len(products), "accepted": len(products), "rejected": 0}
    no_text = sum(1 for p in products if not (p["name"] or p["shelf"] or p["about"]))
    assert build["encode"]["items_without_text"] == no_text
    assert f"items without text: {no_text}" in out
    split = build["random_split"]
    assert split["test"] > 0.15 * len(purchases) and split["valid"] > 0
    assert "split         random (seeded)" in out
    metrics = s["evaluate"]["metrics"]["all"]
    assert metrics["hybrid"]["recall@20"] > metrics["popularity"]["recall@20"]


def test_items_without_text_get_no_shared_text_vector(example_run) -> None:
    from llmrec_ray.featurestore import open_repo
    from llmrec_ray.views import ITEM_TEXT_VIEW, embedding_matrix

    products, _ = example_files()
    empty = {p["sku"] for p in products if not (p["name"] or p["shelf"] or p["about"])}
    repo = open_repo(example_run["cfg"].featurestore)
    items = repo.read_view(ITEM_TEXT_VIEW)
    is_empty = np.isin(np.asarray(items.column("item_id").to_pylist()), sorted(empty))
    emb = embedding_matrix(items.column("embedding"))
    assert is_empty.sum() == len(empty)
    assert not emb[is_empty].any()  # the zero vector: no text vector
    assert (np.asarray(items.column("n_tokens"))[is_empty] == 0).all()
    assert (np.abs(emb[~is_empty]).sum(axis=1) > 0).all()


def test_text_less_items_are_told_apart_by_the_hybrid_and_by_text_ease(example_run) -> None:
    """The trained hybrid gives two text-less items with training interactions different
    vectors (their IDs); text_ease's text graph gives them no neighbours."""
    import torch

    from llmrec_ray.artifacts import load_model
    from llmrec_ray.models.text_ease import text_graph
    from llmrec_ray.recommender import has_text

    cfg = example_run["cfg"]
    products, purchases = example_files()
    empty = sorted({p["sku"] for p in products if not (p["name"] or p["shelf"] or p["about"])})
    model = load_model(cfg.run_dir)
    vocab_items = list(model.vocab["items"])
    known = [i for i in empty if i in vocab_items][:2]
    assert len(known) == 2, "the example has text-less items with purchases"
    idx = torch.tensor([vocab_items.index(i) for i in known])
    with torch.inference_mode():
        v = model.item_vectors(torch.zeros(2, model.hparams["item_dim"]), idx).numpy()
    assert not np.allclose(v[0], v[1], atol=1e-4)
    text = np.eye(5, dtype=np.float32)[:, :4]  # item 4: no text
    assert (~has_text(text)).tolist() == [False, False, False, False, True]
    g = text_graph(text, neighbors=3)
    assert np.count_nonzero(g[4]) == 1 and g[4, 4] > 0  # only itself


def test_a_build_refuses_to_replace_another_runs_features(example_run) -> None:
    overrides = example_run["overrides"] + ["name=other"]
    out = llmrec("build-features", "--config", str(CONFIG), *sets(overrides))
    assert out.returncode != 0
    assert "holds the features of run 'example'" in out.stderr + out.stdout
    assert "--overwrite" in out.stderr + out.stdout
    # the example run can still be evaluated on its features
    manifest = json.loads((example_run["repo"] / "data" / "manifest.json").read_text())
    assert manifest["run"] == "example"


def test_a_missing_repo_path_becomes_a_repository_with_the_shared_declarations(tmp_path) -> None:
    from llmrec_ray.featurestore import PROJECT_REPO, create_repo

    path = tmp_path / "runs" / "mine" / "feature_repo"
    assert create_repo(path) == path.resolve()
    for name in ("feature_store.yaml", "features.py"):
        assert (path / name).read_text() == (PROJECT_REPO / name).read_text()
    assert create_repo(path) is None  # an existing repository is left as it is
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("not a repo")
    assert create_repo(tmp_path / "other") is None  # nor is a directory holding anything
