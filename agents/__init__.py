"""HiEdit Gym's agent zoo (import name ``hiedit_agents``; the folder is ``agents/``).

Registered agents: ``noop``, ``all``, ``random_k``, ``topk_grad``, ``ft_l`` (heuristics, no training),
``rledit`` and ``hiedit`` (hypernetwork editors trained through the environment's differentiable
objective), ``untrained_editor`` (RLEdit's editor before training), the locate-then-edit editors
``rome``, ``memit`` and ``alphaedit`` (:mod:`hiedit_agents.locate`, closed-form, no training), and the Stable-Baselines3 learners ``ppo``, ``a2c``, ``sac``, ``td3`` and ``maskable_ppo``
(each on one level of the hierarchy through a wrapper of :mod:`hiedit_env.wrappers`). Any
``"package.module:ClassName"`` subclass of :class:`Agent` works wherever a name does.

The package is laid out by concern, as Stable-Baselines3 is: :mod:`~hiedit_agents.common` holds the
contract, checkpoint files, the evaluation loop and what every family shares; each family has its
room (:mod:`~hiedit_agents.learned`, :mod:`~hiedit_agents.locate`, :mod:`~hiedit_agents.sb3`,
:mod:`~hiedit_agents.heuristics`), and :mod:`~hiedit_agents.sweep` runs and reports sweeps.
"""

from .common.base import Agent
from .common.evaluation import run_episode
from .heuristics import AllLayersAgent, FineTuneAgent, NoopAgent, RandomKAgent, TopKGradAgent
from .learned import HiEditAgent, LearnedEditorAgent, RLEditAgent, UntrainedEditorAgent
from .locate import AlphaEditAgent, MEMITAgent, ROMEAgent
from .registry import agent_class, available_agents, make_agent, register_agent
from .sb3 import SB3_AGENTS, SB3Agent

for _cls in (
    NoopAgent,
    AllLayersAgent,
    RandomKAgent,
    TopKGradAgent,
    FineTuneAgent,
    RLEditAgent,
    HiEditAgent,
    UntrainedEditorAgent,
    ROMEAgent,
    MEMITAgent,
    AlphaEditAgent,
    *SB3_AGENTS,
):
    register_agent(_cls.name, _cls)

__all__ = [
    "Agent",
    "AllLayersAgent",
    "AlphaEditAgent",
    "FineTuneAgent",
    "HiEditAgent",
    "LearnedEditorAgent",
    "MEMITAgent",
    "NoopAgent",
    "RLEditAgent",
    "ROMEAgent",
    "RandomKAgent",
    "SB3Agent",
    "TopKGradAgent",
    "UntrainedEditorAgent",
    "agent_class",
    "available_agents",
    "make_agent",
    "register_agent",
    "run_episode",
]
del _cls
