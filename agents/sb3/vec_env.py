"""Vector environments for SB3: ``n_envs`` wrapped copies of a ``HiEdit-v0``, in this process (they share
one model) or one per subprocess (``vec_env: subproc`` in ``hiedit_train``)."""

from __future__ import annotations

import functools
from typing import Any

import gymnasium as gym
import torch
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv

from .wrappers import outermost

VEC_ENVS = {"dummy": DummyVecEnv, "subproc": SubprocVecEnv}


def _make_copy(spec: gym.envs.registration.EnvSpec, kwargs: dict[str, Any], threads: int) -> gym.Env:
    """A copy of the environment; a subprocess copy also takes the parent's torch thread count
    (torch's default there oversubscribes the cores the parent was told to use)."""
    torch.set_num_threads(threads)
    return gym.make(spec, **kwargs)


def vector_env(
    hp: dict[str, Any], env: gym.Env, n_envs: int, seed: int, changes: dict[str, Any] | None = None
) -> VecEnv:
    """``n_envs`` copies of ``env``, each wrapped as ``hp["env_wrapper"]`` says (re-made from its spec with
    ``changes``; in-process copies share the model), in the vector environment ``hp["vec_env"]`` names."""
    if env.spec is None:
        if n_envs != 1 or changes:
            raise ValueError("n_envs > 1 needs an environment made with gym.make (it has a spec)")

        def factory() -> gym.Env:
            return env
    else:
        factory = functools.partial(_make_copy, env.spec, changes or {}, torch.get_num_threads())
    vec_name = hp.get("vec_env", "dummy")
    if vec_name not in VEC_ENVS:
        raise ValueError(f"vec_env must be 'dummy' or 'subproc', got {vec_name!r}")
    return make_vec_env(
        factory,
        n_envs=n_envs,
        seed=seed,
        wrapper_class=functools.partial(outermost, hp),
        vec_env_cls=VEC_ENVS[vec_name],
    )
