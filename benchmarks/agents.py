"""Agent sweep: every agent on the same held-out edit sequence, metrics against the number of edits.

Learned agents are loaded from ``--checkpoints/<agent>`` (written by ``hiedit train``); the
constant-step heuristics tune their step on the training split first (``Agent.learn``), never on
the evaluation edits. During the one evaluation episode the edited model is also scored on all
edits so far at a few points of the sequence, which gives the ES/GS/LS-against-edits plot.
``--include NAME=FILE,...`` adds an earlier sweep's result file of the same sequence to the table
and plot under ``NAME`` (e.g. one agent re-run with a new checkpoint beside the others' curves).

    python benchmarks/agents.py --dataset ../shared/data/zsre/zsre_mend_1k.json --checkpoints runs/zsre \\
        --num-edits 100 --seed 0 --out benchmarks/results/zsre
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path
from typing import Any

import gymnasium as gym
import matplotlib
import torch

import hiedit_env  # noqa: F401  (registers HiEdit-v0)
from hiedit_agents import agent_class
from hiedit_agents.common.base import Agent
from hiedit_agents.common.checkpoint import read_checkpoint_meta
from hiedit_agents.common.evaluation import run_episode

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from hiedit_env.files import atomic_write, write_json, write_text

COLUMNS = ("ES", "GS", "LS", "mean", "LS_answer", "ES_gen", "GS_gen", "efficacy", "ES_first_20pct",
           "layers_per_edit", "seconds_per_edit", "agent_seconds_per_edit")


def evaluate_agent(agent: Agent, env: gym.Env, seed: int, points: list[int]) -> dict[str, Any]:
    """One episode; the metrics on all edits so far at each of ``points``, and the final metrics."""
    curve: list[dict[str, float]] = []

    def score_midway(info: dict[str, Any], terminated: bool) -> None:
        done = env.unwrapped.edit_index
        if done in points and not terminated:
            m = env.unwrapped.evaluate(generation=False)
            curve.append({"edits": done, **{k: m[k] for k in ("ES", "GS", "LS")}})

    metrics = run_episode(agent, env, seed, on_step=score_midway)
    curve.append({"edits": metrics["num_edits"], **{k: metrics[k] for k in ("ES", "GS", "LS")}})
    return {**metrics, "curve": curve}


def plot_curves(results: dict[str, dict[str, Any]], title: str, path: Path) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(14, 4), sharey=True)
    for name, result in results.items():
        edits = [p["edits"] for p in result["curve"]]
        for ax, key in zip(axes, ("ES", "GS", "LS")):
            ax.plot(edits, [p[key] for p in result["curve"]], marker="o", label=name)
    for ax, key in zip(axes, ("ES", "GS", "LS")):
        ax.set_title(key)
        ax.set_xlabel("edits applied (scored on all of them)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("score (teacher-forced token level)")
    axes[-1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))  # beside the curves, not on them
    fig.suptitle(title)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, bbox_inches="tight"))
    plt.close(fig)


def markdown_table(results: dict[str, dict[str, Any]]) -> str:
    present = [c for c in COLUMNS if any(c in r for r in results.values())]
    lines = ["| agent | " + " | ".join(present) + " |", "|---" * (len(present) + 1) + "|"]
    for name, r in results.items():
        cells = [f"{r[c]:.3f}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in present]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def read_included(parser: argparse.ArgumentParser, spec: str) -> dict[str, dict[str, Any]]:
    """``NAME=FILE,...`` -> {NAME: that sweep's result}; a file that is not one is a usage error."""
    included = {}
    for item in filter(None, spec.split(",")):
        name, _, path = item.partition("=")
        try:
            result = json.loads(Path(path).read_text())
        except (OSError, ValueError) as error:
            parser.error(f"--include {item}: {error}")
        if not name or not isinstance(result, dict) or "curve" not in result:
            parser.error(f"--include {item}: expected NAME=FILE with a result file of this script (with a 'curve')")
        included[name] = result
    return included


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dataset", required=True, help="evaluation data (the test split of it is used)")
    parser.add_argument("--train-dataset", default=None, help="data the heuristics tune on (default: --dataset, train split)")
    parser.add_argument("--eval-split", default="test")
    parser.add_argument("--agents", default="noop,all,random_k,topk_grad,ft_l,rledit,hiedit")
    parser.add_argument("--checkpoints", default=None, help="folder with one checkpoint folder per learned agent")
    parser.add_argument("--num-edits", type=int, default=100)
    parser.add_argument("--tune-edits", type=int, default=100, help="training edits per heuristic's step search")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", required=True)
    parser.add_argument("--rerun", action="store_true", help="re-evaluate agents whose results are already in --out")
    parser.add_argument("--include", default="", metavar="NAME=FILE,...",
                        help="result files of earlier sweeps of the same sequence to show beside these agents")
    args = parser.parse_args()
    included = read_included(parser, args.include)
    warnings.filterwarnings("ignore", category=UserWarning)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    points = sorted({max(1, int(args.num_edits * f)) for f in (0.1, 0.25, 0.5, 0.75)})
    results: dict[str, dict[str, Any]] = {}
    for name in args.agents.split(","):
        done = out / f"{name}.json"
        if done.exists() and not args.rerun:  # a crashed or interrupted sweep resumes where it stopped
            results[name] = json.loads(done.read_text())
            continue
        cls = agent_class(name)
        checkpoint = Path(args.checkpoints or ".") / name
        config = read_checkpoint_meta(checkpoint)["config"] if cls.requires_training else {}
        common = {"model": args.model, **cls.acting_requirements(config)}
        env = gym.make("HiEdit-v0", dataset=args.dataset, split=args.eval_split, num_edits=args.num_edits, **common)
        tuning: dict[str, Any] = {}
        if cls.requires_training:
            agent = cls.load(checkpoint, env)
        else:
            agent = cls(env)
            train_env = gym.make("HiEdit-v0", dataset=args.train_dataset or args.dataset,
                                 split="all" if args.train_dataset else "train", num_edits=20,
                                 evaluate_generation=False, **common)
            tuning = agent.learn(train_env, args.tune_edits, seed=args.seed)
        results[name] = {**evaluate_agent(agent, env, args.seed, points), "tuning": tuning, "config": agent.config()}
        write_json(out / f"{name}.json", results[name])
    results.update(included)
    table = markdown_table(results)
    write_text(out / "table.md", table + "\n")
    title = f"{args.model}, {Path(args.dataset).name} ({args.eval_split} split), {args.num_edits} edits, seed {args.seed}"
    plot_curves(results, title, out / "curves.png")
    print(table)


if __name__ == "__main__":
    main()
