"""The low-level editor shared by HiEdit and RLEdit: an MEND/RLEdit-style hypernetwork.

For candidate module ``i`` the trace it reads (the edit's, or the whole objective's: the agents'
``editor_reads``) gives per-token keys ``k`` [n, d_in] and output gradients
``delta`` [n, d_out]; the raw weight gradient is ``G = delta^T k``. The editor

1. standardises keys and gradients per module with running mean/variance statistics (updated while
   training, saved with the checkpoint; raw gradients are orders of magnitude smaller than keys),
2. runs each token's ``concat(k, delta)`` through a few residual low-rank blocks, shared by all modules
   of one shape, with a learned per-module scale and shift in every block,
3. maps the result back through the same statistics into pseudo keys ``k~`` [n, d_in] and pseudo
   gradients ``delta~`` [n, d_out], and returns ``dW = -lr_i * ||W0_i|| / mean ||G|| * delta~^T k~`` as
   low-rank factors ``U = -lr_i * ||W0_i|| / mean ||G|| * delta~``, ``V = k~``, where ``mean ||G||`` is
   the running mean of module ``i``'s ``||G||`` over the observed edits (this edit's own until
   :meth:`HyperEditor.observe` has seen one).

The up-projections start at zero, so an untrained editor reproduces the edit's own gradient (with
the key preconditioner below, the preconditioned gradient): a gradient step, proportional to ``G``,
so an edit the model nearly makes already (small ``||G||``) gets a small update, and ``lr_i`` is the
relative change ``||dW|| / ||W0||`` of an edit of average gradient size. Training starts from the
step-size baseline rather than from noise (standardised outputs used directly would start from a
distorted direction that raises the edit loss). ``lr_i`` is learned in log space.

``update_size`` says what sets each update's size:

* ``"learned"``: the formula above; the network makes ``delta~^T k~`` larger or smaller than ``G``,
  so it learns the size per edit as well as the direction.
* ``"gradient_norm"``: the network chooses the direction only; the size is the gradient step's,
  ``dW = -lr_i * ||W0_i|| * ||G|| / mean ||G|| * delta~^T k~ / ||delta~^T k~||``. Untrained, it is the
  same update; after training, an edit still gets the gradient step's size. Trained through the
  one-step objective, ``"learned"`` learned to push the current edit harder than its gradient
  (higher success at the edit, less of it kept after 100 edits); here that size is not the network's
  to choose, and the learned ``lr_i`` moves it only per module, for every edit alike.
* ``"gradient_effect"``: as ``"gradient_norm"``, with the size measured where it acts, on the
  module's outputs for the trace's own tokens ``K``: the update is scaled so that ``||dW K^T||``
  equals the gradient step's ``||lr_i * ||W0_i|| / mean ||G|| * G K^T||``. A direction that moves every
  token's output alike (a bias-like update, cheap in Frobenius norm and costly to every unrelated
  prompt) gets a smaller step. Untrained, it is the same update again.

``preconditioner="diagonal"`` with damping d (``preconditioner_damping``) divides the pseudo keys, per
feature, by the keys' running second moment ``E[k_j^2] + d * mean_j E[k_j^2]`` before the size is set:
the diagonal of the ``C^-1 k`` of ROME and MEMIT, where ``C`` is the keys' second-moment matrix. A
feature that every prompt activates gets a small share of the update, one this edit activates rarely a
large share, so the update moves the edit's outputs more than those of unrelated prompts, whose keys
lie on the common features. ``d`` bounds how much a rare feature is favoured (at most ``1 / d`` times
the average). Untrained, on SmolLM2's upper nine blocks and the ZsRE selection episode, d = 0.1 raised
the mean from 0.674 to 0.703 at the same ``init_lr`` (benchmarks/results/zsre_precondition/).
``preconditioner="none"`` leaves the pseudo keys as they are.

``preconditioner="full"`` uses the whole matrix: ``k~ (C + d * mean_j C_jj * I)^-1``, the ``C^-1 k``
of ROME and MEMIT with ``C`` the running mean of ``k k^T`` over the observed tokens. It also discounts
directions that are combinations of common features, which the diagonal cannot see. It costs
``d_in^2`` statistics per module (2.4 M floats for a SmolLM2 ``down_proj``, saved with the checkpoint),
an inversion each time they have grown by a quarter (when acting, as they are then fixed: once)
and one ``n x d_in x d_in`` product per update. Untrained, on all 18 SmolLM2 modules and three ZsRE
selection sequences, it scored 0.756 against the diagonal's 0.695 (benchmarks/results/zsre_full_precondition/),
and on three CounterFact sequences 0.501 against 0.430 (benchmarks/results/counterfact_full_precondition/). The learned editors use it by default.

With the running statistics the update's size follows ``||G|| / mean ||G||`` with no bound but the
environment's per-module cap, and that ratio feeds on itself: once a sequence has damaged the model its
gradients grow, so its next updates grow (RLEdit on a ZsRE test sequence: the largest ratio went from
under 6 to 89 at edit 12 and the model broke). ``max_size_ratio`` bounds it: a module whose ``||G||``
is above ``max_size_ratio`` times its running mean has its update shrunk by ``max_size_ratio * mean ||G||
/ ||G||``, so no update is more than that many times the average edit's. Off by default: at 3, set on
trained editors, it rescued both ZsRE test sequences on which RLEdit broke the model and two others
broke instead; trained with it, the selection episode showed no gain and one HiEdit editor broke it
(docs/findings.md, "Does bounding the update size stop sequences from breaking?"): the breaks are not the ratio's doing alone.
With the full preconditioner RLEdit's breaks are the ratio's: on the ZsRE selection sequence it broke,
one module's ratio reached 60 at edit 96 of 100 and the model lost every edit; set at acting, 3 held
that sequence (0.715 against 0.027; benchmarks/results/full_preconditioner_choice/).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal, get_args

import torch
from torch import nn

from hiedit_env import EditTrace
from hiedit_env.checks import check_int, check_range
from hiedit_env.objective import update_sq_norm

from ..selection import gradient_norms

# Relative change per module of an untrained editor (for an edit of average gradient size). Without the
# key preconditioner 6e-3 beat 3e-3 for both agents on the selection episode of the ZsRE training split,
# and untrained it beat 1.2e-2 too; with it (d = 0.1) the untrained editor on SmolLM2's upper nine blocks
# did better at 1.2e-2 than at 6e-3 (0.713 against 0.703), and both agents trained from there beat those
# trained from 6e-3 without it (benchmarks/results/zsre_precondition/).
DEFAULT_INIT_LR = 0.012
# The damping of the key preconditioner. On the same untrained editor and episode (diagonal form):
# 0.689 at 1e-3, 0.697 at 1e-2, 0.703 at 0.1, 0.683 at 1, 0.674 without.
DEFAULT_PRECONDITIONER_DAMPING = 0.1
UpdateSize = Literal["learned", "gradient_norm", "gradient_effect"]
UPDATE_SIZES = get_args(UpdateSize)
Preconditioner = Literal["none", "diagonal", "full"]
PRECONDITIONERS = get_args(Preconditioner)
# How much the full preconditioner's token count may grow before its matrix is inverted again: an
# inversion of a SmolLM2 down_proj's (1536 x 1536, float64, through Cholesky) takes about 0.3 s on one
# core, and 18 of them per training edit would double a training step.
REFRESH_GROWTH = 1.25


def output_change(grads: torch.Tensor, keys: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """``||(grads^T keys) tokens^T||_F``: how much the update ``grads^T keys`` moves the module's outputs
    on the rows of ``tokens``, through ``n x n`` products (``grads`` [n, d_out], ``keys`` [n, d_in])."""
    return update_sq_norm((grads, keys @ tokens.T)).clamp_min(0).sqrt()


class RunningNorm(nn.Module):
    """Per-feature running mean and variance: exact pooled moments over every token seen."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("mean", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("m2", torch.zeros(dim, dtype=torch.float64))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Fold the rows of ``x`` [n, dim] into the statistics (Chan's parallel update, float64)."""
        x = x.detach().to(torch.float64)
        n, batch_mean = x.shape[0], x.mean(0)
        batch_m2 = (x - batch_mean).pow(2).sum(0)
        total = self.count + n
        shift = batch_mean - self.mean
        self.mean += shift * n / total
        self.m2 += batch_m2 + shift.pow(2) * self.count * n / total
        self.count.copy_(total)

    def second_moment(self, x: torch.Tensor, damping: float) -> torch.Tensor:
        """Per-feature ``E[x^2] + damping * mean_j E[x_j^2]``: the running moments, or ``x``'s own before any exist."""
        if self.count < 2:
            second = x.pow(2).mean(0)
        else:
            second = (self.mean.pow(2) + self.m2 / self.count).to(x.dtype)
        return second + damping * second.mean() + 1e-30

    def moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation to use for ``x``: the running ones, or ``x``'s own before any exist."""
        if self.count < 2:
            mean, var = x.mean(0), x.var(0, unbiased=False)
        else:
            mean = self.mean.to(x.dtype)
            var = (self.m2 / (self.count - 1)).to(x.dtype)
        # Dimensions that never vary would blow up; floor them relative to the typical variance.
        return mean, (var + 1e-6 * var.mean() + 1e-30).sqrt()


