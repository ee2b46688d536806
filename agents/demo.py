"""``hiedit demo``: editing that works beside editing that does not, on the same edits.

With no arguments three agents edit the same sequence of the shipped edit set (its held-out ``test``
split, 12 records) on the embedded SmolLM2-135M:

* ``noop``: the unedited model, the floor every editor must beat on ES and GS;
* ``constant step``: the mid-range step-size action on every candidate (``all`` with ``step`` 0), the
  naive editor: it writes each fact and wrecks the model's other answers;
* ``untrained editor``: RLEdit's editor before any training, a key-preconditioned gradient step whose
  statistics come from the set's ``train`` split (:class:`~hiedit_agents.learned.rledit.UntrainedEditorAgent`),
  the strongest zoo agent that needs no training.

It prints one table (ES, GS, LS and their mean, efficacy, seconds per edit) and draws ES/GS/LS of the
edits so far against the edits applied into a PNG whose path it prints. ``--agents`` compares other
zoo agents; ``--step X`` runs the single constant-step agent at action ``X``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import gymnasium as gym

from hiedit_env.cli import add_model_and_data, common_options, non_negative_int, positive_int
from hiedit_env.files import check_output_file

from .common.base import build_agent
from .common.evaluation import run_episode
from .registry import agent_class
from .sweep.report import curve_plot

# (label, zoo agent, constructor arguments)
DEMO_AGENTS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("noop", "noop", {}),
    ("constant step", "all", {"step": 0.0}),
    ("untrained editor", "untrained_editor", {}),
)
# Column -> header: the metrics of the table, seconds as "s/edit".
COLUMNS = {
    "ES": "ES",
    "GS": "GS",
    "LS": "LS",
    "mean": "mean",
    "efficacy": "efficacy",
    "seconds_per_edit": "env s/edit",
    "agent_seconds_per_edit": "agent s/edit",
}


def demo_agents(args: argparse.Namespace) -> list[tuple[str, str, dict[str, Any]]]:
    """The agents a demo run compares: ``--step``'s single constant step, ``--agents``, or :data:`DEMO_AGENTS`."""
    if args.step is not None:
        return [(f"constant step {args.step:g}", "all", {"step": args.step})]
    if args.agents:
        return [(name, name, {}) for name in args.agents]
    return list(DEMO_AGENTS)


def run_demo(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, dict[str, Any]] = {}
    entries = demo_agents(args)
    check_output_file(args.plot, "--plot")
    for _, name, _ in entries:  # every name checked before the model loads
        if agent_class(name).requires_training:
            raise ValueError(f"agent {name!r} must be trained first; the demo runs agents that need no training")
    for label, name, kwargs in entries:
        cls = agent_class(name)
        env = gym.make(
            "HiEdit-v0",
            model=args.model,
            dataset=args.dataset,
            split=args.split,
            num_edits=args.num_edits,
            evaluate_generation=False,
            **cls.acting_requirements(kwargs),
        )
        try:
            agent = build_agent(cls, env, kwargs)
            results[label] = run_episode(agent, env, args.seed, curve_points=min(4, args.num_edits))
        finally:
            env.close()
    print(
        format_table(
            results,
            f"{args.num_edits} sequential edits of {args.dataset!r} (split {args.split}, "
            f"seed {args.seed}) on {args.model}",
        )
    )
    plot = curve_plot(
        {label: [metrics] for label, metrics in results.items()},
        Path(args.plot),
        f"{args.model}: ES/GS/LS of the edits so far",
    )
    print(f"curves: {plot}")
    return {
        label: {k: v for k, v in metrics.items() if k not in ("per_edit", "module_share", "layer_share", "ES_at_edit")}
        for label, metrics in results.items()
    }


def format_table(results: dict[str, dict[str, Any]], title: str) -> str:
    """One row per agent, one column per headline metric; the protocols below the table."""
    columns = [c for c in COLUMNS if any(c in m for m in results.values())]
    width = max(len(label) for label in results) + 2
    lines = [title, " " * width + "".join(f"{COLUMNS[c]:>13}" for c in columns)]
    for label, metrics in results.items():
        cells = "".join(f"{metrics[c]:>13.3f}" if isinstance(metrics.get(c), float) else f"{'-':>13}" for c in columns)
        lines.append(f"{label:<{width}}{cells}")
    protocols = next(iter(results.values())).get("protocols", {})
    lines += [f"  {key}: {protocols[key]}" for key in ("ES", "LS", "efficacy") if key in protocols and key in columns]
    return "\n".join(lines)


def add_demo_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``demo`` subcommand of the ``hiedit`` command to ``sub``."""
    demo = sub.add_parser(
        "demo", help="compare a few agents on the same edits and print their metrics", parents=[common_options()]
    )
    add_model_and_data(demo, "test")
    demo.add_argument("--num-edits", type=positive_int, default=12)
    demo.add_argument("--seed", type=non_negative_int, default=0)
    demo.add_argument(
        "--agents",
        nargs="+",
        default=None,
        metavar="AGENT",
        help="zoo agents that need no training to compare (default: noop, a constant step, untrained_editor)",
    )
    demo.add_argument("--step", type=float, default=None, help="run only the constant step-size action in [-1, 1]")
    demo.add_argument("--plot", default="hiedit-demo.png", help="where to draw the ES/GS/LS curves (PNG)")
    demo.add_argument("--out", default=None, help="also write every agent's metrics as JSON here")
    demo.set_defaults(run=run_demo)
    return demo
