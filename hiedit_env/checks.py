"""Argument checks shared by the environment and the agents: one clear error naming the argument."""

from __future__ import annotations

import math

import numpy as np


def check_range(name: str, value: float, lo: float, hi: float | None, low_open: bool = False) -> None:
    """Refuse anything but a finite number in ``[lo, hi]`` (``(lo, hi]`` with ``low_open``; ``hi=None``: no bound)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > lo if low_open else value >= lo) and (hi is None or value <= hi)
    if not ok:
        bounds = f"{'(' if low_open else '['}{lo}, {hi if hi is not None else 'inf'}{']' if hi is not None else ')'}"
        raise ValueError(f"{name} must be a finite number in {bounds}, got {value!r}")


def check_int(name: str, value: int, minimum: int) -> None:
    """Refuse anything but an integer (not a bool) >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def default_k(num_candidates: int) -> int:
    """HiEdit's default number of modules edited per edit: half of the candidates (at least one)."""
    return max(1, num_candidates // 2)


def check_k(k: int | None, num_candidates: int, name: str = "k") -> int:
    """The number of modules to edit per edit (``None``: :func:`default_k`) as an ``int``, refused unless it
    is an integer in ``[1, num_candidates]``."""
    k = default_k(num_candidates) if k is None else k
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= num_candidates:
        raise ValueError(f"{name} must be an integer in [1, {num_candidates}], got {k!r}")
    return int(k)
