"""The ``hiedit`` command: ``demo``, ``train`` and ``evaluate`` here; ``sweep``, ``report`` and ``tune``
(:mod:`.sweep.cli`); the tools ``table`` (:mod:`.tables`), ``curves`` (:mod:`.curves`), ``speed``
(:mod:`.speed`), ``module-costs`` (:mod:`.module_costs`) and ``key-statistics`` (:mod:`.locate.key_statistics`).

    hiedit train --agent hiedit --model smollm2-135m --dataset zsre_mend_1k.json --out runs/hiedit
    hiedit evaluate --agent hiedit --checkpoint runs/hiedit --model smollm2-135m \\
        --dataset zsre_mend_1k.json --num-edits 100 --out results.json

``--agent`` takes a registered name or ``package.module:ClassName``. Both commands draw their edits
from one seeded split of ``--dataset`` (``train`` by default for training, ``test`` for evaluation,
disjoint); pass ``--split all`` to use every record of a file kept for one purpose.

An agent that acts without training but tunes a value on the training split (the constant-step
heuristics ``all``, ``random_k``, ``topk_grad``: their step) is tuned by ``hiedit evaluate`` first, through
``hiedit train``'s own path and defaults (``--train-dataset``/``--train-split``/``--train-seed``), so
both commands and a sweep's cells give one value per baseline; ``--checkpoint`` (from ``hiedit train``)
or the value in ``--agent-kwargs`` skips the tuning, and the results JSON's ``tuning`` says which.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import hiedit_env  # noqa: F401  (registers HiEdit-v0)
from hiedit_env.cli import (
    Parser,
    add_model_and_data,
    common_options,
    format_metrics,
    non_negative_float,
    non_negative_int,
    positive_int,
    run_cli,
)
from hiedit_env.files import write_json

from .common.base import DEFAULT_TRAIN_EDITS, DEFAULT_TRAIN_STEPS, Agent, build_agent
from .common.checkpoint import checkpoint_identity
from .common.commands import train_agent
from .common.env_util import env_description, make_env
from .common.evaluation import SNAPSHOT_SECONDS, SNAPSHOT_SUFFIX, EpisodeSnapshot, run_episode
from .common.memory import peak_memory_mb
from .curves import add_curves_parser
from .demo import add_demo_parser
from .locate.key_statistics import add_key_statistics_parser
from .module_costs import add_module_costs_parser
from .registry import agent_class, available_agents
from .speed import add_speed_parser
from .sweep.cli import add_sweep_parsers
from .tables import add_table_parser

DEFAULT_EVAL_EDITS = 100


def json_object(text: str) -> dict[str, Any]:
    """argparse type: a JSON object given on the command line."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON: {err}") from err
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def run_train(args: argparse.Namespace) -> dict[str, Any]:
    cls = agent_class(args.agent)
    if not args.resume and not cls.learns_before_acting(args.agent_kwargs):
        raise ValueError(
            f"agent {args.agent!r} acts as built: there is nothing to train (or its tuned value is given); "
            f"run 'hiedit evaluate --agent {args.agent}'"
        )
    stats = train_agent(args)
    trained = stats.get("steps_this_run", stats["steps"])
    kept = (
        f"; kept the editor of edit {stats['kept_after_edits']} (validation mean {stats['kept_validation_mean']:.3f})"
        if stats.get("validations")
        else ""
    )
    print(
        f"trained {args.agent} on {trained} edits ({stats.get('optimizer_steps', 0)} optimiser steps) in "
        f"{stats['total_seconds']:.0f} s, {stats['seconds_per_step']:.2f} s/edit{kept}; checkpoint, TensorBoard logs "
        f"and train_stats.json in {args.out_dir}"
    )
    return stats


