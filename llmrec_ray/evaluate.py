"""Full-ranking evaluation of the trained model and the baselines on one split's test queries.

Each query (a user at a moment: the user-temporal split time, or in the global-temporal protocol
the snapshot serving the user's next interactions) is scored with the user's features as of the
query time (fetched from Feast, point in time) against every item; the items the user saw before
it and the items not yet available are masked. Metrics at each K, per slice, for every model.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from llmrec_ray.console import progress
from llmrec_ray.featurestore import FeatureRepo
from llmrec_ray.metrics import ranking_metrics
from llmrec_ray.model_inputs import query_data
from llmrec_ray.recommender import Blend, Recommender, TrainedModel, metric_on

logger = logging.getLogger(__name__)


def available_baselines(requested: list[str] | None) -> list[str]:
    """The baselines to run: the requested ones (an unavailable one is an error), or by default all
    whose packages are installed (implicit ALS and BPR need the `als` extra)."""
    from llmrec_ray.baselines import BASELINES, NEEDS_IMPLICIT

    if requested is not None:
        unknown = [b for b in requested if b not in BASELINES]
        if unknown:
            raise ValueError(f"evaluate.baselines: unknown {unknown} (known: {list(BASELINES)})")
        if any(b in NEEDS_IMPLICIT for b in requested):
            import implicit  # noqa: F401  (a clear ImportError names the package)
        return list(requested)
    try:
        import implicit  # noqa: F401
        return list(BASELINES)
    except ImportError:
        logger.warning("implicit is not installed: the implicit_als and bpr baselines are skipped "
                       "(pip install 'llmrec-ray[als]')")
        return [b for b in BASELINES if b not in NEEDS_IMPLICIT]


def slices(truth: list[set[int]], fit: pa.Table, users: list[str], item_ids: list[str],
           light_user_max: int, new_users: bool = False) -> dict[str, list[set[int]]]:
    """Test items per query for each slice (a query with an empty set is not evaluated in it).

    all: every query. cold_items: only test items without any interaction in the fit rows (their
    only representation is their text). light_users: users with at most `light_user_max` fit
    interactions. new_users (with `new_users`): users with no fit interaction at all, who arrived
    after the cut (global-temporal protocol).
    """
    trained = set(fit.column("item_id").to_pylist())
    cold = {k for k, i in enumerate(item_ids) if i not in trained}
    counts = pc.value_counts(fit.column("user_id"))
    n_fit = dict(zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist()))
    light = [n_fit.get(u, 0) <= light_user_max for u in users]
    out = {"all": truth,
           "cold_items": [t & cold for t in truth],
           "light_users": [t if is_light else set() for t, is_light in zip(truth, light)]}
    if new_users:
        out["new_users"] = [t if u not in n_fit else set() for t, u in zip(truth, users)]
    return out


def tune_blend(trained: Recommender, peers: dict[str, Recommender], valid: dict, metric: str,
               weights: list[float], peer_items: np.ndarray | None = None,
               cold_boosts: list[float] = (), tolerance: float = 0.0) -> tuple[Blend, list[dict]]:
    """The blend of `trained` with the peer best on the validation queries, at the weight best on
    them (ties to the earlier weight); items outside `peer_items` (items without training
    interactions) keep the trained model's score (`Blend`). Then the new-item boost: of
    `cold_boosts` (and 0), the largest whose validation value is within `tolerance` (a fraction)
    of the best of them: the most exposure cold items can get for that accuracy budget
    (tolerance 0: the boost best on validation, ties to the smaller). Returns (blend, trials:
    the peers', weights' and boosts' values)."""
    peer_values = {name: metric_on(rec, valid, metric) for name, rec in peers.items()}
    peer = max(peer_values, key=lambda n: peer_values[n])  # first of equals: dicts keep order
    trials: list[dict] = [{"peer": n, "value": v} for n, v in peer_values.items()]
    best, best_value, best_trial = None, -np.inf, None
    for w in weights:
        blend = Blend(trained, peers[peer], w, peer_items)
        value = metric_on(blend, valid, metric)
        trials.append({"weight": w, "value": value})
        if value > best_value + 1e-12:
            best, best_value, best_trial = blend, value, trials[-1]
    if peer_items is not None and not np.all(peer_items) and any(b > 0 for b in cold_boosts):
        boosted = [(best_trial, best_value, best)]
        for boost in sorted(b for b in set(cold_boosts) if b > 0):
            blend = Blend(trained, peers[peer], best.weight, peer_items, boost)
            value = metric_on(blend, valid, metric)
            trials.append({"weight": best.weight, "cold_boost": boost, "value": value})
            boosted.append((trials[-1], value, blend))
        top = max(v for _, v, _ in boosted)
        floor = top * (1.0 - tolerance) - 1e-12
        if top > 0:  # (a model that finds nothing on validation gets no boost)
            best_trial, _, best = [b for b in boosted if b[1] >= floor][-1 if tolerance else 0]
    best_trial["chosen"] = True
    logger.info("blend %s tuned on validation: %s", best.name, trials)
    return best, trials


def validation_values(trained: Recommender, peers: dict[str, Recommender], blend, tuning: dict,
                      valid: dict, metric: str) -> dict[str, float]:
    """Each scorer's validation value: the trained model's measured here, a tuned scorer's from
    the trial its tuning chose (a single-point grid measured here), the blend's at its best
    weight (the new-item boost is a product choice within `evaluate.cold_boost_tolerance`, not
    a loss of skill)."""
    values = {trained.name: metric_on(trained, valid, metric)}
    for name, rec in peers.items():
        chosen = [t["value"] for t in tuning[name]["trials"] if t.get("chosen") and t["value"] is not None]
        values[name] = chosen[0] if chosen else metric_on(rec, valid, metric)
    if blend is not None:  # its best weight, before the new-item boost spends its accuracy budget
        values[blend.name] = max(t["value"] for t in tuning[blend.name]["trials"]
                                 if "weight" in t and "cold_boost" not in t)
    return values


def choose_served(trained: Recommender, peers: dict[str, Recommender], blend, tuning: dict,
                  valid: dict | None, metric: str) -> tuple[Recommender | None, dict]:
    """The guard against a model that learned nothing, and what `recommend` serves.

    Every LLM-feature scorer (the trained model, its blend, the closed-form text models) is
    compared with popularity on the validation queries; one at or below it is flagged. The
    served scorer is the LLM-feature scorer best on validation that is above popularity (the
    trained model alone, its blend, or a closed-form model); when none is, the scorer best on
    validation of all. Returns (the served scorer, None = the trained model alone; the record:
    values, flagged, served, reason)."""
    if valid is None:
        served = blend
        return served, {"served": (served or trained).name, "values": {}, "flagged": [],
                        "reason": "no validation queries: the blend as tuned, or the model alone"}
    values = validation_values(trained, peers, blend, tuning, valid, metric)
    scorers = {trained.name: trained, **peers, **({blend.name: blend} if blend is not None else {})}
    llm = [n for n, r in scorers.items() if r.uses_text or n == getattr(blend, "name", None)]
    llm = [n for n in llm if n != "zero_shot_cosine"]  # a reference point, not a served model
    floor = values.get("popularity")
    flagged = [n for n in llm if floor is not None and values[n] <= floor + 1e-12]
    ok = [n for n in llm if n not in flagged]

    def servable(name: str) -> bool:  # what `artifacts.save_blend` can keep (or the model itself)
        rec = scorers[name]
        return name == trained.name or hasattr(getattr(rec, "b", rec) if rec is blend else rec, "state")

    pool = [n for n in ok if servable(n)] or [n for n in scorers if servable(n)]
    best = max(pool, key=lambda n: values[n])
    if ok:
        reason = f"the LLM-feature scorer best on validation {metric}"
    else:
        reason = (f"every LLM-feature scorer is at or below popularity on validation {metric}: "
                  f"the scorer best on validation instead")
    for n in flagged:
        logger.warning("%s: validation %s %.4f is not above popularity's %.4f: it learned nothing "
                       "useful", n, metric, values[n], floor)
    record = {"served": best, "values": values, "flagged": flagged, "popularity": floor,
              "metric": f"valid {metric}", "reason": reason}
    return (None if best == trained.name else scorers[best]), record


def evaluate(repo: FeatureRepo, model, split, items: pa.Table, item_ids: list[str], ecfg,
             seed: int = 0, metric: str = "ndcg@20", valid: dict | None = None,
             ) -> tuple[dict[str, dict[str, dict[str, float]]], dict, Recommender | None]:
    """({slice: {model: metrics}}, {scorer: tuning, "served": the guard's record}, the scorer to
    serve (`choose_served`: the blend, a closed-form model, or None = the trained model)) over
    `split.test_queries` for the trained model and the baselines (`ecfg`: the `EvalConfig`), all fitted on `split.fit`, each query
    ranked over every item available at its time, the items the user saw before it masked. Each
    baseline's hyperparameters are chosen from its grid (`ecfg.grids` over
    `baselines.DEFAULT_GRIDS`) by `metric` on the validation queries (`valid`, as
    `model_inputs.validation_data` prepares them). With `ecfg.blend_weights` and validation
    queries, the trained model is also blended with the peer best on validation (`Blend`), its
    weight chosen on validation too."""
    from llmrec_ray import baselines as base

    ks, baselines, light_user_max, blend_weights = ecfg.ks, ecfg.baselines, ecfg.light_user_max, ecfg.blend_weights
    grids = {**base.DEFAULT_GRIDS, **(ecfg.grids or {})}

    queries = split.test_queries
    if queries.empty:
        raise ValueError(f"{split.protocol}: no test queries (too few interactions for this split)")
    vocab = model.vocab
    data = query_data(repo, queries, items, item_ids, vocab)
    test, mask, truth = data["queries"], data["mask"], data["truth"]
    k_max = max(ks)

    trained = TrainedModel(model)
    names = available_baselines(baselines)
    blending = bool(blend_weights) and valid is not None and bool(names)
    bar = progress("evaluate", 1 + len(names) + blending, "models")
    # each model's (Q, I) scores are ranked block by block as soon as they exist: one at a time
    ranked: dict[str, np.ndarray] = {trained.name: trained.top_k(test, mask, k_max)}
    bar.update(1, trained.name)
    # the closed-form text models read the item text through the trained model's learned
    # projection of it when the model has one (its text-only path), else the raw LLM vectors
    item_emb = test.features.get("item_emb")
    learned = trained.text_vectors(item_emb) if item_emb is not None else None
    fit = base.FitData(base.interaction_matrix(split.fit, vocab["users"], item_ids), vocab["users"],
                       item_ids, seed, item_text=item_emb if learned is None else learned)
    tuning, peers = {}, {}
    for name in names:
        start = time.perf_counter()
        score_fn = (lambda rec: metric_on(rec, valid, metric)) if valid is not None else None
        rec, trials = base.tune(name, grids.get(name, {}), fit, score_fn,
                                lambda i, n, name=name: bar.update(0, f"{name}: grid point {i + 1}/{n}"))
        ranked[name] = rec.top_k(test, mask, k_max)
        tuning[name] = {"chosen": rec.params, "trials": trials, "metric": f"valid {metric}"}
        if rec.uses_text and name != "zero_shot_cosine":
            tuning[name]["text_vectors"] = "raw LLM" if learned is None else f"{trained.name}'s learned projection"
        peers[name] = rec
        logger.info("baseline %s %s fitted, tuned, scored and ranked in %.1fs", name, rec.params,
                    time.perf_counter() - start)
        bar.update(1, name)
    # the blend's partner: an interaction-only peer (the LLM-feature models are the other side)
    cf_peers = {n: r for n, r in peers.items() if not r.uses_text}
    blending = blending and bool(cf_peers)
    blend = None
    if blending:
        blend, trials = tune_blend(trained, cf_peers, valid, metric, blend_weights, fit.trained_items,
                                   ecfg.cold_boosts, ecfg.cold_boost_tolerance)
        ranked[blend.name] = blend.top_k(test, mask, k_max)
        tuning[blend.name] = {"chosen": blend.params, "trials": trials, "metric": f"valid {metric}"}
        bar.update(1, blend.name)
    bar.close()
    served, guard = choose_served(trained, peers, blend, tuning, valid, metric)
    tuning["served"] = guard
    groups = slices(truth, split.fit, queries["user_id"].tolist(), item_ids, light_user_max,
                    new_users=split.protocol == "global-temporal")
    results: dict[str, dict[str, dict[str, float]]] = {s: {} for s in groups}
    for name, top in ranked.items():
        for slice_name, slice_truth in groups.items():
            results[slice_name][name] = ranking_metrics(top, slice_truth, ks)
    return results, tuning, served


def format_table(results: dict[str, dict[str, dict[str, float]]], ks: list[int]) -> str:
    """Markdown: one table per slice, one row per model, Recall/NDCG/HR/Precision/F1/MRR at each K."""
    cols = [f"{m}@{k}" for k in ks for m in ("recall", "ndcg", "hr", "precision", "f1", "mrr")]
    out = []
    for slice_name, models in results.items():
        users = next(iter(models.values()))["users"] if models else 0
        out.append(f"**{slice_name}** ({users} users)\n")
        out.append("| model | " + " | ".join(cols) + " |")
        out.append("|---|" + "---:|" * len(cols))
        for name, m in models.items():
            out.append(f"| {name} | " + " | ".join(f"{m[c]:.4f}" for c in cols) + " |")
        out.append("")
    return "\n".join(out).rstrip()


def format_summary(results: dict[str, dict[str, dict[str, float]]], k: int,
                   flagged: list[str] = ()) -> str:
    """The terminal's table: one row per model, Recall@k and NDCG@k of every slice (the markdown
    file of `write_results` has every metric at every K); `flagged` models (at or below
    popularity on validation) are marked."""
    slices_ = [s for s, models in results.items() if models]
    head = [f"{s} ({next(iter(results[s].values()))['users']} users)" for s in slices_]
    label = {n: (f"{n} (!)" if n in flagged else n) for s in slices_ for n in results[s]}
    width = max([len("model")] + [len(n) for n in label.values()])
    cols = [f"{h} R@{k} / N@{k}" for h in head]
    lines = [f"{'model':<{width}}  " + "  ".join(f"{c:>{max(len(c), 15)}}" for c in cols)]
    for name in results[slices_[0]] if slices_ else []:
        cells = []
        for s, c in zip(slices_, cols):
            m = results[s].get(name)
            cell = "-" if m is None else f"{m[f'recall@{k}']:.4f} / {m[f'ndcg@{k}']:.4f}"
            cells.append(f"{cell:>{max(len(c), 15)}}")
        lines.append(f"{label[name]:<{width}}  " + "  ".join(cells))
    if flagged:
        lines.append("(!) not above popularity on the validation queries: learned nothing useful")
    return "\n".join(lines)


def format_tuning(tuning: dict) -> str:
    """One line per tuned scorer: the hyperparameters chosen on validation, out of how many
    tried; then the guard's verdict and what `recommend` serves (`tuning["served"]`)."""
    lines = []
    for name, t in tuning.items():
        if name == "served":
            continue
        chosen = ", ".join(f"{k}={v}" for k, v in t["chosen"].items())
        tried = len(t["trials"])
        best = next((x["value"] for x in t["trials"] if x.get("chosen")), None)
        lines.append(f"- {name}: {chosen or 'no hyperparameters'}" + (
            f" (of {tried} tried on {t['metric']}: {best:.4f})" if tried > 1 and best is not None else ""))
    validated = any(x.get("value") is not None for name, t in tuning.items() if name != "served"
                    for x in t["trials"])
    head = ("Hyperparameters (chosen on the validation queries):" if validated else
            "Hyperparameters (no validation queries: each grid's first point, not tuned; no blend):")
    out = head + "\n" + "\n".join(lines)
    return out + ("\n" + format_guard(tuning["served"]) if "served" in tuning else "")


def format_guard(record: dict) -> str:
    """The guard's lines: every LLM-feature scorer at or below popularity on validation, in
    plain words, and the scorer `recommend` serves."""
    lines = []
    for name in record.get("flagged", []):
        lines.append(f"FAILED: {name} learned nothing useful: it is not above popularity on the "
                     f"validation queries ({record['values'][name]:.4f} against "
                     f"{record['popularity']:.4f} {record['metric']}).")
    lines.append(f"recommend serves {record['served']} ({record['reason']}).")
    return "\n".join(lines)


def write_results(results: dict, path: Path, tuning: dict | None = None) -> list[Path]:
    """The metrics as JSON at `path` (with the baselines' chosen hyperparameters under
    "tuning" in <stem>-tuning.json), the tables as markdown beside it (.md) and one bar chart per
    slice (<stem>-<slice>.png: Recall@20 and NDCG@20 of every model). Returns the files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))
    ks = sorted({int(k.split("@")[1]) for m in next(iter(results.values())).values() for k in m if "@" in k})
    md = path.with_suffix(".md")
    md.write_text(format_table(results, ks) + "\n" + (f"\n{format_tuning(tuning)}\n" if tuning else ""))
    if tuning:
        tuned = path.parent / f"{path.stem}-tuning.json"
        tuned.write_text(json.dumps(tuning, indent=2, default=float))
        return [path, md, tuned] + plot_results(results, path.parent / path.stem, k=max(ks))
    return [path, md] + plot_results(results, path.parent / path.stem, k=max(ks))


def plot_results(results: dict, prefix: Path, k: int = 20) -> list[Path]:
    """One PNG per slice: Recall@k and NDCG@k of every model, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    for slice_name, models in results.items():
        names = list(models)
        x = np.arange(len(names))
        fig, ax = plt.subplots(figsize=(1.4 * len(names) + 2, 3.6))
        for offset, metric in ((-0.2, "recall"), (0.2, "ndcg")):
            values = [models[n][f"{metric}@{k}"] for n in names]
            bars = ax.bar(x + offset, values, width=0.4, label=f"{metric}@{k}")
            ax.bar_label(bars, fmt="%.3f", fontsize=7)
        users = models[names[0]]["users"] if names else 0
        ax.set_xticks(x, names, rotation=20, ha="right")
        ax.set_title(f"{slice_name} ({users} users)")
        ax.legend()
        fig.tight_layout()
        out = Path(f"{prefix}-{slice_name}.png")
        fig.savefig(out, dpi=110)
        plt.close(fig)
        files.append(out)
    return files
