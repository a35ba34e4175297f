"""Training (`pipeline.train_stage`) on the session's tiny run (conftest `trained_run`): the
summary's epochs, validation and early stopping, the served checkpoint, a rerun that resumes, and
configs that fail before any training. Two more fits run here: the rerun (nothing left to train)
and one early-stopped training, with a crashed worker, on a copy of the run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import fork_run

from llmrec_ray import pipeline
from llmrec_ray.cli import main
from llmrec_ray.config import ConfigError, load_config

# internal: the served checkpoint's file name and loader (repoint here if they move again)
from llmrec_ray.artifacts import MODEL_FILE, load_model


def served_checkpoint(cfg) -> dict:
    return torch.load(cfg.run_dir / "model" / MODEL_FILE, map_location="cpu", weights_only=True)


def last_train_summary(cfg) -> dict:
    """The summary the last training of this run wrote with its model (<run_dir>/summary.json)."""
    return json.loads((cfg.run_dir / "summary.json").read_text())["train"]


# ---- the summary of the shared run's training -----------------------------------------------------

def test_summary_counts_the_epochs_and_keeps_the_best_one(trained_run):
    cfg, s = trained_run["cfg"], trained_run["train"]
    t = cfg.train
    key = f"valid_{t.early_stopping_metric}"
    assert s["model_kind"] == "two_tower" and s["resumed_from"] == 0
    assert s["epochs"] == t.epochs and "max_epochs" not in s
    history = s["valid_history"]
    assert len(history) == s["epochs_run"] and 1 <= s["epochs_run"] <= t.epochs
    # the kept model is the best validation epoch's (the first of equal ones)
    assert s[key] == max(history) and s["best_epoch"] == history.index(max(history)) + 1
    # early stopping: stopped after `patience` epochs without improvement, else ran every epoch
    if s["stopped_early"]:
        assert s["epochs_run"] - s["best_epoch"] == t.early_stopping_patience
    else:
        assert s["epochs_run"] == t.epochs and s["epochs_run"] - s["best_epoch"] < t.early_stopping_patience
    # the split's fit rows are the training rows, joined once and kept for every epoch (a few
    # hundred rows against the object store; the cluster job streams them: test_cluster.py)
    assert s["rows"] == s["split"]["fit"] > 0
    assert t.materialize == "auto" and s["dataset"] == "materialized"


def test_fewer_fit_rows_than_one_batch_per_worker_is_an_error_before_training():
    from llmrec_ray.train import batches_per_epoch

    assert batches_per_epoch(1000, 128, 2) == 3
    assert batches_per_epoch(256, 128, 2) == 1
    with pytest.raises(ValueError, match="255 fit rows are fewer than one batch of 128 rows for each of 2"):
        batches_per_epoch(255, 128, 2)


def test_the_training_rows_are_kept_when_they_take_a_tenth_of_the_object_store():
    from llmrec_ray.train_data import ROW_BYTES, keep_rows

    store = 1e9
    fits = int(store / 10 // ROW_BYTES)
    assert keep_rows("auto", fits, store) and not keep_rows("auto", fits + 1, store)
    assert keep_rows(True, 10**12, store) and not keep_rows(False, 10, store)
    assert not keep_rows("auto", 1, 0)  # no object store reported: stream


def test_the_loss_falls(trained_run):
    s = trained_run["train"]
    # measured 2.95 -> 2.48 over the 8 epochs
    assert s["final_loss"] < 0.95 * s["first_loss"], (s["first_loss"], s["final_loss"])


# ---- the served checkpoint ------------------------------------------------------------------------

def test_checkpoint_holds_weights_kind_vocabulary_and_the_best_epoch(trained_run):
    from llmrec_ray.build import load_saved_dataset

    cfg = trained_run["cfg"]
    state, summary = served_checkpoint(cfg), last_train_summary(cfg)
    assert state["kind"] == "two_tower"
    assert "optimizer" not in state  # the served model: no optimizer state
    assert state["fingerprint"] == summary["fingerprint"]
    # the best epoch's weights, with its validation value
    assert state["train_state"]["epoch"] == summary["best_epoch"]
    assert state["train_state"]["valid"] == pytest.approx(summary[f"valid_{cfg.train.early_stopping_metric}"])
    # the vocabulary: every item of the catalogue; the users and items of the fit rows
    tables = load_saved_dataset(cfg.run_dir)
    vocab = state["vocab"]
    catalogue = sorted(tables["items"].column("item_id").to_pylist())
    assert vocab["items"] == catalogue and len(catalogue) == 40
    users = set(tables["interactions"].column("user_id").to_pylist())
    assert vocab["users"] == sorted(vocab["users"]) and 0 < len(vocab["users"]) and set(vocab["users"]) <= users
    assert set(vocab["trained_items"]) <= set(catalogue) and vocab["trained_items"]
    # load_model rebuilds it from the hyperparameters: the same weights, in eval mode, with vocab
    model = load_model(cfg.run_dir)
    assert not model.training and model.vocab == vocab
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, state["state_dict"][name]), name


def test_load_model_refuses_a_missing_model_or_one_without_vocabulary(trained_run, tmp_path):
    cfg = trained_run["cfg"]
    fork = fork_run(cfg, tmp_path / "runs")
    with pytest.raises(FileNotFoundError, match="no trained model"):
        load_model(fork.run_dir)
    state = served_checkpoint(cfg)
    del state["vocab"]
    (fork.run_dir / "model").mkdir()
    torch.save(state, fork.run_dir / "model" / MODEL_FILE)
    with pytest.raises(ValueError, match="without its vocabulary"):
        load_model(fork.run_dir)
    # and through the stages: recommending from such a model fails with that message
    user = served_checkpoint(cfg)["vocab"]["users"][0]
    with pytest.raises(ValueError, match="without its vocabulary"):
        pipeline.recommend_stage(fork, user, 3)


def crash_once_after_epoch(marker: Path, epoch: int):
    """The production training loop, with a fault injected from outside it: on the first attempt,
    rank 0's process dies right after reporting `epoch`'s checkpoint (`marker` records it)."""
    def loop(config):
        import os
        import time

        import ray.train

        from llmrec_ray.train_worker import train_loop_per_worker

        if ray.train.get_context().get_world_rank() == 0 and not marker.exists():
            report = ray.train.report

            def report_then_crash(metrics, *args, **kwargs):
                report(metrics, *args, **kwargs)
                if metrics.get("epoch") == epoch:
                    time.sleep(5)  # let the controller register the report before the crash
                    marker.write_text("crashed once")
                    os._exit(1)

            ray.train.report = report_then_crash
        train_loop_per_worker(config)

    return loop


# ---- training again --------------------------------------------------------------------------------

def test_a_rerun_with_the_same_config_resumes_and_hands_back_the_same_model(trained_run):
    """The same training started again finds its checkpoints (the run is named by the
    training's fingerprint), trains nothing more and writes the same served model back."""
    cfg = trained_run["cfg"]
    before, before_summary = served_checkpoint(cfg), last_train_summary(cfg)
    again = pipeline.train_stage(cfg)
    assert again["fingerprint"] == before_summary["fingerprint"]
    assert again["resumed_from"] == before_summary["epochs_run"]  # nothing left to do
    for key in ("epochs_run", "best_epoch", "stopped_early", "valid_history", "first_loss"):
        assert again[key] == before_summary[key], key
    assert again["final_loss"] == pytest.approx(before_summary["final_loss"])
    after = served_checkpoint(cfg)
    assert after["train_state"] == before["train_state"] and after["vocab"] == before["vocab"]
    for name, tensor in before["state_dict"].items():
        assert torch.equal(after["state_dict"][name], tensor), name


def test_early_stopping_ends_a_training_that_does_not_improve_across_a_crashed_worker(trained_run, tmp_path):
    """A learning rate of 1e-9 leaves the model as it was initialised, so the validation metric
    never improves after epoch 1: with patience 2 the training stops after epoch 3 of 8 and
    serves epoch 1's model. Rank 0's process dies right after epoch 1's checkpoint: Ray Train
    restarts the worker group from that checkpoint, with the early-stopping state it holds (a
    restart that lost it would take epoch 2 for the best and stop after epoch 4). (On a copy of
    the run: the shared model stays.)"""
    cfg = trained_run["cfg"]
    fork = fork_run(cfg, tmp_path / "runs", lr=1e-9, early_stopping_patience=2)
    marker = tmp_path / "crashed"
    s = pipeline.train_stage(fork, loop=crash_once_after_epoch(marker, 1))
    assert marker.exists()  # the worker did crash
    assert s["epochs"] == cfg.train.epochs == 8 and s["epochs_run"] == 3 and s["stopped_early"]
    assert s["best_epoch"] == 1 and s["resumed_from"] == 1
    assert np.isfinite(s["final_loss"])
    assert len(s["valid_history"]) == 3 and len(set(s["valid_history"])) == 1
    assert served_checkpoint(fork)["train_state"]["epoch"] == 1
    assert "exported_online" not in s  # export off: the shared run's tower views are untouched
    assert served_checkpoint(cfg)["fingerprint"] != s["fingerprint"]


# ---- configs that fail before training -------------------------------------------------------------

def test_an_unknown_model_is_a_config_error_naming_the_key(trained_run, capsys):
    cfg = trained_run["cfg"]
    with pytest.raises(ConfigError, match=r"train\.model: Input should be 'two_tower', 'hybrid' or 'llm_graph'"):
        load_config(None, trained_run["overrides"] + ["train.model=mlp"])
    before = (cfg.run_dir / "model" / MODEL_FILE).stat().st_mtime_ns
    argv = ["train"] + [a for o in trained_run["overrides"] + ["train.model=mlp"] for a in ("--set", o)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("config error:") and "train.model: Input should be" in err, err
    assert (cfg.run_dir / "model" / MODEL_FILE).stat().st_mtime_ns == before  # nothing trained


def test_training_on_features_of_another_encoder_fails_before_fitting(trained_run):
    cfg = trained_run["cfg"]
    other = load_config(None, trained_run["overrides"] + ["encode.pooling=max"])
    with pytest.raises(ValueError, match=r"built by run 'tiny' with encoder .*pool=mean.*pool=max.*build-features"):
        pipeline.train_stage(other)
    with pytest.raises(ValueError, match="built by run 'tiny'"):
        pipeline.train_stage(cfg.model_copy(update={"name": "another"}))


def test_model_batches_cut_every_fetch_into_full_shuffled_batches() -> None:
    """Ray Data hands over FETCH_BATCHES batches at a time; the worker cuts them into model
    batches: every row once (but the last partial batch), remainders carried across fetches,
    batches not in the shard's order."""
    import torch

    from llmrec_ray.train_worker import FETCH_BATCHES, model_batches

    class Shard:
        def __init__(self, n: int):
            self.rows = torch.arange(n)

        def iter_torch_batches(self, batch_size, local_shuffle_buffer_size, local_shuffle_seed):
            assert batch_size == 4 * FETCH_BATCHES and local_shuffle_buffer_size == 4 * batch_size
            for lo in range(0, len(self.rows), batch_size - 3):  # fetches that do not divide
                yield {"item_idx": self.rows[lo:lo + batch_size - 3],
                       "other": 10 * self.rows[lo:lo + batch_size - 3]}

    n = 10 * 4 * FETCH_BATCHES + 7
    batches = list(model_batches(Shard(n), 4, seed=0))
    assert all(len(b["item_idx"]) == 4 for b in batches)
    seen = torch.cat([b["item_idx"] for b in batches])
    assert len(seen) == n - n % 4 and len(set(seen.tolist())) == len(seen)  # each row at most once
    assert all(torch.equal(b["other"], 10 * b["item_idx"]) for b in batches)  # columns stay aligned
    assert not torch.equal(seen, torch.sort(seen).values)  # shuffled
    again = torch.cat([b["item_idx"] for b in model_batches(Shard(n), 4, seed=0)])
    assert torch.equal(seen, again)  # seeded
