"""Mean and spread over evaluation episodes (and training seeds): result files in, one table out.

One 100-edit episode moves an agent's mean(ES, GS, LS) by several points from seed to seed, so a
comparison between agents should rest on several. Two ways to name the files of a row:

* folders, one sweep per evaluation seed: every ``<agent>.json`` found in all of them (written by
  ``hiedit evaluate``) becomes a row;
* ``--rows NAME=GLOB[,GLOB...]``: a row per name, over every file its patterns match, e.g. an
  agent's training seeds x test sequences. These rows also give the number of files, the lowest
  mean (one broken sequence moves a mean of nine by several points) and the modules changed per edit.

Each cell is the mean over the row's files, the sample standard deviation in brackets.

    python benchmarks/seeds_table.py benchmarks/results/zsre_direction benchmarks/results/zsre_direction/seed1 \\
        benchmarks/results/zsre_direction/seed2 --out benchmarks/results/zsre_direction/seeds.md
    python benchmarks/seeds_table.py --rows "hiedit=benchmarks/results/zsre_validated/test/hiedit_*.json" \\
        "ft_l=benchmarks/results/zsre_direction/ft_l.json,benchmarks/results/zsre_direction/seed*/ft_l.json"
"""

from __future__ import annotations

import argparse
import glob
import json
import statistics
from pathlib import Path
from typing import Any

from hiedit_env.files import write_text

COLUMNS = ("ES", "GS", "LS", "mean", "ES_first_20pct", "efficacy")


def read_result(path: Path) -> dict[str, Any] | None:
    """The metrics in ``path``, or ``None`` when it is not a result file (no ``mean``)."""
    data = json.loads(path.read_text())
    return data if isinstance(data, dict) and "mean" in data else None


def read_results(folder: Path) -> dict[str, dict[str, Any]]:
    """``{agent: metrics}`` for every result file in ``folder``."""
    results = {path.stem: read_result(path) for path in sorted(folder.glob("*.json"))}
    return {agent: metrics for agent, metrics in results.items() if metrics is not None}


def rows_from_patterns(specs: list[str]) -> dict[str, list[dict[str, Any]]]:
    """``{name: [metrics, ...]}`` from ``NAME=GLOB[,GLOB...]`` specifications, with clear errors."""
    rows = {}
    for spec in specs:
        name, sep, patterns = spec.partition("=")
        if not sep or not name or not patterns:
            raise SystemExit(f"--rows takes NAME=GLOB[,GLOB...], got {spec!r}")
        paths = sorted({Path(p) for pattern in patterns.split(",") for p in glob.glob(pattern)})
        results = [r for r in (read_result(p) for p in paths) if r is not None]
        if not results:
            raise SystemExit(f"no result file matches {patterns!r} (row {name!r})")
        rows[name] = results
    return rows


def table(rows: dict[str, list[dict[str, Any]]], label: str, counts: bool) -> str:
    """Markdown: one line per row, mean (sd) of every column all its files have."""
    columns = [c for c in COLUMNS if all(c in r for results in rows.values() for r in results)]
    extra = ["n", "lowest mean", "layers_per_edit"] if counts else []
    lines = [f"| {label} | " + " | ".join(extra + columns) + " |", "|---" * (len(extra + columns) + 1) + "|"]
    for name, results in rows.items():
        cells = (
            [
                str(len(results)),
                f"{min(float(r['mean']) for r in results):.3f}",
                f"{statistics.fmean(float(r['layers_per_edit']) for r in results):.1f}",
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


def seeds_table(folders: list[Path]) -> str:
    per_folder = [read_results(f) for f in folders]
    agents = [a for a in per_folder[0] if all(a in r for r in per_folder[1:])]
    if not agents:
        raise SystemExit(f"no agent has a result file in every one of {[str(f) for f in folders]}")
    return table({a: [r[a] for r in per_folder] for a in agents}, f"agent (n={len(folders)} episodes)", counts=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="*", type=Path, help="one sweep folder per evaluation seed")
    parser.add_argument("--rows", nargs="+", default=None, metavar="NAME=GLOB", help="rows from file patterns instead")
    parser.add_argument("--out", type=Path, default=None, help="write the markdown table here too")
    args = parser.parse_args()
    if bool(args.folders) == bool(args.rows):
        parser.error("give either sweep folders or --rows, not both")
    if args.rows:
        text = table(rows_from_patterns(args.rows), "agent", counts=True)
    else:
        missing = [str(f) for f in args.folders if not f.is_dir()]
        if missing:
            raise SystemExit(f"not a folder: {', '.join(missing)}")
        text = seeds_table(args.folders)
    if args.out is not None:
        write_text(args.out, text + "\n")
    print(text)


if __name__ == "__main__":
    main()
