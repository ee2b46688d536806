"""Key statistics: the uncentred second moment ``C = E[k k^T]`` of an edited module's input keys.

MEMIT weighs its least-squares solve by ``C`` and AlphaEdit projects onto the null space of it. The
published code estimates ``C`` from 100,000 Wikipedia texts, which cannot be fetched offline. Three
sources are supported, and every result names the one it used:

* ``"model"`` (the offline default): text sampled from the model itself, ``samples`` sequences of
  ``length`` tokens drawn by plain ancestral sampling (temperature 1, no top-k) from the BOS token,
  seeded (``seed``), so the same model gives the same texts everywhere; the keys are read while the
  texts are generated, at no extra pass;
* a local file: ``.txt`` (one text per non-empty line) or ``.jsonl`` (the ``"text"`` field of each line);
* ``"hf:ID"`` or ``"hf:ID:CONFIG"``: the ``train`` split of a ``datasets`` id (e.g.
  ``"hf:wikitext:wikitext-103-raw-v1"`` where a network exists), its ``"text"`` column.

Texts are cut to ``length`` tokens and the first ``samples`` non-empty ones are used. ``C`` is computed
once, with a progress bar, for every module that needs it in one pass over the texts, and cached on
disk (one file per module, written atomically). The cache file's name is readable (model, module,
source, sample count) and the file stores the full key; a file whose stored key differs from the one
asked for (another file of the same name, another model at the same path name) is refused with an
error rather than used.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from hiedit_env.checks import check_int
from hiedit_env.files import atomic_write

# Where the statistics are cached unless the agent is given ``stats_dir``; $HIEDIT_CACHE moves it.
DEFAULT_CACHE = Path(os.environ.get("HIEDIT_CACHE", Path.home() / ".cache" / "hiedit")) / "key_stats"
BATCH = 32  # texts per forward pass or generate call when accumulating C


@dataclass(frozen=True)
class StatsKey:
    """What a cached ``C`` depends on: the model, the module, the text source and how much of it."""

    model: str
    module: str
    source: str  # "model", an absolute file path with its size and modification time, or "hf:..."
    samples: int
    length: int
    seed: int
    dtype: str

    def file_name(self) -> str:
        """A readable cache file name; two keys that slug alike are told apart by the stored key."""
        source = "model" if self.source == "model" else Path(self.source.split("|")[0]).name
        slug = "__".join(
            re.sub(r"[^A-Za-z0-9._-]+", "-", part)
            for part in (
                self.model,
                self.module,
                source,
                f"{self.samples}x{self.length}",
                f"seed{self.seed}",
                self.dtype,
            )
        )
        return f"{slug}.pt"


def source_id(source: str) -> str:
    """The source as the cache key records it: local files by absolute path, size and modification
    time (so an edited file is not mistaken for the old one); checks that the source exists."""
    if source == "model" or source.startswith("hf:"):
        if source.startswith("hf:") and len(source) <= 3:
            raise ValueError("stats_source 'hf:' needs a datasets id, e.g. 'hf:wikitext:wikitext-103-raw-v1'")
        return source
    path = Path(source).expanduser().resolve()
    if not path.is_file():
        raise ValueError(f"stats_source {source!r} is neither 'model', 'hf:ID[:CONFIG]' nor an existing file")
    if path.suffix not in (".txt", ".jsonl"):
        raise ValueError(f"stats_source file {source!r} must be .txt (one text a line) or .jsonl (a 'text' field)")
    stat = path.stat()
    return f"{path}|{stat.st_size}|{int(stat.st_mtime)}"


def read_texts(source: str, samples: int) -> list[str]:
    """The first ``samples`` non-empty texts of a file or ``datasets`` source."""
    texts: list[str] = []
    if source.startswith("hf:"):
        import datasets

        name, _, config = source[3:].partition(":")
        rows = datasets.load_dataset(name, config or None, split="train", streaming=True)
        for row in rows:
            text = str(row.get("text") or "").strip()
            if text:
                texts.append(text)
            if len(texts) >= samples:
                break
    else:
        path = Path(source.split("|")[0])
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                if path.suffix == ".jsonl":
                    try:
                        line = str(json.loads(line).get("text") or "")
                    except (json.JSONDecodeError, AttributeError) as err:
                        raise ValueError(f"{path}:{number}: not a JSON object with a 'text' field") from err
                if line.strip():
                    texts.append(line.strip())
                if len(texts) >= samples:
                    break
    if not texts:
        raise ValueError(f"stats_source {source!r} holds no non-empty text")
    return texts


class _Moments:
    """Forward hooks that sum ``k k^T`` over the rows ``mask`` marks (every row when it is ``None``) of
    each module's input; sums in float64, as a 64k-token sum of float32 outer products loses digits
    the null-space projection's small eigenvalues depend on."""

    def __init__(self, modules: Sequence[nn.Module]) -> None:
        self.sums: list[torch.Tensor | None] = [None] * len(modules)
        self.mask: torch.Tensor | None = None
        self.count = 0
        self.handles = [m.register_forward_hook(self._hook_for(i)) for i, m in enumerate(modules)]

    def _hook_for(self, i: int):
        def hook(_module: nn.Module, args: tuple, _output: torch.Tensor) -> None:
            keys = args[0][self.mask] if self.mask is not None else args[0].reshape(-1, args[0].shape[-1])
            outer = keys.double().T @ keys.double()
            self.sums[i] = outer if self.sums[i] is None else self.sums[i] + outer
            if i == 0:
                self.count += keys.shape[0]

        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()

    def means(self) -> list[torch.Tensor]:
        return [s / self.count for s in self.sums]


