"""``hiedit speed``: what one edit costs on a model, against the floor measured in the same run.

The floor for one edit is one forward+backward pass on the edit prompt with gradients on the candidate
weights only, plus one batched forward pass scoring the edit, its paraphrase and the unrelated prompt
(:func:`floor_seconds`). Floor and ``env.step`` are timed on the same records, interleaved, so a
machine shared with other jobs slows both alike: compare the ratio, not the seconds, across runs.

One run reports, for one model, device and dtype:

* ``env.step`` with a constant action (or ``--agent``'s ``act`` plus ``env.step``) against the floor;
* ``reset``: the first one (caches warm up) and a second one on the same environment;
* peak memory: the process's resident high-water mark (``ru_maxrss``) after the steps and at the end,
  and the CUDA allocator's peak when on a GPU;
* with ``--editors``, per key-preconditioner form of the learned editors (``--editor-agent``'s, untrained,
  its input statistics filled from ``--editor-warmup`` edits; RLEdit's by default, which acts on every
  candidate, the upper bound): the time of ``act`` (the first one, which inverts
  the full preconditioner's matrices, apart), ``act`` plus ``env.step`` against the floor, and the
  bytes the preconditioner holds, measured on the editor's buffers, next to ``d_in^2`` per module.

    hiedit speed --model smollm2-135m --dataset zsre_mend_1k.json --num-edits 30 --threads 1 --out speed.json
    hiedit speed --model shape:gpt2-xl --num-edits 6 --editors full diagonal --out gpt2-xl.json
    hiedit speed --agent hiedit --checkpoint runs/hiedit --num-edits 60 --out hiedit.json
    hiedit speed --table benchmarks/results/speed     # the Markdown table of every JSON there

The shaped models (``shape:gpt2-xl``, ``shape:llama-3-8b-2layers``) have random weights: their
quality figures mean nothing, and this command reports none.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import trange

import hiedit_env  # noqa: F401  (registers HiEdit-v0)
from hiedit_env import HiEditEnv
from hiedit_env.files import write_text
from hiedit_env.models import EMBEDDED_MODEL
from hiedit_env.records import DEFAULT_DATASET
from hiedit_env.score import score_pairs
from hiedit_env.tokens import collate

from .common.base import Agent
from .common.checkpoint import read_json
from .common.memory import peak_memory
from .learned.hypernet import PRECONDITIONERS
from .registry import agent_class

TABLE_FILE = "speed.md"
# The learned editors timed by default: RLEdit runs the shared editor on every candidate at every edit,
# the upper bound of their act time and memory (HiEdit runs it on the top k its gate picks).
EDITOR_AGENTS = ("rledit", "hiedit")


def _clock(device: torch.device) -> float:
    """Seconds, after the device's queued work is done (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def floor_seconds(env: HiEditEnv, index: int) -> float:
    """One forward+backward (gradients on the candidates only) + one batched scoring forward, for edit ``index``."""
    encoded = env._episode[index]  # a benchmark's peek at the episode's tokenized records
    modules = [env.model.get_submodule(n) for n in env.candidate_modules]
    device = env.model.device
    started = _clock(device)
    for m in modules:
        m.weight.requires_grad_(True)
    batch = collate([encoded.edit], env._pad_id, device)
    logits = env.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits[0]
    loss = F.cross_entropy(logits[batch.answer_mask[0]].float(), batch.labels[0][batch.answer_mask[0]])
    loss.backward()
    for m in modules:
        m.weight.requires_grad_(False)
        m.weight.grad = None
    score_pairs(env.model, [encoded.edit, encoded.rephrase, encoded.loc], env._pad_id)
    return _clock(device) - started


def timed_steps(
    env: HiEditEnv,
    act: Callable[[dict, dict], dict],
    seed: int,
    act_times: list[float] | None = None,
    desc: str = "timing",
) -> dict[str, Any]:
    """Reset, then for every edit but the last (whose step also runs the end-of-sequence evaluation,
    which is not per-edit work) time the floor and ``act`` + ``env.step``; medians and their ratio."""
    device = env.model.device
    observation, info = env.reset(seed=seed)
    steps, floors, applied = [], [], []
    for t in trange(env.num_edits - 1, desc=desc, unit="edit", leave=False):  # a shaped model's edit takes a while
        floors.append(floor_seconds(env, t))
        started = _clock(device)
        action = act(observation, info)
        acted = _clock(device)
        observation, _, _, _, info = env.step(action)
        steps.append(_clock(device) - started)
        applied.append(info["applied_ratio"])
        if act_times is not None:
            act_times.append(acted - started)
    step, floor = statistics.median(steps), statistics.median(floors)
    return {
        "edits_timed": len(steps),
        "median_step_s": step,
        "median_floor_s": floor,
        "ratio": step / floor,
        "first5_step_s": statistics.median(steps[:5]),
        "last5_step_s": statistics.median(steps[-5:]),
        "applied_ratio": float(np.mean(applied)),
    }


