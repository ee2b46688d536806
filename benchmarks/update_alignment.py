"""Where a trained editor's updates go: cos(dW, -G) per module and edit, and how far each module drifts.

An untrained editor's update without the key preconditioner (``preconditioner="none"``) is exactly the
gradient step of the trace it reads (cosine 1), and it has not broken the model on any of our 100-edit
ZsRE sequences; the trained ones sometimes do, with
the same sizes (``update_size="gradient_norm"``: only the direction is the network's). This measures the
direction the network chose: for each edit of one episode, the cosine between each changed module's
update ``dW`` and ``-G`` (the trace's raw weight gradient), through ``n x n`` products so no
[d_out, d_in] matrix is formed. Beside it: each module's drift from the unedited weights after every
edit, ``||W_t - W_0|| / ||W_0||`` (the largest per edit, and every module's at the end), and the
environment's per-step ``locality``. The agent acts as in evaluation; ``--agent-kwargs`` sets its
acting options (e.g. ``{"max_size_ratio": 3}``).

    python benchmarks/update_alignment.py --agent rledit --checkpoint runs/s11/zsre_val_seed0/rledit \\
        --out benchmarks/results/zsre_validated/alignment/rledit_train_seed0.json
    python benchmarks/update_alignment.py --table benchmarks/results/zsre_validated/drift/*.json   # one row per file
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
from hiedit_agents.common.env_util import load_for_acting
from hiedit_env.objective import update_sq_norm


def cosine_to_descent(update: tuple[torch.Tensor, torch.Tensor], keys: torch.Tensor, grads: torch.Tensor) -> float:
    """cos(U^T V, -grads^T keys) for ``U`` [n, d_out], ``V`` [n, d_in], ``grads`` [m, d_out], ``keys`` [m, d_in]."""
    u, v = update
    g, k = grads.float(), keys.float()
    inner = ((u @ g.T) * (v @ k.T)).sum()
    norms = update_sq_norm((u, v)).clamp_min(0).sqrt() * update_sq_norm((g, k)).clamp_min(0).sqrt()
    return float(-inner / norms.clamp_min(1e-30))


def fifths(values: list[float]) -> str:
    """The means of the five consecutive fifths of ``values``, as ``a / b / c / d / e`` (each value, if fewer)."""
    n, parts = len(values), min(5, len(values))
    return " / ".join(f"{statistics.mean(values[i * n // parts:(i + 1) * n // parts]):.2f}" for i in range(parts))


def table(paths: list[Path]) -> str:
    """A markdown row per result file: how the sequence ended, the largest drift, the largest one-edit
    jump of it, and the cosine and locality over the sequence's fifths."""
    lines = ["| result | episode mean | largest drift at the end (module) | largest one-edit rise of the largest drift "
             "(edit) | cos(dW, -G) by fifth of the sequence | locality by fifth |", "|---" * 6 + "|"]
    for path in paths:
        r = json.loads(path.read_text())
        drift, end = r["drift_max_per_edit"], r["drift_at_end"]
        rises = [drift[0]] + [b - a for a, b in zip(drift, drift[1:])]
        jump = max(range(len(rises)), key=rises.__getitem__)
        module = r["modules"][end.index(max(end))]
        lines.append(f"| {path.stem} | {r['episode_mean']:.3f} | {max(end):.3f} ({module}) | {rises[jump]:.3f} "
                     f"({jump + 1}) | {fifths(r['cosine_mean_per_edit'])} | {fifths(r['locality_per_edit'])} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agent", default="rledit")
    parser.add_argument("--checkpoint")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dataset", default="../shared/data/zsre/zsre_mend_1k.json")
    parser.add_argument("--split", default="train", help="default: the selection episode's split, not the test edits")
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--num-edits", type=int, default=30)
    parser.add_argument("--agent-kwargs", type=json.loads, default={}, help="acting options of the checkpoint")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out")
    parser.add_argument("--table", nargs="+", type=Path, help="print a markdown table of these result files instead")
    args = parser.parse_args()
    if args.table:
        print(table(args.table))
        return
    if not (args.checkpoint and args.out):
        parser.error("--checkpoint and --out are needed (or --table FILES)")
    warnings.filterwarnings("ignore", category=UserWarning)
    torch.set_num_threads(args.threads)
    agent, env = load_for_acting(agent_class(args.agent), args.checkpoint, args.agent_kwargs, model=args.model,
                                 dataset=args.dataset, split=args.split, num_edits=args.num_edits, evaluate_generation=False)
    if not hasattr(agent, "read_trace"):
        raise SystemExit(f"{args.agent!r} is not a learned editor: there is no editor update to compare with the gradient")
    observation, info = env.reset(seed=args.seed)
    base = [w.clone() for w in env.unwrapped.candidate_weights()]
    per_edit, locality, drift, terminated = [], [], [], False
    while not terminated:
        action = agent.act(observation, info)
        trace = agent.read_trace(env.unwrapped)  # cached: the one the editor just read
        per_edit.append([cosine_to_descent(update, k, g) for update, k, g in zip(action["update"], trace.keys, trace.grads)
                         if update is not None])
        observation, _, terminated, _, info = env.step(action)
        locality.append(float(info["locality"]))
        drift.append([float((w - w0).norm() / w0.norm()) for w, w0 in zip(env.unwrapped.candidate_weights(), base)])
    cosines = [c for edit in per_edit for c in edit]
    result = {"checkpoint": args.checkpoint, "split": args.split, "seed": args.seed, "num_edits": args.num_edits,
              "cosine_mean": statistics.mean(cosines), "cosine_min": min(cosines),
              "cosine_mean_per_edit": [statistics.mean(edit) for edit in per_edit], "locality_per_edit": locality,
              "drift_max_per_edit": [max(d) for d in drift], "drift_at_end": drift[-1],
              "modules": list(env.unwrapped.candidate_modules), "episode_mean": info["episode_metrics"]["mean"]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"{args.checkpoint}: cos(dW, -G) mean {result['cosine_mean']:.3f}, lowest {result['cosine_min']:.3f} "
          f"over {len(cosines)} module updates; largest drift at the end {max(drift[-1]):.3f}; "
          f"episode mean {result['episode_mean']:.3f}")


if __name__ == "__main__":
    main()
