"""Building the environment an agent needs: from a checkpoint's configuration, for acting."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym

from .base import Agent
from .checkpoint import read_checkpoint_meta


def load_for_acting(cls: type[Agent], checkpoint: str | Path, overrides: dict[str, Any] | None = None,
                    **env_kwargs: Any) -> tuple[Agent, gym.Env]:
    """``checkpoint`` loaded into a new ``HiEdit-v0`` built from what the checkpoint's configuration needs to
    act (:meth:`Agent.acting_requirements`) and ``env_kwargs`` (which have the last word, as ``--env-kwargs``
    in ``hiedit evaluate``); ``overrides`` set acting options (:meth:`Agent.load`)."""
    overrides = overrides or {}
    cls.check_overrides(overrides)
    config = {**read_checkpoint_meta(Path(checkpoint))["config"], **overrides}
    env = gym.make("HiEdit-v0", **{**cls.acting_requirements(config), **env_kwargs})
    return cls.load(checkpoint, env, **overrides), env
