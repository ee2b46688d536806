"""Per-edit cost of ``env.step`` against the floor, measured in one process.

The floor for one edit is one forward+backward pass on the edit sequence with gradients only on the
candidate weights, plus one batched forward pass scoring the edit, its paraphrase and the unrelated
prompt. Both are timed on the same records, interleaved, and the medians are compared. With
``--agent`` the timed edit is the agent's ``act`` plus ``env.step`` (the agent's cost on top of the env).

    python benchmarks/speed.py --model smollm2-135m --num-edits 30 --out speed.json
    python benchmarks/speed.py --agent hiedit --checkpoint runs/zsre/hiedit
    python benchmarks/speed.py --agent hiedit --checkpoint runs/zsre/hiedit --env-kwargs '{"trace": "edit"}'
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F

import hiedit_env  # noqa: F401  (registers HiEdit-v0)
from hiedit_agents import agent_class
from hiedit_agents.base import read_checkpoint_meta
from hiedit_env.score import score_pairs
from hiedit_env.tokens import collate


def floor_seconds(env: hiedit_env.HiEditEnv, index: int) -> float:
    """One forward+backward (grads on candidates only) + one batched scoring forward, for edit ``index``."""
    encoded = env._episode[index]  # benchmark-only peek at the episode's tokenized records
    modules = [env.model.get_submodule(n) for n in env.candidate_modules]
    started = time.perf_counter()
    for m in modules:
        m.weight.requires_grad_(True)
    batch = collate([encoded.edit], env._pad_id, env.model.device)
    logits = env.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits[0]
    loss = F.cross_entropy(logits[batch.answer_mask[0]], batch.labels[0][batch.answer_mask[0]])
    loss.backward()
    for m in modules:
        m.weight.requires_grad_(False)
        m.weight.grad = None
    score_pairs(env.model, [encoded.edit, encoded.rephrase, encoded.loc], env._pad_id)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dataset", default="../shared/data/zsre/zsre_mend_1k.json")
    parser.add_argument("--num-edits", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--agent", default=None, help="time this agent's act + step (default: a constant action)")
    parser.add_argument("--checkpoint", default=None, help="checkpoint folder for a learned --agent")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--env-kwargs", type=json.loads, default={}, help="gym.make arguments, over the agent's own")
    parser.add_argument("--out", default=None, help="write the figures as JSON here")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning)
    if args.threads:
        torch.set_num_threads(args.threads)

    cls = agent_class(args.agent) if args.agent else None
    config = read_checkpoint_meta(Path(args.checkpoint))["config"] if cls and args.checkpoint else {}
    env = gym.make("HiEdit-v0", model=args.model, dataset=args.dataset, num_edits=args.num_edits,
                   evaluate_generation=False, **{**(cls.acting_requirements(config) if cls else {}), **args.env_kwargs}
                   ).unwrapped
    n = len(env.candidate_modules)
    if cls:
        agent = cls.load(args.checkpoint, env) if args.checkpoint else cls(env)
        act = agent.act
    else:
        constant = {"layers": np.ones(n, np.float32), "update": np.zeros(n, np.float32)}
        act = lambda observation, info: constant  # noqa: E731
    observation, info = env.reset(seed=args.seed)
    step_times, floor_times = [], []
    # The last step also runs the end-of-sequence evaluation, which is not per-edit work: stop before it.
    for t in range(args.num_edits - 1):
        floor_times.append(floor_seconds(env, t))
        started = time.perf_counter()
        observation, _, _, _, info = env.step(act(observation, info))
        step_times.append(time.perf_counter() - started)
    step, floor = statistics.median(step_times), statistics.median(floor_times)
    first, last = statistics.median(step_times[:5]), statistics.median(step_times[-5:])
    figures = {
        "model": args.model, "agent": args.agent or "constant action", "env_kwargs": args.env_kwargs, "candidates": n,
        "edits_timed": len(step_times), "threads": torch.get_num_threads(),
        "median_step_s": step, "median_floor_s": floor, "ratio": step / floor,
        "first5_step_s": first, "last5_step_s": last,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }
    for key, value in figures.items():
        print(f"{key:>16}: {value:.4f}" if isinstance(value, float) else f"{key:>16}: {value}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(figures, f, indent=2)


if __name__ == "__main__":
    main()
