"""SB3 baselines report: learning curves (a PNG made from the runs' TensorBoard logs) and a table of
``hiedit evaluate`` results.

    python benchmarks/sb3_report.py \\
        --runs maskable_ppo=checkpoints/maskable_ppo sac=checkpoints/sac \\
        --results maskable_ppo=benchmarks/results/sb3/maskable_ppo.json random_k=benchmarks/results/sb3/random_k.json \\
        --out benchmarks/results/sb3

Writes ``learning_curves.png`` (one panel per logged tag, one line per run, x in edits) and
``table.md`` (mean, ES, GS, LS, ES on the first 20% of edits, layers per edit, per agent).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from hiedit_env.files import atomic_write, write_text

TAGS = (
    "rollout/ep_rew_mean",
    "episode/mean",
    "edit/edit_success",
    "edit/locality",
    "edit/retention",
    "edit/sequence_gain",
    "eval/mean_reward",
)
TABLE_KEYS = ("mean", "ES", "GS", "LS", "LS_answer", "ES_first_20pct", "layers_per_edit", "seconds_per_edit")


def named_paths(items: list[str]) -> dict[str, Path]:
    pairs = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"expected NAME=PATH, got {item!r}")
        pairs[name] = Path(path)
    return pairs


def read_curves(run: Path) -> tuple[dict[str, list[tuple[int, float]]], int]:
    """Every tag of :data:`TAGS` the run logged, as (agent step, value) pairs, and the agent steps per edit."""
    per_edit = 1
    agent_json = run / "agent.json"
    if agent_json.is_file():
        wrapper = json.loads(agent_json.read_text())["config"]["env_wrapper"][0]
        name = wrapper if isinstance(wrapper, str) else next(iter(wrapper))
        if name.endswith(":ChooseLayersInTurn"):
            stats = json.loads((run / "train_stats.json").read_text())
            per_edit = max(1, round(stats["agent_steps"] / stats["steps"]))
    curves: dict[str, list[tuple[int, float]]] = {}
    for events_dir in sorted({p.parent for p in (run / "tensorboard").rglob("events.out.tfevents.*")}):
        events = EventAccumulator(str(events_dir)).Reload()
        for tag in set(events.Tags()["scalars"]) & set(TAGS):
            curves.setdefault(tag, []).extend((e.step, e.value) for e in events.Scalars(tag))
    return {tag: sorted(points) for tag, points in curves.items()}, per_edit


def plot(runs: dict[str, Path], out: Path) -> Path:
    data = {name: read_curves(path) for name, path in runs.items()}
    tags = [t for t in TAGS if any(t in curves for curves, _ in data.values())]
    if not tags:
        raise SystemExit("no TensorBoard scalars found under the given runs")
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
    path = out / "learning_curves.png"
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110))
    return path


def table(results: dict[str, Path], out: Path) -> Path:
    lines = ["| agent | " + " | ".join(TABLE_KEYS) + " |", "|---" * (len(TABLE_KEYS) + 1) + "|"]
    for name, path in results.items():
        metrics = json.loads(path.read_text())
        cells = [
            f"{metrics[k]:.3f}" if isinstance(metrics.get(k), float) else str(metrics.get(k, "")) for k in TABLE_KEYS
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    path = out / "table.md"
    write_text(path, "\n".join(lines) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="*", default=[], help="NAME=DIR of 'hiedit train' runs (TensorBoard logs)")
    parser.add_argument("--results", nargs="*", default=[], help="NAME=FILE of 'hiedit evaluate' results")
    parser.add_argument("--out", default="benchmarks/results/sb3", help="output directory")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.runs:
        print(f"learning curves: {plot(named_paths(args.runs), out)}")
    if args.results:
        path = table(named_paths(args.results), out)
        print(path.read_text())


if __name__ == "__main__":
    main()
