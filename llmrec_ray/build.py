"""Build the features: data -> text -> vectors -> Feast (parquet, apply, materialize, verify).

The stage chain of docs/design.md ("Stages") up to the feature repository. Also saves the accepted canonical tables
and the rejects ledger under the run directory, so the later stages (train, evaluate, recommend)
read exactly the rows the features were built from. Under evaluate.protocol given the saved
interactions keep their `split` column and the features come from the train rows only
(`feature_dataset`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from llmrec_ray import serialize
from llmrec_ray.datasets import Dataset, load_dataset
from llmrec_ray.encode import encode_texts
from llmrec_ray.text_model import encoder_key, resolve_model, text_hashes
from llmrec_ray.featurestore import open_repo
from llmrec_ray.views import (ITEM_METADATA_VIEW, ITEM_STATS_VIEW, ITEM_TEXT_VIEW, USER_HISTORY_VIEW,
                              USER_STATS_VIEW, VIEWS)
from llmrec_ray.serialize import parse_duration_us
from llmrec_ray.split import GIVEN_PROTOCOLS
from llmrec_ray.stats import item_stats, user_stats
from llmrec_ray.schemas import EMBEDDING, TIMESTAMP
from llmrec_ray.user_vectors import pooled_user_view, user_vectors_key, user_vectors_tags

logger = logging.getLogger(__name__)

TABLES = ("interactions", "items", "users")


def save_dataset(ds: Dataset, run_dir: Path) -> None:
    out = run_dir / "dataset"
    out.mkdir(parents=True, exist_ok=True)
    for name in TABLES:
        pq.write_table(getattr(ds, name), out / f"{name}.parquet")
    pq.write_table(ds.rejects.to_table(), out / "rejects.parquet")


def load_saved_dataset(run_dir: Path) -> dict[str, pa.Table]:
    folder = run_dir / "dataset"
    if not (folder / "interactions.parquet").exists():
        raise FileNotFoundError(f"{folder}: no dataset saved; run `llmrec build-features` first")
    return {name: pq.read_table(folder / f"{name}.parquet") for name in TABLES}


def nonblank(texts) -> pa.Array:
    """(rows,) bool: the rendered text holds a character other than whitespace."""
    return pc.invert(pc.fill_null(pc.match_substring_regex(texts, r"^\s*$"), True))


def _vectors_for(rows: pa.Table, vectors: pa.Table) -> pa.Table:
    """Attach each text row's vector (looked up by text_hash). A row whose text is empty (an item
    with no title, genres or description) was not encoded: it gets the zero vector and n_tokens
    0, "no text vector", never the encoder's vector of the empty string, which would be one
    vector shared by every such item (the text models read a zero row as no text)."""
    idx = pc.index_in(rows.column("text_hash"), value_set=vectors.column("text_hash"))
    missing = pc.is_null(idx)
    if pc.any(pc.and_(missing, nonblank(rows.column("text")))).as_py():
        raise RuntimeError(f"{pc.sum(missing).as_py()} text rows have no vector")
    if idx.null_count:  # row len(vectors): the zero vector, n_tokens 0
        dim = len(vectors.column("embedding")[0].as_py())
        zero = pa.table({"text_hash": pa.array([""]), "embedding": pa.array([[0.0] * dim], EMBEDDING),
                         "n_tokens": pa.array([0], pa.int64()), "truncated": pa.array([False])})
        vectors = pa.concat_tables([vectors.select(zero.column_names).cast(zero.schema), zero])
        idx = pc.fill_null(idx, vectors.num_rows - 1)
    v = vectors.take(idx)
    return rows.append_column("embedding", v.column("embedding")) \
        .append_column("n_tokens", v.column("n_tokens")).append_column("truncated", v.column("truncated"))


def features_key(cfg) -> str:
    """The manifest's `encoder_key`: the encoder's key, plus under serialize.user_vectors
    items_mean / items_recency how the user vectors were pooled, so features built one way are
    never taken for the other (pipeline.feature_repo compares it)."""
    return user_vectors_key(encoder_key(cfg.encode), cfg.serialize)


def feature_tables(ds: Dataset, cfg) -> tuple[dict[str, pa.Table], dict]:
    """Serialize and encode; return the three views' tables and the encode stats.

    serialize.user_vectors text: item and user texts are encoded; items_mean / items_recency:
    only the item texts, the user snapshots pool their history's item vectors (user_vectors.py).
    """
    start = pc.min(ds.interactions.column("event_timestamp")).as_py()
    valid_from = int(start.timestamp() * 1_000_000) if start else 0
    items, users = serialize.serialize_dataset(ds.items, ds.interactions, cfg.serialize, valid_from)
    user_text = cfg.serialize.user_vectors == "text"
    key = encoder_key(cfg.encode)
    items = items.append_column("text_hash", text_hashes(items.column("text"), key))
    common = ["entity", "entity_id", "event_timestamp", "text", "text_hash"]
    if user_text:
        users = users.append_column("text_hash", text_hashes(users.column("text"), key))
        text_rows = pa.concat_tables([items.select(common), users.select(common)])
    else:
        text_rows = items.select(common)
    text_rows = text_rows.filter(nonblank(text_rows.column("text")))  # no text: no vector
    if text_rows.num_rows == 0:
        raise ValueError(f"none of the {items.num_rows} items has any text (title, genres and "
                         "description are blank, or serialize.item_template names none of the "
                         "fields that hold values): there is nothing to encode")
    logger.info("serialized %d item texts and %d user snapshots (user vectors: %s)", items.num_rows,
                users.num_rows, cfg.serialize.user_vectors)
    cache = None
    if cfg.encode.cache:
        from llmrec_ray.cache import EmbeddingCache

        cache = EmbeddingCache(cfg.encode.cache_dir or str(Path(cfg.output_dir) / "embedding_cache"))
    vectors, stats = encode_texts(text_rows, cfg.encode, cache=cache)
    stats.update(item_texts=items.num_rows, user_snapshots=users.num_rows,
                 items_without_text=items.num_rows - pc.sum(nonblank(items.column("text"))).as_py(),
                 user_texts=users.num_rows if user_text else 0, user_vectors=cfg.serialize.user_vectors)

    items = _vectors_for(items, vectors)
    item_view = pa.table({"item_id": items.column("entity_id"),
                          "event_timestamp": items.column("event_timestamp"),
                          "embedding": items.column("embedding"), "n_tokens": items.column("n_tokens"),
                          "truncated": items.column("truncated")})
    meta = pa.table({"item_id": items.column("entity_id"),
                     "event_timestamp": items.column("event_timestamp"),
                     "title": ds.items.column("title"), "genres": ds.items.column("genres")})
    if user_text:
        users = _vectors_for(users, vectors)
        user_view = pa.table({"user_id": users.column("entity_id"),
                              "event_timestamp": users.column("event_timestamp"),
                              "embedding": users.column("embedding"), "n_tokens": users.column("n_tokens"),
                              "truncated": users.column("truncated"), "n_history": users.column("n_history")})
    else:
        pool_start = time.perf_counter()
        user_view = pooled_user_view(ds.interactions, users, item_view, cfg.serialize, cfg.encode.normalize)
        stats["user_pool_seconds"] = round(time.perf_counter() - pool_start, 2)
    return {ITEM_TEXT_VIEW: item_view, ITEM_METADATA_VIEW: meta, USER_HISTORY_VIEW: user_view}, stats


def stats_tables(ds: Dataset, views: dict[str, pa.Table], fs_cfg) -> dict[str, pa.Table]:
    """User stats at the user snapshot times, item stats from each item's start (on Ray Data from
    `featurestore.stats_ray_min_rows` rows on)."""
    every, min_rows = parse_duration_us(fs_cfg.stats_every), fs_cfg.stats_ray_min_rows
    return {USER_STATS_VIEW: user_stats(ds.interactions, views[USER_HISTORY_VIEW], min_rows),
            ITEM_STATS_VIEW: item_stats(ds.interactions, views[ITEM_TEXT_VIEW], every, min_rows)}


def feature_dataset(ds: Dataset, protocol: str) -> Dataset:
    """The rows the features are built from: every interaction, or under evaluate.protocol given
    (or random) the train rows only (no validation or test row reaches a user snapshot or a statistic)."""
    if protocol not in GIVEN_PROTOCOLS:
        return ds
    inter = ds.interactions
    if "split" not in inter.column_names:
        raise ValueError("evaluate.protocol given: the interactions carry no split")
    train = inter.filter(pc.equal(inter.column("split"), "train")).drop_columns(["split"])
    if train.num_rows == 0:
        raise ValueError("evaluate.protocol given: no train interactions accepted")
    return dataclasses.replace(ds, interactions=train)


def given_history_order(ds, mode: str, seed: int):
    """Under the given protocol, whether a user's train rows are a sequence or a set
    (`evaluate.given_history`): auto = a set when the split is random in time (fewer than half
    of the users' held-out rows all come after their train rows), else their time order.
    Returns (the dataset, "set" or "time")."""
    from llmrec_ray.split import held_out_in_time, history_as_set

    if mode == "auto":
        share = held_out_in_time(ds.interactions)
        mode = "set" if share < 0.5 else "time"
        logger.info("given split: %.0f%% of the users' held-out rows come after their train rows: "
                    "history as a %s", 100 * share, "set (a random split)" if mode == "set" else "sequence")
    if mode == "set":
        ds = dataclasses.replace(ds, interactions=history_as_set(ds.interactions, seed))
    return ds, mode


def check_overwrite(cfg, overwrite: bool = False) -> None:
    """Refuse, before any work, to build over the features of another run: one repository holds
    one run's views and online rows, and the run they belong to could no longer be trained,
    evaluated or served. `overwrite` (`--overwrite`) goes on; the same run rebuilds freely."""
    import json

    from llmrec_ray.views import MANIFEST

    repo_path = Path(cfg.featurestore.repo_path).resolve()
    path = repo_path / "data" / MANIFEST  # (read directly: the repository may not exist yet)
    if not path.exists():
        return
    manifest = json.loads(path.read_text())
    if manifest.get("run") == cfg.name or overwrite:
        if manifest.get("run") != cfg.name:
            logger.warning("replacing the features of run %r in %s (--overwrite)", manifest.get("run"),
                           repo_path)
        return
    raise ValueError(
        f"{repo_path} holds the features of run {manifest.get('run')!r} (dataset "
        f"{manifest.get('dataset')!r}, built {manifest.get('built_at', '?')[:19]}); building run "
        f"{cfg.name!r} there replaces them, and run {manifest.get('run')!r} could no longer be "
        "trained, evaluated or served. Pass --overwrite to replace them, or give this run a "
        "repository of its own: featurestore.repo_path=DIR (a directory that does not exist yet "
        "is created with the project's Feast declarations)")


def split_rows(ds, cfg, summary: dict):
    """The split the protocol asks for at build time: `random` labels a seeded random share of
    each user's rows test and validation; the given protocols carve validation rows out of train
    when the data has none, and order each user's history (`given_history_order`)."""
    e = cfg.evaluate
    if e.protocol == "random":
        from llmrec_ray.split import random_split

        inter, summary["random_split"] = random_split(ds.interactions, e.test_fraction,
                                                      e.valid_fraction, cfg.seed)
        ds = dataclasses.replace(ds, interactions=inter)
        logger.info("random split (seed %d): %d test rows, %d validation rows", cfg.seed,
                    summary["random_split"]["test"], summary["random_split"]["valid"])
    if e.protocol in GIVEN_PROTOCOLS:
        from llmrec_ray.split import carve_validation

        inter, moved = carve_validation(ds.interactions, e.valid_fraction, cfg.seed)
        if moved:
            ds = dataclasses.replace(ds, interactions=inter)
            summary["carved_validation"] = moved
            logger.info("the given split has no validation rows: %d train rows (%.0f%% of each "
                        "user's, seed %d) carved as validation", moved, 100 * e.valid_fraction, cfg.seed)
        ds, summary["history_order"] = given_history_order(ds, e.given_history, cfg.seed)
    return ds


def publish(cfg, views: dict, dataset: str, dim) -> dict:
    """Write the views into the Feast repository, apply its declarations, materialize the online
    store and write the manifest -> the summary's part about them."""
    repo = open_repo(cfg.featurestore)
    key, fkey = encoder_key(cfg.encode), features_key(cfg)
    _, model_id = resolve_model(cfg.encode.model)
    for name, table in views.items():
        embedding = VIEWS[name].embedding
        tags = {"model": model_id, "run": cfg.name} if embedding else {"run": cfg.name}
        if name == USER_HISTORY_VIEW:  # how its vectors were built; key = fkey (encoder + pooling)
            tags.update(user_vectors_tags(cfg.serialize))
        repo.write_view(name, table, encoder_key=(fkey if name == USER_HISTORY_VIEW else key)
                        if embedding else None, tags=tags)
    out = {"feast_objects": repo.apply()}
    # Online = the state just after the data ends. Item stats rows later than that (popularity
    # windows emptying) go online as time passes, with `llmrec materialize --incremental`.
    ts = pa.concat_arrays([t.column("event_timestamp").combine_chunks().cast(TIMESTAMP)
                           for name, t in views.items() if name != ITEM_STATS_VIEW])
    start = pc.min(ts).as_py() - timedelta(seconds=1)
    end = pc.max(ts).as_py() + timedelta(seconds=1)
    out["online"] = repo.materialize(start, end)
    out["views"] = {name: t.num_rows for name, t in views.items()}
    repo.write_manifest({
        "run": cfg.name, "dataset": dataset, "encoder_key": fkey, "item_encoder_key": key,
        "user_vectors": user_vectors_tags(cfg.serialize),
        "model": model_id, "dim": dim, "views": out["views"],
        "materialized": [start.isoformat(), end.isoformat()], "run_dir": str(cfg.run_dir.resolve()),
        "built_at": datetime.now(timezone.utc).isoformat(),
    })
    return out


def build_features(cfg, overwrite: bool = False) -> dict:
    """The whole feature build; returns the summary (row counts per stage). Refuses to replace
    another run's features unless `overwrite` (`check_overwrite`)."""
    check_overwrite(cfg, overwrite)
    e = cfg.evaluate
    ds = load_dataset(cfg.data, given_split=e.protocol == "given", unsplit=e.protocol == "random")
    summary = {"data": ds.summary()}
    ds = split_rows(ds, cfg, summary)
    for table, c in summary["data"].items():
        logger.info("%s: %d in = %d accepted + %d rejected", table, c["in"], c["accepted"], c["rejected"])
    save_dataset(ds, cfg.run_dir)
    ds = feature_dataset(ds, cfg.evaluate.protocol)
    summary["feature_interactions"] = ds.interactions.num_rows
    views, stats = feature_tables(ds, cfg)
    summary["encode"] = stats
    views.update(stats_tables(ds, views, cfg.featurestore))
    summary.update(publish(cfg, views, ds.name, stats.get("dim")))
    return summary
