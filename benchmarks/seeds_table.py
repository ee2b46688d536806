"""Mean and spread over evaluation episodes: one sweep folder per seed in, one table out.

One 100-edit episode moves an agent's mean(ES, GS, LS) by several points from seed to seed, so a
comparison between agents should rest on several. Every ``<agent>.json`` found in all the given
folders (written by ``benchmarks/agents.py`` or ``hiedit evaluate``) becomes a row: the mean over the
folders, the sample standard deviation in brackets.

    python benchmarks/seeds_table.py benchmarks/results/zsre_direction benchmarks/results/zsre_direction/seed1 \\
        benchmarks/results/zsre_direction/seed2 --out benchmarks/results/zsre_direction/seeds.md
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

COLUMNS = ("ES", "GS", "LS", "mean", "ES_first_20pct", "efficacy")


def read_results(folder: Path) -> dict[str, dict[str, Any]]:
    """``{agent: metrics}`` for every result file in ``folder`` (files without ``mean`` are not results)."""
    results = {}
    for path in sorted(folder.glob("*.json")):
        data = json.loads(path.read_text())
        if isinstance(data, dict) and "mean" in data:
            results[path.stem] = data
    return results


def seeds_table(folders: list[Path]) -> str:
    per_folder = [read_results(f) for f in folders]
    agents = [a for a in per_folder[0] if all(a in r for r in per_folder[1:])]
    if not agents:
        raise SystemExit(f"no agent has a result file in every one of {[str(f) for f in folders]}")
    columns = [c for c in COLUMNS if all(c in r[a] for r in per_folder for a in agents)]
    lines = [f"| agent (n={len(folders)} episodes) | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for agent in agents:
        cells = []
        for column in columns:
            values = [float(r[agent][column]) for r in per_folder]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.fmean(values):.3f} ({spread:.3f})")
        lines.append(f"| {agent} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="one sweep folder per evaluation seed")
    parser.add_argument("--out", type=Path, default=None, help="write the markdown table here too")
    args = parser.parse_args()
    missing = [str(f) for f in args.folders if not f.is_dir()]
    if missing:
        raise SystemExit(f"not a folder: {', '.join(missing)}")
    table = seeds_table(args.folders)
    if args.out is not None:
        args.out.write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
