"""One level of the hierarchy at a time, for agents that take a single flat action space (SB3).

SB3 takes no ``Dict`` action spaces, so each wrapper fixes one part of ``HiEditEnv``'s
``{"layers", "update"}`` action and exposes the other as a plain space. Observations stay the
environment's ``Dict`` (``MultiInputPolicy``); Gymnasium's own ``FlattenObservation`` flattens them
where a flat vector helps.

==========================  =====================================  ===============================
wrapper                     the agent chooses                      fixed
==========================  =====================================  ===============================
:class:`ChooseLayers`       ``MultiBinary(L)`` layer mask          the update (an editor)
:class:`ChooseLayersInTurn` ``Discrete(L)``, ``k`` times per edit  the update (an editor)
                            (masks for MaskablePPO)
:class:`EmitStepSizes`      ``Box(-1, 1, (L,))`` step sizes        the layers (all, a list or a selector)
:class:`FlatAction`         ``Box(-1, 1, (2L,))``: layer scores    nothing
                            (top ``k``) and step sizes
==========================  =====================================  ===============================

An *editor* gives the ``update`` part of an action for every candidate of the current edit: a
number in [-1, 1] (the same step-size action for every module, ``update_mode="step_size"``) or a
callable ``editor(observation, info)``, e.g. a trained RLEdit/HiEdit low level
(``Agent.proposed_update`` in the zoo). A *selector* ``selector(observation, info)`` returns a 0/1
layer mask. Either may also name an agent of the zoo, ``{"agent": "rledit", "checkpoint": DIR}`` or
``{"agent": "topk_grad"}``, as a hyperparameter file does (RL Baselines3 Zoo passes a wrapper's
arguments from YAML as they are). Every wrapper also maps an agent's action to the environment's
without stepping (:meth:`LevelWrapper.env_action`), so a policy trained on the wrapper can act on the
bare environment.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from .action import top_k
from .checks import check_k
from .env import HiEditEnv

Observation = dict[str, np.ndarray]
Editor = Callable[[Observation, dict[str, Any]], Any]
Selector = Callable[[Observation, dict[str, Any]], np.ndarray]
# A zoo agent named in configuration: {"agent": name, "checkpoint": dir, "kwargs": {...}}.
AgentSpec = Mapping[str, Any]


class LevelWrapper(gym.Wrapper):
    """Base of the level wrappers: remembers the current edit's observation and ``info`` (an editor
    or selector needs them) and turns the agent's action into the environment's with :meth:`env_action`.
    The concrete wrappers record their arguments (``RecordConstructorArgs``), so ``env.spec`` re-creates them."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.hiedit: HiEditEnv = env.unwrapped
        if not isinstance(self.hiedit, HiEditEnv):
            raise TypeError(f"{type(self).__name__} wraps a HiEditEnv, got {type(self.hiedit).__name__}")
        self.num_candidates = len(self.hiedit.candidate_modules)
        self._observation: Observation | None = None
        self._info: dict[str, Any] = {}

    def env_action(self, action: Any, observation: Observation, info: dict[str, Any]) -> dict[str, Any]:
        """The environment's ``{"layers", "update"}`` action for the agent's ``action`` on the edit
        described by ``observation`` and ``info``."""
        raise NotImplementedError

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        self._observation, self._info = self.env.reset(seed=seed, options=options)
        return self._observation, self._info

    def step(self, action: Any):
        if self._observation is None:
            raise gym.error.ResetNeeded("call reset() before step()")
        observation, reward, terminated, truncated, info = self.env.step(
            self.env_action(action, self._observation, self._info)
        )
        self._observation, self._info = observation, info
        return observation, reward, terminated, truncated, info


def _zoo_agent(spec: AgentSpec, env: HiEditEnv) -> Any:
    """The zoo agent ``spec`` names, built or loaded for ``env``."""
    # Imported here: the environment needs the agent zoo (same distribution) only when a spec names one.
    from hiedit_agents.registry import agent_from_spec

    return agent_from_spec(spec, env)


def as_editor(env: HiEditEnv, editor: Editor | float | AgentSpec) -> Editor:
    """``editor`` as a callable; a number is a constant step-size action for every candidate, a
    mapping names a zoo agent whose proposed update is taken."""
    if callable(editor):
        return editor
    if isinstance(editor, Mapping):
        return _zoo_agent(editor, env).proposed_update
    if isinstance(editor, bool) or not isinstance(editor, (int, float)) or not -1.0 <= float(editor) <= 1.0:
        raise ValueError(f"editor must be a callable or a step-size action in [-1, 1], got {editor!r}")
    if env.update_mode != "step_size":
        raise ValueError(
            "a constant-step editor needs update_mode='step_size'; give a low_rank editor "
            "(e.g. a trained RLEdit low level) for a low_rank environment"
        )
    update = np.full(len(env.candidate_modules), float(editor), np.float32)
    return lambda observation, info: update


