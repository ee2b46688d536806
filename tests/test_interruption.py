"""Interruptions: a process killed mid-save or mid-training never leaves state that loads wrong, and a
resumed training run ends exactly where an uninterrupted one does."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from hiedit_agents import agent_class
from hiedit_agents.common.checkpoint import CheckpointError

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
