"""Benchmark sweeps: a YAML spec expanded into cells run on Ray Tune (:func:`sweep`; where each cell
stands: :func:`sweep_status`), a report with stratified bootstrap intervals (:func:`build_report`) and
hyperparameter search (:func:`tune_spec`). See docs/sweeps.md."""

from .grid import Cell, expand
from .report import (
    build_report,
    probability_of_improvement,
    stratified_bootstrap_interval,
)
from .runner import collect_results, sweep, sweep_status
from .spec import SpecError, SweepSpec, load_spec
from .tune import tune_spec

__all__ = [
    "Cell",
    "SpecError",
    "SweepSpec",
    "build_report",
    "collect_results",
    "expand",
    "load_spec",
    "probability_of_improvement",
    "stratified_bootstrap_interval",
    "sweep",
    "sweep_status",
    "tune_spec",
]
