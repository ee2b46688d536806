"""Tokens: turn a record's (prompt, answer) pairs into teacher-forcing sequences, once per episode.

A pair becomes ``prompt_ids + answer_ids``, where the answer is tokenized with one leading space
(as it follows the prompt in text). ``answer_start`` marks where the answer begins; the logits that
predict answer token ``j`` sit at position ``answer_start + j - 1``.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .records import EditRecord

MAX_PROMPT_TOKENS = 96
MAX_ANSWER_TOKENS = 24


@dataclass(frozen=True)
class Pair:
    """One tokenized (prompt, answer) sequence."""

    ids: torch.Tensor  # [n] long, prompt then answer
    answer_start: int

    @property
    def answer(self) -> torch.Tensor:
        return self.ids[self.answer_start:]

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


def encode_pair(tokenizer: PreTrainedTokenizerBase, prompt: str, answer: str) -> Pair:
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"][-MAX_PROMPT_TOKENS:]
    answer_ids = tokenizer(" " + answer, add_special_tokens=False)["input_ids"][:MAX_ANSWER_TOKENS]
    if tokenizer.bos_token_id is not None and getattr(tokenizer, "add_bos_token", False):
        prompt_ids = [tokenizer.bos_token_id, *prompt_ids]
    if not prompt_ids or not answer_ids:
        raise ValueError(f"prompt {prompt!r} or answer {answer!r} tokenizes to nothing")
    return Pair(torch.tensor(prompt_ids + answer_ids, dtype=torch.long), len(prompt_ids))


def encode_record(tokenizer: PreTrainedTokenizerBase, record: EditRecord) -> EncodedRecord:
    old = encode_pair(tokenizer, record.prompt, record.target_true) if record.target_true else None
    return EncodedRecord(
        record=record,
        edit=encode_pair(tokenizer, record.prompt, record.target_new),
        rephrase=encode_pair(tokenizer, record.rephrase, record.target_new),
        loc=encode_pair(tokenizer, record.loc_prompt, record.loc_answer),
        old=old,
    )


@dataclass
class Batch:
    """Right-padded sequences with the mask of positions whose logits predict an answer token."""

    input_ids: torch.Tensor  # [b, n]
    attention_mask: torch.Tensor  # [b, n]
    labels: torch.Tensor  # [b, n], the token each position's logits should predict, -100 elsewhere
    answer_mask: torch.Tensor  # [b, n] bool, labels != -100


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
    return Batch(ids.to(device), attention.to(device), labels.to(device), (labels != -100).to(device))


@functools.cache
def _takes_logits_to_keep(model_class: type) -> bool:
    """Whether the class's ``forward`` takes ``logits_to_keep`` (read once per class, not per pass)."""
    return "logits_to_keep" in inspect.signature(model_class.forward).parameters


def answer_logits(model: PreTrainedModel, batch: Batch, **kwargs: Any) -> tuple[Any, Batch]:
    """The model's output on ``batch`` with logits only at the columns that predict an answer token,
    and the batch narrowed to those columns (``labels`` and ``answer_mask`` line up with the logits).

    The vocabulary projection is a fifth of SmolLM2's parameters and answers are a few tokens of each
    sequence, so projecting every position would mostly be wasted work. Models whose ``forward``
    takes no ``logits_to_keep`` get every column.
    """
    if not _takes_logits_to_keep(type(model)):
        return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, **kwargs), batch
    columns = batch.answer_mask.any(0).nonzero().squeeze(1)
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, logits_to_keep=columns, **kwargs)
    return out, Batch(batch.input_ids, batch.attention_mask, batch.labels[:, columns], batch.answer_mask[:, columns])
