"""Running one cell in a worker: train (unless the agent does not learn), then evaluate every sequence.

A cell's folder ``OUT/cells/<id>/`` holds ``checkpoint/`` (with ``train_stats.json`` and ``tensorboard/``),
``evaluations/<agent entry>/n<num_edits>_seed<seed>.json`` (full metrics, protocols, curve points; while a
sequence runs, ``n<num_edits>_seed<seed>.snapshot.pt`` records it so far) and, last of all,
``cell.json``: the cell's result rows. Every step is skipped when its file exists, so a cell that was
interrupted continues where it stopped (an interrupted training starts again unless the agent can
resume from its progress folder), and a finished cell is never run again.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import shutil
import subprocess
import time
import warnings
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import gymnasium as gym
import torch

from hiedit_env.files import write_text

from ..common import commands
from ..common.base import Agent
from ..common.checkpoint import MANIFEST_FILE, CheckpointError, checkpoint_identity, load_torch, progress_folder
from ..common.evaluation import SNAPSHOT_SECONDS, SNAPSHOT_SUFFIX, EpisodeSnapshot, run_episode
from ..registry import agent_class
from .grid import Cell, training_key

CELL_FILE = "cell.json"
ERROR_FILE = "error.json"
TRAINED_IN_FILE = "trained_in.json"  # in a checkpoint copied from another sweep's cell: which one
# A sequence longer than this reports its progress every that many edits (a 1000-edit one takes hours).
PROGRESS_EVERY = 100
# Nested values of episode_metrics that the per-evaluation JSON keeps and the flat table leaves out.
NESTED_METRICS = ("per_edit", "protocols", "module_share")


def cell_dir(out: Path, cell: Cell) -> Path:
    return Path(out) / "cells" / cell.id


def is_finished(out: Path, cell: Cell) -> bool:
    """Whether the cell's result file exists (our own record, whatever Ray's experiment state says)."""
    return (cell_dir(out, cell) / CELL_FILE).is_file()


def _env_args(cell: Cell, source: str, split: str, num_edits: int) -> argparse.Namespace:
    # make_env of `hiedit train` / `hiedit evaluate`, so a sweep's cell and a command line build the same environment
    return argparse.Namespace(
        model=cell.model,
        dataset=source,
        split=split,
        num_edits=num_edits,
        env_kwargs=cell.env_kwargs,
        threads=cell.threads,
        low_memory=False,
    )


def train(cell: Cell, folder: Path) -> dict[str, Any]:
    """Train the cell's agent with ``hiedit train``'s own path into ``folder/checkpoint`` (a resumable
    agent continues the progress an interrupted cell left); returns its statistics."""
    checkpoint = folder / "checkpoint"
    cls = agent_class(cell.agent)
    args = _env_args(cell, cell.train_source, cell.train_split, cell.training_num_edits)
    resume = cls.resumable and progress_folder(checkpoint) is not None
    args.__dict__.update(
        agent=cell.agent,
        agent_kwargs={} if resume else cell.agent_kwargs,
        steps=cell.training_steps,
        seed=cell.training_seed,
        out_dir=checkpoint,
        resume=resume,
        checkpoint_every=None,
    )
    return commands.train_agent(args, progress=False)


def evaluate(
    cell: Cell,
    folder: Path,
    seed: int,
    num_edits: int,
    acting: dict[str, Any],
    on_edits: Callable[[int], None] | None = None,
    snapshot: Path | None = None,
    on_agent: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """One evaluation sequence, as ``hiedit evaluate`` runs it, with the acting options ``acting`` and
    ES/GS/LS after every ``num_edits / curve_points`` edits when the cell asks for curve points; a
    sequence longer than :data:`PROGRESS_EVERY` edits calls ``on_edits(edits done)`` every that many.
    With ``snapshot`` (a file), the sequence is recorded there every :data:`SNAPSHOT_SECONDS` and an
    interrupted one continues from its last record (:class:`~hiedit_agents.common.evaluation.EpisodeSnapshot`).
    A trained agent's :meth:`~hiedit_agents.common.base.Agent.fingerprint` is recorded as ``agent_sha256``,
    and given to ``on_agent`` before the sequence starts."""
    cls = agent_class(cell.agent)
    args = _env_args(cell, cell.eval_source, cell.eval_split, num_edits)
    agent: Agent
    trained_by: dict[str, Any] = {}
    made_by: dict[str, str] = {}
    if cell.training_seed is not None:
        checkpoint = folder / "checkpoint"
        config = cls.saved_meta(checkpoint, "the cell's checkpoint")["config"]
        env = commands.make_env(args, cls, {**config, **acting}, evaluation=True)
        agent = cls.load(checkpoint, env, **acting)
        # a snapshot continues only the checkpoint it was made with
        trained_by = {"checkpoint": checkpoint_identity(checkpoint)}
        made_by = {"agent_sha256": agent.fingerprint()}  # the trained state it acts with, not its files
        if on_agent is not None:
            on_agent(made_by["agent_sha256"])
    else:
        kwargs = {**cell.agent_kwargs, **acting}
        env = commands.make_env(args, cls, kwargs, evaluation=True)
        agent = commands.build_agent(cls, env, kwargs)

    def step(info: dict[str, Any], terminated: bool) -> None:
        done = info["edit_index"] + 1
        if on_edits is not None and not terminated and done % PROGRESS_EVERY == 0:
            on_edits(done)

    long = num_edits > PROGRESS_EVERY
    started = time.perf_counter()
    metrics = run_episode(
        agent,
        env,
        seed,
        progress=False,
        on_step=step if long else None,
        curve_points=cell.curve_points,
        snapshot=None if snapshot is None else EpisodeSnapshot(snapshot, SNAPSHOT_SECONDS, trained_by),
    )
    wall, resumed = time.perf_counter() - started, {}
    if snapshot is not None:  # the sequence's time over all the runs it took
        wall, resumed = metrics.pop("episode_seconds"), {"resumed_at_edit": metrics.pop("resumed_at_edit")}
    curve = metrics.pop("curve", [])
    device = str(env.unwrapped.model.device)
    env.close()
    return {
        "metrics": metrics,
        "curve": curve,
        # what the agent acted with, presets resolved (a locate-then-edit agent's model-family YAML), so a
        # changed preset shows in the record even where the spec's agent-kwargs did not change
        "agent_config": agent.config(),
        **made_by,
        "wall_seconds": wall,
        **resumed,
        "device": device,
        **commands.peak_memory_mb(),
        **provenance(),
    }


def row(cell: Cell, entry: str, seed: int, num_edits: int, result: dict[str, Any]) -> dict[str, Any]:
    """The results-table row of one evaluation: who, on what, every scalar metric, cost and provenance."""
    metrics = result["metrics"]
    return {
        "spec": cell.spec,
        "model": cell.model,
        "dataset": cell.dataset,
        "agent": entry,
        "agent_class": cell.agent,
        "training_seed": cell.training_seed,
        "agent_sha256": result.get("agent_sha256"),
        "evaluation_seed": seed,
        "num_edits": num_edits,
        **{k: v for k, v in metrics.items() if k not in NESTED_METRICS and k != "num_edits"},
        "peak_rss_mb": result["peak_rss_mb"],
        "wall_seconds": result["wall_seconds"],
        "device": result["device"],
        **{k: result[k] for k in ("versions", "git_commit", "machine")},
        "module_share": metrics.get("module_share"),
        "curve": result["curve"],
    }


def source_commit() -> str:
    """The git commit of this package's source, ``-dirty`` appended when tracked files differ from it
    (empty outside a git checkout)."""
    try:
        return subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=40"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


# Taken when the code is imported, not when a row is written: a long sweep's checkout may move on while
# its workers run the code they imported.
SOURCE_COMMIT = source_commit()


@functools.lru_cache(maxsize=1)
def provenance() -> dict[str, str]:
    """Package versions, the git commit of the source this worker imported, and the machine, once per
    worker process."""
    versions = {}
    for package in ("hiedit-gym", "torch", "transformers", "gymnasium", "ray"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = ""
    return {
        "versions": " ".join(f"{k}=={v}" for k, v in versions.items() if v),
        "git_commit": SOURCE_COMMIT,
        "machine": machine_description(),
    }


def machine_description() -> str:
    """What a reader needs to compare seconds across machines: the CPU model, its cores, memory and system,
    e.g. ``Intel(R) Xeon(R) Processor @ 2.10GHz, 2 cores, 24 GiB, Linux x86_64``."""
    cpu = platform.processor() or platform.machine()
    try:  # Linux names the model in /proc/cpuinfo; platform.processor() there is only the architecture
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    parts = [cpu, f"{os.cpu_count()} cores"]
    try:
        parts.append(f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB")
    except (AttributeError, ValueError, OSError):  # sysconf names are POSIX only
        pass
    return ", ".join(parts + [f"{platform.system()} {platform.machine()}"])


def trained_elsewhere(cell: Cell, sweeps: Sequence[Path]) -> Path | None:
    """The folder of a finished cell of one of ``sweeps`` whose training had exactly ``cell``'s settings
    (:func:`~hiedit_agents.sweep.grid.training_key`), e.g. the 100-edit sweep's cell for the 1000-edit
    sweep's of the same training; ``None`` if there is none."""
    key = training_key(cell.as_config())
    for sweep in sweeps:
        for record_file in sorted(Path(sweep).glob(f"cells/*/{CELL_FILE}")):
            config = json.loads(record_file.read_text())["cell"]
            checkpoint = record_file.parent / "checkpoint"
            # the key holds the training seed: a cell that did not train never matches one that does
            if (
                training_key(config) == key
                and (checkpoint / "train_stats.json").is_file()
                and (checkpoint / MANIFEST_FILE).is_file()
            ):
                return record_file.parent
    return None


