"""Training rows: the interactions of the training window as Feast entity rows, joined with the
user-history and item-text embeddings by `FeatureStore.get_historical_features` (point in time:
the newest user snapshot at or before the interaction, which never covers the interaction itself)
into a Ray Dataset of fixed-shape model inputs. `train.py` hands it to Ray Train.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from llmrec_ray.featurestore import FeatureRepo
from llmrec_ray.models.age import US_PER_DAY
from llmrec_ray.model_inputs import USER_EXTRA_DIM, retrieved_user_extra
from llmrec_ray.views import ITEM_TEXT_VIEW, USER_HISTORY_VIEW, USER_STATS_VIEW, embedding_matrix

USER_EMB = f"{USER_HISTORY_VIEW}__embedding"
ITEM_EMB = f"{ITEM_TEXT_VIEW}__embedding"

# model input -> (feature view, its embedding column in the retrieval's output)
EMBEDDINGS = {"user_emb": (USER_HISTORY_VIEW, USER_EMB), "item_emb": (ITEM_TEXT_VIEW, ITEM_EMB)}

ROW_BYTES = 48 + 4 * USER_EXTRA_DIM  # a training row retrieved by position: indices, time, user stats

def entity_rows(interactions: pa.Table, item_index: dict[str, int],
                user_index: dict[str, int] | None = None) -> pa.Table:
    """Interactions -> Feast entity rows (Arrow, narrow): row_id, user_id, item_id,
    event_timestamp, item_idx (and user_idx with a `user_index`)."""
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


def to_training_batch(batch: pa.Table) -> dict[str, np.ndarray]:
    """Retrieved rows (Arrow) -> fixed-shape arrays for the trainer. An embedding comes either as
    its vector (fixed-size float32 list -> `user_emb` (B, D)) or, retrieved `by_position`, as the
    position of its row in the view (`user_emb_pos` (B,)), which the trainer looks up in the view
    it holds. A row without its feature row is an error naming its row_id."""
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


def training_dataset(repo: FeatureRepo, rows: pa.Table, by_position: bool = True):
    """get_historical_features (the `training` feature service) of `entity_rows` -> (lazy Ray
    Dataset of model inputs, the embedding views the trainer holds).

    by_position (the default): the rows carry each embedding's row position in its view, and the
    second value maps `user_emb`/`item_emb` to (ObjectRef of the view's feature table, column):
    every training worker holds each view once (snapshots x d, items x d) and the rows are a
    few dozen bytes, so memory grows with snapshots + items, not with rows x d. Otherwise the
    rows carry the vectors and the second value is empty."""
    job = repo.retrieval(rows, "training")
    if not by_position:
        return job.to_ray_dataset().map_batches(to_training_batch, batch_format="pyarrow"), {}
    ds = job.to_ray_dataset(by_position=tuple(view for view, _ in EMBEDDINGS.values()))
    refs = job.feature_values()
    tables = {key: (refs[view], col) for key, (view, col) in EMBEDDINGS.items()}
    return ds.map_batches(to_training_batch, batch_format="pyarrow"), tables


def keep_rows(mode, rows: int, object_store_bytes: float, row_bytes: int = ROW_BYTES) -> bool:
    """`train.materialize`: whether the training rows are computed once and kept in the object
    store (auto: when `rows` x `row_bytes` is at most a tenth of `object_store_bytes`)."""
    if mode == "auto":
        return rows * row_bytes <= object_store_bytes / 10
    return bool(mode)

