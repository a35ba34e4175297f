"""One quality benchmark over every dataset at hand: each dataset's config with the project's
defaults, 3 seeds, one table (mean +- std).

    python benchmarks/quality.py --out benchmarks/results/quality.json [--datasets NAME ...] [--seeds 0 1 2]

Datasets (each skipped, and said so, when its data is not on the machine):
- synthetic: `configs/synthetic.yaml` (the embedded default);
- ml-100k: `configs/ml-100k.yaml`, user-temporal (LLMREC_ML100K);
- ml-100k-random: the same config on a seeded random per-user 80/20 split of `u.data` (10% of
  each user's train rows as validation), written by this script as generic files, given protocol;
- lastfm: `configs/lastfm.yaml`, the published random split (LLMREC_LASTFM).
Only data keys differ between them (paths, templates, protocol). Each dataset gets its own Feast
repository under `runs/quality/` (the declarations copied from `feature_repo/`), so the runs do
not overwrite one another. Per dataset: the features are built once, then `llmrec train` and
`llmrec evaluate` run at each seed (`benchmarks/seeds.py`, in a process of its own, run
`quality-<dataset>`); `<stem>-<dataset>.json` keeps each dataset's per-seed metrics and tuning, and `<out>` with `<stem>.md` the table over all datasets
done so far (a later run with --datasets adds to it). After ML-100K, its last run answers the
free-text queries "I love <genre> movies" (`free_text`, `<stem>-free-text.json`).

The table, per dataset: the LLM-feature models alone (the trained model; text_ease), the best
interaction-only peer (EASE, item-KNN, implicit ALS), popularity and the blend, Recall@20 /
NDCG@20 mean +- std over the seeds; then the targets: every LLM-feature model above popularity
on validation and test, and the best LLM-feature model alone against the best peer (margin and
spread).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from variants import ROOT, table

PEERS = ("ease", "item_knn", "implicit_als")
LLM_ALONE = ("two_tower", "hybrid", "llm_graph", "text_ease")
GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
          "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
          "Romance", "Sci-Fi", "Thriller", "War", "Western"]


def ml100k_random_split(src: Path, out: Path, seed: int = 0, test: float = 0.2, valid: float = 0.1) -> Path:
    """`u.data` -> generic files with a seeded random per-user split (test: `test` of each user's
    rows; validation: `valid` of the rest), `u.item` -> items.csv (title, genres)."""
    import numpy as np

    out.mkdir(parents=True, exist_ok=True)
    rows = [line.split("\t") for line in (src / "u.data").read_text().splitlines() if line.strip()]
    rng = np.random.default_rng(seed)
    by_user: dict[str, list] = {}
    for r in rows:
        by_user.setdefault(r[0], []).append(r)
    with open(out / "interactions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user_id", "item_id", "rating", "event_timestamp", "split"])
        for user in sorted(by_user, key=int):
            rs = by_user[user]
            order = rng.permutation(len(rs))
            n_test = int(len(rs) * test)
            n_valid = int((len(rs) - n_test) * valid)
            for rank, k in enumerate(order):
                split = "test" if rank < n_test else "valid" if rank < n_test + n_valid else "train"
                u, i, r, t = rs[k]
                w.writerow([u, i, r, t.strip(), split])
    with open(out / "items.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["item_id", "title", "genres"])
        for line in (src / "u.item").read_bytes().decode("latin-1").splitlines():
            xs = line.split("|")
            if len(xs) >= 24:
                w.writerow([xs[0], xs[1], ", ".join(g for g, flag in zip(GENRES, xs[5:24]) if flag == "1")])
    return out


def datasets(work: Path) -> dict[str, tuple[str, list[str]] | str]:
    """name -> (config, overrides), or the reason it is skipped."""
    ml, lastfm = os.environ.get("LLMREC_ML100K"), os.environ.get("LLMREC_LASTFM")
    out: dict = {"synthetic": ("configs/synthetic.yaml", [])}
    if ml:
        out["ml-100k"] = ("configs/ml-100k.yaml", [])
        out["ml-100k-random"] = ("configs/ml-100k.yaml", [
            "data.source=generic", "evaluate.protocol=given",
            f"data.interactions={work / 'ml-100k-random' / 'interactions.csv'}",
            f"data.items={work / 'ml-100k-random' / 'items.csv'}"])
    else:
        out["ml-100k"] = out["ml-100k-random"] = "LLMREC_ML100K is not set"
    out["lastfm"] = ("configs/lastfm.yaml", []) if lastfm else "LLMREC_LASTFM is not set"
    return out


def free_text(config: str, overrides: list[str], weights=(0.0, 0.5, 1.0)) -> dict:
    """Free-text queries on a built and trained MovieLens run: for each genre, `llmrec recommend
    --text "I love <genre> movies"`'s top 10 at each popularity weight
    (`recommend.text_popularity`): the share that carry the genre, and their median popularity
    rank (1 = the most-rated item; the catalogue's size is given, so "in the most-rated half" is
    rank <= items / 2)."""
    import numpy as np
    import pyarrow.compute as pc

    from llmrec_ray import pipeline
    from llmrec_ray.artifacts import load_model
    from llmrec_ray.build import load_saved_dataset
    from llmrec_ray.config import load_config
    from llmrec_ray.recommend import recommend_for_text

    cfg = load_config(config, overrides)
    tables = load_saved_dataset(cfg.run_dir)
    items = tables["items"].to_pylist()
    genres = {i["item_id"]: {g.strip() for g in (i["genres"] or "").split(",") if g.strip()} for i in items}
    counts = pc.value_counts(tables["interactions"].column("item_id"))
    n = dict(zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist()))
    order = sorted(genres, key=lambda i: (-n.get(i, 0), i))
    rank = {i: r + 1 for r, i in enumerate(order)}
    names = sorted({g for gs in genres.values() for g in gs} - {"unknown"})
    repo, model = pipeline.feature_repo(cfg), load_model(cfg.run_dir)
    out = {"items": len(items), "weights": {}}
    for w in weights:
        per = {}
        for g in names:
            top = recommend_for_text(repo, model, cfg.encode, f"I love {g.lower()} movies", 10, w)
            per[g] = {"share": float(np.mean([g in genres[r["item_id"]] for r in top])),
                      "median_rank": float(np.median([rank[r["item_id"]] for r in top])),
                      "top": [r["title"] for r in top]}
        out["weights"][str(w)] = {
            "mean_share": float(np.mean([v["share"] for v in per.values()])),
            "median_rank": float(np.median([v["median_rank"] for v in per.values()])),
            "genres": per}
        print(f"[free text] popularity weight {w}: share {out['weights'][str(w)]['mean_share']:.3f}, "
              f"median rank {out['weights'][str(w)]['median_rank']:.0f} of {len(items)}", flush=True)
    return out


def repo_for(work: Path, name: str) -> Path:
    """A Feast repository of the dataset's own: the project's declarations, its own data/."""
    repo = work / name / "feature_repo"
    repo.mkdir(parents=True, exist_ok=True)
    for f in ("feature_store.yaml", "features.py"):
        shutil.copy(ROOT / "feature_repo" / f, repo / f)
    return repo


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(name: str, result: dict) -> dict:
    """The table's row of one dataset, and its targets, from the per-seed results."""
    metrics = result["metrics"]["all"]

    def stat(model, metric):
        return metrics[model][metric]["mean"], metrics[model][metric]["std"]

    llm = [m for m in metrics if m in LLM_ALONE]
    peers = [m for m in metrics if m in PEERS]
    blends = [m for m in metrics if "+" in m]
    best_llm = max(llm, key=lambda m: stat(m, "ndcg@20")[0])
    best_peer = max(peers, key=lambda m: stat(m, "ndcg@20")[0])
    row = {"dataset": name, "users": int(metrics[best_llm]["users"]["mean"]), "models": {}}
    for m in llm + [best_peer, "popularity"] + blends:
        row["models"][m] = {k: stat(m, k) for k in ("recall@20", "ndcg@20")}
    below = []
    for seed, run in result["runs"].items():
        record = run["tuning"].get("served", {})
        below += [f"{m} (valid, seed {seed})" for m in record.get("flagged", []) if m in LLM_ALONE]
    pop = {k: metrics["popularity"][k]["values"] for k in ("recall@20", "ndcg@20")}
    for m in llm:
        for k in ("recall@20", "ndcg@20"):
            below += [f"{m} (test {k}, seed {i})" for i, (a, b) in
                      enumerate(zip(metrics[m][k]["values"], pop[k])) if a <= b]
    margins = {}
    for k in ("recall@20", "ndcg@20"):
        (a, sa), (b, sb) = stat(best_llm, k), stat(best_peer, k)
        margins[k] = {"margin": a - b, "spread": max(sa, sb)}
    row.update(best_llm=best_llm, best_peer=best_peer, below_popularity=below, margins=margins,
               served=sorted({r["tuning"].get("served", {}).get("served") for r in result["runs"].values()}))
    return row


