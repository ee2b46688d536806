"""Interruptions: a process killed mid-save or mid-training never leaves state that loads wrong, and a
resumed training run or evaluation sequence ends exactly where an uninterrupted one does."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import gymnasium as gym
import pytest
import torch
from hiedit_agents import agent_class, make_agent, run_episode
from hiedit_agents.common.checkpoint import CheckpointError
from hiedit_agents.common.evaluation import EpisodeSnapshot

MODEL = "test-tiny-llama"
# Episodes of 2 edits, a checkpoint at every episode's end, validation every 4 edits.
AGENT_KWARGS = json.dumps({"validation_edits": 2, "validate_every": 4})


def train_args(out: Path, steps: int, *extra: str) -> list[str]:
    return [
        "train",
        "--agent",
        "rledit",
        "--model",
        MODEL,
        "--dataset",
        "default",
        "--num-edits",
        "2",
        "--steps",
        str(steps),
        "--seed",
        "3",
        "--threads",
        "1",
        "--checkpoint-every",
        "2",
        "--out",
        str(out),
        *extra,
    ]


def hiedit(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "hiedit_agents.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 240) -> None:
    started = time.monotonic()
    while not path.exists():
        assert process.poll() is None, f"the run ended before {path} appeared: {process.communicate()[1][-2000:]}"
        assert time.monotonic() - started < timeout, f"{path} did not appear"
        time.sleep(0.02)


def same_state(a: Path, b: Path) -> None:
    left = torch.load(a / "agent_state.pt", weights_only=True)
    right = torch.load(b / "agent_state.pt", weights_only=True)
    flat = [(name, key) for name, part in left.items() if isinstance(part, dict) for key in part]
    assert flat and left["optimizer_steps"] == right["optimizer_steps"]
    for name, key in flat:
        assert torch.equal(left[name][key], right[name][key]), f"{name}.{key} differs"


def finish(process: subprocess.Popen) -> None:
    _, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-2000:]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference run, in a process of its own as every part of the interrupted run is (as a user
    runs them): a fresh process's numbers do not depend on what earlier tests did in this one."""
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    finish(hiedit(*train_args(out, 40, "--agent-kwargs", AGENT_KWARGS)))
    return out


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM], ids=["killed", "terminated"])
def test_resume_after_an_interruption_ends_as_the_uninterrupted_run(stop, uninterrupted, tmp_path):
    out = tmp_path / "run"
    process = hiedit(*train_args(out, 40, "--agent-kwargs", AGENT_KWARGS))
    wait_for(out / "training_state" / "manifest.json", process)
    time.sleep(0.3)  # well into a later episode
    process.send_signal(stop)
    _, err = process.communicate(timeout=240)
    if stop == signal.SIGTERM:
        assert process.returncode == 130, err[-2000:]
        assert "--resume" in err.splitlines()[-1]
    else:
        assert process.returncode == -signal.SIGKILL
    progress = torch.load(out / "training_state" / "training_state.pt", weights_only=True)["progress"]
    assert 0 < progress["step"] < 40
    finish(hiedit(*train_args(out, 40, "--resume")))
    stats = json.loads((out / "train_stats.json").read_text())
    assert stats["resumed_at"] == progress["step"] and stats["steps_this_run"] == 40 - progress["step"]
    assert not (out / "training_state").exists()  # removed once the run completed
    same_state(out, uninterrupted)
    expected = json.loads((uninterrupted / "train_stats.json").read_text())
    assert stats["validations"] == expected["validations"] and stats["episodes"] == expected["episodes"]
    assert stats["diagnostics"] == expected["diagnostics"]


