"""The ``hiedit`` command: ``hiedit demo`` runs one episode and prints the end-of-sequence metrics."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from tqdm import tqdm

from .models import EMBEDDED_MODEL
from .records import DEFAULT_DATASET

TABLE_KEYS = ("ES", "GS", "LS", "LS_answer", "mean", "ES_gen", "GS_gen", "efficacy", "ES_at_edit", "ES_first_20pct",
              "layers_per_edit", "candidates", "seconds_per_edit", "num_edits")


def format_metrics(metrics: dict[str, Any], title: str = "") -> str:
    """A two-column text table of the headline metrics, with each one's protocol."""
    protocols = metrics.get("protocols", {})
    lines = [title] if title else []
    for key in TABLE_KEYS:
        if key in metrics:
            value = metrics[key]
            shown = f"{value:.4f}" if isinstance(value, float) else str(value)
            lines.append(f"  {key:<16} {shown:>10}   {protocols.get(key, '')}")
    return "\n".join(lines)


def write_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder, so a reader never sees
    half a file and an interrupted write leaves the old one."""
    path = Path(path)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(handle, 0o644)  # mkstemp's 0600 would keep a results file from other readers
        with os.fdopen(handle, "w") as f:
            f.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def run_demo(args: argparse.Namespace) -> dict[str, Any]:
    env = gym.make("HiEdit-v0", model=args.model, dataset=args.dataset, num_edits=args.num_edits)
    n = len(env.unwrapped.candidate_modules)
    action = {"layers": np.ones(n, np.float32), "update": np.full(n, args.step, np.float32)}
    env.reset(seed=args.seed)
    info: dict[str, Any] = {}
    with tqdm(total=args.num_edits, desc=f"editing {args.model}", unit="edit") as bar:
        terminated = False
        while not terminated:
            _, _, terminated, _, info = env.step(action)
            bar.set_postfix(ES=f"{info['edit_success']:.2f}", LS=f"{info['locality']:.2f}")
            bar.update()
    metrics = info["episode_metrics"]
    print(format_metrics(metrics, f"{args.num_edits} sequential edits, constant step {args.step}, all {n} candidates"))
    return metrics


def add_demo_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``demo`` subcommand to ``sub`` (shared with the agent zoo's ``hiedit`` command)."""
    demo = sub.add_parser("demo", help="run one episode with a constant mid-range action and print the metrics")
    demo.add_argument("--model", default=EMBEDDED_MODEL, help="built-in name, hub id or local path")
    demo.add_argument("--dataset", default=DEFAULT_DATASET, help="'default', a ZsRE/CounterFact file, directory or hub id")
    demo.add_argument("--num-edits", type=int, default=20)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--step", type=float, default=0.0, help="the constant step-size action in [-1, 1]")
    demo.add_argument("--out", default=None, help="also write the metrics as JSON here")
    demo.set_defaults(run=run_demo)
    return demo


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hiedit", description="HiEdit Gym: lifelong knowledge editing as RL")
    add_demo_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), argv)


def run_cli(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen subcommand's ``run``; its result goes to ``--out`` as JSON if given."""
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message=".*skipped.*records.*")
    try:
        if getattr(args, "out", None):  # before the long run, so a result is never lost to a missing folder
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        result = args.run(args)
    except (ValueError, OSError) as err:  # bad arguments and data: one clear line, no traceback
        message = " ".join(str(err).split())  # causes from transformers/datasets span several lines
        print(f"hiedit {args.command}: error: {message}", file=sys.stderr)
        return 2
    if getattr(args, "out", None):
        write_atomic(args.out, json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
