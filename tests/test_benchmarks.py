"""The benchmark scripts run end to end on a tiny model and write what they promise."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run_script(name: str, argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", [name, *argv])
    runpy.run_path(str(BENCHMARKS / name), run_name="__main__")


def test_speed_script_reports_ratio_against_floor(zsre_path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "speed.json"
    run_script("speed.py", ["--model", "test-tiny-gpt2", "--dataset", zsre_path, "--num-edits", "4", "--out", str(out)],
               monkeypatch)
    figures = json.loads(out.read_text())
    assert figures["edits_timed"] == 3
    assert figures["median_floor_s"] > 0 and figures["median_step_s"] > 0
    assert figures["ratio"] == pytest.approx(figures["median_step_s"] / figures["median_floor_s"])


def test_agent_sweep_writes_table_curves_and_results(zsre_path: str, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    run_script("agents.py", ["--model", "test-tiny-llama", "--dataset", zsre_path, "--agents", "noop,topk_grad",
                             "--num-edits", "4", "--tune-edits", "5", "--out", str(tmp_path)], monkeypatch)
    noop = json.loads((tmp_path / "noop.json").read_text())
    assert noop["layers_per_edit"] == 0.0 and noop["LS"] == 1.0
    assert [p["edits"] for p in noop["curve"]] == [1, 2, 3, 4]
    assert noop["agent_seconds_per_edit"] >= 0.0
    topk = json.loads((tmp_path / "topk_grad.json").read_text())
    assert topk["tuning"]["step"] in (-1.0, -0.5, 0.0, 0.5, 1.0)
    assert "| noop |" in (tmp_path / "table.md").read_text()
    assert (tmp_path / "curves.png").stat().st_size > 0
