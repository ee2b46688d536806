"""Agents that need no training: baselines every learned agent has to beat.

* ``noop``: changes nothing (the unedited model's scores).
* ``all``: every candidate, one constant step along each module's own edit gradient.
* ``random_k``: ``k`` random candidates (seeded), the same constant step.
* ``topk_grad``: the ``k`` candidates with the largest ``||delta^T k||``, the same constant step.
* ``ft_l``: FT-L style fine-tuning: a few Adam steps on dense deltas of the top-``k`` gradient modules
  through the environment's differentiable objective, then that dense update; ``loss="edit"`` takes
  the papers' FT-L loss instead, the edit's own cross-entropy.

The constant step is the ``step_size`` action in [-1, 1] (mapped onto the environment's
``eta_range``); :meth:`ConstantStepAgent.learn` tunes it on the environment it is given, which
should be the training split. ``hiedit train``, ``hiedit evaluate`` and sweep cells all tune it that
way (``hiedit train``'s default budget: 300 edits in 20-edit episodes) unless ``step`` is given.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import gymnasium as gym
import numpy as np
import torch
from tqdm import tqdm

from hiedit_env.checks import check_k

from .common.base import Agent
from .common.evaluation import run_episode
from .selection import gradient_norms, topk_indicator

STEP_GRID = (-1.0, -0.5, 0.0, 0.5, 1.0)


class NoopAgent(Agent):
    """Edits nothing: the floor for ES and GS, the ceiling for LS."""

    name = "noop"

    def act(self, observation: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
        zeros = np.zeros(self.num_candidates, np.float32)
        return {"layers": zeros, "update": zeros}


class ConstantStepAgent(Agent):
    """A fixed step along each chosen module's edit gradient; subclasses decide which modules."""

    name = "constant_step"
    tuned_options = ("step",)

    def __init__(self, env: gym.Env, step: float = 0.0) -> None:
        super().__init__(env)
        if not -1.0 <= float(step) <= 1.0:
            raise ValueError(f"step must be in [-1, 1], got {step!r}")
        self.step = float(step)

    def choose(self, observation: dict[str, Any]) -> np.ndarray:
        """0/1 mask of the modules to change for the current edit."""
        raise NotImplementedError

    def act(self, observation: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
        return {"layers": self.choose(observation), "update": np.full(self.num_candidates, self.step, np.float32)}

    def config(self) -> dict[str, Any]:
        return {"step": self.step}

    def learn(
        self, env: gym.Env, steps: int, *, log_dir: str | Path | None = None, seed: int = 0, progress: bool = True
    ) -> dict[str, Any]:
        """Grid-search the constant step on ``env``: each value of :data:`STEP_GRID` gets the same
        episodes (seeds ``seed, seed+1, ...``, about ``steps`` edits in all); keep the best mean(ES, GS, LS)."""
        episodes = max(1, steps // (len(STEP_GRID) * env.unwrapped.num_edits))
        scores: dict[float, float] = {}
        # act() reads the trace of self.env: point it at the tuning environment while tuning.
        own_env, self.env = self.env, env.unwrapped
        try:
            for value in tqdm(STEP_GRID, desc=f"tuning {self.name} step", disable=not progress):
                self.step = value
                scores[value] = float(
                    np.mean([run_episode(self, env, seed + e, progress=False)["mean"] for e in range(episodes)])
                )
        finally:
            self.env = own_env
        self.step = max(scores, key=scores.get)
        return {
            "steps": episodes * len(STEP_GRID) * env.unwrapped.num_edits,
            "optimizer_steps": 0,
            "step": self.step,
            "grid_scores": {str(k): v for k, v in scores.items()},
        }


class AllLayersAgent(ConstantStepAgent):
    """Every candidate module, a constant step."""

    name = "all"

    def choose(self, observation: dict[str, Any]) -> np.ndarray:
        return np.ones(self.num_candidates, np.float32)


class RandomKAgent(ConstantStepAgent):
    """``k`` candidates drawn at random per edit (default half), a constant step."""

    name = "random_k"

    def __init__(self, env: gym.Env, step: float = 0.0, k: int | None = None, seed: int = 0) -> None:
        super().__init__(env, step)
        self.k, self.seed = check_k(k, self.num_candidates), seed
        self.rng = np.random.default_rng(seed)

    def choose(self, observation: dict[str, Any]) -> np.ndarray:
        mask = np.zeros(self.num_candidates, np.float32)
        mask[self.rng.choice(self.num_candidates, self.k, replace=False)] = 1.0
        return mask

    def config(self) -> dict[str, Any]:
        return {"step": self.step, "k": self.k, "seed": self.seed}

    def episode_state(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state}

    def load_episode_state(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]


class TopKGradAgent(ConstantStepAgent):
    """The ``k`` candidates with the largest edit gradient ``||delta^T k||_F`` (default half), a constant step."""

    name = "topk_grad"

    def __init__(self, env: gym.Env, step: float = 0.0, k: int | None = None) -> None:
        super().__init__(env, step)
        self.k = check_k(k, self.num_candidates)

    def choose(self, observation: dict[str, Any]) -> np.ndarray:
        return topk_indicator(gradient_norms(self.env.edit_trace), self.k).cpu().numpy()

    def config(self) -> dict[str, Any]:
        return {"step": self.step, "k": self.k}


class FineTuneAgent(Agent):
    """FT-L style: ``iterations`` Adam steps on dense deltas of the top-``k`` gradient modules, then
    apply the dense deltas.

    ``loss="objective"`` (default) descends ``env.objective``, the learned editors' training loss:
    the edit and its ``back_depth`` predecessors, KL to the unedited model on unrelated prompts, L2.
    ``loss="edit"`` descends the current edit's cross-entropy alone, as FT-L does in the ROME,
    MEMIT and EasyEdit comparisons (without their per-weight norm bound): nothing holds it back from
    unrelated prompts or earlier edits. The deltas are parametrised relative to each module's RMS
    weight, so one ``lr`` means the same relative change on every module and model.
    """

    name = "ft_l"
    update_mode = "low_rank"

    def __init__(
        self,
        env: gym.Env,
        k: int | None = None,
        iterations: int = 5,
        lr: float = 0.01,
        loss: Literal["objective", "edit"] = "objective",
    ) -> None:
        super().__init__(env)
        if iterations < 1 or lr <= 0:
            raise ValueError(f"ft_l needs iterations >= 1 and lr > 0, got {iterations} and {lr}")
        if loss not in ("objective", "edit"):
            raise ValueError(f"ft_l's loss must be 'objective' or 'edit', got {loss!r}")
        self.k, self.iterations, self.lr = check_k(k, self.num_candidates), int(iterations), float(lr)
        self.loss = loss
        self.rms = [
            norm / (d_in * d_out) ** 0.5
            for norm, (d_in, d_out) in zip(self.env.base_weight_norms(), self.env.module_dims())
        ]

    def act(self, observation: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
        mask = topk_indicator(gradient_norms(self.env.edit_trace), self.k)
        chosen = mask.nonzero().flatten().tolist()
        weights = self.env.candidate_weights()
        params = {i: torch.zeros_like(weights[i], requires_grad=True) for i in chosen}
        optimizer = torch.optim.Adam(params.values(), lr=self.lr)
        for _ in range(self.iterations):
            optimizer.zero_grad()
            updates = [params[i] * self.rms[i] if i in params else None for i in range(self.num_candidates)]
            terms = self.env.objective(updates, back_depth=0 if self.loss == "edit" else None)
            (terms.edit if self.loss == "edit" else terms.total).backward()
            optimizer.step()
        update = [(params[i] * self.rms[i]).detach() if i in params else None for i in range(self.num_candidates)]
        return {"layers": mask.cpu().numpy(), "update": update}

    def config(self) -> dict[str, Any]:
        return {"k": self.k, "iterations": self.iterations, "lr": self.lr, "loss": self.loss}
