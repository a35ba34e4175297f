"""The stages chained: build features -> train -> evaluate -> recommend.

Each function takes the typed `Config`, connects to Ray (a local instance with capped resources,
or the cluster in `ray.address` / RAY_ADDRESS) and returns a JSON-able summary that the CLI prints
and writes under the run directory.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import pyarrow.compute as pc

from llmrec_ray.build import build_features, check_overwrite, load_saved_dataset
from llmrec_ray.evaluate import evaluate
from llmrec_ray.report import format_summary, format_tuning, write_results
from llmrec_ray.storage import write_atomic
from llmrec_ray.featurestore import FeatureRepo, open_repo
from llmrec_ray.views import USER_HISTORY_VIEW
from llmrec_ray.split import GIVEN_PROTOCOLS, given_eval_split, global_temporal_eval_split, user_temporal_eval_split

logger = logging.getLogger(__name__)


def init_ray(ray_cfg) -> None:
    """Start (or join) Ray. Unless the command line is verbose (`console.verbose()`), the
    workers' output stays in Ray's session logs (`/tmp/ray/session_latest/logs`) and Ray Data
    shows no progress bars of its own: the stages report their progress through `console`."""
    import ray

    from llmrec_ray import console

    if ray.is_initialized():
        return
    console.adopt_library_loggers()  # Ray's own terminal handlers, attached at import
    show = console.verbose()
    address = ray_cfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=show)
    else:
        # address="local": a new local instance even when another cluster runs on this machine
        # (a bare ray.init() would join the latest `ray start` cluster and refuse the caps)
        ray.init(address="local", num_cpus=ray_cfg.num_cpus, include_dashboard=False, log_to_driver=show,
                 object_store_memory=None if ray_cfg.object_store_memory_mb is None
                 else ray_cfg.object_store_memory_mb * 1024 * 1024)
    if not show:
        from ray.data import DataContext

        ctx = DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
    console.adopt_library_loggers()  # Ray (re)configures its loggers when it starts


def feature_repo(cfg) -> FeatureRepo:
    """The run's feature repo, checked to hold features built by this run with this encoder and
    this serialize.user_vectors mode (the manifest's encoder_key is `build.features_key`: the
    encoder's key, plus the pooling when user vectors are pooled from item vectors)."""
    from llmrec_ray.build import features_key

    repo = open_repo(cfg.featurestore)
    manifest = repo.read_manifest()
    key = features_key(cfg)
    if manifest["run"] != cfg.name or manifest["encoder_key"] != key:
        raise ValueError(
            f"{repo.path}: features were built by run {manifest['run']!r} with encoder "
            f"{manifest['encoder_key']!r}; this is run {cfg.name!r} with {key!r}. "
            "Run `llmrec build-features` with this config first.")
    # item vectors are the encoder's; user vectors the encoder's or pooled (manifest encoder_key)
    repo.check_encoder(manifest.get("item_encoder_key", manifest["encoder_key"]),
                       {USER_HISTORY_VIEW: manifest["encoder_key"]})
    return repo


def eval_split(cfg, tables: dict, repo: FeatureRepo):
    """The evaluation protocol of `cfg.evaluate` over the saved interactions. The global protocol
    groups held-out interactions by the user snapshot that serves them (the repo's user-history
    rows); the given protocol queries after the latest of them."""
    e = cfg.evaluate
    if e.protocol in GIVEN_PROTOCOLS:
        snapshots = repo.read_view(USER_HISTORY_VIEW, columns=["user_id", "event_timestamp"])
        return given_eval_split(tables["interactions"], snapshots, e.protocol)
    if "split" in tables["interactions"].column_names:
        raise ValueError(f"evaluate.protocol {e.protocol}: this run's features were built for "
                         "protocol given (from the train rows only); run `llmrec build-features` "
                         "again with this protocol")
    if e.protocol == "user-temporal":
        return user_temporal_eval_split(tables["interactions"], e.test_fraction, e.valid_fraction)
    snapshots = repo.read_view(USER_HISTORY_VIEW, columns=["user_id", "event_timestamp"])
    return global_temporal_eval_split(tables["interactions"], tuple(e.global_quantiles), snapshots)


def saved_split(cfg, repo: FeatureRepo):
    """The run's saved dataset and its evaluation split -> (tables, split, sorted item ids)."""
    tables = load_saved_dataset(cfg.run_dir)
    item_ids = sorted(tables["items"].column("item_id").to_pylist())
    split = eval_split(cfg, tables, repo)
    logger.info("split %s", split.summary())
    return tables, split, item_ids


def _write_summary(cfg, stage: str, summary: dict) -> None:
    path = cfg.run_dir / "summary.json"
    existing = json.loads(path.read_text()) if path.exists() else {}
    existing[stage] = summary
    write_atomic(path, json.dumps(existing, indent=2, default=str))


def build_stage(cfg, overwrite: bool = False) -> dict:
    from llmrec_ray.featurestore import create_repo

    created = create_repo(cfg.featurestore.repo_path)
    check_overwrite(cfg, overwrite)  # before Ray starts: a refusal costs nothing
    init_ray(cfg.ray)
    start = time.perf_counter()
    summary = build_features(cfg, overwrite)
    if created:
        summary["created_repo"] = str(created)
    summary["seconds"] = round(time.perf_counter() - start, 1)
    _write_summary(cfg, "build_features", summary)
    return summary


def train_stage(cfg, loop=None) -> dict:
    """Train on features from Feast with Ray Train (`train.fit`; `loop`: see there)."""
    from llmrec_ray.train import fit

    init_ray(cfg.ray)
    start = time.perf_counter()
    repo = feature_repo(cfg)
    tables, split, item_ids = saved_split(cfg, repo)
    summary = fit(cfg, repo, split, tables["items"], item_ids, loop)
    if cfg.train.export:
        from llmrec_ray.build import features_key
        from llmrec_ray.artifacts import export_towers, load_model

        summary["exported_online"] = export_towers(repo, load_model(cfg.run_dir), cfg.run_dir / "model",
                                                   features_key(cfg), summary["fingerprint"])
    summary.update(split=split.summary(),
                   seconds=round(time.perf_counter() - start, 1))
    _write_summary(cfg, "train", summary)
    return summary


def evaluate_stage(cfg, out: str | None = None) -> dict:
    from llmrec_ray.artifacts import load_model

    init_ray(cfg.ray)
    start = time.perf_counter()
    repo = feature_repo(cfg)
    tables, split, item_ids = saved_split(cfg, repo)
    from llmrec_ray.model_inputs import validation_data

    model = load_model(cfg.run_dir)
    valid = validation_data(repo, split, tables["items"], item_ids, model.vocab)
    results, tuning, served = evaluate(repo, model, split, tables["items"], item_ids, cfg.evaluate,
                                       cfg.seed, cfg.train.early_stopping_metric, valid)
    from llmrec_ray.artifacts import save_blend

    # what `recommend` serves: the scorer the guard chose on validation (None: the model itself)
    save_blend(cfg.run_dir, served, item_ids)
    path = cfg.run_dir / "metrics.json" if out is None else Path(out)
    files = write_results(results, path, tuning)
    summary = {"metrics": results, "tuning": tuning,
               "table": format_summary(results, max(cfg.evaluate.ks), tuning["served"]["flagged"]) + "\n\n" + format_tuning(tuning),
               "protocol": split.summary(),
               "path": str(path), "files": [str(f) for f in files],
               "served": tuning["served"]["served"],
               "below_popularity": tuning["served"]["flagged"],
               "seconds": round(time.perf_counter() - start, 1)}
    _write_summary(cfg, "evaluate", {k: v for k, v in summary.items() if k != "table"})
    return summary


def recommend_stage(cfg, user_id: str | None, k: int, text: str | None = None,
                    model_only: bool = False) -> list[dict]:
    """Top-k for a known user (online store), or for a new user described by `text`. A known
    user is served the scorer `llmrec evaluate` chose (`artifacts.load_blend`) when there is one,
    unless `model_only`; a new user in words is matched against the items' text
    (`recommend.recommend_for_text`)."""
    from llmrec_ray.recommend import recommend_for_text, recommend_for_user
    from llmrec_ray.artifacts import load_model

    if (user_id is None) == (text is None):
        raise ValueError("give exactly one of --user and --text")
    if text is not None:
        return recommend_for_text(feature_repo(cfg), load_model(cfg.run_dir), cfg.encode, text, k,
                                  cfg.recommend.text_popularity)
    tables = load_saved_dataset(cfg.run_dir)
    inter = tables["interactions"]
    seen = set(inter.filter(pc.equal(inter.column("user_id"), user_id)).column("item_id").to_pylist())
    return recommend_for_user(feature_repo(cfg), load_model(cfg.run_dir), user_id, seen, k,
                              blend_dir=None if model_only else cfg.run_dir)


def materialize_stage(cfg, incremental: bool, start: str | None, end: str | None) -> dict:
    """Materialize the views into the configured online store (full or incremental), checked."""
    from datetime import datetime, timezone

    import pyarrow.compute as pc

    init_ray(cfg.ray)
    repo = feature_repo(cfg)
    end_t = datetime.fromisoformat(end) if end else datetime.now(timezone.utc)
    if end_t.tzinfo is None:
        raise ValueError(f"--end {end}: give a timezone (e.g. +00:00)")
    repo.apply()
    if incremental:
        return repo.materialize_incremental(end_t)
    if start:
        start_t = datetime.fromisoformat(start)
        if start_t.tzinfo is None:
            raise ValueError(f"--start {start}: give a timezone (e.g. +00:00)")
    else:
        from datetime import timedelta

        firsts = [pc.min(repo.read_view(v, columns=["event_timestamp"]).column("event_timestamp")).as_py()
                  for v in repo.present_views()]
        start_t = min(t for t in firsts if t is not None) - timedelta(seconds=1)
    return repo.materialize(start_t, end_t)
