"""The ``hiedit sweep``, ``hiedit report`` and ``hiedit tune`` subcommands.

hiedit sweep benchmarks/specs/smoke.yaml --out sweeps/smoke      # again with the same --out: resumes
hiedit report sweeps/smoke [more sweep folders] --out report/smoke
hiedit tune benchmarks/specs/tune-all-smoke.yaml --trials 8 --out tune/all-smoke
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from hiedit_env.cli import non_negative_int, positive_int

# The commands import the sweep modules when they run: agents/cli.py imports this file while it
# loads, and the cells' code imports agents/cli.py (its make_env), so importing them here would be circular.


def run_sweep(args: argparse.Namespace) -> dict[str, Any]:
    from .runner import format_status, format_summary, sweep, sweep_status
    from .spec import load_spec

    spec = load_spec(args.spec)  # the whole spec is checked before Ray starts
    if args.status:
        print(format_status(sweep_status(spec, args.out_dir, args.agents)))
        return {}
    summary = sweep(
        spec,
        args.out_dir,
        address=args.address,
        max_concurrent=args.max_concurrent,
        max_cells=args.max_cells,
        agents=args.agents,
        reuse_training=args.reuse_training,
    )
    print(format_summary(summary, Path(args.out_dir)))
    if summary["failed"]:
        raise ValueError(
            f"{len(summary['failed'])} of {summary['cells']} cells failed (listed above, details in "
            f"their error.json); the others' results are in {args.out_dir}"
        )
    if summary["stopped"]:  # exit code 130, as for Ctrl-C: Ray Tune ends the run on SIGINT without raising
        raise KeyboardInterrupt(
            f"stopped with {len(summary['stopped'])} cells unfinished (listed above); the same command "
            f"finishes them, keeping every finished evaluation"
        )
    return summary


def run_report(args: argparse.Namespace) -> None:
    from .report import build_report

    path = build_report(args.sweeps, args.out_dir, readme=args.readme)
    print(
        f"report written to {path}, the leaderboard to {path.parent / 'leaderboard.md'}"
        + (f" and into {args.readme}" if args.readme else "")
    )


def run_tune(args: argparse.Namespace) -> dict[str, Any]:
    from .tune import tune_spec

    summary = tune_spec(
        args.spec, args.trials, args.out_dir, address=args.address, max_concurrent=args.max_concurrent, seed=args.seed
    )
    default = (
        f"; the entry's own values {summary['defaults']}: {summary['default_score']:.3f}"
        if summary["default_score"] is not None
        else ""
    )
    print(
        f"best of {summary['trials']} trials (validation mean {summary['score']:.3f}): {summary['best']}{default}; "
        f"written to {Path(args.out_dir) / 'best.yaml'}"
    )
    return summary


def _add_cluster_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--address",
        default=None,
        help="Ray cluster to join ('auto' or host:port; default: $RAY_ADDRESS, else a local Ray on "
        "this machine). On a cluster --out must be on storage every node shares",
    )
    parser.add_argument(
        "--max-concurrent",
        type=positive_int,
        default=None,
        help="trials at once (default: as many as the CPUs allow at the spec's threads per trial)",
    )


def add_sweep_parsers(sub: argparse._SubParsersAction) -> None:
    """Add ``sweep``, ``report`` and ``tune`` to the ``hiedit`` command's subparsers."""
    p = sub.add_parser("sweep", help="run every cell of a sweep spec on Ray Tune (again: only what is unfinished)")
    p.add_argument("spec", help="sweep spec (YAML; see docs/sweeps.md)")
    p.add_argument("--out", dest="out_dir", required=True, help="sweep folder: results.csv, results.jsonl, cells/")
    _add_cluster_options(p)
    p.add_argument(
        "--max-cells",
        type=non_negative_int,
        default=None,
        help="run at most this many unfinished cells, then stop (a long sweep in parts; 0 writes the "
        "folder's spec and plan, which a report of the unstarted sweep shows, and runs nothing)",
    )
    p.add_argument(
        "--agents",
        nargs="+",
        default=None,
        metavar="ENTRY",
        help="run only the cells of these agent entries of the spec (a long sweep in parts)",
    )
    p.add_argument(
        "--status",
        action="store_true",
        help="run nothing: print where each cell stands (finished, trained, evaluations recorded, the edit "
        "a snapshot reached) from the folder's files",
    )
    p.add_argument(
        "--reuse-training",
        nargs="+",
        default=None,
        metavar="SWEEP",
        help="sweep folders whose finished trainings a cell copies instead of training again, where every "
        "training setting matches (e.g. the 1000-edit sweep of the 100-edit sweep's training)",
    )
    p.set_defaults(run=run_sweep)

    p = sub.add_parser("report", help="Markdown report with bootstrap intervals and figures from sweep folders")
    p.add_argument("sweeps", nargs="+", help="folders written by 'hiedit sweep'")
    p.add_argument(
        "--out", dest="out_dir", required=True, help="folder for report.md, its PNG figures and leaderboard.md"
    )
    p.add_argument(
        "--readme",
        default=None,
        help="also write the leaderboard table into this file, between its lines <!-- leaderboard:start --> "
        "and <!-- leaderboard:end --> (a file without them is refused)",
    )
    p.set_defaults(run=run_report)

    p = sub.add_parser("tune", help="hyperparameter search (Optuna TPE + ASHA on Ray Tune) on training-data validation")
    p.add_argument("spec", help="tune spec (a sweep spec with one model, data set and agent, plus search:)")
    p.add_argument("--trials", type=positive_int, required=True, help="configurations to try")
    p.add_argument("--out", dest="out_dir", required=True, help="folder for best.yaml, best.json and trials.csv")
    p.add_argument("--seed", type=int, default=0, help="seed of the TPE sampler")
    _add_cluster_options(p)
    p.set_defaults(run=run_tune)
