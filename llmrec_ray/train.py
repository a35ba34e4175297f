"""Train a recommender (two-tower, hybrid or the LLM graph model) with Ray Train on features
fetched from Feast.

Training rows = the interactions of the training window, each with a unique `row_id`, joined with
the user-history and item-text embeddings by `FeatureStore.get_historical_features` (point in time:
the newest user snapshot at or before the interaction, which never covers the interaction itself)
-> Ray Dataset -> `TorchTrainer` (DDP; gloo on CPU, NCCL on GPU). Every epoch reports the mean
loss and a checkpoint through `ray.train.report`; the driver shows rank 0's epochs as they come
(`EpochBoard`). The checkpoint format and the served model are `artifacts.py`.

Long because the worker loop, its resume / early-stopping state and the driver side that starts
it and reads the result belong together: they share the state's format.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from llmrec_ray.artifacts import MODEL_FILE, build_model, save_model
from llmrec_ray.console import progress
from llmrec_ray.featurestore import FeatureRepo
from llmrec_ray.views import ITEM_TEXT_VIEW, USER_HISTORY_VIEW, USER_STATS_VIEW
from llmrec_ray.models.age import US_PER_DAY, days_by_id, released_days
from llmrec_ray.model_inputs import USER_EXTRA_DIM, latest_item_vectors, retrieved_user_extra, validation_data

logger = logging.getLogger(__name__)

USER_EMB = f"{USER_HISTORY_VIEW}__embedding"
ITEM_EMB = f"{ITEM_TEXT_VIEW}__embedding"


def entity_rows(interactions: pa.Table, item_index: dict[str, int],
                user_index: dict[str, int] | None = None) -> pa.Table:
    """Interactions -> Feast entity rows (Arrow, narrow): row_id, user_id, item_id,
    event_timestamp, item_idx (and user_idx with a `user_index`)."""
    import pyarrow.compute as pc

    def positions(ids, index):
        keys = pa.array(list(index), pa.string())
        pos = pc.index_in(ids, value_set=keys)
        if pos.null_count:
            raise ValueError(f"{pos.null_count} interactions name ids outside the index (first: "
                             f"{ids[pc.index(pos.is_null(), True).as_py()]})")
        values = np.fromiter(index.values(), np.int64, len(index))
        return pa.array(values[pos.to_numpy(zero_copy_only=False)])

    out = interactions.select(["user_id", "item_id", "event_timestamp"]).combine_chunks()
    out = out.add_column(0, "row_id", pa.array(np.arange(out.num_rows, dtype=np.int64)))
    out = out.append_column("item_idx", positions(out.column("item_id"), item_index))
    if user_index is not None:
        out = out.append_column("user_idx", positions(out.column("user_id"), user_index))
    return out


# model input -> (feature view, its embedding column in the retrieval's output)
EMBEDDINGS = {"user_emb": (USER_HISTORY_VIEW, USER_EMB), "item_emb": (ITEM_TEXT_VIEW, ITEM_EMB)}


def to_training_batch(batch: pa.Table) -> dict[str, np.ndarray]:
    """Retrieved rows (Arrow) -> fixed-shape arrays for the trainer. An embedding comes either as
    its vector (fixed-size float32 list -> `user_emb` (B, D)) or, retrieved `by_position`, as the
    position of its row in the view (`user_emb_pos` (B,)), which the trainer looks up in the view
    it holds. A row without its feature row is an error naming its row_id."""
    import pyarrow.compute as pc

    from llmrec_ray.views import embedding_matrix
    from llmrec_ray.retrieval import position_column

    out = {"item_idx": batch.column("item_idx").to_numpy()}
    if "event_timestamp" in batch.column_names:  # (retrieved rows always carry it)
        # each row's time, in days since the epoch (the item-age term: models.age)
        out["query_day"] = batch.column("event_timestamp").cast(pa.timestamp("us", tz="UTC")) \
            .cast(pa.int64()).to_numpy().astype(np.float64) / US_PER_DAY
    for key, (view, col) in EMBEDDINGS.items():
        if position_column(view) in batch.column_names:
            pos = batch.column(position_column(view)).to_numpy()
            missing = np.flatnonzero(pos < 0)
            out[f"{key}_pos"] = pos
        else:
            values = batch.column(col)
            missing = [pc.index(values.is_null(), True).as_py()] if values.null_count else []
        if len(missing):
            row = batch.column("row_id")[int(missing[0])].as_py()
            raise ValueError(f"training row_id {row}: no {col} at its timestamp (point-in-time join "
                             "found no feature row)")
        if key not in out and f"{key}_pos" not in out:
            out[key] = embedding_matrix(values)
    if f"{USER_STATS_VIEW}__n_interactions" in batch.column_names:
        out["user_extra"] = retrieved_user_extra(batch)
    if "user_idx" in batch.column_names:
        out["user_idx"] = batch.column("user_idx").to_numpy()
    return out


def training_dataset(repo: FeatureRepo, interactions: pa.Table, item_index: dict[str, int],
                     user_index: dict[str, int] | None = None, by_position: bool = True):
    """get_historical_features (the `training` feature service) -> (lazy Ray Dataset of model
    inputs, the embedding views the trainer holds).

    by_position (the default): the rows carry each embedding's row position in its view, and the
    second value maps `user_emb`/`item_emb` to (ObjectRef of the view's feature table, column):
    every training worker holds each view once (snapshots x d, items x d) and the rows are a
    few dozen bytes, so memory grows with snapshots + items, not with rows x d. Otherwise the
    rows carry the vectors and the second value is empty."""
    job = repo.retrieval(entity_rows(interactions, item_index, user_index), "training")
    if not by_position:
        return job.to_ray_dataset().map_batches(to_training_batch, batch_format="pyarrow"), {}
    ds = job.to_ray_dataset(by_position=tuple(view for view, _ in EMBEDDINGS.values()))
    refs = job.feature_values()
    tables = {key: (refs[view], col) for key, (view, col) in EMBEDDINGS.items()}
    return ds.map_batches(to_training_batch, batch_format="pyarrow"), tables


ROW_BYTES = 48 + 4 * USER_EXTRA_DIM  # a training row retrieved by position: indices, time, user stats


def keep_rows(mode, rows: int, object_store_bytes: float, row_bytes: int = ROW_BYTES) -> bool:
    """`train.materialize`: whether the training rows are computed once and kept in the object
    store (auto: when `rows` x `row_bytes` is at most a tenth of `object_store_bytes`)."""
    if mode == "auto":
        return rows * row_bytes <= object_store_bytes / 10
    return bool(mode)


def held_tables(tables: dict, device) -> dict[str, torch.Tensor]:
    """On a training worker: each held embedding view as one (rows, D) tensor on `device`."""
    import ray

    from llmrec_ray.views import embedding_matrix

    import warnings

    out = {}
    for key, (ref, col) in tables.items():
        matrix = embedding_matrix(ray.get(ref).column(col))  # (rows, D), zero-copy from the store
        with warnings.catch_warnings():  # read-only object-store memory: only ever indexed
            warnings.simplefilter("ignore", UserWarning)
            out[key] = torch.from_numpy(matrix).to(device)
    return out


def _restore(model: torch.nn.Module, opt, fingerprint: str) -> dict:
    """Load the latest checkpoint of this run if it was made by the same training (fingerprint:
    model, hyper-parameters and training data). Returns the training state: epochs done, their
    last loss and validation value, the best validation value and its epoch, epochs without
    improvement, and whether early stopping ended the run."""
    import ray.train

    state = {"epoch": 0, "loss": None, "valid": None, "best": None, "best_epoch": 0, "bad": 0,
             "stopped": False}
    ckpt = ray.train.get_checkpoint()
    if ckpt is None:
        return state
    with ckpt.as_directory() as d:
        saved = torch.load(Path(d) / MODEL_FILE, map_location="cpu", weights_only=True)
    if saved.get("fingerprint") != fingerprint:
        logger.warning("checkpoint %s belongs to another training (model, data or settings "
                       "changed): starting from scratch", ckpt.path)
        return state
    model.load_state_dict(saved["state_dict"])
    opt.load_state_dict(saved["optimizer"])
    state.update(saved["train_state"])
    logger.info("resumed from %s after epoch %d", ckpt.path, state["epoch"])
    return state


def _save(model, opt, metrics: dict, fingerprint: str, state: dict | None = None) -> None:
    """Report `metrics` with a checkpoint: weights, optimizer, and the training state."""
    import ray.train

    inner = model.module if hasattr(model, "module") else model
    train_state = {"epoch": metrics["epoch"], "loss": metrics["loss"],
                   "valid": next((v for k, v in metrics.items() if k.startswith("valid_")), None),
                   "best": None, "best_epoch": metrics.get("best_epoch", 0), "bad": 0,
                   "stopped": bool(metrics.get("stopped", False))}
    if state is not None:
        train_state.update(best=state["best"], bad=state["bad"])
    with tempfile.TemporaryDirectory() as tmp:
        torch.save({"state_dict": inner.state_dict(), "hparams": inner.hparams,
                    "optimizer": opt.state_dict(), "train_state": train_state,
                    "fingerprint": fingerprint}, Path(tmp) / MODEL_FILE)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def _validate(model, valid, metric: str, ctx) -> float:
    """The early-stopping metric on the validation queries: computed on rank 0, broadcast so that
    every worker takes the same decision (DDP needs them to stop together)."""
    import ray.train.torch

    value = torch.zeros(1, device=ray.train.torch.get_device())
    if ctx.get_world_rank() == 0:
        from llmrec_ray.recommender import TrainedModel, metric_on

        model.eval()
        value[0] = metric_on(TrainedModel(model), valid, metric)
        model.train()
    if ctx.get_world_size() > 1:
        torch.distributed.broadcast(value, src=0)
    return float(value[0])


BOARD_EVERY_S = 2.0  # rank 0 posts its batches so far this often (the bar shows them)


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


FETCH_BATCHES = 64  # model batches per Ray Data batch (its per-batch cost spread over them)


def model_batches(shard, batch_size: int, seed: int):
    """The worker's shard in shuffled batches of `batch_size` rows (the last partial one dropped).
    Ray Data hands over FETCH_BATCHES batches at a time (from a local shuffle buffer of four such
    fetches), which are shuffled again and cut here: its per-batch cost (collating Arrow into
    tensors) is paid once per fetch, not once per model batch."""
    fetch = batch_size * FETCH_BATCHES
    g = torch.Generator().manual_seed(seed)
    carry: dict[str, torch.Tensor] | None = None
    for chunk in shard.iter_torch_batches(batch_size=fetch, local_shuffle_buffer_size=4 * fetch,
                                          local_shuffle_seed=seed):
        if carry is not None:  # the previous fetch's remainder goes first
            chunk = {k: torch.cat([carry[k], v]) for k, v in chunk.items()}
        n = len(next(iter(chunk.values())))
        order = torch.randperm(n, generator=g)
        full = n - n % batch_size
        for lo in range(0, full, batch_size):
            idx = order[lo:lo + batch_size]
            yield {k: v[idx] for k, v in chunk.items()}
        rest = order[full:]
        carry = {k: v[rest] for k, v in chunk.items()} if len(rest) else None


def train_loop_per_worker(config: dict) -> None:
    """Runs on every Ray Train worker: resumes from this run's latest checkpoint (a restarted
    worker group after a crash, or the same run started again), then one checkpoint per epoch,
    each with the validation metric; stops early when it has not improved for `patience` epochs."""
    import ray
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    if config.get("torch_threads"):
        torch.set_num_threads(int(config["torch_threads"]))
    torch.manual_seed(config["seed"] + ctx.get_world_rank())
    graph = ray.get(config["graph"]) if config.get("graph") is not None else None
    model = build_model(config["kind"], config["model"], graph)
    model = ray.train.torch.prepare_model(model)
    opt = torch.optim.AdamW(model.parameters(), lr=config["lr"], weight_decay=config["weight_decay"])
    inner = model.module if hasattr(model, "module") else model
    state = _restore(inner, opt, config["fingerprint"])
    start = state["epoch"]
    shard = ray.train.get_dataset_shard("train")
    held = held_tables(config.get("tables") or {}, ray.train.torch.get_device())
    valid = ray.get(config["valid"]) if config.get("valid") is not None else None
    metric, patience = config["metric"], config["patience"]
    key = f"valid_{metric}"
    if start >= config["epochs"] or state["stopped"]:  # finished before: hand back the same model
        metrics = {"epoch": start, "loss": state["loss"], "batches": 0, "resumed_from": start,
                   key: state["valid"], "best_epoch": state["best_epoch"], "stopped": state["stopped"]}
        if ctx.get_world_rank() == 0:
            _save(model, opt, metrics, config["fingerprint"], state)
        else:
            ray.train.report(metrics)
        return
    board = config.get("board") if ctx.get_world_rank() == 0 else None
    for epoch in range(start, config["epochs"]):
        model.train()
        total, batches, shown = 0.0, 0, time.monotonic()
        for batch in model_batches(shard, config["batch_size"], config["seed"] + epoch):
            for name, table in held.items():  # rows retrieved by position: (B,) -> (B, D)
                batch[name] = table[batch.pop(f"{name}_pos")]
            loss = model(batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach())
            batches += 1
            if board is not None and time.monotonic() - shown >= BOARD_EVERY_S:  # the batches so far
                shown = time.monotonic()
                board.put.remote({"step": "batches", "epoch_now": epoch + 1, "batch": batches,
                                  "of": config.get("batches_per_epoch")})
        metrics = {"epoch": epoch + 1, "loss": total / max(batches, 1), "batches": batches,
                   "resumed_from": start}
        if valid is not None:
            if board is not None:
                board.put.remote({"step": "validating", "epoch_now": epoch + 1})
            value = _validate(inner, valid, metric, ctx)
            if state["best"] is None or value > state["best"] + 1e-9:
                state.update(best=value, best_epoch=epoch + 1, bad=0)
            else:
                state["bad"] += 1
            state["stopped"] = patience > 0 and state["bad"] >= patience
            metrics.update({key: value, "best_epoch": state["best_epoch"], "stopped": state["stopped"]})
        else:
            metrics.update({key: None, "best_epoch": epoch + 1, "stopped": False})
        if ctx.get_world_rank() == 0:
            _save(model, opt, metrics, config["fingerprint"], state)
            if config.get("board") is not None:
                config["board"].put.remote(metrics)
        else:
            ray.train.report(metrics)
        if state["stopped"]:
            if ctx.get_world_rank() == 0:
                logger.info("early stop after epoch %d: %s best %.4f at epoch %d", epoch + 1, key,
                            state["best"], state["best_epoch"])
            break


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


def fit(cfg, repo: FeatureRepo, split, items: pa.Table, item_ids: list[str], loop=None) -> dict:
    """Fit on the split's fit rows, early-stopped on its validation queries; save the best
    epoch's model under <run_dir>/model; return a summary. `loop` replaces
    `train_loop_per_worker` (a wrapper around it, e.g. a test injecting a fault)."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    item_index = {item: i for i, item in enumerate(item_ids)}
    t = cfg.train
    train_interactions = split.fit
    users = sorted(set(train_interactions.column("user_id").to_pylist()))
    user_index = {u: k for k, u in enumerate(users)}
    trained = sorted(set(train_interactions.column("item_id").to_pylist()))
    vocab = {"users": users, "items": list(item_ids), "trained_items": trained}
    prepare = progress(f"train {t.model}: prepare", 2, "steps", brief=True)
    ds, tables = training_dataset(repo, train_interactions, item_index, user_index)
    resources = ray.cluster_resources()
    keep = keep_rows(t.materialize, train_interactions.num_rows, resources.get("object_store_memory", 0))
    if not keep and t.num_workers * t.cpus_per_worker > resources.get("CPU", 0) - 1:
        # The workers leave no CPU for the dataset's map tasks, which would wait for ever:
        # run them now, before the workers take the cluster.
        logger.warning("train.materialize=%s, but %d worker(s) x %s CPUs leave no CPU for the "
                       "retrieval's tasks: the training rows are computed before training",
                       t.materialize, t.num_workers, t.cpus_per_worker)
        keep = True
    if keep:  # the join runs once; every epoch reads the rows from the object store
        ds = ds.materialize()
    prepare.update(1, "the training rows retrieved from Feast")
    valid = validation_data(repo, split, items, item_ids, vocab)
    prepare.update(1, "the validation queries' features")
    prepare.close()
    manifest = repo.read_manifest()
    dim = manifest["dim"]
    graph = None
    batch_size, lr, epochs, patience = t.batch_size, t.lr, t.epochs, t.early_stopping_patience
    model_kwargs = dict(user_dim=dim, item_dim=dim, hidden_dim=t.hidden_dim, out_dim=t.out_dim,
                        dropout=t.dropout, temperature=t.temperature,
                        user_extra_dim=USER_EXTRA_DIM if t.user_stats else 0)
    if t.model == "llm_graph":
        g = t.graph
        batch_size, lr, epochs, patience = g.batch_size, g.lr, g.epochs, g.patience
        model_kwargs = dict(item_dim=dim, n_users=len(users), n_items=len(item_ids),
                            hidden_dim=g.hidden_dim, out_dim=t.out_dim, layers=g.layers,
                            temperature=g.temperature, negatives=g.negatives)
        edges = entity_rows(train_interactions, item_index, user_index)
        pairs = np.unique(np.stack([edges.column("user_idx").to_numpy(),
                                    edges.column("item_idx").to_numpy()], 1), axis=0)
        graph = ray.put({"edge_users": pairs[:, 0], "edge_items": pairs[:, 1],
                         "item_emb": latest_item_vectors(repo, item_ids)})
        tables = {}  # the graph model holds its item vectors itself
    elif t.model == "hybrid":
        model_kwargs.update(n_users=len(users), n_items=len(item_ids), id_dim=t.id_dim,
                            id_dropout=t.id_dropout, id_mode=t.id_mode,
                            user_id_dropout=t.user_id_dropout, text_aux=t.text_aux)
    if item_age_on(t, items, item_ids):
        model_kwargs.update(item_age=True, n_age_items=len(item_ids),
                            released=released_days(items, item_ids).tolist())
        if t.model == "hybrid":
            model_kwargs["first_seen"] = first_seen_days(train_interactions, item_ids).tolist()
    if t.logq and t.model != "llm_graph":
        counts = np.bincount(entity_rows(train_interactions, item_index).column("item_idx").to_numpy(),
                             minlength=len(item_ids)).astype(np.float64)
        model_kwargs["logq"] = np.log(np.maximum(counts, 1) / counts.sum()).tolist()
    use_gpu = resources.get("GPU", 0) > 0 if t.use_gpu == "auto" else bool(t.use_gpu)
    fingerprint = hashlib.sha256(json.dumps(
        # (train.materialize changes where the rows come from, not the training)
        [model_kwargs, t.model_dump(exclude={"materialize"}), cfg.seed, manifest.get("built_at"),
         split.summary()],
        sort_keys=True, default=str).encode()).hexdigest()[:16]
    key = f"valid_{t.early_stopping_metric}"
    board = ray.remote(num_cpus=0)(EpochBoard).remote()
    trainer = TorchTrainer(
        loop or train_loop_per_worker,
        train_loop_config={
            "seed": cfg.seed, "epochs": epochs, "batch_size": batch_size, "lr": lr, "kind": t.model,
            "graph": graph,
            "weight_decay": t.weight_decay, "fingerprint": fingerprint,
            "model": model_kwargs, "valid": None if valid is None else ray.put(valid),
            "tables": tables, "board": board,
            "batches_per_epoch": int(train_interactions.num_rows) // (batch_size * t.num_workers),
            "torch_threads": torch_threads(keep, use_gpu, t.num_workers),
            "metric": t.early_stopping_metric, "patience": patience,
        },
        datasets={"train": ds},
        scaling_config=ScalingConfig(num_workers=t.num_workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": t.cpus_per_worker}),
        # The run is named by the training's fingerprint: the same training started again resumes
        # from its latest checkpoint, a changed one (model, settings, data) starts a run of its
        # own; a crashed worker restarts the group from the latest checkpoint, up to
        # max_failures times. Every epoch's checkpoint is kept and scored by the validation
        # metric: the best one is the model.
        run_config=RunConfig(name=f"{cfg.name}-{t.model}-{fingerprint}",
                             storage_path=storage_path(cfg),
                             failure_config=FailureConfig(max_failures=t.max_failures),
                             checkpoint_config=CheckpointConfig(
                                 checkpoint_score_attribute=key if valid is not None else None,
                                 checkpoint_score_order="max")),
    )
    with progress(f"train {t.model}", epochs, "epochs") as bar:
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
    best = result.get_best_checkpoint(key, "max") if valid is not None else result.checkpoint
    with best.as_directory() as d:
        state = torch.load(Path(d) / MODEL_FILE, map_location="cpu", weights_only=True)
    served = save_model(state, t.model, vocab, cfg.run_dir)
    history = result.metrics_dataframe  # one row per kept checkpoint, in score order
    if history is not None and len(history):
        history = history[history["batches"] > 0].sort_values("epoch").drop_duplicates("epoch", keep="last")
    train_state = state["train_state"]
    summary = {"rows": int(train_interactions.num_rows), "workers": t.num_workers, "use_gpu": use_gpu,
               "dataset": "materialized" if keep else "streamed",
               "model_kind": t.model, "resumed_from": int(result.metrics.get("resumed_from", 0)),
               "fingerprint": fingerprint, "epochs": epochs,
               "epochs_run": int(result.metrics["epoch"]), "max_epochs": epochs,
               "stopped_early": bool(result.metrics.get("stopped", False)),
               "best_epoch": int(train_state["epoch"]), key: train_state["valid"],
               "final_loss": float(result.metrics["loss"]),
               "first_loss": float(history["loss"].iloc[0]) if history is not None and len(history) else None,
               "model": str(served)}
    if history is not None and key in history:
        summary["valid_history"] = [None if v is None or v != v else float(v) for v in history[key]]
    logger.info("trained %s on %d rows: loss %.4f -> %.4f; model of epoch %d (%s %s)", t.model,
                summary["rows"], summary["first_loss"] or float("nan"), summary["final_loss"],
                summary["best_epoch"], key, train_state["valid"])
    return summary


