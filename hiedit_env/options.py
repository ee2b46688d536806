"""Grouped arguments of ``HiEdit-v0``: the reward's weights and the differentiable objective.

``gym.make`` takes each group either as one argument, the dataclass or a mapping of its fields
(``reward=RewardWeights(edit=0.0, sequence=1.0)``, ``objective={"back_depth": 2}``, which JSON and YAML
files can hold), or as its flat keywords (``w_edit=0.0, w_sequence=1.0``, ``back_depth=2``); both
spellings build the same environment. A flat keyword left at ``None`` takes the group's value; giving a
group and one of its flat keywords at once is refused, as there would be two values for one thing.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from .checks import check_int, check_range


@dataclass(frozen=True)
class RewardWeights:
    """Weights of the per-step reward's terms, each a finite number >= 0 (``gym.make`` flat keywords:
    ``w_edit``, ``w_generalization``, ...). The reward is ``edit * ES + generalization * GS + locality *
    LS + sparsity * (1 - chosen / L) + retention * retention - update_norm * update_norm + sequence *
    sequence_gain`` (:class:`~hiedit_env.HiEditEnv`, "Rewards"). The SB3 hyperparameter files train on
    ``sequence`` alone."""

    edit: float = 1.0
    generalization: float = 1.0
    locality: float = 1.0
    sparsity: float = 0.1
    retention: float = 0.0
    update_norm: float = 0.0
    sequence: float = 0.0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"reward weight w_{f.name} must be a finite number >= 0, got {value!r}")
            object.__setattr__(self, f.name, float(value))


@dataclass(frozen=True)
class EditObjective:
    """The differentiable training objective (:meth:`HiEditEnv.objective <hiedit_env.HiEditEnv.objective>`)
    and the window of edits its trace covers (``gym.make`` flat keywords: the same names, ``chunk`` as
    ``objective_chunk``).

    Attributes:
        back_depth: earlier edits whose edit cross-entropy the objective adds to the current one's.
        locality_depth: earlier edits whose unrelated prompts the KL covers besides the current one's;
            ``"back_depth"``: as many as ``back_depth``.
        time_decay: weight ``time_decay**j`` of the edit ``j`` steps back.
        kl_weight: weight of the KL to the unedited model on the unrelated prompts.
        l2_weight: weight of the absolute ``sum ||dW||_F^2`` (on SmolLM2 a relative step of 3e-3 on all 18
            candidates makes it 5.3, against an edit loss of 1 to 3).
        chunk: rows of the objective's batch per forward pass when gradients flow to the updates
            (``None``: all at once); each chunk is recomputed in the backward pass (activation
            checkpointing): a lower peak memory for one more forward, with the same loss and gradients.

    The defaults (``l2_weight`` 0 and ``locality_depth`` 0) won the selection on a 100-edit episode of
    the ZsRE training split against ``l2_weight`` 0.1 or 1.0 and ``locality_depth`` ``back_depth``.
    """

    back_depth: int = 3
    locality_depth: int | Literal["back_depth"] = 0
    time_decay: float = 0.8
    kl_weight: float = 1.0
    l2_weight: float = 0.0
    chunk: int | None = None

    def __post_init__(self) -> None:
        check_int("back_depth", self.back_depth, 0)
        if self.locality_depth != "back_depth":
            check_int("locality_depth", self.locality_depth, 0)
        check_range("time_decay", self.time_decay, 0, 1)
        check_range("kl_weight", self.kl_weight, 0, None)
        check_range("l2_weight", self.l2_weight, 0, None)
        if self.chunk is not None:
            check_int("objective_chunk", self.chunk, 1)

    @property
    def kl_depth(self) -> int:
        """``locality_depth`` as a number."""
        return self.back_depth if self.locality_depth == "back_depth" else int(self.locality_depth)


# The flat gym.make keyword of each field.
REWARD_KEYWORDS = {f.name: f"w_{f.name}" for f in dataclasses.fields(RewardWeights)}
OBJECTIVE_KEYWORDS = {**{f.name: f.name for f in dataclasses.fields(EditObjective)}, "chunk": "objective_chunk"}

Group = TypeVar("Group", RewardWeights, EditObjective)


def grouped(
    cls: type[Group],
    argument: str,
    value: Group | Mapping[str, Any] | None,
    keywords: dict[str, str],
    flat: dict[str, Any],
) -> Group:
    """The group ``cls`` from ``gym.make``'s ``argument`` (an instance or a mapping of its fields) or from
    its flat keywords ``flat`` (flat name -> value, ``None`` for not given), refused when both are given."""
    given = {field: flat[name] for field, name in keywords.items() if flat[name] is not None}
    if value is None:
        return cls(**given)
    if given:
        names = ", ".join(keywords[field] for field in given)
        raise ValueError(f"{argument}= and {names} both set {argument}: pass one of them")
    if isinstance(value, cls):
        return value
    if not isinstance(value, Mapping):
        raise ValueError(
            f"{argument} must be {cls.__name__}(...) or a mapping of its fields, got {type(value).__name__}"
        )
    unknown = sorted(set(value) - set(keywords))
    if unknown:
        raise ValueError(f"{argument} has unknown field(s) {unknown}; {cls.__name__} has {list(keywords)}")
    return cls(**value)
