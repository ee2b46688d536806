"""The learned editors' validation curves: mean(ES, GS, LS) of the held-out sequence against training edits.

Reads the ``train_stats.json`` that ``hiedit train`` writes (or copies of them) and draws one line per
run, marking the editor each run kept.

    python benchmarks/validation_curves.py benchmarks/results/training/zsre_validated_seed*_{hiedit,rledit}.json \\
        --out benchmarks/results/zsre_validated/validation_curves.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stats", nargs="+", type=Path, help="train_stats.json files of validated runs")
    parser.add_argument("--out", required=True, type=Path, help="the PNG to write")
    args = parser.parse_args()
    fig, ax = plt.subplots(figsize=(7, 4))
    for path in args.stats:
        stats = json.loads(path.read_text())
        if not stats.get("validations"):
            raise SystemExit(f"{path} has no validations (trained with validation_edits 0?)")
        steps = [v["after_edits"] for v in stats["validations"]]
        means = [v["mean"] for v in stats["validations"]]
        style = "-" if stats.get("agent") == "hiedit" else "--"
        (line,) = ax.plot(
            steps,
            means,
            style,
            marker="o",
            markersize=3,
            label=f"{stats.get('agent', path.stem)}, seed {stats.get('seed', '?')}",
        )
        ax.plot(
            [stats["kept_after_edits"]], [stats["kept_validation_mean"]], "*", markersize=12, color=line.get_color()
        )
    ax.set_xlabel("training edits")
    ax.set_ylabel("validation mean(ES, GS, LS)")
    ax.set_title("Held-out validation sequence during training (star: the editor kept)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
