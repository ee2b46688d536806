"""Training seeds x test sequences: one markdown table of mean(ES, GS, LS) per cell, from ``hiedit evaluate`` files.

A learned agent's score depends on its training seed and on the evaluated sequence, so the benchmark log
compares agents over a grid of both. Cell ``(T, S)`` of agent ``A`` is read from
``<folder>/A_train_seedT_episodeS.json`` (or ``A_train_seedT.json`` for episode 0, the older name).
With ``--against`` a second folder's cells follow each value in brackets, and the summary counts the
cells where the first folder's value is the higher one.

    python benchmarks/cells_table.py benchmarks/results/zsre_validated/size_cap/test \\
        --against benchmarks/results/zsre_validated/test --out benchmarks/results/zsre_validated/size_cap/test.md
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from hiedit_env.files import write_text


def cell(folder: Path, agent: str, seed: int, episode: int) -> float:
    """The ``mean`` of one result file, with a clear error when it is missing."""
    names = [f"{agent}_train_seed{seed}_episode{episode}.json"] + ([f"{agent}_train_seed{seed}.json"] if episode == 0 else [])
    for name in names:
        if (folder / name).is_file():
            return float(json.loads((folder / name).read_text())["mean"])
    raise SystemExit(f"no result for {agent}, training seed {seed}, episode {episode} in {folder} (looked for {names})")


def cells_table(folder: Path, agents: list[str], seeds: list[int], episodes: list[int], against: Path | None = None) -> str:
    def fmt(value: float, other: float | None) -> str:
        return f"{value:.3f}" if other is None else f"{value:.3f} ({other:.3f})"

    header = " / ".join(str(e) for e in episodes)
    lines = ["| training seed | " + " | ".join(f"{a}, episodes {header}" for a in agents) + " |",
             "|---" * (len(agents) + 1) + "|"]
    values = {a: [] for a in agents}
    others = {a: [] for a in agents}
    for seed in seeds:
        row = []
        for agent in agents:
            mine = [cell(folder, agent, seed, e) for e in episodes]
            theirs = [cell(against, agent, seed, e) for e in episodes] if against else [None] * len(mine)
            values[agent] += mine
            others[agent] += [t for t in theirs if t is not None]
            row.append(" / ".join(fmt(m, t) for m, t in zip(mine, theirs)))
        lines.append(f"| {seed} | " + " | ".join(row) + " |")
    summary = []
    for agent in agents:
        v = values[agent]
        # The median too: one broken sequence moves the mean of nine by several points.
        text = (f"{statistics.mean(v):.3f} (sd {statistics.stdev(v):.3f}), median {statistics.median(v):.3f}, "
                f"lowest {min(v):.3f}") if len(v) > 1 else f"{v[0]:.3f}"
        if against:
            o = others[agent]
            wins = sum(m > t for m, t in zip(v, o))
            text += (f"; against {statistics.mean(o):.3f}, median {statistics.median(o):.3f}, lowest {min(o):.3f}; "
                     f"higher in {wins} of {len(v)}")
        summary.append(text)
    lines.append(f"| all {len(seeds) * len(episodes)} | " + " | ".join(summary) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--against", type=Path, default=None, help="a second folder of the same cells, shown in brackets")
    parser.add_argument("--agents", nargs="+", default=["hiedit", "rledit"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 100, 200], help="training seeds")
    parser.add_argument("--episodes", nargs="+", type=int, default=[0, 1, 2], help="evaluation episode seeds")
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = parser.parse_args()
    table = cells_table(args.folder, args.agents, args.seeds, args.episodes, args.against)
    if args.out is not None:
        write_text(args.out, table)
    print(table, end="")


if __name__ == "__main__":
    main()
