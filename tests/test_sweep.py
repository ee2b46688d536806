"""``hiedit sweep`` / ``report`` / ``tune`` on the tiny test model and the shipped edits.

Ray starts once for the module (about 15 s); every sweep here runs through it.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import platform
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from hiedit_agents.cli import main
from hiedit_agents.sweep import (
    SpecError,
    build_report,
    expand,
    load_spec,
    probability_of_improvement,
    stratified_bootstrap_interval,
    sweep,
    sweep_status,
    tune_spec,
)
from hiedit_agents.sweep.cell import cell_status, evaluate, run_cell
from hiedit_agents.sweep.grid import training_key
from hiedit_agents.sweep.report import leaderboard

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY = {"validation_edits": 4, "validate_every": 4}  # the learned editors' validation on 48 training records


def write_spec(folder: Path, **overrides: object) -> Path:
    """A valid 2-agent spec (noop and RLEdit, bounded and not; two training seeds; two sequences of 3 edits),
    with overrides."""
    spec = {
        "name": "test-sweep",
        "models": ["test-tiny-gpt2"],
        "datasets": [
            {
                "name": "default",
                "train": {"source": "default", "split": "train"},
                "evaluate": {"source": "default", "split": "test"},
            }
        ],
        "agents": [
            {"name": "noop", "agent": "noop"},
            {"name": "rledit", "agent": "rledit", "agent-kwargs": TINY},
            {"name": "rledit-bounded", "agent": "rledit", "agent-kwargs": TINY, "acting": {"max_size_ratio": 3}},
        ],
        "training": {"seeds": [0, 1], "steps": 4, "num_edits": 3},
        "evaluation": {"seeds": [0, 1], "num_edits": [3], "curve_points": 3},
        "compare": [["rledit-bounded", "noop"]],
        **overrides,
    }
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


# ---------------------------------------------------------------- spec


def test_smoke_spec_is_valid_and_expands_to_one_training_per_seed() -> None:
    spec = load_spec(REPO_ROOT / "benchmarks" / "specs" / "smoke.yaml")
    cells = expand(spec)
    # noop is evaluated only; `all` tunes its step on the training split per seed; rledit and
    # rledit-bounded share one training per seed
    assert [c.id for c in cells] == [
        "test-tiny-gpt2__default__noop",
        "test-tiny-gpt2__default__all__train0",
        "test-tiny-gpt2__default__all__train1",
        "test-tiny-gpt2__default__rledit+rledit-bounded__train0",
        "test-tiny-gpt2__default__rledit+rledit-bounded__train1",
    ]
    assert cells[3].variants == [("rledit", {}), ("rledit-bounded", {"max_size_ratio": 3})]
    assert all(c.evaluations == [(0, 4), (1, 4)] for c in cells)


@pytest.mark.parametrize("spec_name", ["zsre-100.yaml", "cf-100.yaml"])
def test_leaderboard_specs_are_valid(spec_name: str, benchmark_data_stand_ins: set[str]) -> None:
    stand_ins = benchmark_data_stand_ins
    spec = load_spec(REPO_ROOT / "benchmarks" / "specs" / spec_name)
    assert {source.source for d in spec.datasets for source in (d.train, d.evaluate)} <= stand_ins
    assert spec.models == ["smollm2-135m"] and spec.training_seeds == [0, 100, 200]
    assert spec.evaluation_seeds == [0, 1, 2, 3, 4] and spec.evaluation_num_edits == [100]
    steps = {a.name: a.steps for a in spec.agents}
    assert steps["hiedit"] == steps["rledit"] == 300 and steps["sac"] is None
    assert {"untrained_editor", "maskable_ppo", "rome", "memit", "alphaedit"} <= set(steps)
    # 3 training seeds for hiedit, rledit (one training for both entries), the 3 tuned heuristics and the 2 SB3
    # agents; 1 cell for ft_l, untrained_editor, noop and the 3 locate agents
    assert len(expand(spec)) == 7 * 3 + 6


@pytest.mark.parametrize("path", sorted((REPO_ROOT / "benchmarks" / "specs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_spec_is_valid(path: Path, benchmark_data_stand_ins: set[str]) -> None:
    """Each spec its header's command runs: a sweep spec, or a tune spec (one with ``search``)."""
    from hiedit_agents.sweep.tune import load_tune_spec

    spec = load_tune_spec(path)[0] if "search" in yaml.safe_load(path.read_text()) else load_spec(path)
    assert spec.name == path.stem and expand(spec)