def run_evaluate(args: argparse.Namespace) -> dict[str, Any]:
    cls = agent_class(args.agent)
    tuning: dict[str, Any] | None = None
    if args.checkpoint:
        meta = cls.saved_meta(args.checkpoint, "--checkpoint")
        cls.check_overrides(args.agent_kwargs)  # before the model loads
        env = make_env(args, cls, {**meta["config"], **args.agent_kwargs}, evaluation=True)
        agent = cls.load(args.checkpoint, env, **args.agent_kwargs)
        if cls.tuned_options:
            tuning = {"tuned": False, "reason": "--checkpoint gives the values ('hiedit train' tuned them)"}
    elif cls.requires_training:
        raise ValueError(f"agent {args.agent!r} must be trained first: pass --checkpoint DIR from 'hiedit train'")
    elif cls.learns_before_acting(args.agent_kwargs):
        with tempfile.TemporaryDirectory(prefix="hiedit-tuning-") as folder:
            tuning = tune_for_evaluation(args, cls, Path(folder))
            env = make_env(args, cls, cls.saved_meta(folder, "the tuned agent")["config"], evaluation=True)
            agent = cls.load(folder, env)
    else:
        env = make_env(args, cls, args.agent_kwargs, evaluation=True)
        agent = build_agent(cls, env, args.agent_kwargs)
        if cls.tuned_options:
            tuning = {"tuned": False, "reason": f"--agent-kwargs gives {', '.join(cls.tuned_options)}"}
    snapshot = None
    if args.out and args.snapshot_every > 0:
        identity = {"checkpoint": checkpoint_identity(args.checkpoint)} if args.checkpoint else {}
        snapshot = EpisodeSnapshot(Path(f"{args.out}{SNAPSHOT_SUFFIX}"), args.snapshot_every, identity)
    metrics = run_episode(agent, env, args.seed, snapshot=snapshot)
    built = env_description(env)
    print(
        format_metrics(
            metrics,
            f"{args.agent} on {built['model']}, {built['num_edits']} sequential edits "
            f"({built['dataset']}, split {built['split']}, seed {args.seed})",
        )
    )
    result = {
        "agent": args.agent,
        "seed": args.seed,
        "checkpoint": args.checkpoint,
        "agent_kwargs": args.agent_kwargs,
        "config": agent.config(),
        **{k: built[k] for k in ("model", "dataset", "split", "num_edits")},
        "environment": built,
        **({"tuning": tuning} if tuning is not None else {}),
        **metrics,
        **peak_memory_mb(),
    }
    if snapshot is not None:  # the result first: the sequence is never left without a record
        write_json(args.out, result)
        snapshot.path.unlink(missing_ok=True)
    return result


def tune_for_evaluation(args: argparse.Namespace, cls: type[Agent], folder: Path) -> dict[str, Any]:
    """Tune an agent's :attr:`~hiedit_agents.common.base.Agent.tuned_options` on the training data as ``hiedit train``
    does (:func:`train_agent`: ``--train-steps`` edits, by default the agent's ``default_train_steps``, in
    ``DEFAULT_TRAIN_EDITS``-edit episodes, seeded by ``--train-seed``), saving the tuned agent into ``folder``;
    returns the training statistics with ``tuned`` and the chosen values."""
    train_dataset = args.train_dataset or args.dataset
    if train_dataset == args.dataset and {args.split, args.train_split} != {"train", "test"}:
        warnings.warn(
            f"tuning on split {args.train_split!r} and evaluating on split {args.split!r} of {args.dataset!r}: "
            "they share records (give --train-dataset, or the train and test splits)",
            stacklevel=2,
        )
    train_args = argparse.Namespace(
        **{
            **vars(args),
            "dataset": train_dataset,
            "split": args.train_split,
            "num_edits": DEFAULT_TRAIN_EDITS,
            "seed": args.train_seed,
            "out_dir": folder,
            "steps": args.train_steps,
            "resume": False,
            "checkpoint_every": None,
        }
    )
    stats = train_agent(train_args)
    config = cls.saved_meta(folder, "the tuned agent")["config"]
    chosen = {name: config[name] for name in cls.tuned_options}
    built = stats["environment"]
    print(
        f"tuned {', '.join(f'{k} = {v}' for k, v in chosen.items())} on {stats['steps']} edits of {built['dataset']} "
        f"(split {built['split']}, {built['num_edits']}-edit episodes, seed {args.train_seed}) in {stats['total_seconds']:.0f} s"
    )
    return {"tuned": True, "chosen": chosen, **stats}