def preconditioner_bytes(agent: Agent) -> dict[str, Any]:
    """What the editor's key preconditioner holds: measured on its buffers (the full form's running
    moment and inverse; the diagonal form reads the key normaliser's statistics, which every editor
    keeps, so it adds none), and the full form's ``d_in^2`` float32 entries per matrix for comparison."""
    editor = agent.editor
    held = sum(b.numel() * b.element_size() for m in (editor.key_moments or []) for b in m.buffers())
    dims = agent.env.module_dims()
    return {
        "preconditioner_bytes": held,
        "full_matrix_bytes_per_module": [4 * d_in * d_in for d_in, _ in dims],
        "editor_bytes": sum(t.numel() * t.element_size() for t in [*editor.parameters(), *editor.buffers()]),
    }


def editor_speed(
    make_env: Callable[..., gym.Env], name: str, preconditioner: str, warmup: int, seed: int
) -> dict[str, Any]:
    """The untrained editor of agent ``name`` with the ``preconditioner`` form: statistics from ``warmup``
    edits, then one episode with ``act`` timed apart and ``act`` + ``env.step`` against the floor."""
    cls = agent_class(name)
    config = {"preconditioner": preconditioner}
    env = make_env(**cls.acting_requirements(config))
    agent = cls(env, **config)
    agent.observe_unedited(env, warmup)
    device = env.unwrapped.model.device
    observation, info = env.reset(seed=seed)
    started = _clock(device)
    agent.act(observation, info)  # the first act inverts the full form's matrices: timed apart
    setup = _clock(device) - started
    acts: list[float] = []
    figures = timed_steps(env.unwrapped, agent.act, seed, acts, desc=f"{name} editor, {preconditioner}")
    return {
        "agent": name,
        "preconditioner": preconditioner,
        "first_act_s": setup,
        "median_act_s": statistics.median(acts),
        **figures,
        **preconditioner_bytes(agent),
    }


def measure_speed(args: argparse.Namespace) -> dict[str, Any]:
    """The figures of one ``hiedit speed`` run (see the module's docstring)."""
    if args.num_edits < 2:
        raise ValueError(f"--num-edits must be >= 2 (the last edit is not timed), got {args.num_edits}")
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)
    cls = agent_class(args.agent) if args.agent else None
    config = cls.saved_meta(args.checkpoint, "--checkpoint")["config"] if cls and args.checkpoint else {}

    def make_env(**requirements: Any) -> gym.Env:
        return gym.make(
            "HiEdit-v0",
            model=args.model,
            dataset=args.dataset,
            num_edits=args.num_edits,
            evaluate_generation=False,
            device=args.device,
            dtype=args.dtype,
            **{**requirements, **args.env_kwargs},
        )

    env = make_env(**(cls.acting_requirements(config) if cls else {}))
    unwrapped: HiEditEnv = env.unwrapped
    device = unwrapped.model.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    n = len(unwrapped.candidate_modules)
    if cls:
        agent = cls.load(args.checkpoint, env) if args.checkpoint else cls(env)
        act = agent.act
    else:
        constant = {"layers": np.ones(n, np.float32), "update": np.zeros(n, np.float32)}
        act = lambda observation, info: constant  # noqa: E731
    resets = []
    for _ in range(2):
        started = _clock(device)
        env.reset(seed=args.seed)
        resets.append(_clock(device) - started)
    figures: dict[str, Any] = {
        "label": args.label or args.model,
        "model": args.model,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": args.dtype,
        "threads": torch.get_num_threads(),
        "agent": args.agent or "constant action",
        "env_kwargs": args.env_kwargs,
        "candidates": n,
        "modules": list(unwrapped.candidate_modules),
        "parameters": sum(p.numel() for p in unwrapped.model.parameters()),
        "first_reset_s": resets[0],
        "reset_s": resets[1],
        **timed_steps(unwrapped, act, args.seed, desc=f"{args.agent or 'constant action'} on {args.model}"),
    }
    figures.update({f"{k}_steps": v for k, v in peak_memory("gb", device).items()})
    figures["editors"] = [
        editor_speed(make_env, args.editor_agent, form, args.editor_warmup, args.seed) for form in args.editors
    ]
    figures.update(peak_memory("gb", device))
    figures["options"] = {k: v for k, v in vars(args).items() if k not in ("run", "command", "table", "out")}
    for key, value in figures.items():
        if key not in ("editors", "modules", "env_kwargs"):
            print(f"{key:>22}: {value:.4f}" if isinstance(value, float) else f"{key:>22}: {value}")
    for editor in figures["editors"]:
        print(
            f"  {editor['agent']} editor ({editor['preconditioner']}): act {editor['median_act_s']:.4f} s (first {editor['first_act_s']:.2f} s), "
            f"act + step {editor['ratio']:.2f}x the floor, preconditioner {editor['preconditioner_bytes'] / 1e9:.3f} GB"
        )
    return figures


def _cell(run: dict[str, Any], key: str, form: str = "{}") -> str:
    """``run[key]`` written by ``form``, ``-`` where the run does not record it."""
    return form.format(run[key]) if run.get(key) is not None else "-"


