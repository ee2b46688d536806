"""The HiEdit environment: lifelong knowledge editing of a causal LM, one edit per step."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from .action import parse_action
from .checks import check_int, check_k, check_range
from .delta import Delta, apply_delta, weight_deltas
from .models import SharedModel, candidate_modules, load_shared_model, module_dims, weight_as_linear
from .objective import ObjectiveTerms, Update, edit_objective
from .options import OBJECTIVE_KEYWORDS, REWARD_KEYWORDS, EditObjective, RewardWeights, grouped
from .records import DEFAULT_DATASET, EditRecord, EditSet, load_edits
from .score import CORE_METRICS, PROTOCOLS, agreement, generation_exact_match, score_pairs
from .tokens import MAX_ANSWER_TOKENS, MAX_PROMPT_TOKENS, EncodedRecord, Pair, encode_record, subject_last_token
from .trace import EditTrace, trace_edit, trace_edit_and_objective, trace_objective

LAYER_FEATURES = ("key_norm", "grad_norm", "weight_grad_norm", "depth", "changed", "chosen_share")
REWARD_TERMS = ("edit_success", "generalization", "locality", "sparsity", "retention", "update_norm", "sequence_gain")
# The gym.make arguments that set the reward's weights, which change neither the observations nor the
# end-of-sequence metrics.
REWARD_ARGUMENTS = ("reward", *REWARD_KEYWORDS.values())
_BASE = object()  # owner token meaning "the unedited weights are swapped in"
# Unrelated prompts whose unedited log-probs one pass of the unedited weights scores (the objective's KL).
REFERENCE_CHUNK = 16


class HiEditEnv(gym.Env):
    """
    ## Description
    Lifelong knowledge editing as a hierarchical decision problem (HiEdit, 2026; RLEdit, 2025). An
    episode is a sequence of ``num_edits`` fact edits ("The mother tongue of Danielle Darrieux is"
    -> "English") applied one after another to a causal language model. For each edit the agent
    picks which candidate modules to change (high level) and the update itself (low level). Edits
    accumulate: edit ``t`` acts on the model that edits ``0..t-1`` produced.

    ## Action Space
    ``Dict(layers, update)`` with ``L = len(candidate_modules)``:

    * ``layers``: ``Box(0, 1, (L,), float32)``, a 0/1 mask (value > 0.5 is chosen) or, with
      ``layer_budget=k``, scores of which the top ``k`` are chosen. Values are clipped to [0, 1].
    * ``update``, ``update_mode="step_size"`` (default): ``Box(-1, 1, (L,), float32)``. Module ``i``
      moves along its own normalised edit gradient by a relative step ``eta_i``, mapped
      log-linearly from [-1, 1] onto ``eta_range`` (0 -> geometric middle; values are clipped):
      ``dW = -eta_i * ||W0||_F * G / ||G||_F`` with ``G = delta.T @ k`` from the trace.
    * ``update``, ``update_mode="low_rank"``: ``Tuple`` of ``L`` ``Dict(u: Box(r, d_out), v: Box(r, d_in))``,
      ``dW = U.T @ V``. Any rank ``r`` and torch tensors are accepted as they are; ``None`` for
      modules not chosen.

    Every delta is capped at ``max_update_ratio * ||W0||_F`` (documented clip). Wrong shapes, NaN and
    inf raise :class:`~hiedit_env.action.ActionError` before anything is applied.

    ## Observation Space
    ``Dict`` of float32 ``Box`` es (fixed shapes, ready for SB3's ``MultiInputPolicy``):

    * ``instance`` ``(2 * d_model,)``: hidden state at ``instance_layer`` of the prompt's last token and
      of the sequence's last token, each scaled to unit RMS;
    * ``layers`` ``(L, 6)``: per candidate, from the edit's trace and the episode so far: log10 of the
      mean key norm, of the mean output-gradient norm and of ``||G||_F`` (each divided by 10),
      depth in [0, 1], how much it was changed so far (``sum_t ||dW_t|| / ||W0||``, an upper bound of
      ``||W - W0|| / ||W0||`` that costs nothing to keep; with float16/bfloat16 weights ``dW_t`` is the
      change the weights really took, measured after rounding, which for small steps is less than the
      one asked for or none), share of past edits that chose it;
    * ``progress`` ``(2,)``: ``t / num_edits`` and the running edit success of past steps.

    The full per-token tensors live in :attr:`edit_trace` (an :class:`~hiedit_env.trace.EditTrace`);
    :meth:`objective_trace` gives the same two tensors for the whole differentiable objective.

    ## Rewards
    ``w_edit * ES + w_generalization * GS + w_locality * LS + w_sparsity * (1 - chosen / L)
    + w_retention * retention - w_update_norm * update_norm + w_sequence * sequence_gain``, reported
    in ``info`` each step under the names ``edit_success``, ``generalization``, ``locality``,
    ``sparsity``, ``retention``, ``update_norm``, ``sequence_gain``. ES/GS: teacher-forced token
    accuracy of the new answer on the edit prompt / its paraphrase after the update; LS: agreement
    with the unedited model's argmax on the unrelated prompt (computed once per record at reset);
    retention: ES of the previous ``retention_window`` edits on the current model; update_norm: mean
    ``||dW|| / (max_update_ratio ||W0||)``. These terms are in [0, 1]. ``info["applied_ratio"]``: mean
    over the changed modules of the change the weights took over the one requested, below 1 when
    float16/bfloat16 weights round a step away (a warning says so the first time it falls under 0.5);
    1.0 with float32 weights, which are not measured.

    ``sequence_gain`` (off by default: it scores every edit so far, 3(t+1) pairs at edit ``t``) is
    potential-based: with ``S_t`` the sum over the edits made so far of mean(ES, GS, LS), each scored
    on the current model, it is ``S_{t+1} - S_t``, in [-t, 1]. It credits each edit with what it
    added and with what it broke in every earlier edit, and the undiscounted return of an episode is
    exactly ``num_edits`` times the end-of-sequence ``mean``: the per-edit terms only pay for the
    current edit, so an agent trained on them never sees that editing low blocks erodes the others.

    ## Starting State
    The base weights, restored bit for bit at every ``reset`` (no reload), and a seeded draw of
    ``num_edits`` records from the chosen ``split`` (or ``options={"records": [indices]}``).

    ## Episode End
    ``terminated`` after the last edit; the final ``info["episode_metrics"]`` holds the evaluation of
    the final model over the whole sequence: ``ES``, ``GS``, ``LS``, ``LS_answer``, ``mean`` (of ES, GS,
    LS), ``ES_gen``, ``GS_gen``, ``ES_first_20pct``, ``ES_at_edit`` (success right after each edit,
    before later ones), ``efficacy`` (CounterFact), ``layers_per_edit``, ``layer_share``,
    ``module_share`` (per candidate, the share of edits that changed it),
    ``candidates``, ``seconds_per_edit``, ``num_edits`` and ``protocols``. There is no
    truncation. ``step`` after the end raises ``gymnasium.error.ResetNeeded``.

    ## Arguments
    ``gym.make("HiEdit-v0", model="smollm2-135m", dataset="default", num_edits=20, ...)``:

    * ``model``: ``"smollm2-135m"`` (embedded, offline), ``"test-tiny-gpt2"``/``"test-tiny-llama"``
      (random, for tests), or any Hugging Face causal LM id or local path (``"gpt2-xl"``).
    * ``dataset``: ``"default"`` (the shipped set), a ZsRE/CounterFact file, directory or hub id.
    * ``num_edits``: edits per episode. ``split``: ``"all"``, ``"train"`` or ``"test"`` (seeded by
      ``split_seed``, ``test_fraction``). ``on_bad_record``: ``"skip"`` (default: drop records with a missing or empty field, each named in a warning and in ``env.unwrapped.edit_set.skipped``; the ZsRE file has two with an empty ``alt``) or ``"error"``.
    * ``max_prompt_tokens`` (96), ``max_answer_tokens`` (24): a longer prompt keeps its last tokens, a
      longer answer its first; each record cut is warned about once and listed by :meth:`data_report`.
    * ``modules``: candidate module names or a regex; default: the architecture's preset.
    * ``update_mode``: ``"step_size"`` or ``"low_rank"``; ``rank``: declared rank of low-rank factors.
    * ``layer_budget``: ``k`` for top-k selection, or ``None`` for a mask.
    * ``eta_range``: (min, max) relative step size, default (4e-4, 4e-2). Calibrated on SmolLM2 with
      ZsRE (20 sequential edits, all 18 candidates): the middle, 4e-3 (action 0), edits about 70% of
      the facts at the step they are made; a tenth of that edits few, ten times that breaks the model.
      ``max_update_ratio``: cap on ``||dW|| / ||W0||`` per module and edit (default 0.25).
    * ``reward``: the reward's weights, a :class:`~hiedit_env.options.RewardWeights` (or a mapping of
      its fields), or flat: ``w_edit``, ``w_generalization``, ``w_locality``, ``w_sparsity``,
      ``w_retention``, ``w_update_norm``, ``w_sequence`` (finite, >= 0). ``retention_window``: the
      edits the retention term scores.
    * ``objective``: the differentiable objective (:meth:`objective`), an
      :class:`~hiedit_env.options.EditObjective` (or a mapping of its fields), or flat: ``back_depth``,
      ``locality_depth``, ``time_decay``, ``kl_weight``, ``l2_weight``, ``objective_chunk``.
      A group and one of its flat keywords at once are refused (:mod:`hiedit_env.options`).
    * ``trace_covers``: what each edit's forward+backward covers. ``"edit"`` (default): the edit alone, the
      floor. ``"objective"``: the objective's whole batch (the edit window and the unrelated prompts);
      :attr:`edit_trace` is then that pass's rows of the edit (the same tensors up to float rounding)
      and :meth:`objective_trace` of the unchanged model costs nothing, which saves an agent that reads
      it every edit (the learned editors) one pass per edit. That pass also runs the model, as just
      edited, on the previous edit's prompt (the window's second row, when ``back_depth`` >= 1), so
      the step takes that edit's ES from it and its scoring pass drops the prompt (the same value up
      to float rounding). Where the model allows it (checked once per model), the objective's prompts
      are packed in one row, each attending to itself only: no padding is computed.
    * ``evaluate_generation``: compute ``ES_gen``/``GS_gen`` at the end (greedy decoding).
    * ``instance_layer``: block whose hidden state encodes the edit (default: the middle one).
    * ``device`` (``"auto"``), ``dtype`` (``"float32"``), ``render_mode`` (``None`` or ``"ansi"``).

    ## Version History
    * v0 (hiedit-gym, unreleased): ``trace`` is renamed ``trace_covers``; the reward's weights and the
      objective's options may be given as groups (``reward=``, ``objective=``, :mod:`hiedit_env.options`);
      ``locality_depth="back_depth"`` replaces ``locality_depth=None``. Episodes are unchanged.
    * v0 (hiedit-gym 0.2.0, 2026-12): ``max_prompt_tokens`` / ``max_answer_tokens`` arguments, records
      they cut reported (:meth:`data_report`); ``reset`` no longer reseeds torch's global generator;
      16-bit steps measured as applied (``info["applied_ratio"]``).
    * v0 (hiedit-gym 0.1.0, 2026-11): the first release.
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 1}

    def __init__(
        self,
        model: str = "smollm2-135m",
        dataset: str = DEFAULT_DATASET,
        num_edits: int = 20,
        split: Literal["all", "train", "test"] = "all",
        test_fraction: float = 0.2,
        split_seed: int = 0,
        on_bad_record: Literal["error", "skip"] = "skip",
        max_prompt_tokens: int = MAX_PROMPT_TOKENS,
        max_answer_tokens: int = MAX_ANSWER_TOKENS,
        modules: Sequence[str] | str | None = None,
        update_mode: Literal["step_size", "low_rank"] = "step_size",
        rank: int = 4,
        layer_budget: int | None = None,
        eta_range: tuple[float, float] = (4e-4, 4e-2),
        max_update_ratio: float = 0.25,
        reward: RewardWeights | Mapping[str, float] | None = None,
        w_edit: float | None = None,
        w_generalization: float | None = None,
        w_locality: float | None = None,
        w_sparsity: float | None = None,
        w_retention: float | None = None,
        w_update_norm: float | None = None,
        w_sequence: float | None = None,
        retention_window: int = 5,
        objective: EditObjective | Mapping[str, Any] | None = None,
        back_depth: int | None = None,
        locality_depth: int | Literal["back_depth"] | None = None,
        time_decay: float | None = None,
        kl_weight: float | None = None,
        l2_weight: float | None = None,
        objective_chunk: int | None = None,
        trace_covers: Literal["edit", "objective"] = "edit",
        evaluate_generation: bool = True,
        instance_layer: int | None = None,
        device: str = "auto",
        dtype: str = "float32",
        render_mode: str | None = None,
    ) -> None:
        self.reward = grouped(
            RewardWeights,
            "reward",
            reward,
            REWARD_KEYWORDS,
            {
                "w_edit": w_edit,
                "w_generalization": w_generalization,
                "w_locality": w_locality,
                "w_sparsity": w_sparsity,
                "w_retention": w_retention,
                "w_update_norm": w_update_norm,
                "w_sequence": w_sequence,
            },
        )
        self.edit_objective = grouped(
            EditObjective,
            "objective",
            objective,
            OBJECTIVE_KEYWORDS,
            {
                "back_depth": back_depth,
                "locality_depth": locality_depth,
                "time_decay": time_decay,
                "kl_weight": kl_weight,
                "l2_weight": l2_weight,
                "objective_chunk": objective_chunk,
            },
        )
        if update_mode not in ("step_size", "low_rank"):
            raise ValueError(f"update_mode must be 'step_size' or 'low_rank', got {update_mode!r}")
        if trace_covers not in ("edit", "objective"):
            raise ValueError(f"trace_covers must be 'edit' or 'objective', got {trace_covers!r}")
        if render_mode not in (None, "ansi"):
            raise ValueError(f"render_mode must be None or 'ansi', got {render_mode!r}")
        lo, hi = _pair(eta_range, "eta_range")
        if not 0 < lo <= hi:
            raise ValueError(f"eta_range must satisfy 0 < min <= max, got {eta_range}")
        check_range("max_update_ratio", max_update_ratio, 0, None, low_open=True)
        check_int("retention_window", retention_window, 1)
        check_int("rank", rank, 1)
        check_int("max_prompt_tokens", max_prompt_tokens, 1)
        check_int("max_answer_tokens", max_answer_tokens, 1)
        self.token_limits = (int(max_prompt_tokens), int(max_answer_tokens))
        self._truncated_records: set[int] = set()  # indices into the data set, warned about once each

        self.shared: SharedModel = load_shared_model(model, dtype=dtype, device=device)
        self.model = self.shared.model
        self.tokenizer = self.shared.tokenizer
        if modules is None:  # the shaped models' published candidates, else the architecture's preset
            modules = self.shared.preset
        self.candidate_modules: list[str] = candidate_modules(
            self.model, modules if modules is None or isinstance(modules, str) else list(modules)
        )
        n = len(self.candidate_modules)
        if layer_budget is not None:
            layer_budget = check_k(layer_budget, n, "layer_budget")

        self.edit_set: EditSet = load_edits(dataset, on_error=on_bad_record)
        self.split = split
        self.records: list[EditRecord] = self.edit_set.split(split, test_fraction, split_seed)
        check_int("num_edits", num_edits, 1)
        if num_edits > len(self.records):
            raise ValueError(
                f"num_edits={num_edits} is larger than the {len(self.records)} records of "
                f"{self.edit_set.source!r} (split {split!r})"
            )

        self.num_edits, self.update_mode, self.rank, self.layer_budget = num_edits, update_mode, rank, layer_budget
        self.eta_range, self.max_update_ratio = (lo, hi), float(max_update_ratio)
        objective_options = self.edit_objective
        self.retention_window, self.back_depth = retention_window, objective_options.back_depth
        self.time_decay, self.locality_depth = float(objective_options.time_decay), objective_options.kl_depth
        self.kl_weight, self.l2_weight = float(objective_options.kl_weight), float(objective_options.l2_weight)
        self.objective_chunk = objective_options.chunk
        self.evaluate_generation, self.render_mode = bool(evaluate_generation), render_mode
        self.trace_covers = trace_covers
        n_layers = self.model.config.num_hidden_layers
        self.instance_layer = n_layers // 2 if instance_layer is None else instance_layer
        if not 0 <= self.instance_layer <= n_layers:
            raise ValueError(f"instance_layer must be in [0, {n_layers}], got {instance_layer}")

        self.shared.register(self.candidate_modules)
        self._modules = list(self.shared.modules(self.candidate_modules).values())
        # 16-bit weights lose small steps to rounding: there each step measures the change really made.
        self._low_precision = self._modules[0].weight.dtype in (torch.float16, torch.bfloat16)
        self._warned_rounding = False
        self._weights = {name: self.shared.base[name].clone() for name in self.candidate_modules}
        # From the stored base, not the live modules: another environment's edits may be swapped in.
        self._base_norms = [float(self.shared.base[name].norm()) for name in self.candidate_modules]
        self._dims = [module_dims(m) for m in self._modules]
        self._depth = np.array([_block_index(name, n_layers) for name in self.candidate_modules], dtype=np.float32)
        self._pad_id = int(self.tokenizer.pad_token_id)

        d_model = self.model.config.hidden_size
        self.observation_space = spaces.Dict(
            {
                "instance": spaces.Box(-np.inf, np.inf, (2 * d_model,), np.float32),
                "layers": spaces.Box(-np.inf, np.inf, (n, len(LAYER_FEATURES)), np.float32),
                "progress": spaces.Box(0.0, 1.0, (2,), np.float32),
            }
        )
        if update_mode == "step_size":
            update_space: spaces.Space = spaces.Box(-1.0, 1.0, (n,), np.float32)
        else:
            update_space = spaces.Tuple(
                [
                    spaces.Dict(
                        {
                            "u": spaces.Box(-np.inf, np.inf, (rank, d_out), np.float32),
                            "v": spaces.Box(-np.inf, np.inf, (rank, d_in), np.float32),
                        }
                    )
                    for d_in, d_out in self._dims
                ]
            )
        self.action_space = spaces.Dict({"layers": spaces.Box(0.0, 1.0, (n,), np.float32), "update": update_space})
        self._episode: list[EncodedRecord] = []
        self._t = 0
        self._trace: EditTrace | None = None
        self._objective_trace: EditTrace | None = None  # of the unchanged model, with trace_covers="objective"
        self._window_accuracy: torch.Tensor | None = None  # that pass's token accuracy of the window's edits
        self._last_render = ""

    # ---------------------------------------------------------------- public accessors
    @property
    def edit_trace(self) -> EditTrace | None:
        """Keys and output gradients of the current edit for every candidate (``None`` once the episode ended)."""
        return self._trace

    @property
    def current_record(self) -> EditRecord | None:
        return self._episode[self._t].record if self._t < len(self._episode) else None

    @property
    def subject_position(self) -> int | None:
        """Row of :attr:`edit_trace` at the current edit's subject's last token, where ROME and MEMIT read
        their keys (:func:`~hiedit_env.tokens.subject_last_token`; the prompt's last token for a record
        without its subject); ``None`` once the episode ended."""
        record = self.current_record
        if record is None:
            return None
        return subject_last_token(self.tokenizer, record.prompt, record.subject, self.token_limits[0])

    @property
    def edit_index(self) -> int:
        return self._t

    def episode_records(self) -> list[EditRecord]:
        return [e.record for e in self._episode]

    def candidate_weights(self) -> list[torch.Tensor]:
        """The current candidate weights in Linear orientation [d_out, d_in] (views, do not modify)."""
        self._activate()
        return [weight_as_linear(m).detach() for m in self._modules]

    def data_report(self) -> dict[str, Any]:
        """What the data source gave (:meth:`EditSet.report`: records kept, skipped with reasons, numbers read
        as text), the split used, and the records the token limits have cut in the episodes so far."""
        return {
            **self.edit_set.report(),
            "split": self.split,
            "split_records": len(self.records),
            "max_prompt_tokens": self.token_limits[0],
            "max_answer_tokens": self.token_limits[1],
            "truncated_records": sorted(self._truncated_records),
        }

    def base_weight_norms(self) -> list[float]:
        return list(self._base_norms)

    def weight_drift(self) -> list[float]:
        """Each candidate's net change since ``reset``, ``||W - W0||_F / ||W0||_F`` (the observation's
        ``changed`` feature adds every update's size; opposite updates cancel here)."""
        self._activate()
        return [
            float((m.weight.detach() - self.shared.base[name]).float().norm()) / norm
            for m, name, norm in zip(self._modules, self.candidate_modules, self._base_norms)
        ]

    def module_dims(self) -> list[tuple[int, int]]:
        """(d_in, d_out) per candidate module."""
        return list(self._dims)

    @contextmanager
    def unedited(self) -> Iterator[None]:
        """Within the block the model runs on the unedited weights (e.g. for statistics of the base
        model, which depend on no edit); this environment's own weights are swapped back after."""
        self.shared.activate(_BASE, {})
        try:
            yield
        finally:
            self._activate()

    # ---------------------------------------------------------------- gymnasium API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)  # the episode's draw uses np_random alone: torch's global random state is the user's
        indices = (options or {}).get("records")
        if indices is None:
            indices = self.np_random.choice(len(self.records), size=self.num_edits, replace=False).tolist()
        elif not indices or any(not 0 <= int(i) < len(self.records) for i in indices):
            raise ValueError(f"options['records'] must be a non-empty list of indices in [0, {len(self.records)})")
        with torch.no_grad():
            for name, weight in self._weights.items():
                weight.copy_(self.shared.base[name])
        self._episode = [encode_record(self.tokenizer, self.records[int(i)], *self.token_limits) for i in indices]
        cut = sorted({e.record.index for e in self._episode if e.truncated} - self._truncated_records)
        if cut:
            self._truncated_records.update(cut)
            warnings.warn(
                f"{self.edit_set.source}: {len(cut)} records cut to max_prompt_tokens={self.token_limits[0]} / "
                f"max_answer_tokens={self.token_limits[1]} (records {cut[:5]}{' ...' if len(cut) > 5 else ''}); "
                "raise the limits to keep them whole",
                stacklevel=2,
            )
        self._t = 0
        self._activate()
        reference = score_pairs(self.model, [e.loc for e in self._episode], self._pad_id)
        self._loc_reference = reference.predictions
        self._loc_log_probs: dict[int, torch.Tensor] = {}
        self._chosen_counts = np.zeros(len(self._modules), dtype=np.float32)
        self._changed = np.zeros(len(self._modules), dtype=np.float32)
        self._history: dict[str, list[float]] = {k: [] for k in (*REWARD_TERMS, "seconds")}
        self._chosen_per_edit: list[list[int]] = []
        self._sequence_total = 0.0
        self._done = False
        self._trace_current()
        return self._observation(), {"edit_index": 0}

    def step(self, action: dict[str, Any]):
        if getattr(self, "_done", True):
            raise gym.error.ResetNeeded("the episode has ended (or never started): call reset() before step()")
        started = time.perf_counter()
        self._activate()
        parsed = parse_action(
            action,
            len(self._modules),
            self.update_mode,
            self._dims,
            self.layer_budget,
            self.eta_range,
            self.model.device,
            self._modules[0].weight.dtype,
        )
        deltas = weight_deltas(parsed, self._trace, self._base_norms, self.max_update_ratio)
        applied = []
        for i, delta in deltas.items():
            requested = float(delta.norm())
            real = apply_delta(self._modules[i], delta, measure=self._low_precision)
            real = requested if real is None else real
            self._changed[i] += real / self._base_norms[i]
            applied.append(real / requested if requested > 0 else 1.0)
        applied_ratio = float(np.mean(applied)) if applied else 1.0
        if applied_ratio < 0.5 and not self._warned_rounding:
            self._warned_rounding = True
            warnings.warn(
                f"the {self.model.dtype} weights took {applied_ratio:.0%} of the requested update at edit "
                f"{self._t}: steps below the weights' precision round away (info['applied_ratio'] each step; "
                "float32 keeps them)",
                stacklevel=2,
            )
        self._chosen_counts[parsed.chosen] += 1

        self._t += 1
        terminated = self._t >= len(self._episode)
        if terminated:
            self._trace = self._objective_trace = self._window_accuracy = None
        else:
            self._trace_current()
        terms = self._step_terms(self._t - 1, parsed.chosen, deltas)
        w = self.reward
        reward = (
            w.edit * terms["edit_success"]
            + w.generalization * terms["generalization"]
            + w.locality * terms["locality"]
            + w.sparsity * terms["sparsity"]
            + w.retention * terms["retention"]
            - w.update_norm * terms["update_norm"]
            + w.sequence * terms["sequence_gain"]
        )
        for key, value in terms.items():
            self._history[key].append(value)
        self._chosen_per_edit.append(list(parsed.chosen))
        self._history["seconds"].append(time.perf_counter() - started)
        info: dict[str, Any] = {
            "edit_index": self._t - 1,
            **terms,
            "applied_ratio": applied_ratio,
            "layers_chosen": list(parsed.chosen),
            "num_layers_chosen": len(parsed.chosen),
        }
        if terminated:
            self._done = True
            info["episode_metrics"] = self.evaluate()
        self._last_render = (
            f"edit {self._t}/{len(self._episode)} layers {parsed.chosen} reward {reward:.3f} "
            + " ".join(f"{k}={v:.2f}" for k, v in terms.items())
        )
        return self._observation(), float(reward), bool(terminated), False, info

    def render(self) -> str | None:
        return self._last_render if self.render_mode == "ansi" else None

    # ---------------------------------------------------------------- mid-episode snapshots
    def episode_state(self) -> dict[str, Any]:
        """The episode so far, for :meth:`restore_episode`: its records, the edits applied, the candidate
        weights that differ from the unedited ones, and the bookkeeping the metrics and observations
        read. Tensors, numbers, lists and dicts only (``torch.load(..., weights_only=True)`` reads it)."""
        if getattr(self, "_done", True):
            raise gym.error.ResetNeeded("episode_state() needs an episode under way: call reset() first")
        self._activate()
        return {
            "records": [e.record.index for e in self._episode],
            "edits": self._t,
            "weights": {
                name: weight.clone()
                for name, weight in self._weights.items()
                if not torch.equal(weight, self.shared.base[name])
            },
            "chosen_counts": self._chosen_counts.tolist(),
            "changed": self._changed.tolist(),
            "history": {k: list(v) for k, v in self._history.items()},
            "chosen_per_edit": [list(c) for c in self._chosen_per_edit],
            "sequence_total": self._sequence_total,
            "loc_log_probs": dict(self._loc_log_probs),
        }

    def restore_episode(self, state: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Continue the episode :meth:`episode_state` recorded: call it right after ``reset`` drew the same
        records (same seed and data), and the episode goes on as the recorded one did, bit for bit on the
        same machine and thread count. Returns the observation of the next edit. Raises ``ValueError``
        when the records differ or the recorded episode has ended."""
        records = [e.record.index for e in self._episode]
        if list(state["records"]) != records:
            raise ValueError("the snapshot's episode is not the one reset() drew (another seed, data or length)")
        edits = int(state["edits"])
        if not 0 < edits < len(self._episode):
            raise ValueError(f"a snapshot continues an episode part-way: it holds {edits} of {len(records)} edits")
        unknown = sorted(set(state["weights"]) - set(self._weights))
        if unknown:
            raise ValueError(f"the snapshot edits modules {unknown}, which are not candidates of this environment")
        with torch.no_grad():
            for name, weight in state["weights"].items():
                self._weights[name].copy_(weight)
        self._t = edits
        self._chosen_counts = np.asarray(state["chosen_counts"], dtype=np.float32)
        self._changed = np.asarray(state["changed"], dtype=np.float32)
        self._history = {k: list(v) for k, v in state["history"].items()}
        self._chosen_per_edit = [list(c) for c in state["chosen_per_edit"]]
        self._sequence_total = float(state["sequence_total"])
        self._loc_log_probs = {int(t): v for t, v in state["loc_log_probs"].items()}
        self._activate()
        self._trace_current()
        return self._observation()

    # ---------------------------------------------------------------- evaluation
    def evaluate(self, upto: int | None = None, generation: bool | None = None) -> dict[str, Any]:
        """Evaluate the current model on the first ``upto`` edits of the episode (default: all applied).

        ``generation`` overrides ``evaluate_generation`` (the greedy-decoding scores cost the most).
        """
        self._activate()
        edits = self._episode[: self._t if upto is None else upto]
        if not edits:
            raise ValueError("nothing to evaluate: no edit has been applied yet")
        n = len(edits)
        has_old = all(e.old is not None for e in edits)
        pairs: list[Pair] = [e.edit for e in edits] + [e.rephrase for e in edits] + [e.loc for e in edits]
        if has_old:
            pairs += [e.old for e in edits]
        scores = score_pairs(self.model, pairs, self._pad_id)
        es, gs, loc_acc = scores.accuracy[:n], scores.accuracy[n : 2 * n], scores.accuracy[2 * n : 3 * n]
        ls = agreement(scores.predictions[2 * n : 3 * n], self._loc_reference[:n])
        metrics: dict[str, Any] = {
            "ES": float(es.mean()),
            "GS": float(gs.mean()),
            "LS": float(ls.mean()),
            "LS_answer": float(loc_acc.mean()),
        }
        metrics["mean"] = sum(metrics[k] for k in CORE_METRICS) / len(CORE_METRICS)
        metrics["ES_first_20pct"] = float(es[: max(1, math.ceil(0.2 * n))].mean())
        if has_old and self.edit_set.format.startswith("counterfact"):
            metrics["efficacy"] = float((scores.nll[:n] < scores.nll[3 * n :]).float().mean())
        if self.evaluate_generation if generation is None else generation:
            gen = generation_exact_match(
                self.model, [e.edit for e in edits] + [e.rephrase for e in edits], self._pad_id
            )
            metrics["ES_gen"], metrics["GS_gen"] = float(gen[:n].mean()), float(gen[n:].mean())
        at_edit = self._history["edit_success"][:n]
        metrics["ES_at_edit"] = float(np.mean(at_edit)) if at_edit else 0.0
        chosen = self._chosen_per_edit[:n]
        metrics["layers_per_edit"] = float(np.mean([len(c) for c in chosen])) if chosen else 0.0
        metrics["candidates"] = len(self._modules)
        metrics["layer_share"] = metrics["layers_per_edit"] / len(self._modules)
        counts = np.zeros(len(self._modules))
        for chosen_at_edit in chosen:
            counts[chosen_at_edit] += 1
        metrics["module_share"] = dict(zip(self.candidate_modules, (counts / n).tolist()))
        metrics["seconds_per_edit"] = float(np.mean(self._history["seconds"])) if self._history["seconds"] else 0.0
        metrics["num_edits"] = n
        metrics["per_edit"] = {"ES": es.tolist(), "GS": gs.tolist(), "LS": ls.tolist()}
        metrics["protocols"] = {k: v for k, v in PROTOCOLS.items() if k in metrics}
        return metrics

    # ---------------------------------------------------------------- differentiable objective
    def objective(
        self,
        updates: Sequence[Update],
        back_depth: int | None = None,
        time_decay: float | None = None,
        paraphrases: bool = False,
    ) -> ObjectiveTerms:
        """Training loss of candidate ``updates`` for the current edit, with gradients to them.

        ``updates`` has one entry per candidate: a dense ``dW`` [d_out, d_in], low-rank factors
        ``(U [r, d_out], V [r, d_in])``, or ``None``. The loss covers the current edit and the last
        ``back_depth`` ones (weights ``time_decay**j``), the mean KL to the unedited model on the
        unrelated prompts of the current and the last ``locality_depth`` edits, and L2 on the updates.
        ``paraphrases``: each edit's cross-entropy is the mean over its prompt and its paraphrase (for
        training only: an editor deployed on a new edit never has its paraphrase).
        The model's weights are not changed.
        """
        if self._trace is None:
            raise gym.error.ResetNeeded("objective() needs a current edit: call reset() first")
        depth = self.back_depth if back_depth is None else back_depth
        edits, locs, references = self._objective_window(depth)
        rephrased = [self._episode[t].rephrase for t in self._window(depth)] if paraphrases else None
        return edit_objective(
            self.model,
            self._modules,
            updates,
            edits,
            locs,
            references,
            self._pad_id,
            self.time_decay if time_decay is None else time_decay,
            self.kl_weight,
            self.l2_weight,
            chunk_rows=self.objective_chunk,
            paraphrases=rephrased,
        )

    def objective_trace(self, updates: Sequence[Update]) -> EditTrace:
        """Keys and output gradients of :meth:`objective`'s loss under ``updates`` (L2 aside), one row
        per token of its prompts: the edit window and the unrelated prompts, whose KL gradient points
        back toward the unedited model's answers. One forward+backward on the objective's batch; none
        with ``trace_covers="objective"`` and no update (every entry ``None``): the edit's pass made it."""
        if self._trace is None:
            raise gym.error.ResetNeeded("objective_trace() needs a current edit: call reset() first")
        if self._objective_trace is not None and len(updates) == len(self._modules) and all(u is None for u in updates):
            return self._objective_trace
        detached = [
            None if u is None else u.detach() if isinstance(u, torch.Tensor) else tuple(f.detach() for f in u)
            for u in updates
        ]  # a trace carries no gradient to the updates
        edits, locs, references = self._objective_window(None)
        return trace_objective(
            self.model,
            self._modules,
            self.candidate_modules,
            detached,
            edits,
            locs,
            references,
            self._pad_id,
            self.time_decay,
            self.kl_weight,
        )

    # ---------------------------------------------------------------- internals
    def _activate(self) -> None:
        self.shared.activate(self, self._weights)

    def _window(self, depth: int) -> list[int]:
        """The current edit and the ``depth`` before it (fewer early in the episode), the current one first."""
        return [self._t - j for j in range(min(depth, self._t) + 1)]

    def _objective_window(self, back_depth: int | None) -> tuple[list[Pair], list[Pair], list[torch.Tensor]]:
        """The objective's prompts for the current edit: edits ``t .. t - back_depth``, the unrelated
        prompts of ``t .. t - locality_depth`` and the unedited model's log-probs on those."""
        edited = self._window(self.back_depth if back_depth is None else back_depth)
        unrelated = self._window(self.locality_depth)
        references = self._reference_log_probs(unrelated)
        self._activate()
        return [self._episode[t].edit for t in edited], [self._episode[t].loc for t in unrelated], references

    def _trace_current(self) -> None:
        """The current edit's trace (and, with ``trace_covers="objective"``, the objective's, same pass)."""
        self._window_accuracy = None
        if self.trace_covers == "edit":
            self._trace = trace_edit(
                self.model,
                self._modules,
                self.candidate_modules,
                self._episode[self._t].edit,
                self._pad_id,
                self.instance_layer,
            )
            return
        edits, locs, references = self._objective_window(None)
        self._trace, self._objective_trace, self._window_accuracy = trace_edit_and_objective(
            self.model,
            self._modules,
            self.candidate_modules,
            edits,
            locs,
            references,
            self._pad_id,
            self.time_decay,
            self.kl_weight,
            self.instance_layer,
        )

    def _reference_log_probs(self, records: list[int]) -> list[torch.Tensor]:
        """The unedited model's log-probs on the unrelated prompts of ``records`` (the objective's window).

        A missing one is scored with the next ``REFERENCE_CHUNK - 1`` prompts in one pass of the
        unedited weights, so the pass's fixed cost is shared by that many edits; references older than
        the window are dropped, so at most ``locality_depth + REFERENCE_CHUNK`` are held, whatever the
        episode's length (each is answer tokens x vocabulary x 4 bytes: about 1 MB on SmolLM2)."""
        missing = [t for t in records if t not in self._loc_log_probs]
        if missing:
            chunk = range(min(missing), min(min(missing) + REFERENCE_CHUNK, len(self._episode)))
            todo = sorted(set(missing) | {t for t in chunk if t not in self._loc_log_probs})
            with self.unedited():
                scored = score_pairs(
                    self.model, [self._episode[t].loc for t in todo], self._pad_id, keep_log_probs=True
                )
            self._loc_log_probs.update(zip(todo, scored.log_probs))
        oldest = self._t - self.locality_depth
        for t in [t for t in self._loc_log_probs if t < oldest]:
            del self._loc_log_probs[t]
        return [self._loc_log_probs[t] for t in records]

    def _step_terms(self, t: int, chosen: list[int], deltas: dict[int, Delta]) -> dict[str, float]:
        """The reward's terms for edit ``t``, just made; the next edit, if any, is already traced."""
        w = self.reward
        window = range(max(0, t - self.retention_window), t) if w.retention > 0 else range(0)
        # One batched pass: edit, paraphrase and unrelated prompt of the scored edits, then the
        # retention window's edit prompts (already among them when the whole sequence is scored).
        # The objective's pass of the next edit has just run the edited model on this edit's prompt
        # (its window's second row): that ES is taken from there instead of scoring the prompt again.
        scored = list(range(t + 1)) if w.sequence > 0 else [t]
        extra = [] if w.sequence > 0 else list(window)
        reused = self._window_accuracy is not None and len(self._window_accuracy) > 1 and w.sequence == 0
        episode = self._episode
        pairs = ([] if reused else [episode[j].edit for j in scored]) + [episode[j].rephrase for j in scored]
        pairs += [episode[j].loc for j in scored] + [episode[j].edit for j in extra]
        scores = score_pairs(self.model, pairs, self._pad_id)
        n, k = len(scored), 0 if reused else len(scored)  # k: the edit rows scored here
        es = self._window_accuracy[1:2] if reused else scores.accuracy[:n]
        gs = scores.accuracy[k : k + n]
        ls = agreement(scores.predictions[k + n : k + 2 * n], [self._loc_reference[j] for j in scored])
        retained = es[list(window)] if w.sequence > 0 else scores.accuracy[k + 2 * n :]
        gain = 0.0
        if w.sequence > 0:
            total = float(((es + gs + ls) / 3).sum())
            gain, self._sequence_total = total - self._sequence_total, total
        norms = [float(d.norm()) / (self.max_update_ratio * self._base_norms[i]) for i, d in deltas.items()]
        return {
            "edit_success": float(es[-1]),
            "generalization": float(gs[-1]),
            "locality": float(ls[-1]),
            "sparsity": 1.0 - len(chosen) / len(self._modules),
            "retention": float(retained.mean()) if len(window) else 0.0,
            "update_norm": float(np.clip(np.mean(norms), 0.0, 1.0)) if norms else 0.0,
            "sequence_gain": gain,
        }

    def _observation(self) -> dict[str, np.ndarray]:
        n = len(self._modules)
        progress = np.array(
            [
                self._t / len(self._episode),
                float(np.mean(self._history["edit_success"])) if self._history["edit_success"] else 0.0,
            ],
            dtype=np.float32,
        )
        if self._trace is None:  # terminal: nothing left to edit
            return {
                "instance": np.zeros(self.observation_space["instance"].shape, np.float32),
                "layers": np.zeros((n, len(LAYER_FEATURES)), np.float32),
                "progress": progress,
            }
        trace = self._trace
        prompt_end = self._episode[self._t].edit.answer_start - 1
        instance = torch.cat([_unit_rms(trace.hidden[prompt_end]), _unit_rms(trace.hidden[-1])])
        layers = np.zeros((n, len(LAYER_FEATURES)), dtype=np.float32)
        for i in range(n):
            k, g = trace.keys[i].float(), trace.grads[i].float()
            layers[i, 0] = _log_feature(k.norm(dim=-1).mean())
            layers[i, 1] = _log_feature(g.norm(dim=-1).mean())
            # ||g.T @ k||_F from the n x n Gram matrices: never forms the d_out x d_in gradient.
            layers[i, 2] = _log_feature(((g @ g.T) * (k @ k.T)).sum().clamp_min(0).sqrt())
        layers[:, 3] = self._depth
        layers[:, 4] = self._changed
        layers[:, 5] = self._chosen_counts / max(1, self._t)
        return {"instance": instance.cpu().numpy().astype(np.float32), "layers": layers, "progress": progress}


def _pair(value: Any, name: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a pair of numbers, got {value!r}") from err
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return lo, hi


def _block_index(name: str, n_layers: int) -> float:
    numbers = [int(part) for part in name.split(".") if part.isdigit()]
    return numbers[0] / max(1, n_layers - 1) if numbers else 0.0


def _unit_rms(x: torch.Tensor) -> torch.Tensor:
    x = x.float()
    return x / x.pow(2).mean().sqrt().clamp_min(1e-8)


def _log_feature(x: torch.Tensor) -> float:
    return float(torch.log10(x.float() + 1e-10)) / 10.0
