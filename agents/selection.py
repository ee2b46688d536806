"""Layer selection helpers shared by the heuristics and HiEdit's gate."""

from __future__ import annotations

from collections.abc import Collection

import torch

from hiedit_env import EditTrace
from hiedit_env.objective import update_sq_norm


def topk_indicator(scores: torch.Tensor, k: int) -> torch.Tensor:
    """A 0/1 float vector with ones at the ``k`` highest scores (ties: lower index), no gradient."""
    order = torch.sort(scores.detach(), descending=True, stable=True).indices
    hard = torch.zeros_like(scores, dtype=torch.float32)
    hard[order[:k]] = 1.0
    return hard


def gradient_norms(trace: EditTrace, modules: Collection[int] | None = None) -> torch.Tensor:
    """``||delta^T k||_F`` per candidate (only for those in ``modules``, 0 for the others), through
    the n x n Gram matrices so no [d_out, d_in] is formed."""
    zero = trace.keys[0].new_zeros(())
    return torch.stack(
        [
            update_sq_norm((g, k)).clamp_min(0).sqrt() if modules is None or i in modules else zero
            for i, (k, g) in enumerate(zip(trace.keys, trace.grads))
        ]
    ).float()
