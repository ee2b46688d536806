"""Records: read ZsRE and CounterFact edit sets into one typed form, through ``datasets``.

Accepted sources: a ``.json``/``.jsonl`` file, a directory of them, or a Hugging Face hub id (read
through ``datasets``). Local files are parsed with the standard library's ``json``: ``datasets``' JSON
builder refuses a whole file over one bad line or one column of mixed types with a generic "An error
occurred while generating the dataset", where the standard parser names the file, line and column,
and a numeric answer (``1997``) can be read as the text it stands for. The format is detected from
the fields of the first record:

* ZsRE, MEND-style: ``src``, ``alt``, ``rephrase``, ``loc``, ``loc_ans`` (``answers``/``pred`` for the old answer);
* CounterFact, flat EasyEdit form: ``prompt``, ``target_new``, ``ground_truth``, ``rephrase_prompt``,
  ``locality_prompt``, ``locality_ground_truth``;
* CounterFact, nested ROME form: ``requested_rewrite`` (``prompt`` with ``{}`` for the subject,
  ``target_new.str``, ``target_true.str``), ``paraphrase_prompts``, ``neighborhood_prompts``.

Answers are stripped of surrounding whitespace (the data has some with a leading space; the
tokenizer adds the separating space itself). A number where text is expected is converted to its
text and reported (:attr:`EditSet.converted`, and a warning). A record with a missing or empty field
raises :class:`RecordError` naming the record and the field, unless ``on_error="skip"``, which drops
such records and reports them (:attr:`EditSet.skipped`, :meth:`EditSet.report`, and a warning).
"""

from __future__ import annotations

import json
import re
import warnings
from collections import Counter
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
    # (record index, field) of the numbers read as text.
    converted: list[tuple[int, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records)

    def report(self) -> dict[str, Any]:
        """What reading the source kept, skipped (with a count per reason) and converted, as JSON values."""
        reasons = Counter(re.sub(r"^record \d+: ", "", reason) for _, reason in self.skipped)
        return {
            "source": self.source,
            "format": self.format,
            "records": len(self.records),
            "skipped": len(self.skipped),
            "skip_reasons": dict(reasons.most_common()),
            "skipped_records": [i for i, _ in self.skipped],
            "converted": [{"record": i, "field": key} for i, key in self.converted],
        }

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


def load_edits(
    source: str | Path = DEFAULT_DATASET, on_error: Literal["error", "skip"] = "error", hub_split: str = "train"
) -> EditSet:
    """Read an edit set. ``source="default"`` is the small set shipped in the package."""
    if on_error not in ("error", "skip"):
        raise ValueError(f"on_error must be 'error' or 'skip', got {on_error!r}")
    rows, label = _read_rows(source, hub_split)
    if not rows:
        raise RecordError(f"{label}: the data set is empty")
    if not isinstance(rows[0], dict):
        raise RecordError(f"{label}: record 0 is a {type(rows[0]).__name__}, not a JSON object")
    fmt = detect_format(rows[0], label)
    parse = _PARSERS[fmt]
    records, skipped, converted = [], [], []
    for i, row in enumerate(rows):
        try:
            if not isinstance(row, dict):
                raise RecordError(f"record {i}: not a JSON object but a {type(row).__name__}")
            records.append(parse(row, i, converted))
        except RecordError as err:
            if on_error == "error":
                raise RecordError(f"{label}: {err}") from None
            skipped.append((i, str(err)))
    edit_set = EditSet(records, fmt, label, skipped, converted)
    if skipped:
        reasons = "; ".join(f"{reason}: {n}" for reason, n in edit_set.report()["skip_reasons"].items())
        warnings.warn(
            f"{label}: skipped {len(skipped)} of {len(rows)} records ({reasons}); first: {skipped[0][1]}", stacklevel=2
        )
    if converted:
        shown = ", ".join(f"{key!r} of record {i}" for i, key in converted[:3])
        warnings.warn(
            f"{label}: read {len(converted)} numbers as text ({shown}{', ...' if len(converted) > 3 else ''})",
            stacklevel=2,
        )
    if not records:
        raise RecordError(f"{label}: no usable record")
    return edit_set


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


def _read_rows(source: str | Path, hub_split: str) -> tuple[list[Any], str]:
    if str(source) == DEFAULT_DATASET:
        path = Path(str(resources.files("hiedit_env") / "assets" / "default_edits.json"))
    else:
        path = Path(source).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".json", ".jsonl"))
        if not files:
            raise RecordError(f"directory {str(path)!r} holds no .json or .jsonl file")
        return [row for file in files for row in read_json_records(file)], str(source)
    if path.is_file():
        return read_json_records(path), str(source)
    if str(source).startswith((".", "/", "~")) or Path(str(source)).suffix in (".json", ".jsonl"):
        raise RecordError(f"dataset path {str(source)!r} does not exist")
    import datasets

    datasets.disable_progress_bars()
    try:
        data = datasets.load_dataset(str(source), split=hub_split)
    except Exception as err:  # datasets raises many types for "not found/offline"
        raise RecordError(f"dataset {str(source)!r} is neither a local path nor a loadable hub id: {err}") from err
    return data.to_list(), str(source)