def sampled_second_moments(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    modules: Sequence[nn.Module],
    samples: int,
    length: int,
    seed: int,
) -> list[torch.Tensor]:
    """``E[k k^T]`` over ``samples`` texts of ``length`` tokens sampled from ``model`` (from its BOS
    token; seeded, the global random state untouched), read while they are generated: each sampling
    step feeds one token per text through the model, so the keys come at no extra pass."""
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    moments = _Moments(modules)
    try:
        with torch.random.fork_rng(devices=[model.device] if model.device.type == "cuda" else []), torch.no_grad():
            torch.manual_seed(seed)
            for first in tqdm(range(0, samples, BATCH), desc="key statistics from sampled text", unit="batch"):
                n = min(BATCH, samples - first)
                prompt = torch.full((n, 1), start, dtype=torch.long, device=model.device)
                # min_new_tokens = max_new_tokens: no text ends early, so no step feeds padding.
                model.generate(
                    prompt,
                    attention_mask=torch.ones_like(prompt),
                    do_sample=True,
                    top_k=0,
                    top_p=1.0,
                    temperature=1.0,
                    max_new_tokens=length,
                    min_new_tokens=length,
                    pad_token_id=tokenizer.pad_token_id,
                )
    finally:
        moments.remove()
    return moments.means()


def text_second_moments(
    model: PreTrainedModel, modules: Sequence[nn.Module], sequences: list[torch.Tensor], pad_id: int
) -> list[torch.Tensor]:
    """``E[k k^T]`` of each module's input over every token of ``sequences``."""
    moments = _Moments(modules)
    try:
        with torch.no_grad():
            for first in tqdm(range(0, len(sequences), BATCH), desc="key statistics", unit="batch"):
                chunk = sequences[first : first + BATCH]
                width = max(len(s) for s in chunk)
                ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
                mask = torch.zeros((len(chunk), width), dtype=torch.bool)
                for row, seq in enumerate(chunk):
                    ids[row, : len(seq)] = seq
                    mask[row, : len(seq)] = True
                moments.mask = mask.to(model.device)
                model(input_ids=ids.to(model.device), attention_mask=mask.long().to(model.device), use_cache=False)
    finally:
        moments.remove()
    return moments.means()


def load_cached(path: Path, key: StatsKey) -> torch.Tensor | None:
    """The cached ``C`` at ``path`` (``None`` if there is none); refused when it was stored for another key."""
    if not path.is_file():
        return None
    stored = torch.load(path, map_location="cpu", weights_only=True)
    if stored.get("key") != asdict(key):
        raise ValueError(
            f"key statistics cache {str(path)!r} was computed for {stored.get('key')}, not for "
            f"{asdict(key)}; delete it or pass another stats_dir"
        )
    return stored["mom2"]


def key_second_moments(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    model_name: str,
    module_names: Sequence[str],
    source: str = "model",
    samples: int = 1000,
    length: int = 64,
    seed: int = 0,
    cache_dir: str | Path | None = None,
) -> dict[str, torch.Tensor]:
    """``{module name: C}`` (float64, on the CPU), read from the cache or computed once and cached.

    ``model`` must hold the weights the statistics describe (the unedited ones).
    """
    check_int("stats_samples", samples, 1)
    check_int("stats_length", length, 2)
    source_key = source_id(source)
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    cache = Path(cache_dir).expanduser() if cache_dir is not None else DEFAULT_CACHE
    keys = {name: StatsKey(model_name, name, source_key, samples, length, seed, dtype) for name in module_names}
    result: dict[str, torch.Tensor] = {}
    for name, key in keys.items():
        cached = load_cached(cache / key.file_name(), key)
        if cached is not None:
            result[name] = cached
    missing = [name for name in module_names if name not in result]
    if missing:
        modules = [model.get_submodule(n) for n in missing]
        if source == "model":
            moments = sampled_second_moments(model, tokenizer, modules, samples, length, seed)
        else:
            sequences = [
                torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"][:length], dtype=torch.long)
                for text in read_texts(source_key, samples)
            ]
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
            moments = text_second_moments(model, modules, [s for s in sequences if len(s)], pad)
        for name, mom2 in zip(missing, moments):
            entry = {"key": asdict(keys[name]), "mom2": mom2.cpu()}
            atomic_write(cache / keys[name].file_name(), lambda tmp, entry=entry: torch.save(entry, tmp))
            result[name] = mom2.cpu()
    return result


def compare_second_moments(a: torch.Tensor, b: torch.Tensor, top: int = 32) -> dict[str, float]:
    """How far two key second moments of one module are apart, spectrally: the relative Frobenius
    distance ``||A - B|| / ||B||``, the mean squared cosine of the principal angles between their top
    ``top`` eigenvector subspaces (1: the same subspace; ``top / d`` for random ones), the same for the
    subspaces AlphaEdit's null space would keep at 70% (the smallest 70% of eigenvectors), and the
    share of each matrix's trace its top ``top`` eigenvalues hold."""
    a, b = a.double(), b.double()
    d = a.shape[0]
    top = min(top, d)
    ea, va = torch.linalg.eigh(a)
    eb, vb = torch.linalg.eigh(b)
    kept = max(1, int(round(0.7 * d)))

    def overlap(x: torch.Tensor, y: torch.Tensor) -> float:
        return float(torch.linalg.svdvals(x.T @ y).pow(2).mean())

    return {
        "relative_frobenius": float((a - b).norm() / b.norm()),
        "top_subspace_overlap": overlap(va[:, -top:], vb[:, -top:]),
        "null_space_overlap_70pct": overlap(va[:, :kept], vb[:, :kept]),
        "top_trace_share_a": float(ea[-top:].sum() / ea.sum()),
        "top_trace_share_b": float(eb[-top:].sum() / eb.sum()),
        "random_overlap": top / d,
    }
