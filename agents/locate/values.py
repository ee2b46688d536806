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

import copy
import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from hiedit_env.objective import Update, add_update_hook
from hiedit_env.tokens import Batch, Pair, answer_logits, collate, encode_pair, subject_last_token

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
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                do_sample=True,
                top_k=5,
                max_new_tokens=PREFIX_TOKENS,
                min_new_tokens=PREFIX_TOKENS,
                pad_token_id=tokenizer.pad_token_id,
            )
            text = tokenizer.decode(out[0], skip_special_tokens=True).replace("{", " ").replace("}", " ")
            texts.append(" ".join(text.split()) + ". ")
    return texts


@dataclass(frozen=True)
class EditInputs:
    """One edit's token sequences: the prompt behind each prefix (answer appended) and the KL prompt."""

    rewrites: list[Pair]  # prefix + prompt + new answer, the bare prompt first
    positions: list[int]  # the subject's last token in each
    kl: Pair  # "{subject} is a": its answer logits' first row is the distribution after the subject


def edit_inputs(
    tokenizer: PreTrainedTokenizerBase, prompt: str, subject: str, answer: str, prefixes: Sequence[str]
) -> EditInputs:
    texts = [prefix + prompt for prefix in prefixes]
    rewrites = [encode_pair(tokenizer, text, answer) for text in texts]
    positions = [subject_last_token(tokenizer, text, subject) for text in texts]
    kl = encode_pair(tokenizer, subject or prompt, "is a")
    return EditInputs(rewrites, positions, kl)


def _cache_keyword(model: PreTrainedModel) -> str:
    """The keyword ``model.forward`` takes a key/value cache by (transformers 5 renamed ``past_key_values``)."""
    return "cache" if "cache" in inspect.signature(type(model).forward).parameters else "past_key_values"


class ValueObjective:
    """The value optimisation's loss terms for a residual ``delta`` at the subject's last token, one pass a call.

    The tokens before the subject's last token do not depend on ``delta`` (attention is causal), so
    their keys and values in every layer are computed once, into a key/value cache, and each call runs
    only the tokens from the subject's last token on: the logits of a full pass (within float
    rounding) on a third to a fifth of its tokens. Every sequence is placed so that its subject's last
    token falls in the same column (left padding before it, right padding after it).
    """

    def __init__(self, model: PreTrainedModel, module: nn.Module, inputs: EditInputs, pad_id: int) -> None:
        pairs = [*inputs.rewrites, inputs.kl]
        starts = [*inputs.positions, inputs.kl.answer_start - 1]  # where delta is added, per sequence
        past = max(starts)
        width = max(len(p.ids) - s for p, s in zip(pairs, starts))
        ids = torch.full((len(pairs), past + width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        positions = torch.zeros_like(ids)
        labels = torch.full((len(pairs), width), -100, dtype=torch.long)
        for row, (pair, start) in enumerate(zip(pairs, starts)):
            n = len(pair.ids)
            ids[row, past - start : past - start + n] = pair.ids
            mask[row, past - start : past - start + n] = 1
            positions[row, past - start : past - start + n] = torch.arange(n)
            labels[row, pair.answer_start - 1 - start : n - 1 - start] = pair.answer
        device = model.device
        ids, mask, positions, labels = ids.to(device), mask.to(device), positions.to(device), labels.to(device)
        self.model, self.module = model, module
        self.mask, self.positions = mask, positions[:, past:]
        self.live = Batch(ids[:, past:], mask[:, past:], labels, labels != -100, [len(p.answer) for p in pairs])
        self.keyword = _cache_keyword(model)
        self.cache: DynamicCache | None = None
        if past:
            self.cache = DynamicCache()
            with torch.no_grad():
                model(
                    input_ids=ids[:, :past],
                    attention_mask=mask[:, :past],
                    position_ids=positions[:, :past],
                    use_cache=True,
                    **{self.keyword: self.cache},
                )

    def __call__(
        self, delta: torch.Tensor, output_hidden_states: bool = False
    ) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], Any]:
        """Each sequence's (answer logits, labels) with ``delta`` added to ``module``'s output at its
        subject's last token (the bare prompt first, the KL prompt last), and the model's output."""

        def hook(_module: nn.Module, _args: tuple, output: torch.Tensor) -> torch.Tensor:
            added = torch.zeros_like(output)
            added[:, 0] = delta.to(output.dtype)  # the first live column: every sequence's subject's last token
            return output + added

        handle = self.module.register_forward_hook(hook)
        try:
            # A copy per call: a forward appends the live tokens to the cache it is given.
            cache = {self.keyword: copy.deepcopy(self.cache)} if self.cache is not None else {}
            out, narrowed = answer_logits(
                self.model,
                self.live,
                attention_mask=self.mask,
                position_ids=self.positions,
                output_hidden_states=output_hidden_states,
                **cache,
            )
        finally:
            handle.remove()
        return narrowed.per_pair(out.logits.float()), out


