"""The SB3 agent: an SB3 algorithm acting through one level wrapper, its training (vector environments,
``VecNormalize``, action noise, evaluation and checkpoint callbacks) and its checkpoint files, and
the five registered algorithms."""

from __future__ import annotations

import copy
import json
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from sb3_contrib import MaskablePPO
from sb3_contrib.common.maskable.callbacks import MaskableEvalCallback
from stable_baselines3 import A2C, PPO, SAC, TD3
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback, CallbackList, EvalCallback, EveryNTimesteps
from stable_baselines3.common.noise import NormalActionNoise, OrnsteinUhlenbeckActionNoise
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecNormalize
from tqdm import TqdmExperimentalWarning

from hiedit_env import HiEditEnv
from hiedit_env.checks import check_int
from hiedit_env.wrappers import ChooseLayersInTurn

from ..common.base import Agent, TrainingInterrupted
from ..common.checkpoint import CheckpointError, CheckpointWriter, content_sha256
from .callbacks import RewardTermsCallback, SaveAgentCallback
from .hyperparams import OWN_KEYS, load_hyperparams
from .vec_env import vector_env
from .wrappers import editor_update_mode, wrap_levels

MODEL_FILE, VECNORM_FILE, BUFFER_FILE = "model.zip", "vecnormalize.pkl", "replay_buffer.pkl"


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
        hp = load_hyperparams(
            cls.name, config.get("hyperparams"), {k: v for k, v in config.items() if k != "hyperparams"}
        )
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
                choice, _ = self.model.predict(
                    self._policy_observation(self.level.policy_observation(observation, chosen)),
                    deterministic=True,
                    **extra,
                )
                chosen = self.level.take(chosen, choice)
            return self.level.env_action(chosen, observation, info)
        action, _ = self.model.predict(self._policy_observation(observation), deterministic=True)
        return self.level.env_action(action, observation, info)

    # ------------------------------------------------------------------ learning
    def _normalized(self, venv: VecEnv, training: bool) -> VecEnv:
        normalize = self.hp.get("normalize", False)
        if not normalize:
            return venv
        kwargs = normalize if isinstance(normalize, dict) else {}
        if not training:
            return VecNormalize(
                venv, training=False, norm_reward=False, **{k: v for k, v in kwargs.items() if k != "norm_reward"}
            )
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

    def learn(
        self,
        env: gym.Env,
        steps: int,
        *,
        log_dir: str | Path | None = None,
        seed: int = 0,
        progress: bool = True,
        checkpoint_dir: str | Path | None = None,
        checkpoint_every: int | None = None,
        resume: bool = False,
    ) -> dict[str, Any]:
        """Train for ``steps`` edits in all (a resumed model counts the edits it already trained on).

        With ``checkpoint_dir`` the agent is saved there every ``checkpoint_every`` edits (default: the
        ``checkpoint_freq`` hyperparameter, in agent steps) and when SIGINT interrupts training, which
        then raises :class:`~hiedit_agents.common.base.TrainingInterrupted`. ``resume`` continues the model
        this agent was loaded with (:meth:`load`), from a run's progress folder or its finished checkpoint."""
        check_int("steps", steps, 1)
        if resume and self.model is None:
            raise ValueError(f"nothing to resume: this {self.name} agent has no model (load the checkpoint first)")
        venv = self._normalized(vector_env(self.hp, env, int(self.hp.get("n_envs", 1)), seed), training=True)
        total = steps * self.decisions_per_edit
        if self.model is None:
            policy = self.hp.get("policy", "MultiInputPolicy")
            if isinstance(policy, str) and (policy == "MultiInputPolicy") != isinstance(
                venv.observation_space, gym.spaces.Dict
            ):
                raise ValueError(
                    f"policy {policy!r} does not fit the {type(venv.observation_space).__name__} observations: "
                    "use MultiInputPolicy for the environment's Dict, MlpPolicy after FlattenObservation"
                )
            try:
                self.model = self.algorithm(
                    policy,
                    venv,
                    seed=seed,
                    verbose=0,
                    tensorboard_log=None if log_dir is None else str(log_dir),
                    **self._algorithm_kwargs(venv),
                )
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
            eval_env = self._normalized(vector_env(self.hp, env, 1, seed + 10_000, eval_changes), training=False)
            eval_cls = MaskableEvalCallback if isinstance(self.model, MaskablePPO) else EvalCallback
            callbacks.append(
                eval_cls(
                    eval_env,
                    n_eval_episodes=int(self.hp.get("eval_episodes", 1)),
                    eval_freq=max(1, eval_freq // venv.num_envs),
                    deterministic=True,
                    verbose=0,
                )
            )
        checkpoint_freq = (
            int(self.hp.get("checkpoint_freq", 0))
            if checkpoint_every is None
            else checkpoint_every * self.decisions_per_edit
        )
        if checkpoint_freq > 0 and checkpoint_dir is not None:
            callbacks.append(EveryNTimesteps(checkpoint_freq, SaveAgentCallback(self, Path(checkpoint_dir))))
        try:
            with warnings.catch_warnings():  # SB3's progress bar is tqdm.rich, which warns that it is experimental
                warnings.filterwarnings("ignore", category=TqdmExperimentalWarning)
                self.model.learn(
                    total_timesteps=remaining,
                    callback=CallbackList(callbacks),
                    tb_log_name=self.name,
                    reset_num_timesteps=False,
                    progress_bar=progress,
                )
        except KeyboardInterrupt:
            # SB3 can stop anywhere: its state is the model, the buffer and the statistics, all in the save.
            if checkpoint_dir is not None:
                self.save_progress(checkpoint_dir)
            raise TrainingInterrupted(
                self.model.num_timesteps // self.decisions_per_edit, steps, checkpoint_dir is not None
            ) from None
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
            warnings.warn(
                "no evaluation callback: it needs an environment made with gym.make and, when training "
                "uses split 'all', an 'eval_dataset' hyperparameter (held-out edits)",
                stacklevel=3,
            )
            return None
        return changes

    def _stats(self, steps: int, done_before: int) -> dict[str, Any]:
        """Training statistics; ``steps_this_run`` counts the edits of this call alone (a resumed run's
        time per edit divides by these)."""
        assert self.model is not None
        trained = (int(self.model.num_timesteps) - done_before) // self.decisions_per_edit
        return {
            "steps": steps,
            "steps_this_run": trained,
            "resumed_at": done_before // self.decisions_per_edit or None,
            "agent_steps": int(self.model.num_timesteps),
            "optimizer_steps": int(getattr(self.model, "_n_updates", 0)),
            "hyperparams": self.config(),
        }

    # ------------------------------------------------------------------ persistence
    def config(self) -> dict[str, Any]:
        return json.loads(json.dumps(self.hp))

    def fingerprint(self) -> str:
        """SHA-256 of the trained configuration, the policy's parameters and the ``VecNormalize``
        statistics (the replay buffer only trains)."""
        acts_with: dict[str, Any] = {"config": self.trained_config()}
        if self.model is not None:
            acts_with["policy"] = self.model.policy.state_dict()
        if self.vecnormalize is not None:
            rms = self.vecnormalize.obs_rms  # one RunningMeanStd, or one per key of a Dict observation
            acts_with["obs_rms"] = {
                key: (r.mean, r.var) for key, r in (rms.items() if isinstance(rms, dict) else [("", rms)])
            }
        return content_sha256(acts_with)

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
                self.vecnormalize = VecNormalize.load(
                    str(directory / VECNORM_FILE), DummyVecEnv([lambda: self.wrapped])
                )
                self.vecnormalize.training = False  # acting must not move the statistics; learn() turns it back on
        except (EOFError, pickle.UnpicklingError, zipfile.BadZipFile, KeyError, ValueError, RuntimeError) as err:
            reason = " ".join(str(err).split())[:200] or type(err).__name__
            raise CheckpointError(f"cannot read the SB3 files of {str(directory)!r}: {reason}") from None


def _sb3_agent(class_name: str, name: str, algorithm: type[BaseAlgorithm], doc: str) -> type[SB3Agent]:
    return type(class_name, (SB3Agent,), {"name": name, "algorithm": algorithm, "__doc__": doc, "__module__": __name__})


PPOAgent = _sb3_agent(
    "PPOAgent",
    "ppo",
    PPO,
    "PPO; shipped setting: the high level, a ``MultiBinary`` layer mask (:class:`~hiedit_env.wrappers.ChooseLayers`).",
)
A2CAgent = _sb3_agent("A2CAgent", "a2c", A2C, "A2C; shipped setting: the high level, a ``MultiBinary`` layer mask.")
SACAgent = _sb3_agent(
    "SACAgent",
    "sac",
    SAC,
    "SAC; shipped setting: the low level, step sizes for all candidates (:class:`~hiedit_env.wrappers.EmitStepSizes`).",
)
TD3Agent = _sb3_agent(
    "TD3Agent",
    "td3",
    TD3,
    "TD3; shipped setting: both levels in one ``Box`` (:class:`~hiedit_env.wrappers.FlatAction`).",
)
MaskablePPOAgent = _sb3_agent(
    "MaskablePPOAgent",
    "maskable_ppo",
    MaskablePPO,
    "MaskablePPO; shipped setting: the high level, exactly ``k`` layers chosen in turn with "
    "masks (:class:`~hiedit_env.wrappers.ChooseLayersInTurn`).",
)

SB3_AGENTS: tuple[type[SB3Agent], ...] = (PPOAgent, A2CAgent, SACAgent, TD3Agent, MaskablePPOAgent)
