"""Trace: one forward+backward on the edit sequence, recording per candidate module the input keys
``k`` [n, d_in] and the gradients of the edit loss w.r.t. the module's output ``delta`` [n, d_out].

The gradient of the loss w.r.t. a module's weight (in ``nn.Linear`` orientation) is ``delta.T @ k``,
so these two tensors are everything an MEND/RLEdit-style editor needs. The backward pass asks
autograd for the output gradients only: no weight gradient is ever formed or stored, and the graph
starts at the lowest candidate, so the layers below it cost a forward pass only.

:func:`trace_objective` records the same two tensors for the whole training objective: the edit
window and the unrelated prompts, whose KL gradient says how the sequence has drifted so far.
:func:`trace_edit_and_objective` takes both traces from that one pass (``gym.make(..., trace_covers="objective")``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from .objective import Update, edit_objective, window_weights
from .tokens import Pair, answer_logits, collate


@dataclass(frozen=True)
class EditTrace:
    """What one edit's forward+backward saw. Lists follow ``candidate_modules`` order."""

    module_names: list[str]
    keys: list[torch.Tensor]  # [n, d_in] per module
    grads: list[torch.Tensor]  # [n, d_out] per module, d(loss)/d(output)
    loss: float  # mean cross-entropy of the new answer, before the edit (the objective's, for its trace)
    hidden: torch.Tensor | None  # [n, d_model] hidden states at the observation's instance layer

    def weight_gradient(self, i: int) -> torch.Tensor:
        """d(loss)/dW of module ``i`` in Linear orientation, [d_out, d_in]."""
        return self.grads[i].T @ self.keys[i]

    def rows(self, index: Sequence[int]) -> EditTrace:
        """The same trace on the token rows ``index`` only (its ``loss`` is still the whole pass's)."""
        return EditTrace(
            module_names=self.module_names,
            keys=[k[list(index)] for k in self.keys],
            grads=[g[list(index)] for g in self.grads],
            loss=self.loss,
            hidden=None if self.hidden is None else self.hidden[list(index)],
        )


