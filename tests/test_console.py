"""The terminal's progress lines (llmrec_ray.console) off a TTY: done / total, rate and ETA in
tqdm's numbers, then the duration."""

from __future__ import annotations

import io
from types import SimpleNamespace

from llmrec_ray import console


def test_progress_lines_off_a_terminal(tmp_path, monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(console, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    out = io.StringIO()  # not a TTY: periodic lines, no bar
    console.setup(tmp_path, stream=out)
    try:
        with console.progress("encode", total=5000, unit="texts") as p:
            clock[0] += 20.0  # past LINE_INTERVAL_S: a line
            p.set(1234, postfix="cache 12")
            clock[0] += 55.0
        with console.progress("train", total=10, unit="epochs") as p:
            clock[0] += 7.5
            p.update(3)
    finally:
        console.teardown()
    assert out.getvalue().splitlines() == [
        "  encode: 1,234/5,000 texts (25%), 61.7 texts/s, ETA 01:01, cache 12",
        "  encode: 1,234/5,000 texts (25%), 16.5 texts/s, in 01:15, cache 12",
        "  train: 3/10 epochs (30%), 2.50 s per epoch, in 00:07",
    ]
    log = (tmp_path / console.LOG_FILE).read_text()
    assert "encode: 1,234/5,000 texts (25%), 16.5 texts/s, in 01:15" in log
