"""The learned editors' starting point, evaluated: does training help over it?

An untrained RLEdit editor emits exactly the gradient step of the trace it reads (its up-projections
start at zero; with ``precondition`` > 0, the default, its keys multiplied by the inverse of their damped
second-moment matrix, or with ``{"preconditioner": "diagonal"}`` divided by their second moments) at
the relative step ``init_lr``, once its normalisers and (every scale but
"edit") its gradient-size statistics have seen some edits. Here they see the first ``--observe-edits`` edits
of training-split episodes (seeds 0, 1, ...; 20 edits each) on the unedited model (no-op steps), and
the editor is then evaluated on one episode, like a trained checkpoint.

    python benchmarks/untrained_editor.py --split train --seed 1000 --out runs/untrained/objective_train1000.json
    python benchmarks/untrained_editor.py --split train --seed 1000 --agent-kwargs '{"trace_of": "edit"}' --out ...
    python benchmarks/untrained_editor.py --split train --seed 1000 --env-kwargs '{"back_depth": 0}' --out ...
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import gymnasium as gym
import torch

import hiedit_env  # noqa: F401  (registers HiEdit-v0)
from hiedit_agents import RLEditAgent, run_episode
from hiedit_agents.cli import DEFAULT_TRAIN_EDITS  # observed episodes as long as training's


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dataset", default="../shared/data/zsre/zsre_mend_1k.json")
    parser.add_argument("--split", default="test", help="split of --dataset to evaluate on")
    parser.add_argument("--train-dataset", default=None, help="observe this file (all of it) instead of --dataset's train split")
    parser.add_argument("--num-edits", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--observe-edits", type=int, default=60)
    parser.add_argument("--agent-kwargs", type=json.loads, default={})
    parser.add_argument("--env-kwargs", type=json.loads, default={}, help="extra gym.make arguments for both environments")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning)
    if args.threads:
        torch.set_num_threads(args.threads)
    common = {"model": args.model, **RLEditAgent.acting_requirements(args.agent_kwargs), **args.env_kwargs}
    train_env = gym.make("HiEdit-v0", dataset=args.train_dataset or args.dataset,
                         split="all" if args.train_dataset else "train", num_edits=DEFAULT_TRAIN_EDITS,
                         evaluate_generation=False, **common)
    env = gym.make("HiEdit-v0", dataset=args.dataset, split=args.split, num_edits=args.num_edits, **common)
    agent = RLEditAgent(env, **args.agent_kwargs)
    agent.observe_unedited(train_env, args.observe_edits)
    metrics = {**run_episode(agent, env, args.seed), "config": agent.config(), "env_kwargs": args.env_kwargs,
               "observed_edits": args.observe_edits}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(metrics, indent=2))
    print({k: round(metrics[k], 3) for k in ("ES", "GS", "LS", "mean", "ES_at_edit", "ES_first_20pct")})


if __name__ == "__main__":
    main()
