"""Train a recommender (two-tower, hybrid or the LLM graph model) with Ray Train on features
fetched from Feast: the driver side.

`fit` builds the ID vocabulary of the fit rows, retrieves the training rows (`train_data.py`),
sets up the model kind (`MODEL_SETUPS`), starts a `TorchTrainer` running
`train_worker.train_loop_per_worker` (DDP; gloo on CPU, NCCL on GPU), shows rank 0's epochs as
they come (`EpochBoard`), and saves the best epoch's model (`artifacts.py`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from llmrec_ray.artifacts import MODEL_FILE, save_model
from llmrec_ray.console import progress
from llmrec_ray.featurestore import FeatureRepo
from llmrec_ray.models.age import days_by_id, released_days
from llmrec_ray.model_inputs import USER_EXTRA_DIM, latest_item_vectors, validation_data
from llmrec_ray.models.vocab import vocabulary
from llmrec_ray.train_data import entity_rows, keep_rows, training_dataset
from llmrec_ray.train_worker import train_loop_per_worker

logger = logging.getLogger(__name__)


class EpochBoard:
    """Rank 0's latest epoch metrics, read by the driver for its progress bar (a Ray actor with
    no CPU: it works wherever the workers run)."""

    def __init__(self):
        self.metrics: dict = {}

    def put(self, metrics: dict) -> None:
        self.metrics = {**self.metrics, **metrics} if "step" in metrics else metrics

    def get(self) -> dict:
        return self.metrics


def _watch(board, bar, key: str, stop) -> None:
    """Driver thread: the board's epoch metrics -> the progress bar, every second."""
    import ray

    while not stop.wait(1.0):
        try:
            m = ray.get(board.get.remote(), timeout=10)
        except Exception:  # the board is gone or slow: the bar waits, training goes on
            continue
        if m.get("step"):  # within an epoch: its batches so far, or its validation
            total = f"/{m['of']:,}" if m.get("of") else ""
            now = (f"epoch {m['epoch_now']}: validating" if m["step"] == "validating" else
                   f"epoch {m['epoch_now']}: {m['batch']:,}{total} batches")
            bar.set(int(m.get("epoch", 0)), now + (f", last epoch's loss {m['loss']:.4f}" if "loss" in m else ""))
        elif m:
            value = m.get(key)
            bar.set(int(m["epoch"]), f"loss {m['loss']:.4f}" + (
                f", {key} {value:.4f} (best epoch {m.get('best_epoch')})" if value is not None else ""))



