"""The ``hiedit demo`` command of the environment package."""

from __future__ import annotations

import json

from hiedit_env.cli import main


def test_demo_writes_metrics(tmp_path, capsys):
    out = tmp_path / "metrics.json"
    code = main(["demo", "--model", "test-tiny-llama", "--dataset", "default", "--num-edits", "3", "--out", str(out)])
    assert code == 0
    metrics = json.loads(out.read_text())
    assert 0.0 <= metrics["ES"] <= 1.0
    assert metrics["num_edits"] == 3
    assert "ES" in capsys.readouterr().out


def test_bad_model_is_one_line_on_stderr(tmp_path, capsys):
    out = tmp_path / "metrics.json"
    code = main(["demo", "--model", "no-such-model-xyz", "--dataset", "default", "--num-edits", "3", "--out", str(out)])
    assert code == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert "no-such-model-xyz" in err
    assert err.startswith("hiedit demo: error:")
    assert "\n" not in err
    assert "Traceback" not in captured.err
    assert not out.exists()


def test_bad_dataset_is_one_line_on_stderr(capsys):
    code = main(["demo", "--model", "test-tiny-gpt2", "--dataset", "./no/such/file.json", "--num-edits", "3"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "does not exist" in err and "\n" not in err
