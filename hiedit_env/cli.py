"""The ``hiedit`` command: ``hiedit demo`` runs one episode and prints the end-of-sequence metrics."""

from __future__ import annotations

import argparse
import functools
import math
import sys
import warnings
from typing import Any, NoReturn

import gymnasium as gym
import numpy as np
from tqdm import tqdm

from .files import check_output_file, write_json
from .models import EMBEDDED_MODEL
from .records import DEFAULT_DATASET
from .score import CORE_METRICS

TABLE_KEYS = (
    *CORE_METRICS,
    "LS_answer",
    "mean",
    "ES_gen",
    "GS_gen",
    "efficacy",
    "ES_at_edit",
    "ES_first_20pct",
    "layers_per_edit",
    "candidates",
    "seconds_per_edit",
    "num_edits",
)


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
    demo = sub.add_parser(
        "demo",
        help="run one episode with a constant mid-range action and print the metrics",
        parents=[common_options()],
    )
    add_model_and_data(demo)
    demo.add_argument("--num-edits", type=positive_int, default=20)
    demo.add_argument("--seed", type=non_negative_int, default=0)
    demo.add_argument("--step", type=float, default=0.0, help="the constant step-size action in [-1, 1]")
    demo.add_argument("--out", default=None, help="also write the metrics as JSON here")
    demo.set_defaults(run=run_demo)
    return demo


class Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (``hiedit train: error: argument --seed: must be >= 0``), exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="hiedit", description="HiEdit Gym: lifelong knowledge editing as RL")
    add_demo_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), argv)


def run_cli(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen subcommand's ``run``; its result goes to ``--out`` as JSON if given.

    A user's mistake (bad arguments, data, files or checkpoints: ``ValueError`` and ``OSError``) is one
    line on stderr and exit code 2, never a traceback (``--debug`` shows it); an interruption is
    exit code 130. ``--out`` is checked before the work that fills it and written atomically.
    Warnings (skipped records, cut prompts) are one line each on stderr.
    """
    args = parser.parse_args(argv)
    command = f"hiedit {args.command}"
    out = getattr(args, "out", None)
    with warnings.catch_warnings():
        warnings.simplefilter(
            "default", UserWarning
        )  # our reports (skipped records, cut prompts), whatever filters are set
        warnings.showwarning = functools.partial(_warning_line, command)
        try:
            if out:  # before the long run, so a result is never lost to a bad path
                check_output_file(out)
            result = args.run(args)
            if out:
                write_json(out, result)
        except KeyboardInterrupt as err:
            print(f"{command}: {err or 'interrupted'}", file=sys.stderr)
            return 130
        except (ValueError, OSError) as err:
            if getattr(args, "debug", False):
                raise
            message = " ".join(str(err).split())  # causes from transformers/datasets span several lines
            print(f"{command}: error: {message or type(err).__name__}", file=sys.stderr)
            return 2
    return 0


def _warning_line(command: str, message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
    text = " ".join(str(message).split())
    print(f"{command}: warning: {text}", file=sys.stderr)


def common_options() -> argparse.ArgumentParser:
    """Options every ``hiedit`` subcommand takes (a parent parser: ``add_parser(..., parents=[common_options()])``)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    return common


def add_model_and_data(parser: argparse.ArgumentParser, split: str | None = None) -> None:
    """The ``--model`` and ``--dataset`` options every command that builds an environment takes, and with
    ``split`` (its default) ``--split``."""
    parser.add_argument("--model", default=EMBEDDED_MODEL, help="built-in name, hub id or local path")
    parser.add_argument(
        "--dataset", default=DEFAULT_DATASET, help="'default', a ZsRE/CounterFact file, directory or hub id"
    )
    if split is not None:
        parser.add_argument(
            "--split",
            default=split,
            choices=("train", "test", "all"),
            help=f"seeded split of --dataset to draw edits from (default: {split})",
        )


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def non_negative_float(text: str) -> float:
    """argparse type: a finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = non_negative_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


if __name__ == "__main__":
    sys.exit(main())