class KeyMoment(nn.Module):
    """Running second-moment matrix ``E[k k^T]`` of a module's keys, and solves with its damped form.

    The inverse lives in a buffer of its own, allocated at the first inversion (a module the editor
    never acts on costs none), and is computed in place, before the editor builds its graph
    (:meth:`HyperEditor.forward` calls :meth:`refresh` first): inverting between the graph's saved
    tensors left glibc's heap fragmented, and HiEdit's training on SmolLM2's 18 ``down_proj`` peaked
    at 3.0 GB instead of 2.0 GB (peak RSS of HiEdit's CounterFact training run, train_stats.json)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("moment", torch.zeros(dim, dim))
        self.register_buffer("inverse", None, persistent=False)
        self._inverted: tuple[float, float] | None = None  # (damping, count) that ``inverse`` was computed at

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Fold the rows of ``x`` [n, dim] into the mean of ``k k^T``."""
        x = x.detach().float()
        total = self.count + x.shape[0]
        weight = float(x.shape[0] / total)
        self.moment.addmm_(x.T, x, beta=1 - weight, alpha=weight / x.shape[0])
        self.count.copy_(total)

    @torch.no_grad()
    def refresh(self, damping: float) -> None:
        """Invert the damped moment again if ``damping`` changed or the count has grown by
        ``REFRESH_GROWTH`` since the last inversion: while training, a solve uses the moment of at least
        1 / REFRESH_GROWTH of the tokens seen, for one inversion every few edits; when acting, one in all."""
        count = float(self.count)
        if count < 1 or (
            self._inverted is not None and self._inverted[0] == damping and count <= self._inverted[1] * REFRESH_GROWTH
        ):
            return
        # float64: when the mean key dominates C, the damped matrix's condition number is about
        # d_in / damping (15 000 for a SmolLM2 down_proj).
        work = self._damped(self.moment.to(torch.float64, copy=True), damping)
        torch.linalg.cholesky(work, out=work)
        torch.cholesky_inverse(work, out=work)
        if self.inverse is None:
            self.inverse = torch.empty_like(self.moment)
        self.inverse.copy_(work)
        self._inverted = (damping, count)

    def solve(self, x: torch.Tensor, damping: float, own: torch.Tensor) -> torch.Tensor:
        """``x (C + damping * mean_j C_jj * I)^-1`` for rows ``x`` [n, dim], differentiable in ``x``;
        ``C`` is the running moment (inverted again as :meth:`refresh` says), or that of the rows of
        ``own`` before any exists. A product with the inverse takes half the time of two triangular solves."""
        if self.count < 1:
            return x @ torch.linalg.inv(self._damped(own.T @ own / own.shape[0], damping))
        self.refresh(damping)
        return x @ self.inverse

    @staticmethod
    def _damped(moment: torch.Tensor, damping: float) -> torch.Tensor:
        """``moment`` with ``damping * mean_j moment_jj`` added to its diagonal, in place."""
        moment.diagonal().add_(damping * moment.diagonal().mean() + 1e-30)
        return moment

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self._inverted = None
        super()._load_from_state_dict(*args, **kwargs)

    def cache_state(self) -> dict[str, Any] | None:
        """The cached inverse and the (damping, count) it was computed at, or ``None`` before any:
        not part of :meth:`state_dict` (an acting checkpoint inverts once when loaded), but a resumed
        training run must solve with the same stale inverse as the run it continues."""
        if self._inverted is None:
            return None
        return {"inverse": self.inverse, "inverted": self._inverted}

    def load_cache_state(self, cache: dict[str, Any] | None) -> None:
        """Restore what :meth:`cache_state` returned."""
        if cache is None:
            self.inverse, self._inverted = None, None
            return
        self.inverse = cache["inverse"].to(self.moment.device, self.moment.dtype).clone()
        self._inverted = tuple(cache["inverted"])