def torch_threads(kept: bool, use_gpu: bool, workers: int) -> int | None:
    """torch threads of each training worker. Ray gives a worker as many as the CPUs it reserved;
    on a one-node CPU cluster whose training rows were computed before training (`keep_rows`),
    nothing else runs while the workers train, so they share all the node's CPUs instead of
    leaving the ones reserved for the data tasks idle. None = Ray's choice."""
    import ray

    if not kept or use_gpu or len([n for n in ray.nodes() if n.get("Alive")]) != 1:
        return None
    return max(1, int(ray.cluster_resources().get("CPU", 1)) // workers)


def storage_path(cfg) -> str:
    """Ray Train's storage: `train.storage_path` as given (a URI stays a URI; `local://` is
    Ray's own prefix), or the run directory's ray_results as an absolute path. Environment
    variables were expanded when the config was loaded."""
    from llmrec_ray.storage import is_uri

    given = cfg.train.storage_path
    if given is None:
        return str((cfg.run_dir / "ray_results").resolve())
    return given if is_uri(given) or given.startswith("local://") else str(Path(given).expanduser().resolve())


def first_seen_days(interactions: pa.Table, item_ids: list[str]) -> np.ndarray:
    """(I,) each item's first interaction in `interactions`, days since the epoch (NaN: none)."""
    first = interactions.group_by("item_id").aggregate([("event_timestamp", "min")])
    return days_by_id(first, "event_timestamp_min", item_ids)


def item_age_on(t, items: pa.Table, item_ids: list[str]) -> bool:
    """Whether the model gets the item-age term (`train.item_age`; auto: a two-tower or hybrid
    model, and items with release dates)."""
    if t.item_age is False:
        return False
    if t.model == "llm_graph":
        if t.item_age is True:
            raise ValueError("train.item_age: true is for two_tower and hybrid, not llm_graph")
        return False
    known = int(np.isfinite(released_days(items, item_ids)).sum())
    if t.item_age is True and not known:
        raise ValueError("train.item_age: true, but no item has a release date (the items table's "
                         "`released` column)")
    if known:
        logger.info("item_age: release dates of %d of %d items", known, len(item_ids))
    return known > 0


@dataclass
class SetupInputs:
    """What a model kind's setup reads: the fit rows as Feast entity rows (with `user_idx` and
    `item_idx`), the items, and the embedding dimension."""

    repo: FeatureRepo
    interactions: pa.Table
    rows: pa.Table
    items: pa.Table
    item_ids: list[str]
    users: list[str]
    dim: int


@dataclass
class ModelSetup:
    """A model kind's constructor arguments and the loop's hyperparameters. `graph`: an ObjectRef
    every worker builds the model from; `holds_items`: the model keeps its item vectors itself,
    so the workers hold no embedding views."""

    kwargs: dict
    batch_size: int
    lr: float
    epochs: int
    patience: int
    graph: object = None
    holds_items: bool = False


def text_terms(t, data: SetupInputs, kwargs: dict, hybrid: bool) -> dict:
    """The optional terms of the text models: item age (`item_age_on`) and the logQ correction."""
    if item_age_on(t, data.items, data.item_ids):
        kwargs.update(item_age=True, n_age_items=len(data.item_ids),
                      released=released_days(data.items, data.item_ids).tolist())
        if hybrid:
            kwargs["first_seen"] = first_seen_days(data.interactions, data.item_ids).tolist()
    if t.logq:
        counts = np.bincount(data.rows.column("item_idx").to_numpy(),
                             minlength=len(data.item_ids)).astype(np.float64)
        kwargs["logq"] = np.log(np.maximum(counts, 1) / counts.sum()).tolist()
    return kwargs


def two_tower_setup(t, data: SetupInputs, hybrid: bool = False) -> ModelSetup:
    kwargs = dict(user_dim=data.dim, item_dim=data.dim, hidden_dim=t.hidden_dim, out_dim=t.out_dim,
                  dropout=t.dropout, temperature=t.temperature,
                  user_extra_dim=USER_EXTRA_DIM if t.user_stats else 0)
    if hybrid:
        kwargs.update(n_users=len(data.users), n_items=len(data.item_ids), id_dim=t.id_dim,
                      id_dropout=t.id_dropout, id_mode=t.id_mode,
                      user_id_dropout=t.user_id_dropout, text_aux=t.text_aux)
    return ModelSetup(text_terms(t, data, kwargs, hybrid), t.batch_size, t.lr, t.epochs,
                      t.early_stopping_patience)


def hybrid_setup(t, data: SetupInputs) -> ModelSetup:
    return two_tower_setup(t, data, hybrid=True)


def llm_graph_setup(t, data: SetupInputs) -> ModelSetup:
    """The graph model: its (user, item) edges and item text vectors go to the workers once."""
    import ray

    item_age_on(t, data.items, data.item_ids)  # (refuses item_age: true)
    g = t.graph
    kwargs = dict(item_dim=data.dim, n_users=len(data.users), n_items=len(data.item_ids),
                  hidden_dim=g.hidden_dim, out_dim=t.out_dim, layers=g.layers,
                  temperature=g.temperature, negatives=g.negatives)
    pairs = np.unique(np.stack([data.rows.column("user_idx").to_numpy(),
                                data.rows.column("item_idx").to_numpy()], 1), axis=0)
    graph = ray.put({"edge_users": pairs[:, 0], "edge_items": pairs[:, 1],
                     "item_emb": latest_item_vectors(data.repo, data.item_ids)})
    return ModelSetup(kwargs, g.batch_size, g.lr, g.epochs, g.patience, graph, holds_items=True)


# train.model -> its setup: adding a model kind is a setup here and a class in artifacts.build_model
MODEL_SETUPS = {"two_tower": two_tower_setup, "hybrid": hybrid_setup, "llm_graph": llm_graph_setup}


def training_rows(t, repo: FeatureRepo, rows: pa.Table):
    """The training rows retrieved from Feast -> (Ray Dataset, held views, whether the rows were
    computed now and kept in the object store: `keep_rows`, or forced when the workers would leave
    the retrieval's tasks no CPU)."""
    import ray

    ds, tables = training_dataset(repo, rows)
    resources = ray.cluster_resources()
    keep = keep_rows(t.materialize, rows.num_rows, resources.get("object_store_memory", 0))
    if not keep and t.num_workers * t.cpus_per_worker > resources.get("CPU", 0) - 1:
        # The workers leave no CPU for the dataset's map tasks, which would wait for ever:
        # run them now, before the workers take the cluster.
        logger.warning("train.materialize=%s, but %d worker(s) x %s CPUs leave no CPU for the "
                       "retrieval's tasks: the training rows are computed before training",
                       t.materialize, t.num_workers, t.cpus_per_worker)
        keep = True
    if keep:  # the join runs once; every epoch reads the rows from the object store
        ds = ds.materialize()
    return ds, tables, keep


def batches_per_epoch(rows: int, batch_size: int, workers: int) -> int:
    """Full batches each worker trains on per epoch (a last partial batch is dropped). None is a
    model that would learn nothing: an error saying so, before any worker starts."""
    n = rows // (batch_size * workers)
    if n == 0:
        raise ValueError(f"training would run no batch: {rows} fit rows are fewer than one batch of "
                         f"{batch_size} rows for each of {workers} worker(s); lower train.batch_size "
                         "(train.graph.batch_size for llm_graph) or train.num_workers")
    return n


def fingerprint(cfg, setup: ModelSetup, manifest: dict, split) -> str:
    """The training's identity: model, settings, seed, features and split. The same training
    started again resumes; a changed one starts a run of its own."""
    return hashlib.sha256(json.dumps(
        # (train.materialize changes where the rows come from, not the training)
        [setup.kwargs, cfg.train.model_dump(exclude={"materialize"}), cfg.seed,
         manifest.get("built_at"), split.summary()],
        sort_keys=True, default=str).encode()).hexdigest()[:16]


def make_trainer(cfg, setup: ModelSetup, ds, loop_config: dict, fp: str, scored: bool, loop=None):
    """The TorchTrainer. The run is named by the training's fingerprint: the same training started
    again resumes from its latest checkpoint, a changed one (model, settings, data) starts a run
    of its own; a crashed worker restarts the group from the latest checkpoint, up to
    max_failures times. Every epoch's checkpoint is kept and, when `scored`, scored by the
    validation metric: the best one is the model."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    t = cfg.train
    return TorchTrainer(
        loop or train_loop_per_worker, train_loop_config=loop_config, datasets={"train": ds},
        scaling_config=ScalingConfig(num_workers=t.num_workers, use_gpu=loop_config["use_gpu"],
                                     resources_per_worker={"CPU": t.cpus_per_worker}),
        run_config=RunConfig(name=f"{cfg.name}-{t.model}-{fp}", storage_path=storage_path(cfg),
                             failure_config=FailureConfig(max_failures=t.max_failures),
                             checkpoint_config=CheckpointConfig(
                                 checkpoint_score_attribute=f"valid_{t.early_stopping_metric}" if scored else None,
                                 checkpoint_score_order="max")))


def run_trainer(trainer, board, key: str, label: str, epochs: int):
    """trainer.fit() under a progress bar fed by rank 0's board -> the Ray Train result (its
    error raised)."""
    with progress(label, epochs, "epochs") as bar:
        stop = threading.Event()
        watcher = threading.Thread(target=_watch, args=(board, bar, key, stop), daemon=True)
        watcher.start()
        try:
            result = trainer.fit()
        finally:
            stop.set()
            watcher.join()
        if not result.error:
            bar.set(int(result.metrics["epoch"]))
    if result.error:
        raise result.error
    return result


def summarize(result, state: dict, key: str, base: dict) -> dict:
    """The training summary: `base` plus the epochs run, early stopping, the served epoch, its
    validation value, the first and last loss and the validation history."""
    history = result.metrics_dataframe  # one row per kept checkpoint, in score order
    if history is not None and len(history):
        history = history[history["batches"] > 0].sort_values("epoch").drop_duplicates("epoch", keep="last")
    train_state = state["train_state"]
    summary = {**base, "resumed_from": int(result.metrics.get("resumed_from", 0)),
               "epochs_run": int(result.metrics["epoch"]),
               "stopped_early": bool(result.metrics.get("stopped", False)),
               "best_epoch": int(train_state["epoch"]), key: train_state["valid"],
               "final_loss": float(result.metrics["loss"]),
               "first_loss": float(history["loss"].iloc[0]) if history is not None and len(history) else None}
    if history is not None and key in history:
        summary["valid_history"] = [None if v is None or v != v else float(v) for v in history[key]]
    return summary


def fit(cfg, repo: FeatureRepo, split, items: pa.Table, item_ids: list[str], loop=None) -> dict:
    """Fit on the split's fit rows, early-stopped on its validation queries; save the best
    epoch's model under <run_dir>/model; return a summary. `loop` replaces
    `train_loop_per_worker` (a wrapper around it, e.g. a test injecting a fault)."""
    import ray

    t = cfg.train
    vocab = vocabulary(split.fit, item_ids)
    rows = entity_rows(split.fit, {item: i for i, item in enumerate(item_ids)},
                       {u: k for k, u in enumerate(vocab["users"])})
    prepare = progress(f"train {t.model}: prepare", 2, "steps", brief=True)
    ds, tables, keep = training_rows(t, repo, rows)
    prepare.update(1, "the training rows retrieved from Feast")
    valid = validation_data(repo, split, items, item_ids, vocab)
    prepare.update(1, "the validation queries' features")
    prepare.close()
    manifest = repo.read_manifest()
    data = SetupInputs(repo, split.fit, rows, items, item_ids, vocab["users"], manifest["dim"])
    setup = MODEL_SETUPS[t.model](t, data)
    n_batches = batches_per_epoch(int(rows.num_rows), setup.batch_size, t.num_workers)
    use_gpu = ray.cluster_resources().get("GPU", 0) > 0 if t.use_gpu == "auto" else bool(t.use_gpu)
    fp, key = fingerprint(cfg, setup, manifest, split), f"valid_{t.early_stopping_metric}"
    board = ray.remote(num_cpus=0)(EpochBoard).remote()
    loop_config = {
        "seed": cfg.seed, "epochs": setup.epochs, "batch_size": setup.batch_size, "lr": setup.lr,
        "kind": t.model, "graph": setup.graph, "weight_decay": t.weight_decay, "fingerprint": fp,
        "model": setup.kwargs, "valid": None if valid is None else ray.put(valid),
        "tables": {} if setup.holds_items else tables, "board": board, "use_gpu": use_gpu,
        "batches_per_epoch": n_batches,
        "torch_threads": torch_threads(keep, use_gpu, t.num_workers),
        "metric": t.early_stopping_metric, "patience": setup.patience}
    trainer = make_trainer(cfg, setup, ds, loop_config, fp, valid is not None, loop)
    result = run_trainer(trainer, board, key, f"train {t.model}", setup.epochs)
    best = result.get_best_checkpoint(key, "max") if valid is not None else result.checkpoint
    with best.as_directory() as d:
        state = torch.load(Path(d) / MODEL_FILE, map_location="cpu", weights_only=True)
    served = save_model(state, t.model, vocab, cfg.run_dir)
    summary = summarize(result, state, key, {
        "rows": int(rows.num_rows), "workers": t.num_workers, "use_gpu": use_gpu,
        "dataset": "materialized" if keep else "streamed", "model_kind": t.model,
        "fingerprint": fp, "epochs": setup.epochs, "model": str(served)})
    logger.info("trained %s on %d rows: loss %.4f -> %.4f; model of epoch %d (%s %s)", t.model,
                summary["rows"], summary["first_loss"] or float("nan"), summary["final_loss"],
                summary["best_epoch"], key, summary[key])
    return summary
