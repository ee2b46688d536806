"""The sweep spec: one YAML file that names models, data sets, agents, seeds and budgets.

    name: smoke
    models: [test-tiny-gpt2]
    datasets:
      - name: default
        train: {source: default, split: train}      # what the agents train (and are tuned) on
        evaluate: {source: default, split: test}    # what they are scored on
    agents:
      - {name: all, agent: all, agent-kwargs: {step: 0.5}}
      - {name: rledit-bounded, agent: rledit, acting: {max_size_ratio: 3}}
      - {name: tuned-all, include: best.yaml}       # agent and agent-kwargs from `hiedit tune`
    training: {seeds: [0, 100], steps: 300, num_edits: 20}   # an agent entry's `steps` overrides steps
    evaluation: {seeds: [0, 1, 2], num_edits: [100, 1000], curve_points: 4}
    threads: 1
    compare: [[rledit-bounded, all]]               # pairs the report gives P(improvement) for

File names are relative to the spec's folder; ``${VAR}`` and ``${VAR:-default}`` expand from the
environment (``${HIEDIT_DATA_DIR:-../../../shared/data}/zsre/zsre_mend_1k.json``), in data sources and in
text values of ``agent-kwargs``, where a value starting with ``./``, ``../`` or ``~`` is such a file name. The whole file is
checked before anything runs, and every problem is reported at once with its key path.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..registry import agent_class

SPLITS = ("train", "test", "all")
_VAR = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


class SpecError(ValueError):
    """A spec with one or more problems; the message lists each as ``key.path: problem``."""


@dataclass(frozen=True)
class DataSource:
    """Where edits come from: a file (absolute path), ``default`` or a hub id, and its split."""

    source: str
    split: str


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    train: DataSource
    evaluate: DataSource


@dataclass(frozen=True)
class AgentEntry:
    """One agent configuration; several entries may use one agent with different options."""

    name: str
    agent: str
    agent_kwargs: dict[str, Any] = field(default_factory=dict)
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    acting: dict[str, Any] = field(default_factory=dict)
    steps: int | None = None  # training edits; None: the agent's own default

    @property
    def trains(self) -> bool:
        """Whether the agent learns (one training, or tuning of a heuristic's step, per seed) or is
        evaluated as built (``hiedit evaluate``'s rule: :meth:`~hiedit_agents.common.base.Agent.learns_before_acting`)."""
        return agent_class(self.agent).learns_before_acting(self.agent_kwargs)


@dataclass(frozen=True)
class SweepSpec:
    name: str
    path: Path
    models: list[str]
    datasets: list[DatasetEntry]
    agents: list[AgentEntry]
    training_seeds: list[int]
    training_num_edits: int
    evaluation_seeds: list[int]
    evaluation_num_edits: list[int]
    curve_points: int = 0
    threads: int = 1
    gpu: float | None = None
    compare: list[tuple[str, str]] = field(default_factory=list)


class _Checker:
    """Collects every problem of a spec with its key path instead of stopping at the first."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.errors: list[str] = []

    def error(self, path: str, message: str) -> None:
        self.errors.append(f"{path}: {message}")

    def mapping(self, value: Any, path: str, allowed: set[str], required: set[str] = frozenset()) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.error(path, f"expected a mapping, got {type(value).__name__}")
            return {}
        for key in sorted(set(value) - allowed, key=str):
            self.error(f"{path}.{key}", f"unknown key (allowed: {', '.join(sorted(allowed))})")
        for key in sorted(required - set(value)):
            self.error(f"{path}.{key}", "missing")
        return value

    def typed(self, value: Any, path: str, kind: type | tuple[type, ...], minimum: float | None = None) -> Any:
        # bool is an int to Python, never to a spec author
        if not isinstance(value, kind) or (
            isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,))
        ):
            names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
            self.error(path, f"expected {names}, got {type(value).__name__} {value!r}")
            return None
        if minimum is not None and value < minimum:
            self.error(path, f"must be >= {minimum}, got {value}")
            return None
        return value

    def int_list(self, value: Any, path: str, minimum: int | None = None) -> list[int]:
        if isinstance(value, int) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list) or not value:
            self.error(path, f"expected a non-empty list of integers, got {value!r}")
            return []
        items = [self.typed(v, f"{path}[{i}]", int, minimum) for i, v in enumerate(value)]
        if len(set(value)) != len(value):
            self.error(path, f"repeated values in {value}")
        return [v for v in items if v is not None]

    def expand(self, text: str) -> str:
        return _VAR.sub(lambda m: os.environ.get(m.group(1)) or (m.group(2) or ""), text)

    def source(self, value: Any, path: str) -> DataSource | None:
        value = self.mapping(value, path, {"source", "split"}, {"source"})
        source, split = value.get("source"), value.get("split", "all")
        if split not in SPLITS:
            self.error(f"{path}.split", f"expected one of {', '.join(SPLITS)}, got {split!r}")
        if self.typed(source, f"{path}.source", str) is None:
            return None
        source = self.expand(source)
        if source == "default":
            return DataSource(source, split)
        resolved = (self.base / source).expanduser()
        if resolved.suffix in (".json", ".jsonl") or resolved.exists() or source.startswith((".", "/", "~")):
            if not resolved.exists():
                self.error(f"{path}.source", f"no such file: {resolved}")
                return None
            return DataSource(str(resolved.resolve()), split)
        return DataSource(source, split)  # a hub id

    def entry_name(self, value: Any, path: str, seen: dict[str, str]) -> str | None:
        name = self.typed(value, path, str)
        if name is None:
            return None
        if not name or "/" in name or name.startswith("."):
            self.error(path, f"entry names are used as folder names: {name!r} is not one")
            return None
        if name in seen:
            self.error(path, f"duplicate entry name {name!r} (also {seen[name]})")
        seen[name] = path
        return name

    def agent(self, value: Any, path: str, seen: dict[str, str], steps: int | None) -> AgentEntry | None:
        keys = {"name", "agent", "agent-kwargs", "env-kwargs", "acting", "include", "steps"}
        value = self.mapping(value, path, keys)
        if "include" in value:
            included = self.include(value["include"], f"{path}.include", keys - {"name", "include"})
            value = {**included, **{k: v for k, v in value.items() if k != "include"}}
        if "agent" not in value:
            self.error(f"{path}.agent", "missing")
            return None
        agent = self.typed(value["agent"], f"{path}.agent", str)
        name = self.entry_name(value.get("name", agent), f"{path}.name", seen)
        kwargs = {
            key: self.typed(value.get(key, {}), f"{path}.{key}", dict)
            for key in ("agent-kwargs", "env-kwargs", "acting")
        }
        if value.get("steps") is not None:
            steps = self.typed(value["steps"], f"{path}.steps", int, 1)
        elif "steps" in value:  # null: the agent's own default (an SB3 agent's n_timesteps)
            steps = None
        if agent is None or name is None or None in kwargs.values():
            return None
        try:
            cls = agent_class(agent)
        except ValueError as err:
            self.error(f"{path}.agent", str(err))
            return None
        try:
            cls.check_overrides(kwargs["acting"])
        except ValueError as err:
            self.error(f"{path}.acting", str(err))
        agent_kwargs = {key: self.path_value(v) for key, v in kwargs["agent-kwargs"].items()}
        return AgentEntry(name, agent, agent_kwargs, kwargs["env-kwargs"], kwargs["acting"], steps)

    def path_value(self, value: Any) -> Any:
        """An agent keyword's value with ``${VAR}`` expanded; a text starting with ``./``, ``../`` or ``~`` is a
        file relative to the spec's folder, made absolute (sweep workers run in folders of their own)."""
        if not isinstance(value, str):
            return value
        value = self.expand(value)
        return str((self.base / value).expanduser().resolve()) if value.startswith(("./", "../", "~")) else value

    def include(self, value: Any, path: str, allowed: set[str]) -> dict[str, Any]:
        if self.typed(value, path, str) is None:
            return {}
        file = self.base / self.expand(value)
        if not file.is_file():
            self.error(path, f"no such file: {file}")
            return {}
        return self.mapping(yaml.safe_load(file.read_text()), f"{path}({file.name})", allowed)


def load_spec(path: str | Path, extra_keys: set[str] = frozenset(), evaluation_required: bool = True) -> SweepSpec:
    """Read and check a sweep spec; raises :class:`SpecError` listing every problem with its key path.

    ``extra_keys`` are top-level keys another reader checks (``hiedit tune``'s ``search``)."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"no such spec file: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise SpecError(f"{path} is not valid YAML: {err}") from err
    check = _Checker(path.parent)
    top = {"name", "models", "datasets", "agents", "training", "evaluation", "threads", "gpu", "compare"}
    required = {"name", "models", "datasets", "agents"} | ({"evaluation"} if evaluation_required else set())
    raw = check.mapping(raw, "spec", top | set(extra_keys), required)

    name = check.typed(raw.get("name"), "name", str) if "name" in raw else None
    models = raw.get("models", [])
    if isinstance(models, str):
        models = [models]
    if not isinstance(models, list) or not models:
        check.error("models", f"expected a non-empty list of model names, got {models!r}")
        models = []
    for i, model in enumerate(models):
        if check.typed(model, f"models[{i}]", str) and model.startswith((".", "/", "~")):
            resolved = (path.parent / model).expanduser()
            if not resolved.exists():
                check.error(f"models[{i}]", f"no such model folder: {resolved}")
            models[i] = str(resolved.resolve())

    datasets: list[DatasetEntry] = []
    seen: dict[str, str] = {}
    for i, item in enumerate(_list(check, raw.get("datasets"), "datasets")):
        p = f"datasets[{i}]"
        item = check.mapping(item, p, {"name", "train", "evaluate"}, {"name", "evaluate"})
        entry_name = check.entry_name(item.get("name"), f"{p}.name", seen) if "name" in item else None
        evaluate = check.source(item.get("evaluate", {}), f"{p}.evaluate") if "evaluate" in item else None
        train = check.source(item["train"], f"{p}.train") if "train" in item else evaluate
        if entry_name and train and evaluate:
            datasets.append(DatasetEntry(entry_name, train, evaluate))

    training = check.mapping(raw.get("training", {}), "training", {"seeds", "steps", "num_edits"})
    training_seeds = check.int_list(training.get("seeds", [0]), "training.seeds")
    steps = check.typed(training["steps"], "training.steps", int, 1) if "steps" in training else None
    train_edits = check.typed(training.get("num_edits", 20), "training.num_edits", int, 1)

    agents: list[AgentEntry] = []
    seen = {}
    for i, item in enumerate(_list(check, raw.get("agents"), "agents")):
        entry = check.agent(item, f"agents[{i}]", seen, steps)
        if entry:
            agents.append(entry)

    evaluation = check.mapping(
        raw.get("evaluation", {}),
        "evaluation",
        {"seeds", "num_edits", "curve_points"},
        {"num_edits"} if evaluation_required else set(),
    )
    eval_seeds = check.int_list(evaluation.get("seeds", [0]), "evaluation.seeds")
    eval_edits = check.int_list(evaluation["num_edits"], "evaluation.num_edits", 1) if "num_edits" in evaluation else []
    curve_points = check.typed(evaluation.get("curve_points", 0), "evaluation.curve_points", int, 0)
    threads = check.typed(raw.get("threads", 1), "threads", int, 1)
    gpu = check.typed(raw["gpu"], "gpu", (int, float), 0) if "gpu" in raw else None

    compare: list[tuple[str, str]] = []
    pairs = raw.get("compare") or []
    if not isinstance(pairs, list):
        check.error("compare", f"expected a list of [agent entry, agent entry] pairs, got {pairs!r}")
        pairs = []
    for i, pair in enumerate(pairs):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            check.error(f"compare[{i}]", f"expected a pair of agent entry names, got {pair!r}")
            continue
        for x in pair:
            if x not in {a.name for a in agents}:
                check.error(f"compare[{i}]", f"{x!r} is not an agent entry name")
        compare.append((pair[0], pair[1]))

    if check.errors:
        raise SpecError(f"invalid spec {path}: " + "; ".join(check.errors))
    return SweepSpec(
        name=name,
        path=path.resolve(),
        models=models,
        datasets=datasets,
        agents=agents,
        training_seeds=training_seeds,
        training_num_edits=train_edits,
        evaluation_seeds=eval_seeds,
        evaluation_num_edits=eval_edits,
        curve_points=curve_points,
        threads=threads,
        gpu=gpu,
        compare=compare,
    )


def _list(check: _Checker, value: Any, path: str) -> list[Any]:
    if not isinstance(value, list) or not value:
        check.error(path, f"expected a non-empty list, got {value!r}")
        return []
    return value
