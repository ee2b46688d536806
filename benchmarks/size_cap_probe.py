"""Probe: each edit's update-size ratio ``||G|| / mean ||G||`` on one evaluation sequence, with or without a bound.

The learned editors size each update like the objective's gradient step (``update_size="gradient_norm"``):
``lr * ||W0|| * ||G|| / mean ||G||``. Once a sequence has damaged the model, its gradients grow, so
the next steps grow, and the model can break (RLEdit, training seed 0, test episode 1: the ratio
reached 89 at edit 12 and the sequence ended at mean 0.013). The editors' ``max_size_ratio`` bounds
it; this probe loads a checkpoint with ``--cap`` as that bound (none: unbounded) and records the
largest unbounded ratio of each edit (``ratio_max_per_edit``) by wrapping the editor's gradient-norm
function.

    python benchmarks/size_cap_probe.py --checkpoint runs/s11/zsre_val_seed0/rledit --seed 1 \\
        --out benchmarks/results/zsre_validated/size_cap/rledit_train_seed0_episode1_uncapped.json
"""

from __future__ import annotations

import argparse
import warnings

import torch

import hiedit_agents.learned.hypernet as hypernet
import hiedit_env  # noqa: F401  (registers HiEdit-v0)
from hiedit_agents import agent_class, run_episode
from hiedit_agents.common.env_util import load_for_acting
from hiedit_env.files import write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agent", default="rledit")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--dataset", default="../shared/data/zsre/zsre_mend_1k.json")
    parser.add_argument("--split", default="test")
    parser.add_argument("--num-edits", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cap", type=float, default=None, help="max_size_ratio to load the editor with (default: none)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning)
    torch.set_num_threads(args.threads)
    agent, env = load_for_acting(agent_class(args.agent), args.checkpoint, {"max_size_ratio": args.cap}, model="smollm2-135m",
                                 dataset=args.dataset, split=args.split, num_edits=args.num_edits, evaluate_generation=False)
    unbounded, ratios = hypernet.gradient_norms, []

    def recorded(trace):
        norms = unbounded(trace)
        ratios.append(float((norms / agent.editor.gradient_size.mean.float()).max()))  # one call per act
        return norms

    hypernet.gradient_norms = recorded
    metrics = run_episode(agent, env, args.seed)
    result = {"checkpoint": args.checkpoint, "seed": args.seed, "cap": args.cap,
              **{k: metrics[k] for k in ("mean", "ES", "GS", "LS", "ES_at_edit", "ES_first_20pct")},
              "ratio_max_per_edit": ratios}
    write_json(args.out, result)
    print(result)


if __name__ == "__main__":
    main()
