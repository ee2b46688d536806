"""Stable-Baselines3 learners as zoo agents: ``ppo``, ``a2c``, ``sac``, ``td3`` and ``maskable_ppo``.

Each algorithm controls one level of the hierarchy through a wrapper of :mod:`hiedit_env.wrappers`
(SB3 takes no ``Dict`` actions). Hyperparameters come from ``hyperparams/<algorithm>.yml`` in the
format of the RL Baselines3 Zoo, or from a user's file (``hyperparams="my.yml"``); any key can be
overridden from the command line with ``--agent-kwargs '{"learning_rate": 0.001}'``. A file holds:

* the ``HiEdit-v0`` entry, which the zoo reads too (``python -m rl_zoo3.train --conf-file``, see
  docs/rl-zoo.md): ``n_timesteps``, ``policy``, ``n_envs``, ``normalize``, ``env_wrapper``,
  ``env_kwargs``, ``policy_kwargs``, ``noise_type``/``noise_std`` (action noise for the off-policy
  algorithms: ``normal`` or ``ornstein-uhlenbeck``), plus the algorithm's own arguments.
  ``env_wrapper`` is the zoo's list ``[{"hiedit_env.wrappers.ChooseLayersInTurn": {...}}, ...]``
  (``module:Class`` is read too): exactly one level wrapper, then optional Gymnasium observation
  wrappers (``gymnasium.wrappers.FlattenObservation``). A level wrapper's ``editor`` or ``layers``
  may name a zoo agent, ``{"agent": "rledit", "checkpoint": "runs/rledit"}`` or ``{"agent": "topk_grad"}``;
* the ``hiedit_train`` section, keys of ours that the zoo never reads (it would pass them to the
  algorithm), merged over the entry:

  * ``level``: ``high``, ``low`` or ``flat``, the level the algorithm controls (documentation; the
    wrapper decides);
  * ``vec_env``: ``dummy`` (copies in this process: they share one model, so memory barely grows) or
    ``subproc`` (one process and one model per copy);
  * ``eval_freq``/``eval_episodes``/``eval_split``/``eval_dataset``: an evaluation episode on held-out
    edits (the ``eval_split`` of the training data, or of ``eval_dataset`` when training uses a whole
    file) every ``eval_freq`` agent steps, logged to TensorBoard only (the saved model is the last one,
    never the best on those edits, so they select nothing);
  * ``checkpoint_freq``: save the agent (model, ``VecNormalize`` statistics, replay buffer) every that
    many agent steps, so ``hiedit train --resume`` continues an interrupted run.

``--steps`` counts edits (environment steps). ``ChooseLayersInTurn`` takes ``k`` agent decisions per
edit, so SB3's ``total_timesteps`` is ``k`` times larger there.
"""

from __future__ import annotations

import copy
import functools
import importlib
import json
import pickle
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
import yaml
from sb3_contrib import MaskablePPO
from sb3_contrib.common.maskable.callbacks import MaskableEvalCallback
from stable_baselines3 import A2C, PPO, SAC, TD3
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback, CallbackList, EvalCallback, EveryNTimesteps
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.noise import NormalActionNoise, OrnsteinUhlenbeckActionNoise
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv, VecNormalize
from tqdm import TqdmExperimentalWarning

from hiedit_env.checks import check_int
from hiedit_env.env import REWARD_TERMS, HiEditEnv
from hiedit_env.wrappers import ChooseLayersInTurn, LevelWrapper

from .base import Agent, TrainingInterrupted, UpdateMode
from .checkpoint import CheckpointError, CheckpointWriter
from .registry import agent_class

ENV_ID = "HiEdit-v0"
HYPERPARAMS_DIR = Path(__file__).parent / "hyperparams"
MODEL_FILE, VECNORM_FILE, BUFFER_FILE = "model.zip", "vecnormalize.pkl", "replay_buffer.pkl"
# The section of a hyperparameter file that RL Baselines3 Zoo never reads (it reads the environment
# id's entry alone), and the keys it may hold.
TRAIN_SECTION = "hiedit_train"
TRAIN_KEYS = frozenset({"level", "vec_env", "eval_freq", "eval_episodes", "eval_split", "eval_dataset", "checkpoint_freq"})
# Keys read here; every other key is passed to the algorithm's constructor.
OWN_KEYS = TRAIN_KEYS | {"env_wrapper", "env_kwargs", "n_timesteps", "policy", "n_envs", "normalize", "noise_type",
                         "noise_std"}
EPISODE_METRICS = ("ES", "GS", "LS", "mean", "ES_first_20pct", "layers_per_edit")