def test_a_save_killed_part_way_never_loads(tmp_path, make_env):
    """The process dies between writing the new state and sealing it: the folder is refused, never
    read as the old configuration with the new state (or the reverse)."""
    out = tmp_path / "checkpoint"
    script = textwrap.dedent(f"""
        import os, signal, gymnasium as gym, torch
        import hiedit_agents
        from hiedit_agents import make_agent
        from hiedit_agents.common import checkpoint
        env = gym.make("HiEdit-v0", model={MODEL!r}, dataset='default', num_edits=2, update_mode="low_rank")
        agent = make_agent("rledit", env)
        agent.save({str(out)!r})
        real_write_torch = checkpoint.CheckpointWriter.write_torch
        def write_then_die(self, name, value):
            real_write_torch(self, name, value)
            os.kill(os.getpid(), signal.SIGKILL)
        checkpoint.CheckpointWriter.write_torch = write_then_die
        with torch.no_grad():
            agent.editor.log_lr.add_(1.0)
        agent.save({str(out)!r})
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    assert (out / "agent_state.pt").is_file() and (out / "agent.json").is_file()
    assert not list(out.glob(".*partial*"))  # no temporary file left beside them
    env = make_env(MODEL, num_edits=2, update_mode="low_rank")
    with pytest.raises(CheckpointError, match="is incomplete: it has no manifest.json"):
        agent_class("rledit").load(out, env)


# ---------------------------------------------------------------- an evaluation sequence stopped part-way

# Agents that carry state from edit to edit (AlphaEdit's earlier keys, random_k's generator) and one that
# reads the environment's cached unedited log-probs (ft_l's objective).
CARRYING = {
    "alphaedit": {},
    "random_k": {"step": 0.5, "seed": 3},
    "ft_l": {"iterations": 2},
}
TIMINGS = ("seconds_per_edit", "agent_seconds_per_edit", "resumed_at_edit", "episode_seconds")


def sequence_env(make_env, name: str) -> gym.Env:
    requirements = agent_class(name).acting_requirements(CARRYING[name])
    return make_env(MODEL, num_edits=6, evaluate_generation=False, **requirements)


def stop_after(edits: int):
    def on_step(info: dict, terminated: bool) -> None:
        if info["edit_index"] + 1 == edits:
            raise KeyboardInterrupt

    return on_step


def scores(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in TIMINGS}


@pytest.mark.parametrize("name", list(CARRYING))
def test_a_stopped_sequence_continues_from_its_snapshot_to_the_uninterrupted_result(
    name: str, make_env, helpers, tmp_path: Path
) -> None:
    env = sequence_env(make_env, name)
    expected = run_episode(make_agent(name, env, **CARRYING[name]), env, 1, progress=False, curve_points=3)
    expected_weights = helpers.snapshot(env)

    snapshot = EpisodeSnapshot(tmp_path / "sequence.snapshot.pt", every_seconds=0)
    stopped = sequence_env(make_env, name)
    with pytest.raises(KeyboardInterrupt):
        run_episode(
            make_agent(name, stopped, **CARRYING[name]),
            stopped,
            1,
            progress=False,
            curve_points=3,
            snapshot=snapshot,
            on_step=stop_after(4),  # the snapshot of edit 3 was written, edit 4's was not
        )
    # a new environment and agent, as a new process has
    env = sequence_env(make_env, name)
    resumed = run_episode(
        make_agent(name, env, **CARRYING[name]), env, 1, progress=False, curve_points=3, snapshot=snapshot
    )
    assert resumed["resumed_at_edit"] == 3 and resumed["episode_seconds"] > 0
    assert scores(resumed) == scores(expected)  # every score, per edit, and the curve, exactly
    assert helpers.same_weights(helpers.snapshot(env), expected_weights)


def test_another_runs_or_a_corrupt_snapshot_is_set_aside_with_a_warning(make_env, tmp_path: Path) -> None:
    snapshot = EpisodeSnapshot(tmp_path / "sequence.snapshot.pt", every_seconds=0)
    env = sequence_env(make_env, "random_k")
    with pytest.raises(KeyboardInterrupt):
        run_episode(make_agent("random_k", env, **CARRYING["random_k"]), env, 1, False, stop_after(2), 0, snapshot)
    fresh = run_episode(make_agent("random_k", env, **CARRYING["random_k"]), env, 2, progress=False)
    with pytest.warns(UserWarning, match=r"made by another run \(its records, seed differ\); the episode starts over"):
        other = run_episode(
            make_agent("random_k", env, **CARRYING["random_k"]), env, 2, progress=False, snapshot=snapshot
        )
    assert other["resumed_at_edit"] == 0 and scores(other) == scores(fresh)
    snapshot.path.write_bytes(b"not a snapshot")
    with pytest.warns(UserWarning, match="empty or corrupt.*the episode starts over"):
        again = run_episode(
            make_agent("random_k", env, **CARRYING["random_k"]), env, 2, progress=False, snapshot=snapshot
        )
    assert again["resumed_at_edit"] == 0 and scores(again) == scores(fresh)


def test_restore_episode_refuses_another_episode(make_env) -> None:
    env = sequence_env(make_env, "random_k")
    agent = make_agent("random_k", env, **CARRYING["random_k"])
    observation, info = env.reset(seed=1)
    env.step(agent.act(observation, info))
    state = env.unwrapped.episode_state()
    env.reset(seed=2)
    with pytest.raises(ValueError, match="not the one reset\\(\\) drew"):
        env.unwrapped.restore_episode(state)


def test_hiedit_evaluate_continues_a_stopped_sequence_and_removes_its_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hiedit_agents.cli import main

    from hiedit_env.env import HiEditEnv

    kwargs = json.dumps(CARRYING["random_k"])
    args = ["evaluate", "--agent", "random_k", "--agent-kwargs", kwargs, "--model", MODEL, "--num-edits", "5"]
    whole, out = tmp_path / "whole.json", tmp_path / "stopped.json"
    assert main([*args, "--out", str(whole)]) == 0
    step, calls = HiEditEnv.step, []

    def stopped_at_fourth_edit(self: HiEditEnv, action: dict) -> tuple:
        calls.append(action)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return step(self, action)

    monkeypatch.setattr(HiEditEnv, "step", stopped_at_fourth_edit)
    every_edit = ["--snapshot-every", "1e-9"]
    assert main([*args, "--out", str(out), *every_edit]) == 130
    snapshot = tmp_path / "stopped.json.snapshot.pt"
    assert snapshot.is_file() and not out.exists()
    monkeypatch.setattr(HiEditEnv, "step", step)
    assert main([*args, "--out", str(out), *every_edit]) == 0
    assert not snapshot.exists()  # removed once the result was written
    resumed, expected = json.loads(out.read_text()), json.loads(whole.read_text())
    assert (resumed["resumed_at_edit"], expected["resumed_at_edit"]) == (3, 0)
    assert {k: resumed[k] for k in ("ES", "GS", "LS", "mean", "per_edit")} == {
        k: expected[k] for k in ("ES", "GS", "LS", "mean", "per_edit")
    }
    with pytest.raises(SystemExit, match="2"):  # argparse's one line, not a traceback
        main([*args, "--out", str(out), "--snapshot-every", "-1"])
