"""ROME, MEMIT and AlphaEdit as zoo agents that act through the environment's low-rank update path.

Per edit (:meth:`LocateAgent.act`): the target hidden state ``z`` at the last subject token of the
last edited block is optimised (:func:`~.values.optimise_value`); then, from the lowest edited
block up, each block's MLP output projection gets the update that moves that hidden state toward
``z`` by its share (the residual ``z - h`` divided by the blocks left, ``h`` read with the lower
blocks' updates already added), solved in closed form (:mod:`.solve`) from the block's key at the
subject. The updates are returned as the action's ``(U, V)`` factors: the environment applies them,
caps them and scores them as it does every agent's.

Hyperparameters come from ``hyperparams/locate.yml`` (the family matching the model), and any of them
can be passed to the constructor (``--agent-kwargs``). The key statistics (:mod:`.stats`) are computed
once from the unedited model and cached.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
import yaml

from hiedit_env.checks import check_int, check_range
from hiedit_env.models import MLP_OUT_PRESETS

from ..common.base import Agent
from .solve import (
    alphaedit_absorb,
    alphaedit_directions,
    factors,
    memit_directions,
    memit_factor,
    null_space_basis,
    null_space_inverse,
)
from .stats import key_second_moments
from .values import EditInputs, edit_inputs, generate_prefixes, keys_and_hidden, optimise_value

PRESETS_FILE = Path(__file__).resolve().parents[1] / "hyperparams" / "locate.yml"
# Every block's MLP output projection, in any of the preset architectures: the candidates these agents
# need (they choose their blocks among them; the environment's default candidates are the middle 60%).
MLP_OUT_MODULES = r".*\.\d+\.mlp\.(down_proj|c_proj|fc_out|dense_4h_to_h)"
HYPERPARAMETERS = (
    "layers",
    "prefixes",
    "value_steps",
    "value_lr",
    "kl_weight",
    "weight_decay",
    "clamp",
    "mom2_weight",
    "null_space_fraction",
    "l2",
    "stats_source",
    "stats_samples",
    "stats_length",
    "stats_seed",
    "stats_dir",
)


def preset(config: Any, method: str, path: Path = PRESETS_FILE) -> dict[str, Any]:
    """The hyperparameters of ``method`` for a model with this ``config``: the file's defaults updated
    by the matching family (``layers`` is ``None`` when no family matches)."""
    table = yaml.safe_load(path.read_text())
    values = dict(table["defaults"])
    values["layers"] = None
    for family in table["families"].values():
        if all(getattr(config, key, None) == value for key, value in family["match"].items()):
            values.update({k: v for k, v in family.items() if k not in ("match", "layers")})
            values["layers"] = family["layers"][method]
            break
    return values


class LocateAgent(Agent):
    """The locate-then-edit family's shared procedure; subclasses give the per-block solve.

    ``layers`` (block indices, ascending), the value optimisation (``value_steps``, ``value_lr``,
    ``kl_weight``, ``weight_decay``, ``clamp``, ``prefixes``), the solve (``mom2_weight``,
    ``null_space_fraction``, ``l2``) and the key statistics (``stats_source``, ``stats_samples``,
    ``stats_length``, ``stats_seed``, ``stats_dir``) default to the preset of the model's family;
    ``None`` keeps the preset's value.
    """

    update_mode = "low_rank"
    method: ClassVar[str] = "memit"
    uses_statistics: ClassVar[bool] = True

    def __init__(self, env: gym.Env, **hyperparameters: Any) -> None:
        super().__init__(env)
        unknown = sorted(set(hyperparameters) - set(HYPERPARAMETERS))
        if unknown:
            raise ValueError(
                f"unknown hyperparameters {unknown} for {self.name!r}; choose from {list(HYPERPARAMETERS)}"
            )
        model = self.env.model
        hp = {
            **preset(model.config, self.method),
            "stats_dir": None,
            **{k: v for k, v in hyperparameters.items() if v is not None},
        }
        self.hparams = hp
        self.blocks = self._check(hp)
        pattern = MLP_OUT_PRESETS[model.config.model_type]
        names = [pattern.format(i=layer) for layer in self.blocks]
        missing = [name for name in names if name not in self.env.candidate_modules]
        if missing:
            raise ValueError(
                f"{self.name} edits {missing}, which are not candidate modules of this environment; "
                f"make it with modules={MLP_OUT_MODULES!r} (what the agent's env_requirements ask for)"
            )
        self.indices = [self.env.candidate_modules.index(name) for name in names]
        self.names = names
        self.modules = [model.get_submodule(name) for name in names]
        # The decoder block of the last edited module, whose output holds the value.
        self.block = model.get_submodule(pattern.split(".mlp.")[0].format(i=self.blocks[-1]))
        with self.env.unedited():
            self.prefixes = generate_prefixes(model, self.env.tokenizer, hp["prefixes"], hp["stats_seed"])
            moments = (
                key_second_moments(
                    model,
                    self.env.tokenizer,
                    self.env.shared.name,
                    names,
                    hp["stats_source"],
                    hp["stats_samples"],
                    hp["stats_length"],
                    hp["stats_seed"],
                    hp["stats_dir"],
                )
                if self.uses_statistics
                else {}
            )
        self.prepare([moments[name] for name in names] if moments else [])
        self.last_value: dict[str, float] = {}
        # Per edited block, the share of its residual its update realises at the edit's key (k^T x).
        self.last_gains: list[float] = []

    def _check(self, hp: dict[str, Any]) -> list[int]:
        model_type = self.env.model.config.model_type
        if model_type not in MLP_OUT_PRESETS:
            raise ValueError(f"{self.name} knows no MLP output projection for architecture {model_type!r}")
        layers = hp["layers"]
        if layers is None:
            raise ValueError(f"no {self.name} preset in {PRESETS_FILE.name} matches this model; pass layers=[...]")
        n_blocks = self.env.model.config.num_hidden_layers
        if (
            not isinstance(layers, list)
            or not layers
            or any(isinstance(x, bool) or not isinstance(x, int) for x in layers)
            or sorted(set(layers)) != layers
        ):
            raise ValueError(f"layers must be a non-empty ascending list of distinct block indices, got {layers!r}")
        if not 0 <= layers[0] or layers[-1] > n_blocks - 2:
            raise ValueError(
                f"layers must be blocks in [0, {n_blocks - 2}] (the value is read at a block's output, "
                f"and the last block's is the model's final norm's input), got {layers}"
            )
        check_int("prefixes", hp["prefixes"], 0)
        check_int("value_steps", hp["value_steps"], 0)
        check_range("value_lr", hp["value_lr"], 0, None, low_open=True)
        check_range("kl_weight", hp["kl_weight"], 0, None)
        check_range("weight_decay", hp["weight_decay"], 0, None)
        check_range("clamp", hp["clamp"], 0, None, low_open=True)
        check_range("mom2_weight", hp["mom2_weight"], 0, None, low_open=True)
        check_range("null_space_fraction", hp["null_space_fraction"], 0, 1, low_open=True)
        check_range("l2", hp["l2"], 0, None, low_open=True)
        return layers

    @classmethod
    def env_requirements(cls, config: dict[str, Any]) -> dict[str, Any]:
        """Low-rank updates, with every block's MLP output projection a candidate (the agent edits its
        preset's blocks among them; the environment's default candidates start at 20% of the depth)."""
        return {**super().env_requirements(config), "modules": MLP_OUT_MODULES}

    def prepare(self, moments: list[torch.Tensor]) -> None:
        """Precompute what the per-block solve needs from each edited module's ``C``."""

    def directions(self, block: int, keys: torch.Tensor) -> torch.Tensor:
        """``X`` [d_in, n] of the ``block``-th edited module's update ``dW = R X^T`` for keys [d_in, n]."""
        raise NotImplementedError

    def act(self, observation: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
        env = self.env
        record = env.current_record
        if record is None:
            raise gym.error.ResetNeeded(f"{self.name} acts on the current edit: reset the environment first")
        self.on_edit(env.edit_index)
        env.candidate_weights()  # swaps this environment's weights into the shared model
        inputs = edit_inputs(env.tokenizer, record.prompt, record.subject, record.target_new, self.prefixes)
        return self.action(self.solve(self.value(inputs), inputs))

    def value(self, inputs: EditInputs) -> torch.Tensor:
        """The target hidden state ``z`` of the edit (:func:`~.values.optimise_value`); its report goes to ``last_value``."""
        hp = self.hparams
        target, self.last_value = optimise_value(
            self.env.model,
            self.modules[-1],
            self.blocks[-1],
            inputs,
            int(self.env.tokenizer.pad_token_id),
            hp["value_steps"],
            hp["value_lr"],
            hp["kl_weight"],
            hp["weight_decay"],
            hp["clamp"],
        )
        return target

    def action(self, updates: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, Any]:
        """The environment's action for the edited modules' ``updates`` (in ``layers`` order)."""
        full: list[Any] = [None] * self.num_candidates
        for j, update in enumerate(updates):
            full[self.indices[j]] = update
        layers = np.zeros(self.num_candidates, np.float32)
        layers[self.indices] = 1.0
        return {"layers": layers, "update": full}

    def solve(
        self, target: torch.Tensor, inputs: EditInputs, absorb: bool = True
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each edited module's update ``(U, V)`` moving block ``layers[-1]``'s output at the subject toward
        ``target``, from the lowest edited block up (see the module docstring); ``absorb=False`` leaves
        the keys of earlier edits as they are (AlphaEdit keeps this edit's keys otherwise)."""
        env = self.env
        pad = int(env.tokenizer.pad_token_id)
        dtype = self.modules[0].weight.dtype
        pending: list[tuple[torch.nn.Module, tuple[torch.Tensor, torch.Tensor]]] = []
        self.last_gains = []
        for j, module in enumerate(self.modules):
            (key,), hidden = keys_and_hidden(env.model, [module], pending, self.block, inputs, pad)
            keys = key[:, None].double()
            residual = ((target - hidden) / (len(self.modules) - j))[:, None].double()
            directions = self.directions(j, keys)
            self.last_gains.append(float(torch.diagonal(keys.T @ directions).mean()))
            if absorb:
                self.edited_keys(j, keys)
            pending.append((module, factors(residual, directions, dtype)))
        return [update for _, update in pending]

    def on_edit(self, edit_index: int) -> None:
        """Called before each edit with its index in the episode (0: a new sequence has started)."""

    def edited_keys(self, block: int, keys: torch.Tensor) -> None:
        """The keys [d_in, n] the ``block``-th edited module was just updated for."""

    def config(self) -> dict[str, Any]:
        return dict(self.hparams)


class MEMITAgent(LocateAgent):
    """MEMIT (Meng et al., 2023): the residual spread over the edited blocks, each block's update the
    least-squares solve ``X = (mom2_weight * C + K K^T)^{-1} K`` against the preserved keys' ``C``."""

    name = "memit"
    method = "memit"

    def prepare(self, moments: list[torch.Tensor]) -> None:
        device = self.env.model.device
        self.cholesky = [
            memit_factor(self.hparams["mom2_weight"] * c.to(device), name) for c, name in zip(moments, self.names)
        ]

    def directions(self, block: int, keys: torch.Tensor) -> torch.Tensor:
        return memit_directions(self.cholesky[block], keys)


class ROMEAgent(MEMITAgent):
    """ROME (Meng et al., 2022) as MEMIT's one-block case: one MLP output projection, the whole
    residual written there (the same ``C``-weighted solve, with ``mom2_weight``)."""

    name = "rome"
    method = "rome"

    def _check(self, hp: dict[str, Any]) -> list[int]:
        layers = super()._check(hp)
        if len(layers) != 1:
            raise ValueError(f"rome edits one block; got layers={layers} (memit spreads an edit over several)")
        return layers


class AlphaEditAgent(LocateAgent):
    """AlphaEdit (Fang et al., ICLR 2025): MEMIT's values and keys, each block's update projected onto
    the null space of the preserved keys (``P`` from ``C``'s smallest-eigenvalue eigenvectors, a
    ``null_space_fraction`` of them) and solved with the keys of the sequence's earlier edits:
    ``X = (P (K K^T + K_p K_p^T) + l2 I)^{-1} P K``. The earlier keys are kept across the steps of a
    sequence (as the inverse of their projected Gram matrix plus ``l2 I``, :mod:`.solve`) and cleared
    when a new one starts (the environment is at edit 0)."""

    name = "alphaedit"
    method = "alphaedit"

    def prepare(self, moments: list[torch.Tensor]) -> None:
        device = self.env.model.device
        self.bases = [null_space_basis(c, self.hparams["null_space_fraction"]).to(device) for c in moments]
        self.reset_keys()

    def reset_keys(self) -> None:
        """Forget the earlier edits' keys (a new sequence starts from the unedited model)."""
        self.inverses = [null_space_inverse(b, self.hparams["l2"]) for b in self.bases]
        self.past_edits = 0  # edits whose keys the inverses hold
        self._last_edit = -1

    def on_edit(self, edit_index: int) -> None:
        if edit_index <= self._last_edit or edit_index == 0:
            self.reset_keys()
        self._last_edit = edit_index

    def episode_state(self) -> dict[str, Any]:
        return {
            "inverses": [m.clone() for m in self.inverses],
            "past_edits": self.past_edits,
            "last_edit": self._last_edit,
        }

    def load_episode_state(self, state: dict[str, Any]) -> None:
        device = self.env.model.device
        self.inverses = [m.to(device) for m in state["inverses"]]
        self.past_edits, self._last_edit = int(state["past_edits"]), int(state["last_edit"])

    def directions(self, block: int, keys: torch.Tensor) -> torch.Tensor:
        return alphaedit_directions(self.bases[block], self.inverses[block], keys)

    def edited_keys(self, block: int, keys: torch.Tensor) -> None:
        self.inverses[block] = alphaedit_absorb(self.bases[block], self.inverses[block], keys)
        if block == len(self.blocks) - 1:
            self.past_edits += 1