def load_hyperparams(algorithm: str, path: str | Path | None = None,
                     overrides: dict[str, Any] | None = None) -> dict[str, Any]:
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
        raise ValueError(f"{str(path)!r}: the {TRAIN_SECTION!r} section may only hold {sorted(TRAIN_KEYS)}, got "
                         f"{sorted(extra) if isinstance(extra, dict) else extra!r}")
    twice = sorted(set(extra) & set(table[ENV_ID]))
    if twice:
        raise ValueError(f"{str(path)!r} sets {twice} both in {ENV_ID!r} and in {TRAIN_SECTION!r}")
    return {**table[ENV_ID], **extra, **(overrides or {})}


def _import(path: str) -> Any:
    """The object named ``package.module.Name`` (RL Zoo's spelling) or ``package.module:Name``."""
    module, _, attr = path.partition(":") if ":" in path else path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError) as err:
        raise ValueError(f"cannot import {path!r} (expected 'package.module.Name' or 'package.module:Name'): {err}") from err


def _wrapper_specs(hp: dict[str, Any]) -> list[tuple[type, dict[str, Any]]]:
    """``env_wrapper`` as (class, kwargs) pairs, checked: one level wrapper first, then observation wrappers."""
    specs = hp.get("env_wrapper")
    if not isinstance(specs, list) or not specs:
        raise ValueError("hyperparameter 'env_wrapper' must be a non-empty list such as "
                         "[{'hiedit_env.wrappers.ChooseLayersInTurn': {'k': 9}}]")
    pairs: list[tuple[type, dict[str, Any]]] = []
    for spec in specs:
        if isinstance(spec, str):
            name, kwargs = spec, {}
        elif isinstance(spec, dict) and len(spec) == 1:
            (name, kwargs), = spec.items()
        else:
            raise ValueError(f"each env_wrapper entry must be 'module.Class' or {{'module.Class': kwargs}}, got {spec!r}")
        cls = _import(name)
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
    editor = _wrapper_specs(hp)[0][1].get("editor")
    return agent_class(editor["agent"]).update_mode if isinstance(editor, dict) else "step_size"


def wrap_levels(hp: dict[str, Any], env: gym.Env) -> tuple[LevelWrapper, list[gym.ObservationWrapper]]:
    """``env`` wrapped as ``hp["env_wrapper"]`` says: the level wrapper and the observation wrappers around it."""
    (level_cls, level_kwargs), *rest = _wrapper_specs(hp)
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


def _make_copy(spec: gym.envs.registration.EnvSpec, kwargs: dict[str, Any], threads: int) -> gym.Env:
    """A copy of the environment; a subprocess copy also takes the parent's torch thread count
    (torch's default there oversubscribes the cores the parent was told to use)."""
    torch.set_num_threads(threads)
    return gym.make(spec, **kwargs)


class RewardTermsCallback(BaseCallback):
    """Logs every reward term of :class:`~hiedit_env.HiEditEnv` (mean over the logging interval,
    under ``edit/``) and the end-of-sequence evaluation of each finished episode (under ``episode/``)."""

    def _on_step(self) -> bool:
        for info in self.locals["infos"]:
            for term in REWARD_TERMS:
                if term in info:
                    self.logger.record_mean(f"edit/{term}", info[term])
            if "episode_metrics" in info:
                for key in EPISODE_METRICS:
                    self.logger.record_mean(f"episode/{key}", info["episode_metrics"][key])
        return True


class SaveAgentCallback(BaseCallback):
    """Saves the run's progress (:meth:`SB3Agent.save_progress`) when triggered (by ``EveryNTimesteps``)."""

    def __init__(self, agent: SB3Agent, directory: Path) -> None:
        super().__init__()
        self.agent, self.directory = agent, directory

    def _on_step(self) -> bool:
        self.agent.save_progress(self.directory)
        return True


