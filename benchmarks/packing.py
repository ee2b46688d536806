"""The objective's pass packed in one row against right-padded, timed in one process.

For each ``--back-depths`` value, the objective's batch (the current edit, ``back_depth`` earlier
edits and the unrelated prompt) of ``--edits`` consecutive edits of one episode is run both ways,
interleaved: as the trace (a forward+backward to the candidates' outputs, what the environment
computes per edit) and as a training pass (gradients to low-rank updates of every candidate). The
layout is forced through the per-model packing check's cache, so everything else is the same code.

    python benchmarks/packing.py --back-depths 3 10 --threads 1 --out benchmarks/results/stop16/packing.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings

import gymnasium as gym
import torch

import hiedit_env  # noqa: F401  (registers HiEdit-v0)
from hiedit_env import tokens
from hiedit_env.objective import edit_objective
from hiedit_env.trace import trace_objective
from hiedit_env.files import write_json

LAYOUTS = ("packed", "padded")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dataset", default="../shared/data/zsre/zsre_mend_1k.json")
    parser.add_argument("--modules", default=None, help="candidate modules (default: the model's preset)")
    parser.add_argument("--back-depths", type=int, nargs="+", default=[3, 10])
    parser.add_argument("--edits", type=int, default=8, help="edits timed per back_depth")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", default=None, help="write the figures as JSON here")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning)
    if args.threads:
        torch.set_num_threads(args.threads)
    figures = {"model": args.model, "threads": torch.get_num_threads(), "rows": []}
    for depth in args.back_depths:
        env = gym.make("HiEdit-v0", model=args.model, dataset=args.dataset, num_edits=depth + args.edits,
                       back_depth=depth, modules=args.modules, evaluate_generation=False).unwrapped
        env.reset(seed=0)
        seconds = {f"{layout}_{what}": [] for layout in LAYOUTS for what in ("trace", "train")}
        tokens_real = tokens_padded = 0
        for t in range(depth, depth + args.edits):
            env._t = t  # benchmark-only: the objective's window of edit t, on the unedited model
            edits, locs, references = env._objective_window(None)
            pairs = [*edits, *locs]
            tokens_real += sum(len(p.ids) for p in pairs)
            tokens_padded += len(pairs) * max(len(p.ids) for p in pairs)
            for layout in LAYOUTS:
                tokens._PACKING[env.model] = layout == "packed"
                started = time.perf_counter()
                trace_objective(env.model, env._modules, env.candidate_modules, [None] * len(env._modules), edits,
                                locs, references, env._pad_id, env.time_decay, env.kl_weight)
                seconds[f"{layout}_trace"].append(time.perf_counter() - started)
                updates = [(torch.zeros(4, d_out, requires_grad=True), torch.randn(4, d_in) * 1e-3)
                           for d_in, d_out in env.module_dims()]
                started = time.perf_counter()
                edit_objective(env.model, env._modules, updates, edits, locs, references, env._pad_id,
                               env.time_decay, env.kl_weight, 0.0).total.backward()
                seconds[f"{layout}_train"].append(time.perf_counter() - started)
        del tokens._PACKING[env.model]  # the check runs again for whoever uses the model next
        row = {"back_depth": depth, "prompts": depth + 2, "tokens": tokens_real / args.edits,
               "tokens_padded": tokens_padded / args.edits,
               **{f"median_{key}_s": statistics.median(values) for key, values in seconds.items()}}
        for what in ("trace", "train"):
            row[f"{what}_saving"] = 1 - row[f"median_packed_{what}_s"] / row[f"median_padded_{what}_s"]
        figures["rows"].append(row)
        print(json.dumps(row))
        env.close()
    if args.out:
        write_json(args.out, figures)


if __name__ == "__main__":
    main()
