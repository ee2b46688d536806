"""Action: check an agent's ``{"layers", "update"}`` action and turn it into a choice of modules
plus one update request per chosen module. Nothing here touches the model, so a rejected action
leaves it as it was.

* ``layers``: ``L`` numbers in [0, 1] (a 0/1 mask, or scores). Without ``layer_budget`` the modules
  with a value above 0.5 are chosen; with ``layer_budget=k`` the ``k`` highest (ties: lower index).
* ``update``:
  - ``step_size`` mode: ``L`` numbers in [-1, 1], mapped log-linearly onto [eta_min, eta_max]
    (0 is the geometric middle). Values outside [-1, 1] are clipped (documented).
  - ``low_rank`` mode: a sequence of ``L`` entries, each ``(U, V)`` (or ``{"u": U, "v": V}``) with
    ``U`` [r, d_out] and ``V`` [r, d_in], ``dW = U.T @ V``, or a dense ``dW`` [d_out, d_in]; ``None``
    for a module not chosen. Any rank ``r`` is accepted (a hypernetwork emits one row per token);
    numpy arrays or torch tensors (used as they are, no copy when device and dtype match).
NaN or infinite values, wrong shapes and wrong types raise :class:`ActionError`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch


class ActionError(ValueError):
    """An action the environment refuses (the model is left unchanged)."""


@dataclass(frozen=True)
class ParsedAction:
    chosen: list[int]  # indices of the chosen candidate modules, ascending
    step_sizes: list[float] | None  # per chosen module (step_size mode)
    factors: (
        list[tuple[torch.Tensor, torch.Tensor | None]] | None
    )  # per chosen module (low_rank mode); (dW, None) if dense


def step_size_from_action(value: float, eta_range: tuple[float, float]) -> float:
    lo, hi = eta_range
    fraction = (min(max(value, -1.0), 1.0) + 1.0) / 2.0
    return float(math.exp(math.log(lo) + fraction * (math.log(hi) - math.log(lo))))


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest ``scores``, highest first (ties: the lower index)."""
    return np.argsort(-scores, kind="stable")[:k]


def parse_action(
    action: Any,
    n_modules: int,
    mode: Literal["step_size", "low_rank"],
    dims: list[tuple[int, int]],
    layer_budget: int | None,
    eta_range: tuple[float, float],
    device: torch.device,
    dtype: torch.dtype,
) -> ParsedAction:
    if not isinstance(action, Mapping) or set(action) != {"layers", "update"}:
        keys = sorted(action) if isinstance(action, Mapping) else type(action).__name__
        raise ActionError(f"action must be a dict with keys 'layers' and 'update', got {keys}")
    layers = _vector(action["layers"], n_modules, "layers")
    layers = np.clip(layers, 0.0, 1.0)
    if layer_budget is None:
        chosen = [i for i in range(n_modules) if layers[i] > 0.5]
    else:
        chosen = sorted(int(i) for i in top_k(layers, layer_budget))
    if mode == "step_size":
        update = _vector(action["update"], n_modules, "update")
        return ParsedAction(chosen, [step_size_from_action(float(update[i]), eta_range) for i in chosen], None)
    return ParsedAction(
        chosen, None, [_factors(action["update"], i, dims[i], n_modules, device, dtype) for i in chosen]
    )


def _vector(value: Any, n: int, key: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ActionError(f"action[{key!r}] must be numeric, got {type(value).__name__}") from err
    if array.shape != (n,):
        raise ActionError(f"action[{key!r}] must have shape ({n},), got {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ActionError(
            f"action[{key!r}] contains NaN or inf at positions {np.flatnonzero(~np.isfinite(array)).tolist()}"
        )
    return array


def _factors(
    update: Any, i: int, dim: tuple[int, int], n: int, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(update, (str, bytes)) or not isinstance(update, Sequence) or len(update) != n:
        raise ActionError(f"action['update'] in low_rank mode must be a sequence of {n} (U, V) entries")
    entry = update[i]
    d_in, d_out = dim
    if isinstance(entry, (torch.Tensor, np.ndarray)) and tuple(entry.shape) == (d_out, d_in):
        # A dense dW is the factor pair (dW.T, I): accepted for editors that fine-tune whole matrices.
        dense = torch.as_tensor(entry).to(device=device, dtype=dtype)
        if not torch.isfinite(dense).all():
            raise ActionError(f"action['update'][{i}] contains NaN or inf")
        return dense.detach(), None
    if isinstance(entry, Mapping):
        entry = (entry.get("u"), entry.get("v"))
    if entry is None or isinstance(entry, (str, bytes)) or not hasattr(entry, "__len__") or len(entry) != 2:
        raise ActionError(f"action['update'][{i}] must be (U, V) for a chosen module, got {type(entry).__name__}")
    try:
        u, v = (torch.as_tensor(x).to(device=device, dtype=dtype) for x in entry)
    except (TypeError, ValueError, RuntimeError) as err:  # None, strings, objects: not numeric factors
        raise ActionError(f"action['update'][{i}]: U and V must be numeric arrays or tensors ({err})") from err
    if u.ndim != 2 or v.ndim != 2 or u.shape[1] != d_out or v.shape[1] != d_in or u.shape[0] != v.shape[0]:
        raise ActionError(
            f"action['update'][{i}]: U must be [r, {d_out}] and V [r, {d_in}], got "
            f"{tuple(u.shape)} and {tuple(v.shape)}"
        )
    if not (torch.isfinite(u).all() and torch.isfinite(v).all()):
        raise ActionError(f"action['update'][{i}] contains NaN or inf")
    return u.detach(), v.detach()