class ResidualLowRankBlock(nn.Module):
    """``h + scale_m * up(act(down(h))) + shift_m`` with a per-module ``scale_m``, ``shift_m``."""

    def __init__(self, dim: int, rank: int, num_modules: int) -> None:
        super().__init__()
        self.down = nn.Linear(dim, rank)
        self.up = nn.Linear(rank, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.scale = nn.Parameter(torch.ones(num_modules, 1, dim))
        self.shift = nn.Parameter(torch.zeros(num_modules, 1, dim))
        self.act = nn.SiLU()

    def forward(self, h: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """``h`` [m, n, dim] for ``m`` modules, ``slots`` [m] their index within this shape's modules."""
        return h + self.scale[slots] * self.up(self.act(self.down(h))) + self.shift[slots]


class ShapeEditor(nn.Module):
    """The blocks for all candidate modules that share one ``(d_in, d_out)``."""

    def __init__(self, d_in: int, d_out: int, rank: int, num_blocks: int, num_modules: int) -> None:
        super().__init__()
        self.d_in = d_in
        self.blocks = nn.ModuleList(ResidualLowRankBlock(d_in + d_out, rank, num_modules) for _ in range(num_blocks))

    def forward(self, x: torch.Tensor, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pseudo keys [m, n, d_in] and pseudo gradients [m, n, d_out] from ``x`` [m, n, d_in + d_out]."""
        for block in self.blocks:
            x = block(x, slots)
        return x[..., : self.d_in], x[..., self.d_in :]


class HyperEditor(nn.Module):
    """Traces in, one low-rank update ``(U [n, d_out], V [n, d_in])`` per candidate module out."""

    def __init__(
        self,
        dims: list[tuple[int, int]],
        base_norms: list[float],
        rank: int = 32,
        num_blocks: int = 2,
        init_lr: float = DEFAULT_INIT_LR,
        update_size: UpdateSize = "gradient_norm",
        max_size_ratio: float | None = None,
        preconditioner: Preconditioner = "full",
        preconditioner_damping: float = DEFAULT_PRECONDITIONER_DAMPING,
    ) -> None:
        super().__init__()
        check_int("rank", rank, 1)
        check_int("num_blocks", num_blocks, 1)
        check_range("init_lr", init_lr, 0, None, low_open=True)
        if update_size not in UPDATE_SIZES:
            raise ValueError(f"update_size must be one of {UPDATE_SIZES}, got {update_size!r}")
        if preconditioner not in PRECONDITIONERS:
            raise ValueError(f"preconditioner must be one of {PRECONDITIONERS}, got {preconditioner!r}")
        check_range("preconditioner_damping", preconditioner_damping, 0, None, low_open=True)
        if preconditioner != "none" and update_size == "learned":
            raise ValueError(
                "the key preconditioner reshapes the update's direction; update_size='learned' would take "
                "its size from the reshaped factors: use update_size='gradient_norm' or 'gradient_effect', "
                "or preconditioner='none'"
            )
        self.preconditioner, self.damping = preconditioner, float(preconditioner_damping)
        if max_size_ratio is not None:
            check_range("max_size_ratio", max_size_ratio, 0, None, low_open=True)
        self.max_size_ratio = None if max_size_ratio is None else float(max_size_ratio)
        self.dims = [tuple(d) for d in dims]
        shapes = sorted(set(self.dims))
        self.shape_of = [shapes.index(d) for d in self.dims]
        # Slot of each module among the modules of its shape: indexes the per-module scale and shift.
        self.slot_of = [self.dims[:i].count(d) for i, d in enumerate(self.dims)]
        self.editors = nn.ModuleList(
            ShapeEditor(d_in, d_out, rank, num_blocks, self.dims.count((d_in, d_out))) for d_in, d_out in shapes
        )
        self.key_norms = nn.ModuleList(RunningNorm(d_in) for d_in, _ in self.dims)
        self.grad_norms = nn.ModuleList(RunningNorm(d_out) for _, d_out in self.dims)
        # Only the full preconditioner keeps the matrices (d_in^2 floats per module), so other checkpoints stay small.
        self.key_moments = nn.ModuleList(KeyMoment(d_in) for d_in, _ in self.dims) if preconditioner == "full" else None
        self.log_lr = nn.Parameter(torch.full((len(dims),), math.log(init_lr)))
        self.register_buffer("base_norms", torch.tensor(base_norms, dtype=torch.float32))
        self.update_size = update_size
        # The running mean of each module's ||G||, the size of an average edit's gradient.
        self.gradient_size = RunningNorm(len(dims))

    def solver_caches(self) -> list[dict[str, Any] | None]:
        """Each full preconditioner's cached inverse (:meth:`KeyMoment.cache_state`); empty without one."""
        return [] if self.key_moments is None else [m.cache_state() for m in self.key_moments]

    def load_solver_caches(self, caches: list[dict[str, Any] | None]) -> None:
        """Restore what :meth:`solver_caches` returned."""
        for moment, cache in zip(self.key_moments or [], caches):
            moment.load_cache_state(cache)

    def observe(self, trace: EditTrace) -> None:
        """Update the normalisers with this trace's tokens (called while training)."""
        for i, (k, g) in enumerate(zip(trace.keys, trace.grads)):
            self.key_norms[i].update(k)
            self.grad_norms[i].update(g)
            if self.key_moments is not None:
                self.key_moments[i].update(k)
        self.gradient_size.update(gradient_norms(trace)[None])

    def forward(
        self, trace: EditTrace, modules: Sequence[int] | None = None
    ) -> list[tuple[torch.Tensor, torch.Tensor] | None]:
        """``(U, V)`` for every candidate (or only those in ``modules``, ``None`` for the others: each
        module's update depends on its own trace alone), differentiable w.r.t. the editor's parameters."""
        wanted = set(range(len(self.dims)) if modules is None else modules)
        if self.key_moments is not None:
            for i in wanted:
                self.key_moments[i].refresh(self.damping)
        moments = {
            i: (self.key_norms[i].moments(trace.keys[i].float()), self.grad_norms[i].moments(trace.grads[i].float()))
            for i in wanted
        }
        inputs = {
            i: torch.cat([(trace.keys[i].float() - mk) / sk, (trace.grads[i].float() - mg) / sg], dim=-1)
            for i, ((mk, sk), (mg, sg)) in moments.items()
        }
        running = self.gradient_size.count > 0
        bounded = running and self.max_size_ratio is not None
        # The edit's own ||G|| needs the trace's Gram matrices: only computed when used.
        own = gradient_norms(trace, wanted) if self.update_size == "gradient_norm" or not running or bounded else None
        divisors = (self.gradient_size.mean.float() if running else own).clamp_min(1e-12)
        # A constant per module (the trace does not depend on the editor): it scales an update and its gradient alike.
        shrink = (self.max_size_ratio * divisors / own.clamp_min(1e-30)).clamp(max=1) if bounded else None
        updates: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(self.dims)
        for shape, editor in enumerate(self.editors):
            members = [i for i, of in enumerate(self.shape_of) if of == shape and i in wanted]
            if not members:
                continue
            slots = torch.tensor([self.slot_of[i] for i in members], device=self.log_lr.device)
            keys, grads = editor(torch.stack([inputs[i] for i in members]), slots)
            for j, i in enumerate(members):
                (mk, sk), (mg, sg) = moments[i]
                pseudo_grads, pseudo_keys = grads[j] * sg + mg, keys[j] * sk + mk
                if self.key_moments is not None:
                    pseudo_keys = self.key_moments[i].solve(pseudo_keys, self.damping, trace.keys[i].float())
                elif self.preconditioner == "diagonal":
                    pseudo_keys = pseudo_keys / self.key_norms[i].second_moment(trace.keys[i].float(), self.damping)
                step = self.log_lr[i].exp() * self.base_norms[i] / divisors[i]
                if self.update_size == "gradient_norm":
                    size = update_sq_norm((pseudo_grads, pseudo_keys)).clamp_min(1e-30).sqrt()
                    step = step * own[i] / size
                elif self.update_size == "gradient_effect":
                    k, g = trace.keys[i].float(), trace.grads[i].float()
                    step = step * output_change(g, k, k) / output_change(pseudo_grads, pseudo_keys, k).clamp_min(1e-30)
                if shrink is not None:
                    step = step * shrink[i]
                updates[i] = (-step * pseudo_grads, pseudo_keys)
        return updates
