"""How far a trained editor's updates turn from the gradient step: cos(dW, -G) per module and edit.

An untrained editor's update is exactly the gradient step of the trace it reads (cosine 1), and it
has not broken the model on any of our 100-edit ZsRE sequences; the trained ones sometimes do, with
the same sizes (``scale="direction"``: only the direction is the network's). This measures the
direction the network chose: for each edit of one episode, the cosine between each changed module's
update ``dW`` and ``-G`` (the trace's raw weight gradient), through ``n x n`` products so no
[d_out, d_in] matrix is formed. The agent acts as in evaluation; the environment's per-step
``locality`` is recorded beside it.

    python benchmarks/update_alignment.py --agent rledit --checkpoint runs/s11/zsre_val_seed0/rledit \\
        --out benchmarks/results/zsre_validated/alignment/rledit_train_seed0.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import warnings
from pathlib import Path

import torch

import hiedit_env  # noqa: F401  (registers HiEdit-v0)
from hiedit_agents import agent_class
from hiedit_agents.base import load_for_acting
from hiedit_env.objective import update_sq_norm


def cosine_to_descent(update: tuple[torch.Tensor, torch.Tensor], keys: torch.Tensor, grads: torch.Tensor) -> float:
    """cos(U^T V, -grads^T keys) for ``U`` [n, d_out], ``V`` [n, d_in], ``grads`` [m, d_out], ``keys`` [m, d_in]."""
    u, v = update
    g, k = grads.float(), keys.float()
    inner = ((u @ g.T) * (v @ k.T)).sum()
    norms = update_sq_norm((u, v)).clamp_min(0).sqrt() * update_sq_norm((g, k)).clamp_min(0).sqrt()
    return float(-inner / norms.clamp_min(1e-30))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agent", default="rledit")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dataset", default="../shared/data/zsre/zsre_mend_1k.json")
    parser.add_argument("--split", default="train", help="default: the selection episode's split, not the test edits")
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--num-edits", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning)
    torch.set_num_threads(args.threads)
    agent, env = load_for_acting(agent_class(args.agent), args.checkpoint, model=args.model, dataset=args.dataset,
                                 split=args.split, num_edits=args.num_edits, evaluate_generation=False)
    observation, info = env.reset(seed=args.seed)
    per_edit, locality, terminated = [], [], False
    while not terminated:
        action = agent.act(observation, info)
        trace = agent.read_trace(env.unwrapped)  # cached: the one the editor just read
        per_edit.append([cosine_to_descent(update, k, g) for update, k, g in zip(action["update"], trace.keys, trace.grads)
                         if update is not None])
        observation, _, terminated, _, info = env.step(action)
        locality.append(float(info["locality"]))
    cosines = [c for edit in per_edit for c in edit]
    result = {"checkpoint": args.checkpoint, "split": args.split, "seed": args.seed, "num_edits": args.num_edits,
              "cosine_mean": statistics.mean(cosines), "cosine_min": min(cosines),
              "cosine_mean_per_edit": [statistics.mean(edit) for edit in per_edit], "locality_per_edit": locality,
              "episode_mean": info["episode_metrics"]["mean"]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"{args.checkpoint}: cos(dW, -G) mean {result['cosine_mean']:.3f}, lowest {result['cosine_min']:.3f} "
          f"over {len(cosines)} module updates; episode mean {result['episode_mean']:.3f}")


if __name__ == "__main__":
    main()
