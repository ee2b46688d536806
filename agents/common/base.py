"""The plug-in contract every agent of the zoo follows.

An agent is built against an environment (it keeps the *unwrapped* one in ``self.env`` so it can read
the current edit's trace), declares which ``update_mode`` it needs, and maps an observation to an
action. Agents that learn override :meth:`Agent.learn`; agents with state override
:meth:`Agent.state_dict` / :meth:`Agent.load_state_dict` and :meth:`Agent.config`. Saving writes a
JSON config and, if there is state, a ``torch.save`` file, sealed by a manifest
(:mod:`~hiedit_agents.common.checkpoint`), so ``Agent.load(dir, env)`` rebuilds the same agent with no code
of ours knowing its class in advance, and refuses a folder that an interrupted save left behind.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import gymnasium as gym

from hiedit_env import HiEditEnv
from hiedit_env.env import REWARD_ARGUMENTS

from .checkpoint import (
    CONFIG_FILE,
    PROGRESS_DIR,
    PROGRESS_FILE,
    STATE_FILE,
    CheckpointError,
    CheckpointWriter,
    content_sha256,
    load_torch,
    read_checkpoint_meta,
    save_swapped,
    verify_checkpoint,
)

UpdateMode = Literal["step_size", "low_rank"]
# Sized for SmolLM2-135M on 2 CPU cores: a HiEdit training edit there (env step + objective
# forward/backward + dense objective forward) took about 3 s with one torch thread on a machine
# shared with other jobs (load ~4), so 300 edits (15 episodes of 20) take about 15 minutes, and the
# learned editors' five validation sequences of 50 edits about 5 more (18 to 20 minutes in all with
# two or three runs sharing the two cores).
DEFAULT_TRAIN_STEPS = 300
# Edits per training episode of ``hiedit train`` (``--num-edits``).
DEFAULT_TRAIN_EDITS = 20


class TrainingInterrupted(KeyboardInterrupt):
    """:meth:`Agent.learn` stopped on SIGINT, after saving what it had when ``saved`` (``hiedit train --resume``
    continues from there)."""

    def __init__(self, step: int, steps: int, saved: bool) -> None:
        super().__init__(f"interrupted after {step} of {steps} training edits")
        self.step, self.steps, self.saved = step, steps, saved


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
    # True when learn() saves into ``checkpoint_dir`` as it goes (every ``checkpoint_every`` edits and on SIGINT)
    # and, with ``resume=True``, continues a loaded checkpoint (``hiedit train --resume``).
    resumable: ClassVar[bool] = False
    # Constructor arguments that change only how a trained agent acts, so :meth:`load` may override them.
    acting_options: ClassVar[tuple[str, ...]] = ()
    # Constructor arguments that learn() chooses on the training split for an agent that acts without
    # training (the heuristics' constant step): `hiedit evaluate` and sweeps tune them unless given.
    tuned_options: ClassVar[tuple[str, ...]] = ()
    # Edits ``hiedit train`` trains on when ``--steps`` is not given.
    default_train_steps: int = DEFAULT_TRAIN_STEPS

    def __init__(self, env: gym.Env) -> None:
        self.env: HiEditEnv = env.unwrapped
        if self.env.update_mode != self.update_mode:
            raise ValueError(
                f"agent {self.name!r} needs an environment with update_mode={self.update_mode!r}, "
                f"got {self.env.update_mode!r}"
            )
        self.num_candidates = len(self.env.candidate_modules)

    @classmethod
    def env_requirements(cls, config: dict[str, Any]) -> dict[str, Any]:
        """``gym.make`` arguments the agent built with ``config`` needs (default: its ``update_mode``)."""
        return {"update_mode": cls.update_mode}

    @classmethod
    def learns_before_acting(cls, kwargs: dict[str, Any]) -> bool:
        """Whether :meth:`learn` runs on the training split before the agent built with ``kwargs`` is
        evaluated: agents that require training, and agents whose :attr:`tuned_options` ``kwargs`` leaves
        open (a given constant step is kept as it is)."""
        return cls.requires_training or bool(set(cls.tuned_options) - set(kwargs))

    @classmethod
    def acting_requirements(cls, config: dict[str, Any]) -> dict[str, Any]:
        """:meth:`env_requirements` less the reward weights, for evaluation: the reward changes neither
        what the agent sees nor the end-of-sequence metrics, and a costly term (``w_sequence`` scores
        every edit so far at every step) would only slow evaluation down."""
        return {k: v for k, v in cls.env_requirements(config).items() if k not in REWARD_ARGUMENTS}

    def act(self, observation: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
        """The action for the environment's current edit."""
        raise NotImplementedError

    def proposed_update(self, observation: dict[str, Any], info: dict[str, Any]) -> Any:
        """The ``update`` part of an action for *every* candidate, for wrappers that choose the
        layers themselves (:mod:`hiedit_env.wrappers`). Default: ``act(...)["update"]``."""
        return self.act(observation, info)["update"]

    def learn(
        self, env: gym.Env, steps: int, *, log_dir: str | Path | None = None, seed: int = 0, progress: bool = True
    ) -> dict[str, Any]:
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

    def trained_config(self) -> dict[str, Any]:
        """:meth:`config` without the :attr:`acting_options`: what training settled."""
        return {k: v for k, v in self.config().items() if k not in self.acting_options}

    def fingerprint(self) -> str:
        """SHA-256 of what training made of the agent, its :meth:`trained_config` and :meth:`state_dict`
        (values, not files: :func:`~hiedit_agents.common.checkpoint.content_sha256`); acting options do
        not change it. An evaluation records it, so that results of two trainings of one setting are told
        apart."""
        return content_sha256({"config": self.trained_config(), "state": self.state_dict()})

    def episode_state(self) -> dict[str, Any]:
        """What the agent carries from one edit to the next within an episode (tensors, numbers, lists and
        dicts), for an evaluation snapshot (:func:`~hiedit_agents.common.evaluation.run_episode`). Empty
        (the default) for an agent whose action depends only on the environment's current state and what
        it learned: every zoo agent but AlphaEdit (the keys of the sequence's earlier edits) and
        ``random_k`` (its random generator)."""
        return {}

    def load_episode_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`episode_state` returned."""

    def save(self, directory: str | Path) -> Path:
        """Write the checkpoint into ``directory``: ``agent.json`` (class and config), ``agent_state.pt``
        for stateful agents, what :meth:`save_files` adds, and last the manifest that seals them
        (:mod:`~hiedit_agents.common.checkpoint`: each file atomically, so an interrupted save never loads)."""
        with CheckpointWriter(directory) as writer:
            self.write_checkpoint(writer)
        return Path(directory)

    def write_checkpoint(self, writer: CheckpointWriter) -> None:
        """The files of :meth:`save` (the manifest aside) through ``writer``."""
        cls = type(self)
        meta = {
            "agent": self.name,
            "class": f"{cls.__module__}:{cls.__qualname__}",
            "config": self.config(),
            "candidate_modules": list(self.env.candidate_modules),
        }
        writer.write_json(CONFIG_FILE, meta)
        state = self.state_dict()
        if state:
            writer.write_torch(STATE_FILE, state)
        self.save_files(writer)

    def save_progress(self, out: str | Path, extras: dict[str, Any] | None = None) -> Path:
        """Save the agent as it is now, with ``extras`` (what else training carries, as ``training_state.pt``),
        into ``out/training_state``, which holds a complete checkpoint at every moment
        (:func:`~hiedit_agents.common.checkpoint.save_swapped`): what ``hiedit train --resume`` continues from."""

        def write(writer: CheckpointWriter) -> None:
            self.write_checkpoint(writer)
            if extras is not None:
                writer.write_torch(PROGRESS_FILE, extras)

        return save_swapped(Path(out) / PROGRESS_DIR, write)

    def save_files(self, writer: CheckpointWriter) -> None:
        """Write files of the checkpoint beyond ``agent.json`` and ``agent_state.pt`` (e.g. SB3's model)
        through ``writer``; they are sealed in the manifest with the rest. Default: none."""

    def load_files(self, directory: Path, files: dict[str, Any]) -> None:
        """Read back what :meth:`save_files` wrote; ``files`` is the verified manifest's table. Default: nothing."""

    @classmethod
    def upgrade_config(cls, config: dict[str, Any]) -> dict[str, Any]:
        """``config`` as :meth:`config` saved it in an earlier version, in today's option names (an agent
        that renames an option maps the old name here, so its earlier checkpoints still load). Default: as it is."""
        return config

    @classmethod
    def saved_meta(cls, directory: str | Path, option: str = "checkpoint") -> dict[str, Any]:
        """The ``agent.json`` of the checkpoint in ``directory`` (which ``option`` names in errors), its
        configuration upgraded (:meth:`upgrade_config`); refused unless a ``cls`` agent saved it. The class
        is matched by its name and the agent's, so a checkpoint outlives a move of the class between modules."""
        meta = read_checkpoint_meta(Path(directory))
        moved = meta["agent"] == cls.name and meta["class"].rpartition(":")[2] == cls.__qualname__
        if meta["class"] != f"{cls.__module__}:{cls.__qualname__}" and not moved:
            raise CheckpointError(f"{option} {str(directory)!r} holds a {meta['class']} agent, not {cls.name!r}")
        return {**meta, "config": cls.upgrade_config(dict(meta["config"]))}

    @classmethod
    def check_overrides(cls, overrides: dict[str, Any]) -> None:
        """Raise unless every key of ``overrides`` is one of :attr:`acting_options`."""
        fixed = sorted(set(overrides) - set(cls.acting_options))
        if fixed:
            raise ValueError(
                f"a checkpoint of {cls.name!r} fixes {fixed}; only its acting options "
                f"{list(cls.acting_options)} can be changed when loading it"
            )

    @classmethod
    def load(cls, directory: str | Path, env: gym.Env, **overrides: Any) -> Agent:
        """Rebuild an agent saved by :meth:`save` against ``env`` (which must have the same candidates);
        ``overrides`` replace saved values of :attr:`acting_options` (the rest is the checkpoint's).
        The checkpoint is verified against its manifest first; an agent that needs training refuses
        one without its state."""
        directory = Path(directory)
        cls.check_overrides(overrides)
        manifest = verify_checkpoint(directory)
        meta = read_checkpoint_meta(directory)
        if meta["candidate_modules"] != list(env.unwrapped.candidate_modules):
            raise ValueError(
                f"checkpoint {str(directory)!r} was trained on modules {meta['candidate_modules']}, "
                f"the environment edits {env.unwrapped.candidate_modules}"
            )
        agent = build_agent(cls, env, {**cls.upgrade_config(dict(meta["config"])), **overrides})
        if STATE_FILE in manifest["files"]:
            state_file = directory / STATE_FILE
            state = load_torch(state_file, agent.env.model.device)
            try:
                agent.load_state_dict(state)
            except (KeyError, RuntimeError, TypeError) as err:
                reason = " ".join(str(err).split())[:300]
                raise CheckpointError(
                    f"{str(state_file)!r} does not fit a {cls.name!r} agent built from {CONFIG_FILE}: {reason}"
                ) from None
        elif agent.state_dict() and cls.requires_training:
            raise CheckpointError(
                f"checkpoint {str(directory)!r} has no {STATE_FILE}: a {cls.name!r} agent must not act untrained"
            )
        agent.load_files(directory, manifest["files"])
        return agent


def build_agent(cls: type[Agent], env: gym.Env, kwargs: dict[str, Any]) -> Agent:
    """``cls(env, **kwargs)`` with an unknown keyword named in one ``ValueError``."""
    try:
        return cls(env, **kwargs)
    except TypeError as err:  # an unknown --agent-kwargs key: one line, not a traceback
        raise ValueError(f"bad arguments for agent {cls.name!r}: {err}") from err
