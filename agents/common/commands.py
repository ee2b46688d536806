"""What ``hiedit train`` and ``hiedit evaluate`` do, as library functions of their parsed options (an
``argparse.Namespace``): training as ``hiedit train`` trains, and the checkpoint an option names. With
:func:`~hiedit_agents.common.env_util.make_env` they are what sweep cells call, so a cell trains and
evaluates exactly as the command line does."""

from __future__ import annotations

import argparse
import signal
import threading
import time
from typing import Any

import torch

from hiedit_env.files import check_output_dir, write_json

from ..registry import agent_class
from .base import TrainingInterrupted, build_agent
from .checkpoint import progress_folder, remove_progress
from .env_util import env_description, make_env
from .memory import peak_memory_mb


def train_agent(args: argparse.Namespace, progress: bool = True) -> dict[str, Any]:
    """Train as ``hiedit train`` does (``args``: its options) and save the agent into ``args.out_dir``, with
    ``train_stats.json`` beside it; returns the statistics. The one training path of the command line
    and of sweep cells."""
    cls = agent_class(args.agent)
    out = check_output_dir(args.out_dir)
    torch.manual_seed(args.seed)
    if args.resume:
        if not cls.resumable:
            raise ValueError(f"agent {args.agent!r} cannot resume; train it again without --resume")
        if args.agent_kwargs:
            raise ValueError("--resume continues the saved configuration; --agent-kwargs cannot change it")
        folder = progress_folder(out) or out  # an interrupted run's progress, or a finished run to go on with
        config = cls.saved_meta(folder, "--out")["config"]
        env = make_env(args, cls, config, evaluation=False)
        agent = cls.load(folder, env)
    else:
        env = make_env(args, cls, args.agent_kwargs, evaluation=False)
        agent = build_agent(cls, env, args.agent_kwargs)
    steps = args.steps or agent.default_train_steps
    # Resumable agents save their progress into --out as they go, so an interrupted run loses little.
    extra: dict[str, Any] = {"checkpoint_dir": out, "resume": args.resume} if cls.resumable else {}
    if cls.resumable and args.checkpoint_every is not None:
        extra["checkpoint_every"] = args.checkpoint_every
    started = time.perf_counter()
    previous = (
        signal.signal(signal.SIGTERM, _as_interrupt) if threading.current_thread() is threading.main_thread() else None
    )
    try:
        stats = agent.learn(env, steps, log_dir=out / "tensorboard", seed=args.seed, progress=progress, **extra)
    except TrainingInterrupted as stop:
        where = (
            f"progress up to the last checkpoint is in {out}; continue with the same command and --resume"
            if stop.saved
            else "nothing was saved"
        )
        raise KeyboardInterrupt(f"interrupted after {stop.step} of {stop.steps} training edits; {where}") from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    seconds = time.perf_counter() - started
    agent.save(out)
    remove_progress(out)  # only now: until the finished agent is saved, the progress is what a rerun resumes
    trained = stats.get("steps_this_run", steps)
    stats.update(
        agent=args.agent,
        seed=args.seed,
        low_memory=args.low_memory,
        total_seconds=seconds,
        seconds_per_step=seconds / max(trained, 1),
        environment=env_description(env),
        **peak_memory_mb(),
    )
    write_json(out / "train_stats.json", stats)
    env.close()
    return stats


def _as_interrupt(signum: int, frame: Any) -> None:
    """SIGTERM handled as SIGINT is at the moment (training turns the first one into a save at the episode's end)."""
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
        handler(signal.SIGINT, frame)
    else:
        raise KeyboardInterrupt
