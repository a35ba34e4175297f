"""`llmrec`: the command line. Subcommands run one stage each, or all of them (`run`).

    llmrec run --config configs/synthetic.yaml [--set train.epochs=5 ...]
    llmrec build-features | train | evaluate [--out FILE] | recommend (--user U | --text T) -k 10
    llmrec materialize [--incremental] [--end 2026-01-01T00:00:00+00:00]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from llmrec_ray import console
from llmrec_ray.config import ConfigError, load_config
from llmrec_ray.console import say

# What a person fixes (a config key, a data file or row, a stage not run yet) is one line on
# stderr: the project raises ConfigError / ValueError (naming the key, file or row) and
# FileNotFoundError for these. Any other exception, a bare KeyError from a bug included, keeps
# its traceback.
USER_ERRORS = (ConfigError, ValueError, FileNotFoundError)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llmrec", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    def add(name: str, help: str) -> argparse.ArgumentParser:
        s = sub.add_parser(name, help=help)
        s.add_argument("--config", "-c", help="YAML config (defaults: the synthetic dataset)")
        s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key, e.g. --set train.epochs=5 (repeatable)")
        s.add_argument("--log-level", default=os.environ.get("LLMREC_LOG_LEVEL", "INFO"),
                       help="level of the log file <run_dir>/logs/llmrec.log (default INFO)")
        s.add_argument("-v", "--verbose", action="store_true",
                       help="show library logs, warnings and Ray's worker output on the terminal too")
        return s

    for name, text in (("run", "all stages: build features, train, evaluate"),
                       ("build-features", "load, serialize, encode, write + apply + materialize the "
                        "Feast repo")):
        add(name, text).add_argument(
            "--overwrite", action="store_true",
            help="replace the features another run built in featurestore.repo_path (refused "
                 "without it)")
    add("train", "fit train.model (two-tower, hybrid, LLM graph) on features from Feast with Ray Train")
    e = add("evaluate", "full-ranking metrics, per slice, for the model and the baselines")
    e.add_argument("--out", help="write the metrics JSON here (default <run_dir>/metrics.json)")
    m = add("materialize", "load the feature views into the online store (SQLite or Redis), "
            "then check the counts")
    m.add_argument("--incremental", action="store_true",
                   help="only what is new since each view's last materialization")
    m.add_argument("--start", help="ISO time (full materialization; default: the earliest row)")
    m.add_argument("--end", help="ISO time (default: now)")
    r = add("recommend", "top-K items for a user from the online store")
    who = r.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", help="a known user id (features from the online store)")
    who.add_argument("--text", help='a new user in words, e.g. "I love space operas and heist movies"')
    r.add_argument("-k", type=int, default=10, help="how many items")
    r.add_argument("--json", action="store_true", help="print JSON instead of a table")
    r.add_argument("--model-only", action="store_true",
                   help="serve the trained model alone, not the blend `llmrec evaluate` tuned")
    return p


def _print_counts(summary: dict) -> None:
    if summary.get("created_repo"):
        say(f"  feature repo  {summary['created_repo']} (new: the project's Feast declarations)")
    for table, c in summary["data"].items():
        say(f"  {table:<13} in {c['in']:>8}  accepted {c['accepted']:>8}  rejected {c['rejected']:>6}")
    if summary.get("random_split"):
        r = summary["random_split"]
        say(f"  split         random (seeded): {r['test']} test rows, {r['valid']} validation rows "
            "(evaluate.test_fraction, valid_fraction of each user's)")
    if summary.get("history_order") == "set":
        say("  history       the split is random in time: each user's train rows are a set "
            "(evaluate.given_history)")
    if summary.get("carved_validation"):
        say(f"  validation    the given split has none: {summary['carved_validation']} train rows "
            "(evaluate.valid_fraction of each user's, seeded) carved as validation")
    e = summary["encode"]
    say(f"  texts         {e['texts']:>8}  (items {e['item_texts']}, user snapshots "
        f"{e['user_snapshots']}); encoded {e.get('encoded', 0)}, from cache {e.get('cached', 0)}, "
        f"truncated {e.get('truncated', 0)}, {e.get('tokens_per_s', 0):.0f} tokens/s, padding efficiency "
        f"{e.get('padding_efficiency', 1.0):.3f}")
    if e.get("items_without_text"):
        say(f"  items without text: {e['items_without_text']} (no title, genres or description; "
            "kept with their interactions, no text vector)")
    say("  feature views " + ", ".join(f"{k} {v}" for k, v in summary["views"].items()))
    say("  online rows   " + ", ".join(f"{k} {v}" for k, v in summary["online"].items()) + " (verified)")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    log = console.setup(cfg.run_dir / "logs", verbose=args.verbose, level=args.log_level.upper())
    try:
        return _run(args, cfg, log)
    finally:
        console.teardown()


def _run(args, cfg, log: Path) -> int:
    if args.command != "recommend":
        say(f"llmrec {args.command}: run {cfg.name!r} in {cfg.run_dir}")
        say(f"  logs and warnings: {log}" + ("" if args.verbose else " (-v shows them here)"))
    from llmrec_ray import pipeline

    try:
        if args.command in ("run", "build-features"):
            say("[build-features] load, serialize, encode, write the Feast views, materialize")
            s = pipeline.build_stage(cfg, args.overwrite)
            _print_counts(s)
            say(f"[build-features] done in {s['seconds']}s")
        if args.command in ("run", "train"):
            say(f"[train] {cfg.train.model} with Ray Train on features from Feast")
            s = pipeline.train_stage(cfg)
            metric = f"valid_{cfg.train.early_stopping_metric}"
            best = s.get(metric)
            say(f"[train] {s['rows']} fit rows ({s['split']['protocol']}), {s['workers']} worker(s), "
                f"{s['epochs_run']}/{s['epochs']} epochs{' (early stop)' if s['stopped_early'] else ''}, "
                f"loss {s['first_loss']:.4f} -> {s['final_loss']:.4f}, model of epoch {s['best_epoch']}"
                + (f" ({metric} {best:.4f})" if best is not None else "") + f", {s['seconds']}s")
        if args.command in ("run", "evaluate"):
            say("[evaluate] full ranking of the test queries: the model, its blend and the tuned peers")
            s = pipeline.evaluate_stage(cfg, getattr(args, "out", None))
            n = next(iter(s["metrics"]["all"].values()))["users"]
            p = s["protocol"]
            say(f"[evaluate] {p['protocol']}: {p['fit']} fit / {p['valid']} validation / {p['test']} "
                f"test rows; {n} test queries; items seen before each query masked; {s['seconds']}s")
            say(s["table"])
            say(f"metrics written to {s['path']} (+ every metric of every slice in markdown, one PNG "
                f"chart per slice: {', '.join(Path(f).name for f in s['files'][1:])})")
        if args.command == "materialize":
            counts = pipeline.materialize_stage(cfg, args.incremental, args.start, args.end)
            say("  online rows   " + ", ".join(f"{k} {v}" for k, v in counts.items()) + " (verified)")
        if args.command == "recommend":
            recs = pipeline.recommend_stage(cfg, args.user, args.k, args.text, args.model_only)
            if args.json:
                print(json.dumps(recs, indent=2))
            else:
                if recs:  # on stderr: stdout stays one line per item
                    print(f"scored by {recs[0]['model']}", file=sys.stderr)
                for r in recs:
                    print(f"{r['rank']:>3}  {r['item_id']:<10} {r['score']:8.3f}  {r['title']}")
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
