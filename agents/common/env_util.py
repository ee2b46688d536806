"""Building the environment an agent needs: from the command line's options (``hiedit train``,
``hiedit evaluate``, sweep cells) or from a checkpoint's configuration, and what a results file records
of the environment built."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import warnings
from pathlib import Path
from typing import Any

import gymnasium as gym
import torch

import hiedit_env  # noqa: F401  (registers HiEdit-v0)
from hiedit_env import HiEditEnv

from .base import Agent
from .memory import return_freed_memory

# What a results file keeps of the gym.make arguments (grouped ones as their fields).
JSON_TYPES = (str, int, float, bool, list, tuple, dict, type(None))


def load_for_acting(
    cls: type[Agent], checkpoint: str | Path, overrides: dict[str, Any] | None = None, **env_kwargs: Any
) -> tuple[Agent, gym.Env]:
    """``checkpoint`` loaded into a new ``HiEdit-v0`` built from what the checkpoint's configuration needs to
    act (:meth:`Agent.acting_requirements`) and ``env_kwargs`` (which have the last word, as ``--env-kwargs``
    in ``hiedit evaluate``); ``overrides`` set acting options (:meth:`Agent.load`)."""
    overrides = overrides or {}
    cls.check_overrides(overrides)
    config = {**cls.saved_meta(checkpoint)["config"], **overrides}
    env = gym.make("HiEdit-v0", **{**cls.acting_requirements(config), **env_kwargs})
    return cls.load(checkpoint, env, **overrides), env


def make_env(args: argparse.Namespace, cls: type[Agent], config: dict[str, Any], evaluation: bool) -> gym.Env:
    """The environment ``cls`` built with ``config`` needs (e.g. its update mode) for the command's
    model, data and split; ``--env-kwargs`` has the last word. Evaluation adds the generation-based
    metrics and leaves out the agent's reward weights (:meth:`Agent.acting_requirements`)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.low_memory and not return_freed_memory():
        warnings.warn("--low-memory needs glibc (Linux); ignored here", stacklevel=2)
    check_env_kwargs(args.env_kwargs)
    requirements = cls.acting_requirements(config) if evaluation else cls.env_requirements(config)
    kwargs = {
        "model": args.model,
        "dataset": args.dataset,
        "num_edits": args.num_edits,
        "split": args.split,
        "evaluate_generation": evaluation,
        **requirements,
        **args.env_kwargs,
    }
    return gym.make("HiEdit-v0", **kwargs)


def check_env_kwargs(env_kwargs: dict[str, Any]) -> None:
    """Refuse ``--env-kwargs`` keys that ``HiEdit-v0`` does not take, before any model loads."""
    known = [name for name in inspect.signature(HiEditEnv.__init__).parameters if name != "self"]
    unknown = sorted(set(env_kwargs) - set(known))
    if unknown:
        raise ValueError(f"unknown --env-kwargs key(s) {unknown}; HiEdit-v0 takes {known}")


def env_description(env: gym.Env) -> dict[str, Any]:
    """The environment actually built (after ``--env-kwargs`` and the agent's requirements had their say),
    and what its data source gave: what a results file must record."""
    unwrapped: HiEditEnv = env.unwrapped
    kwargs = dict(env.spec.kwargs) if env.spec is not None else {}
    recorded = {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for k, v in kwargs.items()}
    return {
        "model": unwrapped.shared.name,
        "dataset": unwrapped.edit_set.source,
        "split": unwrapped.split,
        "num_edits": unwrapped.num_edits,
        "update_mode": unwrapped.update_mode,
        "candidate_modules": list(unwrapped.candidate_modules),
        "env_kwargs": {k: v for k, v in recorded.items() if isinstance(v, JSON_TYPES)},
        "data": unwrapped.data_report(),
    }
