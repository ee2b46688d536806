"""HiEdit (lifelong model editing with hierarchical RL, 2026): a layer gate over the RLEdit editor.

The high level (:class:`~hiedit_agents.gate.LayerGate`) keeps the top ``k`` candidates per edit
(default half); the low level is the same hypernetwork as RLEdit's. Both train on one loss,

    objective(sparse update) - objective(dense update).detach(),

where the sparse update is each module's update times its straight-through mask entry and the dense
one changes every candidate. For the low level the second term is a constant, so it minimises the
sparse edit's loss; for the high level the difference is the (negated) intrinsic reward: how much
worse editing the chosen ``k`` modules is than editing all of them.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import torch
from torch import nn

from hiedit_env import EditTrace, HiEditEnv

from .gate import LayerGate, Selection, changed_from_observation, trace_features
from .learned import LearnedEditorAgent, LowRank, detached, masked
from .selection import check_k


class HiEditAgent(LearnedEditorAgent):
    """Hypernetwork low level + top-``k`` layer gate high level, trained end to end."""

    name = "hiedit"

    def __init__(self, env: gym.Env, k: int | None = None, gate_hidden: int = 32, gate_lr: float = 1e-2,
                 **editor_kwargs: Any) -> None:
        super().__init__(env, **editor_kwargs)
        if gate_lr <= 0:
            raise ValueError(f"gate_lr must be > 0, got {gate_lr}")
        k = check_k(k, self.num_candidates)
        self.hparams.update(k=k, gate_hidden=gate_hidden, gate_lr=gate_lr)
        self.gate = LayerGate(self.num_candidates, k, gate_hidden).to(self.env.model.device)
        self._base_norms = torch.tensor(self.env.base_weight_norms(), device=self.env.model.device)

    def select(self, observation: dict[str, Any], trace: EditTrace) -> Selection:
        return self.gate(trace_features(trace, self._base_norms, changed_from_observation(observation)))

    def training_loss(self, env: HiEditEnv, updates: list[LowRank],
                      selection: Selection) -> tuple[torch.Tensor, dict[str, float]]:
        sparse = self.loss_objective(env, masked(updates, selection.mask))
        dense = self.loss_objective(env, detached(updates)).total  # no graph: every input is detached
        loss = sparse.total - dense
        return loss, {"loss": sparse.total.item(), "edit_loss": sparse.edit.item(),
                      "locality_kl": sparse.locality.item(), "dense_loss": dense.item(),
                      "intrinsic_reward": -loss.item()}

    def trainable_modules(self) -> dict[str, nn.Module]:
        return {"editor": self.editor, "gate": self.gate}

    def parameter_groups(self) -> list[dict[str, Any]]:
        return [*super().parameter_groups(), {"params": list(self.gate.parameters()), "lr": self.hparams["gate_lr"]}]