def add_common(parser: argparse.ArgumentParser, num_edits: int, split: str) -> None:
    parser.add_argument(
        "--agent", required=True, help=f"one of {', '.join(available_agents())}, or package.module:ClassName"
    )
    add_model_and_data(parser, split)
    parser.add_argument("--num-edits", type=positive_int, default=num_edits, help="edits per episode")
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument(
        "--agent-kwargs",
        type=json_object,
        default={},
        help="JSON object of agent constructor arguments (with --checkpoint: only the agent's acting "
        'options, e.g. {"max_size_ratio": 3} for the learned editors)',
    )
    parser.add_argument("--env-kwargs", type=json_object, default={}, help="JSON object of extra gym.make arguments")
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="torch CPU threads (default: torch's choice; 1 is fastest on a busy machine)",
    )
    parser.add_argument(
        "--low-memory",
        action="store_true",
        help="hand freed memory back to the system at once (glibc): a lower peak RSS, slower steps",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="hiedit", description="HiEdit Gym: lifelong knowledge editing as RL")
    sub = parser.add_subparsers(dest="command", required=True)
    add_demo_parser(sub)

    train = sub.add_parser(
        "train", help="train an agent on a training split and save a checkpoint", parents=[common_options()]
    )
    add_common(train, DEFAULT_TRAIN_EDITS, "train")
    train.add_argument(
        "--steps",
        type=positive_int,
        default=None,
        help=f"training edits in all (default: the agent's; {DEFAULT_TRAIN_STEPS} for the zoo's "
        "editors, n_timesteps of the hyperparameter file for SB3 agents)",
    )
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted run saved in --out (same command otherwise) up to --steps edits "
        "in all; it ends as the run would have without the interruption",
    )
    train.add_argument(
        "--checkpoint-every",
        type=positive_int,
        default=None,
        help="save the run into --out every that many training edits, at the next episode's end "
        "(default: 100 for the learned editors; checkpoint_freq of the hyperparameter file for SB3 "
        "agents); SIGINT/SIGTERM also save before exiting",
    )
    train.add_argument(
        "--out",
        dest="out_dir",
        required=True,
        help="directory for the checkpoint, TensorBoard logs and train_stats.json",
    )
    train.set_defaults(run=run_train)

    evaluate = sub.add_parser(
        "evaluate",
        help="run one episode with an agent and write the end-of-sequence metrics",
        parents=[common_options()],
    )
    add_common(evaluate, DEFAULT_EVAL_EDITS, "test")
    evaluate.add_argument("--checkpoint", default=None, help="directory written by 'hiedit train'")
    evaluate.add_argument(
        "--train-dataset",
        default=None,
        help="data an agent that tunes before acting (the heuristics' constant step) is tuned on, "
        "as 'hiedit train' tunes it, unless --checkpoint or --agent-kwargs gives the step "
        "(default: --dataset)",
    )
    evaluate.add_argument(
        "--train-split",
        default="train",
        choices=("train", "test", "all"),
        help="split of --train-dataset to tune on (default: train)",
    )
    evaluate.add_argument(
        "--train-seed",
        type=non_negative_int,
        default=0,
        help="seed of the tuning, as 'hiedit train --seed' (default: 0)",
    )
    evaluate.add_argument(
        "--train-steps",
        type=positive_int,
        default=None,
        help=f"tuning edits in all, as 'hiedit train --steps' (default: the agent's; {DEFAULT_TRAIN_STEPS} "
        f"for the heuristics, in {DEFAULT_TRAIN_EDITS}-edit episodes)",
    )
    evaluate.add_argument("--out", default="results.json", help="where to write the metrics as JSON")
    evaluate.add_argument(
        "--snapshot-every",
        type=non_negative_float,
        default=SNAPSHOT_SECONDS,
        help="record the sequence so far in OUT.snapshot.pt at most this often (seconds; 0: never); the same "
        "command continues an interrupted sequence from it, and it is removed once OUT is written "
        f"(default: {SNAPSHOT_SECONDS:.0f})",
    )
    evaluate.set_defaults(run=run_evaluate)
    add_sweep_parsers(sub)
    add_table_parser(sub)
    add_curves_parser(sub)
    add_speed_parser(sub)
    add_module_costs_parser(sub)
    add_key_statistics_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``hiedit`` console script."""
    return run_cli(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