def model_row(row: dict, model: str) -> dict:
    v = row["models"][model]
    tag = " (LLM alone)" if model in LLM_ALONE else " (best peer)" if model == row["best_peer"] else ""
    return {"dataset": f"{row['dataset']} ({row['users']} users)", "model": model + tag,
            **{k: f"{v[k][0]:.4f} +- {v[k][1]:.4f}" for k in ("recall@20", "ndcg@20")}}


def target_row(row: dict) -> dict:
    mg = row["margins"]
    r, n = (f"{mg[k]['margin']:+.4f} ({mg[k]['spread']:.4f})" for k in ("recall@20", "ndcg@20"))
    return {"dataset": row["dataset"], "r": f"{row['best_llm']} vs {row['best_peer']}: {r}", "n": n,
            "below": ", ".join(row["below_popularity"]) or "none", "served": ", ".join(row["served"])}


def markdown(rows: list[dict], seeds: list[int], text: dict | None = None) -> str:
    """The quality table (every dataset's models), the targets, and with `text` the free-text
    queries' table."""
    models = table({"dataset": "{dataset}", "model": "{model}", "Recall@20": "{recall@20}",
                    "NDCG@20": "{ndcg@20}"}, [model_row(r, m) for r in rows for m in r["models"]], "llrr")
    targets = table({"dataset": "{dataset}",
                     "best LLM-feature model alone vs best peer: R@20 margin (spread)": "{r}",
                     "N@20 margin (spread)": "{n}", "LLM-feature models at or below popularity": "{below}",
                     "served": "{served}"}, [target_row(r) for r in rows], "lllll")
    lines = [f"Recall@20 / NDCG@20 on all test users, mean +- std over seeds {seeds}.", "", *models, "", *targets]
    if text:
        lines += ["", f"Free text on ML-100K (\"I love <genre> movies\", every genre; top 10 of "
                  f"{text['items']} items):", "",
                  *table({"popularity weight": "{w}", "share of the top 10 with the genre": "{mean_share:.3f}",
                          "median popularity rank": "{median_rank:.0f}"},
                         ({"w": w, **v} for w, v in text["weights"].items()), "rrr")]
    return "\n".join(lines)


