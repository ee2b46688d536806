"""Weight delta: from a parsed action and the edit's trace to ``dW`` per chosen module, then applied.

Step-size mode moves a module along its own normalised edit gradient, scaled to the weight:
``dW = -eta * ||W0||_F * G / ||G||_F`` with ``G = delta.T @ k``. Scaling by the base weight's norm
makes ``eta`` a relative change, so one action means the same on every module and model.
Every delta is capped at ``max_update_ratio * ||W0||_F`` (documented clip) and must be finite;
deltas are all computed before any is applied, so a failure leaves the model unchanged.

Deltas stay factored, ``dW = U.T @ V`` with ``r`` rows (``r`` = tokens for gradient steps): norms
come from ``r x r`` Gram matrices and the update is one fused ``addmm_``, so the ``d_out x d_in``
gradient is never materialised.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from .action import ActionError, ParsedAction
from .trace import EditTrace


@dataclass(frozen=True)
class Delta:
    """``dW = u.T @ v`` (u [r, d_out], v [r, d_in]), or ``dW = u`` when ``v`` is None (dense).
    ``size``: ``||dW||_F`` when already known (a step reads it three times)."""

    u: torch.Tensor
    v: torch.Tensor | None
    size: torch.Tensor | None = field(default=None, compare=False)

    def norm(self) -> torch.Tensor:
        if self.size is not None:
            return self.size
        # In float32 whatever the trace's dtype: float16 Gram matrices of keys overflow.
        u = self.u.float()
        if self.v is None:
            return u.norm()
        v = self.v.float()
        return ((u @ u.T) * (v @ v.T)).sum().clamp_min(0).sqrt()

    @classmethod
    def sized(cls, u: torch.Tensor, v: torch.Tensor | None) -> Delta:
        """The delta with its size computed now, once."""
        return cls(u, v, cls(u, v).norm())

    def scaled(self, factor: float | torch.Tensor) -> Delta:
        """``factor * dW``, its size known: the same scalar times this one's."""
        return Delta(self.u * factor, self.v, self.norm() * abs(factor))


def weight_deltas(
    parsed: ParsedAction, trace: EditTrace, base_norms: list[float], max_update_ratio: float
) -> dict[int, Delta]:
    """``{module index: dW}`` in Linear orientation [d_out, d_in]."""
    deltas: dict[int, Delta] = {}
    for j, i in enumerate(parsed.chosen):
        if parsed.step_sizes is not None:
            gradient = Delta.sized(trace.grads[i], trace.keys[i])
            norm = gradient.norm()
            if not torch.isfinite(norm) or norm == 0:
                continue  # no signal for this module: leave it unchanged
            delta = gradient.scaled(-parsed.step_sizes[j] * base_norms[i] / norm)
        else:
            delta = Delta.sized(*parsed.factors[j])
        size = delta.norm()
        if not torch.isfinite(size):
            raise ActionError(f"the update of module {trace.module_names[i]!r} overflows (norm {size})")
        cap = max_update_ratio * base_norms[i]
        deltas[i] = delta.scaled(cap / size) if size > cap else delta
    return deltas


@torch.no_grad()
def apply_delta(module: nn.Module, delta: Delta, measure: bool = False) -> float | None:
    """``W += dW`` in place, in the module's own orientation (GPT-2's Conv1D stores W transposed).

    ``measure``: return ``||W_after - W_before||_F``, the change the weights really took. In 16-bit
    weights a step small against a weight's own size rounds away in part or in whole (bfloat16 keeps 8
    significant bits: a relative change under 2^-9 of an entry is lost), so the request is not what
    happened. It costs a copy of the weight, so float32 callers take the requested size instead."""
    weight = module.weight
    before = weight.clone() if measure else None
    conv = isinstance(module, Conv1D)
    if delta.v is None:
        weight.add_((delta.u.T if conv else delta.u).to(weight.dtype))
    elif conv:
        weight.addmm_(delta.v.T.to(weight.dtype), delta.u.to(weight.dtype))
    else:
        weight.addmm_(delta.u.T.to(weight.dtype), delta.v.to(weight.dtype))
    if before is None:
        return None
    # Close 16-bit numbers subtract exactly (Sterbenz), so the difference is taken in the weights' dtype.
    return float(torch.linalg.vector_norm(weight - before, dtype=torch.float32))
