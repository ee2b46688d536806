"""What HiEdit and RLEdit share: a :class:`~hiedit_agents.learned.hypernet.HyperEditor` as low level,
acting, checkpoints, and training through the plain loop of :mod:`~hiedit_agents.learned.training`
with the callbacks of :mod:`~hiedit_agents.learned.callbacks`.

Training holds out ``validation_edits`` records of its own data and, between episodes (after the
first, then every ``validate_every`` edits, and after the last edit), edits them as one sequence and
scores it; the editor that scored best is the one kept. A run's last editor is not reliably its
best: on SmolLM2 the running training loss rose again after about 100 edits, and one episode in which
the model breaks can undo what earlier ones taught.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, Literal

import gymnasium as gym
import numpy as np
import torch
from torch import nn
from tqdm import tqdm, trange

from hiedit_env import EditTrace, HiEditEnv, ObjectiveTerms
from hiedit_env.checks import check_int, check_range
from hiedit_env.score import EPISODE_SUMMARY

from ..common.base import Agent
from ..common.checkpoint import (
    PROGRESS_DIR,
    PROGRESS_FILE,
    CheckpointError,
    load_torch,
    progress_folder,
    remove_progress,
    verify_checkpoint,
)
from .callbacks import Checkpointing, Diagnostics, Validation, WeightAveraging
from .gate import Selection
from .hypernet import DEFAULT_INIT_LR, DEFAULT_PRECONDITIONER_DAMPING, HyperEditor, Preconditioner, UpdateSize
from .training import EditorDivergedError, ScalarLog, TrainingCallback, TrainingLoop, TrainingState

LowRank = tuple[torch.Tensor, torch.Tensor]
# hiedit-gym 0.2.0's ``scale`` values and today's ``update_size`` for each (LearnedEditorAgent.upgrade_config).
SCALE_RENAMED = {"running": "learned", "direction": "gradient_norm", "effect": "gradient_effect"}


def masked(updates: list[LowRank], mask: torch.Tensor) -> list[LowRank]:
    """Each module's update scaled by its mask entry; zero-valued entries keep their gradient path."""
    return [(u * mask[i], v) for i, (u, v) in enumerate(updates)]


def detached(updates: list[LowRank]) -> list[LowRank]:
    return [(u.detach(), v.detach()) for u, v in updates]


