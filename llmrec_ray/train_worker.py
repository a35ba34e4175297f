"""The Ray Train worker: builds the model, resumes from this run's latest checkpoint, trains an
epoch at a time on its dataset shard, validates on rank 0, reports a checkpoint per epoch and
stops early. `train.py` (the driver) starts it; the checkpoint format is shared with
`artifacts.py` (MODEL_FILE).
"""

from __future__ import annotations

import logging
import tempfile
import time
import warnings
from pathlib import Path

import torch

from llmrec_ray.artifacts import MODEL_FILE, build_model
from llmrec_ray.views import embedding_matrix

logger = logging.getLogger(__name__)

BOARD_EVERY_S = 2.0  # rank 0 posts its batches so far this often (the driver's bar shows them)
FETCH_BATCHES = 64  # model batches per Ray Data batch (its per-batch cost spread over them)


def held_tables(tables: dict, device) -> dict[str, torch.Tensor]:
    """On a training worker: each held embedding view as one (rows, D) tensor on `device`."""
    import ray

    out = {}
    for key, (ref, col) in tables.items():
        matrix = embedding_matrix(ray.get(ref).column(col))  # (rows, D), zero-copy from the store
        with warnings.catch_warnings():  # read-only object-store memory: only ever indexed
            warnings.simplefilter("ignore", UserWarning)
            out[key] = torch.from_numpy(matrix).to(device)
    return out


def restore(model: torch.nn.Module, opt, fingerprint: str) -> dict:
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


def save(model, opt, metrics: dict, fingerprint: str, state: dict | None = None) -> None:
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


def validate(model, valid, metric: str, ctx) -> float:
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


def run_epoch(model, opt, batches, held: dict[str, torch.Tensor], on_batch=None) -> tuple[float, int]:
    """One pass of gradient steps over `batches` -> (mean loss, batches). Rows retrieved by
    position get their vectors from the `held` views; `on_batch(n)` is called after each step."""
    total, n = 0.0, 0
    for batch in batches:
        for name, table in held.items():  # rows retrieved by position: (B,) -> (B, D)
            batch[name] = table[batch.pop(f"{name}_pos")]
        loss = model(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        total += float(loss.detach())
        n += 1
        if on_batch is not None:
            on_batch(n)
    return total / max(n, 1), n


def batch_poster(board, epoch: int, of: int | None):
    """on_batch for `run_epoch`: posts the batches so far to the driver's board every
    BOARD_EVERY_S (None without a board: not rank 0)."""
    if board is None:
        return None
    shown = [time.monotonic()]

    def post(n: int) -> None:
        if time.monotonic() - shown[0] >= BOARD_EVERY_S:
            shown[0] = time.monotonic()
            board.put.remote({"step": "batches", "epoch_now": epoch + 1, "batch": n, "of": of})
    return post


def early_stopping(value: float, state: dict, epoch: int, patience: int) -> None:
    """Update the training state with this epoch's validation value: the best value and its
    epoch, epochs without improvement, and whether to stop (`patience` 0: never)."""
    if state["best"] is None or value > state["best"] + 1e-9:
        state.update(best=value, best_epoch=epoch + 1, bad=0)
    else:
        state["bad"] += 1
    state["stopped"] = patience > 0 and state["bad"] >= patience


def report(model, opt, metrics: dict, config: dict, state: dict, ctx) -> None:
    """Rank 0 reports with a checkpoint and posts to the board; the others report the metrics."""
    import ray.train

    if ctx.get_world_rank() == 0:
        save(model, opt, metrics, config["fingerprint"], state)
        if config.get("board") is not None:
            config["board"].put.remote(metrics)
    else:
        ray.train.report(metrics)


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
    model = ray.train.torch.prepare_model(build_model(config["kind"], config["model"], graph))
    opt = torch.optim.AdamW(model.parameters(), lr=config["lr"], weight_decay=config["weight_decay"])
    inner = model.module if hasattr(model, "module") else model
    state = restore(inner, opt, config["fingerprint"])
    start, key = state["epoch"], f"valid_{config['metric']}"
    if start >= config["epochs"] or state["stopped"]:  # finished before: hand back the same model
        report(model, opt, {"epoch": start, "loss": state["loss"], "batches": 0, "resumed_from": start,
                            key: state["valid"], "best_epoch": state["best_epoch"],
                            "stopped": state["stopped"]}, config, state, ctx)
        return
    shard = ray.train.get_dataset_shard("train")
    held = held_tables(config.get("tables") or {}, ray.train.torch.get_device())
    valid = ray.get(config["valid"]) if config.get("valid") is not None else None
    board = config.get("board") if ctx.get_world_rank() == 0 else None
    for epoch in range(start, config["epochs"]):
        model.train()
        loss, batches = run_epoch(model, opt, model_batches(shard, config["batch_size"], config["seed"] + epoch),
                                  held, batch_poster(board, epoch, config.get("batches_per_epoch")))
        metrics = {"epoch": epoch + 1, "loss": loss, "batches": batches, "resumed_from": start}
        if valid is not None:
            if board is not None:
                board.put.remote({"step": "validating", "epoch_now": epoch + 1})
            value = validate(inner, valid, config["metric"], ctx)
            early_stopping(value, state, epoch, config["patience"])
            metrics.update({key: value, "best_epoch": state["best_epoch"], "stopped": state["stopped"]})
        else:
            metrics.update({key: None, "best_epoch": epoch + 1, "stopped": False})
        report(model, opt, metrics, config, state, ctx)
        if state["stopped"]:
            if ctx.get_world_rank() == 0:
                logger.info("early stop after epoch %d: %s best %.4f at epoch %d", epoch + 1, key,
                            state["best"], state["best_epoch"])
            break