def _step_size_env(env: HiEditEnv, wrapper: str) -> None:
    if env.update_mode != "step_size":
        raise ValueError(f"{wrapper} emits step sizes: make the environment with update_mode='step_size'")


def _check_k(k: int | None, env: HiEditEnv, n: int) -> int:
    """``k`` for wrappers that enforce a budget: the argument, else the environment's ``layer_budget``, else half."""
    k = check_k(k if k is not None else env.layer_budget, n)
    if env.layer_budget is not None and env.layer_budget != k:
        raise ValueError(f"k={k} disagrees with the environment's layer_budget={env.layer_budget}")
    return int(k)


class ChooseLayers(LevelWrapper, gym.utils.RecordConstructorArgs):
    """High level only, ``MultiBinary(L)``: the agent's 0/1 vector is the layer mask; the update comes
    from ``editor``. The number of layers is free (the ``sparsity`` reward term prices it); use
    :class:`ChooseLayersInTurn` to enforce a budget ``k``.

    Args:
        env: a ``HiEditEnv`` (possibly wrapped) without ``layer_budget``.
        editor: a step-size action in [-1, 1] for every module, a callable or a zoo agent (see the module docstring).
    """

    def __init__(self, env: gym.Env, editor: Editor | float | AgentSpec = 0.0) -> None:
        gym.utils.RecordConstructorArgs.__init__(self, editor=editor)
        super().__init__(env)
        if self.hiedit.layer_budget is not None:
            raise ValueError(
                "ChooseLayers passes a 0/1 mask, which a layer_budget would re-rank by index; "
                "use ChooseLayersInTurn to enforce a budget"
            )
        self.editor = as_editor(self.hiedit, editor)
        self.action_space = spaces.MultiBinary(self.num_candidates)

    def env_action(self, action: Any, observation: Observation, info: dict[str, Any]) -> dict[str, Any]:
        return {"layers": np.asarray(action, dtype=np.float32), "update": self.editor(observation, info)}


class ChooseLayersInTurn(LevelWrapper, gym.utils.RecordConstructorArgs):
    """High level only, exactly ``k`` layers per edit: ``k`` consecutive ``Discrete(L)`` choices, each
    masked to the layers not yet taken (:meth:`action_masks`, read by ``sb3_contrib.MaskablePPO``).

    MaskablePPO's masks are per action dimension, so "exactly ``k`` of ``L``" cannot be one masked
    ``MultiBinary``; ``k`` masked sub-steps can. The first ``k - 1`` sub-steps return reward 0 and do
    not touch the model; the ``k``-th applies the edit (the update from ``editor``) and returns its
    reward. The observation adds ``chosen``, the 0/1 mask of this edit's choices so far. A layer
    already taken (an agent that ignores the masks) is replaced by the lowest-index free one
    (documented, so random actions, as the env checkers send, stay valid).

    Args:
        env: a ``HiEditEnv`` (possibly wrapped).
        editor: a step-size action in [-1, 1] for every module, a callable or a zoo agent.
        k: layers per edit (default: the environment's ``layer_budget``, else half the candidates).
    """

    def __init__(self, env: gym.Env, editor: Editor | float | AgentSpec = 0.0, k: int | None = None) -> None:
        gym.utils.RecordConstructorArgs.__init__(self, editor=editor, k=k)
        super().__init__(env)
        self.editor = as_editor(self.hiedit, editor)
        self.k = _check_k(k, self.hiedit, self.num_candidates)
        self.action_space = spaces.Discrete(self.num_candidates)
        self.observation_space = spaces.Dict(
            {**self.env.observation_space.spaces, "chosen": spaces.Box(0.0, 1.0, (self.num_candidates,), np.float32)}
        )
        self._chosen = np.zeros(self.num_candidates, np.float32)

    def policy_observation(self, observation: Observation, chosen: np.ndarray) -> Observation:
        """The environment's observation plus the choices made so far for the current edit (fresh
        arrays: each sub-step's observation is the caller's to keep)."""
        return {**{key: value.copy() for key, value in observation.items()}, "chosen": chosen.astype(np.float32)}

    def take(self, chosen: np.ndarray, action: Any) -> np.ndarray:
        """``chosen`` with layer ``action`` added (or the lowest-index free layer if it was taken)."""
        index = int(np.asarray(action).reshape(()))
        if not 0 <= index < self.num_candidates:
            raise ValueError(f"layer choice must be in [0, {self.num_candidates}), got {index}")
        if chosen[index] > 0:
            index = int(np.flatnonzero(chosen == 0)[0])
        chosen = chosen.copy()
        chosen[index] = 1.0
        return chosen

    def action_masks(self) -> np.ndarray:
        """Which layers may be chosen next (``True``: not taken yet for this edit)."""
        return self._chosen == 0

    def env_action(self, action: Any, observation: Observation, info: dict[str, Any]) -> dict[str, Any]:
        """``action`` here is the full 0/1 mask of ``k`` layers."""
        return {"layers": np.asarray(action, dtype=np.float32), "update": self.editor(observation, info)}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        observation, info = super().reset(seed=seed, options=options)
        self._chosen = np.zeros(self.num_candidates, np.float32)
        return self.policy_observation(observation, self._chosen), info

    def step(self, action: Any):
        if self._observation is None:
            raise gym.error.ResetNeeded("call reset() before step()")
        self._chosen = self.take(self._chosen, action)
        if self._chosen.sum() < self.k:
            info = {"edit_index": self.hiedit.edit_index, "layers_chosen_so_far": np.flatnonzero(self._chosen).tolist()}
            return self.policy_observation(self._observation, self._chosen), 0.0, False, False, info
        observation, reward, terminated, truncated, info = super().step(self._chosen)
        self._chosen = np.zeros(self.num_candidates, np.float32)
        return self.policy_observation(observation, self._chosen), reward, terminated, truncated, info