class _Recorder:
    """Forward hooks that keep every candidate's input and (graph-starting) output of one pass."""

    def __init__(self, modules: list[nn.Module]) -> None:
        self.keys: list[torch.Tensor | None] = [None] * len(modules)
        self.outputs: list[torch.Tensor | None] = [None] * len(modules)
        self.handles = [m.register_forward_hook(self._hook_for(i)) for i, m in enumerate(modules)]

    def _hook_for(self, i: int):
        def hook(_module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
            self.keys[i] = args[0].detach()
            if not output.requires_grad:  # the lowest candidate: start the graph here
                output = output.detach().requires_grad_(True)
            self.outputs[i] = output
            return output

        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def trace_edit(
    model: PreTrainedModel, modules: list[nn.Module], names: list[str], pair: Pair, pad_id: int, instance_layer: int
) -> EditTrace:
    recorder = _Recorder(modules)
    try:
        with torch.enable_grad():
            out, batch = answer_logits(model, collate([pair], pad_id, model.device), output_hidden_states=True)
            logits = out.logits[0][batch.answer_mask[0]]
            loss = F.cross_entropy(logits.float(), batch.labels[0][batch.answer_mask[0]])
            grads = torch.autograd.grad(loss, recorder.outputs)
    finally:
        recorder.remove()
    return EditTrace(
        module_names=list(names),
        keys=[k[0] for k in recorder.keys],
        grads=[g[0].detach() for g in grads],
        loss=float(loss.detach()),
        hidden=out.hidden_states[instance_layer][0].detach(),
    )


def _objective_pass(
    model: PreTrainedModel,
    modules: list[nn.Module],
    updates: Sequence[Update],
    edits: list[Pair],
    locs: list[Pair],
    reference_log_probs: list[torch.Tensor],
    pad_id: int,
    time_decay: float,
    kl_weight: float,
    output_hidden_states: bool = False,
):
    """One forward+backward of the objective (L2 aside: it has no per-token part) under ``updates``:
    every candidate's keys and output gradients, [rows, width, d] in the layout of
    :func:`~hiedit_env.tokens.batch_for` (``terms.tokens`` marks its non-padding positions), and the
    objective's terms. The objective adds the updates with hooks that run before the recording ones,
    so the recorded outputs include them."""
    recorder = _Recorder(modules)
    try:
        with torch.enable_grad():
            terms = edit_objective(
                model,
                modules,
                updates,
                edits,
                locs,
                reference_log_probs,
                pad_id,
                time_decay,
                kl_weight,
                l2_weight=0.0,
                output_hidden_states=output_hidden_states,
            )
            grads = torch.autograd.grad(terms.total, recorder.outputs)
    finally:
        recorder.remove()
    return recorder.keys, [g.detach() for g in grads], terms


def _token_rows(
    names: list[str],
    keys: list[torch.Tensor],
    grads: list[torch.Tensor],
    tokens: torch.Tensor,
    loss: float,
    hidden: torch.Tensor | None = None,
    grad_scale: float = 1.0,
) -> EditTrace:
    return EditTrace(
        module_names=list(names),
        keys=[k[tokens] for k in keys],
        grads=[g[tokens] * grad_scale for g in grads],
        loss=loss,
        hidden=hidden,
    )


def trace_objective(
    model: PreTrainedModel,
    modules: list[nn.Module],
    names: list[str],
    updates: Sequence[Update],
    edits: list[Pair],
    locs: list[Pair],
    reference_log_probs: list[torch.Tensor],
    pad_id: int,
    time_decay: float,
    kl_weight: float,
) -> EditTrace:
    """Keys and output gradients of the edit objective's loss (edit cross-entropy over the window plus
    ``kl_weight`` times the KL on the unrelated prompts) under ``updates``, one row per non-padding
    token of every prompt of the objective's batch. ``hidden`` is left empty: the observation is
    built from the edit's own trace."""
    keys, grads, terms = _objective_pass(
        model, modules, updates, edits, locs, reference_log_probs, pad_id, time_decay, kl_weight
    )
    return _token_rows(names, keys, grads, terms.tokens, float(terms.total.detach()))


def trace_edit_and_objective(
    model: PreTrainedModel,
    modules: list[nn.Module],
    names: list[str],
    edits: list[Pair],
    locs: list[Pair],
    reference_log_probs: list[torch.Tensor],
    pad_id: int,
    time_decay: float,
    kl_weight: float,
    instance_layer: int,
) -> tuple[EditTrace, EditTrace, torch.Tensor]:
    """:func:`trace_edit` of ``edits[0]`` and :func:`trace_objective` of the unchanged model, from one
    forward+backward on the objective's batch instead of two passes; and the teacher-forced token
    accuracy of each edit of the window under the unchanged model (the previous edit's ES).

    Rows of a batch do not attend to each other, so the output gradients on the current edit's tokens
    come from its own cross-entropy alone, which the objective weighs by ``1 / sum(window weights)``:
    scaled back, they are the edit's trace (equal up to float rounding; the batch is right-padded, so
    the edit's tokens sit where a pass of its own would put them; packed, it comes first)."""
    keys, grads, terms = _objective_pass(
        model,
        modules,
        [None] * len(modules),
        edits,
        locs,
        reference_log_probs,
        pad_id,
        time_decay,
        kl_weight,
        output_hidden_states=True,
    )
    tokens = terms.tokens
    own = torch.zeros_like(tokens)
    own[0, : len(edits[0].ids)] = True
    edit = _token_rows(
        names,
        keys,
        grads,
        own,
        float(terms.per_edit[0].detach()),
        hidden=terms.hidden_states[instance_layer][own].detach(),
        grad_scale=sum(window_weights(len(edits), time_decay)),
    )
    return edit, _token_rows(names, keys, grads, tokens, float(terms.total.detach())), terms.per_edit_accuracy.cpu()
