"""The plug-in contract every agent of the zoo follows, and the loop that runs one evaluation episode.

An agent is built against an environment (it keeps the *unwrapped* one in ``self.env`` so it can read
the current edit's trace), declares which ``update_mode`` it needs, and maps an observation to an
action. Agents that learn override :meth:`Agent.learn`; agents with state override
:meth:`Agent.state_dict` / :meth:`Agent.load_state_dict` and :meth:`Agent.config`. Saving writes a
JSON config and, if there is state, a ``torch.save`` file, so ``Agent.load(dir, env)`` rebuilds the
same agent with no code of ours knowing its class in advance.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal

import gymnasium as gym
import torch
from tqdm import tqdm

from hiedit_env import HiEditEnv
from hiedit_env.env import REWARD_WEIGHTS

UpdateMode = Literal["step_size", "low_rank"]
CONFIG_FILE = "agent.json"
STATE_FILE = "agent_state.pt"
# Sized for SmolLM2-135M on 2 CPU cores: a HiEdit training edit there (env step + objective
# forward/backward + dense objective forward) took about 3 s with one torch thread on a machine
# shared with other jobs (load ~4), so 300 edits (15 episodes of 20) take about 15 minutes, and the
# learned editors' five validation sequences of 50 edits about 5 more (18 to 20 minutes in all with
# two or three runs sharing the two cores).
DEFAULT_TRAIN_STEPS = 300


class Agent:
    """Base class of an editing agent.

    Subclasses set ``name`` and ``update_mode`` and implement :meth:`act`. Keyword arguments of
    ``__init__`` that :meth:`config` returns must be JSON values: they are what :meth:`save` writes
    and :meth:`load` passes back.
    """

    name: ClassVar[str] = "agent"
    update_mode: ClassVar[UpdateMode] = "step_size"
    # True when acting before learn() is meaningless (a random network): evaluation then needs a checkpoint.
    requires_training: ClassVar[bool] = False
    # True when learn() continues a loaded checkpoint and takes ``checkpoint_dir`` (``hiedit train --resume``).
    resumable: ClassVar[bool] = False
    # Constructor arguments that change only how a trained agent acts, so :meth:`load` may override them.
    acting_options: ClassVar[tuple[str, ...]] = ()
    # Edits ``hiedit train`` trains on when ``--steps`` is not given.
    default_train_steps: int = DEFAULT_TRAIN_STEPS

    def __init__(self, env: gym.Env) -> None:
        self.env: HiEditEnv = env.unwrapped
        if self.env.update_mode != self.update_mode:
            raise ValueError(f"agent {self.name!r} needs an environment with update_mode={self.update_mode!r}, "
                             f"got {self.env.update_mode!r}")
        self.num_candidates = len(self.env.candidate_modules)

    @classmethod
    def env_requirements(cls, config: dict[str, Any]) -> dict[str, Any]:
        """``gym.make`` arguments the agent built with ``config`` needs (default: its ``update_mode``)."""
        return {"update_mode": cls.update_mode}

    @classmethod
    def acting_requirements(cls, config: dict[str, Any]) -> dict[str, Any]:
        """:meth:`env_requirements` less the reward weights, for evaluation: the reward changes neither
        what the agent sees nor the end-of-sequence metrics, and a costly term (``w_sequence`` scores
        every edit so far at every step) would only slow evaluation down."""
        return {k: v for k, v in cls.env_requirements(config).items() if k not in REWARD_WEIGHTS}

    def act(self, observation: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
        """The action for the environment's current edit."""
        raise NotImplementedError

    def proposed_update(self, observation: dict[str, Any], info: dict[str, Any]) -> Any:
        """The ``update`` part of an action for *every* candidate, for wrappers that choose the
        layers themselves (:mod:`hiedit_env.wrappers`). Default: ``act(...)["update"]``."""
        return self.act(observation, info)["update"]

    def learn(self, env: gym.Env, steps: int, *, log_dir: str | Path | None = None, seed: int = 0,
              progress: bool = True) -> dict[str, Any]:
        """Train on ``steps`` edits of ``env`` (a training split); returns statistics. Default: nothing to learn."""
        return {"steps": 0, "optimizer_steps": 0}

    def config(self) -> dict[str, Any]:
        """The JSON-able constructor keyword arguments that rebuild this agent."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """Learned state (tensors and numbers) beyond :meth:`config`; empty for stateless agents."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""

    def save(self, directory: str | Path) -> Path:
        """Write ``agent.json`` (class and config) and, for stateful agents, ``agent_state.pt`` into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        cls = type(self)
        meta = {"agent": self.name, "class": f"{cls.__module__}:{cls.__qualname__}", "config": self.config(),
                "candidate_modules": list(self.env.candidate_modules)}
        (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=2))
        state = self.state_dict()
        if state:
            torch.save(state, directory / STATE_FILE)
        return directory

    @classmethod
    def saved_config(cls, config: dict[str, Any]) -> dict[str, Any]:
        """The constructor arguments a checkpoint's ``config`` stands for (older checkpoints may lack some)."""
        return config

    @classmethod
    def check_overrides(cls, overrides: dict[str, Any]) -> None:
        """Raise unless every key of ``overrides`` is one of :attr:`acting_options`."""
        fixed = sorted(set(overrides) - set(cls.acting_options))
        if fixed:
            raise ValueError(f"a checkpoint of {cls.name!r} fixes {fixed}; only its acting options "
                             f"{list(cls.acting_options)} can be changed when loading it")

    @classmethod
    def load(cls, directory: str | Path, env: gym.Env, **overrides: Any) -> Agent:
        """Rebuild an agent saved by :meth:`save` against ``env`` (which must have the same candidates);
        ``overrides`` replace saved values of :attr:`acting_options` (the rest is the checkpoint's)."""
        directory = Path(directory)
        cls.check_overrides(overrides)
        meta = read_checkpoint_meta(directory)
        if meta["candidate_modules"] != list(env.unwrapped.candidate_modules):
            raise ValueError(f"checkpoint {str(directory)!r} was trained on modules {meta['candidate_modules']}, "
                             f"the environment edits {env.unwrapped.candidate_modules}")
        agent = cls(env, **{**cls.saved_config(meta["config"]), **overrides})
        state_file = directory / STATE_FILE
        if state_file.exists():
            agent.load_state_dict(torch.load(state_file, map_location=agent.env.model.device, weights_only=True))
        return agent