def test_thousand_edit_spec_is_valid_and_draws_from_the_file_no_agent_trains_on() -> None:
    spec = load_spec(REPO_ROOT / "benchmarks" / "specs" / "cf-1000.yaml")
    assert spec.evaluation_num_edits == [1000] and spec.training_seeds == [0, 100, 200]
    assert [a.name for a in spec.agents] == [
        "hiedit",
        "rledit-bounded",
        "untrained_editor",
        "ft_l",
        "all",
        "memit",
        "alphaedit",
    ]
    data = spec.datasets[0]
    assert data.train.source.endswith("counterfact_train.json") and data.evaluate.source.endswith(
        "counterfact_val.json"
    )
    # the untrained editor observes the training file (a path relative to the spec, made absolute)
    observe = spec.agents[2].agent_kwargs["observe_dataset"]
    assert observe == data.train.source
    assert len(expand(spec)) == 3 * 3 + 4


def test_agents_acting_untrained_are_evaluated_only_and_heuristics_are_tuned_unless_given_a_step(
    tmp_path: Path,
) -> None:
    agents = [
        {"name": "all", "agent": "all"},
        {"name": "all-half", "agent": "all", "agent-kwargs": {"step": 0.5}},
        {"name": "untrained_editor", "agent": "untrained_editor"},
        {"name": "ft_l", "agent": "ft_l"},
    ]
    cells = expand(load_spec(write_spec(tmp_path, agents=agents, compare=[])))
    assert [c.id for c in cells] == [
        "test-tiny-gpt2__default__all__train0",
        "test-tiny-gpt2__default__all__train1",
        "test-tiny-gpt2__default__all-half",
        "test-tiny-gpt2__default__untrained_editor",
        "test-tiny-gpt2__default__ft_l",
    ]


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"agents": [{"name": "x", "agent": "no_such_agent"}]}, "agents[0].agent: unknown agent 'no_such_agent'"),
        (
            {"datasets": [{"name": "d", "evaluate": {"source": "missing/edits.json"}}]},
            "datasets[0].evaluate.source: no such file",
        ),
        ({"training": {"seeds": [0, "one"]}}, "training.seeds[1]: expected int, got str 'one'"),
        ({"evaluation": {"num_edits": "many"}}, "evaluation.num_edits: expected a non-empty list of integers"),
        (
            {"agents": [{"name": "a", "agent": "all"}, {"name": "a", "agent": "noop"}]},
            "agents[1].name: duplicate entry name 'a'",
        ),
        (
            {"agents": [{"agent": "all", "acting": {"step": 1}}]},
            "agents[0].acting: a checkpoint of 'all' fixes ['step']",
        ),
        ({"compare": [["all", "nobody"]]}, "compare[0]: 'nobody' is not an agent entry name"),
        ({"extra": 1}, "spec.extra: unknown key"),
    ],
)
def test_spec_errors_name_their_key_path(tmp_path: Path, overrides: dict, message: str) -> None:
    with pytest.raises(SpecError) as err:
        load_spec(write_spec(tmp_path, **overrides))
    assert message in str(err.value)


def test_spec_reports_every_problem_at_once(tmp_path: Path) -> None:
    path = write_spec(tmp_path, agents=[{"name": "x", "agent": "nope"}], training={"steps": 0})
    with pytest.raises(SpecError) as err:
        load_spec(path)
    assert "agents[0].agent" in str(err.value) and "training.steps: must be >= 1" in str(err.value)