def _copy_training(source: Path, folder: Path) -> None:
    """Copy ``source/checkpoint`` to ``folder/checkpoint`` whole or not at all (a copy stopped half-way
    leaves only a temporary folder, removed by the next try)."""
    partial = folder / "checkpoint.copying"
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(source / "checkpoint", partial)
    write_text(partial / TRAINED_IN_FILE, json.dumps({"cell": str(source.resolve())}, indent=2))
    partial.rename(folder / "checkpoint")


def evaluation_file(out: Path, cell: Cell, entry: str, seed: int, num_edits: int) -> Path:
    """Where one evaluation of ``cell`` (agent entry ``entry``) is recorded."""
    return cell_dir(out, cell) / "evaluations" / entry / f"n{num_edits}_seed{seed}.json"


def finished_rows(out: Path, cell: Cell) -> list[dict[str, Any]]:
    """The results-table rows of ``cell``'s finished evaluations: all of a finished cell's, and those an
    unfinished one has recorded so far (a 1000-edit cell's sequences each take hours)."""
    folder = cell_dir(out, cell)
    if (folder / CELL_FILE).is_file():
        return json.loads((folder / CELL_FILE).read_text())["rows"]
    rows = []
    for entry, _ in cell.variants:
        for seed, num_edits in cell.evaluations:
            file = evaluation_file(out, cell, entry, seed, num_edits)
            if file.is_file():
                rows.append(row(cell, entry, seed, num_edits, json.loads(file.read_text())))
    return rows


