"""Running a sweep's unfinished cells as Ray Tune trials and keeping the results table up to date.

One Tune trial per cell, a function trainable with ``tune.with_resources`` (CPU threads, a GPU share
where CUDA is present). Locally ``ray.init`` starts Ray on this machine; ``address`` (or
``RAY_ADDRESS``) joins a running cluster, whose workers then need ``OUT`` on shared storage: each
worker writes its cell's files there itself. Ray's own experiment state lives in ``OUT/ray`` but is
never what decides what runs: a cell runs when its ``cell.json`` is missing, so a sweep started again
on a new machine with the same folder finishes only what is missing.
"""

from __future__ import annotations

import csv
import io
import json
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from hiedit_env.files import write_text

from .cell import CELL_FILE, ERROR_FILE, cell_dir, cell_status, finished_rows, is_finished, run_cell
from .grid import Cell, expand
from .spec import SweepSpec

RESULTS_CSV = "results.csv"
RESULTS_JSONL = "results.jsonl"
SWEEP_FILE = "sweep.json"
# Row values too nested for a CSV column; results.jsonl keeps them.
NESTED_COLUMNS = ("module_share", "curve")


def _trainable(config: dict[str, Any]) -> None:
    """The Tune function trainable: run one cell; a failure is written to the cell's ``error.json`` and
    reported as the trial's result, so it neither stops the other cells nor makes Tune retry it."""
    from ray import tune

    cell, out = Cell.from_config(config["cell"]), Path(config["out"])

    def report(event: dict[str, Any]) -> None:  # a result of the trial: the driver prints it and updates the table
        if event["status"] == "evaluated":
            event["recorded"] = len(finished_rows(out, cell))  # not `done`: Tune reads that key as the trial's end
        tune.report({**event, "cell": cell.id})

    try:
        record = run_cell(cell, out, [Path(p) for p in config.get("reuse_training", [])], report)
        tune.report({"status": "ok", "cell": cell.id, "recorded": len(record["rows"])})
    except Exception as err:  # noqa: BLE001  (any failure of a user's agent is the cell's result)
        message = f"{type(err).__name__}: {' '.join(str(err).split())}"
        write_text(
            cell_dir(out, cell) / ERROR_FILE,
            json.dumps({"error": message, "traceback": traceback.format_exc()}, indent=2),
        )
        tune.report({"status": "error", "cell": cell.id, "error": message})


def progress_line(result: dict[str, Any]) -> str:
    """The line ``hiedit sweep`` prints for a cell's report: a long evaluation's progress, an evaluation
    recorded, a warning, the cell finished or failed."""
    stamp = time.strftime("%H:%M:%S")
    if result["status"] == "editing":
        return (
            f"{stamp} {result['cell']}: {result['agent']} on sequence {result['evaluation_seed']}: "
            f"{result['edits']} of {result['num_edits']} edits"
        )
    if result["status"] == "evaluated":
        return (
            f"{stamp} {result['cell']}: {result['agent']} on sequence {result['evaluation_seed']} "
            f"({result['num_edits']} edits) mean {result['mean']:.3f}; {result['recorded']} of the cell's evaluations recorded"
        )
    if result["status"] == "ok":
        return f"{stamp} {result['cell']}: finished, {result['recorded']} evaluations"
    if result["status"] == "warning":
        return f"{stamp} {result['cell']}: warning: {result['message']}"
    return f"{stamp} {result['cell']}: failed: {result['error']}"


