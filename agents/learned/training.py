"""The plain training loop of the learned editors, and the state a run carries between episodes.

Per training edit: read the edit's trace (or the objective's, ``editor_reads``), let the editor emit
updates (with gradient), take the agent's loss through ``env.objective`` (which adds the updates with
forward hooks and never writes the weights, so the graph stays intact), backpropagate, take an optimiser step every
``update_every`` edits, then ``env.step`` with the *detached* updates so the following edits act on
the edited model, as in deployment. Nothing is written to disk per step; TensorBoard gets the loss
terms per edit and the end-of-sequence metrics per episode.

What runs around the loop (validation, weight averaging, checkpoints) is a :class:`TrainingCallback`
(:mod:`~hiedit_agents.learned.callbacks`), called in its list's order after every training edit, after every
optimiser step, at the end of every training episode but the last, and once at the end of training.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter
from tqdm import trange

from hiedit_env import EditTrace, HiEditEnv
from hiedit_env.score import EPISODE_SUMMARY

from ..common.base import TrainingInterrupted

if TYPE_CHECKING:
    from .agent import LearnedEditorAgent, LowRank


class EditorDivergedError(ValueError):
    """The editor's updates or training loss stopped being finite numbers."""


@dataclass
class TrainingState:
    """What a training run carries from one episode to the next, besides tensors (saved with them)."""

    seed: int
    step: int = 0
    optimizer_steps: int = 0
    next_validation: int = 1
    next_checkpoint: int = 0
    episodes: list[dict[str, float]] = field(default_factory=list)
    validations: list[dict[str, float]] = field(default_factory=list)
    # Per training episode: how far the editor has moved from its start (callbacks.Diagnostics).
    diagnostics: list[dict[str, Any]] = field(default_factory=list)
    running: dict[str, float] = field(default_factory=dict)
    # (validation mean, training edits, agent state) of the best validated editor so far.
    best: tuple[float, int, dict[str, Any]] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@contextmanager