def read_json_records(path: Path) -> list[Any]:
    """The records of a JSON array file or a JSON-lines file, or a :class:`RecordError` naming the file and,
    for malformed JSON, the line and column."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise RecordError(
            f"{str(path)!r} is not UTF-8 text (byte {err.object[err.start]:#04x} at offset "
            f"{err.start}); save it as UTF-8"
        ) from None
    if not text.strip():
        raise RecordError(f"{str(path)!r} is empty")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        if err.msg != "Extra data":  # "Extra data": a second value follows the first, as in JSON lines
            raise RecordError(
                f"{str(path)!r} is not valid JSON: {err.msg} at line {err.lineno} column {err.colno} "
                "(expected a JSON array of records, or one JSON record per line)"
            ) from None
        value = None
    if isinstance(value, list):
        return value
    if value is not None and not isinstance(value, dict):
        raise RecordError(
            f"{str(path)!r} holds a JSON {type(value).__name__}, not records "
            "(expected a JSON array of records, or one JSON record per line)"
        )
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise RecordError(
                    f"{str(path)!r}: line {number} is not valid JSON: {err.msg} at column {err.colno}"
                ) from None
    return rows


def _text(row: dict[str, Any], key: str, index: int, converted: list[tuple[int, str]]) -> str:
    value = row.get(key)
    if isinstance(value, list):  # ZsRE's `answers`, ROME's prompt lists: take the first
        value = value[0] if value else None
    if isinstance(value, dict):  # ROME's {"str": ..., "id": ...}
        value = value.get("str")
    if isinstance(value, (int, float)) and not isinstance(value, bool):  # a year or a count written as a number
        converted.append((index, key))
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise RecordError(f"record {index}: field {key!r} is missing or empty")
    return value.strip()


def _parse_zsre(row: dict[str, Any], i: int, converted: list[tuple[int, str]]) -> EditRecord:
    true = row.get("answers") or row.get("pred")
    return EditRecord(
        prompt=_text(row, "src", i, converted),
        target_new=_text(row, "alt", i, converted),
        rephrase=_text(row, "rephrase", i, converted),
        loc_prompt=_text(row, "loc", i, converted),
        loc_answer=_text(row, "loc_ans", i, converted),
        subject=str(row.get("subject") or ""),
        target_true=_text({"answers": true}, "answers", i, converted) if true else None,
        index=i,
    )


def _parse_counterfact(row: dict[str, Any], i: int, converted: list[tuple[int, str]]) -> EditRecord:
    return EditRecord(
        prompt=_text(row, "prompt", i, converted),
        target_new=_text(row, "target_new", i, converted),
        rephrase=_text(row, "rephrase_prompt", i, converted),
        loc_prompt=_text(row, "locality_prompt", i, converted),
        loc_answer=_text(row, "locality_ground_truth", i, converted),
        subject=str(row.get("subject") or ""),
        target_true=_text(row, "ground_truth", i, converted),
        index=i,
    )


def _parse_rome(row: dict[str, Any], i: int, converted: list[tuple[int, str]]) -> EditRecord:
    rewrite = row.get("requested_rewrite")
    if not isinstance(rewrite, dict):
        raise RecordError(f"record {i}: field 'requested_rewrite' is missing or not an object")
    subject = _text(rewrite, "subject", i, converted)
    template = _text(rewrite, "prompt", i, converted)
    if "{}" not in template:
        raise RecordError(f"record {i}: field 'requested_rewrite.prompt' has no '{{}}' for the subject")
    true = _text(rewrite, "target_true", i, converted)
    return EditRecord(
        prompt=template.format(subject),
        target_new=_text(rewrite, "target_new", i, converted),
        rephrase=_text(row, "paraphrase_prompts", i, converted),
        loc_prompt=_text(row, "neighborhood_prompts", i, converted),
        loc_answer=true,
        subject=subject,
        target_true=true,
        index=i,
    )


_PARSERS = {"zsre": _parse_zsre, "counterfact": _parse_counterfact, "counterfact_rome": _parse_rome}
