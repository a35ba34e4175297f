"""The blend's new-item boost on a built and trained run: how much cold-item Recall@20 each boost
buys and what it costs on all users, for each constant boost `llmrec evaluate` tries
(`evaluate.cold_boosts`) and for a boost given only to cold items released at most `window`
days before the query (the items' `released` / `available_from`). Two other cold scorers are
measured the same way: a cold item scored by the served blend's scores of its `NEIGHBOURS`
nearest trained items by text (the cosine of their feature vectors), and the boost raised by the
item's interactions in the 30 days before the query (`log1p`, point in time: rows strictly
before the query, from any user). Every variant is the served
blend (its peer and weight as tuned on validation) with another boost; its validation NDCG@20
is printed beside the test metrics, and the peers' test metrics are the reference. Last, for
each constant boost, how many top-20 slots hold a cold item and how often such a slot is a test
item, beside the warm slots' rate (what each cold hit costs).

    LLMREC_ML100K=path/to/ml-100k python benchmarks/cold_boost.py --config configs/ml-100k.yaml

(after `llmrec run --config configs/ml-100k.yaml`; `--set key=value` as for `llmrec`).
"""

from __future__ import annotations

import argparse

import numpy as np

from llmrec_ray import console
from llmrec_ray.artifacts import load_model
from llmrec_ray.config import load_config
from llmrec_ray.evaluate import evaluate, metric_on, slices
from llmrec_ray.metrics import ranking_metrics
from llmrec_ray.model_inputs import query_data, validation_data
from llmrec_ray.models.age import released_days, times_days
# internal: the run's tables and split as `llmrec evaluate` makes them (repoint here if it moves)
from llmrec_ray.pipeline import feature_repo, init_ray, saved_split
from llmrec_ray.recommender import Blend

WINDOWS = [30, 90, 365]
NEIGHBOURS = 20
NEIGHBOUR_BOOSTS = [0.5, 1.0, 1.1, 1.2, 1.3]
RECENT_BOOSTS = [0.2, 0.3, 0.5]


class WindowBlend(Blend):
    """`base` with its boost kept only for cold items released at most `window` days before
    the query (an item of unknown release gets none)."""

    def __init__(self, base: Blend, released: np.ndarray, window: float):
        super().__init__(base.a, base.b, base.weight, base.b_items, base.cold_boost)
        self.released, self.window = released, window

    def score(self, queries):
        out = super().score(queries)
        age = queries.features["query_day"][:, None] - self.released[None, :]
        young = np.where(np.isnan(age), False, age <= self.window)
        cold = ~self.b_items
        out[:, cold] -= self.cold_boost * (~young[:, cold])
        return out


class NeighbourBlend(Blend):
    """`base`, a cold item scored by the blend's scores of its `k` nearest trained items by text
    (weights: the clipped cosine, normalized to sum 1), plus `boost`."""

    def __init__(self, base: Blend, boost: float, k: int = NEIGHBOURS):
        super().__init__(base.a, base.b, base.weight, base.b_items, 0.0)
        self.boost, self.k, self._nb = boost, k, None

    def score(self, queries):
        out = super().score(queries)
        cold = ~self.b_items
        if self._nb is None:
            e = queries.features["item_emb"].astype(np.float32)
            e = e / np.clip(np.linalg.norm(e, axis=1, keepdims=True), 1e-9, None)
            sim = e[cold] @ e.T
            sim[:, cold] = -np.inf
            nb = np.argpartition(-sim, self.k, axis=1)[:, :self.k]
            w = np.clip(np.take_along_axis(sim, nb, 1), 0, None)
            self._nb = (nb, w / np.clip(w.sum(1, keepdims=True), 1e-9, None))
        nb, w = self._nb
        out[:, cold] = np.einsum("qck,ck->qc", out[:, nb], w) + self.boost
        return out


class RecentBlend(Blend):
    """`base` with each cold item's boost raised by `gain * log1p(n)`, n its interactions (any
    user) in the `days` before the query: `times[j]` the sorted interaction days of item j."""

    def __init__(self, base: Blend, times: dict[int, np.ndarray], gain: float = 0.5, days: float = 30):
        super().__init__(base.a, base.b, base.weight, base.b_items, base.cold_boost)
        self.times, self.gain, self.days = times, gain, days

    def score(self, queries):
        out = super().score(queries)
        q = queries.features["query_day"]
        for j, t in self.times.items():
            n = np.searchsorted(t, q, side="left") - np.searchsorted(t, q - self.days, side="left")
            out[:, j] += self.gain * np.log1p(n)
        return out


def load_run(cfg):
    """The run's tables, split and model, the validation data, `llmrec evaluate`'s results and
    served recommender (a blend with cold items, or exit), and the test queries' data."""
    init_ray(cfg.ray)
    repo = feature_repo(cfg)
    tables, split, item_ids = saved_split(cfg, repo)
    model = load_model(cfg.run_dir)
    valid = validation_data(repo, split, tables["items"], item_ids, model.vocab)
    results, _, served = evaluate(repo, model, split, tables["items"], item_ids, cfg.evaluate,
                                  cfg.seed, cfg.train.early_stopping_metric, valid)
    if not isinstance(served, Blend) or served.b_items is None:
        raise SystemExit("no blend with cold items to boost in this run (evaluate.blend_weights, "
                         "evaluate.cold_boosts)")
    test = query_data(repo, split.test_queries, tables["items"], item_ids, model.vocab)
    groups = slices(test["truth"], split.fit, split.test_queries["user_id"].tolist(), item_ids,
                    cfg.evaluate.light_user_max)
    return tables, split, item_ids, valid, results, served, test, groups