def other_trainings(out: Path, cell: Cell, fingerprint: str, made_now: bool) -> list[str]:
    """What to warn of when ``cell``'s recorded evaluations were made by another trained agent than the one
    whose :meth:`~hiedit_agents.common.base.Agent.fingerprint` is ``fingerprint``: the cell's rows would mix
    two trainings of one seed. This happens when a sweep continues on a machine without the checkpoint
    (git keeps result files, not checkpoints) and training again there does not reproduce it bit for bit
    (another CPU, more than one thread). Evaluations written before evaluations recorded the fingerprint
    are worth a warning only when the checkpoint was made (trained or copied) in this run."""
    other, unknown = [], []
    for entry, _ in cell.variants:
        for seed, num_edits in cell.evaluations:
            file = evaluation_file(out, cell, entry, seed, num_edits)
            if file.is_file():
                made_by = json.loads(file.read_text()).get("agent_sha256")
                if made_by is None:
                    unknown.append(f"{entry}/{file.name}")
                elif made_by != fingerprint:
                    other.append(f"{entry}/{file.name}")
    messages = []
    if other:
        messages.append(
            f"{len(other)} recorded evaluation(s) ({', '.join(other)}) were made by another trained agent than "
            f"the cell's checkpoint, so its rows mix two trainings of seed {cell.training_seed}; remove them to "
            "evaluate every sequence with this checkpoint"
        )
    if made_now and unknown:
        messages.append(
            f"its checkpoint was made again, with {len(unknown)} evaluation(s) recorded ({', '.join(unknown)}) by "
            "a trained agent they do not name (written before evaluations recorded it): whether the cell's rows "
            "come from one training cannot be told from its files"
        )
    return messages


def _saved_at(path: Path) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(path.stat().st_mtime))


