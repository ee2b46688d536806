"""Name -> agent class. Besides the registered names, ``"package.module:ClassName"`` loads a user's
agent by import, so a new agent runs in every command (``hiedit train``, ``hiedit evaluate``, the
benchmarks) without a change to this package."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

import gymnasium as gym

from .common.base import Agent

_AGENTS: dict[str, type[Agent]] = {}


def register_agent(name: str, cls: type[Agent]) -> None:
    """Make ``cls`` available as ``name`` (a name may be registered once; ``:`` is reserved for imports)."""
    if not isinstance(cls, type) or not issubclass(cls, Agent):
        raise TypeError(f"register_agent expects a subclass of hiedit_agents.Agent, got {cls!r}")
    if ":" in name or not name:
        raise ValueError(f"agent names must be non-empty and contain no ':', got {name!r}")
    if _AGENTS.get(name, cls) is not cls:
        raise ValueError(f"agent name {name!r} is already registered to {_AGENTS[name].__qualname__}")
    _AGENTS[name] = cls


def available_agents() -> list[str]:
    """Registered agent names, sorted."""
    return sorted(_AGENTS)


def agent_class(name: str) -> type[Agent]:
    """The class for a registered name or a ``"package.module:ClassName"`` path."""
    if ":" not in name:
        if name not in _AGENTS:
            raise ValueError(
                f"unknown agent {name!r}; choose one of {available_agents()} or give 'package.module:ClassName'"
            )
        return _AGENTS[name]
    module_name, _, attr = name.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot load agent {name!r}: {err}") from err
    if not isinstance(obj, type) or not issubclass(obj, Agent):
        raise ValueError(f"agent {name!r} is not a subclass of hiedit_agents.Agent")
    return obj


def agent_from_spec(spec: Mapping[str, Any], env: gym.Env) -> Agent:
    """The agent a configuration names, ``{"agent": name, "checkpoint": dir, "kwargs": {...}}``: loaded
    from ``checkpoint`` when given, else built with ``kwargs`` (agents that need training need a checkpoint).
    This is how a level wrapper's ``editor`` or ``layers`` names a zoo agent in a hyperparameter file."""
    unknown = set(spec) - {"agent", "checkpoint", "kwargs"}
    if "agent" not in spec or unknown:
        raise ValueError(
            f"a zoo agent in env_wrapper needs 'agent' (and optionally 'checkpoint', 'kwargs'), got {dict(spec)!r}"
        )
    cls = agent_class(spec["agent"])
    if spec.get("checkpoint"):
        return cls.load(spec["checkpoint"], env)
    if cls.requires_training:
        raise ValueError(f"agent {spec['agent']!r} in env_wrapper must be trained: give its 'checkpoint'")
    return cls(env, **spec.get("kwargs", {}))


def make_agent(name: str, env: gym.Env, **kwargs: Any) -> Agent:
    """Build the agent ``name`` (registered or ``"module:Class"``) for ``env``."""
    return agent_class(name)(env, **kwargs)