def collect_results(out: Path, cells: list[Cell]) -> list[dict[str, Any]]:
    """Rewrite ``OUT/results.jsonl`` and ``OUT/results.csv`` (atomically) from every finished evaluation of
    ``cells``, in their order: a row per evaluation, whether or not its cell has finished the others;
    returns the rows."""
    rows = [r for c in cells for r in finished_rows(out, c)]
    write_text(out / RESULTS_JSONL, "".join(json.dumps(r) + "\n" for r in rows))
    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns and k not in NESTED_COLUMNS]
    text = io.StringIO()
    writer = csv.DictWriter(text, columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text(out / RESULTS_CSV, text.getvalue())
    return rows


def _check_unchanged(out: Path, cells: list[Cell]) -> None:
    """Refuse to mix results: a finished cell must have been run with the settings the spec gives now."""
    for cell in cells:
        if is_finished(out, cell):
            done = json.loads((cell_dir(out, cell) / CELL_FILE).read_text())["cell"]
            now = json.loads(json.dumps(cell.as_config()))
            changed = sorted(k for k in now if k != "evaluations" and done.get(k) != now[k])
            if changed:
                raise ValueError(
                    f"cell {cell.id} in {out} finished with other settings ({', '.join(changed)}); "
                    "sweep into a new --out folder or give the changed entry a new name"
                )


def sweep_record(spec: SweepSpec, cells: list[Cell]) -> dict[str, Any]:
    """What ``OUT/sweep.json`` holds: the spec's name, path and ``compare`` pairs, the cell ids, the agent
    entries in the spec's order with the evaluations each plans per (model, data set, ``num_edits``):
    training seeds x evaluation seeds (what a report of an unfinished sweep counts its cells against),
    and the seeds."""
    planned = {
        entry.name: (len(spec.training_seeds) if entry.trains else 1) * len(spec.evaluation_seeds)
        for entry in spec.agents
    }
    return {
        "name": spec.name,
        "spec": str(spec.path),
        "compare": spec.compare,
        "cells": [c.id for c in cells],
        "models": spec.models,
        "datasets": [d.name for d in spec.datasets],
        "entries": [entry.name for entry in spec.agents],
        "planned": planned,
        "training_seeds": spec.training_seeds,
        "evaluation_seeds": spec.evaluation_seeds,
        "evaluation_num_edits": spec.evaluation_num_edits,
    }


def _check_entries(spec: SweepSpec, agents: list[str] | None) -> None:
    """Refuse an ``--agents`` filter that names an entry the spec does not have."""
    unknown = sorted(set(agents or ()) - {e.name for e in spec.agents})
    if unknown:
        raise ValueError(
            f"--agents: {', '.join(unknown)} not an entry of {spec.path} "
            f"(entries: {', '.join(e.name for e in spec.agents)})"
        )


def _cells_of(cells: list[Cell], agents: list[str] | None) -> list[Cell]:
    """The cells of the ``agents`` entries (all of them for ``None``)."""
    return cells if agents is None else [c for c in cells if any(name in agents for name, _ in c.variants)]


def sweep(
    spec: SweepSpec,
    out: str | Path,
    address: str | None = None,
    max_concurrent: int | None = None,
    max_cells: int | None = None,
    agents: list[str] | None = None,
    reuse_training: list[str | Path] | None = None,
) -> dict[str, Any]:
    """Run every unfinished cell of ``spec`` under ``out`` on Ray Tune; returns a summary
    (``cells``, ``already_finished``, ``ran``, ``failed`` with each failure's error, ``stopped`` with the
    cells a stopped sweep left unfinished or unstarted, ``remaining``, ``seconds``).

    ``max_cells`` runs at most that many unfinished cells, and ``agents`` (entry names) only the cells of
    those entries (a long sweep run in parts). A cell that trains copies the finished training of a cell
    of the sweep folders ``reuse_training`` that had exactly its training settings, instead of training
    again. Ray is started here unless it already runs in this process
    (then it is used as it is, e.g. by tests).
    """
    _check_entries(spec, agents)
    reuse = [Path(p).resolve() for p in reuse_training or ()]
    for folder in reuse:
        read_sweep(folder)  # a sweep folder, or one line saying what it is not
    out = Path(out).resolve()
    cells = expand(spec)
    _check_unchanged(out, cells)
    write_text(out / "spec.yaml", spec.path.read_text())
    write_text(out / SWEEP_FILE, json.dumps(sweep_record(spec, cells), indent=2))
    pending = [c for c in cells if not is_finished(out, c)]
    finished_before = len(cells) - len(pending)
    pending = _cells_of(pending, agents)
    if max_cells is not None:
        pending = pending[:max_cells]
    started = time.perf_counter()
    if pending:
        _run_on_tune(spec, out, pending, address, max_concurrent, cells, reuse)
    collect_results(out, cells)
    failed, stopped = {}, {}
    for c in pending:
        if is_finished(out, c):
            continue
        folder = cell_dir(out, c)
        if (folder / ERROR_FILE).is_file():
            failed[c.id] = json.loads((folder / ERROR_FILE).read_text())["error"]
        elif folder.is_dir():
            # no error recorded: Ctrl-C, a kill or a lost worker stopped it; its finished parts are kept
            stopped[c.id] = (
                f"started, not finished (the sweep was stopped or its worker lost; Ray's logs: {out / 'ray'})"
            )
        else:
            stopped[c.id] = "not started"
    return {
        "cells": len(cells),
        "already_finished": finished_before,
        "ran": len(pending) - len(failed) - len(stopped),
        "failed": failed,
        "stopped": stopped,
        "remaining": sum(not is_finished(out, c) for c in cells),
        "seconds": time.perf_counter() - started,
    }


def sweep_status(spec: SweepSpec, out: str | Path, agents: list[str] | None = None) -> list[tuple[str, str, str]]:
    """Each cell of ``spec`` (of the ``agents`` entries only, if given) as (cell id, state, what is done),
    read from ``out``'s files (:func:`~hiedit_agents.sweep.cell.cell_status`); nothing runs, nothing is written."""
    _check_entries(spec, agents)
    return [(c.id, *cell_status(Path(out), c)) for c in _cells_of(expand(spec), agents)]


def format_status(status: list[tuple[str, str, str]]) -> str:
    """The lines ``hiedit sweep --status`` prints: one per cell, then the count per state."""
    counts = Counter(state for _, state, _ in status)
    lines = [f"{cell}: {line}" for cell, _, line in status]
    states = ("finished", "started", "failed", "not started")
    lines.append(f"{len(status)} cells: " + ", ".join(f"{counts[s]} {s}" for s in states))
    return "\n".join(lines)


def _run_on_tune(
    spec: SweepSpec,
    out: Path,
    pending: list[Cell],
    address: str | None,
    max_concurrent: int | None,
    cells: list[Cell],
    reuse_training: list[Path],
) -> None:
    import ray
    from ray import tune

    if not ray.is_initialized():
        # address=None: RAY_ADDRESS if set, else a local Ray on this machine's cores
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    gpu = spec.gpu if spec.gpu is not None else (1.0 / (max_concurrent or 1) if torch.cuda.is_available() else 0)

    class ResultsTable(tune.Callback):
        """Rewrites the results table each time a cell reports (an evaluation or the cell finished), so it
        grows while the sweep runs; only this driver writes it."""

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
            collect_results(out, cells)
            print(progress_line(result), flush=True)

    trainable = tune.with_resources(_trainable, {"cpu": spec.threads, "gpu": gpu})
    tuner = tune.Tuner(
        trainable,
        param_space={
            "cell": tune.grid_search([c.as_config() for c in pending]),
            "out": str(out),
            "reuse_training": [str(p) for p in reuse_training],
        },
        # reuse_actors: a worker process runs one cell after another, so the environment's per-process
        # model cache (hiedit_env.models) loads each base model once per worker, not once per cell
        tune_config=tune.TuneConfig(max_concurrent_trials=max_concurrent, reuse_actors=True),
        run_config=tune.RunConfig(
            name=f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=str(out / "ray"),
            callbacks=[ResultsTable()],
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=0),
        ),
    )
    tuner.fit()


def format_summary(summary: dict[str, Any], out: Path) -> str:
    """The lines ``hiedit sweep`` prints at the end."""
    lines = [
        (
            f"{summary['cells']} cells: {summary['already_finished']} already finished, {summary['ran']} run now "
            f"({summary['seconds']:.0f} s), {len(summary['failed'])} failed, {len(summary['stopped'])} stopped, "
            f"{summary['remaining']} remaining; results in {Path(out) / RESULTS_CSV}"
        )
    ]
    lines += [f"  failed {cell}: {error}" for cell, error in summary["failed"].items()]
    lines += [f"  stopped {cell}: {why}" for cell, why in summary["stopped"].items()]
    return "\n".join(lines)


def read_sweep(out: Path) -> dict[str, Any]:
    """A sweep folder's ``sweep.json`` (name, spec, compare pairs, cell ids)."""
    file = Path(out) / SWEEP_FILE
    if not file.is_file():
        raise FileNotFoundError(
            f"{out} is not a sweep folder (no {SWEEP_FILE}); run 'hiedit sweep SPEC --out {out}' first"
        )
    return json.loads(file.read_text())
