"""The differentiable objective: the environment's face for agents that learn through gradients.

Given candidate updates as tensors, it runs the model *as if* each update were added to its module
(a forward hook adds ``x @ dW.T``, or ``(x @ V.T) @ U`` for low-rank factors), so gradients flow to
the updates and the model's own weights are never written:

    loss = sum_j time_decay**j * CE(edit_{t-j}) / sum_j time_decay**j   (j = 0 .. back_depth)
         + kl_weight * mean_j KL(unedited || edited) on the unrelated prompt of edit t-j   (j = 0 .. locality_depth)
         + l2_weight * sum ||dW||_F^2

In a sequence the model an update acts on already carries the earlier edits, so the unrelated prompts
of those edits measure the damage the sequence has done so far; a ``locality_depth`` above 0 pushes
the current update to repair it. The environment's default is 0: on SmolLM2 the wider window made
the trained editors no better over 100 edits (docs/findings.md).

With ``paraphrases`` (training only: a deployed editor never sees an edit's paraphrase) each edit's
cross-entropy is the mean of its prompt's and its paraphrase's, the equivalence-neighbourhood loss
MEND, MALMEN and RLEdit train their editors on, so that an update is charged for the prompts it
does not generalise to.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import PreTrainedModel

from .tokens import Pair, answer_logits, batch_for

Update = torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None


class ObjectiveTerms(NamedTuple):
    total: torch.Tensor
    edit: torch.Tensor
    locality: torch.Tensor
    l2: torch.Tensor
    per_edit: torch.Tensor  # cross-entropy of each edit of the window, the current one first
    hidden_states: tuple[torch.Tensor, ...] | None = None  # the pass's, when asked for (a trace's observation)
    per_edit_accuracy: torch.Tensor | None = None  # teacher-forced token accuracy of each edit (unchunked passes)
    tokens: torch.Tensor | None = None  # [rows, width] bool: the pass's non-padding positions (unchunked passes)


class RowLosses(NamedTuple):
    losses: torch.Tensor  # [rows] cross-entropy or KL
    accuracy: torch.Tensor  # [rows] teacher-forced token accuracy of each row's answer
    hidden_states: tuple[torch.Tensor, ...] | None
    tokens: torch.Tensor  # [rows, width] bool: the batch's non-padding positions (its layout: packed or padded)


def window_weights(num_edits: int, time_decay: float) -> list[float]:
    """Weight of the edit ``j`` steps back in the edit loss, before normalising by their sum."""
    return [time_decay**j for j in range(num_edits)]


def update_sq_norm(update: Update) -> torch.Tensor:
    """||dW||_F^2, without forming dW for low-rank factors: trace((U U^T)(V V^T))."""
    return update_inner(update, update)


def update_inner(a: Update, b: Update) -> torch.Tensor:
    """The Frobenius inner product <dW_a, dW_b>, without forming either for low-rank factors:
    sum((U_a U_b^T) * (V_a V_b^T)). Both dense, or both low-rank."""
    if isinstance(a, torch.Tensor):
        return (a * b).sum()
    (ua, va), (ub, vb) = a, b
    return ((ua @ ub.T) * (va @ vb.T)).sum()


def add_update_hook(module: nn.Module, update: Update):
    """A forward hook that adds ``update``'s effect to ``module``'s output; remove it with ``.remove()``."""

    def hook(_module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        x = args[0]
        if isinstance(update, torch.Tensor):
            return output + x @ update.T.to(x.dtype)
        u, v = update
        return output + (x @ v.T.to(x.dtype)) @ u.to(x.dtype)

    # First among the module's hooks, so recording hooks (the trace's) see the updated output.
    return module.register_forward_hook(hook, prepend=True)


def row_losses(
    model: PreTrainedModel,
    modules: list[nn.Module],
    updates: Sequence[Update],
    pairs: list[Pair],
    references: list[torch.Tensor | None],
    pad_id: int,
    output_hidden_states: bool = False,
) -> RowLosses:
    """One batched pass over ``pairs`` under ``updates``: per row, the cross-entropy of its answer
    (reference ``None``) or the KL from the reference log-probs to the model's, its token accuracy,
    and the hidden states if asked for."""
    handles = [add_update_hook(m, u) for m, u in zip(modules, updates) if u is not None]
    try:
        out, batch = answer_logits(model, batch_for(model, pairs, pad_id), output_hidden_states=output_hidden_states)
    finally:
        for h in handles:
            h.remove()
    losses, accuracy = [], []
    for (logits, labels), reference in zip(batch.per_pair(out.logits.float()), references):
        if reference is None:
            losses.append(F.cross_entropy(logits, labels))
        else:
            losses.append(F.kl_div(logits.log_softmax(-1), reference, log_target=True, reduction="batchmean"))
        accuracy.append((logits.detach().argmax(-1) == labels).float().mean())
    return RowLosses(
        torch.stack(losses), torch.stack(accuracy), out.hidden_states if output_hidden_states else None, batch.tokens
    )


@torch.enable_grad()  # gradients to the updates even when the caller is inside torch.no_grad()
def edit_objective(
    model: PreTrainedModel,
    modules: list[nn.Module],
    updates: Sequence[Update],
    edits: list[Pair],
    locs: list[Pair],
    reference_log_probs: list[torch.Tensor],
    pad_id: int,
    time_decay: float,
    kl_weight: float,
    l2_weight: float,
    output_hidden_states: bool = False,
    chunk_rows: int | None = None,
    paraphrases: list[Pair] | None = None,
) -> ObjectiveTerms:
    """``edits[0]`` is the current edit, ``edits[j]`` the edit ``j`` steps back; ``locs`` are unrelated
    prompts (at least one) with the unedited model's log-probs over their answer tokens in
    ``reference_log_probs``. One forward pass scores them all (``batch_for([*edits, *locs])``: packed
    in one row where the model allows it), whose hidden states ``output_hidden_states`` keeps.

    ``chunk_rows``: when gradients flow to the updates, run the batch ``chunk_rows`` rows at a time,
    each chunk under activation checkpointing (its forward is run again in the backward pass), so
    only one chunk's activations are held at once: less peak memory for one more forward. The rows
    are independent, so the value and the gradients are the same.

    ``paraphrases`` (one per edit, same order): each edit's cross-entropy in the loss and in
    ``per_edit`` becomes the mean of its prompt's and its paraphrase's; ``per_edit_accuracy`` stays
    the prompts'."""
    if len(updates) != len(modules):
        raise ValueError(f"objective expects {len(modules)} updates (None for unchanged modules), got {len(updates)}")
    if not locs or len(locs) != len(reference_log_probs):
        raise ValueError(
            f"objective needs one reference per unrelated prompt, got {len(locs)} prompts "
            f"and {len(reference_log_probs)} references"
        )
    if paraphrases is not None and len(paraphrases) != len(edits):
        raise ValueError(f"objective needs one paraphrase per edit, got {len(paraphrases)} for {len(edits)} edits")
    fitted = [*edits, *(paraphrases or [])]  # the rows scored by cross-entropy
    pairs, references = [*fitted, *locs], [None] * len(fitted) + list(reference_log_probs)
    tracked = any(t.requires_grad for u in updates if u is not None for t in (u if isinstance(u, tuple) else (u,)))
    if chunk_rows is None or chunk_rows >= len(pairs) or not tracked or output_hidden_states:
        losses, accuracy, hidden, tokens = row_losses(
            model, modules, updates, pairs, references, pad_id, output_hidden_states
        )
        accuracy = accuracy[: len(edits)]
    else:
        hidden = accuracy = tokens = None
        losses = torch.cat(
            [
                checkpoint(
                    lambda s=start: row_losses(
                        model, modules, updates, pairs[s : s + chunk_rows], references[s : s + chunk_rows], pad_id
                    )[0],
                    use_reentrant=False,
                )
                for start in range(0, len(pairs), chunk_rows)
            ]
        )
    weights = torch.tensor(window_weights(len(edits), time_decay), device=losses.device)
    per_edit = losses[: len(fitted)].view(-1, len(edits)).mean(0)
    edit_loss = (weights * per_edit).sum() / weights.sum()
    kl = losses[len(fitted) :].mean()
    chosen = [u for u in updates if u is not None]
    l2 = torch.stack([update_sq_norm(u) for u in chosen]).sum() if chosen else losses.new_zeros(())
    return ObjectiveTerms(
        edit_loss + kl_weight * kl + l2_weight * l2, edit_loss, kl, l2, per_edit, hidden, accuracy, tokens
    )