def read_checkpoint_meta(directory: Path) -> dict[str, Any]:
    """The ``agent.json`` of a checkpoint directory, with a clear error when there is none."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no agent checkpoint in {str(directory)!r} (missing {CONFIG_FILE})")
    return json.loads(path.read_text())


def load_for_acting(cls: type[Agent], checkpoint: str | Path, overrides: dict[str, Any] | None = None,
                    **env_kwargs: Any) -> tuple[Agent, gym.Env]:
    """``checkpoint`` loaded into a new ``HiEdit-v0`` built from what the checkpoint's configuration needs to
    act (:meth:`Agent.acting_requirements`) and ``env_kwargs`` (which have the last word, as ``--env-kwargs``
    in ``hiedit evaluate``); ``overrides`` set acting options (:meth:`Agent.load`)."""
    overrides = overrides or {}
    cls.check_overrides(overrides)
    config = {**cls.saved_config(read_checkpoint_meta(Path(checkpoint))["config"]), **overrides}
    env = gym.make("HiEdit-v0", **{**cls.acting_requirements(config), **env_kwargs})
    return cls.load(checkpoint, env, **overrides), env


def run_episode(agent: Agent, env: gym.Env, seed: int, progress: bool = True,
                on_step: Callable[[dict[str, Any], bool], None] | None = None) -> dict[str, Any]:
    """Run one full episode with ``agent`` and return the environment's ``episode_metrics``, plus
    ``agent_seconds_per_edit`` (the agent's own ``act`` time, which ``seconds_per_edit`` leaves out).

    ``on_step(info, terminated)`` is called after every step (e.g. to score the model mid-sequence).
    """
    observation, info = env.reset(seed=seed)
    total = env.unwrapped.num_edits
    act_seconds: list[float] = []
    with tqdm(total=total, desc=f"evaluating {agent.name}", unit="edit", disable=not progress) as bar:
        terminated = False
        while not terminated:
            started = time.perf_counter()
            action = agent.act(observation, info)
            act_seconds.append(time.perf_counter() - started)
            observation, _, terminated, _, info = env.step(action)
            if on_step is not None:
                on_step(info, terminated)
            bar.set_postfix(ES=f"{info['edit_success']:.2f}", LS=f"{info['locality']:.2f}")
            bar.update()
    return {**info["episode_metrics"], "agent_seconds_per_edit": sum(act_seconds) / len(act_seconds)}