class EmitStepSizes(LevelWrapper, gym.utils.RecordConstructorArgs):
    """Low level only, ``Box(-1, 1)``: the agent emits the step-size actions; the layers are fixed.

    Args:
        env: a ``HiEditEnv`` with ``update_mode="step_size"``.
        layers: ``"all"``, a sequence of candidate indices, a selector ``(observation, info) -> mask``, or
            a zoo agent (``{"agent": "topk_grad"}``) whose choice of layers is taken.
        tied: one step size shared by every chosen module (``Box(-1, 1, (1,))``): far fewer action
            dimensions, so far fewer samples to learn a schedule.
    """

    def __init__(
        self, env: gym.Env, layers: str | Sequence[int] | Selector | AgentSpec = "all", tied: bool = False
    ) -> None:
        gym.utils.RecordConstructorArgs.__init__(self, layers=layers, tied=tied)
        super().__init__(env)
        _step_size_env(self.hiedit, "EmitStepSizes")
        n = self.num_candidates
        if isinstance(layers, Mapping):
            selector = _zoo_agent(layers, self.hiedit)
            self.selector = lambda observation, info: selector.act(observation, info)["layers"]
        elif callable(layers):
            self.selector: Selector = layers
        else:
            mask = np.zeros(n, np.float32)
            if isinstance(layers, str):
                if layers != "all":
                    raise ValueError(f"layers must be 'all', a list of candidate indices or a selector, got {layers!r}")
                mask[:] = 1.0
            else:
                indices = [int(i) for i in layers]
                if not indices or any(not 0 <= i < n for i in indices):
                    raise ValueError(f"layers must be a non-empty list of indices in [0, {n}), got {layers!r}")
                mask[indices] = 1.0
            self.selector = lambda observation, info: mask
        self.tied = bool(tied)
        self.action_space = spaces.Box(-1.0, 1.0, (1 if self.tied else n,), np.float32)

    def env_action(self, action: Any, observation: Observation, info: dict[str, Any]) -> dict[str, Any]:
        update = np.asarray(action, dtype=np.float32).reshape(-1)
        if update.shape != self.action_space.shape:
            raise ValueError(f"step sizes must have shape {self.action_space.shape}, got {update.shape}")
        if self.tied:
            update = np.full(self.num_candidates, update[0], np.float32)
        return {"layers": np.asarray(self.selector(observation, info), dtype=np.float32), "update": update}


class FlatAction(LevelWrapper, gym.utils.RecordConstructorArgs):
    """Both levels in one ``Box(-1, 1, (2L,))`` for SAC/TD3/PPO: the first ``L`` numbers score the
    candidates and the ``k`` highest are edited (ties: lower index); the last ``L`` are their step sizes.

    Args:
        env: a ``HiEditEnv`` with ``update_mode="step_size"``.
        k: layers per edit (default: the environment's ``layer_budget``, else half the candidates).
    """

    def __init__(self, env: gym.Env, k: int | None = None) -> None:
        gym.utils.RecordConstructorArgs.__init__(self, k=k)
        super().__init__(env)
        _step_size_env(self.hiedit, "FlatAction")
        self.k = _check_k(k, self.hiedit, self.num_candidates)
        self.action_space = spaces.Box(-1.0, 1.0, (2 * self.num_candidates,), np.float32)

    def env_action(self, action: Any, observation: Observation, info: dict[str, Any]) -> dict[str, Any]:
        flat = np.asarray(action, dtype=np.float32).reshape(-1)
        n = self.num_candidates
        if flat.shape != (2 * n,):
            raise ValueError(f"FlatAction expects {2 * n} numbers, got shape {flat.shape}")
        if not np.all(np.isfinite(flat)):
            raise ValueError("FlatAction got NaN or inf")
        mask = np.zeros(n, np.float32)
        mask[top_k(flat[:n], self.k)] = 1.0
        return {"layers": mask, "update": flat[n:]}


LEVEL_WRAPPERS: dict[str, type[LevelWrapper]] = {
    cls.__name__: cls for cls in (ChooseLayers, ChooseLayersInTurn, EmitStepSizes, FlatAction)
}
