"""RLEdit (reinforced lifelong editing, 2025): the hypernetwork editor on every candidate module."""

from __future__ import annotations

from typing import Any

import torch

from hiedit_env import EditTrace, HiEditEnv

from .gate import Selection
from .learned import LearnedEditorAgent, LowRank


class RLEditAgent(LearnedEditorAgent):
    """Dense editing: all candidates change every edit; trained on ``env.objective(updates).total``."""

    name = "rledit"

    def select(self, observation: dict[str, Any], trace: EditTrace,
               explore: torch.Generator | None = None) -> Selection:
        ones = torch.ones(self.num_candidates, device=trace.keys[0].device)
        return Selection(ones, ones, ones)

    def training_loss(self, env: HiEditEnv, updates: list[LowRank],
                      selection: Selection) -> tuple[torch.Tensor, dict[str, float]]:
        terms = self.loss_objective(env, updates)
        return terms.total, {"loss": terms.total.item(), "edit_loss": terms.edit.item(),
                             "locality_kl": terms.locality.item()}
