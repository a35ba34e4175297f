"""The README's results table and docs/benchmarks.md are generated from benchmarks/results/ by
benchmarks/report.py: figures are never typed by hand, so neither may drift from its files."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_generated_results_are_up_to_date() -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import report

    assert report.main(["--check"]) == 0, "run: python benchmarks/report.py"


def test_the_report_names_a_missing_results_file_as_not_measured(tmp_path, monkeypatch) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import report

    monkeypatch.setattr(report, "RESULTS", tmp_path)
    doc = report.document()
    assert "not measured" in doc and "Not measured." in doc
    assert "No quality results yet" in report.readme_block()


def test_the_readme_gives_the_two_commands_and_the_own_data_example() -> None:
    text = (ROOT / "README.md").read_text()
    assert "bash scripts/setup.sh && .venv/bin/llmrec run --config configs/synthetic.yaml" in text
    assert "bash scripts/setup.sh && .venv/bin/python -m pytest -q" in text
    assert "llmrec run --config configs/example.yaml" in text
    example = (ROOT / "configs" / "example.yaml").read_text()
    for line in ("protocol: random", "user_id: customer", "repo_path: runs/example/feature_repo"):
        assert line in example and line in text
