"""The evaluation loop: one full episode of an agent, with its own time per edit and, optionally, the
curve of the scores as the sequence grows, and snapshots that let an interrupted episode continue."""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import torch
from tqdm import tqdm

from hiedit_env import HiEditEnv
from hiedit_env.files import atomic_write
from hiedit_env.score import CORE_METRICS

from .base import Agent
from .checkpoint import CheckpointError, load_torch

SNAPSHOT_FORMAT = 1
SNAPSHOT_SECONDS = 600.0  # the default least time between two snapshots: at most this much of a sequence is lost
SNAPSHOT_SUFFIX = ".snapshot.pt"  # a snapshot's name: its result file's with this added or put in place of .json


@dataclass(frozen=True)
class EpisodeSnapshot:
    """Where and how often :func:`run_episode` records the episode so far, so that a run stopped part-way
    (Ctrl-C, kill, machine loss) continues from the last record instead of from the first edit: a
    1000-edit sequence of AlphaEdit takes hours on a CPU.

    ``path``: the snapshot file (written atomically; the caller removes it once the result is stored).
    ``every_seconds``: the least time between two records (each writes the edited weights, 18 MB for
    MEMIT's five SmolLM2 modules, and the agent's :meth:`~.base.Agent.episode_state`: AlphaEdit's five
    kept inverses of 1428 x 1428 float64 add 82 MB).
    ``key``: what else must match for a snapshot to be continued (e.g. the agent's checkpoint,
    :func:`~.checkpoint.checkpoint_identity`); the agent's name and configuration, the model, the data
    and split, the candidate modules, the seed and the episode's records are always compared.
    """

    path: Path
    every_seconds: float = SNAPSHOT_SECONDS
    key: dict[str, Any] = field(default_factory=dict)


def run_episode(
    agent: Agent,
    env: gym.Env,
    seed: int,
    progress: bool = True,
    on_step: Callable[[dict[str, Any], bool], None] | None = None,
    curve_points: int = 0,
    snapshot: EpisodeSnapshot | None = None,
) -> dict[str, Any]:
    """Run one full episode with ``agent`` and return the environment's ``episode_metrics``, plus
    ``agent_seconds_per_edit`` (the agent's own ``act`` time, which ``seconds_per_edit`` leaves out).

    ``on_step(info, terminated)`` is called after every step (e.g. to score the model mid-sequence).
    With ``curve_points`` > 0 the result also holds ``curve``: ES/GS/LS of the edits so far after every
    ``num_edits / curve_points`` edits (one scoring pass each, outside the timed step), the last point
    being the end-of-sequence evaluation.

    With ``snapshot``, the episode so far is recorded there at most every ``snapshot.every_seconds``, and
    a matching snapshot found at the start is continued: the result is the uninterrupted run's, bit for
    bit on the same machine and thread count. The result then also holds ``resumed_at_edit`` (0 for a
    fresh start) and ``episode_seconds`` (the episode's wall time over all its runs). A snapshot of
    another run, or one that cannot be read, is reported in a warning and the episode starts over.
    """
    observation, info = env.reset(seed=seed)
    unwrapped: HiEditEnv = env.unwrapped
    total = unwrapped.num_edits
    marks = {round(total * i / curve_points) for i in range(1, curve_points)} if curve_points > 1 else set()
    curve: list[dict[str, float]] = []
    act_seconds: list[float] = []
    earlier_seconds = 0.0
    key: dict[str, Any] = {}
    if snapshot is not None:
        key = {
            "format": SNAPSHOT_FORMAT,
            "agent": agent.name,
            "config": agent.config(),
            "model": unwrapped.shared.name,
            "data": [str(unwrapped.edit_set.source), unwrapped.split],
            "candidates": list(unwrapped.candidate_modules),
            "seed": seed,
            "records": [r.index for r in unwrapped.episode_records()],
            **snapshot.key,
        }
        key = json.loads(json.dumps(key, default=str))  # as the file gives it back: plain types only
        state = _matching_snapshot(snapshot.path, key)
        if state is not None:
            observation = unwrapped.restore_episode(state["env"])
            agent.load_episode_state(state["agent"])
            torch.set_rng_state(state["torch_rng"])
            info, curve, act_seconds = state["info"], state["curve"], state["act_seconds"]
            earlier_seconds = state["seconds"]
    resumed_at = unwrapped.edit_index
    started = last_record = time.perf_counter()
    with tqdm(
        total=total, initial=resumed_at, desc=f"evaluating {agent.name}", unit="edit", disable=not progress
    ) as bar:
        terminated = False
        while not terminated:
            began = time.perf_counter()
            action = agent.act(observation, info)
            act_seconds.append(time.perf_counter() - began)
            observation, _, terminated, _, info = env.step(action)
            if unwrapped.edit_index in marks and not terminated:
                scores = unwrapped.evaluate(generation=False)
                curve.append({"edits": unwrapped.edit_index, **{k: scores[k] for k in CORE_METRICS}})
            if on_step is not None:
                on_step(info, terminated)
            bar.set_postfix(ES=f"{info['edit_success']:.2f}", LS=f"{info['locality']:.2f}")
            bar.update()
            now = time.perf_counter()
            if snapshot is not None and not terminated and now - last_record >= snapshot.every_seconds:
                state = {
                    "key": key,
                    "env": unwrapped.episode_state(),
                    "agent": agent.episode_state(),
                    "torch_rng": torch.get_rng_state(),
                    "info": info,
                    "curve": curve,
                    "act_seconds": act_seconds,
                    "seconds": earlier_seconds + now - started,
                }
                atomic_write(snapshot.path, lambda tmp, state=state: torch.save(state, tmp))
                last_record = time.perf_counter()
    metrics = {**info["episode_metrics"], "agent_seconds_per_edit": sum(act_seconds) / len(act_seconds)}
    if curve_points > 0:
        metrics["curve"] = [*curve, {"edits": total, **{k: metrics[k] for k in CORE_METRICS}}]
    if snapshot is not None:
        metrics["resumed_at_edit"] = resumed_at
        metrics["episode_seconds"] = earlier_seconds + time.perf_counter() - started
    return metrics


def _matching_snapshot(path: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    """The snapshot at ``path`` if it exists and was made by the run ``key`` describes; otherwise ``None``,
    with a warning for a snapshot that is unreadable or another run's (the episode starts over)."""
    if not Path(path).is_file():
        return None
    try:
        state = load_torch(Path(path), "cpu")
    except CheckpointError as err:
        warnings.warn(f"{err}; the episode starts over", stacklevel=3)
        return None
    if not isinstance(state, dict) or state.get("key") != key:
        differs = (
            sorted(k for k in key if state["key"].get(k) != key[k])
            if isinstance(state, dict) and isinstance(state.get("key"), dict)
            else ["format"]
        )
        warnings.warn(
            f"snapshot {str(path)!r} was made by another run (its {', '.join(differs)} differ); "
            "the episode starts over",
            stacklevel=3,
        )
        return None
    return state
