"""HiEdit's high level: score every candidate module from its trace, keep the top ``k``.

Each candidate becomes a feature vector: the logs of its mean key norm, mean output-gradient norm,
weight-gradient norm ``||delta^T k||`` (absolute and relative to ``||W0||``) and largest per-token
gradient norm, the same five standardised across the candidates of this edit (top-k is a relative
choice), its relative depth and how much the episode has already changed it. A small MLP plus a
learned per-candidate bias scores them. The hard top-``k`` mask passes the soft ``sigmoid(score)``
gradient through (straight-through estimator), so edit and locality losses of the masked update
reach the gate.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from hiedit_env import EditTrace
from hiedit_env.env import LAYER_FEATURES

from .selection import gradient_norms, topk_indicator

NUM_TRACE_STATS = 5
NUM_FEATURES = 2 * NUM_TRACE_STATS + 2


class Selection(NamedTuple):
    mask: torch.Tensor  # [L], hard values (0/1) carrying the soft gradient
    hard: torch.Tensor  # [L], 0/1, no gradient
    scores: torch.Tensor  # [L], the gate's logits


def trace_features(trace: EditTrace, base_norms: torch.Tensor, changed: np.ndarray) -> torch.Tensor:
    """[L, NUM_FEATURES] features of every candidate for the current edit."""
    key_norm = torch.stack([k.float().norm(dim=-1).mean() for k in trace.keys])
    grad_tokens = [g.float().norm(dim=-1) for g in trace.grads]
    weight_grad = gradient_norms(trace)
    stats = torch.stack([key_norm, torch.stack([t.mean() for t in grad_tokens]), weight_grad,
                         weight_grad / base_norms, torch.stack([t.max() for t in grad_tokens])], dim=-1)
    stats = torch.log10(stats + 1e-12)
    standardised = (stats - stats.mean(0)) / stats.std(0, unbiased=False).clamp_min(1e-6)
    n = stats.shape[0]
    depth = torch.arange(n, dtype=stats.dtype, device=stats.device) / max(1, n - 1)
    changed_t = torch.as_tensor(changed, dtype=stats.dtype, device=stats.device)
    return torch.cat([stats / 10, standardised, depth[:, None], changed_t[:, None]], dim=-1)


def changed_from_observation(observation: dict) -> np.ndarray:
    """The observation's per-candidate ``changed`` column: ``sum_t ||dW_t|| / ||W0||`` so far."""
    return np.asarray(observation["layers"])[:, LAYER_FEATURES.index("changed")]


class LayerGate(nn.Module):
    """Scores candidates and selects the top ``k`` with a straight-through mask."""

    def __init__(self, num_candidates: int, k: int, hidden: int = 32) -> None:
        super().__init__()
        self.k = k
        self.mlp = nn.Sequential(nn.Linear(NUM_FEATURES, hidden), nn.SiLU(), nn.Linear(hidden, 1))
        self.bias = nn.Parameter(torch.zeros(num_candidates))

    def forward(self, features: torch.Tensor) -> Selection:
        scores = self.mlp(features).squeeze(-1) + self.bias
        soft = torch.sigmoid(scores)
        hard = topk_indicator(scores, self.k)
        return Selection(hard + (soft - soft.detach()), hard, scores)
