"""``hiedit tune``: hyperparameter search with Ray Tune's Optuna searcher (TPE) and ASHA early stopping.

A tune spec is a sweep spec with one model, one data set and one agent entry, plus ``search``:

    search:
      agent-kwargs:                      # each: loguniform / uniform / randint [low, high], or choice [...]
        step: {uniform: [-1.0, 1.0]}
      validation: {seeds: [0, 1, 2], num_edits: 50}

Each trial trains the agent (if it learns) on the data set's ``train`` source and split, then edits the
validation sequences, drawn from that same training source and split and never from the evaluation
source, reporting the running mean of mean(ES, GS, LS) after each; ASHA stops trials that trail after
the first sequences. The best configuration is written as ``OUT/best.yaml``, an agent entry a sweep
spec includes with ``include: OUT/best.yaml``.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from hiedit_env.files import write_text

from ..registry import agent_class
from .cell import evaluate, train
from .grid import Cell, expand
from .spec import SpecError, SweepSpec, load_spec

DISTRIBUTIONS = ("loguniform", "uniform", "randint", "choice")


def load_tune_spec(path: str | Path) -> tuple[SweepSpec, dict[str, Any], list[tuple[int, int]]]:
    """The spec, its search space (parameter -> distribution) and validation sequences (seed, num_edits)."""
    raw = yaml.safe_load(Path(path).read_text()) if Path(path).is_file() else None
    if not isinstance(raw, dict) or not isinstance(raw.get("search"), dict):
        raise SpecError(f"invalid tune spec {path}: search: missing (a mapping with agent-kwargs and validation)")
    spec = load_spec(path, extra_keys={"search"}, evaluation_required=False)
    errors = []
    if len(spec.models) != 1 or len(spec.datasets) != 1 or len(spec.agents) != 1:
        errors.append("models, datasets, agents: a tune spec names exactly one of each")
    search = raw["search"]
    errors += [
        f"search.{k}: unknown key (allowed: agent-kwargs, validation)"
        for k in search
        if k not in ("agent-kwargs", "validation")
    ]
    space = search.get("agent-kwargs")
    if not isinstance(space, dict) or not space:
        errors.append("search.agent-kwargs: expected a non-empty mapping of parameter -> distribution")
        space = {}
    for name, dist in space.items():
        ok = isinstance(dist, dict) and len(dist) == 1 and next(iter(dist)) in DISTRIBUTIONS
        args = next(iter(dist.values())) if ok else None
        if not ok or not isinstance(args, list) or (next(iter(dist)) != "choice" and len(args) != 2):
            errors.append(
                f"search.agent-kwargs.{name}: expected one of {', '.join(DISTRIBUTIONS)} with "
                f"[low, high] (choice: a list), got {dist!r}"
            )
    validation = search.get("validation", {})
    seeds, num_edits = validation.get("seeds", [0]), validation.get("num_edits")
    if not (isinstance(seeds, list) and seeds and all(isinstance(s, int) for s in seeds)):
        errors.append(f"search.validation.seeds: expected a non-empty list of integers, got {seeds!r}")
    if not (isinstance(num_edits, int) and num_edits >= 1):
        errors.append(f"search.validation.num_edits: expected an integer >= 1, got {num_edits!r}")
    if errors:
        raise SpecError(f"invalid tune spec {path}: " + "; ".join(errors))
    return spec, space, [(s, num_edits) for s in seeds]


def _distribution(dist: dict[str, Any]) -> Any:
    from ray import tune

    kind, args = next(iter(dist.items()))
    return tune.choice(args) if kind == "choice" else getattr(tune, kind)(*args)


def _trial(config: dict[str, Any]) -> None:
    """One configuration: train if the agent learns, then report the running validation mean per sequence."""
    from ray import tune

    cell, acting = _configured(config["cell"], config["params"])
    if not agent_class(cell.agent).learns_before_acting(cell.agent_kwargs):
        cell = dataclasses.replace(cell, training_seed=None)  # a searched heuristic's step is not tuned away
    folder = Path(config["out"]) / "trials" / tune.get_context().get_trial_id()
    folder.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cell.threads)
    if cell.training_seed is not None:
        train(cell, folder)
    scores = []
    for seed, num_edits in cell.evaluations:
        scores.append(evaluate(cell, folder, seed, num_edits, acting)["metrics"]["mean"])
        tune.report({"score": float(np.mean(scores)), "sequences": len(scores)})
    shutil.rmtree(folder, ignore_errors=True)  # a search keeps scores, not every trial's editor


def _configured(cell: Cell, params: dict[str, Any]) -> tuple[Cell, dict[str, Any]]:
    """The cell with the searched values, and its acting options: a trained agent's acting options
    searched go there (they change how the checkpoint acts), every other value to the constructor."""
    options = set(agent_class(cell.agent).acting_options) if cell.training_seed is not None else set()
    kwargs = {**cell.agent_kwargs, **{k: v for k, v in params.items() if k not in options}}
    return dataclasses.replace(cell, agent_kwargs=kwargs), {
        **cell.variants[0][1],
        **{k: v for k, v in params.items() if k in options},
    }


def _defaults(cell: Cell, names: list[str]) -> dict[str, Any]:
    """The values the searched parameters take without a search: the entry's, else the constructor's defaults."""
    parameters = inspect.signature(agent_class(cell.agent).__init__).parameters
    acting = cell.variants[0][1]
    values = {}
    for name in names:
        if name in acting or name in cell.agent_kwargs:
            values[name] = acting.get(name, cell.agent_kwargs.get(name))
        elif name in parameters and parameters[name].default is not inspect.Parameter.empty:
            values[name] = parameters[name].default
        else:
            raise ValueError(f"search.agent-kwargs.{name}: {cell.agent!r} takes no such argument")
    return values


def tune_spec(
    path: str | Path,
    trials: int,
    out: str | Path,
    address: str | None = None,
    max_concurrent: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Search ``trials`` configurations of the spec's agent; writes ``OUT/best.yaml`` and ``OUT/trials.csv``.

    Returns the best configuration and its validation score."""
    import pandas as pd
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    spec, space, validation = load_tune_spec(path)
    out = Path(out).resolve()
    data = spec.datasets[0]
    # The validation sequences come from the training source and split: evaluation data never scores a trial.
    cell = dataclasses.replace(
        expand(spec)[0],
        eval_source=data.train.source,
        eval_split=data.train.split,
        evaluations=validation,
        curve_points=0,
    )
    defaults = _defaults(cell, list(space))
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    # The first trial runs the entry's own values (the shipped defaults unless the entry sets them),
    # so the search's best is reported against them on the same validation sequences.
    searcher = OptunaSearch(seed=seed, points_to_evaluate=[{f"params/{k}": v for k, v in defaults.items()}])
    tuner = tune.Tuner(
        tune.with_resources(_trial, {"cpu": spec.threads, "gpu": spec.gpu or 0}),
        param_space={"cell": cell, "out": str(out), "params": {k: _distribution(v) for k, v in space.items()}},
        tune_config=tune.TuneConfig(
            metric="score",
            mode="max",
            num_samples=trials,
            max_concurrent_trials=max_concurrent,
            reuse_actors=True,  # a worker keeps its loaded model for the next trial
            search_alg=searcher,
            scheduler=ASHAScheduler(max_t=len(validation), grace_period=1, reduction_factor=2, time_attr="sequences"),
        ),
        run_config=tune.RunConfig(name=spec.name, storage_path=str(out / "ray"), verbose=0),
    )
    results = tuner.fit()
    shutil.rmtree(out / "trials", ignore_errors=True)  # what the trials ASHA stopped early left
    frame = results.get_dataframe()
    params_columns = [f"config/params/{k}" for k in space]
    frame = frame[["trial_id", "score", "sequences", *params_columns, "time_total_s"]]
    write_text(out / "trials.csv", frame.to_csv(index=False))
    default_rows = frame[(frame[params_columns] == pd.Series(defaults).set_axis(params_columns)).all(axis=1)]
    default_score = float(default_rows["score"].iloc[0]) if len(default_rows) else None
    best = results.get_best_result(metric="score", mode="max", scope="last")
    params = best.config["params"]
    configured, acting = _configured(cell, params)
    entry = {"agent": cell.agent, "agent-kwargs": configured.agent_kwargs}
    if acting:
        entry["acting"] = acting
    header = (
        f"# Best of {len(frame)} trials of `hiedit tune {path}`: validation mean(ES, GS, LS) "
        f"{best.metrics['score']:.3f} over {best.metrics['sequences']} sequence(s) of {validation[0][1]} edits "
        f"from {data.train.source} (split {data.train.split}).\n"
    )
    if default_score is not None:
        header += f"# The entry's own values {defaults} scored {default_score:.3f} on the same sequences.\n"
    summary = {
        "best": entry,
        "score": best.metrics["score"],
        "defaults": defaults,
        "default_score": default_score,
        "trials": len(frame),
        "errors": sum(1 for r in results if r.error is not None),
    }
    write_text(out / "best.yaml", header + yaml.safe_dump(entry, sort_keys=False))
    write_text(out / "best.json", json.dumps(summary, indent=2))
    return summary
