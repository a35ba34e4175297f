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

from quality import markdown as quality_markdown
from variants import ROOT, by_name, table

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
    def cell(row: dict, name: str) -> str:
        r, n = row["models"][name]["recall@20"][0], row["models"][name]["ndcg@20"][0]
        return f"{name} {r:.4f} / {n:.4f}"

    return table({"dataset": "{dataset}", "users": "{users}",
                  "best LLM-feature model alone": lambda row: cell(row, row["best_llm"]),
                  "best tuned peer": lambda row: cell(row, row["best_peer"]),
                  "popularity": lambda row: cell(row, "popularity").split(" ", 1)[1],
                  "served": lambda row: ", ".join(row["served"])}, q["datasets"], "lrllll")


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


def target(text: str, measured: str, verdict_: str, name: str) -> dict:
    return {"target": text, "measured": measured, "verdict": verdict_, "file": name}


def pipeline_targets(name: str, label: str) -> list[dict]:
    p = load(name)
    stages = p["sizes"].get("1000000", {}).get("stages", {}) if p else {}
    rows = []
    for stage, limit in (("evaluate", 4.0), ("train", 6.0)):
        s = stages.get(stage)
        peak = (s.get("peak_pss_mb") or s["peak_rss_mb"]) / GB if s else None
        kind = "PSS" if s and s.get("peak_pss_mb") else "RSS"
        rows.append(target(f"{stage} peak <= {limit:g} GB at 1M interactions ({label})",
                           "%.1f GB %s" % (peak, kind) if s else "-", verdict(peak, limit, above=False), name))
    ratio = p.get("ratios", {}).get("whole_over_plain_parts") if p else None
    rows.append(target(f"whole run <= 2x its parts done plainly ({label})", "%.2fx" % ratio if ratio else "-",
                       verdict(ratio, 2.0, above=False), name))
    return rows


def targets() -> list[str]:
    """The speed and memory targets at a million interactions, each against its results file."""
    t = load("train-throughput-1m.json")
    ratio = t["ratios"]["ray_train_over_plain_rows_per_s"] if t else None
    r = load("retrieval-1m.json")
    speed = r["ratios"]["project_over_reference_rows_per_s"] if r else None
    mem = r["ratios"]["project_over_reference_peak_pss"] if r else None
    rows = [target("Ray Train rows/s >= 0.8x a plain torch loop's (1M rows)", "%.2fx" % ratio if t else "-",
                   verdict(ratio, 0.8), "train-throughput-1m.json"),
            target("retrieval rows/s >= 0.5x the plain as-of join's (1M rows)", "%.2fx" % speed if r else "-",
                   verdict(speed, 0.5), "retrieval-1m.json"),
            target("retrieval peak memory <= 2x the plain as-of join's", "%.2fx" % mem if r else "-",
                   verdict(mem, 2.0, above=False), "retrieval-1m.json"),
            *pipeline_targets("pipeline-scale-minilm.json", "MiniLM, items_mean, lognormal, ML-1M's shape")]
    return table({k: "{%s}" % k for k in ("target", "measured", "verdict", "file")}, rows, "llll")


def stage_row(n: str, size: dict, stage: str, s: dict) -> dict:
    peak = (s.get("peak_pss_mb") or s["peak_rss_mb"]) / GB
    return {"n": size.get("interactions", int(n)), "users": size["users"], "items": size["items"],
            "stage": stage, "wall_s": s["wall_s"], "peak": f"{peak:.1f} {'PSS' if s.get('peak_pss_mb') else 'RSS'}"}


def stage_table(p: dict) -> list[str]:
    rows = [stage_row(n, size, stage, s) for n, size in p["sizes"].items() for stage, s in size["stages"].items()]
    lines = table({"interactions": "{n:,}", "users": "{users:,}", "items": "{items:,}", "stage": "{stage}",
                   "wall s": "{wall_s:.0f}", "peak GB": "{peak}"}, rows, "rrrlrr")
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
    def peak(v: dict) -> str:
        mb = v.get("peak_pss_mb") or v.get("peak_rss_mb")
        return "%.1f" % (mb / GB) if mb else "-"

    return table({"variant": "{variant}", "wall s": "{wall_s:.1f}", rate: lambda v: f"{v.get(rate, 0):,.0f}",
                  "peak GB": peak}, by_name(d["variants"]))


# (results file, section title, the command that writes it, the rate column) of each variants table
SECTIONS = [
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
PIPELINE = ("pipeline-scale-minilm.json",
            "MiniLM encoder, items_mean users, heavy-tailed histories, MovieLens 1M's shape",
            "python benchmarks/pipeline_scale.py --interactions 1000000 --shape lognormal --per-user 165 "
            "--encoder minilm --user-vectors items_mean --plain --out benchmarks/results/pipeline-scale-minilm.json")


def quality_section() -> list[str]:
    q = load("quality.json")
    out = ["## Recommendation quality", "",
           "`LLMREC_ML100K=... LLMREC_LASTFM=... python benchmarks/quality.py --out "
           "benchmarks/results/quality.json`: every dataset at hand, the configs' defaults (only "
           "data keys differ), hyperparameters chosen on validation, several training seeds.", ""]
    return out + ([quality_markdown(q["datasets"], q["seeds"], q.get("free_text")), ""] if q else ["Not measured.", ""])


def variants_section(name: str, title: str, cmd: str, rate: str) -> list[str]:
    d = load(name)
    body = (variants_table(d, rate) + [""] + [f"- {k}: {v:.3f}" for k, v in d.get("ratios", {}).items()]
            if d else ["Not measured."])
    return [f"## {title}", "", f"`{cmd}`", "", *body, ""]


def pipeline_section(name: str, label: str, cmd: str) -> list[str]:
    p = load(name)
    return [f"## Whole pipeline by size ({label})", "", f"`{cmd}`", "",
            *(stage_table(p) if p else ["Not measured."]), ""]


def document() -> str:
    out = ["# Benchmarks", "",
           "Generated by `python benchmarks/report.py` from `benchmarks/results/*.json`; each "
           "table names its file and the command that writes it. Ratios compare variants measured "
           "side by side in one run on one machine (2 cores here); absolute times vary by about "
           "20% between runs on these shared machines.", ""]
    out += quality_section()
    out += ["## Speed and memory at a million interactions", "", *targets(), ""]
    for section in SECTIONS:
        out += variants_section(*section)
    out += pipeline_section(*PIPELINE)
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
