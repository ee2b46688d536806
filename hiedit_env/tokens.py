"""Tokens: turn a record's (prompt, answer) pairs into teacher-forcing sequences, once per episode.

A pair becomes ``prompt_ids + answer_ids``, where the answer is tokenized with one leading space
(as it follows the prompt in text). ``answer_start`` marks where the answer begins; the logits that
predict answer token ``j`` sit at position ``answer_start + j - 1``.

A pass lays pairs out right-padded (:func:`collate`, what scoring uses: it sorts pairs by length, so
little is padding) or packed into one row (:func:`pack`, what the objective uses: its few pairs of
mixed lengths would be a third padding). Packing relies on the model reading restarting
``position_ids`` as sequence boundaries, as ``transformers``' masks do when no attention mask and no
cache are given; :func:`packs_sequences` checks that once per model and falls back to padding.
"""

from __future__ import annotations

import functools
import inspect
import weakref
from dataclasses import dataclass, replace
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .records import EditRecord

# Default limits (``gym.make`` arguments ``max_prompt_tokens``/``max_answer_tokens``): a prompt keeps its
# last tokens, an answer its first; the longest prompt of the shipped ZsRE and CounterFact files is far
# shorter. A record cut by them is reported (``HiEditEnv.data_report``).
MAX_PROMPT_TOKENS = 96
MAX_ANSWER_TOKENS = 24


@dataclass(frozen=True)
class Pair:
    """One tokenized (prompt, answer) sequence; ``truncated`` when the limits cut either part."""

    ids: torch.Tensor  # [n] long, prompt then answer
    answer_start: int
    truncated: bool = False

    @property
    def answer(self) -> torch.Tensor:
        return self.ids[self.answer_start :]

    @property
    def prompt(self) -> torch.Tensor:
        return self.ids[: self.answer_start]


@dataclass(frozen=True)
class EncodedRecord:
    """The sequences one edit needs: edit, paraphrase, locality, and the old answer if known."""

    record: EditRecord
    edit: Pair
    rephrase: Pair
    loc: Pair
    old: Pair | None

    @property
    def truncated(self) -> bool:
        return any(pair is not None and pair.truncated for pair in (self.edit, self.rephrase, self.loc, self.old))


def encode_pair(
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    answer: str,
    max_prompt_tokens: int = MAX_PROMPT_TOKENS,
    max_answer_tokens: int = MAX_ANSWER_TOKENS,
) -> Pair:
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(" " + answer, add_special_tokens=False)["input_ids"]
    truncated = len(prompt_ids) > max_prompt_tokens or len(answer_ids) > max_answer_tokens
    prompt_ids, answer_ids = prompt_ids[-max_prompt_tokens:], answer_ids[:max_answer_tokens]
    if tokenizer.bos_token_id is not None and getattr(tokenizer, "add_bos_token", False):
        prompt_ids = [tokenizer.bos_token_id, *prompt_ids]
    if not prompt_ids or not answer_ids:
        raise ValueError(f"prompt {prompt!r} or answer {answer!r} tokenizes to nothing")
    return Pair(torch.tensor(prompt_ids + answer_ids, dtype=torch.long), len(prompt_ids), truncated)


def subject_last_token(
    tokenizer: PreTrainedTokenizerBase, prompt: str, subject: str, max_prompt_tokens: int = MAX_PROMPT_TOKENS
) -> int:
    """Position, in :func:`encode_pair`'s ids for ``prompt``, of the subject's last token (where
    ROME/MEMIT read keys and write values): the first occurrence of ``subject`` in ``prompt`` (else a
    case-insensitive one), whose end is mapped to a token by tokenizing the prompt up to it. A prompt
    that does not contain the subject gets its last token, the position the edit's trace is read at."""
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    last = len(prompt_ids[-max_prompt_tokens:]) - 1
    start = prompt.find(subject) if subject else -1
    if start < 0 and subject:
        start = prompt.lower().find(subject.lower())
    if start >= 0:
        upto = len(tokenizer(prompt[: start + len(subject)].rstrip(), add_special_tokens=False)["input_ids"])
        # encode_pair keeps the last max_prompt_tokens tokens: positions shift by what it cut.
        last = min(max(upto - 1 - max(0, len(prompt_ids) - max_prompt_tokens), 0), last)
    if tokenizer.bos_token_id is not None and getattr(tokenizer, "add_bos_token", False):
        last += 1
    return last


def encode_record(
    tokenizer: PreTrainedTokenizerBase,
    record: EditRecord,
    max_prompt_tokens: int = MAX_PROMPT_TOKENS,
    max_answer_tokens: int = MAX_ANSWER_TOKENS,
) -> EncodedRecord:
    def pair(prompt: str, answer: str) -> Pair:
        return encode_pair(tokenizer, prompt, answer, max_prompt_tokens, max_answer_tokens)

    return EncodedRecord(
        record=record,
        edit=pair(record.prompt, record.target_new),
        rephrase=pair(record.rephrase, record.target_new),
        loc=pair(record.loc_prompt, record.loc_answer),
        old=pair(record.prompt, record.target_true) if record.target_true else None,
    )


