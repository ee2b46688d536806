"""``hiedit module-costs``: what each candidate module's update costs and gains on its own, the view a layer selector needs.

The untrained editor (RLEdit's before training, ``hiedit evaluate --agent untrained_editor``) edits
one episode; before each of its first ``--num-edits`` edits, every candidate's update is also applied
*alone* to the current model and measured in one batched pass: how much it lowers the cross-entropy of
the new answer on the edit prompt and on its paraphrase, and the KL it causes on ``--unrelated``
unrelated prompts of records outside the episode (their own locality prompts). The sequence itself
goes on with the dense update, as the untrained editor makes it.

    hiedit module-costs --dataset ../shared/data/zsre/zsre_mend_1k.json --split train --seed 1000 \\
        --threads 1 --out benchmarks/results/zsre_modules/module_costs.json
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

import gymnasium as gym
import torch
from tqdm import trange

from hiedit_env import HiEditEnv
from hiedit_env.cli import add_model_and_data, common_options, non_negative_int, positive_int
from hiedit_env.objective import row_losses
from hiedit_env.score import score_pairs
from hiedit_env.tokens import encode_record

from .common.base import DEFAULT_TRAIN_EDITS
from .learned.rledit import RLEditAgent


def run_module_costs(args: argparse.Namespace) -> dict[str, Any]:
    """``hiedit module-costs``: per candidate, the mean over the measured edits (also printed as a table)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    common = {
        "model": args.model,
        "dataset": args.dataset,
        "evaluate_generation": False,
        **RLEditAgent.acting_requirements({}),
    }
    # The editor's statistics come from training edits, in episodes as long as training's.
    train_env = gym.make("HiEdit-v0", split="train", num_edits=DEFAULT_TRAIN_EDITS, **common)
    env = gym.make("HiEdit-v0", split=args.split, num_edits=args.num_edits, **common)
    unwrapped: HiEditEnv = env.unwrapped
    agent = RLEditAgent(env)
    agent.observe_unedited(train_env, args.observe_edits)
    observation, info = env.reset(seed=args.seed)
    in_episode = {r.index for r in unwrapped.episode_records()}
    outside = [r for r in unwrapped.records if r.index not in in_episode][-args.unrelated :]
    if not outside:
        raise ValueError(f"split {args.split!r} has no record outside the episode to measure the KL on")
    tokenizer, limits = unwrapped.tokenizer, unwrapped.token_limits
    unrelated = [encode_record(tokenizer, r, *limits).loc for r in outside]
    modules = list(unwrapped.shared.modules(unwrapped.candidate_modules).values())
    pad_id = int(tokenizer.pad_token_id)
    n = agent.num_candidates
    per_edit = []
    for _ in trange(args.num_edits, desc="edits, every candidate alone"):
        updates = agent.editor(agent.read_trace(unwrapped))
        record = encode_record(tokenizer, unwrapped.current_record, *limits)  # as the environment encodes it
        pairs = [record.edit, record.rephrase, *unrelated]
        # The objective's own per-row losses: cross-entropy of the answer on the edit and its
        # paraphrase, KL from the current model (before this edit) on the unrelated prompts.
        references = [None, None, *score_pairs(unwrapped.model, unrelated, pad_id, keep_log_probs=True).log_probs]

        def losses(candidate_updates, pairs=pairs, references=references):  # this edit's rows, bound now
            with torch.no_grad():
                return row_losses(unwrapped.model, modules, candidate_updates, pairs, references, pad_id)[0]

        before = losses([None] * n)
        rows = []
        for i in range(n):
            after = losses([updates[i] if j == i else None for j in range(n)])
            rows.append(
                {
                    "edit_ce_drop": float(before[0] - after[0]),
                    "paraphrase_ce_drop": float(before[1] - after[1]),
                    "unrelated_kl": float(after[2:].mean()),
                }
            )
        per_edit.append(rows)
        observation, _, _, _, info = env.step(agent.act(observation, info))
    means = [{key: statistics.fmean(edit[i][key] for edit in per_edit) for key in per_edit[0][0]} for i in range(n)]
    print("| module | edit CE drop | paraphrase CE drop | KL on unrelated prompts | KL per nat of edit CE |")
    print("|---|---|---|---|---|")
    for name, m in zip(unwrapped.candidate_modules, means):
        ratio = m["unrelated_kl"] / max(m["edit_ce_drop"], 1e-9)
        print(
            f"| {name} | {m['edit_ce_drop']:.3f} | {m['paraphrase_ce_drop']:.3f} | {m['unrelated_kl']:.4f} | {ratio:.4f} |"
        )
    return {
        "model": args.model,
        "dataset": args.dataset,
        "modules": unwrapped.candidate_modules,
        "mean": means,
        "per_edit": per_edit,
        "split": args.split,
        "seed": args.seed,
        "unrelated": len(unrelated),
    }


def add_module_costs_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``module-costs`` subcommand to ``sub``."""
    parser = sub.add_parser(
        "module-costs",
        help="each candidate module's update alone: its gain on the edit and its KL on unrelated prompts",
        description=__doc__.split("\n\n")[0],
        parents=[common_options()],
    )
    add_model_and_data(parser, "train")
    parser.add_argument("--seed", type=non_negative_int, default=1000)
    parser.add_argument(
        "--num-edits", type=positive_int, default=5, help="edits measured (each costs one pass per candidate)"
    )
    parser.add_argument("--unrelated", type=positive_int, default=16, help="unrelated prompts the KL is measured on")
    parser.add_argument(
        "--observe-edits", type=positive_int, default=60, help="training edits the editor's statistics see"
    )
    parser.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    parser.add_argument("--out", default=None, help="write the figures as JSON here")
    parser.set_defaults(run=run_module_costs)
    return parser