def speed_table(folder: Path) -> str:
    """A Markdown table of every ``hiedit speed`` JSON in ``folder`` (files without ``median_floor_s`` are not
    runs), named by their ``--label`` or else their file, with a column per learned-editor preconditioner
    form that some run timed (``--editors``); what a run does not record (runs of earlier versions) is ``-``."""
    runs = []
    for path in sorted(folder.glob("*.json")):
        run = read_json(path, "speed result")
        if isinstance(run, dict) and "median_floor_s" in run:
            runs.append({"label": path.stem, "peak_rss_gb_steps": run.get("peak_rss_gb"), **run})
    timed = {e["preconditioner"] for run in runs for e in run.get("editors", [])}
    forms = [form for form in PRECONDITIONERS[::-1] if form in timed]  # full, diagonal, none
    rows = []
    for run in runs:
        editors = {e["preconditioner"]: e for e in run.get("editors", [])}
        reset = run.get("reset_s")
        cells = [
            run["label"],
            run.get("agent", "constant action"),
            _cell(run, "device_name"),
            _cell(run, "dtype"),
            _cell(run, "threads"),
            _cell(run, "candidates"),
            f"{run['median_step_s']:.3f}",
            f"{run['median_floor_s']:.3f}",
            f"**{run['ratio']:.2f}x**",
            "-" if reset is None else f"{reset:.2f} ({reset / run['median_floor_s']:.1f}x)",
            _cell(run, "peak_rss_gb_steps", "{:.2f}"),
            _cell(run, "peak_cuda_gb", "{:.2f}"),
        ]
        for form in forms:
            e = editors.get(form)
            cells.append(
                f"{e['agent']}: {e['median_act_s']:.3f} / {e['ratio']:.2f}x / {e['preconditioner_bytes'] / 1e9:.3f}"
                if e
                else "-"
            )
        rows.append("| " + " | ".join(cells) + " |")
    columns = [
        "run",
        "agent",
        "device",
        "dtype",
        "threads",
        "candidates",
        "step s (act + step)",
        "floor s",
        "step / floor",
        "reset s (x floor)",
        "peak RSS GB (steps)",
        "peak CUDA GB",
    ] + [
        f"editor, {form} preconditioner: act s / act+step vs floor / preconditioner GB"
        if i == 0
        else f"editor, {form}: same"
        for i, form in enumerate(forms)
    ]
    header = "| " + " | ".join(columns) + " |"
    return "\n".join([header, "|" + "---|" * len(columns), *rows]) + "\n"


def run_speed(args: argparse.Namespace) -> dict[str, Any] | None:
    """``hiedit speed``: measure one run (its figures go to ``--out``), or with ``--table`` write the table."""
    if args.table:
        folder = Path(args.table)
        if not folder.is_dir():
            raise ValueError(f"--table {args.table!r} is not a folder")
        table = speed_table(folder)
        write_text(folder / TABLE_FILE, table)
        print(table, end="")
        return None
    return measure_speed(args)


def add_speed_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``speed`` subcommand to ``sub``."""
    from .cli import json_object, positive_int  # here, not at the top: the cli module imports this one

    speed = sub.add_parser(
        "speed",
        help="time env.step, reset and the learned editors against the floor; peak memory",
        description=__doc__.split("\n\n")[0],
    )
    speed.add_argument(
        "--model", default=EMBEDDED_MODEL, help="built-in name (shape:gpt2-xl, ...), hub id or local path"
    )
    speed.add_argument(
        "--dataset", default=DEFAULT_DATASET, help="'default', a ZsRE/CounterFact file, directory or hub id"
    )
    speed.add_argument(
        "--num-edits", type=positive_int, default=30, help="edits of the timed episode (all but the last are timed)"
    )
    speed.add_argument("--seed", type=int, default=0)
    speed.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda' or 'cuda:N'")
    speed.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    speed.add_argument("--agent", default=None, help="time this agent's act + step (default: a constant action)")
    speed.add_argument("--checkpoint", default=None, help="checkpoint folder for a learned --agent")
    speed.add_argument(
        "--editors",
        nargs="*",
        default=[],
        choices=PRECONDITIONERS,
        help="also time the untrained learned editor with these key-preconditioner forms",
    )
    speed.add_argument(
        "--editor-agent",
        default=EDITOR_AGENTS[0],
        choices=EDITOR_AGENTS,
        help="whose editor --editors times (rledit: every candidate at every edit, the upper bound)",
    )
    speed.add_argument(
        "--editor-warmup",
        type=positive_int,
        default=3,
        help="edits whose traces fill the editors' statistics before they are timed",
    )
    speed.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's choice)")
    speed.add_argument("--env-kwargs", type=json_object, default={}, help="JSON object of extra gym.make arguments")
    speed.add_argument("--label", default=None, help="the run's name in the table (default: --model)")
    speed.add_argument("--out", default=None, help="write the figures as JSON here")
    speed.add_argument(
        "--table",
        default=None,
        metavar="FOLDER",
        help=f"measure nothing: write FOLDER/{TABLE_FILE}, the table of every run's JSON in FOLDER",
    )
    speed.set_defaults(run=run_speed)
    return speed
