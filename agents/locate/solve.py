"""The closed-form updates of MEMIT and AlphaEdit for one layer, as low-rank factors.

With keys ``K`` [d_in, n] (one column per edited fact) and residuals ``R`` [d_out, n] (what the
layer's output should gain at those keys), both updates are ``dW = R X^T`` with ``X`` [d_in, n]:
rank ``n``, so the environment receives them as factors ``U = R^T``, ``V = X^T`` (``dW = U^T V``).

* MEMIT: ``X = (lambda C + K K^T)^{-1} K`` (least squares on the new keys, weighted against moving
  the outputs of the keys ``C = E[k k^T]`` summarises).
* AlphaEdit: ``dW^T = (P S + l2 I)^{-1} P K R^T`` with ``S = K K^T + K_p K_p^T`` (``K_p``: the keys
  of earlier edits of the sequence), so ``X = (P S + l2 I)^{-1} P K``. ``P = B B^T`` projects onto the
  eigenvectors ``B`` [d_in, m] of ``C`` with the smallest eigenvalues (a fraction
  ``null_space_fraction`` of them), the directions the preserved keys hardly use. Every column of
  ``X`` lies in the range of ``P`` (apply ``I - P`` to the system: ``l2 (I - P) X = 0``), so
  ``X = B Z`` with ``(B^T S B + l2 I) Z = B^T K``, and ``dW k = 0`` for any key ``P`` annihilates.

Both systems change between edits by the new keys' Gram matrix only (``C`` is fixed, and AlphaEdit's
``S`` grows by ``K K^T`` per edit), so the solves use factors kept across edits instead of a fresh
``d_in^3`` solve per edit and block (the published code's ``torch.linalg.solve``): MEMIT a Cholesky
factor of ``lambda C``, computed once, and the Woodbury identity
``(A + K K^T)^{-1} K = A^{-1} K (I + K^T A^{-1} K)^{-1}``; AlphaEdit the inverse
``(B^T K_p K_p^T B + l2 I)^{-1}`` [m, m], updated by the same identity after each edit. The results
equal the direct solves within float64 rounding (tested).

Everything runs in float64 (as the published code's statistics do): ``C``'s small eigenvalues span
ten orders of magnitude.
"""

from __future__ import annotations

import torch

from hiedit_env.checks import check_range


def null_space_basis(second_moment: torch.Tensor, fraction: float) -> torch.Tensor:
    """``B`` [d, m]: the ``m = round(fraction * d)`` eigenvectors of ``second_moment`` with the
    smallest eigenvalues (at least one), orthonormal columns; AlphaEdit's projector is ``B B^T``."""
    check_range("null_space_fraction", fraction, 0, 1, low_open=True)
    _, vectors = torch.linalg.eigh(second_moment.double())
    return vectors[:, : max(1, int(round(fraction * second_moment.shape[0])))].contiguous()


def memit_factor(weighted_moment: torch.Tensor, module: str = "the module") -> torch.Tensor:
    """The Cholesky factor of ``A = lambda C`` [d_in, d_in], which MEMIT's solve reuses for every edit."""
    factor, info = torch.linalg.cholesky_ex(weighted_moment.double())
    if int(info):
        raise ValueError(
            f"the key statistics C of {module} are singular (fewer independent keys than its "
            f"{weighted_moment.shape[0]} input dimensions): raise stats_samples or stats_length"
        )
    return factor


def _woodbury(inverse_keys: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """``Y (I + K^T Y)^{-1}`` for ``Y = M^{-1} K`` (``M`` symmetric): ``(M + K K^T)^{-1} K``."""
    n = keys.shape[1]
    gram = torch.eye(n, dtype=torch.float64, device=keys.device) + keys.T @ inverse_keys
    return torch.linalg.solve(gram, inverse_keys.T).T  # gram is symmetric


def memit_directions(factor: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """``X = (A + K K^T)^{-1} K`` for keys ``K`` [d_in, n], ``factor`` the Cholesky factor of ``A = lambda C``."""
    k = keys.double()
    return _woodbury(torch.cholesky_solve(k, factor), k)


def null_space_inverse(basis: torch.Tensor, l2: float) -> torch.Tensor:
    """AlphaEdit's kept inverse before any edit: ``(B^T 0 B + l2 I)^{-1} = I / l2`` [m, m]."""
    m = basis.shape[1]
    return torch.eye(m, dtype=torch.float64, device=basis.device) / l2


def alphaedit_directions(basis: torch.Tensor, inverse: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """``X = B (B^T (K K^T + K_p K_p^T) B + l2 I)^{-1} B^T K`` for keys ``K`` [d_in, n], given the null-space
    basis ``B`` and ``inverse = (B^T K_p K_p^T B + l2 I)^{-1}`` of the earlier edits' keys ``K_p``."""
    projected = basis.T @ keys.double()
    return basis @ _woodbury(inverse @ projected, projected)


def alphaedit_absorb(basis: torch.Tensor, inverse: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """The kept inverse once keys ``K`` [d_in, n] have joined the earlier edits' keys:
    ``(M + a a^T)^{-1} = M^{-1} - M^{-1} a (I + a^T M^{-1} a)^{-1} a^T M^{-1}`` with ``a = B^T K``."""
    projected = basis.T @ keys.double()
    inverse_keys = inverse @ projected
    updated = inverse - _woodbury(inverse_keys, projected) @ inverse_keys.T
    return (updated + updated.T) / 2  # symmetric in exact arithmetic; keep it so over thousands of edits


def factors(residuals: torch.Tensor, directions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``dW = R X^T`` as the environment's ``(U [n, d_out], V [n, d_in])``."""
    return residuals.T.to(dtype).contiguous(), directions.T.to(dtype).contiguous()
