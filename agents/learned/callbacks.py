"""What runs around the learned editors' training loop (:mod:`~hiedit_agents.learned.training`), one
callback per concern: weight averaging, validation on held-out records, checkpoints.

:meth:`LearnedEditorAgent.learn <hiedit_agents.learned.agent.LearnedEditorAgent.learn>` lists them in
this order, which matters at the end of training: the averaged weights replace the trained ones
first, then validation scores them and keeps its best editor.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import torch
from torch import nn

from .training import TrainingCallback, TrainingLoop


@torch.no_grad()
def assign(params: list[nn.Parameter], values: list[torch.Tensor]) -> None:
    """Copy ``values`` into ``params``, in place."""
    for p, value in zip(params, values):
        p.copy_(value)


@contextmanager
def swapped(params: list[nn.Parameter], values: list[torch.Tensor] | None) -> Iterator[None]:
    """Within the block the parameters hold ``values`` (if any), then their own values again, even after
    an error. The editor's input statistics are buffers, not parameters: the live ones serve both."""
    if values is None:
        yield
        return
    live = [p.detach().clone() for p in params]
    assign(params, values)
    try:
        yield
    finally:
        assign(params, live)


class WeightAveraging(TrainingCallback):
    """Polyak averaging: ``average += (1 - decay) * (w - average)`` after every optimiser step. Validation
    and checkpoints see the average (:meth:`swapped`), and at the end of training it replaces the
    trained weights."""

    def __init__(self, params: list[nn.Parameter], decay: float) -> None:
        self.params, self.decay = params, decay
        self.average = [p.detach().clone() for p in params]

    def on_optimizer_step(self, loop: TrainingLoop) -> None:
        with torch.no_grad():
            for a, p in zip(self.average, self.params):
                a.lerp_(p, 1 - self.decay)

    def swapped(self) -> AbstractContextManager[None]:
        """A block within which the parameters hold the average."""
        return swapped(self.params, self.average)

    def on_training_end(self, loop: TrainingLoop) -> None:
        assign(self.params, self.average)

    def state_dict(self) -> dict[str, Any]:
        return {"average": self.average}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            for a, saved in zip(self.average, state["average"]):
                a.copy_(saved)


class Validation(TrainingCallback):
    """Edits the held-out ``records`` as one sequence (seeded ``seed``) and scores it: at the end of the
    first episode, at the first episode end after every ``every`` edits, and after the last edit. The
    editor that scored the best mean(ES, GS, LS) is kept (``state.best``) and loaded at the end.

    ``weights`` gives the block within which the weights to judge are in place (the moving average's,
    :meth:`WeightAveraging.swapped`); by default the trained weights themselves.
    """

    def __init__(
        self,
        records: list[int],
        seed: int,
        every: int,
        progress: bool,
        weights: Callable[[], AbstractContextManager[None]] = nullcontext,
    ) -> None:
        self.records, self.seed, self.every, self.progress, self.weights = records, seed, every, progress, weights

    def validate(self, loop: TrainingLoop, after: int) -> None:
        """Score the editor after ``after`` training edits; remember it if it is the best so far."""
        state, agent = loop.state, loop.agent
        with self.weights():
            metrics = agent.validate(loop.unwrapped, self.records, self.seed, self.progress)
            if state.best is None or metrics["mean"] > state.best[0]:
                state.best = (metrics["mean"], after, copy.deepcopy(agent.state_dict()))
        state.validations.append({"after_edits": after, **metrics})
        loop.log.write("validation", metrics, after)

    def on_episode_end(self, loop: TrainingLoop) -> None:
        if loop.state.step >= loop.state.next_validation:
            self.validate(loop, loop.state.step)
            loop.state.next_validation = loop.state.step // self.every * self.every + self.every

    def on_training_end(self, loop: TrainingLoop) -> None:
        self.validate(loop, loop.steps)
        assert loop.state.best is not None
        loop.agent.load_state_dict(loop.state.best[2])


class Checkpointing(TrainingCallback):
    """Saves the run (``save(loop)``) at the first episode end after every ``every`` edits, and at the
    episode end where SIGINT asked the loop to stop; ``seconds`` is the time spent saving."""

    saves_progress = True

    def __init__(self, every: int, save: Callable[[TrainingLoop], None]) -> None:
        self.every, self.save, self.seconds = every, save, 0.0

    def on_episode_end(self, loop: TrainingLoop) -> None:
        state = loop.state
        if state.step >= state.next_checkpoint or loop.interrupted():
            began = time.perf_counter()
            self.save(loop)
            self.seconds += time.perf_counter() - began
            state.next_checkpoint = state.step // self.every * self.every + self.every