def optimise_value(
    model: PreTrainedModel,
    module: nn.Module,
    layer: int,
    inputs: EditInputs,
    pad_id: int,
    steps: int,
    lr: float,
    kl_weight: float,
    weight_decay: float,
    clamp: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The target hidden state ``z`` [d_model] at the last subject token of block ``layer``'s output
    (``module`` is that block's MLP output projection), and the first and last NLL of the new answer."""
    objective = ValueObjective(model, module, inputs, pad_id)
    delta = torch.zeros(model.config.hidden_size, requires_grad=True, device=model.device)
    optimiser = torch.optim.Adam([delta], lr=lr)
    hidden = reference = max_norm = None
    first = last = float("nan")
    for step in range(steps + 1):
        with torch.enable_grad():
            per_pair, out = objective(delta, output_hidden_states=step == 0)
            if hidden is None:  # step 0, delta = 0: the unedited hidden state
                hidden = out.hidden_states[layer + 1][0, 0].detach().float()
                max_norm = clamp * hidden.norm()
            nll = torch.stack([F.cross_entropy(lg, lb) for lg, lb in per_pair[:-1]]).mean()
            kl_log_probs = per_pair[-1][0][0].log_softmax(-1)
            if reference is None:
                reference = kl_log_probs.detach()
            kl = F.kl_div(kl_log_probs, reference, log_target=True, reduction="sum")
            loss = nll + kl_weight * kl + weight_decay * delta.norm() / hidden.norm() ** 2
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
    return hidden + delta, {
        "nll_before": first,
        "nll_after": last,
        "steps": step,
        "delta_ratio": float(delta.norm() / hidden.norm()),
    }


class _Stop(Exception):
    """Raised by a forward hook to end a pass once everything it reads has been computed."""


def keys_and_hidden(
    model: PreTrainedModel,
    modules: Sequence[nn.Module],
    pending: Sequence[tuple[nn.Module, Update]],
    block: nn.Module,
    inputs: EditInputs,
    pad_id: int,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Each of ``modules``' input at the subject's last token averaged over the prompts (without the
    answer), and decoder block ``block``'s output there on the bare prompt, with ``pending`` updates
    added to their modules' outputs (the lower layers an edit has already solved for). ``modules``
    lie in ``block`` or below it, so the pass stops at ``block``: the blocks above change neither."""
    prompts = [Pair(p.prompt, len(p.prompt) - 1) for p in inputs.rewrites]
    batch = collate(prompts, pad_id, model.device)
    rows, positions = torch.arange(len(prompts)), torch.tensor(inputs.positions)
    keys: list[torch.Tensor | None] = [None] * len(modules)
    hidden: list[torch.Tensor] = []

    def hook_for(i: int):
        def hook(_module: nn.Module, args: tuple, _output: torch.Tensor) -> None:
            keys[i] = args[0][rows, positions].float().mean(0)

        return hook

    def stop(_module: nn.Module, _args: tuple, output: Any) -> None:
        hidden.append((output[0] if isinstance(output, tuple) else output)[0, inputs.positions[0]].float())
        raise _Stop

    handles = [add_update_hook(m, u) for m, u in pending] + [
        m.register_forward_hook(hook_for(i)) for i, m in enumerate(modules)
    ]
    handles.append(block.register_forward_hook(stop))
    try:
        with torch.no_grad():
            model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
    except _Stop:
        pass
    finally:
        for handle in handles:
            handle.remove()
    if not hidden or any(k is None for k in keys):
        raise ValueError("the edited modules must lie in the block whose output is read, or below it")
    return keys, hidden[0]