def print_peers(cfg, results: dict, served, released: np.ndarray, metric: str) -> None:
    """The run's summary, the header, and every evaluated model but the served one."""
    cold_users = int(next(iter(results["cold_items"].values()))["users"])
    print(f"{cfg.name}: {int(np.sum(~served.b_items))} items without fit interactions, "
          f"{cold_users} test users with one; release known for {np.isfinite(released).mean():.1%} of items")
    print(f"served: {served.name} {served.params}")
    print(f"{'variant':<34} {'valid ' + metric:>16}  {'all R@20 / N@20':>17}  {'cold R@20 / N@20':>17}")
    for name in results["all"]:
        if name != served.name:
            a, c = results["all"][name], results["cold_items"][name]
            print(f"{name:<34} {'':>16}  {a['recall@20']:.4f} / {a['ndcg@20']:.4f}  "
                  f"{c['recall@20']:.4f} / {c['ndcg@20']:.4f}")


def recent_times(tables, item_ids: list, served, test) -> dict[int, np.ndarray]:
    """Each cold item's sorted interaction days (any user), and the share of (test query, cold
    item) pairs with an interaction in the 30 days before the query, printed."""
    inter = tables["interactions"]
    days = times_days(inter.column("event_timestamp").to_pandas())
    col = {i: k for k, i in enumerate(item_ids)}
    where = np.array([col.get(i, -1) for i in inter.column("item_id").to_pylist()])
    times = {j: np.sort(days[where == j]) for j in np.flatnonzero(~served.b_items)}
    q_days = test["queries"].features["query_day"]
    recent = np.array([np.searchsorted(t, q_days) - np.searchsorted(t, q_days - 30) for t in times.values()])
    print(f"(test query, cold item) pairs with an interaction in the 30 days before the query: "
          f"{(recent > 0).mean():.1%} of {recent.size}")
    return times


def print_slots(tops: dict, groups: dict, served, n_queries: int) -> None:
    """What a top-20 slot given to a cold item is worth, against one given to a warm item."""
    cold = ~served.b_items
    cold_rows = sum(len(t) for t in groups["cold_items"])
    print(f"\nslots of the test top-20 lists (all users): a cold slot's hit rate against a warm one's "
          f"(a random cold item: {cold_rows} cold test items over {n_queries} queries x "
          f"{int(cold.sum())} cold items = {cold_rows / (n_queries * cold.sum()):.2%})")
    for boost, top in tops.items():
        hit = np.array([[j in t for j in row_] for row_, t in zip(top, groups["all"])])
        is_cold = (top >= 0) & cold[np.clip(top, 0, None)]
        print(f"boost {boost}: {int(is_cold.sum())} cold slots ({is_cold.mean():.2%}), hit rate "
              f"{hit[is_cold].mean() if is_cold.any() else 0:.4f}; warm slots hit rate "
              f"{hit[~is_cold].mean():.4f}, at ranks 16-20 {hit[:, 15:][~is_cold[:, 15:]].mean():.4f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    args = ap.parse_args()
    cfg = load_config(args.config, args.overrides)
    console.setup(cfg.run_dir / "logs")  # library output to the run's log, as `llmrec` does
    metric = cfg.train.early_stopping_metric
    tables, split, item_ids, valid, results, served, test, groups = load_run(cfg)
    released = released_days(tables["items"], item_ids)
    print_peers(cfg, results, served, released, metric)

    def row(label: str, rec) -> np.ndarray:
        top = rec.top_k(test["queries"], test["mask"], 20)
        a = ranking_metrics(top, groups["all"], [20])
        c = ranking_metrics(top, groups["cold_items"], [20])
        print(f"{label:<34} {metric_on(rec, valid, metric):>16.4f}  {a['recall@20']:.4f} / "
              f"{a['ndcg@20']:.4f}  {c['recall@20']:.4f} / {c['ndcg@20']:.4f}", flush=True)
        return top

    # the test top-20 lists of each constant boost, kept for the slot count at the end
    tops = {0.0: row("blend, no boost", Blend(served.a, served.b, served.weight, served.b_items))}
    for boost in cfg.evaluate.cold_boosts:
        base = Blend(served.a, served.b, served.weight, served.b_items, boost)
        tops[boost] = row(f"blend, boost {boost}", base)
        for window in WINDOWS:
            row(f"  only released <= {window} days", WindowBlend(base, released, window))
    for boost in NEIGHBOUR_BOOSTS:
        row(f"text neighbours, boost {boost}", NeighbourBlend(served, boost))
    times = recent_times(tables, item_ids, served, test)
    for boost in RECENT_BOOSTS:
        row(f"boost {boost} + 0.5 log1p(n 30 days)",
            RecentBlend(Blend(served.a, served.b, served.weight, served.b_items, boost), times))
    print_slots(tops, groups, served, len(split.test_queries))


if __name__ == "__main__":
    main()