@dataclass
class Batch:
    """Sequences laid out for one forward pass, with the mask of positions whose logits predict an
    answer token. Right-padded (:func:`collate`: one row per pair) or packed (:func:`pack`: every pair
    in one row, ``position_ids`` restarting at each and no ``attention_mask``)."""

    input_ids: torch.Tensor  # [b, n]
    attention_mask: torch.Tensor | None  # [b, n], None when packed
    labels: torch.Tensor  # [b, n], the token each position's logits should predict, -100 elsewhere
    answer_mask: torch.Tensor  # [b, n] bool, labels != -100
    answer_lengths: list[int]  # answer tokens of each pair, in the pairs' order
    position_ids: torch.Tensor | None = None  # [1, n] when packed

    @property
    def tokens(self) -> torch.Tensor:
        """[b, n] bool: the positions that hold a pair's token (not padding)."""
        if self.attention_mask is None:
            return torch.ones_like(self.input_ids, dtype=torch.bool)
        return self.attention_mask.bool()

    def per_pair(self, logits: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``logits`` [b, n, vocab] (on the batch's columns) cut into each pair's (answer logits, labels)."""
        return list(
            zip(
                logits[self.answer_mask].split(self.answer_lengths),
                self.labels[self.answer_mask].split(self.answer_lengths),
            )
        )


def collate(pairs: list[Pair], pad_id: int, device: torch.device) -> Batch:
    width = max(len(p.ids) for p in pairs)
    ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(pairs), width), dtype=torch.long)
    labels = torch.full((len(pairs), width), -100, dtype=torch.long)
    for row, pair in enumerate(pairs):
        n = len(pair.ids)
        ids[row, :n] = pair.ids
        attention[row, :n] = 1
        labels[row, pair.answer_start - 1 : n - 1] = pair.answer
    return Batch(
        ids.to(device),
        attention.to(device),
        labels.to(device),
        (labels != -100).to(device),
        [len(p.answer) for p in pairs],
    )


def pack(pairs: list[Pair], device: torch.device) -> Batch:
    """All ``pairs`` in one row, each attending to itself only (the model reads the restarting
    ``position_ids`` as sequence boundaries): no padding, so no work on it."""
    labels = torch.cat(
        [torch.cat([torch.full((p.answer_start - 1,), -100), p.answer, torch.full((1,), -100)]) for p in pairs]
    )[None]
    positions = torch.cat([torch.arange(len(p.ids)) for p in pairs])[None]
    ids = torch.cat([p.ids for p in pairs])[None]
    return Batch(
        ids.to(device),
        None,
        labels.to(device),
        (labels != -100).to(device),
        [len(p.answer) for p in pairs],
        positions.to(device),
    )


_PACKING: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def packs_sequences(model: PreTrainedModel) -> bool:
    """Whether ``model`` keeps packed sequences apart, checked once per model on two short pairs: the
    packed logits must match the padded ones far more closely than those of the same row read as one
    sequence (what a model that takes no boundaries from ``position_ids`` computes), whatever the
    dtype's rounding. A model that fails gets padded batches."""
    if model not in _PACKING:
        pairs = [Pair(torch.arange(1, 6), 3), Pair(torch.arange(7, 11), 2)]  # ids any vocabulary has
        packed = pack(pairs, model.device)
        try:
            with torch.no_grad():
                got, padded, joined = (
                    _answers(model, b)
                    for b in (packed, collate(pairs, 0, model.device), replace(packed, position_ids=None))
                )
            _PACKING[model] = bool((got - padded).abs().max() < 0.1 * (joined - padded).abs().max())
        except (TypeError, ValueError, RuntimeError):
            _PACKING[model] = False
    return _PACKING[model]


def _answers(model: PreTrainedModel, batch: Batch) -> torch.Tensor:
    out, narrowed = answer_logits(model, batch)
    return torch.cat([logits for logits, _ in narrowed.per_pair(out.logits.float())])


def batch_for(model: PreTrainedModel, pairs: list[Pair], pad_id: int) -> Batch:
    """One pass's batch: packed when the model supports it (:func:`packs_sequences`), else padded.
    What it saves on SmolLM2: docs/findings.md, "How fast is a step against the floor?"."""
    return pack(pairs, model.device) if packs_sequences(model) else collate(pairs, pad_id, model.device)


@functools.cache
def _takes_logits_to_keep(model_class: type) -> bool:
    """Whether the class's ``forward`` takes ``logits_to_keep`` (read once per class, not per pass)."""
    return "logits_to_keep" in inspect.signature(model_class.forward).parameters


def answer_logits(model: PreTrainedModel, batch: Batch, **kwargs: Any) -> tuple[Any, Batch]:
    """The model's output on ``batch`` with logits only at the columns that predict an answer token,
    and the batch narrowed to those columns (``labels`` and ``answer_mask`` line up with the logits).

    The vocabulary projection is a fifth of SmolLM2's parameters and answers are a few tokens of each
    sequence, so projecting every position would mostly be wasted work. Models whose ``forward``
    takes no ``logits_to_keep`` get every column. No KV cache is built: a pass never decodes, and a
    cache would make the model ignore a packed batch's boundaries.
    """
    inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "use_cache": False, **kwargs}
    if batch.position_ids is not None:
        inputs["position_ids"] = batch.position_ids
    if not _takes_logits_to_keep(type(model)):
        return model(**inputs), batch
    columns = batch.answer_mask.any(0).nonzero().squeeze(1)
    out = model(**inputs, logits_to_keep=columns)
    return out, replace(batch, labels=batch.labels[:, columns], answer_mask=batch.answer_mask[:, columns])
