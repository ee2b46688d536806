"""``hiedit demo``: several agents on the same edits, a table, curves and JSON."""

from __future__ import annotations

import json

from hiedit_agents.cli import main

MODEL = "test-tiny-llama"


def test_demo_compares_the_default_agents_on_the_same_edits(tmp_path, capsys):
    plot, out = tmp_path / "curves.png", tmp_path / "demo.json"
    assert main(["demo", "--model", MODEL, "--plot", str(plot), "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert list(results) == ["noop", "constant step", "untrained editor"]
    for metrics in results.values():
        assert metrics["num_edits"] == 12 and 0.0 <= metrics["mean"] <= 1.0
        assert [p["edits"] for p in metrics["curve"]] == [3, 6, 9, 12]
    assert results["noop"]["LS"] == 1.0  # the unedited model agrees with itself
    assert plot.stat().st_size > 0
    printed = capsys.readouterr().out
    assert "untrained editor" in printed and "agent s/edit" in printed and f"curves: {plot}" in printed


def test_demo_keeps_its_single_constant_step_form_and_refuses_agents_that_need_training(tmp_path, capsys):
    out = tmp_path / "demo.json"
    assert (
        main(
            [
                "demo",
                "--model",
                MODEL,
                "--step",
                "0.5",
                "--num-edits",
                "4",
                "--plot",
                str(tmp_path / "c.png"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert list(json.loads(out.read_text())) == ["constant step 0.5"]
    assert main(["demo", "--model", MODEL, "--agents", "noop", "hiedit", "--plot", str(tmp_path / "d.png")]) == 2
    assert "agent 'hiedit' must be trained first" in capsys.readouterr().err
    assert not (tmp_path / "d.png").exists()
