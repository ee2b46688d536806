"""Trace: one forward+backward on the edit sequence, recording per candidate module the input keys
``k`` [n, d_in] and the gradients of the edit loss w.r.t. the module's output ``delta`` [n, d_out].

The gradient of the loss w.r.t. a module's weight (in ``nn.Linear`` orientation) is ``delta.T @ k``,
so these two tensors are everything an MEND/RLEdit-style editor needs. The backward pass asks
autograd for the output gradients only: no weight gradient is ever formed or stored, and the graph
starts at the lowest candidate, so the layers below it cost a forward pass only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from .tokens import Pair, answer_logits, collate


@dataclass(frozen=True)
class EditTrace:
    """What one edit's forward+backward saw. Lists follow ``candidate_modules`` order."""

    module_names: list[str]
    keys: list[torch.Tensor]  # [n, d_in] per module
    grads: list[torch.Tensor]  # [n, d_out] per module, d(loss)/d(output)
    loss: float  # mean cross-entropy of the new answer, before the edit
    hidden: torch.Tensor  # [n, d_model] hidden states at the observation's instance layer

    def weight_gradient(self, i: int) -> torch.Tensor:
        """d(loss)/dW of module ``i`` in Linear orientation, [d_out, d_in]."""
        return self.grads[i].T @ self.keys[i]


def trace_edit(model: PreTrainedModel, modules: list[nn.Module], names: list[str], pair: Pair,
               pad_id: int, instance_layer: int) -> EditTrace:
    keys: list[torch.Tensor | None] = [None] * len(modules)
    outputs: list[torch.Tensor | None] = [None] * len(modules)

    def hook_for(i: int):
        def hook(_module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
            keys[i] = args[0][0].detach()
            if not output.requires_grad:  # the lowest candidate: start the graph here
                output = output.detach().requires_grad_(True)
            outputs[i] = output
            return output
        return hook

    handles = [m.register_forward_hook(hook_for(i)) for i, m in enumerate(modules)]
    try:
        with torch.enable_grad():
            out, batch = answer_logits(model, collate([pair], pad_id, model.device), output_hidden_states=True)
            logits = out.logits[0][batch.answer_mask[0]]
            loss = F.cross_entropy(logits.float(), batch.labels[0][batch.answer_mask[0]])
            grads = torch.autograd.grad(loss, outputs)
    finally:
        for h in handles:
            h.remove()
    return EditTrace(
        module_names=list(names),
        keys=[k for k in keys],
        grads=[g[0].detach() for g in grads],
        loss=float(loss.detach()),
        hidden=out.hidden_states[instance_layer][0].detach(),
    )