class LearnedEditorAgent(Agent):
    """A hypernetwork editor trained through the environment's differentiable objective.

    Subclasses choose the modules (:meth:`select`) and the loss (:meth:`training_loss`) and may add
    trainable modules (:meth:`trainable_modules`) with their own learning rate. ``init_lr`` is the
    per-module relative step an untrained editor takes; ``max_lr`` (``None``: unbounded) caps the
    learned steps after every optimiser step. ``update_size`` is what sets the size of the editor's
    updates (``"learned"``, ``"gradient_norm"``, ``"gradient_effect"``), ``preconditioner`` the form of its
    key preconditioner (``"none"``; ``"diagonal"``: per feature; ``"full"``: the whole second-moment
    matrix) and ``preconditioner_damping`` its damping, all in :mod:`~hiedit_agents.learned.hypernet`.
    ``editor_reads`` is the trace the editor reads: ``"edit"``, the edit's own
    trace (free: the environment has taken it), ``"subject"``, its one row at the subject's last token
    (:attr:`HiEditEnv.subject_position`: the key ROME and MEMIT write at, whose update reaches every
    prompt about the subject), or ``"objective"``, the trace of the whole training
    objective (:meth:`HiEditEnv.objective_trace`), whose KL rows show the editor how the unrelated
    prompt has drifted, for one forward+backward on the objective's prompts per edit.
    ``loss_back_depth`` and ``loss_time_decay`` widen the training loss's window beyond the trace's
    (:meth:`loss_objective`); ``None`` keeps the environment's. ``validation_edits`` records of the
    training data are held out of training and edited as one sequence every ``validate_every``
    training edits; :meth:`learn` keeps the editor whose sequence scored the best mean(ES, GS, LS)
    (0: no validation, the last editor is kept). With ``validate_start`` the first check also scores the
    editor as it started (its untrained weights, with the statistics of the first episode), which is
    kept unless a trained editor validates better: a floor at the untrained start on validation.
    ``average_decay`` > 0 validates and keeps an
    exponential moving average of the trained weights instead of the weights themselves (Polyak
    averaging, ``avg += (1 - average_decay) * (w - avg)`` after every optimiser step): on SmolLM2 the
    validation mean of the raw weights swung by 0.2 between checks 80 edits apart.

    ``paraphrase_loss``: the training loss scores each edit on its paraphrase as well as its prompt
    (:meth:`loss_objective`), the generalisation loss of MEND and RLEdit.

    ``max_size_ratio`` (``None``: unbounded) bounds each update's size at that many times the
    average training edit's (:mod:`~hiedit_agents.learned.hypernet`); it is an acting option: ``load`` and
    ``hiedit evaluate --agent-kwargs`` may set it on a checkpoint. So is ``edit_steps``: the editor's
    passes per edit when acting (validation included; training takes one). Each pass after the first
    reads the objective's trace under the updates so far, one more forward+backward per edit, and
    adds its update to theirs, as a few steps of an optimiser do.

    The defaults (objective trace, ``update_size="gradient_norm"``, ``meta_lr`` 1e-4, ``lr_lr`` 1e-3) won
    the selection on a 100-edit episode of the ZsRE training split against the edit trace, the learned
    size, ten times the learning rates and a loss over the whole training episode; over three training
    seeds ``update_size="gradient_effect"`` moved HiEdit up and RLEdit down by less than the spread
    between seeds. The diagonal key preconditioner (damping 0.1) with ``init_lr`` 1.2e-2 won the same selection over no
    preconditioner at 6e-3, the earlier defaults: 0.714 against 0.684 for HiEdit, 0.676 against 0.581
    for RLEdit (training seed 0; benchmarks/results/zsre_precondition/). Its full form
    (``preconditioner="full"``) replaced the diagonal on three selection sequences of the ZsRE training
    split: HiEdit 0.773 over training seeds 0 and 100 against 0.706. RLEdit with it broke one of the
    three (0.027) and, with ``max_size_ratio`` 3 set when acting, is level with its diagonal form (0.700
    against 0.695; benchmarks/results/full_preconditioner_choice/).
    """

    update_mode = "low_rank"
    requires_training = True
    resumable = True
    acting_options = ("max_size_ratio", "edit_steps")

    def __init__(
        self,
        env: gym.Env,
        rank: int = 32,
        num_blocks: int = 2,
        init_lr: float = DEFAULT_INIT_LR,
        max_lr: float | None = None,
        meta_lr: float = 1e-4,
        lr_lr: float = 1e-3,
        update_every: int = 1,
        grad_clip: float = 1.0,
        update_size: UpdateSize = "gradient_norm",
        editor_reads: Literal["edit", "objective", "subject"] = "objective",
        loss_back_depth: int | None = None,
        loss_time_decay: float | None = None,
        validation_edits: int = 50,
        validate_every: int = 75,
        validate_start: bool = False,
        average_decay: float = 0.0,
        max_size_ratio: float | None = None,
        edit_steps: int = 1,
        preconditioner: Preconditioner = "full",
        preconditioner_damping: float = DEFAULT_PRECONDITIONER_DAMPING,
        paraphrase_loss: bool = False,
    ) -> None:
        super().__init__(env)
        self._loaded_from: tuple[Path, dict[str, Any]] | None = None
        if editor_reads not in ("edit", "objective", "subject"):
            raise ValueError(f"editor_reads must be 'edit', 'objective' or 'subject', got {editor_reads!r}")
        check_int("update_every", update_every, 1)
        for name, value in (("meta_lr", meta_lr), ("lr_lr", lr_lr), ("grad_clip", grad_clip)):
            check_range(name, value, 0, None, low_open=True)
        if loss_back_depth is not None:
            check_int("loss_back_depth", loss_back_depth, 0)
        if loss_time_decay is not None:
            check_range("loss_time_decay", loss_time_decay, 0, 1, low_open=True)
        check_int("validation_edits", validation_edits, 0)
        check_int("validate_every", validate_every, 1)
        check_int("edit_steps", edit_steps, 1)
        if edit_steps > 1 and editor_reads != "objective":
            raise ValueError(
                "edit_steps > 1 reads the objective's trace under the updates so far: it needs editor_reads='objective'"
            )
        for name, flag in (("paraphrase_loss", paraphrase_loss), ("validate_start", validate_start)):
            if not isinstance(flag, bool):
                raise ValueError(f"{name} must be true or false, got {flag!r}")
        if validate_start and validation_edits == 0:
            raise ValueError(
                "validate_start scores the untrained start on the validation records: it needs validation_edits > 0"
            )
        check_range("average_decay", average_decay, 0, 1)
        if average_decay == 1:
            raise ValueError("average_decay must be < 1: at 1 the average never leaves the initial weights")
        if max_lr is not None:
            check_range("max_lr", max_lr, 0, None, low_open=True)
        if max_lr is not None and max_lr < init_lr:
            raise ValueError(f"max_lr must be >= init_lr, got {max_lr} < {init_lr}")
        self.hparams = {
            "rank": rank,
            "num_blocks": num_blocks,
            "init_lr": init_lr,
            "max_lr": max_lr,
            "meta_lr": meta_lr,
            "lr_lr": lr_lr,
            "update_every": update_every,
            "grad_clip": grad_clip,
            "update_size": update_size,
            "editor_reads": editor_reads,
            "loss_back_depth": loss_back_depth,
            "loss_time_decay": loss_time_decay,
            "validation_edits": int(validation_edits),
            "validate_every": int(validate_every),
            "validate_start": validate_start,
            "average_decay": float(average_decay),
            "max_size_ratio": max_size_ratio,
            "edit_steps": int(edit_steps),
            "preconditioner": preconditioner,
            "preconditioner_damping": preconditioner_damping,
            "paraphrase_loss": paraphrase_loss,
        }
        self.editor = HyperEditor(
            self.env.module_dims(),
            self.env.base_weight_norms(),
            rank,
            num_blocks,
            init_lr,
            update_size,
            max_size_ratio,
            preconditioner,
            preconditioner_damping,
        ).to(self.env.model.device)
        self.optimizer_steps = 0

    @classmethod
    def upgrade_config(cls, config: dict[str, Any]) -> dict[str, Any]:
        """The options as hiedit-gym 0.2.0 named them: ``trace_of`` is ``editor_reads``; ``scale`` is
        ``update_size`` (``"running"``, ``"direction"``, ``"effect"`` are ``"learned"``, ``"gradient_norm"``,
        ``"gradient_effect"``); ``precondition`` is ``preconditioner_damping``, its 0 ``preconditioner="none"``.
        0.2.0's ``scale="edit"`` is gone: such a checkpoint is refused, naming it."""
        if "trace_of" in config:
            config["editor_reads"] = config.pop("trace_of")
        if "scale" in config:
            scale = config.pop("scale")
            if scale not in SCALE_RENAMED:
                raise CheckpointError(
                    f"this checkpoint's editor sizes its updates by scale={scale!r}, which this version no longer "
                    f"has (update_size is one of {list(SCALE_RENAMED.values())}): train it again"
                )
            config["update_size"] = SCALE_RENAMED[scale]
        if "precondition" in config:
            damping = config.pop("precondition")
            if damping == 0:
                config["preconditioner"] = "none"
            else:
                config["preconditioner_damping"] = damping
        return config

    @classmethod
    def env_requirements(cls, config: dict[str, Any]) -> dict[str, Any]:
        """A low-rank environment whose per-edit pass, when the editor reads the objective's trace (the
        default), covers the objective's batch, so that reading it costs no second pass per edit."""
        covers = "objective" if config.get("editor_reads", "objective") == "objective" else "edit"
        return {**super().env_requirements(config), "trace_covers": covers}

    # ------------------------------------------------------------------ what subclasses decide
    def select(
        self, observation: dict[str, Any], trace: EditTrace, explore: torch.Generator | None = None
    ) -> Selection:
        """Which modules to change; ``mask`` may carry gradient to a high-level policy. While training,
        ``explore`` is a seeded generator a stochastic high level may draw its choice with."""
        raise NotImplementedError

    def training_loss(
        self, env: HiEditEnv, updates: list[LowRank], selection: Selection
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The scalar to minimise for the current edit, and the terms to log."""
        raise NotImplementedError

    def trainable_modules(self) -> dict[str, nn.Module]:
        """Named modules whose parameters are trained and whose state is saved."""
        return {"editor": self.editor}

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Optimiser groups: the learned step sizes move in log space and get their own learning rate."""
        rest = [p for p in self.editor.parameters() if p is not self.editor.log_lr]
        return [
            {"params": rest, "lr": self.hparams["meta_lr"]},
            {"params": [self.editor.log_lr], "lr": self.hparams["lr_lr"]},
        ]

    def loss_objective(self, env: HiEditEnv, updates: list[LowRank]) -> ObjectiveTerms:
        """``env.objective`` over the training loss's window: ``loss_back_depth`` earlier edits weighted
        ``loss_time_decay**j`` (``None``: the environment's ``back_depth`` and ``time_decay``, the window
        the objective's trace covers). A longer window charges an update for the earlier edits of the
        episode it breaks, which the trace does not show. With ``paraphrase_loss`` each edit's
        cross-entropy averages its prompt and its paraphrase; the trace, what the editor reads, never
        includes the paraphrase, since a deployed editor does not have it."""
        return env.objective(
            updates,
            back_depth=self.hparams["loss_back_depth"],
            time_decay=self.hparams["loss_time_decay"],
            paraphrases=self.hparams["paraphrase_loss"],
        )

    def read_trace(self, env: HiEditEnv) -> EditTrace:
        """What the editor reads (``editor_reads``) for the current edit."""
        if self.hparams["editor_reads"] == "edit":
            return env.edit_trace
        if self.hparams["editor_reads"] == "subject":
            return env.edit_trace.rows([env.subject_position])
        return env.objective_trace([None] * self.num_candidates)

    # ------------------------------------------------------------------ acting
    def act(self, observation: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
        return self._act_on(self.env, observation)

    @torch.no_grad()
    def _act_on(self, env: HiEditEnv, observation: dict[str, Any]) -> dict[str, Any]:
        hard = self.select(observation, env.edit_trace).hard
        chosen = hard.nonzero().squeeze(1).tolist()  # the editor runs on these modules only
        updates = self.editor(self.read_trace(env), chosen)
        for _ in range(self.hparams["edit_steps"] - 1):
            more = self.editor(env.objective_trace(self.action_for(updates, hard)["update"]), chosen)
            updates = [
                None if u is None else (torch.cat([u[0], du[0]]), torch.cat([u[1], du[1]]))
                for u, du in zip(updates, more)
            ]
        return self.action_for(updates, hard)

    def proposed_update(self, observation: dict[str, Any], info: dict[str, Any]) -> list[LowRank]:
        with torch.no_grad():
            return detached(self.editor(self.read_trace(self.env)))

    def action_for(self, updates: list[LowRank | None], hard: torch.Tensor) -> dict[str, Any]:
        """The environment's action: the chosen modules (``hard``) and their detached updates, refused
        when one is not finite."""
        chosen = hard.detach().cpu().numpy().astype(np.float32)
        for i, update in enumerate(updates):
            if chosen[i] > 0.5 and not all(bool(torch.isfinite(f).all()) for f in update):
                raise EditorDivergedError(
                    f"{self.name}: the editor's update for {self.env.candidate_modules[i]} is not finite: the "
                    "editor diverged (when acting, max_size_ratio bounds its updates; when training, lower "
                    "meta_lr or lr_lr)"
                )
        return {
            "layers": chosen,
            "update": [(u[0].detach(), u[1].detach()) if chosen[i] > 0.5 else None for i, u in enumerate(updates)],
        }

    def observe_unedited(self, env: gym.Env, edits: int) -> None:
        """Fill the editor's statistics from the traces of ``edits`` edits of ``env`` (whole episodes,
        seeds 0, 1, ..., the last one cut short) while leaving the model unchanged: what an untrained
        editor needs before it acts (until then its updates are sized by each edit's own gradient)."""
        check_int("edits", edits, 0)
        unwrapped: HiEditEnv = env.unwrapped
        seed = 0
        # minutes on a shared CPU (a trace pass and a scoring pass per edit): a progress bar, not silence
        with tqdm(total=edits, desc=f"{self.name}: observing unedited edits", unit="edit", leave=False) as bar:
            while edits > 0:
                env.reset(seed=seed)
                for _ in range(min(edits, unwrapped.num_edits)):
                    self.editor.observe(self.read_trace(unwrapped))
                    env.step(
                        {"layers": np.zeros(self.num_candidates, np.float32), "update": [None] * self.num_candidates}
                    )
                    edits -= 1
                    bar.update()
                seed += 1

    # ------------------------------------------------------------------ learning
    def learn(
        self,
        env: gym.Env,
        steps: int,
        *,
        log_dir: str | Path | None = None,
        seed: int = 0,
        progress: bool = True,
        checkpoint_dir: str | Path | None = None,
        checkpoint_every: int = 100,
        resume: bool = False,
    ) -> dict[str, Any]:
        """Train on ``steps`` consecutive edits of ``env`` and keep the editor that validated best.

        Episodes are seeded ``seed, seed+1, ...``; with ``validation_edits`` > 0 they draw from the
        environment's records less ``validation_edits`` held out (chosen from ``seed``), which are
        edited as one sequence at the end of the first episode (the editor then has its input
        statistics and has barely moved from its start: before them, its updates are sized by the edit's
        own gradient norm), at the first episode end after every ``validate_every`` edits, and after
        the last edit. The returned statistics hold every validation (``validations``), the training
        edit of the editor kept (``kept_after_edits``) and, per training episode, how far the editor and
        the weights moved from their start (``diagnostics``: :class:`~hiedit_agents.learned.callbacks.Diagnostics`).

        With ``checkpoint_dir``, at the first episode end after every ``checkpoint_every`` edits
        everything training carries (the current editor, the optimiser, the moving average, the random
        streams, the statistics) is saved into ``checkpoint_dir/training_state``
        (:meth:`~hiedit_agents.common.base.Agent.save_progress`) and the agent as it would be kept (its best
        validated editor so far) into ``checkpoint_dir``; ``resume=True``, on the agent loaded from
        :func:`~hiedit_agents.common.checkpoint.progress_folder`, continues to the same result as a run that
        was never interrupted. SIGINT (or SIGTERM, which ``hiedit train`` turns
        into it) lets the current episode finish, saves at its end and raises
        :class:`~hiedit_agents.common.base.TrainingInterrupted`; a second one stops at once. ``hiedit train``
        removes the progress folder once it has saved the finished agent.

        The loop itself is :class:`~hiedit_agents.learned.training.TrainingLoop`; weight averaging,
        validation and checkpoints are its callbacks (:mod:`~hiedit_agents.learned.callbacks`).
        """
        unwrapped: HiEditEnv = env.unwrapped
        if unwrapped.update_mode != "low_rank" or unwrapped.candidate_modules != self.env.candidate_modules:
            raise ValueError("learn() needs a low_rank environment over the same candidate modules as the agent")
        check_int("steps", steps, 1)
        check_int("checkpoint_every", checkpoint_every, 1)
        held_out, pool = self._hold_out(unwrapped, seed)
        params = [p for m in self.trainable_modules().values() for p in m.parameters()]
        decay = self.hparams["average_decay"]
        averaging = WeightAveraging(params, decay) if decay > 0 else None
        weights = averaging.swapped if averaging is not None else nullcontext
        callbacks: list[TrainingCallback] = [averaging] if averaging is not None else []
        callbacks.append(Diagnostics(self.editor))
        if held_out:
            start = (params, [p.detach().clone() for p in params]) if self.hparams["validate_start"] else None
            callbacks.append(Validation(held_out, seed, self.hparams["validate_every"], progress, weights, start))
        checkpointing = None
        if checkpoint_dir is not None:
            out = Path(checkpoint_dir)
            checkpointing = Checkpointing(checkpoint_every, lambda loop: self._save_training(out, loop, weights))
            callbacks.append(checkpointing)
        state = TrainingState(seed=seed, next_checkpoint=checkpoint_every)
        loop = TrainingLoop(
            self,
            env,
            steps,
            state,
            torch.optim.Adam(self.parameter_groups()),
            params,
            torch.Generator().manual_seed(seed),
            pool,
            callbacks,
            progress,
        )
        if resume:
            if checkpoint_dir is None:
                raise ValueError("resume=True needs the checkpoint_dir of the interrupted run")
            self._restore_training(Path(checkpoint_dir), loop)
        elif checkpoint_dir is not None:  # an older run's progress must never be resumed into this one
            remove_progress(checkpoint_dir)
        start_step = loop.state.step
        loop.log = ScalarLog(log_dir, purge_step=start_step if resume else None)
        started = time.perf_counter()
        try:
            loop.run()
        finally:
            loop.log.close()
        seconds = time.perf_counter() - started
        state, trained = loop.state, steps - start_step
        return {
            "steps": steps,
            "steps_this_run": trained,
            "resumed_at": start_step if resume else None,
            "optimizer_steps": state.optimizer_steps,
            "seconds": seconds,
            "seconds_per_step": seconds / max(trained, 1),
            "checkpoint_seconds": checkpointing.seconds if checkpointing is not None else 0.0,
            "episodes": state.episodes,
            "final_running": state.running,
            "validations": state.validations,
            "diagnostics": state.diagnostics,
            "kept_after_edits": state.best[1] if state.best else steps,
            "kept_validation_mean": state.best[0] if state.best else None,
        }

    def _save_training(
        self, out: Path, loop: TrainingLoop, weights: Callable[[], AbstractContextManager[None]]
    ) -> None:
        """Save the run's progress (:meth:`save_progress`: the current editor and all else training carries,
        :meth:`TrainingLoop.state_dict`) and, into ``out`` itself, the agent as it would be kept now (its best
        validated editor, or the current one, or its moving average: what ``weights`` puts in place),
        for evaluation while the run goes on."""
        self.save_progress(out, loop.state_dict())
        best = loop.state.best
        if best is None:
            with weights():
                self.save(out)
            return
        current, caches = copy.deepcopy(self.state_dict()), self.editor.solver_caches()
        self.load_state_dict(best[2])
        try:
            self.save(out)
        finally:
            self.load_state_dict(current)
            self.editor.load_solver_caches(caches)

    def load_files(self, directory: Path, files: dict[str, Any]) -> None:
        """Remember which folder :meth:`load` verified, and its manifest's table, for :meth:`_restore_training`."""
        self._loaded_from = (Path(directory).resolve(), files)

    def _restore_training(self, out: Path, loop: TrainingLoop) -> None:
        """Load into ``loop`` what :meth:`_save_training` wrote beside the editor this agent was loaded with
        (``hiedit train --resume`` loads it from :func:`progress_folder`)."""
        folder = progress_folder(out)
        if folder is None:
            raise CheckpointError(
                f"nothing to resume in {str(out)!r}: it has no {PROGRESS_DIR} "
                "(the run finished, or stopped before its first checkpoint)"
            )
        # load() has just verified this folder (hashing a few hundred MB for HiEdit on SmolLM2): reuse its table
        loaded = self._loaded_from
        files = (
            loaded[1] if loaded is not None and loaded[0] == folder.resolve() else verify_checkpoint(folder)["files"]
        )
        if PROGRESS_FILE not in files:
            raise CheckpointError(f"{str(folder)!r} lacks {PROGRESS_FILE}: it is not a learned editor's training run")
        extras = load_torch(folder / PROGRESS_FILE, self.env.model.device)
        saved = TrainingState(**extras["progress"])
        if saved.seed != loop.state.seed:
            raise ValueError(f"the run in {str(out)!r} was started with seed {saved.seed}, not {loop.state.seed}")
        if saved.step >= loop.steps:
            raise ValueError(
                f"the run in {str(out)!r} has trained {saved.step} edits already; --steps {loop.steps} asks for no more"
            )
        loop.load_state_dict(extras)

    def _hold_out(self, env: HiEditEnv, seed: int) -> tuple[list[int], list[int] | None]:
        """The records held out for validation and the pool training episodes draw from (``None``: all)."""
        n_val = self.hparams["validation_edits"]
        if n_val == 0:
            return [], None
        if n_val + env.num_edits > len(env.records):
            raise ValueError(
                f"validation_edits={n_val} plus num_edits={env.num_edits} is more than the "
                f"{len(env.records)} training records; lower one of them (validation_edits=0 turns it off)"
            )
        order = np.random.default_rng(seed).permutation(len(env.records)).tolist()
        return order[:n_val], order[n_val:]

    def validate(self, env: HiEditEnv, records: list[int], seed: int, progress: bool = False) -> dict[str, float]:
        """Edit ``records`` as one sequence with the current editor; the end-of-sequence metrics a training
        run keeps (:data:`~hiedit_env.score.EPISODE_SUMMARY`)."""
        observation, _ = env.reset(seed=seed, options={"records": records})
        for _ in trange(len(records), desc="validating", unit="edit", leave=False, disable=not progress):
            observation, _, terminated, _, info = env.step(self._act_on(env, observation))
        return {k: info["episode_metrics"][k] for k in EPISODE_SUMMARY}

    @torch.no_grad()
    def bound_step_size(self) -> None:
        """Project the learned per-module step sizes back under ``max_lr``.

        Within a short training episode a larger step edits better, so the step sizes drift upward
        (on SmolLM2 one grew from 3e-3 to 1.1e-2 in 300 edits). Off by default: bounding them at the
        initial step did not make 100-edit sequences of the training split hold up better (docs/findings.md).
        """
        self.editor.log_lr.clamp_(max=math.log(self.hparams["max_lr"]))

    # ------------------------------------------------------------------ persistence
    def config(self) -> dict[str, Any]:
        return dict(self.hparams)

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {name: module.state_dict() for name, module in self.trainable_modules().items()}
        state["optimizer_steps"] = self.optimizer_steps
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, module in self.trainable_modules().items():
            module.load_state_dict(state[name])
        self.optimizer_steps = int(state["optimizer_steps"])