def deferred_interrupt() -> Iterator[Callable[[], bool]]:
    """Within the block the first SIGINT only sets a flag (the caller polls it and stops at a point
    where it can save); a second one interrupts at once. Outside the main thread, nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    hits: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        hits.append(signum)
        if len(hits) > 1:
            raise KeyboardInterrupt
        print("\ninterrupt: finishing the current episode to save; interrupt again to stop at once", file=sys.stderr)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: bool(hits)
    finally:
        signal.signal(signal.SIGINT, previous)


class ScalarLog:
    """A run's TensorBoard scalars, ``prefix/name`` at a step; with no folder it writes nothing."""

    def __init__(self, log_dir: str | Path | None, purge_step: int | None = None) -> None:
        self.writer = SummaryWriter(str(log_dir), purge_step=purge_step) if log_dir is not None else None

    def write(self, prefix: str, scalars: dict[str, float], step: int) -> None:
        if self.writer is not None:
            for key, value in scalars.items():
                self.writer.add_scalar(f"{prefix}/{key}", value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class TrainingCallback:
    """A hook into :class:`TrainingLoop`; each method does nothing unless overridden."""

    # True for a callback that saves the run's progress, so that an interrupted run can be resumed.
    saves_progress: ClassVar[bool] = False

    def on_edit(self, loop: TrainingLoop, trace: EditTrace, updates: list[LowRank], scalars: dict[str, float]) -> None:
        """After each training edit has been applied: ``trace`` is what the editor read, ``updates`` what it
        emitted (with gradient; the optimiser may have stepped since), ``scalars`` the edit's logged terms."""

    def on_optimizer_step(self, loop: TrainingLoop) -> None:
        """After each optimiser step (the parameters have just moved)."""

    def on_episode_end(self, loop: TrainingLoop) -> None:
        """At the end of each training episode but the last (the next one has not been drawn yet)."""

    def on_training_end(self, loop: TrainingLoop) -> None:
        """After the last training edit; what the agent keeps is decided here."""

    def state_dict(self) -> dict[str, Any]:
        """Tensors the callback carries, saved with the run's progress (``training_state.pt``)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


class TrainingLoop:
    """Trains ``agent``'s editor on ``steps`` consecutive edits of ``env``, from ``state`` on.

    Episodes are seeded ``seed, seed+1, ...`` (``state.seed``) and, with a ``pool``, draw their
    records from it. ``explore`` is the generator a stochastic high level draws its choice with;
    ``log`` takes the TensorBoard scalars (default: none are written).
    """

    def __init__(
        self,
        agent: LearnedEditorAgent,
        env: gym.Env,
        steps: int,
        state: TrainingState,
        optimizer: torch.optim.Optimizer,
        params: list[nn.Parameter],
        explore: torch.Generator,
        pool: list[int] | None,
        callbacks: list[TrainingCallback],
        progress: bool,
        log: ScalarLog | None = None,
    ) -> None:
        self.agent, self.env, self.steps, self.state = agent, env, steps, state
        self.optimizer, self.params, self.explore, self.pool = optimizer, params, explore, pool
        self.callbacks, self.progress = callbacks, progress
        self.log = log if log is not None else ScalarLog(None)
        self.unwrapped: HiEditEnv = env.unwrapped
        self.interrupted: Callable[[], bool] = lambda: False

    def next_episode(self) -> dict[str, Any]:
        """Reset ``env`` for the next training episode; its first observation."""
        seed = self.state.seed + len(self.state.episodes)
        options = (
            None
            if self.pool is None
            else {
                "records": np.random.default_rng(seed)
                .choice(self.pool, self.unwrapped.num_edits, replace=False)
                .tolist()
            }
        )
        return self.env.reset(seed=seed, options=options)[0]

    def optimizer_step(self) -> None:
        """Clip, step, bound the learned step sizes (``max_lr``), then the callbacks."""
        agent = self.agent
        nn.utils.clip_grad_norm_(self.params, agent.hparams["grad_clip"])
        self.optimizer.step()
        self.optimizer.zero_grad()
        if agent.hparams["max_lr"] is not None:
            agent.bound_step_size()
        for callback in self.callbacks:
            callback.on_optimizer_step(self)
        agent.optimizer_steps += 1
        self.state.optimizer_steps += 1

    def run(self) -> None:
        """The loop itself; SIGINT stops it at the next episode's end (:func:`deferred_interrupt`), after the
        callbacks had their turn (a checkpoint saves then), with :class:`TrainingInterrupted`."""
        agent, state, unwrapped = self.agent, self.state, self.unwrapped
        update_every = agent.hparams["update_every"]
        observation = self.next_episode()
        self.optimizer.zero_grad()
        bar = trange(
            state.step,
            self.steps,
            initial=state.step,
            total=self.steps,
            desc=f"training {agent.name}",
            unit="edit",
            disable=not self.progress,
        )
        with deferred_interrupt() as interrupted:
            self.interrupted = interrupted
            for step in bar:
                trace = agent.read_trace(unwrapped)
                agent.editor.observe(trace)
                updates = agent.editor(trace)
                selection = agent.select(observation, unwrapped.edit_trace, self.explore)
                loss, scalars = agent.training_loss(unwrapped, updates, selection)
                if not torch.isfinite(loss):
                    raise EditorDivergedError(
                        f"{agent.name}: the training loss is {float(loss)} at training edit {step}: "
                        "the editor diverged; lower meta_lr or lr_lr, or set max_lr"
                    )
                (loss / update_every).backward()
                if (step + 1) % update_every == 0 or step + 1 == self.steps:
                    self.optimizer_step()
                observation, _, terminated, _, info = self.env.step(agent.action_for(updates, selection.hard))
                scalars.update(
                    edit_success=info["edit_success"],
                    locality=info["locality"],
                    lr_mean=float(agent.editor.log_lr.detach().exp().mean()),
                )
                state.running = {k: 0.9 * state.running.get(k, v) + 0.1 * v for k, v in scalars.items()}
                state.step = step + 1
                self.log.write("train", scalars, step)
                for callback in self.callbacks:
                    callback.on_edit(self, trace, updates, scalars)
                if terminated:
                    metrics = {k: info["episode_metrics"][k] for k in EPISODE_SUMMARY}
                    state.episodes.append(metrics)
                    self.log.write("episode", metrics, len(state.episodes))
                    if state.step < self.steps:
                        for callback in self.callbacks:
                            callback.on_episode_end(self)
                        if interrupted():
                            bar.close()
                            raise TrainingInterrupted(state.step, self.steps, self.saves_progress)
                    observation = self.next_episode()
                postfix = {
                    "loss": f"{state.running['loss']:.3f}",
                    "ES": f"{state.running['edit_success']:.2f}",
                    "LS": f"{state.running['locality']:.2f}",
                }
                if state.validations:
                    postfix["val"] = f"{state.validations[-1]['mean']:.3f}"
                bar.set_postfix(postfix)
            for callback in self.callbacks:
                callback.on_training_end(self)

    @property
    def saves_progress(self) -> bool:
        """Whether a callback saves the run's progress (:class:`~hiedit_agents.learned.callbacks.Checkpointing`)."""
        return any(callback.saves_progress for callback in self.callbacks)

    def state_dict(self) -> dict[str, Any]:
        """Everything the run carries besides the agent's own state: what ``hiedit train --resume`` restores."""
        extras = {
            "progress": self.state.as_dict(),
            "optimizer": self.optimizer.state_dict(),
            "grads": [p.grad for p in self.params],
            "explore": self.explore.get_state(),
            "solver_caches": self.agent.editor.solver_caches(),
        }
        for callback in self.callbacks:
            extras.update(callback.state_dict())
        return extras

    def load_state_dict(self, extras: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (``state`` is replaced by the saved one)."""
        self.state = TrainingState(**extras["progress"])
        self.agent.editor.load_solver_caches(extras["solver_caches"])
        self.optimizer.load_state_dict(extras["optimizer"])
        with torch.no_grad():
            for p, grad in zip(self.params, extras["grads"]):
                p.grad = None if grad is None else grad.clone()
        self.explore.set_state(extras["explore"])
        for callback in self.callbacks:
            callback.load_state_dict(extras)
