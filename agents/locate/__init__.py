"""The locate-then-edit family as zoo agents: ``rome``, ``memit`` and ``alphaedit``.

Modules by concern: :mod:`.stats` (the key second moments ``C`` and their cache), :mod:`.values` (the
target value and the keys of an edit), :mod:`.solve` (MEMIT's solve and AlphaEdit's null-space
projection) and :mod:`.agents` (the agents, which act through the environment's low-rank updates).
"""

from .agents import AlphaEditAgent, LocateAgent, MEMITAgent, ROMEAgent

__all__ = ["AlphaEditAgent", "LocateAgent", "MEMITAgent", "ROMEAgent"]
