"""The evaluation loop: one full episode of an agent, with its own time per edit and, optionally, the
curve of the scores as the sequence grows."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import gymnasium as gym
from tqdm import tqdm

from hiedit_env import HiEditEnv
from hiedit_env.score import CORE_METRICS

from .base import Agent


def run_episode(
    agent: Agent,
    env: gym.Env,
    seed: int,
    progress: bool = True,
    on_step: Callable[[dict[str, Any], bool], None] | None = None,
    curve_points: int = 0,
) -> dict[str, Any]:
    """Run one full episode with ``agent`` and return the environment's ``episode_metrics``, plus
    ``agent_seconds_per_edit`` (the agent's own ``act`` time, which ``seconds_per_edit`` leaves out).

    ``on_step(info, terminated)`` is called after every step (e.g. to score the model mid-sequence).
    With ``curve_points`` > 0 the result also holds ``curve``: ES/GS/LS of the edits so far after every
    ``num_edits / curve_points`` edits (one scoring pass each, outside the timed step), the last point
    being the end-of-sequence evaluation.
    """
    observation, info = env.reset(seed=seed)
    unwrapped: HiEditEnv = env.unwrapped
    total = unwrapped.num_edits
    marks = {round(total * i / curve_points) for i in range(1, curve_points)} if curve_points > 1 else set()
    curve: list[dict[str, float]] = []
    act_seconds: list[float] = []
    with tqdm(total=total, desc=f"evaluating {agent.name}", unit="edit", disable=not progress) as bar:
        terminated = False
        while not terminated:
            started = time.perf_counter()
            action = agent.act(observation, info)
            act_seconds.append(time.perf_counter() - started)
            observation, _, terminated, _, info = env.step(action)
            if unwrapped.edit_index in marks and not terminated:
                scores = unwrapped.evaluate(generation=False)
                curve.append({"edits": unwrapped.edit_index, **{k: scores[k] for k in CORE_METRICS}})
            if on_step is not None:
                on_step(info, terminated)
            bar.set_postfix(ES=f"{info['edit_success']:.2f}", LS=f"{info['locality']:.2f}")
            bar.update()
    metrics = {**info["episode_metrics"], "agent_seconds_per_edit": sum(act_seconds) / len(act_seconds)}
    if curve_points > 0:
        metrics["curve"] = [*curve, {"edits": total, **{k: metrics[k] for k in CORE_METRICS}}]
    return metrics
