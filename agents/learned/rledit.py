"""RLEdit (reinforced lifelong editing, 2025): the hypernetwork editor on every candidate module, and its
untrained start as a baseline of its own (``untrained_editor``)."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import torch

from hiedit_env import EditTrace, HiEditEnv
from hiedit_env.checks import check_int

from ..common.base import DEFAULT_TRAIN_EDITS
from .agent import LearnedEditorAgent, LowRank
from .gate import Selection


class RLEditAgent(LearnedEditorAgent):
    """Dense editing: all candidates change every edit; trained on ``env.objective(updates).total``."""

    name = "rledit"

    def select(
        self, observation: dict[str, Any], trace: EditTrace, explore: torch.Generator | None = None
    ) -> Selection:
        ones = torch.ones(self.num_candidates, device=trace.keys[0].device)
        return Selection(ones, ones, ones)

    def training_loss(
        self, env: HiEditEnv, updates: list[LowRank], selection: Selection
    ) -> tuple[torch.Tensor, dict[str, float]]:
        terms = self.loss_objective(env, updates)
        return terms.total, {
            "loss": terms.total.item(),
            "edit_loss": terms.edit.item(),
            "locality_kl": terms.locality.item(),
        }


class UntrainedEditorAgent(RLEditAgent):
    """RLEdit's editor before any training, the learned editors' starting point (does training help?).

    Untrained, the editor emits exactly the gradient step of the trace it reads (its up-projections
    start at zero): with the key preconditioner (``preconditioner`` not ``"none"``, the default) a
    ``C^-1 k``-shaped step, the idea ROME and MEMIT solve for in closed form, at the relative step
    ``init_lr``, once its normalisers and gradient-size statistics have seen some edits. At construction they see
    ``observe_edits`` edits of training episodes (seeds 0, 1, ...; as long as ``hiedit train``'s) on
    the unedited model: of ``observe_dataset`` (all of it) or, when that is ``None``, of the training
    split of the environment's own data. The observing environment is the evaluated one's ``gym.make``
    arguments with that data, so the edits' traces are read the same way. Every other keyword is the
    editor's (:class:`~hiedit_agents.learned.agent.LearnedEditorAgent`).
    """

    name = "untrained_editor"
    requires_training = False

    def __init__(
        self, env: gym.Env, observe_edits: int = 60, observe_dataset: str | None = None, **editor_kwargs: Any
    ) -> None:
        super().__init__(env, **editor_kwargs)
        check_int("observe_edits", observe_edits, 0)
        self.hparams.update(observe_edits=observe_edits, observe_dataset=observe_dataset)
        if observe_edits == 0:
            return
        spec = self.env.spec
        if spec is None:
            raise ValueError(
                "untrained_editor observes training edits in an environment made like the evaluated "
                "one: make that one with gym.make"
            )
        data = {"dataset": observe_dataset, "split": "all"} if observe_dataset is not None else {"split": "train"}
        observing = gym.make(
            spec.id, **{**spec.kwargs, **data, "num_edits": DEFAULT_TRAIN_EDITS, "evaluate_generation": False}
        )
        try:
            self.observe_unedited(observing, observe_edits)
        finally:
            observing.close()
