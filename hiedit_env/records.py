"""Records: read ZsRE and CounterFact edit sets into one typed form, through ``datasets``.

Accepted sources: a ``.json``/``.jsonl`` file, a directory of them, or a Hugging Face hub id. The
format is detected from the fields of the first record:

* ZsRE, MEND-style: ``src``, ``alt``, ``rephrase``, ``loc``, ``loc_ans`` (``answers``/``pred`` for the old answer);
* CounterFact, flat EasyEdit form: ``prompt``, ``target_new``, ``ground_truth``, ``rephrase_prompt``,
  ``locality_prompt``, ``locality_ground_truth``;
* CounterFact, nested ROME form: ``requested_rewrite`` (``prompt`` with ``{}`` for the subject,
  ``target_new.str``, ``target_true.str``), ``paraphrase_prompts``, ``neighborhood_prompts``.

Answers are stripped of surrounding whitespace (the data has some with a leading space; the
tokenizer adds the separating space itself). A record with a missing or empty field raises
:class:`RecordError` naming the record and the field, unless ``on_error="skip"``, which drops such
records and reports each one in :attr:`EditSet.skipped` and in a warning.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np

DEFAULT_DATASET = "default"


class RecordError(ValueError):
    """A data record lacks a field the environment needs."""


@dataclass(frozen=True)
class EditRecord:
    """One edit: make ``prompt`` complete with ``target_new``.

    ``rephrase`` tests generalization, ``loc_prompt``/``loc_answer`` locality; ``target_true`` is the
    answer before the edit (CounterFact efficacy compares the two), ``None`` where unknown.
    """

    prompt: str
    target_new: str
    rephrase: str
    loc_prompt: str
    loc_answer: str
    subject: str = ""
    target_true: str | None = None
    index: int = 0


@dataclass
class EditSet:
    """Records of one source, with the detected format and what was skipped (index, reason)."""

    records: list[EditRecord]
    format: Literal["zsre", "counterfact", "counterfact_rome"]
    source: str
    skipped: list[tuple[int, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records)

    def split(self, split: str, test_fraction: float = 0.2, seed: int = 0) -> list[EditRecord]:
        """``"all"``, or a seeded, disjoint ``"train"``/``"test"`` partition of the records."""
        if split == "all":
            return list(self.records)
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'all', 'train' or 'test', got {split!r}")
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
        order = np.random.default_rng(seed).permutation(len(self.records))
        n_test = max(1, int(round(test_fraction * len(self.records))))
        chosen = order[:n_test] if split == "test" else order[n_test:]
        return [self.records[i] for i in sorted(chosen)]


def load_edits(source: str | Path = DEFAULT_DATASET, on_error: Literal["error", "skip"] = "error",
               hub_split: str = "train") -> EditSet:
    """Read an edit set. ``source="default"`` is the small set shipped in the package."""
    if on_error not in ("error", "skip"):
        raise ValueError(f"on_error must be 'error' or 'skip', got {on_error!r}")
    rows, label = _read_rows(source, hub_split)
    if not rows:
        raise RecordError(f"{label}: the data set is empty")
    fmt = detect_format(rows[0], label)
    parse = _PARSERS[fmt]
    records, skipped = [], []
    for i, row in enumerate(rows):
        try:
            records.append(parse(row, i))
        except RecordError as err:
            if on_error == "error":
                raise RecordError(f"{label}: {err}") from None
            skipped.append((i, str(err)))
    if skipped:
        warnings.warn(f"{label}: skipped {len(skipped)} of {len(rows)} records, first: {skipped[0][1]}", stacklevel=2)
    if not records:
        raise RecordError(f"{label}: no usable record")
    return EditSet(records, fmt, label, skipped)


def detect_format(row: dict[str, Any], label: str = "data") -> Literal["zsre", "counterfact", "counterfact_rome"]:
    if "requested_rewrite" in row:
        return "counterfact_rome"
    if "src" in row and "alt" in row:
        return "zsre"
    if "prompt" in row and "target_new" in row:
        return "counterfact"
    raise RecordError(
        f"{label}: cannot tell the format from the fields {sorted(row)}; expected ZsRE (src, alt, rephrase, "
        "loc, loc_ans), CounterFact (prompt, target_new, ground_truth, ...) or ROME's requested_rewrite"
    )


def _read_rows(source: str | Path, hub_split: str) -> tuple[list[dict[str, Any]], str]:
    import datasets

    datasets.disable_progress_bars()
    if str(source) == DEFAULT_DATASET:
        path = Path(str(resources.files("hiedit_env") / "assets" / "default_edits.json"))
    else:
        path = Path(source).expanduser()
    if path.is_dir():
        files = sorted(str(p) for p in path.iterdir() if p.suffix in (".json", ".jsonl"))
        if not files:
            raise RecordError(f"directory {str(path)!r} holds no .json or .jsonl file")
        data = datasets.load_dataset("json", data_files=files, split="train")
    elif path.is_file():
        data = datasets.load_dataset("json", data_files=str(path), split="train")
    elif str(source).startswith((".", "/", "~")) or Path(str(source)).suffix in (".json", ".jsonl"):
        raise RecordError(f"dataset path {str(source)!r} does not exist")
    else:
        try:
            data = datasets.load_dataset(str(source), split=hub_split)
        except Exception as err:  # datasets raises many types for "not found/offline"
            raise RecordError(f"dataset {str(source)!r} is neither a local path nor a loadable hub id: {err}") from err
    return data.to_list(), str(source)


def _text(row: dict[str, Any], key: str, index: int) -> str:
    value = row.get(key)
    if isinstance(value, list):  # ZsRE's `answers`, ROME's prompt lists: take the first
        value = value[0] if value else None
    if isinstance(value, dict):  # ROME's {"str": ..., "id": ...}
        value = value.get("str")
    if not isinstance(value, str) or not value.strip():
        raise RecordError(f"record {index}: field {key!r} is missing or empty")
    return value.strip()


def _parse_zsre(row: dict[str, Any], i: int) -> EditRecord:
    true = row.get("answers") or row.get("pred")
    return EditRecord(
        prompt=_text(row, "src", i), target_new=_text(row, "alt", i), rephrase=_text(row, "rephrase", i),
        loc_prompt=_text(row, "loc", i), loc_answer=_text(row, "loc_ans", i),
        subject=str(row.get("subject") or ""), target_true=_text({"t": true}, "t", i) if true else None, index=i,
    )


def _parse_counterfact(row: dict[str, Any], i: int) -> EditRecord:
    return EditRecord(
        prompt=_text(row, "prompt", i), target_new=_text(row, "target_new", i),
        rephrase=_text(row, "rephrase_prompt", i), loc_prompt=_text(row, "locality_prompt", i),
        loc_answer=_text(row, "locality_ground_truth", i), subject=str(row.get("subject") or ""),
        target_true=_text(row, "ground_truth", i), index=i,
    )


def _parse_rome(row: dict[str, Any], i: int) -> EditRecord:
    rewrite = row.get("requested_rewrite")
    if not isinstance(rewrite, dict):
        raise RecordError(f"record {i}: field 'requested_rewrite' is missing or not an object")
    subject = _text(rewrite, "subject", i)
    template = _text(rewrite, "prompt", i)
    if "{}" not in template:
        raise RecordError(f"record {i}: field 'requested_rewrite.prompt' has no '{{}}' for the subject")
    true = _text(rewrite, "target_true", i)
    return EditRecord(
        prompt=template.format(subject), target_new=_text(rewrite, "target_new", i),
        rephrase=_text(row, "paraphrase_prompts", i), loc_prompt=_text(row, "neighborhood_prompts", i),
        loc_answer=true, subject=subject, target_true=true, index=i,
    )


_PARSERS = {"zsre": _parse_zsre, "counterfact": _parse_counterfact, "counterfact_rome": _parse_rome}
