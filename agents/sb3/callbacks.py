"""SB3 callbacks of the agents: the environment's reward terms and episode metrics into TensorBoard, and
saving a run's progress. ``RewardTermsCallback`` also works in RL Baselines3 Zoo's own training
(``--hyperparams callback:"'hiedit_agents.sb3.callbacks.RewardTermsCallback'"``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from stable_baselines3.common.callbacks import BaseCallback

from hiedit_env.env import REWARD_TERMS
from hiedit_env.score import EPISODE_SUMMARY

if TYPE_CHECKING:
    from .agent import SB3Agent


class RewardTermsCallback(BaseCallback):
    """Logs every reward term of :class:`~hiedit_env.HiEditEnv` (mean over the logging interval,
    under ``edit/``) and the end-of-sequence evaluation of each finished episode (under ``episode/``)."""

    def _on_step(self) -> bool:
        for info in self.locals["infos"]:
            for term in REWARD_TERMS:
                if term in info:
                    self.logger.record_mean(f"edit/{term}", info[term])
            if "episode_metrics" in info:
                for key in EPISODE_SUMMARY:
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