def run_dataset(name: str, spec: tuple[str, list[str]], out: Path, work: Path, seeds: list[int]) -> None:
    """One dataset: `benchmarks/seeds.py` in a process of its own (its own Ray session, logs and
    peak memory), its result copied to `<stem>-<name>.json`; after ML-100K, the free text."""
    if name == "ml-100k-random":
        ml100k_random_split(Path(os.environ["LLMREC_ML100K"]), work / name)
    config, overrides = spec
    overrides = [f"name=quality-{name}", *overrides, f"featurestore.repo_path={repo_for(work, name)}"]
    per_seed = work / name / "seeds.json"  # each seed's metrics files beside it, not in results/
    start = time.perf_counter()
    print(f"[{name}] {config} {' '.join(overrides)}", flush=True)
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "seeds.py"), "--config", config,
                           "--out", str(per_seed), "--seeds", *map(str, seeds),
                           *[a for o in overrides for a in ("--set", o)]], cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"[{name}] benchmarks/seeds.py failed (exit {proc.returncode})")
    shutil.copy(per_seed, out.with_name(f"{out.stem}-{name}.json"))
    if name == "ml-100k":  # the last seed's run answers the free-text queries
        text = free_text(config, overrides + [f"seed={seeds[-1]}"])
        out.with_name(f"{out.stem}-free-text.json").write_text(json.dumps(text, indent=2) + "\n")
    print(f"[{name}] done in {time.perf_counter() - start:.0f}s", flush=True)


def write_table(out: Path, names, seeds: list[int]) -> str:
    """`out` (JSON) and `<stem>.md` from every dataset's results file at hand: the markdown."""
    rows = []
    for name in names:
        part = out.with_name(f"{out.stem}-{name}.json")
        if part.exists():
            rows.append(summarize(name, json.loads(part.read_text())))
    text_file = out.with_name(f"{out.stem}-free-text.json")
    text = json.loads(text_file.read_text()) if text_file.exists() else None
    out.write_text(json.dumps({"seeds": seeds, "datasets": rows, "free_text": text}, indent=2) + "\n")
    md = markdown(rows, seeds, text)
    out.with_suffix(".md").write_text(md + "\n")
    return md


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="JSON path; per-dataset results go beside it")
    p.add_argument("--datasets", nargs="*", default=None,
                   help="a subset (default: all; none: only the table from the results at hand)")
    p.add_argument("--free-text", action="store_true",
                   help="answer the free-text queries with the ML-100K run at hand (no training)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = p.parse_args(argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = ROOT / "runs" / "quality"
    known = datasets(work)
    names = list(known) if args.datasets is None else args.datasets
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"--datasets: unknown {unknown} (known: {list(known)})")
    for name in names:
        if isinstance(known[name], str):
            print(f"[{name}] skipped: {known[name]}", flush=True)
        else:
            run_dataset(name, known[name], out, work, args.seeds)
    if args.free_text and isinstance(known["ml-100k"], str):
        print(f"[free text] skipped: {known['ml-100k']}", flush=True)
    elif args.free_text and "ml-100k" not in names:
        config, overrides = known["ml-100k"]
        text = free_text(config, ["name=quality-ml-100k", *overrides,
                                  f"featurestore.repo_path={work / 'ml-100k' / 'feature_repo'}"])
        out.with_name(f"{out.stem}-free-text.json").write_text(json.dumps(text, indent=2) + "\n")
    print(write_table(out, known, args.seeds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
