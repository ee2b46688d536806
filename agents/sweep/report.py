"""``hiedit report``: one or more sweep folders -> ``report.md`` with intervals, plus PNG figures, and the
leaderboard table (``leaderboard.md``, and a README's marked section with ``--readme``).

Statistics follow rliable's reporting (Agarwal et al., 2021), written here in a few lines because its
repository is archived: a cell is one (training seed x evaluation sequence) result; the point estimate
is the mean over cells of mean(ES, GS, LS); its 95% interval is a percentile bootstrap that resamples
cells *within each training seed* (a stratified bootstrap: every resample keeps each seed's cell
count, so seeds are never dropped or doubled as a whole); the interquartile mean is the mean of the
middle 50% of cells (``scipy.stats.trim_mean``); the probability of improvement P(X > Y) is the share
of cell pairs where X scores above Y, ties counting half. ``scipy.stats.bootstrap`` is not used for
the interval: it rejects a stratum of one cell (one evaluation sequence per training seed).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hiedit_env.files import atomic_write, write_text

from .cell import CELL_FILE
from .grid import slug
from .runner import RESULTS_JSONL, read_sweep

SCORE = "mean"
CONFIDENCE = 0.95
RESAMPLES = 10_000
PROTOCOL = (
    "ES/GS: teacher-forced token accuracy of the new answer on the edit prompt / paraphrase; LS: agreement "
    "with the unedited model's argmax on unrelated prompts"
)
# The lines of a README between which `hiedit report --readme` writes the leaderboard.
LEADERBOARD_START = "<!-- leaderboard:start -->"
LEADERBOARD_END = "<!-- leaderboard:end -->"


def stratified_bootstrap_interval(
    strata: Sequence[Sequence[float]], confidence: float = CONFIDENCE, resamples: int = RESAMPLES, seed: int = 0
) -> tuple[float, float]:
    """Percentile interval of the mean over all values, resampling with replacement within each stratum."""
    rng = np.random.default_rng(seed)
    total = np.zeros(resamples)
    count = 0
    for values in strata:
        values = np.asarray(values, dtype=float)
        total += values[rng.integers(0, len(values), (resamples, len(values)))].sum(axis=1)
        count += len(values)
    means = total / count
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return float(low), float(high)


def probability_of_improvement(x: Sequence[float], y: Sequence[float]) -> float:
    """P(X > Y) over all pairs of cells, ties counting half (rliable's per-task estimate)."""
    x, y = np.asarray(x, dtype=float)[:, None], np.asarray(y, dtype=float)[None, :]
    return float(((x > y) + 0.5 * (x == y)).mean())


def interquartile_mean(values: Sequence[float]) -> float:
    """Mean of the middle 50% of values (scipy's trimmed mean, a quarter cut from each end)."""
    # scipy.stats takes a second to import; only reports need it
    from scipy.stats import trim_mean

    return float(trim_mean(np.asarray(values, dtype=float), 0.25))


def _fmt(value: float | None, digits: int = 3) -> str:
    return "" if value is None or np.isnan(value) else f"{value:.{digits}f}"


def _interval(s: dict[str, Any]) -> str:
    """`` [low, high]`` of a summary, empty for a single cell, whose bootstrap interval is a point."""
    return f" [{s['low']:.3f}, {s['high']:.3f}]" if s["cells"] > 1 else ""


def _mean(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return float(np.mean(values)) if values else None


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The report's numbers for one (model, dataset, num_edits, agent) group of result rows."""
    strata: dict[Any, list[float]] = defaultdict(list)
    for r in rows:
        strata[r.get("training_seed")].append(r[SCORE])
    scores = [s for values in strata.values() for s in values]
    low, high = stratified_bootstrap_interval(list(strata.values()))
    return {
        "cells": len(scores),
        "training_seeds": len(strata),
        "mean": float(np.mean(scores)),
        "low": low,
        "high": high,
        "iqm": interquartile_mean(scores),
        "scores": scores,
        # the workers' high-water mark: a worker that ran other cells before counts their peak too
        "peak_rss_mb": max((r["peak_rss_mb"] for r in rows if r.get("peak_rss_mb") is not None), default=None),
        **{
            k: _mean(rows, k)
            for k in (
                "ES",
                "GS",
                "LS",
                "efficacy",
                "ES_first_20pct",
                "layers_per_edit",
                "candidates",
                "seconds_per_edit",
                "agent_seconds_per_edit",
            )
        },
    }


def load_sweeps(folders: Sequence[str | Path]) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """Each sweep folder's ``sweep.json`` and result rows (none yet for a sweep whose cells are all unfinished)."""
    sweeps = []
    for folder in folders:
        meta = read_sweep(Path(folder))
        file = Path(folder) / RESULTS_JSONL
        rows = [json.loads(line) for line in file.read_text().splitlines() if line.strip()] if file.is_file() else []
        sweeps.append((meta, rows))
    return sweeps


def load_rows(folders: Sequence[str | Path]) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """Every result row of the sweep folders and the union of their ``compare`` pairs."""
    rows, compare = [], []
    for meta, sweep_rows in load_sweeps(folders):
        compare += [tuple(p) for p in meta["compare"] if tuple(p) not in compare]
        rows += sweep_rows
    if not rows:
        raise ValueError(f"no finished cells in {', '.join(map(str, folders))}")
    return rows, compare


def leaderboard(folders: Sequence[str | Path], command: str) -> str:
    """The leaderboard table of the sweep folders as Markdown: one row per agent entry (in the specs'
    order), one column per (data set, ``num_edits``) with mean(ES, GS, LS), its 95% stratified bootstrap
    interval and the finished against the planned evaluations; ``—`` where an entry has none yet, empty
    where its spec has no such cell. Under it, the protocol, seeds, machine and ``command`` (how to
    regenerate it). Unfinished sweeps render as far as they go."""
    sweeps = load_sweeps(folders)
    entries: list[str] = []
    columns: dict[tuple[str, str, int], dict[str, Any]] = {}  # (model, dataset, num_edits) -> that sweep's sweep.json
    for meta, rows in sweeps:
        # sweep.json from before it listed entries and data sets: what the finished rows name
        names = meta.get("entries") or list(dict.fromkeys(r["agent"] for r in rows))
        entries += [e for e in names if e not in entries]
        keys = (
            [(m, d, n) for m in meta["models"] for d in meta["datasets"] for n in meta["evaluation_num_edits"]]
            if "datasets" in meta
            else list(dict.fromkeys((r["model"], r["dataset"], r["num_edits"]) for r in rows))
        )
        columns.update({key: {**meta, "entries": names} for key in keys if key not in columns})
    groups: dict[tuple, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for _, rows in sweeps:
        for r in rows:
            groups[(r["model"], r["dataset"], r["num_edits"])][r["agent"]].append(r)
    models = {model for model, _, _ in columns}
    header = [
        f"{dataset}, {n} edits" + (f", {slug(model)}" if len(models) > 1 else "") for model, dataset, n in columns
    ]
    lines = ["| agent | " + " | ".join(header) + " |", "|---" * (len(columns) + 1) + "|"]
    for entry in entries:
        cells = []
        for key, meta in columns.items():
            rows = groups[key].get(entry, [])
            planned = meta.get("planned", {}).get(entry)
            of = f"/{planned}" if planned else ""
            if rows:
                s = summarize(rows)
                cells.append(f"{s['mean']:.3f}{_interval(s)} · {s['cells']}{of}")
            else:
                cells.append("—" if entry in meta["entries"] else "")
        lines.append(f"| {entry} | " + " | ".join(cells) + " |")
    all_rows = [r for _, rows in sweeps for r in rows]
    machines = sorted({f"{r['machine']} ({r['device']})" for r in all_rows if r.get("machine")})
    seeds = "; ".join(
        f"{meta['name']}: training seeds {_seeds(meta, rows, 'training')}, evaluation sequences "
        f"{_seeds(meta, rows, 'evaluation')}"
        for meta, rows in sweeps
    )
    lines += [
        "",
        (
            f"mean(ES, GS, LS) [{CONFIDENCE:.0%} stratified bootstrap interval; none for a single cell] · "
            "finished/planned cells, a cell being one training seed x one held-out evaluation sequence; — an "
            f"entry with none finished yet, blank where its spec plans none. {PROTOCOL}. Models: "
            f"{', '.join(sorted(models))}. {seeds}. Machine{'s' if len(machines) > 1 else ''}: "
            f"{'; '.join(machines) or 'no finished cells yet'}. "
            f"Generated by `{command}`."
        ),
    ]
    return "\n".join(lines) + "\n"


def _seeds(meta: dict[str, Any], rows: list[dict[str, Any]], kind: str) -> str:
    """A sweep's training or evaluation seeds: its spec's, else (an older sweep.json) those its rows name."""
    seeds = meta.get(f"{kind}_seeds") or sorted({r[f"{kind}_seed"] for r in rows if r.get(f"{kind}_seed") is not None})
    return ", ".join(map(str, seeds)) or "none"


def replace_between_markers(
    path: str | Path, text: str, start: str = LEADERBOARD_START, end: str = LEADERBOARD_END
) -> Path:
    """Replace what lies between the lines ``start`` and ``end`` of the file ``path`` with ``text`` (atomically);
    a file without exactly one such pair, in that order, is refused in one line and left as it is."""
    path = Path(path)
    try:
        content = path.read_text()
    except OSError as err:
        raise OSError(f"--readme {str(path)!r}: {err.strerror or err}") from None
    first, last = content.find(start), content.find(end)
    if first < 0 or last < first or content.count(start) != 1 or content.count(end) != 1:
        raise ValueError(
            f"--readme {str(path)!r} needs one line {start} and, after it, one line {end} around the leaderboard"
        )
    return write_text(path, content[: first + len(start)] + "\n" + text + content[last:])


def build_report(folders: Sequence[str | Path], out: str | Path, readme: str | Path | None = None) -> Path:
    """Write ``out/report.md`` and its figures, and ``out/leaderboard.md`` (:func:`leaderboard`), for the
    sweep folders; with ``readme``, the leaderboard also replaces that file's text between its
    ``<!-- leaderboard:start -->`` and ``<!-- leaderboard:end -->`` lines. Returns the report's path."""
    out = Path(out)
    rows, compare = load_rows(folders)
    command = f"hiedit report {' '.join(map(str, folders))} --out {out}" + (f" --readme {readme}" if readme else "")
    board = leaderboard(folders, command)
    if readme is not None:  # refused before anything is written
        replace_between_markers(readme, board)
    write_text(out / "leaderboard.md", board)
    groups: dict[tuple, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        groups[(r["model"], r["dataset"], r["num_edits"])][r["agent"]].append(r)
    lines = [
        "# Sweep report",
        "",
        (
            f"Sweeps: {', '.join(sorted({r['spec'] for r in rows}))}. A cell is one (training seed x evaluation "
            f"sequence); **mean** is mean(ES, GS, LS) averaged over cells, with a {CONFIDENCE:.0%} stratified "
            f"bootstrap interval ({RESAMPLES} resamples within training seeds) and the interquartile mean (IQM). "
            f"{PROTOCOL}; efficacy (CounterFact): NLL(new) < NLL(old); "
            "first 20%: ES of the sequence's first fifth after the whole sequence (retention); s per edit: the "
            "agent's act plus the environment's step (apply the update, score it, trace the next edit), the agent's act in "
            "brackets, scoring of curve points left out; peak RSS: the highest resident memory "
            "of the worker processes that ran the agent's cells (a worker counts the cells it ran before too)."
        ),
        "",
    ]
    for (model, dataset, num_edits), agents in groups.items():
        stats = {agent: summarize(agent_rows) for agent, agent_rows in agents.items()}
        key = f"{slug(model)}_{dataset}_n{num_edits}"
        lines += [
            f"## {dataset}, {num_edits}-edit sequences, {model}",
            "",
            (
                "| agent | cells (training seeds) | **mean** [95% CI] | IQM | ES / GS / LS | efficacy | first 20% | "
                "layers per edit | s per edit (agent) | peak RSS GB |"
            ),
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for agent, s in sorted(stats.items(), key=lambda item: -item[1]["mean"]):
            layers = f"{s['layers_per_edit']:.1f} of {s['candidates']:.0f}" if s["candidates"] else ""
            lines.append(
                f"| {agent} | {s['cells']} ({s['training_seeds']}) | **{s['mean']:.3f}**{_interval(s)} | "
                f"{s['iqm']:.3f} | {_fmt(s['ES'])} / {_fmt(s['GS'])} / {_fmt(s['LS'])} | {_fmt(s['efficacy'])} | "
                f"{_fmt(s['ES_first_20pct'])} | {layers} | {s['seconds_per_edit'] + s['agent_seconds_per_edit']:.2f} ({s['agent_seconds_per_edit']:.2f}) | "
                f"{_fmt(None if s['peak_rss_mb'] is None else s['peak_rss_mb'] / 1024, 2)} |"
            )
        pairs = [(x, y) for x, y in compare if x in stats and y in stats]
        if pairs:
            lines += ["", "| comparison | P(improvement) |", "|---|---|"]
            lines += [
                f"| {x} over {y} | {probability_of_improvement(stats[x]['scores'], stats[y]['scores']):.2f} |"
                for x, y in pairs
            ]
        figures = [_interval_plot(stats, out / f"intervals_{key}.png", f"{dataset}, {num_edits} edits")]
        figures.append(curve_plot(agents, out / f"curves_{key}.png", f"{dataset}, {num_edits} edits"))
        figures.append(_module_heatmap(agents, out / f"modules_{key}.png", f"{dataset}, {num_edits} edits"))
        lines += [""] + [f"![{f.stem}]({f.name})" for f in figures if f is not None] + [""]
    for (model, dataset), runs in training_runs(folders).items():
        lines += training_section(runs, out / f"training_{slug(model)}_{dataset}.png", f"{dataset}, {model}")
    return write_text(out / "report.md", "\n".join(lines))


def training_runs(folders: Sequence[str | Path]) -> dict[tuple[str, str], dict[str, dict[str, Any]]]:
    """The training statistics (``train_stats.json``) of every finished cell that trained with validation,
    per (model, data set), labelled by the cell's agent entries and training seed."""
    runs: dict[tuple[str, str], dict[str, dict[str, Any]]] = defaultdict(dict)
    for folder in folders:
        for file in sorted(Path(folder).glob(f"cells/*/{CELL_FILE}")):
            record = json.loads(file.read_text())
            stats, cell = record.get("train_stats"), record["cell"]
            if stats and stats.get("validations"):
                label = f"{' + '.join(name for name, _ in cell['variants'])}, seed {cell['training_seed']}"
                runs[(cell["model"], cell["dataset"])][label] = stats
    return runs


def training_section(runs: dict[str, dict[str, Any]], path: Path, title: str) -> list[str]:
    """The report's lines on training runs: per run its validations, the editor kept and, where the run
    recorded them (:class:`~hiedit_agents.learned.callbacks.Diagnostics`), how far its last episode's
    updates had moved from the untrained editor's; and :func:`training_plot`'s figure."""
    lines = [
        f"## Training, {title}",
        "",
        "Validation: mean(ES, GS, LS) of the run's held-out sequence; kept: the editor the run kept (after how many "
        "training edits). Last episode: the cosine of the learned update with the untrained editor's on the same "
        "trace, their size ratio, and the weights' net drift ||W - W0|| / ||W0||, each averaged over modules.",
        "",
        "| run | validations (after edits: mean) | kept | last episode: alignment / size ratio / drift |",
        "|---|---|---|---|",
    ]
    for label, stats in runs.items():
        checks = ", ".join(f"{v['after_edits']}: {v['mean']:.3f}" for v in stats["validations"])
        last = (stats.get("diagnostics") or [None])[-1]
        moved = (
            " / ".join(f"{np.mean(last[k]):.3f}" for k in ("alignment", "size_ratio", "drift"))
            if last
            else "not recorded"
        )
        kept = f"{stats['kept_validation_mean']:.3f} ({stats['kept_after_edits']})"
        lines.append(f"| {label} | {checks} | {kept} | {moved} |")
    figure = training_plot(runs, path, title)
    return [*lines, "", f"![{figure.stem}]({figure.name})", ""]


def training_plot(runs: dict[str, dict[str, Any]], path: Path, title: str) -> Path:
    """Per training run (``train_stats.json`` contents, by label): the validation mean, ES and GS against
    training edits, a star at the editor kept; and, for runs with diagnostics, per training episode the mean
    training loss, the alignment and size ratio of the learned updates with the untrained editor's, and
    the weights' net drift, averaged over modules."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("validation: mean(ES, GS, LS); ES dotted, GS dashed", None)]
    if any(stats.get("diagnostics") for stats in runs.values()):
        panels += [
            ("training loss (episode mean)", "loss"),
            ("alignment with the untrained update", "alignment"),
            ("size / the untrained update's", "size_ratio"),
            ("net drift ||W - W0|| / ||W0||", "drift"),
        ]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for label, stats in runs.items():
        validations = stats["validations"]
        (line,) = axes[0][0].plot(
            [v["after_edits"] for v in validations],
            [v["mean"] for v in validations],
            marker="o",
            markersize=3,
            label=label,
        )
        axes[0][0].plot(
            [stats["kept_after_edits"]], [stats["kept_validation_mean"]], "*", markersize=12, color=line.get_color()
        )
        for metric, style in (("ES", ":"), ("GS", "--")):
            axes[0][0].plot(
                [v["after_edits"] for v in validations], [v[metric] for v in validations], style, color=line.get_color()
            )
        diagnostics = stats.get("diagnostics") or []
        for ax, (_, key) in zip(axes[0][1:], panels[1:]):
            ax.plot(
                [d["after_edits"] for d in diagnostics],
                [float(np.mean(d[key])) for d in diagnostics],
                marker="o",
                markersize=3,
                color=line.get_color(),
            )
    for ax, (name, _) in zip(axes[0], panels):
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("training edits")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"Training, {title} (star: the editor kept)")
    fig.tight_layout()
    return save_figure(fig, path)


def save_figure(fig: Any, path: Path) -> Path:
    """Write ``fig`` to ``path`` as a PNG, atomically, and close it."""
    import matplotlib.pyplot as plt

    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, bbox_inches="tight"))
    finally:
        plt.close(fig)


def _interval_plot(stats: dict[str, dict[str, Any]], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = sorted(stats, key=lambda a: stats[a]["mean"])
    fig, ax = plt.subplots(figsize=(6, 0.45 * len(order) + 1))
    means = np.array([stats[a]["mean"] for a in order])
    errors = np.array([[stats[a]["mean"] - stats[a]["low"], stats[a]["high"] - stats[a]["mean"]] for a in order]).T
    ax.errorbar(means, range(len(order)), xerr=errors, fmt="o", capsize=4)
    ax.set_yticks(range(len(order)), order)
    ax.set_xlabel(f"mean(ES, GS, LS), {CONFIDENCE:.0%} stratified bootstrap interval")
    ax.set_title(title)
    return save_figure(fig, path)


def curve_plot(agents: dict[str, list[dict[str, Any]]], path: Path, title: str) -> Path | None:
    """ES/GS/LS of the edits so far against edits applied, per agent (the mean over its rows' ``curve``);
    ``None`` when no row has a curve."""
    curves = {a: [r["curve"] for r in rows if r.get("curve")] for a, rows in agents.items()}
    curves = {a: c for a, c in curves.items() if c}
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.5), sharey=True)
    for agent, runs in curves.items():
        edits = [p["edits"] for p in runs[0]]
        for ax, metric in zip(axes, ("ES", "GS", "LS")):
            ax.plot(
                edits, [np.mean([run[i][metric] for run in runs]) for i in range(len(edits))], marker="o", label=agent
            )
            ax.set_title(f"{metric} of the edits so far")
            ax.set_xlabel("edits applied")
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()  # room for the title above the panels' own
    return save_figure(fig, path)


def _module_heatmap(agents: dict[str, list[dict[str, Any]]], path: Path, title: str) -> Path | None:
    """Share of edits that changed each candidate module, for agents that choose (not all, not none)."""
    shares = {}
    for agent, rows in agents.items():
        maps = [r["module_share"] for r in rows if r.get("module_share")]
        if maps and 0 < np.mean([r["layers_per_edit"] for r in rows]) < rows[0]["candidates"]:
            shares[agent] = {m: float(np.mean([s[m] for s in maps])) for m in maps[0]}
    if not shares:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modules = list(next(iter(shares.values())))
    matrix = np.array([[shares[a][m] for m in modules] for a in shares])
    fig, ax = plt.subplots(figsize=(0.4 * len(modules) + 3, 0.5 * len(shares) + 1.5))
    image = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(modules)), modules, rotation=90, fontsize=7)
    ax.set_yticks(range(len(shares)), list(shares))
    fig.colorbar(image, label="share of edits that changed the module")
    ax.set_title(title)
    return save_figure(fig, path)
