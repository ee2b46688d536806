"""How much of each edit's target residual MEMIT's solve realises, for several ``mom2_weight`` values.

    python -m hiedit_agents.locate.residual --model smollm2-135m --dataset ../shared/data/zsre/zsre_mend_1k.json \\
        --split train --num-edits 5 --seed 1000 --mom2-weights 15000 1500 150 --threads 1 --out residual.json

One sequence is edited by ``memit`` with its own preset (``--agent-kwargs`` overrides it). At each edit
the value ``z`` is optimised once; then, for every weight ``lambda`` (the same ``z`` and model), the
updates are solved, not applied, and two figures are read:

* per edited block, the gain ``k^T x = ||dW k|| / ||r||``: the share of that block's residual ``r``
  its update writes at its own key (``a / (1 + a)`` with ``a = k^T (lambda C)^{-1} k`` for one key);
* the share of the whole residual realised at the value's block, ``1 - ||z - h'|| / ||z - h||``
  (``h`` before the edit, ``h'`` with every block's update added), on the bare prompt.

The solve's cost is one factor of ``lambda C`` per weight: a Cholesky factor scales by ``sqrt`` of the
weight, so no weight costs another factorisation.
"""

from __future__ import annotations

import argparse
import json
import math
import warnings
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from hiedit_env.files import write_json

from ..registry import make_agent
from .agents import MEMITAgent
from .values import edit_inputs, keys_and_hidden


def residual_shares(env: gym.Env, agent: MEMITAgent, weights: list[float], seed: int) -> dict[str, Any]:
    """Per weight, the mean gain of each edited block and the mean realised share over one sequence of ``env``."""
    unwrapped = env.unwrapped
    own, preset = agent.hparams["mom2_weight"], list(agent.cholesky)
    pad = int(unwrapped.tokenizer.pad_token_id)
    gains: dict[float, list[list[float]]] = {w: [] for w in weights}
    shares: dict[float, list[float]] = {w: [] for w in weights}
    values: list[dict[str, float]] = []
    observation, info = env.reset(seed=seed)
    terminated = False
    while not terminated:
        record = unwrapped.current_record
        unwrapped.candidate_weights()
        inputs = edit_inputs(unwrapped.tokenizer, record.prompt, record.subject, record.target_new, agent.prefixes)
        target = agent.value(inputs)
        values.append(dict(agent.last_value))
        _, before = keys_and_hidden(unwrapped.model, [], [], agent.block, inputs, pad)
        for weight in weights:
            agent.cholesky = [factor * math.sqrt(weight / own) for factor in preset]
            updates = agent.solve(target, inputs, absorb=False)
            _, after = keys_and_hidden(unwrapped.model, [], list(zip(agent.modules, updates)), agent.block, inputs, pad)
            gains[weight].append(agent.last_gains)
            shares[weight].append(float(1 - (target - after).norm() / (target - before).norm()))
        agent.cholesky = preset
        observation, _, terminated, _, info = env.step(agent.action(agent.solve(target, inputs)))
    return {
        "per_weight": [
            {
                "mom2_weight": w,
                "gain_per_block": np.mean(gains[w], 0).round(4).tolist(),
                "realised_share": round(float(np.mean(shares[w])), 4),
                "realised_share_per_edit": [round(x, 4) for x in shares[w]],
            }
            for w in weights
        ],
        "value": values,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hiedit_agents.locate.residual", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--split", default="train", choices=("train", "test", "all"))
    parser.add_argument("--num-edits", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--mom2-weights", type=float, nargs="+", required=True)
    parser.add_argument("--agent-kwargs", default="{}", help="JSON object of memit hyperparameters")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=UserWarning)
    if args.threads:
        torch.set_num_threads(args.threads)
    if any(not w > 0 for w in args.mom2_weights):
        parser.error(f"--mom2-weights must be positive, got {args.mom2_weights}")
    env = gym.make(
        "HiEdit-v0",
        model=args.model,
        dataset=args.dataset,
        split=args.split,
        num_edits=args.num_edits,
        evaluate_generation=False,
        **MEMITAgent.acting_requirements({}),
    )
    agent = make_agent("memit", env, **json.loads(args.agent_kwargs))
    result = {
        "model": args.model,
        "dataset": args.dataset,
        "split": args.split,
        "seed": args.seed,
        "num_edits": args.num_edits,
        "hyperparameters": agent.config(),
        **residual_shares(env, agent, args.mom2_weights, args.seed),
    }
    write_json(args.out, result)
    for row in result["per_weight"]:
        print(
            f"mom2_weight {row['mom2_weight']:>10g}: realised share {row['realised_share']:.3f}, "
            f"gain per block {row['gain_per_block']}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
