"""Values and keys of one edit, as ROME and MEMIT compute them.

* Prefixes: a few short texts the model writes itself (seeded), put before the edit prompt so the
  value and the keys hold across contexts, not just for the bare prompt (MEMIT's "context templates").
* Value (:func:`optimise_value`): a residual vector ``delta`` added at the last subject token to the
  output of the last edited layer (its MLP output projection; the block's residual stream adds it
  unchanged), optimised by Adam on the new answer's negative log-likelihood over the prompt and its
  prefixed copies, plus ``kl_weight`` times the KL divergence of the next-token distribution after
  "{subject}" in "{subject} is a" from the unedited one, plus ``weight_decay * ||delta|| / ||h||^2``
  (the published form), with ``||delta||`` clamped at ``clamp * ||h||`` (``h``: that layer's hidden
  state at the subject's last token of the bare prompt). The target is ``z = h + delta``.
* Keys (:func:`keys_and_hidden`): each edited module's input at the subject's last token, averaged
  over the bare and the prefixed prompts, and the hidden state ``h`` under any pending updates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from hiedit_env.objective import Update, add_update_hook
from hiedit_env.tokens import Pair, answer_logits, collate, encode_pair, subject_last_token

# MEMIT's prefixes: five sampled continuations (top-k 5) of these openings, 10 tokens each.
PREFIX_OPENINGS = ("The", "Therefore", "Because", "I", "You")
PREFIX_TOKENS = 10
EARLY_STOP_NLL = 5e-2  # the published value optimisation stops once the answer's NLL is this low


def generate_prefixes(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, count: int, seed: int) -> list[str]:
    """``count`` short texts sampled from ``model`` (top-k 5, seeded, global random state untouched),
    each ending in ". " so the edit prompt follows as a new sentence; ``""`` (the bare prompt) first."""
    texts = [""]
    with torch.random.fork_rng(devices=[model.device] if model.device.type == "cuda" else []), torch.no_grad():
        torch.manual_seed(seed)
        for i in range(count):
            ids = tokenizer(PREFIX_OPENINGS[i % len(PREFIX_OPENINGS)], add_special_tokens=False, return_tensors="pt")
            ids = ids["input_ids"].to(model.device)
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, top_k=5,
                                 max_new_tokens=PREFIX_TOKENS, min_new_tokens=PREFIX_TOKENS,
                                 pad_token_id=tokenizer.pad_token_id)
            text = tokenizer.decode(out[0], skip_special_tokens=True).replace("{", " ").replace("}", " ")
            texts.append(" ".join(text.split()) + ". ")
    return texts


@dataclass(frozen=True)
class EditInputs:
    """One edit's token sequences: the prompt behind each prefix (answer appended) and the KL prompt."""

    rewrites: list[Pair]  # prefix + prompt + new answer, the bare prompt first
    positions: list[int]  # the subject's last token in each
    kl: Pair  # "{subject} is a": its answer logits' first row is the distribution after the subject


def edit_inputs(tokenizer: PreTrainedTokenizerBase, prompt: str, subject: str, answer: str,
                prefixes: Sequence[str]) -> EditInputs:
    texts = [prefix + prompt for prefix in prefixes]
    rewrites = [encode_pair(tokenizer, text, answer) for text in texts]
    positions = [subject_last_token(tokenizer, text, subject) for text in texts]
    kl = encode_pair(tokenizer, subject or prompt, "is a")
    return EditInputs(rewrites, positions, kl)


def _delta_hook(module: nn.Module, rows: list[int], positions: list[int], delta: torch.Tensor):
    """A hook adding ``delta`` to ``module``'s output at ``(rows[j], positions[j])``."""
    index = (torch.tensor(rows), torch.tensor(positions))

    def hook(_module: nn.Module, _args: tuple, output: torch.Tensor) -> torch.Tensor:
        added = torch.zeros_like(output)
        added[index] = delta.to(output.dtype)
        return output + added
    return module.register_forward_hook(hook)


def optimise_value(model: PreTrainedModel, module: nn.Module, layer: int, inputs: EditInputs, pad_id: int,
                   steps: int, lr: float, kl_weight: float, weight_decay: float, clamp: float) -> tuple[torch.Tensor, dict[str, float]]:
    """The target hidden state ``z`` [d_model] at the last subject token of block ``layer``'s output
    (``module`` is that block's MLP output projection), and the first and last NLL of the new answer."""
    pairs = [*inputs.rewrites, inputs.kl]
    batch = collate(pairs, pad_id, model.device)
    rows = list(range(len(pairs)))
    positions = [*inputs.positions, inputs.kl.answer_start - 1]
    with torch.no_grad():
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False,
                    output_hidden_states=True)
    hidden = out.hidden_states[layer + 1][0, inputs.positions[0]].detach().float()
    delta = torch.zeros_like(hidden, requires_grad=True)
    optimiser = torch.optim.Adam([delta], lr=lr)
    max_norm = clamp * hidden.norm()
    reference: torch.Tensor | None = None
    first = last = float("nan")
    for step in range(steps + 1):
        handle = _delta_hook(module, rows, positions, delta)
        try:
            with torch.enable_grad():
                logits, narrowed = answer_logits(model, batch)
                per_pair = narrowed.per_pair(logits.logits.float())
                nll = torch.stack([F.cross_entropy(lg, lb) for lg, lb in per_pair[:-1]]).mean()
                kl_log_probs = per_pair[-1][0][0].log_softmax(-1)
                if reference is None:
                    reference = kl_log_probs.detach()
                kl = F.kl_div(kl_log_probs, reference, log_target=True, reduction="sum")
                loss = nll + kl_weight * kl + weight_decay * delta.norm() / hidden.norm() ** 2
        finally:
            handle.remove()
        last = float(nll.detach())
        if step == 0:
            first = last
        if step == steps or last < EARLY_STOP_NLL:
            break
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        with torch.no_grad():
            if delta.norm() > max_norm:
                delta.mul_(max_norm / delta.norm())
    delta = delta.detach()
    return hidden + delta, {"nll_before": first, "nll_after": last, "delta_ratio": float(delta.norm() / hidden.norm())}


def keys_and_hidden(model: PreTrainedModel, modules: Sequence[nn.Module], pending: Sequence[tuple[nn.Module, Update]],
                    layer: int, inputs: EditInputs, pad_id: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Each of ``modules``' input at the subject's last token averaged over the prompts (without the
    answer), and block ``layer``'s hidden state there on the bare prompt, with ``pending`` updates
    added to their modules' outputs (the lower layers an edit has already solved for)."""
    prompts = [Pair(p.prompt, len(p.prompt) - 1) for p in inputs.rewrites]
    batch = collate(prompts, pad_id, model.device)
    rows, positions = torch.arange(len(prompts)), torch.tensor(inputs.positions)
    keys: list[torch.Tensor | None] = [None] * len(modules)

    def hook_for(i: int):
        def hook(_module: nn.Module, args: tuple, _output: torch.Tensor) -> None:
            keys[i] = args[0][rows, positions].float().mean(0)
        return hook

    handles = [add_update_hook(m, u) for m, u in pending] + [m.register_forward_hook(hook_for(i)) for i, m in enumerate(modules)]
    try:
        with torch.no_grad():
            out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False,
                        output_hidden_states=True)
    finally:
        for handle in handles:
            handle.remove()
    return keys, out.hidden_states[layer + 1][0, inputs.positions[0]].float()
