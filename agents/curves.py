"""``hiedit curves``: training curves of ``hiedit train`` runs, as PNGs.

``hiedit report`` draws them for every training cell of a sweep; this command draws them for runs
trained with ``hiedit train``. Each run is a folder ``hiedit train`` wrote (or its ``train_stats.json``
alone), named ``NAME=PATH`` or by the path:

* ``validation_curves.png``, for runs that validated (the learned editors): the held-out validation
  mean against training edits, a star at the editor the run kept, and the training diagnostics of
  :class:`~hiedit_agents.learned.callbacks.Diagnostics` where recorded;
* ``learning_curves.png``, for runs with TensorBoard logs (SB3 agents, the learned editors): one
  panel per logged tag of :data:`TAGS`, one line per run, x in training edits.

    hiedit curves benchmarks/results/training/zsre_validated_seed*_{hiedit,rledit}.json \\
        --out benchmarks/results/zsre_validated
    hiedit curves maskable_ppo=checkpoints/maskable_ppo sac=checkpoints/sac --out benchmarks/results/sb3
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from hiedit_env.cli import common_options

from .sweep.report import save_figure, training_plot

TAGS = (
    "rollout/ep_rew_mean",
    "episode/mean",
    "edit/edit_success",
    "edit/locality",
    "edit/retention",
    "edit/sequence_gain",
    "eval/mean_reward",
)
STATS_FILE = "train_stats.json"


def named_runs(items: list[str]) -> list[tuple[str | None, Path]]:
    """``(name, path)`` of ``NAME=PATH`` or ``PATH`` items (``None``: unnamed), each path checked."""
    runs = []
    for item in items:
        name, sep, path = item.partition("=")
        if not sep:
            name, path = "", item
        if (sep and not name) or not path:
            raise ValueError(f"expected NAME=PATH or PATH, got {item!r}")
        if not Path(path).exists():
            raise ValueError(f"{path!r} does not exist (a 'hiedit train' folder or its {STATS_FILE})")
        runs.append((name or None, Path(path)))
    return runs


def read_stats(path: Path) -> dict[str, Any] | None:
    """The run's training statistics (``path`` a run folder or the file itself), ``None`` if it has none."""
    file = path / STATS_FILE if path.is_dir() else path
    if not file.is_file():
        return None
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{file} is not valid JSON: {err}") from None


def read_learning_curves(run: Path) -> tuple[dict[str, list[tuple[int, float]]], int]:
    """Every tag of :data:`TAGS` the run's TensorBoard logs hold, as (agent step, value) pairs, and the
    agent steps per edit (several for an agent that chooses one module a step)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    per_edit = 1
    agent_json = run / "agent.json"
    if agent_json.is_file():
        wrapper = json.loads(agent_json.read_text())["config"].get("env_wrapper")
        if wrapper:
            name = wrapper[0] if isinstance(wrapper[0], str) else next(iter(wrapper[0]))
            stats = read_stats(run)
            if name.endswith(":ChooseLayersInTurn") and stats:
                per_edit = max(1, round(stats["agent_steps"] / stats["steps"]))
    curves: dict[str, list[tuple[int, float]]] = {}
    for events_dir in sorted({p.parent for p in (run / "tensorboard").rglob("events.out.tfevents.*")}):
        events = EventAccumulator(str(events_dir)).Reload()
        for tag in set(events.Tags()["scalars"]) & set(TAGS):
            curves.setdefault(tag, []).extend((e.step, e.value) for e in events.Scalars(tag))
    return {tag: sorted(points) for tag, points in curves.items()}, per_edit


def learning_plot(runs: dict[str, Path], path: Path) -> Path | None:
    """One panel per logged tag of :data:`TAGS`, one line per run; ``None`` when no run logged any."""
    data = {name: read_learning_curves(run) for name, run in runs.items() if run.is_dir()}
    tags = [t for t in TAGS if any(t in curves for curves, _ in data.values())]
    if not tags:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, len(tags))
    rows = -(-len(tags) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.flat[len(tags) :]:
        ax.set_visible(False)
    colours = {name: f"C{i}" for i, name in enumerate(data)}  # one colour per run in every panel
    for ax, tag in zip(axes.flat, tags):
        for name, (curves, per_edit) in data.items():
            if tag in curves:
                steps, values = zip(*curves[tag])
                ax.plot([s / per_edit for s in steps], values, label=name, color=colours[name])
        ax.set_title(tag)
        ax.set_xlabel("training edits")
        ax.grid(alpha=0.3)
    handles = {label: handle for ax in axes.flat for handle, label in zip(*ax.get_legend_handles_labels())}
    fig.legend(handles.values(), handles.keys(), loc="lower right", fontsize="small")
    fig.tight_layout()
    return save_figure(fig, path)


def run_curves(args: argparse.Namespace) -> None:
    """``hiedit curves``: write the figures the runs have data for; an error if they have none."""
    runs = named_runs(args.runs)
    out = Path(args.out_dir)
    validated = {}
    for name, run in runs:
        stats = read_stats(run)
        if stats and stats.get("validations"):
            validated[name or f"{stats.get('agent', run.stem)}, seed {stats.get('seed', '?')}"] = stats
    written = []
    if validated:
        written.append(
            training_plot(validated, out / "validation_curves.png", "held-out validation sequence during training")
        )
    learning = learning_plot({name or str(run): run for name, run in runs}, out / "learning_curves.png")
    if learning is not None:
        written.append(learning)
    if not written:
        raise ValueError(
            f"no run has validations in its {STATS_FILE} or TensorBoard logs of {', '.join(TAGS)}: nothing to draw"
        )
    for path in written:
        print(f"wrote {path}")


def add_curves_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``curves`` subcommand to ``sub``."""
    parser = sub.add_parser(
        "curves",
        help="training curves of 'hiedit train' runs: validation and TensorBoard learning curves as PNGs",
        description=__doc__.split("\n\n")[0],
        parents=[common_options()],
    )
    parser.add_argument(
        "runs", nargs="+", metavar="[NAME=]RUN", help=f"a 'hiedit train' folder or its {STATS_FILE}, optionally named"
    )
    parser.add_argument(
        "--out", dest="out_dir", required=True, help="folder for validation_curves.png and learning_curves.png"
    )
    parser.set_defaults(run=run_curves)
    return parser
