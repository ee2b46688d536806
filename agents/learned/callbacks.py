"""What runs around the learned editors' training loop (:mod:`~hiedit_agents.learned.training`), one
callback per concern: weight averaging, validation on held-out records, checkpoints, and diagnostics of
how far training moves the editor from its start.

:meth:`LearnedEditorAgent.learn <hiedit_agents.learned.agent.LearnedEditorAgent.learn>` lists them in
this order, which matters at the end of training: the averaged weights replace the trained ones
first, then validation scores them and keeps its best editor.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from hiedit_env import EditTrace
from hiedit_env.objective import update_inner, update_sq_norm

from .hypernet import HyperEditor
from .training import TrainingCallback, TrainingLoop

if TYPE_CHECKING:
    from .agent import LowRank


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
    :meth:`WeightAveraging.swapped`); by default the trained weights themselves. With ``start`` (the
    trainable parameters before training) the first check also scores them, with the input statistics
    of the first episode (entry ``after_edits`` 0): the untrained start is then kept unless a trained
    editor validates better.
    """

    def __init__(
        self,
        records: list[int],
        seed: int,
        every: int,
        progress: bool,
        weights: Callable[[], AbstractContextManager[None]] = nullcontext,
        start: tuple[list[nn.Parameter], list[torch.Tensor]] | None = None,
    ) -> None:
        self.records, self.seed, self.every, self.progress, self.weights = records, seed, every, progress, weights
        self.start = start

    def validate(self, loop: TrainingLoop, after: int) -> None:
        """Score the editor after ``after`` training edits; remember it if it is the best so far."""
        state, agent = loop.state, loop.agent
        metrics = agent.validate(loop.unwrapped, self.records, self.seed, self.progress)
        if state.best is None or metrics["mean"] > state.best[0]:
            state.best = (metrics["mean"], after, copy.deepcopy(agent.state_dict()))
        state.validations.append({"after_edits": after, **metrics})
        loop.log.write("validation", metrics, after)

    def on_episode_end(self, loop: TrainingLoop) -> None:
        if loop.state.step >= loop.state.next_validation:
            self._validate_start(loop)
            with self.weights():
                self.validate(loop, loop.state.step)
            loop.state.next_validation = loop.state.step // self.every * self.every + self.every

    def _validate_start(self, loop: TrainingLoop) -> None:
        """Score the untrained start, before the first check of the trained weights (``start`` given)."""
        if self.start is not None and not loop.state.validations:
            with swapped(*self.start):
                self.validate(loop, 0)

    def on_training_end(self, loop: TrainingLoop) -> None:
        self._validate_start(loop)  # training was one episode long
        with self.weights():
            self.validate(loop, loop.steps)
        assert loop.state.best is not None
        loop.agent.load_state_dict(loop.state.best[2])

    def state_dict(self) -> dict[str, Any]:
        return {} if self.start is None else {"validation_start": self.start[1]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.start is not None:
            self.start = (self.start[0], state["validation_start"])


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


class Diagnostics(TrainingCallback):
    """How training moves the editor from where it started, one entry per training episode in
    ``state.diagnostics`` (and TensorBoard's ``diagnostics/``):

    * ``alignment``, per module: the cosine between the update the editor emits and the one its initial
      weights emit on the same trace with the same input statistics (the untrained editor's update,
      RLEdit's and HiEdit's starting point), averaged over the episode's edits; 1 before the first
      optimiser step;
    * ``size_ratio``, per module: ``||dW|| / ||dW_untrained||``, averaged alike;
    * ``drift``, per module: the net change of the weights at the episode's end,
      ``||W - W0|| / ||W0||`` (:meth:`~hiedit_env.HiEditEnv.weight_drift`);
    * ``loss``: the episode's mean training loss, to set beside the validations' ES, GS and LS: a
      loss that falls while the validation mean falls is an objective that disagrees with the metrics.

    It costs one more editor pass per training edit (no gradient), small beside the model's passes.
    """

    def __init__(self, editor: HyperEditor) -> None:
        self.editor = editor
        # The live editor's statistics (modules without parameters) serve the initial weights too, shared
        # rather than copied (the full preconditioner's are 2.4 M floats per SmolLM2 module), so the
        # comparison isolates what training changed: the weights.
        shared = [editor.key_norms, editor.grad_norms, editor.gradient_size, editor.key_moments]
        self.initial = copy.deepcopy(editor, memo={id(m): m for m in shared if m is not None}).requires_grad_(False)
        self._clear()

    def _clear(self) -> None:
        n = len(self.editor.dims)
        self.alignment, self.size_ratio, self.losses = np.zeros(n), np.zeros(n), []

    @torch.no_grad()
    def on_edit(self, loop: TrainingLoop, trace: EditTrace, updates: list[LowRank], scalars: dict[str, float]) -> None:
        untrained = self.initial(trace)
        for i, (update, start) in enumerate(zip(updates, untrained)):
            update = (update[0].detach(), update[1].detach())
            size, start_size = update_sq_norm(update).sqrt(), update_sq_norm(start).sqrt()
            denominator = (size * start_size).clamp_min(1e-30)
            self.alignment[i] += float(update_inner(update, start) / denominator)
            self.size_ratio[i] += float(size / start_size.clamp_min(1e-30))
        self.losses.append(scalars["loss"])
        if loop.unwrapped.edit_trace is None:  # the episode has ended; its edits are still in the weights
            self._close_episode(loop)

    def _close_episode(self, loop: TrainingLoop) -> None:
        edits = len(self.losses)
        entry = {
            "after_edits": loop.state.step,
            "loss": float(np.mean(self.losses)),
            "alignment": (self.alignment / edits).tolist(),
            "size_ratio": (self.size_ratio / edits).tolist(),
            "drift": loop.unwrapped.weight_drift(),
        }
        loop.state.diagnostics.append(entry)
        loop.log.write(
            "diagnostics",
            {key: float(np.mean(entry[key])) for key in ("loss", "alignment", "size_ratio", "drift")},
            len(loop.state.diagnostics),
        )
        self._clear()

    def state_dict(self) -> dict[str, Any]:
        # Checkpoints are taken at episode ends, where nothing is accumulated: the initial weights suffice.
        return {"initial_editor": [p.detach().clone() for p in self.initial.parameters()]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "initial_editor" in state:  # a run saved before diagnostics existed compares with its resumed weights
            assign(list(self.initial.parameters()), state["initial_editor"])
