"""Benchmark variants, each in a child process of its own so that its peak memory is its own.

`run_child` runs `script --variant NAME --repo REPO --<key> <value>...` and returns the JSON
object the child prints last; `child_main` is the child's side for the benchmarks measured with
`encode.PeakMemory` (the variant's wall seconds, rows/s, and peak PSS and RSS-sum).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_child(script: str, name: str, repo: Path, args, keys: tuple[str, ...]) -> dict:
    """Run variant `name` of `script` in a child process, passing `args.<key>` as --key."""
    cmd = [sys.executable, script, "--variant", name, "--repo", str(repo)] + [
        a for k in keys for a in (f"--{k.replace('_', '-')}", str(getattr(args, k)))]
    print(f"[{name}] running", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"variant {name} failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"[{name}] {json.dumps(out)}", file=sys.stderr, flush=True)
    return out


def child_main(runners: dict, args) -> None:
    """In the child: run `runners[args.variant]` under PeakMemory and print its JSON."""
    from encode import PeakMemory

    with PeakMemory() as mem:
        out = runners[args.variant](Path(args.repo), args)
    out["peak_pss_mb"], out["peak_rss_mb"] = mem.pss_mb, mem.rss_mb
    out["rows_per_s"] = out["rows"] / out["wall_s"]
    print(json.dumps(out))
