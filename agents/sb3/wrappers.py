"""The ``env_wrapper`` list of a hyperparameter file: RL Zoo's ``[{"module.Class": kwargs}, ...]``, read
into one level wrapper of :mod:`hiedit_env.wrappers` and the Gymnasium observation wrappers around it."""

from __future__ import annotations

import importlib
from typing import Any

import gymnasium as gym

from hiedit_env.wrappers import LevelWrapper

from ..common.base import UpdateMode
from ..registry import agent_class


def import_object(path: str) -> Any:
    """The object named ``package.module.Name`` (RL Zoo's spelling) or ``package.module:Name``."""
    module, _, attr = path.partition(":") if ":" in path else path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError) as err:
        raise ValueError(
            f"cannot import {path!r} (expected 'package.module.Name' or 'package.module:Name'): {err}"
        ) from err


def wrapper_specs(hp: dict[str, Any]) -> list[tuple[type, dict[str, Any]]]:
    """``env_wrapper`` as (class, kwargs) pairs, checked: one level wrapper first, then observation wrappers."""
    specs = hp.get("env_wrapper")
    if not isinstance(specs, list) or not specs:
        raise ValueError(
            "hyperparameter 'env_wrapper' must be a non-empty list such as "
            "[{'hiedit_env.wrappers.ChooseLayersInTurn': {'k': 9}}]"
        )
    pairs: list[tuple[type, dict[str, Any]]] = []
    for spec in specs:
        if isinstance(spec, str):
            name, kwargs = spec, {}
        elif isinstance(spec, dict) and len(spec) == 1:
            ((name, kwargs),) = spec.items()
        else:
            raise ValueError(
                f"each env_wrapper entry must be 'module.Class' or {{'module.Class': kwargs}}, got {spec!r}"
            )
        cls = import_object(name)
        if not isinstance(cls, type):
            raise ValueError(f"env_wrapper entry {name!r} is not a class")
        pairs.append((cls, dict(kwargs or {})))
    if not issubclass(pairs[0][0], LevelWrapper) or any(issubclass(c, LevelWrapper) for c, _ in pairs[1:]):
        raise ValueError("env_wrapper must start with exactly one level wrapper from hiedit_env.wrappers")
    if any(not issubclass(c, gym.ObservationWrapper) for c, _ in pairs[1:]):
        raise ValueError("after the level wrapper, env_wrapper may only hold Gymnasium observation wrappers")
    return pairs


def editor_update_mode(hp: dict[str, Any]) -> UpdateMode:
    """The environment's ``update_mode`` the configured wrapper needs (a zoo-agent editor decides it)."""
    editor = wrapper_specs(hp)[0][1].get("editor")
    return agent_class(editor["agent"]).update_mode if isinstance(editor, dict) else "step_size"


def wrap_levels(hp: dict[str, Any], env: gym.Env) -> tuple[LevelWrapper, list[gym.ObservationWrapper]]:
    """``env`` wrapped as ``hp["env_wrapper"]`` says: the level wrapper and the observation wrappers around it."""
    (level_cls, level_kwargs), *rest = wrapper_specs(hp)
    level = level_cls(env, **level_kwargs)
    wrappers: list[gym.ObservationWrapper] = []
    outer: gym.Env = level
    for cls, kwargs in rest:
        outer = cls(outer, **kwargs)
        wrappers.append(outer)
    return level, wrappers


def outermost(hp: dict[str, Any], env: gym.Env) -> gym.Env:
    """The fully wrapped ``env`` (a module-level function, so subprocess copies can be built from it)."""
    level, wrappers = wrap_levels(hp, env)
    return (wrappers or [level])[-1]
