"""Hyperparameter files in the RL Baselines3 Zoo's format: the ``HiEdit-v0`` entry, which the zoo reads
too, and the ``hiedit_train`` section of keys of ours that it never reads (see :mod:`hiedit_agents.sb3`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ENV_ID = "HiEdit-v0"
# The shipped files: hiedit_agents/hyperparams/<algorithm>.yml.
HYPERPARAMS_DIR = Path(__file__).parent.parent / "hyperparams"
# The section of a hyperparameter file that RL Baselines3 Zoo never reads (it reads the environment
# id's entry alone), and the keys it may hold.
TRAIN_SECTION = "hiedit_train"
TRAIN_KEYS = frozenset(
    {"level", "vec_env", "eval_freq", "eval_episodes", "eval_split", "eval_dataset", "checkpoint_freq"}
)
# Keys read here; every other key is passed to the algorithm's constructor.
OWN_KEYS = TRAIN_KEYS | {
    "env_wrapper",
    "env_kwargs",
    "n_timesteps",
    "policy",
    "n_envs",
    "normalize",
    "noise_type",
    "noise_std",
}


def load_hyperparams(
    algorithm: str, path: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The ``HiEdit-v0`` entry of ``path`` (default: the shipped ``hyperparams/<algorithm>.yml``) with
    the file's ``hiedit_train`` section merged in and ``overrides`` replacing whole keys."""
    path = Path(path) if path is not None else HYPERPARAMS_DIR / f"{algorithm}.yml"
    if not path.is_file():
        raise FileNotFoundError(f"no hyperparameter file {str(path)!r}")
    table = yaml.safe_load(path.read_text()) or {}
    if not isinstance(table, dict) or not isinstance(table.get(ENV_ID), dict):
        raise ValueError(f"{str(path)!r} has no {ENV_ID!r} entry (RL Zoo format: one entry per environment id)")
    extra = table.get(TRAIN_SECTION) or {}
    if not isinstance(extra, dict) or not set(extra) <= TRAIN_KEYS:
        raise ValueError(
            f"{str(path)!r}: the {TRAIN_SECTION!r} section may only hold {sorted(TRAIN_KEYS)}, got "
            f"{sorted(extra) if isinstance(extra, dict) else extra!r}"
        )
    twice = sorted(set(extra) & set(table[ENV_ID]))
    if twice:
        raise ValueError(f"{str(path)!r} sets {twice} both in {ENV_ID!r} and in {TRAIN_SECTION!r}")
    return {**table[ENV_ID], **extra, **(overrides or {})}
