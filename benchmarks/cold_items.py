"""What ML-100K's cold-item slice is made of, under the user-temporal split's rule (per user in
time order: last 20% test, last 10% of the rest validation, the rest fit; ties by item id):
cold items (no fit interaction), their test rows and users, their release years and their age at
the user's query time, and Recall@20 of ranking every item by its age alone. Reads the raw
files; prints a summary.

    LLMREC_ML100K=path/to/ml-100k python benchmarks/cold_items.py
"""

import os

import numpy as np
import pandas as pd


def load(d: str):
    """(interactions with `label` 0 fit / 1 validation / 2 test, items with release dates)."""
    r = pd.read_csv(f"{d}/u.data", sep="\t", names=["u", "i", "r", "t"])
    items = pd.read_csv(f"{d}/u.item", sep="|", encoding="latin-1", header=None)[[0, 1, 2]]
    items.columns = ["i", "title", "release"]
    items["release"] = pd.to_datetime(items["release"])
    r = r.sort_values(["u", "t", "i"], kind="stable")
    r["pos"] = r.groupby("u").cumcount()
    r["n"] = r.groupby("u")["i"].transform("size")
    n_test = np.floor(r.n * 0.2 + 1e-9)
    n_valid = np.floor((r.n - n_test) * 0.1 + 1e-9)
    r["label"] = np.where(r.pos >= r.n - n_test, 2, np.where(r.pos >= r.n - n_test - n_valid, 1, 0))
    return r, items


def describe(r, items, test, cold: set) -> None:
    ct = test[test.i.isin(cold)]
    print(f"items {r.i.nunique()}, cold {len(cold)}; cold test rows {len(ct)} from {ct.u.nunique()} users, "
          f"{ct.i.nunique()} cold items in test")
    years = items[items.i.isin(ct.i)].release.dt.year.value_counts().sort_index()
    print("cold test items by release year (last 8):", years.tail(8).to_dict())
    ct = ct.assign(q=ct.u.map(test.groupby("u").t.min())).merge(items, on="i")
    age = (pd.to_datetime(ct.q, unit="s") - ct.release).dt.days
    print(f"age at query time (days): median {age.median():.1f}, 25th percentile {age.quantile(0.25):.0f}, "
          f"rows rated before release {int((age < 0).sum())}")


def age_ranking(r, items, test, cold: set) -> None:
    """Ranking by item age alone (the youngest released item first, items more than 30 days
    before their release and the user's fit/validation items excluded): how far age goes on cold
    items."""
    released = {i: t.value // 10**9 for i, t in zip(items.i, items.release) if not pd.isna(t)}
    history = r[r.label < 2].groupby("u").i.apply(set)
    all_ids = np.array(sorted(r.i.unique()))
    rel = np.array([released.get(i, np.nan) for i in all_ids], dtype=np.float64)
    recall_all, recall_cold = [], []
    for u, g in test.groupby("u"):
        age = (g.t.min() - rel) / 86400
        score = np.where(np.isnan(age) | (age < -30), -np.inf, -np.abs(age))
        score[np.isin(all_ids, list(history.get(u, set())))] = -np.inf
        top = set(all_ids[np.argsort(-score, kind="stable")[:20]])
        truth = set(g.i)
        recall_all.append(len(top & truth) / len(truth))
        cold_truth = truth & cold
        if cold_truth:
            recall_cold.append(len(top & cold_truth) / len(cold_truth))
    print(f"age-only ranking Recall@20: all users {np.mean(recall_all):.4f} ({len(recall_all)} users), "
          f"cold items {np.mean(recall_cold):.4f} ({len(recall_cold)} users)")


def main() -> None:
    path = os.environ.get("LLMREC_ML100K")
    if not path:
        raise SystemExit("set LLMREC_ML100K to the MovieLens 100K folder (grouplens.org/datasets/movielens/100k)")
    r, items = load(path)
    fit, test = r[r.label == 0], r[r.label == 2]
    cold = set(r.i) - set(fit.i)
    describe(r, items, test, cold)
    age_ranking(r, items, test, cold)


if __name__ == "__main__":
    main()
