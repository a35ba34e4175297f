"""The benchmark harness: every benchmark's variants are run, measured and reported the same way.

- `PeakMemory`: peak memory and CPU seconds of a process and all its descendants (with a local
  Ray: the GCS, the raylet and its object store, every worker), sampled in a thread.
- `run_variant`: one variant's runner under `PeakMemory`; its dict gains `peak_pss_mb`,
  `peak_rss_mb` and `<count>_per_s` for the counts asked for (rows, texts, tokens).
- `run_child` / `child_main`: each variant in a process of its own (`script --variant NAME
  --<key> <value>...`), so that its peak memory is its own; the child prints its dict last.
- `ratios`: side-by-side ratios of two variants' figures, measured in the same run.
- `table` (with `by_name`): a markdown table, one row per dict.

Nothing here knows a benchmark; the scripts declare their runners, keys, ratios and columns.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class PeakMemory:
    """Peak memory of process `pid` (default: this one) and all its descendants, sampled every
    `interval` seconds in a thread between __enter__ and __exit__, two ways: `rss_mb`, the sum of
    resident sizes (a shared page, e.g. an object-store block every worker maps, counted once per
    process), and `pss_mb`, the sum of proportional set sizes (each shared page split among the
    processes that map it: what the machine actually holds). Reading every process's page map
    (PSS) takes tens of milliseconds with a local Ray's dozen processes, hence the 1 s default;
    `pss=False` reads resident sizes only (cheap enough for 0.2 s; `pss_mb` is then None).

    `cpu_s`: CPU seconds (user + system) the same processes spent from __enter__ to __exit__
    (a process that exits loses at most its last `interval`). Unlike wall time, it hardly depends
    on other work on the machine. Ray instances of other programs are not descendants: not counted.
    """

    def __init__(self, pid: int | None = None, interval: float = 1.0, pss: bool = True):
        import psutil

        self._psutil, self._root = psutil, psutil.Process(pid or os.getpid())
        self.interval, self._pss = interval, pss
        self.rss = self.pss = 0
        self._cpu_base: dict[int, float] = {}
        self._cpu_last: dict[int, float] = {}
        self._stop = threading.Event()

    def _family(self) -> list:
        try:
            return [self._root, *self._root.children(recursive=True)]
        except self._psutil.Error:  # the root has exited
            return []

    def _cpu(self, p) -> float:
        t = p.cpu_times()
        return t.user + t.system

    def sample(self) -> None:
        """One sample: every process's memory and CPU time; the peaks updated."""
        rss = pss = 0
        for p in self._family():
            try:
                with p.oneshot():
                    self._cpu_last[p.pid] = self._cpu(p)
                    info = p.memory_full_info() if self._pss else p.memory_info()
                rss += info.rss
                pss += getattr(info, "pss", info.rss)
            except self._psutil.Error:  # exited between the listing and the read
                pass
        self.rss, self.pss = max(self.rss, rss), max(self.pss, pss)

    def __enter__(self) -> PeakMemory:
        for p in self._family():
            try:
                self._cpu_base[p.pid] = self._cpu(p)
            except self._psutil.Error:
                pass

        def loop() -> None:
            while True:
                self.sample()
                if self._stop.wait(self.interval):
                    return

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    @property
    def rss_mb(self) -> float:
        return round(self.rss / 2**20, 1)

    @property
    def pss_mb(self) -> float | None:
        return round(self.pss / 2**20, 1) if self._pss else None

    @property
    def cpu_s(self) -> float:
        return round(sum(max(0.0, v - self._cpu_base.get(pid, 0.0)) for pid, v in self._cpu_last.items()), 2)


def per_second(out: dict, counts: Iterable[str]) -> dict:
    """`out` with `<count>_per_s` = out[count] / out["wall_s"] for each count it holds."""
    if "wall_s" in out:
        out.update({f"{c}_per_s": out[c] / out["wall_s"] for c in counts if c in out})
    return out


def run_variant(runner: Callable[..., dict], *args, per_s: Iterable[str] = ("rows",)) -> dict:
    """`runner(*args)` under `PeakMemory`: its dict with `peak_pss_mb`, `peak_rss_mb` and, for
    each of `per_s` it holds, that count per wall second (`wall_s`, timed by the runner)."""
    with PeakMemory() as mem:
        out = runner(*args)
    out["peak_pss_mb"], out["peak_rss_mb"] = mem.pss_mb, mem.rss_mb
    return per_second(out, per_s)


def run_child(script: str, name: str, args, keys: Iterable[str], **extra) -> dict:
    """Run variant `name` of `script` in a child process, passing `args.<key>` as --key for each
    of `keys` and each of `extra` (e.g. repo=...) the same way; the JSON object it prints last."""
    values = {**{k: getattr(args, k) for k in keys}, **extra}
    cmd = [sys.executable, script, "--variant", name] + [
        a for k, v in values.items() for a in (f"--{k.replace('_', '-')}", str(v))]
    print(f"[{name}] running", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"variant {name} failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"[{name}] {json.dumps(out)}", file=sys.stderr, flush=True)
    return out


def child_main(runners: Mapping[str, Callable], args, per_s: Iterable[str] = ("rows",)) -> None:
    """In the child: `run_variant(runners[args.variant], args)`, printed as one JSON line."""
    print(json.dumps(run_variant(runners[args.variant], args, per_s=per_s)))


def ratios(variants: Mapping[str, Mapping], spec: Mapping[str, tuple[str, str, str]]) -> dict[str, float]:
    """{name: variants[a][key] / variants[b][key]} for each `name: (a, b, key)` of `spec` whose
    two variants were both run (side by side, in one run on one machine)."""
    return {name: variants[a][key] / variants[b][key] for name, (a, b, key) in spec.items()
            if a in variants and b in variants}


def by_name(variants: Mapping[str, Mapping], key: str = "variant") -> list[dict]:
    """{name: figures} -> rows for `table`, each with its name under `key`."""
    return [{key: name, **v} for name, v in variants.items()]


def table(columns: Mapping[str, str | Callable[[Mapping], str]], rows: Iterable[Mapping],
          align: str | None = None) -> list[str]:
    """A markdown table, one line per row: a column per `columns` entry (header -> a format
    string over the row's keys, e.g. "{wall_s:.1f}", or a function of the row); `align` one
    letter per column, l or r (default: the first column left, the others right)."""
    align = align or "l" + "r" * (len(columns) - 1)
    if len(align) != len(columns):
        raise ValueError(f"align {align!r}: one letter per column ({len(columns)})")
    lines = ["| " + " | ".join(columns) + " |", "|" + "".join("---:|" if a == "r" else "---|" for a in align)]
    for row in rows:
        cells = [f(row) if callable(f) else f.format(**row) for f in columns.values()]
        lines.append("| " + " | ".join(cells) + " |")
    return lines
