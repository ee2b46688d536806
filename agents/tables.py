"""``hiedit table``: mean and spread of ``hiedit evaluate`` result files, one Markdown table.

A sweep's results are tabled by ``hiedit report``; this command tables result files written by
``hiedit evaluate`` outside a sweep. One 100-edit episode moves an agent's mean(ES, GS, LS) by several
points from sequence to sequence, so a comparison between agents should rest on several. Two ways to
name the files of a row:

* folders, one per evaluation sequence: every ``<agent>.json`` found in all of them becomes a row;
* ``--rows NAME=GLOB[,GLOB...]``: a row per name, over every file its patterns match, e.g. an
  agent's training seeds x test sequences. These rows also give the number of files, the lowest
  mean (one broken sequence moves a mean of nine by several points) and the modules changed per edit.

Each cell is the mean over the row's files, the sample standard deviation in brackets.

    hiedit table benchmarks/results/zsre_direction benchmarks/results/zsre_direction/seed1 \\
        benchmarks/results/zsre_direction/seed2 --markdown benchmarks/results/zsre_direction/seeds.md
    hiedit table --rows "hiedit=benchmarks/results/zsre_validated/test/hiedit_*.json" \\
        "ft_l=benchmarks/results/zsre_direction/ft_l.json,benchmarks/results/zsre_direction/seed*/ft_l.json"
"""

from __future__ import annotations

import argparse
import glob
import json
import statistics
from pathlib import Path
from typing import Any

from hiedit_env.cli import common_options
from hiedit_env.files import write_text

COLUMNS = ("ES", "GS", "LS", "mean", "ES_first_20pct", "efficacy")


def read_result(path: Path) -> dict[str, Any] | None:
    """The metrics in ``path``, or ``None`` when it is not a result file (no ``mean``)."""
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
    return data if isinstance(data, dict) and "mean" in data else None


def read_results(folder: Path) -> dict[str, dict[str, Any]]:
    """``{agent: metrics}`` for every result file in ``folder``."""
    results = {path.stem: read_result(path) for path in sorted(folder.glob("*.json"))}
    return {agent: metrics for agent, metrics in results.items() if metrics is not None}


def rows_from_patterns(specs: list[str]) -> dict[str, list[dict[str, Any]]]:
    """``{name: [metrics, ...]}`` from ``NAME=GLOB[,GLOB...]`` specifications."""
    rows = {}
    for spec in specs:
        name, sep, patterns = spec.partition("=")
        if not sep or not name or not patterns:
            raise ValueError(f"--rows takes NAME=GLOB[,GLOB...], got {spec!r}")
        paths = sorted({Path(p) for pattern in patterns.split(",") for p in glob.glob(pattern)})
        results = [r for r in (read_result(p) for p in paths) if r is not None]
        if not results:
            raise ValueError(f"no result file matches {patterns!r} (row {name!r})")
        rows[name] = results
    return rows


def rows_from_folders(folders: list[Path]) -> dict[str, list[dict[str, Any]]]:
    """``{agent: [metrics per folder]}`` for the agents with a result file in every folder."""
    missing = [str(f) for f in folders if not f.is_dir()]
    if missing:
        raise ValueError(f"not a folder: {', '.join(missing)}")
    per_folder = [read_results(f) for f in folders]
    agents = [a for a in per_folder[0] if all(a in r for r in per_folder[1:])]
    if not agents:
        raise ValueError(f"no agent has a result file in every one of {[str(f) for f in folders]}")
    return {a: [r[a] for r in per_folder] for a in agents}


def table(rows: dict[str, list[dict[str, Any]]], label: str, counts: bool) -> str:
    """Markdown: one line per row, mean (sd) of every column all its files have; with ``counts`` also
    the number of files, the lowest mean and the modules changed per edit."""
    columns = [c for c in COLUMNS if all(c in r for results in rows.values() for r in results)]
    extra = ["n", "lowest mean", "layers_per_edit"] if counts else []
    lines = [f"| {label} | " + " | ".join(extra + columns) + " |", "|---" * (len(extra + columns) + 1) + "|"]
    for name, results in rows.items():
        cells = (
            [
                str(len(results)),
                f"{min(float(r['mean']) for r in results):.3f}",
                f"{statistics.fmean(float(r['layers_per_edit']) for r in results):.1f}"
                if all("layers_per_edit" in r for r in results)
                else "",
            ]
            if counts
            else []
        )
        for column in columns:
            values = [float(r[column]) for r in results]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.fmean(values):.3f} ({spread:.3f})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_table(args: argparse.Namespace) -> None:
    """``hiedit table``: print the table (and write it to ``--markdown``)."""
    if bool(args.folders) == bool(args.rows):
        raise ValueError("give folders of result files or --rows, one of the two")
    if args.rows:
        text = table(rows_from_patterns(args.rows), "agent", counts=True)
    else:
        text = table(rows_from_folders(args.folders), f"agent (n={len(args.folders)} episodes)", counts=False)
    if args.markdown is not None:
        write_text(args.markdown, text + "\n")
    print(text)


def add_table_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``table`` subcommand to ``sub``."""
    parser = sub.add_parser(
        "table",
        help="mean (sd) of 'hiedit evaluate' result files: one row per agent or per named glob",
        description=__doc__.split("\n\n")[0],
        parents=[common_options()],
    )
    parser.add_argument("folders", nargs="*", type=Path, help="folders of result files, one per evaluation sequence")
    parser.add_argument(
        "--rows", nargs="+", default=None, metavar="NAME=GLOB", help="rows from file patterns instead of folders"
    )
    parser.add_argument("--markdown", type=Path, default=None, metavar="FILE", help="write the table here too")
    parser.set_defaults(run=run_table)
    return parser
