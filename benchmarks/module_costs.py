"""What each candidate module's update costs and gains on its own: the view a layer selector needs.

An untrained RLEdit editor (the objective's gradient step, ``hiedit evaluate --agent untrained_editor``) edits
one episode; before each of its first ``--num-edits`` edits, every candidate's update is also
applied *alone* to the current model and measured in one batched pass: how much it lowers the
cross-entropy of the new answer on the edit prompt and on its paraphrase, and the KL it causes on
``--unrelated`` unrelated prompts of records outside the episode (their own locality prompts). The
sequence itself goes on with the dense update, as the untrained editor makes it.

    python benchmarks/module_costs.py --split train --seed 1000 --out benchmarks/results/zsre_modules/module_costs.json
"""

from __future__ import annotations

import argparse
import statistics
import warnings
from pathlib import Path

import gymnasium as gym
import torch
from hiedit_agents import RLEditAgent
from hiedit_agents.common.base import DEFAULT_TRAIN_EDITS  # observed episodes as long as training's

import hiedit_env  # noqa: F401  (registers HiEdit-v0)
from hiedit_env.files import write_json
from hiedit_env.objective import row_losses
from hiedit_env.score import score_pairs
from hiedit_env.tokens import encode_record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dataset", default="../shared/data/zsre/zsre_mend_1k.json")
    parser.add_argument("--split", default="train")
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--num-edits", type=int, default=5, help="edits measured (each costs one pass per candidate)")
    parser.add_argument("--unrelated", type=int, default=16, help="unrelated prompts the KL is measured on")
    parser.add_argument("--observe-edits", type=int, default=60, help="training edits the editor's statistics see")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    if args.num_edits < 1 or args.unrelated < 1:
        parser.error("--num-edits and --unrelated must be >= 1")
    warnings.filterwarnings("ignore", category=UserWarning)
    if args.threads:
        torch.set_num_threads(args.threads)
    common = {
        "model": args.model,
        "dataset": args.dataset,
        "evaluate_generation": False,
        **RLEditAgent.acting_requirements({}),
    }
    train_env = gym.make("HiEdit-v0", split="train", num_edits=DEFAULT_TRAIN_EDITS, **common)
    env = gym.make("HiEdit-v0", split=args.split, num_edits=args.num_edits, **common)
    unwrapped: hiedit_env.HiEditEnv = env.unwrapped
    agent = RLEditAgent(env)
    agent.observe_unedited(train_env, args.observe_edits)
    observation, info = env.reset(seed=args.seed)
    in_episode = {r.index for r in unwrapped.episode_records()}
    outside = [r for r in unwrapped.records if r.index not in in_episode][-args.unrelated :]
    unrelated = [encode_record(unwrapped.tokenizer, r).loc for r in outside]
    n = agent.num_candidates
    per_edit = []
    for t in range(args.num_edits):
        updates = agent.editor(agent.read_trace(unwrapped))
        record = unwrapped._episode[t]  # benchmark-only peeks: the tokenized records, modules and pad id
        pairs = [record.edit, record.rephrase, *unrelated]
        # The objective's own per-row losses: cross-entropy of the answer on the edit and its
        # paraphrase, KL from the current model (before this edit) on the unrelated prompts.
        references = [
            None,
            None,
            *score_pairs(unwrapped.model, unrelated, unwrapped._pad_id, keep_log_probs=True).log_probs,
        ]

        def losses(candidate_updates, pairs=pairs, references=references):  # this edit's rows, bound now
            with torch.no_grad():
                return row_losses(
                    unwrapped.model, unwrapped._modules, candidate_updates, pairs, references, unwrapped._pad_id
                )[0]

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
    result = {
        "modules": unwrapped.candidate_modules,
        "mean": means,
        "per_edit": per_edit,
        "split": args.split,
        "seed": args.seed,
        "unrelated": len(unrelated),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, result)
    print("| module | edit CE drop | paraphrase CE drop | KL on unrelated prompts | KL per nat of edit CE |")
    print("|---|---|---|---|---|")
    for name, m in zip(unwrapped.candidate_modules, means):
        ratio = m["unrelated_kl"] / max(m["edit_ce_drop"], 1e-9)
        print(
            f"| {name} | {m['edit_ce_drop']:.3f} | {m['paraphrase_ce_drop']:.3f} | {m['unrelated_kl']:.4f} | {ratio:.4f} |"
        )


if __name__ == "__main__":
    main()