def cell_status(out: Path, cell: Cell) -> tuple[str, str]:
    """Where ``cell`` stands, from its files alone (nothing is run or written): a state (``finished``,
    ``failed``, ``started``, ``not started``) and a line saying what is done and what is part-way: the
    training (finished, or when its progress was last saved), the evaluations recorded, and each
    sequence a snapshot holds, at the edit it reached."""
    folder = cell_dir(out, cell)
    planned = len(cell.variants) * len(cell.evaluations)
    if (folder / CELL_FILE).is_file():
        return "finished", f"finished, {planned} evaluation{'s' * (planned != 1)}"
    if not folder.is_dir():
        return "not started", "not started"
    parts = []
    if cell.training_seed is not None:
        checkpoint = folder / "checkpoint"
        if (checkpoint / "train_stats.json").is_file():
            parts.append("trained")
        elif (progress := progress_folder(checkpoint)) is not None and (progress / MANIFEST_FILE).is_file():
            parts.append(f"training, its progress saved at {_saved_at(progress / MANIFEST_FILE)}")
        else:
            parts.append("not trained: no checkpoint or saved training progress here")
    recorded = len(finished_rows(out, cell))
    parts.append(f"{recorded} of {planned} evaluations recorded")
    for entry, _ in cell.variants:
        for seed, num_edits in cell.evaluations:
            file = evaluation_file(out, cell, entry, seed, num_edits)
            snapshot = file.with_name(file.stem + SNAPSHOT_SUFFIX)
            if not file.is_file() and snapshot.is_file():
                try:
                    edits = len(load_torch(snapshot, "cpu")["act_seconds"])
                except (CheckpointError, KeyError, TypeError):
                    parts.append(f"{entry} sequence {seed}: an unreadable snapshot (the sequence starts over)")
                    continue
                parts.append(
                    f"{entry} sequence {seed} at edit {edits} of {num_edits} (snapshot written {_saved_at(snapshot)})"
                )
    error = folder / ERROR_FILE
    if error.is_file():
        return "failed", "; ".join([*parts, f"failed: {json.loads(error.read_text())['error']}"])
    return "started", "; ".join(parts)


def run_cell(
    cell: Cell,
    out: Path,
    reuse_training: Sequence[Path] = (),
    on_report: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train and evaluate ``cell`` under ``out``, skipping every part whose file exists; write ``cell.json``.

    A cell that trains first looks for a finished training with its exact settings in the sweep folders
    ``reuse_training`` and, if one is there, copies that checkpoint instead of training again (the
    record's ``trained_in`` names it). ``on_report`` is called with the progress of each evaluation this
    call runs: ``status`` ``"editing"`` with ``edits`` done so far (sequences longer than
    :data:`PROGRESS_EVERY` edits), ``"evaluated"`` with its mean once it is recorded (the sweep
    prints them and updates its results table), and ``"warning"`` with a ``message`` (also warned) when
    the cell's recorded evaluations came from another training (:func:`other_trainings`). Returns the
    cell's record (also what ``cell.json`` holds). The caller handles errors.
    """
    folder = cell_dir(out, cell)
    if (folder / CELL_FILE).is_file():
        return json.loads((folder / CELL_FILE).read_text())
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ERROR_FILE).unlink(missing_ok=True)  # an earlier run's error; this run writes its own if it fails
    if cell.threads:
        torch.set_num_threads(cell.threads)
    gym.logger.min_level = 40  # the checker's warnings once per environment would fill every worker's log
    checkpoint = folder / "checkpoint"
    stats = None
    stats_file = checkpoint / "train_stats.json"
    made_now = not stats_file.is_file()  # trained, or copied from another sweep, in this run
    if cell.training_seed is not None:
        if not checkpoint.exists() and (source := trained_elsewhere(cell, reuse_training)) is not None:
            _copy_training(source, folder)
        stats = json.loads(stats_file.read_text()) if stats_file.is_file() else train(cell, folder)
    checked = cell.training_seed is None  # an untrained agent's evaluations cannot come from two trainings

    def check_training(fingerprint: str) -> None:
        nonlocal checked
        if not checked:
            for message in other_trainings(out, cell, fingerprint, made_now):
                warnings.warn(f"{cell.id}: {message}", stacklevel=2)
                if on_report is not None:  # a sweep's workers do not log to its console: the report does
                    on_report({"status": "warning", "message": message})
            checked = True

    for entry, acting in cell.variants:
        for seed, num_edits in cell.evaluations:
            file = evaluation_file(out, cell, entry, seed, num_edits)
            if file.is_file():
                continue
            which = {"agent": entry, "evaluation_seed": seed, "num_edits": num_edits}

            def editing(edits: int, which: dict[str, Any] = which) -> None:
                if on_report is not None:
                    on_report({"status": "editing", **which, "edits": edits})

            snapshot = file.with_name(file.stem + SNAPSHOT_SUFFIX)
            result = evaluate(cell, folder, seed, num_edits, acting, editing, snapshot, check_training)
            write_text(file, json.dumps(result, indent=2))
            snapshot.unlink(missing_ok=True)
            if on_report is not None:
                on_report({"status": "evaluated", **which, "mean": result["metrics"]["mean"]})
    record = {"cell": cell.as_config(), "train_stats": stats, "rows": finished_rows(out, cell)}
    if (checkpoint / TRAINED_IN_FILE).is_file():
        record["trained_in"] = json.loads((checkpoint / TRAINED_IN_FILE).read_text())["cell"]
    write_text(folder / CELL_FILE, json.dumps(record, indent=2, default=str))
    return record