def test_sweep_command_reports_a_bad_spec_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = write_spec(tmp_path, agents=[{"agent": "nope"}])
    assert main(["sweep", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hiedit sweep: error: invalid spec") and len(err.strip().splitlines()) == 1


def test_sweep_refuses_an_agents_filter_naming_no_entry(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"--agents: nope not an entry of .* \(entries: noop, rledit"):
        sweep(load_spec(write_spec(tmp_path)), tmp_path / "out", agents=["noop", "nope"])
    with pytest.raises(ValueError, match=r"--agents: nope not an entry of "):
        sweep_status(load_spec(write_spec(tmp_path)), tmp_path / "out", agents=["nope"])
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_agent_keyword_paths_are_relative_to_the_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEST_SWEEP_DATA", raising=False)
    agents = [
        {
            "name": "u",
            "agent": "untrained_editor",
            "agent-kwargs": {"observe_dataset": "${TEST_SWEEP_DATA:-../data}/edits.json", "observe_edits": 4},
        }
    ]
    (tmp_path / "spec").mkdir()
    kwargs = load_spec(write_spec(tmp_path / "spec", agents=agents, compare=[])).agents[0].agent_kwargs
    assert kwargs == {"observe_dataset": str(tmp_path / "data" / "edits.json"), "observe_edits": 4}
    monkeypatch.setenv("TEST_SWEEP_DATA", "/elsewhere")
    assert (
        load_spec(write_spec(tmp_path / "spec", agents=agents, compare=[])).agents[0].agent_kwargs["observe_dataset"]
        == "/elsewhere/edits.json"
    )


def test_data_paths_expand_environment_variables_relative_to_the_spec(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data" / "edits.json"
    data.parent.mkdir()
    data.write_text((REPO_ROOT / "hiedit_env" / "assets" / "default_edits.json").read_text())
    monkeypatch.delenv("TEST_SWEEP_DATA", raising=False)
    datasets = [{"name": "d", "evaluate": {"source": "${TEST_SWEEP_DATA:-data}/edits.json"}}]
    assert load_spec(write_spec(tmp_path, datasets=datasets)).datasets[0].evaluate.source == str(data)
    monkeypatch.setenv("TEST_SWEEP_DATA", str(tmp_path / "elsewhere"))
    with pytest.raises(SpecError, match="no such file"):
        load_spec(write_spec(tmp_path, datasets=datasets))


# ---------------------------------------------------------------- sweep through Ray


def _files(folder: Path) -> dict[str, tuple[int, bytes]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_sweep_interrupted_after_one_cell_resumes_without_touching_it(
    tmp_path: Path, ray_local, capsys: pytest.CaptureFixture[str]
) -> None:
    # noop and RLEdit (bounded and not, from the same checkpoints) over 2 training seeds, and an entry
    # that fails when its environment is built
    broken = {"name": "broken", "agent": "ft_l", "env-kwargs": {"modules": ["no.such.module"]}}
    path = write_spec(tmp_path)
    spec = load_spec(write_spec(tmp_path, agents=yaml.safe_load(path.read_text())["agents"] + [broken]))
    out = tmp_path / "sweep"
    # stands for a sweep stopped after its first cell: of the two cells of noop and broken, the first
    first = sweep(spec, out, max_cells=1, agents=["broken", "noop"])
    assert (first["cells"], first["ran"], first["remaining"], first["failed"]) == (4, 1, 3, {})
    done = out / "cells" / "test-tiny-gpt2__default__noop"
    before = _files(done)
    assert "cell.json" in before and "evaluations/noop/n3_seed1.json" in before
    assert len(list(csv.DictReader((out / "results.csv").open()))) == 2  # the table holds the finished cell
    capsys.readouterr()
    assert main(["sweep", str(spec.path), "--out", str(out), "--status"]) == 0  # reads, runs nothing
    printed = capsys.readouterr().out.splitlines()
    assert "test-tiny-gpt2__default__noop: finished, 2 evaluations" in printed
    assert "test-tiny-gpt2__default__broken: not started" in printed
    assert printed[-1] == "4 cells: 1 finished, 0 started, 0 failed, 3 not started"
    assert _files(done) == before

    capsys.readouterr()
    second = sweep(spec, out)
    assert (second["already_finished"], second["ran"], second["remaining"]) == (1, 2, 1)
    # a line per evaluation as it is recorded, and per cell as it ends
    printed = capsys.readouterr().out
    assert re.search(
        r"\d\d:\d\d:\d\d test-tiny-gpt2__default__rledit\+rledit-bounded__train1: rledit-bounded on "
        r"sequence 1 \(3 edits\) mean \d\.\d{3}; \d of the cell's evaluations recorded",
        printed,
    )
    assert "test-tiny-gpt2__default__rledit+rledit-bounded__train0: finished, 4 evaluations" in printed
    assert "test-tiny-gpt2__default__broken: failed: " in printed
    assert _files(done) == before  # neither re-run nor rewritten
    # the failure is reported with its error and did not stop the other cells
    assert list(second["failed"]) == ["test-tiny-gpt2__default__broken"]
    assert "no.such.module" in second["failed"]["test-tiny-gpt2__default__broken"]
    assert (out / "cells" / "test-tiny-gpt2__default__broken" / "error.json").is_file()

    rows = list(csv.DictReader((out / "results.csv").open()))
    # noop: 2 sequences; rledit and rledit-bounded: 2 training seeds x 2 sequences each
    assert sorted((r["agent"], r["training_seed"], r["evaluation_seed"]) for r in rows) == sorted(
        [("noop", "", "0"), ("noop", "", "1")]
        + [(a, t, s) for a in ("rledit", "rledit-bounded") for t in ("0", "1") for s in ("0", "1")]
    )
    for r in rows:
        for column in (
            "ES",
            "GS",
            "LS",
            "mean",
            "ES_first_20pct",
            "layers_per_edit",
            "seconds_per_edit",
            "agent_seconds_per_edit",
            "peak_rss_mb",
            "versions",
            "git_commit",
            "machine",
            "device",
        ):
            assert r[column] != "", column
        assert r["spec"] == "test-sweep" and r["model"] == "test-tiny-gpt2" and r["num_edits"] == "3"
    jsonl = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [p["edits"] for p in jsonl[0]["curve"]] == [1, 2, 3]
    trained = out / "cells" / "test-tiny-gpt2__default__rledit+rledit-bounded__train1"
    assert (trained / "checkpoint" / "agent.json").is_file() and (trained / "checkpoint" / "train_stats.json").is_file()

    report = build_report([out], tmp_path / "report").read_text()
    assert "| rledit-bounded | 4 (2) | **" in report and "| noop | 2 (1) | **" in report
    assert "rledit-bounded over noop" in report
    # the last column: the highest peak RSS of the agent's rows, in GB
    noop_peak = max(float(r["peak_rss_mb"]) for r in rows if r["agent"] == "noop") / 1024
    noop_line = next(x for x in report.splitlines() if x.startswith("| noop |"))
    assert noop_line.endswith(f"| {noop_peak:.2f} |")
    # s per edit: the agent's act plus the environment's step, the act in brackets (never above the total)
    rledit_rows = [r for r in rows if r["agent"] == "rledit-bounded"]
    step, act = (np.mean([float(r[k]) for r in rledit_rows]) for k in ("seconds_per_edit", "agent_seconds_per_edit"))
    rledit_line = next(x for x in report.splitlines() if x.startswith("| rledit-bounded |"))
    assert f"| {step + act:.2f} ({act:.2f}) |" in rledit_line
    assert (tmp_path / "report" / "intervals_test-tiny-gpt2_default_n3.png").is_file()
    assert (tmp_path / "report" / "curves_test-tiny-gpt2_default_n3.png").is_file()
    # the training section: one line per training run, with its validations and the diagnostics of its last episode
    assert "## Training, default, test-tiny-gpt2" in report
    for seed in (0, 1):
        line = next(x for x in report.splitlines() if x.startswith(f"| rledit + rledit-bounded, seed {seed} |"))
        assert "not recorded" not in line and line.count(" / ") == 2
    assert (tmp_path / "report" / "training_test-tiny-gpt2_default.png").is_file()


def test_a_finished_sweep_runs_nothing_and_refuses_changed_settings(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    spec = load_spec(write_spec(tmp_path, agents=[{"name": "ft_l", "agent": "ft_l"}], compare=[]))
    run_cell(expand(spec)[0], out)  # the cell, finished in this process: no Ray is started below
    summary = sweep(spec, out)
    assert (summary["already_finished"], summary["ran"], summary["remaining"]) == (1, 0, 0)
    assert len((out / "results.jsonl").read_text().splitlines()) == 2
    changed = write_spec(tmp_path, agents=[{"name": "ft_l", "agent": "ft_l", "agent-kwargs": {"lr": 0.1}}], compare=[])
    with pytest.raises(ValueError, match="finished with other settings"):
        sweep(load_spec(changed), out)


def test_a_stopped_sweep_names_its_unfinished_cells_and_exits_as_interrupted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import hiedit_agents.sweep.cell as cell_module
    import hiedit_agents.sweep.runner as runner

    agents = [{"name": "ft_l", "agent": "ft_l"}, {"name": "noop", "agent": "noop"}]
    spec_file = write_spec(tmp_path, agents=agents, compare=[])
    out = tmp_path / "sweep"
    started, unstarted = expand(load_spec(spec_file))
    # Ctrl-C in the first cell's evaluation, which an earlier run of the cell had left with an error
    error = cell_module.cell_dir(out, started) / "error.json"
    error.parent.mkdir(parents=True)
    error.write_text('{"error": "an earlier run\'s"}')

    evaluate, events = cell_module.evaluate, []

    def interrupted_after_one(*args: object) -> dict:
        if events:
            raise KeyboardInterrupt
        return evaluate(*args)

    monkeypatch.setattr(cell_module, "evaluate", interrupted_after_one)
    monkeypatch.setattr(cell_module, "PROGRESS_EVERY", 1)  # these 3-edit sequences report as 1000-edit ones do
    with pytest.raises(KeyboardInterrupt):
        run_cell(started, out, on_report=events.append)
    # the first sequence's progress, then its mean once its file was written; nothing of the stopped one
    which = {"agent": "ft_l", "evaluation_seed": 0, "num_edits": 3}
    assert events[:2] == [{"status": "editing", **which, "edits": 1}, {"status": "editing", **which, "edits": 2}]
    assert len(events) == 3 and events[2]["status"] == "evaluated" and 0 <= events[2]["mean"] <= 1
    assert not error.exists()  # the stopped rerun is not reported with the earlier run's error

    # Ray Tune returns from fit() without raising on Ctrl-C: what is unfinished is named, not failed
    monkeypatch.setattr(runner, "_run_on_tune", lambda *args: None)
    summary = runner.sweep(load_spec(spec_file), out)
    assert summary["failed"] == {} and summary["ran"] == 0 and summary["remaining"] == 2
    # the stopped cell's finished sequence is a row of the results table already
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(r["agent"], r["evaluation_seed"]) for r in rows] == [("ft_l", "0")]
    assert summary["stopped"][unstarted.id] == "not started"
    assert summary["stopped"][started.id].startswith("started, not finished")

    assert main(["sweep", str(spec_file), "--out", str(out)]) == 130
    printed = capsys.readouterr()
    assert f"stopped {unstarted.id}: not started" in printed.out
    assert printed.err.strip().splitlines()[-1].startswith("hiedit sweep: stopped with 2 cells unfinished")


def test_a_cell_stopped_part_way_through_a_sequence_continues_it_from_its_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hiedit_agents.sweep.cell as cell_module

    agents = [{"name": "rledit", "agent": "rledit", "agent-kwargs": TINY}]
    training = {"seeds": [0], "steps": 4, "num_edits": 3}
    evaluation = {"seeds": [0], "num_edits": [4], "curve_points": 2}
    (cell,) = expand(
        load_spec(write_spec(tmp_path, agents=agents, compare=[], training=training, evaluation=evaluation))
    )
    reference_out, out = tmp_path / "reference", tmp_path / "sweep"
    reference = run_cell(cell, reference_out)

    monkeypatch.setattr(cell_module, "SNAPSHOT_SECONDS", 0.0)  # a snapshot after every edit
    monkeypatch.setattr(cell_module, "PROGRESS_EVERY", 1)  # progress reports after every edit

    def stop_at_third_edit(report: dict) -> None:
        if report.get("edits") == 3:  # reported before that edit's snapshot is written
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_cell(cell, out, [reference_out], on_report=stop_at_third_edit)  # the same checkpoint, copied
    file = cell_module.evaluation_file(out, cell, "rledit", 0, 4)
    snapshot = file.with_name(file.stem + cell_module.SNAPSHOT_SUFFIX)
    assert snapshot.is_file() and not file.exists()
    state, line = cell_status(out, cell)  # what `hiedit sweep --status` prints for it
    assert state == "started"
    assert line.startswith("trained; 0 of 1 evaluations recorded; rledit sequence 0 at edit 2 of 4 (snapshot written ")
    record = run_cell(cell, out, [reference_out])
    assert not snapshot.exists()  # the evaluation file replaced it
    assert cell_status(out, cell) == ("finished", "finished, 1 evaluation")
    assert json.loads(file.read_text())["resumed_at_edit"] == 2
    scores = ("ES", "GS", "LS", "mean", "ES_first_20pct", "layers_per_edit", "curve", "module_share")
    assert [{k: r[k] for k in scores} for r in record["rows"]] == [{k: r[k] for k in scores} for r in reference["rows"]]


@pytest.fixture
def torch_threads_restored():
    """The test's cells set torch's thread count for the whole process; the tests after get theirs back."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_a_cell_trained_again_warns_of_evaluations_another_checkpoint_made(
    tmp_path: Path, torch_threads_restored: None
) -> None:
    import shutil
    import warnings

    from hiedit_agents.sweep.cell import evaluation_file

    # two entries of one training: the bounded one acts with another max_size_ratio, the same trained agent
    agents = [
        {"name": "rledit", "agent": "rledit", "agent-kwargs": TINY},
        {"name": "rledit-bounded", "agent": "rledit", "agent-kwargs": TINY, "acting": {"max_size_ratio": 3}},
    ]
    training = {"seeds": [0], "steps": 4, "num_edits": 3}
    evaluation = {"seeds": [0, 1], "num_edits": [3]}
    (cell,) = expand(
        load_spec(write_spec(tmp_path, agents=agents, compare=[], training=training, evaluation=evaluation, threads=1))
    )
    out = tmp_path / "sweep"
    folder = out / "cells" / cell.id
    record = run_cell(cell, out)
    (fingerprint,) = {r["agent_sha256"] for r in record["rows"]}  # both entries, both sequences: one agent
    assert len(record["rows"]) == 4
    assert re.fullmatch(r"[0-9a-f]{64}", fingerprint)
    first, second = (evaluation_file(out, cell, "rledit", seed, 3) for seed in (0, 1))

    def continue_elsewhere(made_by: str | None) -> None:
        """The sweep continues on a machine that has the result files only: no checkpoint, no cell.json,
        the second sequence to run; the first was recorded by the checkpoint ``made_by`` names."""
        shutil.rmtree(folder / "checkpoint")
        (folder / "cell.json").unlink()
        second.unlink()
        result = json.loads(first.read_text())
        result.pop("agent_sha256")
        if made_by is not None:
            result["agent_sha256"] = made_by
        first.write_text(json.dumps(result))

    # training again from the same seed, on one thread, reproduces the trained agent: nothing to warn of
    continue_elsewhere(fingerprint)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = run_cell(cell, out)
    assert [r["agent_sha256"] for r in again["rows"]] == [fingerprint] * 4
    # a training that does not reproduce it (another machine): the mixed rows are named
    continue_elsewhere("0" * 64)
    reports: list[dict] = []
    with pytest.warns(
        UserWarning, match=r"1 recorded evaluation\(s\) \(rledit/n3_seed0.json\) were made by another trained"
    ):
        run_cell(cell, out, on_report=reports.append)
    # ... and reported before the sequence runs, for the sweep's console (its workers' warnings are not shown)
    assert [r["status"] for r in reports] == ["warning", "evaluated"]
    assert reports[0]["message"].startswith("1 recorded evaluation(s) (rledit/n3_seed0.json) were made by another")
    # an evaluation recorded before evaluations named their checkpoint
    continue_elsewhere(None)
    with pytest.warns(
        UserWarning, match=r"checkpoint was made again, with 1 evaluation\(s\) recorded \(rledit/n3_seed0.json\)"
    ):
        run_cell(cell, out)


def test_progress_lines_name_the_cell_the_sequence_and_what_happened() -> None:
    from hiedit_agents.sweep.runner import progress_line

    which = {"cell": "m__d__hiedit__train0", "agent": "hiedit", "evaluation_seed": 2, "num_edits": 1000}
    lines = [
        progress_line({"status": "editing", **which, "edits": 300}),
        progress_line({"status": "evaluated", **which, "mean": 0.4531, "recorded": 3}),
        progress_line({"status": "ok", "cell": which["cell"], "recorded": 5}),
        progress_line({"status": "warning", "cell": which["cell"], "message": "its rows mix two trainings"}),
        progress_line({"status": "error", "cell": which["cell"], "error": "ValueError: bad"}),
    ]
    assert all(re.match(r"\d\d:\d\d:\d\d m__d__hiedit__train0: ", line) for line in lines)
    assert [line[9:] for line in lines] == [
        "m__d__hiedit__train0: hiedit on sequence 2: 300 of 1000 edits",
        "m__d__hiedit__train0: hiedit on sequence 2 (1000 edits) mean 0.453; 3 of the cell's evaluations recorded",
        "m__d__hiedit__train0: finished, 5 evaluations",
        "m__d__hiedit__train0: warning: its rows mix two trainings",
        "m__d__hiedit__train0: failed: ValueError: bad",
    ]


def test_a_cell_copies_a_finished_training_with_its_exact_settings_from_another_sweep(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hiedit_agents.sweep.cell as cell_module

    rledit = [{"name": "rledit", "agent": "rledit", "agent-kwargs": TINY}]
    (tmp_path / "short").mkdir()
    (tmp_path / "long").mkdir()
    short = expand(load_spec(write_spec(tmp_path / "short", agents=rledit, compare=[])))
    # the same trainings, evaluated on other sequences of another length
    evaluation = {"seeds": [2], "num_edits": [4]}
    long = expand(load_spec(write_spec(tmp_path / "long", agents=rledit, compare=[], evaluation=evaluation)))
    assert [training_key(c.as_config()) for c in long] == [training_key(c.as_config()) for c in short]
    assert training_key(short[0].as_config()) != training_key(short[1].as_config())  # the training seeds differ
    short_out, long_out = tmp_path / "short" / "sweep", tmp_path / "long" / "sweep"
    assert cell_module.trained_elsewhere(long[0], [short_out]) is None  # nothing finished there yet
    run_cell(short[0], short_out)

    def no_training(*args: object) -> None:
        raise AssertionError("trained again")

    monkeypatch.setattr(cell_module, "train", no_training)
    record = run_cell(long[0], long_out, [short_out])
    source = cell_module.cell_dir(short_out, short[0])
    assert record["trained_in"] == str(source.resolve())
    copied = cell_module.cell_dir(long_out, long[0]) / "checkpoint"
    for name in ("agent_state.pt", "agent.json", "train_stats.json"):
        assert (copied / name).read_bytes() == (source / "checkpoint" / name).read_bytes()
    assert [(r["evaluation_seed"], r["num_edits"]) for r in record["rows"]] == [(2, 4)]
    evaluation = json.loads((copied.parent / "evaluations" / "rledit" / "n4_seed2.json").read_text())
    assert evaluation["agent_config"]["validation_edits"] == TINY["validation_edits"]  # what it acted with
    assert not (copied.parent / "checkpoint.copying").exists()
    # the other training seed has no finished training to copy: it would train
    assert cell_module.trained_elsewhere(long[1], [short_out]) is None
    with pytest.raises(AssertionError, match="trained again"):
        run_cell(long[1], long_out, [short_out])
    assert (
        main(["sweep", str(tmp_path / "long" / "spec.yaml"), "--out", str(long_out), "--reuse-training", "nope"]) == 2
    )


def test_a_cell_names_the_checkpoint_file_it_cannot_read(tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path))
    cell = next(c for c in expand(spec) if c.training_seed is not None)
    checkpoint = tmp_path / "cell" / "checkpoint"
    checkpoint.mkdir(parents=True)
    (checkpoint / "agent.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"agent\.json"):
        evaluate(cell, tmp_path / "cell", seed=0, num_edits=3, acting={})


# ---------------------------------------------------------------- report statistics


def exhaustive_stratified_interval(strata: list[list[float]], confidence: float = 0.95) -> tuple[float, float]:
    """The exact percentile interval: every resample of every stratum enumerated, each equally likely."""
    means = [
        np.mean(sum(choice, ()))
        for choice in itertools.product(*[list(itertools.product(values, repeat=len(values))) for values in strata])
    ]
    alpha = (1 - confidence) / 2
    return tuple(np.quantile(means, [alpha, 1 - alpha]))


def test_stratified_bootstrap_matches_the_exhaustive_enumeration() -> None:
    # two training seeds far apart: a pooled bootstrap would draw all cells from one seed at times
    table = [[0.10, 0.20, 0.40], [0.70, 0.80, 0.95]]
    low, high = stratified_bootstrap_interval(table, resamples=100_000)
    exact_low, exact_high = exhaustive_stratified_interval(table)  # 27 x 27 resamples
    assert abs(low - exact_low) < 0.01 and abs(high - exact_high) < 0.01
    assert exact_low > 0.40 and exact_high < 0.65  # narrower than any pooled resampling allows


def test_probability_of_improvement_counts_ties_as_half() -> None:
    assert probability_of_improvement([0.5, 0.7], [0.5, 0.6]) == pytest.approx((0.5 + 0 + 1 + 1) / 4)


def write_sweep_folder(
    folder: Path, name: str, dataset: str, scores: dict[str, dict[int | None, list[float]]], planned: dict[str, int]
) -> Path:
    """A sweep folder as `hiedit sweep` leaves it, from a fixed table: {entry: {training seed: [mean per sequence]}}."""
    folder.mkdir(parents=True)
    meta = {
        "name": name,
        "spec": f"/specs/{name}.yaml",
        "compare": [],
        "cells": [],
        "models": ["smollm2-135m"],
        "datasets": [dataset],
        "entries": list(planned),
        "planned": planned,
        "training_seeds": [0, 100],
        "evaluation_seeds": [0, 1],
        "evaluation_num_edits": [100],
    }
    (folder / "sweep.json").write_text(json.dumps(meta))
    rows = [
        {
            "spec": name,
            "model": "smollm2-135m",
            "dataset": dataset,
            "agent": entry,
            "training_seed": seed,
            "evaluation_seed": i,
            "num_edits": 100,
            "mean": value,
            "ES": value,
            "GS": value,
            "LS": value,
            "candidates": 18,
            "layers_per_edit": 9.0,
            "seconds_per_edit": 1.0,
            "agent_seconds_per_edit": 0.1,
            "machine": "vm x86_64 Linux",
            "device": "cpu",
        }
        for entry, by_seed in scores.items()
        for seed, values in by_seed.items()
        for i, value in enumerate(values)
    ]
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_leaderboard_renders_unfinished_sweeps_into_the_readme_between_its_markers(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    zsre = write_sweep_folder(
        tmp_path / "zsre-100",
        "zsre-100",
        "zsre",
        {"hiedit": {0: [0.80, 0.78], 100: [0.82, 0.79]}, "noop": {None: [0.40, 0.42]}},
        {"hiedit": 4, "rledit": 4, "noop": 2},
    )
    # half of hiedit's cells finished; memit is only in the CounterFact spec
    cf = write_sweep_folder(
        tmp_path / "cf-100", "cf-100", "counterfact", {"hiedit": {0: [0.50, 0.46]}}, {"hiedit": 4, "memit": 2}
    )
    readme = tmp_path / "README.md"
    readme.write_text("# Title\n\n<!-- leaderboard:start -->\nold table\n<!-- leaderboard:end -->\n\nafter\n")
    assert main(["report", str(zsre), str(cf), "--out", str(tmp_path / "report"), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith(
        "# Title\n\n<!-- leaderboard:start -->\n| agent | zsre, 100 edits | counterfact, 100 edits |"
    )
    assert text.endswith("<!-- leaderboard:end -->\n\nafter\n") and "old table" not in text
    low, high = stratified_bootstrap_interval([[0.80, 0.78], [0.82, 0.79]])
    lines = text.splitlines()
    assert (
        f"| hiedit | {np.mean([0.80, 0.78, 0.82, 0.79]):.3f} [{low:.3f}, {high:.3f}] · 4/4 | 0.480 [0.460, 0.500] · 2/4 |"
        in lines
    )
    assert "| rledit | — |  |" in lines  # planned, no cells yet; not in the CounterFact spec
    assert "| noop | 0.410 [0.400, 0.420] · 2/2 |  |" in lines
    assert "| memit |  | — |" in lines
    caption = next(line for line in lines if line.startswith("mean(ES, GS, LS)"))
    assert (
        "zsre-100: training seeds 0, 100, evaluation sequences 0, 1" in caption and "vm x86_64 Linux (cpu)" in caption
    )
    assert f"`hiedit report {zsre} {cf} --out {tmp_path / 'report'} --readme {readme}`" in caption
    assert (tmp_path / "report" / "leaderboard.md").read_text() in text

    # a README without the markers is refused in one line and left as it was
    plain = tmp_path / "PLAIN.md"
    plain.write_text("# no markers\n")
    capsys.readouterr()
    assert main(["report", str(zsre), "--out", str(tmp_path / "report2"), "--readme", str(plain)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hiedit report: error: --readme") and "<!-- leaderboard:start -->" in err
    assert len(err.strip().splitlines()) == 1 and plain.read_text() == "# no markers\n"
    assert not (tmp_path / "report2" / "report.md").exists()


def test_an_unstarted_sweep_shows_its_planned_entries_on_the_leaderboard(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "planned"
    assert main(["sweep", str(write_spec(tmp_path)), "--out", str(out), "--max-cells", "0"]) == 0  # runs no cell
    assert "3 cells: 0 already finished, 0 run now" in capsys.readouterr().out
    scores = {"noop": {None: [0.40, 0.42]}, "all": {0: [0.45]}}
    done = write_sweep_folder(tmp_path / "done", "done", "zsre", scores, {"noop": 2, "all": 4})
    lines = leaderboard([done, out], "cmd").splitlines()
    # two models: the columns name them
    assert lines[0] == "| agent | zsre, 100 edits, smollm2-135m | default, 3 edits, test-tiny-gpt2 |"
    assert "| noop | 0.410 [0.400, 0.420] · 2/2 | — |" in lines and "| rledit-bounded |  | — |" in lines
    assert "| all | 0.450 · 1/4 |  |" in lines  # one cell: no interval (a bootstrap of one value is a point)


def test_leaderboard_of_a_sweep_folder_from_before_sweep_json_listed_its_entries(tmp_path: Path) -> None:
    folder = write_sweep_folder(tmp_path / "old", "old", "zsre", {"noop": {None: [0.40, 0.42]}}, {"noop": 2})
    (folder / "sweep.json").write_text(
        json.dumps({"name": "old", "spec": "/specs/old.yaml", "compare": [], "cells": []})
    )
    board = build_report([folder], tmp_path / "report").with_name("leaderboard.md").read_text()
    assert "| noop | 0.410 [0.400, 0.420] · 2 |" in board.splitlines()  # no planned count to show
    assert "old: training seeds none, evaluation sequences 0, 1" in board


# ---------------------------------------------------------------- tune


def test_tune_writes_a_best_configuration_a_spec_can_include(tmp_path: Path, ray_local) -> None:
    path = write_spec(
        tmp_path,
        agents=[{"name": "ft_l", "agent": "ft_l", "agent-kwargs": {"iterations": 2}}],
        compare=[],
        search={"agent-kwargs": {"lr": {"loguniform": [0.001, 0.1]}}, "validation": {"seeds": [0, 1], "num_edits": 2}},
    )
    summary = tune_spec(path, trials=3, out=tmp_path / "tune")
    assert summary["trials"] == 3 and summary["errors"] == 0
    # the first trial runs the entry's own values: ft_l's default lr with the entry's iterations
    assert summary["defaults"] == {"lr": 0.01} and 0 <= summary["default_score"] <= 1
    trials = list(csv.DictReader((tmp_path / "tune" / "trials.csv").open()))
    assert len(trials) == 3 and float(trials[0]["config/params/lr"]) == 0.01
    assert not (tmp_path / "tune" / "trials").exists()  # the trials' working folders are removed
    assert summary["best"]["agent-kwargs"]["iterations"] == 2 and 0.001 <= summary["best"]["agent-kwargs"]["lr"] <= 0.1
    best = tmp_path / "tune" / "best.yaml"
    including = write_spec(tmp_path, agents=[{"name": "tuned", "include": str(best)}], compare=[])
    entry = load_spec(including).agents[0]
    assert (entry.name, entry.agent, entry.agent_kwargs) == ("tuned", "ft_l", summary["best"]["agent-kwargs"])


def test_tune_keeps_a_searched_heuristic_step_instead_of_tuning_it_away(tmp_path: Path, ray_local) -> None:
    path = write_spec(
        tmp_path,
        agents=[{"name": "all", "agent": "all"}],
        compare=[],
        search={"agent-kwargs": {"step": {"choice": [0.0, 1.0]}}, "validation": {"seeds": [0], "num_edits": 10}},
    )
    summary = tune_spec(path, trials=2, out=tmp_path / "tune")
    trials = list(csv.DictReader((tmp_path / "tune" / "trials.csv").open()))
    steps = [float(t["config/params/step"]) for t in trials]
    # the first trial is the entry's own step (the constructor's 0.0), the other the sampler's 1: each edits with
    # its own step, where a grid search on the training split would have replaced both by one tuned value
    assert steps == [0.0, 1.0] and summary["errors"] == 0
    assert trials[0]["score"] != trials[1]["score"]


def test_the_machine_is_described_by_its_cpu_cores_and_system() -> None:
    from hiedit_agents.sweep.cell import machine_description

    text = machine_description()
    assert f", {os.cpu_count()} cores, " in text and text.endswith(f"{platform.system()} {platform.machine()}")


def test_rows_name_the_commit_of_the_source_the_worker_imported() -> None:
    import subprocess

    from hiedit_agents.sweep.cell import SOURCE_COMMIT, provenance

    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert SOURCE_COMMIT in (head, f"{head}-dirty") and provenance()["git_commit"] == SOURCE_COMMIT
