"""The built-in synthetic dataset: deterministic, valid, and its item text carries the signal."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow.compute as pc

from llmrec_ray.config import DataConfig, SyntheticConfig
from llmrec_ray.datasets import load_dataset


def small(seed: int = 0) -> DataConfig:
    return DataConfig(synthetic=SyntheticConfig(seed=seed, n_users=40, n_items=60,
                                                interactions_per_user=15))


def test_same_seed_same_data_other_seed_other_data():
    a, b, c = load_dataset(small(0)), load_dataset(small(0)), load_dataset(small(1))
    assert a.interactions.equals(b.interactions) and a.items.equals(b.items)
    assert not a.interactions.equals(c.interactions)


def test_valid_and_accounted():
    ds = load_dataset(small())
    assert ds.summary()["items"] == {"in": 60, "accepted": 60, "rejected": 0}
    inter = ds.interactions.to_pandas()
    assert not inter.duplicated(["user_id", "item_id"]).any()  # never the same item twice
    avail = ds.items.to_pandas().set_index("item_id")["available_from"]
    assert (inter["event_timestamp"].values >= avail.loc[inter["item_id"]].values).all()
    assert pc.min(ds.interactions.column("rating")).as_py() >= 1
    assert pc.max(ds.interactions.column("rating")).as_py() <= 5
    assert ds.items.column("title").null_count == 0


def test_item_text_carries_user_taste():
    """A user's genres repeat far more than a taste-blind user's would."""
    ds = load_dataset(small())
    genre = dict(zip(ds.items.column("item_id").to_pylist(),
                     (g.split(", ")[0] for g in ds.items.column("genres").to_pylist())))
    by_user: dict[str, Counter] = {}
    for u, i in zip(ds.interactions.column("user_id").to_pylist(),
                    ds.interactions.column("item_id").to_pylist()):
        by_user.setdefault(u, Counter())[genre[i]] += 1
    top_share = sum(c.most_common(1)[0][1] / sum(c.values()) for c in by_user.values()) / len(by_user)
    catalogue = Counter(genre.values())
    blind = catalogue.most_common(1)[0][1] / sum(catalogue.values())
    assert top_share > 2 * blind


def test_lognormal_histories_are_heavy_tailed_with_the_same_mean():
    cfg = DataConfig(synthetic=SyntheticConfig(n_users=400, n_items=2000, interactions_per_user=30,
                                               history_shape="lognormal"))
    counts = pc.value_counts(load_dataset(cfg).interactions.column("user_id")).field("counts").to_numpy()
    flat = pc.value_counts(load_dataset(DataConfig(synthetic=cfg.synthetic.model_copy(
        update={"history_shape": "poisson"}))).interactions.column("user_id")).field("counts").to_numpy()
    assert 20 < counts.mean() < 40 and 25 < flat.mean() < 35
    # heavy tail: the busiest user has many times the median (Poisson: under twice)
    assert counts.max() > 8 * np.median(counts) and flat.max() < 2 * np.median(flat)
    assert counts.min() >= 5
