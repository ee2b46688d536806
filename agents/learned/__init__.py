"""Learned editors: HiEdit and RLEdit, a hypernetwork low level trained through the environment's
differentiable objective.

* :mod:`~hiedit_agents.learned.agent`: :class:`~hiedit_agents.learned.agent.LearnedEditorAgent`, what
  HiEdit and RLEdit share (acting, training, checkpoints);
* :mod:`~hiedit_agents.learned.training`: the plain training loop and the state a run carries;
* :mod:`~hiedit_agents.learned.callbacks`: what runs around it: validation, weight averaging,
  TensorBoard, checkpoints;
* :mod:`~hiedit_agents.learned.hypernet`: the hypernetwork editor (the low level);
* :mod:`~hiedit_agents.learned.gate`: HiEdit's layer gate (the high level);
* :mod:`~hiedit_agents.learned.hiedit`, :mod:`~hiedit_agents.learned.rledit`: the two agents.
"""

from .agent import LearnedEditorAgent
from .hiedit import HiEditAgent
from .rledit import RLEditAgent, UntrainedEditorAgent

__all__ = ["HiEditAgent", "LearnedEditorAgent", "RLEditAgent", "UntrainedEditorAgent"]
