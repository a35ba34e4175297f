"""The `llmrec` command line and the Ray job entrypoints that wrap it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from llmrec_ray.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_bad_config_key_is_named(capsys):
    assert main(["train", "--set", "encode.batchsize=3"]) == 2
    err = capsys.readouterr().err
    assert "encode.batchsize" in err and "not permitted" in err


def test_bad_yaml_key_is_named(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  epoch: 3\n")
    assert main(["evaluate", "--config", str(cfg)]) == 2
    assert f"{cfg}: train.epoch" in capsys.readouterr().err


def test_missing_features_is_a_clear_error(tmp_path, capsys):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "feature_store.yaml").write_text((ROOT / "feature_repo" / "feature_store.yaml").read_text())
    code = main(["recommend", "--user", "u1", "--set", f"featurestore.repo_path={repo}",
                 "--set", f"output_dir={tmp_path / 'runs'}"])
    assert code == 1
    assert "run `llmrec build-features` first" in capsys.readouterr().err


def test_a_data_error_is_one_line_and_a_bug_keeps_its_traceback(tmp_path, monkeypatch, capsys):
    """What a person fixes (ConfigError / ValueError naming the file and row) is one line; a bare
    KeyError from a bug is not dressed up as one: it leaves main with its traceback."""
    from llmrec_ray import pipeline

    argv = ["build-features", "--set", f"output_dir={tmp_path}"]
    bad_row = f"{tmp_path}/items.csv row 3: item_id is empty"

    def data_error(cfg, overwrite):
        raise ValueError(bad_row)

    monkeypatch.setattr(pipeline, "build_stage", data_error)
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == f"error: {bad_row}" and "Traceback" not in err

    def bug(cfg, overwrite):
        return {}["encoded"]

    monkeypatch.setattr(pipeline, "build_stage", bug)
    with pytest.raises(KeyError, match="encoded"):
        main(argv)
    assert "error: 'encoded'" not in capsys.readouterr().err


def test_ml100k_without_its_variable_is_one_line_on_how_to_get_the_data(monkeypatch, capsys):
    monkeypatch.delenv("LLMREC_ML100K", raising=False)
    assert main(["run", "--config", str(ROOT / "configs" / "ml-100k.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "LLMREC_ML100K is not set" in err and "https://grouplens.org/datasets/movielens/100k/" in err


@pytest.mark.parametrize("job,stage", [("run", "run"), ("build_features", "build-features"),
                                       ("train", "train"), ("evaluate", "evaluate"),
                                       ("recommend", "recommend")])
def test_job_entrypoints_call_their_stage(job, stage):
    out = subprocess.run([sys.executable, str(ROOT / "jobs" / f"{job}.py"), "--help"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert f"usage: llmrec {stage}" in out.stdout