class SB3Agent(Agent):
    """An SB3 algorithm acting through one level wrapper. Subclasses set ``name`` and ``algorithm``.

    Args:
        env: the environment to act on (its update mode must match the wrapper's editor).
        hyperparams: a YAML file in RL Zoo format (default: the shipped one for this algorithm).
        **overrides: hyperparameters replacing the file's (whole keys).
    """

    algorithm: ClassVar[type[BaseAlgorithm]]
    requires_training = True
    resumable = True

    def __init__(self, env: gym.Env, hyperparams: str | None = None, **overrides: Any) -> None:
        self.hp = load_hyperparams(self.name, hyperparams, overrides)
        self.update_mode = editor_update_mode(self.hp)
        super().__init__(env)
        self.default_train_steps = int(self.hp.get("n_timesteps", 1000))
        self.level, self.observation_wrappers = wrap_levels(self.hp, self.env)
        self.wrapped: gym.Env = (self.observation_wrappers or [self.level])[-1]
        self.model: BaseAlgorithm | None = None
        self.vecnormalize: VecNormalize | None = None

    @classmethod
    def env_requirements(cls, config: dict[str, Any]) -> dict[str, Any]:
        hp = load_hyperparams(cls.name, config.get("hyperparams"),
                              {k: v for k, v in config.items() if k != "hyperparams"})
        return {"update_mode": editor_update_mode(hp), **hp.get("env_kwargs", {})}

    @property
    def decisions_per_edit(self) -> int:
        return self.level.k if isinstance(self.level, ChooseLayersInTurn) else 1

    # ------------------------------------------------------------------ acting
    def _policy_observation(self, observation: dict[str, np.ndarray]) -> Any:
        for wrapper in self.observation_wrappers:
            observation = wrapper.observation(observation)
        return self.vecnormalize.normalize_obs(observation) if self.vecnormalize is not None else observation

    def act(self, observation: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
        if self.model is None:
            raise RuntimeError(f"agent {self.name!r} has no model: call learn() or load a checkpoint first")
        masked = isinstance(self.model, MaskablePPO)
        if isinstance(self.level, ChooseLayersInTurn):
            chosen = np.zeros(self.num_candidates, np.float32)
            for _ in range(self.level.k):
                extra = {"action_masks": chosen == 0} if masked else {}
                choice, _ = self.model.predict(self._policy_observation(self.level.policy_observation(observation, chosen)),
                                               deterministic=True, **extra)
                chosen = self.level.take(chosen, choice)
            return self.level.env_action(chosen, observation, info)
        action, _ = self.model.predict(self._policy_observation(observation), deterministic=True)
        return self.level.env_action(action, observation, info)

    # ------------------------------------------------------------------ learning
    def _vec_env(self, env: gym.Env, n_envs: int, seed: int, changes: dict[str, Any] | None = None) -> VecEnv:
        """``n_envs`` wrapped copies of ``env`` (re-made from its spec with ``changes``; in-process copies
        share the model)."""
        if env.spec is None:
            if n_envs != 1 or changes:
                raise ValueError("n_envs > 1 needs an environment made with gym.make (it has a spec)")
            factory: Callable[[], gym.Env] = lambda: env
        else:
            factory = functools.partial(_make_copy, env.spec, changes or {}, torch.get_num_threads())
        vec_name = self.hp.get("vec_env", "dummy")
        if vec_name not in ("dummy", "subproc"):
            raise ValueError(f"vec_env must be 'dummy' or 'subproc', got {vec_name!r}")
        return make_vec_env(factory, n_envs=n_envs, seed=seed, wrapper_class=functools.partial(outermost, self.hp),
                            vec_env_cls=SubprocVecEnv if vec_name == "subproc" else DummyVecEnv)

    def _normalized(self, venv: VecEnv, training: bool) -> VecEnv:
        normalize = self.hp.get("normalize", False)
        if not normalize:
            return venv
        kwargs = normalize if isinstance(normalize, dict) else {}
        if not training:
            return VecNormalize(venv, training=False, norm_reward=False, **{k: v for k, v in kwargs.items() if k != "norm_reward"})
        if self.vecnormalize is not None:  # resuming: keep the running statistics
            self.vecnormalize.set_venv(venv)
            self.vecnormalize.training = True
            return self.vecnormalize
        self.vecnormalize = VecNormalize(venv, **kwargs)
        return self.vecnormalize

    def _algorithm_kwargs(self, venv: VecEnv) -> dict[str, Any]:
        # A copy: SB3 writes into policy_kwargs (A2C adds its optimiser class), which must stay JSON.
        kwargs = copy.deepcopy({k: v for k, v in self.hp.items() if k not in OWN_KEYS})
        for key in ("learning_rate", "clip_range"):  # SB3 would fail on a string with a bare AssertionError
            value = kwargs.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ValueError(f"hyperparameter {key!r} of {self.name} must be a number, got {value!r}")
        noise = self.hp.get("noise_type")
        if noise is not None:
            dims = venv.action_space.shape[-1]
            std = float(self.hp.get("noise_std", 0.1)) * np.ones(dims)
            noises = {"normal": NormalActionNoise, "ornstein-uhlenbeck": OrnsteinUhlenbeckActionNoise}
            if noise not in noises:
                raise ValueError(f"noise_type must be one of {sorted(noises)}, got {noise!r}")
            kwargs["action_noise"] = noises[noise](np.zeros(dims), std)
        return kwargs

    def learn(self, env: gym.Env, steps: int, *, log_dir: str | Path | None = None, seed: int = 0,
              progress: bool = True, checkpoint_dir: str | Path | None = None, checkpoint_every: int | None = None,
              resume: bool = False) -> dict[str, Any]:
        """Train for ``steps`` edits in all (a resumed model counts the edits it already trained on).

        With ``checkpoint_dir`` the agent is saved there every ``checkpoint_every`` edits (default: the
        ``checkpoint_freq`` hyperparameter, in agent steps) and when SIGINT interrupts training, which
        then raises :class:`~hiedit_agents.base.TrainingInterrupted`. ``resume`` continues the model
        this agent was loaded with (:meth:`load`), from a run's progress folder or its finished checkpoint."""
        check_int("steps", steps, 1)
        if resume and self.model is None:
            raise ValueError(f"nothing to resume: this {self.name} agent has no model (load the checkpoint first)")
        venv = self._normalized(self._vec_env(env, int(self.hp.get("n_envs", 1)), seed), training=True)
        total = steps * self.decisions_per_edit
        if self.model is None:
            policy = self.hp.get("policy", "MultiInputPolicy")
            if isinstance(policy, str) and (policy == "MultiInputPolicy") != isinstance(venv.observation_space, gym.spaces.Dict):
                raise ValueError(f"policy {policy!r} does not fit the {type(venv.observation_space).__name__} observations: "
                                 "use MultiInputPolicy for the environment's Dict, MlpPolicy after FlattenObservation")
            try:
                self.model = self.algorithm(policy, venv, seed=seed, verbose=0,
                                            tensorboard_log=None if log_dir is None else str(log_dir),
                                            **self._algorithm_kwargs(venv))
            except TypeError as err:  # a misspelt hyperparameter: name it
                raise ValueError(f"bad hyperparameters for {self.name}: {err}") from err
        else:
            self.model.set_env(venv)
        done = self.model.num_timesteps
        remaining = total - done
        if remaining <= 0:
            return self._stats(steps, done)
        callbacks: list[BaseCallback] = [RewardTermsCallback()]
        eval_freq = int(self.hp.get("eval_freq", 0))
        eval_changes = self._held_out(env) if eval_freq > 0 and log_dir is not None else None
        if eval_changes is not None:
            eval_env = self._normalized(self._vec_env(env, 1, seed + 10_000, eval_changes), training=False)
            eval_cls = MaskableEvalCallback if isinstance(self.model, MaskablePPO) else EvalCallback
            callbacks.append(eval_cls(eval_env, n_eval_episodes=int(self.hp.get("eval_episodes", 1)),
                                      eval_freq=max(1, eval_freq // venv.num_envs), deterministic=True, verbose=0))
        checkpoint_freq = int(self.hp.get("checkpoint_freq", 0)) if checkpoint_every is None \
            else checkpoint_every * self.decisions_per_edit
        if checkpoint_freq > 0 and checkpoint_dir is not None:
            callbacks.append(EveryNTimesteps(checkpoint_freq, SaveAgentCallback(self, Path(checkpoint_dir))))
        try:
            with warnings.catch_warnings():  # SB3's progress bar is tqdm.rich, which warns that it is experimental
                warnings.filterwarnings("ignore", category=TqdmExperimentalWarning)
                self.model.learn(total_timesteps=remaining, callback=CallbackList(callbacks), tb_log_name=self.name,
                                 reset_num_timesteps=False, progress_bar=progress)
        except KeyboardInterrupt:
            # SB3 can stop anywhere: its state is the model, the buffer and the statistics, all in the save.
            if checkpoint_dir is not None:
                self.save_progress(checkpoint_dir)
            raise TrainingInterrupted(self.model.num_timesteps // self.decisions_per_edit, steps,
                                      checkpoint_dir is not None) from None
        finally:  # subprocess copies end with the run
            venv.close()
            for callback in callbacks:
                if isinstance(callback, EvalCallback):
                    callback.eval_env.close()
        return self._stats(steps, done)

    def _held_out(self, env: gym.Env) -> dict[str, Any] | None:
        """``gym.make`` changes that give the evaluation callback edits the training never sees, or
        ``None`` (with a warning) when there are none to be had."""
        changes = {"split": self.hp.get("eval_split", "test")}
        if self.hp.get("eval_dataset"):
            changes["dataset"] = self.hp["eval_dataset"]
        unwrapped: HiEditEnv = env.unwrapped
        if env.spec is None or (unwrapped.split == "all" and "dataset" not in changes):
            warnings.warn("no evaluation callback: it needs an environment made with gym.make and, when training "
                          "uses split 'all', an 'eval_dataset' hyperparameter (held-out edits)", stacklevel=3)
            return None
        return changes

    def _stats(self, steps: int, done_before: int) -> dict[str, Any]:
        """Training statistics; ``steps_this_run`` counts the edits of this call alone (a resumed run's
        time per edit divides by these)."""
        assert self.model is not None
        trained = (int(self.model.num_timesteps) - done_before) // self.decisions_per_edit
        return {"steps": steps, "steps_this_run": trained, "resumed_at": done_before // self.decisions_per_edit or None,
                "agent_steps": int(self.model.num_timesteps), "optimizer_steps": int(getattr(self.model, "_n_updates", 0)),
                "hyperparams": self.config()}

    # ------------------------------------------------------------------ persistence
    def config(self) -> dict[str, Any]:
        return json.loads(json.dumps(self.hp))

    def save_files(self, writer: CheckpointWriter) -> None:
        """SB3's ``model.zip``, and ``vecnormalize.pkl`` / ``replay_buffer.pkl`` when used, sealed with
        ``agent.json`` in the checkpoint's manifest."""
        if self.model is not None:
            model = self.model
            writer.write(MODEL_FILE, lambda tmp: model.save(tmp))
            if getattr(model, "replay_buffer", None) is not None:
                writer.write(BUFFER_FILE, lambda tmp: model.save_replay_buffer(tmp))
        if self.vecnormalize is not None:
            vecnormalize = self.vecnormalize
            writer.write(VECNORM_FILE, lambda tmp: vecnormalize.save(str(tmp)))

    def load_files(self, directory: Path, files: dict[str, Any]) -> None:
        """SB3's model, replay buffer and ``VecNormalize`` statistics from a verified checkpoint."""
        if MODEL_FILE not in files:
            raise CheckpointError(f"no {MODEL_FILE} in {str(directory)!r}: the agent was saved before training")
        try:
            self.model = self.algorithm.load(directory / MODEL_FILE, device="auto")
            if BUFFER_FILE in files:
                self.model.load_replay_buffer(directory / BUFFER_FILE)
            if VECNORM_FILE in files:
                self.vecnormalize = VecNormalize.load(str(directory / VECNORM_FILE), DummyVecEnv([lambda: self.wrapped]))
                self.vecnormalize.training = False  # acting must not move the statistics; learn() turns it back on
        except (EOFError, pickle.UnpicklingError, zipfile.BadZipFile, KeyError, ValueError, RuntimeError) as err:
            reason = " ".join(str(err).split())[:200] or type(err).__name__
            raise CheckpointError(f"cannot read the SB3 files of {str(directory)!r}: {reason}") from None


def _sb3_agent(class_name: str, name: str, algorithm: type[BaseAlgorithm], doc: str) -> type[SB3Agent]:
    return type(class_name, (SB3Agent,), {"name": name, "algorithm": algorithm, "__doc__": doc, "__module__": __name__})


PPOAgent = _sb3_agent("PPOAgent", "ppo", PPO, "PPO; shipped setting: the high level, a ``MultiBinary`` layer mask "
                      "(:class:`~hiedit_env.wrappers.ChooseLayers`).")
A2CAgent = _sb3_agent("A2CAgent", "a2c", A2C, "A2C; shipped setting: the high level, a ``MultiBinary`` layer mask.")
SACAgent = _sb3_agent("SACAgent", "sac", SAC, "SAC; shipped setting: the low level, step sizes for all candidates "
                      "(:class:`~hiedit_env.wrappers.EmitStepSizes`).")
TD3Agent = _sb3_agent("TD3Agent", "td3", TD3, "TD3; shipped setting: both levels in one ``Box`` "
                      "(:class:`~hiedit_env.wrappers.FlatAction`).")
MaskablePPOAgent = _sb3_agent("MaskablePPOAgent", "maskable_ppo", MaskablePPO,
                              "MaskablePPO; shipped setting: the high level, exactly ``k`` layers chosen in turn with "
                              "masks (:class:`~hiedit_env.wrappers.ChooseLayersInTurn`).")

SB3_AGENTS: tuple[type[SB3Agent], ...] = (PPOAgent, A2CAgent, SACAgent, TD3Agent, MaskablePPOAgent)
