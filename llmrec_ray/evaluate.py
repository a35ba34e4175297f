"""Full-ranking evaluation of the trained model and the baselines on one split's test queries.

Each query (a user at a moment: the user-temporal split time, or in the global-temporal protocol
the snapshot serving the user's next interactions) is scored with the user's features as of the
query time (fetched from Feast, point in time) against every item; the items the user saw before
it and the items not yet available are masked. Metrics at each K, per slice, for every model.
This module computes; `report` formats and writes what it returns.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from llmrec_ray.console import progress
from llmrec_ray.featurestore import FeatureRepo
from llmrec_ray.metrics import ranking_metrics
from llmrec_ray.model_inputs import query_data
from llmrec_ray.recommender import Blend, FitData, Recommender, TrainedModel, metric_on

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


@dataclass
class Tuned:
    """A scorer tuned on validation: `rec` at the point its tuning chose, the `trials` (each
    point's parameters and validation value, the chosen one marked `"chosen": True`), and `value`,
    its validation value as the guard compares it, recorded by the tuning: the chosen trial's (a
    blend's at its best weight, before the new-item boost), None when none was measured."""

    rec: Recommender
    trials: list[dict]
    value: float | None = None


def tune_blend(trained: Recommender, peers: dict[str, Recommender], valid: dict, metric: str,
               weights: list[float], peer_items: np.ndarray | None = None,
               cold_boosts: list[float] = (), tolerance: float = 0.0) -> Tuned:
    """The blend of `trained` with the peer best on the validation queries, at the weight best on
    them (ties to the earlier weight); items outside `peer_items` (items without training
    interactions) keep the trained model's score (`Blend`). Then the new-item boost: of
    `cold_boosts` (and 0), the largest whose validation value is within `tolerance` (a fraction)
    of the best of them: the most exposure cold items can get for that accuracy budget
    (tolerance 0: the boost best on validation, ties to the smaller). Returns the blend, the
    trials (the peers', weights' and boosts' values) and its value at the best weight."""
    peer_values = {name: metric_on(rec, valid, metric) for name, rec in peers.items()}
    peer = max(peer_values, key=lambda n: peer_values[n])  # first of equals: dicts keep order
    trials: list[dict] = [{"peer": n, "value": v} for n, v in peer_values.items()]
    best, best_value, best_trial, top_weight = None, -np.inf, None, -np.inf
    for w in weights:
        blend = Blend(trained, peers[peer], w, peer_items)
        value = metric_on(blend, valid, metric)
        trials.append({"weight": w, "value": value})
        top_weight = max(top_weight, value)
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
    return Tuned(best, trials, top_weight)


def validation_values(trained: Recommender, tuned: dict[str, Tuned], valid: dict,
                      metric: str) -> dict[str, float]:
    """Each scorer's validation value: the trained model's measured here, a tuned scorer's as
    its tuning recorded it (`Tuned.value`; a single-point grid, not measured there, measured
    here). A blend's is at its best weight: the new-item boost is a product choice within
    `evaluate.cold_boost_tolerance`, not a loss of skill."""
    values = {trained.name: metric_on(trained, valid, metric)}
    for name, t in tuned.items():
        values[name] = t.value if t.value is not None else metric_on(t.rec, valid, metric)
    return values


def choose_served(trained: Recommender, scorers: dict[str, Recommender], blend: Blend | None,
                  values: dict[str, float] | None, metric: str) -> tuple[Recommender | None, dict]:
    """The guard against a model that learned nothing, and what `recommend` serves.

    Every LLM-feature scorer (the trained model, its blend, the closed-form text models) is
    compared with popularity on the validation queries (`values`: `validation_values`, None
    without validation queries). The served scorer is the LLM-feature scorer best on validation
    that is above popularity (the trained model alone, its blend, or a closed-form model); when
    none is, the scorer best on validation of all. `scorers`: the tuned scorers by name (the
    baselines, then the blend). Returns (the served scorer, None = the trained model alone; the
    record: values, flagged, served, reason)."""
    if values is None:
        return blend, {"served": (blend or trained).name, "values": {}, "flagged": [],
                       "reason": "no validation queries: the blend as tuned, or the model alone"}
    scorers = {trained.name: trained, **scorers}
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


def fit_data(trained: TrainedModel, split, test, item_ids: list[str], vocab: dict,
             seed: int) -> tuple[FitData, np.ndarray | None]:
    """The baselines' `FitData` on `split.fit`, and the trained model's learned projection of the
    item text (None without one): the closed-form text models read the item text through it when
    the model has one (its text-only path), else the raw LLM vectors."""
    from llmrec_ray import baselines as base

    item_emb = test.features.get("item_emb")
    learned = trained.text_vectors(item_emb) if item_emb is not None else None
    fit = FitData(base.interaction_matrix(split.fit, vocab["users"], item_ids), vocab["users"],
                  item_ids, seed, item_text=item_emb if learned is None else learned)
    return fit, learned


def tune_baseline(name: str, grid: dict, fit: FitData, valid: dict | None, metric: str, bar) -> Tuned:
    """Baseline `name` fitted on `fit` at each point of its `grid`, the point best on validation
    kept (`baselines.tune`)."""
    from llmrec_ray import baselines as base

    score_fn = (lambda rec: metric_on(rec, valid, metric)) if valid is not None else None
    rec, trials = base.tune(name, grid, fit, score_fn,
                            lambda i, n: bar.update(0, f"{name}: grid point {i + 1}/{n}"))
    chosen = next(t for t in trials if t.get("chosen"))  # the point `tune` marked
    return Tuned(rec, trials, chosen["value"])


def run_baselines(names: list[str], grids: dict, fit: FitData, valid: dict | None, metric: str,
                  rank, bar, reads: str) -> tuple[dict[str, Tuned], dict[str, dict], dict[str, np.ndarray]]:
    """Each baseline in turn tuned (`tune_baseline`) and ranked (`rank`: its top-K lists of the
    test queries) -> ({name: `Tuned`}, {name: `tuning_record`}, {name: top-K lists}); `reads`:
    the text vectors the closed-form text models read, for their records."""
    tuned: dict[str, Tuned] = {}
    tuning: dict[str, dict] = {}
    ranked: dict[str, np.ndarray] = {}
    for name in names:
        start = time.perf_counter()
        tuned[name] = tune_baseline(name, grids.get(name, {}), fit, valid, metric, bar)
        rec = tuned[name].rec
        ranked[name] = rank(rec)
        text = reads if rec.uses_text and name != "zero_shot_cosine" else None
        tuning[name] = tuning_record(tuned[name], metric, text)
        logger.info("baseline %s %s fitted, tuned, scored and ranked in %.1fs", name, rec.params,
                    time.perf_counter() - start)
        bar.update(1, name)
    return tuned, tuning, ranked


def tuning_record(tuned: Tuned, metric: str, text_vectors: str | None = None) -> dict:
    """What the tuning of one scorer reports: the chosen hyperparameters, the trials, the metric
    (and, for a closed-form text model, which text vectors it read)."""
    record = {"chosen": tuned.rec.params, "trials": tuned.trials, "metric": f"valid {metric}"}
    return record if text_vectors is None else {**record, "text_vectors": text_vectors}


def rank_slices(ranked: dict[str, np.ndarray], groups: dict[str, list[set[int]]],
                ks: list[int]) -> dict[str, dict[str, dict[str, float]]]:
    """{slice: {model: metrics}} of each model's top-K lists against each slice's test items."""
    results: dict[str, dict[str, dict[str, float]]] = {s: {} for s in groups}
    for name, top in ranked.items():
        for slice_name, slice_truth in groups.items():
            results[slice_name][name] = ranking_metrics(top, slice_truth, ks)
    return results


def evaluate(repo: FeatureRepo, model, split, items: pa.Table, item_ids: list[str], ecfg,
             seed: int = 0, metric: str = "ndcg@20", valid: dict | None = None,
             ) -> tuple[dict[str, dict[str, dict[str, float]]], dict, Recommender | None]:
    """({slice: {model: metrics}}, {scorer: tuning, "served": the guard's record}, the scorer to
    serve (`choose_served`: the blend, a closed-form model, or None = the trained model)) over
    `split.test_queries` for the trained model and the baselines (`ecfg`: the `EvalConfig`), all
    fitted on `split.fit`, each query ranked over every item available at its time, the items the
    user saw before it masked. Each baseline's hyperparameters are chosen from its grid
    (`ecfg.grids` over `baselines.DEFAULT_GRIDS`) by `metric` on the validation queries (`valid`,
    as `model_inputs.validation_data` prepares them). With `ecfg.blend_weights` and validation
    queries, the trained model is also blended with the peer best on validation (`Blend`), its
    weight chosen on validation too."""
    from llmrec_ray.baselines import DEFAULT_GRIDS

    queries = split.test_queries
    if queries.empty:
        raise ValueError(f"{split.protocol}: no test queries (too few interactions for this split)")
    data = query_data(repo, queries, items, item_ids, model.vocab)
    k_max, grids = max(ecfg.ks), {**DEFAULT_GRIDS, **(ecfg.grids or {})}

    def rank(rec: Recommender) -> np.ndarray:  # each model's scores ranked block by block, one at a time
        return rec.top_k(data["queries"], data["mask"], k_max)

    trained = TrainedModel(model)
    names = available_baselines(ecfg.baselines)
    blending = bool(ecfg.blend_weights) and valid is not None and bool(names)
    bar = progress("evaluate", 1 + len(names) + blending, "models")
    ranked: dict[str, np.ndarray] = {trained.name: rank(trained)}
    bar.update(1, trained.name)
    fit, learned = fit_data(trained, split, data["queries"], item_ids, model.vocab, seed)
    reads = "raw LLM" if learned is None else f"{trained.name}'s learned projection"
    tuned, tuning, peer_ranks = run_baselines(names, grids, fit, valid, metric, rank, bar, reads)
    ranked.update(peer_ranks)
    # the blend's partner: an interaction-only peer (the LLM-feature models are the other side)
    cf_peers = {n: t.rec for n, t in tuned.items() if not t.rec.uses_text}
    blend = None
    if blending and cf_peers:
        blended = tune_blend(trained, cf_peers, valid, metric, ecfg.blend_weights, fit.trained_items,
                             ecfg.cold_boosts, ecfg.cold_boost_tolerance)
        blend = blended.rec
        tuned[blend.name], ranked[blend.name] = blended, rank(blend)
        tuning[blend.name] = tuning_record(blended, metric)
        bar.update(1, blend.name)
    bar.close()
    values = validation_values(trained, tuned, valid, metric) if valid is not None else None
    served, tuning["served"] = choose_served(trained, {n: t.rec for n, t in tuned.items()}, blend,
                                             values, metric)
    groups = slices(data["truth"], split.fit, queries["user_id"].tolist(), item_ids,
                    ecfg.light_user_max, new_users=split.protocol == "global-temporal")
    return rank_slices(ranked, groups, ecfg.ks), tuning, served
