"""The learned editors' training curves from ``train_stats.json`` files: the validation mean against
training edits (a star at the editor each run kept) and, for runs that recorded them, the diagnostics
of :class:`~hiedit_agents.learned.callbacks.Diagnostics`. ``hiedit report`` draws the same figure for
every training cell of a sweep; this draws it for runs trained with ``hiedit train``.

    python benchmarks/validation_curves.py benchmarks/results/training/zsre_validated_seed*_{hiedit,rledit}.json \\
        --out benchmarks/results/zsre_validated/validation_curves.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hiedit_agents.sweep.report import training_plot


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stats", nargs="+", type=Path, help="train_stats.json files of validated runs")
    parser.add_argument("--out", required=True, type=Path, help="the PNG to write")
    args = parser.parse_args()
    runs = {}
    for path in args.stats:
        stats = json.loads(path.read_text())
        if not stats.get("validations"):
            raise SystemExit(f"{path} has no validations (trained with validation_edits 0?)")
        runs[f"{stats.get('agent', path.stem)}, seed {stats.get('seed', '?')}"] = stats
    print(f"wrote {training_plot(runs, args.out, 'held-out validation sequence during training')}")


if __name__ == "__main__":
    main()
