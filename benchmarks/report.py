"""Generate docs/benchmarks.md and the README's results table from benchmarks/results/*.json.

    python benchmarks/report.py          # write both
    python benchmarks/report.py --check  # exit 1 when either is out of date (a test runs this)

Every figure in those two places comes from a results file named beside it; none is typed by
hand. A results file that is missing is reported as "not measured", not left out.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DOC = ROOT / "docs" / "benchmarks.md"
README = ROOT / "README.md"
BEGIN, END = "<!-- results:begin (benchmarks/report.py) -->", "<!-- results:end -->"
GB = 1024.0


def load(name: str) -> dict | None:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.exists() else None


def verdict(value: float | None, target: float, above: bool = True) -> str:
    if value is None:
        return "not measured"
    met = value >= target if above else value <= target
    return f"{'met' if met else 'missed'} by {abs(value - target):.2f}"


def quality_rows(q: dict) -> list[str]:
    """The README table: per dataset, the best LLM-feature model alone, the best peer, popularity."""
    lines = ["| dataset | users | best LLM-feature model alone | best tuned peer | popularity | served |",
             "|---|---:|---|---|---|---|"]
    for row in q["datasets"]:
        m = row["models"]

        def cell(name: str) -> str:
            r, n = m[name]["recall@20"][0], m[name]["ndcg@20"][0]
            return f"{name} {r:.4f} / {n:.4f}"
        lines.append(f"| {row['dataset']} | {row['users']} | {cell(row['best_llm'])} | "
                     f"{cell(row['best_peer'])} | {cell('popularity').split(' ', 1)[1]} | "
                     f"{', '.join(row['served'])} |")
    return lines


def readme_block() -> str:
    q = load("quality.json")
    if q is None:
        return "No quality results yet: run `benchmarks/quality.py`."
    seeds = len(q["seeds"])
    return "\n".join([
        f"Recall@20 / NDCG@20 on every test user, mean of {seeds} seeds, each dataset with the "
        "configs' defaults and every hyperparameter chosen on validation "
        "(`benchmarks/results/quality.json`; spreads and every model in "
        "[docs/benchmarks.md](docs/benchmarks.md)):", "", *quality_rows(q)])


def targets() -> list[str]:
    """The speed and memory targets at a million interactions, each against its results file."""
    lines = ["| target | measured | verdict | file |", "|---|---|---|---|"]
    t = load("train-throughput-1m.json")
    ratio = t["ratios"]["ray_train_over_plain_rows_per_s"] if t else None
    lines.append(f"| Ray Train rows/s >= 0.8x a plain torch loop's (1M rows) | "
                 f"{'%.2fx' % ratio if t else '-'} | {verdict(ratio, 0.8)} | train-throughput-1m.json |")
    r = load("retrieval-1m.json")
    speed = r["ratios"]["project_over_reference_rows_per_s"] if r else None
    mem = r["ratios"]["project_over_reference_peak_pss"] if r else None
    lines.append(f"| retrieval rows/s >= 0.5x the plain as-of join's (1M rows) | "
                 f"{'%.2fx' % speed if r else '-'} | {verdict(speed, 0.5)} | retrieval-1m.json |")
    lines.append(f"| retrieval peak memory <= 2x the plain as-of join's | "
                 f"{'%.2fx' % mem if r else '-'} | {verdict(mem, 2.0, above=False)} | retrieval-1m.json |")
    for name, label in (("pipeline-scale-minilm.json", "MiniLM, items_mean, lognormal, ML-1M's shape"),):
        p = load(name)
        stages = p["sizes"].get("1000000", {}).get("stages", {}) if p else {}
        for stage, limit in (("evaluate", 4.0), ("train", 6.0)):
            s = stages.get(stage)
            peak = (s.get("peak_pss_mb") or s["peak_rss_mb"]) / GB if s else None
            kind = "PSS" if s and s.get("peak_pss_mb") else "RSS"
            lines.append(f"| {stage} peak <= {limit:g} GB at 1M interactions ({label}) | "
                         f"{'%.1f GB %s' % (peak, kind) if s else '-'} | "
                         f"{verdict(peak, limit, above=False)} | {name} |")
        ratio = p.get("ratios", {}).get("whole_over_plain_parts") if p else None
        lines.append(f"| whole run <= 2x its parts done plainly ({label}) | "
                     f"{'%.2fx' % ratio if ratio else '-'} | {verdict(ratio, 2.0, above=False)} | {name} |")
    return lines


def stage_table(p: dict) -> list[str]:
    lines = ["| interactions | users | items | stage | wall s | peak GB |", "|---:|---:|---:|---|---:|---:|"]
    for n, size in p["sizes"].items():
        for stage, s in size["stages"].items():
            peak = (s.get("peak_pss_mb") or s["peak_rss_mb"]) / GB
            kind = "PSS" if s.get("peak_pss_mb") else "RSS"
            lines.append(f"| {size.get('interactions', int(n)):,} | {size['users']:,} | {size['items']:,} | "
                         f"{stage} | {s['wall_s']:.0f} | {peak:.1f} {kind} |")
    plain = p.get("plain")
    if plain:
        whole = sum(s["wall_s"] for s in list(p["sizes"].values())[-1]["stages"].values())
        lines += ["", f"The same parts done plainly in one process (`--plain`): encoding {plain['texts']:,} "
                  f"texts {plain['encode_s']:.0f} s, one epoch of {plain['fit_rows']:,} rows "
                  f"{plain['train_s']:.0f} s, the baselines' grids {plain['baselines_s']:.0f} s: "
                  f"{plain['total_s']:.0f} s, against {whole:.0f} s for the whole run "
                  f"({whole / plain['total_s']:.2f}x; the run's build also generates the data)."]
    return lines


def variants_table(d: dict, rate: str) -> list[str]:
    lines = [f"| variant | wall s | {rate} | peak GB |", "|---|---:|---:|---:|"]
    for name, v in d["variants"].items():
        peak = v.get("peak_pss_mb") or v.get("peak_rss_mb")
        lines.append(f"| {name} | {v['wall_s']:.1f} | {v.get(rate, 0):,.0f} | "
                     f"{'%.1f' % (peak / GB) if peak else '-'} |")
    return lines


def document() -> str:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from quality import markdown

    out = ["# Benchmarks", "",
           "Generated by `python benchmarks/report.py` from `benchmarks/results/*.json`; each "
           "table names its file and the command that writes it. Ratios compare variants measured "
           "side by side in one run on one machine (2 cores here); absolute times vary by about "
           "20% between runs on these shared machines.", ""]
    q = load("quality.json")
    out += ["## Recommendation quality", "",
            "`LLMREC_ML100K=... LLMREC_LASTFM=... python benchmarks/quality.py --out "
            "benchmarks/results/quality.json`: every dataset at hand, the configs' defaults (only "
            "data keys differ), hyperparameters chosen on validation, several training seeds.", ""]
    if q:
        out += [markdown(q["datasets"], q["seeds"]), ""]
        text = q.get("free_text")
        if text:
            out += [f"Free text on ML-100K (\"I love <genre> movies\", every genre; top 10 of "
                    f"{text['items']} items):", "",
                    "| popularity weight | share of the top 10 with the genre | median popularity rank |",
                    "|---:|---:|---:|"]
            out += [f"| {w} | {v['mean_share']:.3f} | {v['median_rank']:.0f} |" for w, v in text["weights"].items()]
            out.append("")
    else:
        out += ["Not measured.", ""]
    out += ["## Speed and memory at a million interactions", "", *targets(), ""]
    sections = [
        ("train-throughput-1m.json", "Training throughput",
         "python benchmarks/train_throughput.py --rows 1000000 --out benchmarks/results/train-throughput-1m.json",
         "rows_per_s"),
        ("retrieval-1m.json", "Point-in-time retrieval",
         "python benchmarks/retrieval.py --rows 1000000 --out benchmarks/results/retrieval-1m.json",
         "rows_per_s"),
        ("retrieval-1m-warm.json", "Point-in-time retrieval, a second retrieval in the same session",
         "python benchmarks/retrieval.py --rows 1000000 --out benchmarks/results/retrieval-1m-warm.json",
         "rows_per_s"),
        ("retrieval-1m-lognormal.json", "Point-in-time retrieval, heavy-tailed histories",
         "python benchmarks/retrieval.py --rows 1000000 --shape lognormal --out "
         "benchmarks/results/retrieval-1m-lognormal.json", "rows_per_s"),
        ("retrieval-10m.json", "Point-in-time retrieval at 10M rows",
         "python benchmarks/retrieval.py --rows 10000000 --variants project --out "
         "benchmarks/results/retrieval-10m.json", "rows_per_s"),
        ("featurestore-cpu.json", "Feature store (Feast's own paths)",
         "python benchmarks/featurestore.py --out benchmarks/results/featurestore-cpu.json", "rows_per_s"),
        ("encode-cpu.json", "Encoding", "python benchmarks/encode.py --out benchmarks/results/encode-cpu.json",
         "texts_per_s"),
    ]
    for name, title, cmd, rate in sections:
        d = load(name)
        out += [f"## {title}", "", f"`{cmd}`", ""]
        out += (variants_table(d, rate) + [""] + [f"- {k}: {v:.3f}" for k, v in d.get("ratios", {}).items()]
                if d else ["Not measured."])
        out.append("")
    commands = {
        "pipeline-scale-minilm.json": "python benchmarks/pipeline_scale.py --interactions 1000000 --shape "
        "lognormal --per-user 165 --encoder minilm --user-vectors items_mean --plain --out "
        "benchmarks/results/pipeline-scale-minilm.json"}
    for name, label in (("pipeline-scale-minilm.json", "MiniLM encoder, items_mean users, heavy-tailed "
                         "histories, MovieLens 1M's shape"),):
        p = load(name)
        out += [f"## Whole pipeline by size ({label})", "", f"`{commands[name]}`", ""]
        out += stage_table(p) if p else ["Not measured."]
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def readme_text() -> str:
    text = README.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{README}: the markers {BEGIN!r} and {END!r} are missing")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{readme_block()}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="exit 1 when a generated file is out of date")
    args = p.parse_args(argv)
    wanted = {DOC: document(), README: readme_text()}
    stale = [path for path, text in wanted.items() if not path.exists() or path.read_text() != text]
    if args.check:
        for path in stale:
            print(f"{path.relative_to(ROOT)} is out of date: run python benchmarks/report.py")
        return 1 if stale else 0
    for path in stale:
        path.write_text(wanted[path])
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
