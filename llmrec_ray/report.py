"""Reporting of an evaluation: the markdown tables, the terminal's table, the tuning and guard
lines, the JSON files and the bar charts. It reads what `evaluate.evaluate` returns and computes
nothing of its own: the metric columns are `metrics.METRICS`, the chosen trial is the one the
tuning marked `"chosen"`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from llmrec_ray.metrics import METRICS
from llmrec_ray.storage import atomic_file, write_atomic


def format_table(results: dict[str, dict[str, dict[str, float]]], ks: list[int]) -> str:
    """Markdown: one table per slice, one row per model, every metric of `METRICS` at each K."""
    cols = [f"{m}@{k}" for k in ks for m in METRICS]
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


def chosen_trial(trials: list[dict]) -> dict | None:
    """The trial its tuning chose (marked `"chosen": True` by `baselines.tune` and
    `evaluate.tune_blend`), None when none is."""
    return next((t for t in trials if t.get("chosen")), None)


def format_tuning(tuning: dict) -> str:
    """One line per tuned scorer: the hyperparameters chosen on validation, out of how many
    tried; then the guard's verdict and what `recommend` serves (`tuning["served"]`)."""
    lines = []
    for name, t in tuning.items():
        if name == "served":
            continue
        chosen = ", ".join(f"{k}={v}" for k, v in t["chosen"].items())
        tried = len(t["trials"])
        best = (chosen_trial(t["trials"]) or {}).get("value")
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


def result_ks(results: dict) -> list[int]:
    """The Ks the results hold (their metric names' `@k`), ascending."""
    first = next(iter(results.values()))  # {model: metrics} of the first slice
    return sorted({int(k.split("@")[1]) for m in first.values() for k in m if "@" in k})


def write_results(results: dict, path: Path, tuning: dict | None = None) -> list[Path]:
    """The metrics as JSON at `path` (with the baselines' chosen hyperparameters under
    "tuning" in <stem>-tuning.json), the tables as markdown beside it (.md) and one bar chart per
    slice (<stem>-<slice>.png: Recall@20 and NDCG@20 of every model). Returns the files."""
    write_atomic(path, json.dumps(results, indent=2))
    ks = result_ks(results)
    md = path.with_suffix(".md")
    write_atomic(md, format_table(results, ks) + "\n" + (f"\n{format_tuning(tuning)}\n" if tuning else ""))
    files = [path, md]
    if tuning:
        tuned = path.parent / f"{path.stem}-tuning.json"
        write_atomic(tuned, json.dumps(tuning, indent=2, default=float))
        files.append(tuned)
    return files + plot_results(results, path.parent / path.stem, k=max(ks))


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
        with atomic_file(out) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
        plt.close(fig)
        files.append(out)
    return files
