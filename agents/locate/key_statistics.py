"""``hiedit key-statistics``: how far the key statistics from the model's own text are from those of the edit data's prompts.

MEMIT and AlphaEdit weigh their updates by ``C = E[k k^T]`` of the edited modules' inputs; offline,
the locate agents estimate it from text sampled from the model (``stats_source="model"``). This
command computes ``C`` of the same modules from the prompts of a data set's split (edit prompts,
paraphrases and unrelated prompts, one text each) and compares the two spectrally
(:func:`~hiedit_agents.locate.stats.compare_second_moments`): relative Frobenius distance, overlap of
the top eigenvector subspaces, and overlap of the subspaces AlphaEdit's null space keeps. The sampled
``C`` comes from (or goes to) the agents' cache, so a later run of the agent reads it.

    hiedit key-statistics --agent memit --dataset ../shared/data/zsre/zsre_mend_1k.json --records 200 \\
        --threads 1 --out benchmarks/results/locate/key_statistics_zsre.json
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import gymnasium as gym
import torch

from hiedit_env.cli import add_model_and_data, common_options, positive_int
from hiedit_env.files import write_text

from ..registry import agent_class, make_agent
from .stats import compare_second_moments, key_second_moments

AGENTS = ("rome", "memit", "alphaedit")


def run_key_statistics(args: argparse.Namespace) -> dict[str, Any]:
    """``hiedit key-statistics``: per edited module of ``--agent``'s preset, the comparison (also printed)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    cls = agent_class(args.agent)
    env = gym.make(
        "HiEdit-v0",
        model=args.model,
        dataset=args.dataset,
        split=args.split,
        num_edits=1,
        evaluate_generation=False,
        **cls.acting_requirements({}),
    )
    agent = make_agent(args.agent, env)  # computes (or reads) C from sampled text
    unwrapped, hp = env.unwrapped, agent.hparams
    prompts = [text for r in unwrapped.records[: args.records] for text in (r.prompt, r.rephrase, r.loc_prompt)]
    with tempfile.TemporaryDirectory() as folder, unwrapped.unedited():
        path = Path(folder) / "prompts.txt"
        write_text(path, "\n".join(" ".join(p.split()) for p in prompts) + "\n")
        common = (unwrapped.model, unwrapped.tokenizer, unwrapped.shared.name, agent.names)
        sampled = key_second_moments(
            *common,
            hp["stats_source"],
            hp["stats_samples"],
            hp["stats_length"],
            hp["stats_seed"],
            hp["stats_dir"],
        )
        from_prompts = key_second_moments(*common, str(path), len(prompts), hp["stats_length"], cache_dir=folder)
    result = {
        "model": args.model,
        "dataset": args.dataset,
        "split": args.split,
        "records": args.records,
        "prompts": len(prompts),
        "sampled": {k: hp[k] for k in ("stats_source", "stats_samples", "stats_length", "stats_seed")},
        "top": args.top,
        "modules": {name: compare_second_moments(sampled[name], from_prompts[name], args.top) for name in agent.names},
    }
    print(f"C from {hp['stats_source']!r} text against C from {len(prompts)} prompts of {args.dataset} ({args.split}):")
    for name, figures in result["modules"].items():
        print(" ", name, ", ".join(f"{k} {v:.3f}" for k, v in figures.items()))
    return result


def add_key_statistics_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``key-statistics`` subcommand to ``sub``."""
    parser = sub.add_parser(
        "key-statistics",
        help="the locate agents' key statistics from sampled text against those of a data set's prompts",
        description=__doc__.split("\n\n")[0],
        parents=[common_options()],
    )
    add_model_and_data(parser, "train")
    parser.add_argument("--agent", default="memit", choices=AGENTS, help="whose edited modules and preset")
    parser.add_argument(
        "--records", type=positive_int, default=None, help="the split's first N records only (default: all)"
    )
    parser.add_argument("--top", type=positive_int, default=32, help="eigenvectors in the compared top subspaces")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    parser.add_argument("--out", default=None, help="write the comparison as JSON here")
    parser.set_defaults(run=run_key_statistics)
    return parser
