"""Expanding a spec into cells: one training per (model, dataset, agent, training seed), each checkpoint
evaluated on every (evaluation seed, num_edits); an agent that does not learn is one cell per
(model, dataset, agent), evaluated only. Entries that differ only in acting options (RLEdit bounded and
unbounded) share one cell: one training, each variant evaluated from its checkpoint."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from .spec import AgentEntry, SweepSpec

TRAINING_SETTINGS = (
    "model",
    "train_source",
    "train_split",
    "agent",
    "agent_kwargs",
    "env_kwargs",
    "training_seed",
    "training_steps",
    "training_num_edits",
    "threads",
)


def training_key(config: dict[str, Any]) -> dict[str, Any]:
    """Everything a training run depends on, from a cell's config (``Cell.as_config``, or a ``cell.json``
    of any version): two cells with the same key, in any sweep and evaluated on any sequences, train the
    same checkpoint, the seeds making it so."""
    return json.loads(json.dumps({k: config.get(k) for k in TRAINING_SETTINGS}))


@dataclass(frozen=True)
class Cell:
    """One Ray Tune trial: an optional training and the evaluations of its result.

    Everything a worker needs travels in the cell (absolute paths, plain JSON values), so a worker on
    another machine of a cluster needs the same files at the same paths and nothing from the driver.
    """

    id: str
    spec: str
    model: str
    dataset: str
    train_source: str
    train_split: str
    eval_source: str
    eval_split: str
    agent: str
    agent_kwargs: dict[str, Any]
    env_kwargs: dict[str, Any]
    variants: list[tuple[str, dict[str, Any]]]  # (agent entry name, acting options) evaluated
    training_seed: int | None
    training_steps: int | None
    training_num_edits: int
    evaluations: list[tuple[int, int]] = field(default_factory=list)  # (seed, num_edits)
    curve_points: int = 0
    threads: int = 1

    def as_config(self) -> dict[str, Any]:
        """The cell as a JSON-able dict (a Ray Tune ``param_space`` value)."""
        return asdict(self)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Cell:
        return cls(
            **{
                **config,
                "evaluations": [tuple(e) for e in config["evaluations"]],
                "variants": [tuple(v) for v in config["variants"]],
            }
        )


def slug(text: str) -> str:
    """A folder-safe form of a model name, hub id or path (its last component)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text.rstrip("/").rsplit("/", 1)[-1]).strip("-") or "model"


def expand(spec: SweepSpec) -> list[Cell]:
    """Every cell of ``spec``, in the spec's order (models, then data sets, agents, training seeds)."""
    evaluations = [(seed, n) for n in spec.evaluation_num_edits for seed in spec.evaluation_seeds]
    # entries that train the same agent with the same options, in the spec's order
    groups: dict[str, list[AgentEntry]] = {}
    for agent in spec.agents:
        key = (
            json.dumps([agent.agent, agent.agent_kwargs, agent.env_kwargs, agent.steps], sort_keys=True)
            if agent.trains
            else agent.name
        )
        groups.setdefault(key, []).append(agent)
    cells = []
    for model in spec.models:
        for data in spec.datasets:
            for entries in groups.values():
                first = entries[0]
                seeds: list[int | None] = list(spec.training_seeds) if first.trains else [None]
                for seed in seeds:
                    name = "+".join(e.name for e in entries)
                    cell_id = "__".join([slug(model), data.name, name] + ([f"train{seed}"] if seed is not None else []))
                    cells.append(
                        Cell(
                            id=cell_id,
                            spec=spec.name,
                            model=model,
                            dataset=data.name,
                            train_source=data.train.source,
                            train_split=data.train.split,
                            eval_source=data.evaluate.source,
                            eval_split=data.evaluate.split,
                            agent=first.agent,
                            agent_kwargs=first.agent_kwargs,
                            env_kwargs=first.env_kwargs,
                            variants=[(e.name, e.acting) for e in entries],
                            training_seed=seed,
                            training_steps=first.steps,
                            training_num_edits=spec.training_num_edits,
                            evaluations=evaluations,
                            curve_points=spec.curve_points,
                            threads=spec.threads,
                        )
                    )
    ids = [c.id for c in cells]
    if len(set(ids)) != len(ids):  # two models whose names end alike
        raise ValueError(
            f"two cells would share a folder: {sorted({i for i in ids if ids.count(i) > 1})}; "
            "give the models distinct last path components"
        )
    return cells
