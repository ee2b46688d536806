"""HiEdit's high level: score every candidate module from its trace, keep the top ``k``.

Each candidate becomes a feature vector: the logs of its mean key norm, mean output-gradient norm,
weight-gradient norm ``||delta^T k||`` (absolute and relative to ``||W0||``) and largest per-token
gradient norm, the same five standardised across the candidates of this edit (top-k is a relative
choice), its relative depth and how much the episode has already changed it. A small MLP plus a
learned per-candidate bias scores them. The hard top-``k`` mask passes the soft ``sigmoid(score)``
gradient through (straight-through estimator), so edit and locality losses of the masked update
reach the gate.

The straight-through gradient is the loss's slope at the chosen mask, a first-order view: for a
module left out it misses what that module's own update would cost (the curvature of the locality
KL in that update; on SmolLM2 one ``down_proj``'s gradient step alone cost 2.1 nats of KL on unrelated
prompts where another's cost 0.02: ``hiedit module-costs``). So while training the gate also
*explore*: it draws its ``k`` modules by Gumbel top-``k`` on its scores (a Plackett-Luce sample, whose
log-probability ``Selection.log_prob`` carries gradient to the scores), and the agent adds a
score-function (REINFORCE) term on the intrinsic reward, which sees the whole loss of the drawn
choice. Acting and validation always take the deterministic top-``k``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from hiedit_env import EditTrace
from hiedit_env.env import LAYER_FEATURES

from ..selection import gradient_norms, topk_indicator

NUM_TRACE_STATS = 5
NUM_FEATURES = 2 * NUM_TRACE_STATS + 2


class Selection(NamedTuple):
    mask: torch.Tensor  # [L], hard values (0/1) carrying the soft gradient
    hard: torch.Tensor  # [L], 0/1, no gradient
    scores: torch.Tensor  # [L], the gate's logits
    log_prob: torch.Tensor | None = None  # of a drawn (exploring) choice under the gate's Plackett-Luce policy


def plackett_luce_log_prob(scores: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Log-probability that drawing without replacement with probabilities ``softmax(scores)`` yields
    ``order`` (the first ``len(order)`` draws, in that order)."""
    k = len(order)
    draw = torch.full(scores.shape, k, device=scores.device)  # when each module was drawn (k: never)
    draw[order] = torch.arange(k, device=scores.device)
    earlier = draw[None, :] < torch.arange(k, device=scores.device)[:, None]  # row j: drawn before draw j
    remaining = scores.expand(k, -1).masked_fill(earlier, float("-inf"))
    return (scores[order] - torch.logsumexp(remaining, dim=1)).sum()


def trace_features(trace: EditTrace, base_norms: torch.Tensor, changed: np.ndarray) -> torch.Tensor:
    """[L, NUM_FEATURES] features of every candidate for the current edit."""
    key_norm = torch.stack([k.float().norm(dim=-1).mean() for k in trace.keys])
    grad_tokens = [g.float().norm(dim=-1) for g in trace.grads]
    weight_grad = gradient_norms(trace)
    stats = torch.stack(
        [
            key_norm,
            torch.stack([t.mean() for t in grad_tokens]),
            weight_grad,
            weight_grad / base_norms,
            torch.stack([t.max() for t in grad_tokens]),
        ],
        dim=-1,
    )
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

    def forward(self, features: torch.Tensor, explore: torch.Generator | None = None) -> Selection:
        """The top ``k`` of the scores; with ``explore``, a Plackett-Luce draw of ``k`` (Gumbel top-``k``
        with noise from that generator) and its log-probability."""
        scores = self.mlp(features).squeeze(-1) + self.bias
        soft = torch.sigmoid(scores)
        if explore is None:
            hard = topk_indicator(scores, self.k)
            return Selection(hard + (soft - soft.detach()), hard, scores)
        uniform = torch.rand(scores.shape, generator=explore, device=explore.device).to(scores.device)
        gumbel = -torch.log(-torch.log(uniform.clamp(1e-20, 1.0 - 1e-7)))
        order = torch.sort(scores.detach() + gumbel, descending=True, stable=True).indices[: self.k]
        hard = torch.zeros_like(scores)
        hard[order] = 1.0
        return Selection(hard + (soft - soft.detach()), hard, scores, plackett_luce_log_prob(scores, order))
