"""The closed-form updates of MEMIT and AlphaEdit for one layer, as low-rank factors.

With keys ``K`` [d_in, n] (one column per edited fact) and residuals ``R`` [d_out, n] (what the
layer's output should gain at those keys), both updates are ``dW = R X^T`` with ``X`` [d_in, n]:
rank ``n``, so the environment receives them as factors ``U = R^T``, ``V = X^T`` (``dW = U^T V``).

* MEMIT: ``X = (lambda C + K K^T)^{-1} K`` (least squares on the new keys, weighted against moving
  the outputs of the keys ``C = E[k k^T]`` summarises).
* AlphaEdit: ``dW^T = (P S + l2 I)^{-1} P K R^T`` with ``S = K K^T + K_p K_p^T`` (``K_p``: the keys
  of earlier edits of the sequence), so ``X = (P S + l2 I)^{-1} P K``, which equals
  ``P (S P + l2 I)^{-1} K``: every column lies in the range of ``P``, and ``dW k = 0`` for any key
  ``P`` annihilates. ``P`` projects onto the eigenvectors of ``C`` with the smallest eigenvalues (a
  fraction ``null_space_fraction`` of them), the directions the
  preserved keys hardly use.

Solves run in float64 (as the published code does): ``C``'s small eigenvalues span ten orders of magnitude.
"""

from __future__ import annotations

import torch

from hiedit_env.checks import check_range


def null_space_projector(second_moment: torch.Tensor, fraction: float) -> torch.Tensor:
    """``P = U U^T`` over the ``round(fraction * d)`` eigenvectors of ``second_moment`` with the
    smallest eigenvalues (at least one)."""
    check_range("null_space_fraction", fraction, 0, 1, low_open=True)
    _, vectors = torch.linalg.eigh(second_moment.double())
    kept = max(1, int(round(fraction * second_moment.shape[0])))
    basis = vectors[:, :kept]
    return basis @ basis.T


def memit_directions(weighted_moment: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """``X = (A + K K^T)^{-1} K`` for ``A = lambda C`` [d_in, d_in] and keys ``K`` [d_in, n]."""
    k = keys.double()
    return torch.linalg.solve(weighted_moment.double() + k @ k.T, k)


def alphaedit_directions(projector: torch.Tensor, past_gram: torch.Tensor, keys: torch.Tensor,
                         l2: float) -> torch.Tensor:
    """``X = (P (K K^T + G) + l2 I)^{-1} P K`` for the projector ``P``, the Gram matrix ``G`` of earlier
    edits' keys and keys ``K`` [d_in, n]."""
    k = keys.double()
    p = projector.double()
    system = p @ (k @ k.T + past_gram.double()) + l2 * torch.eye(p.shape[0], dtype=torch.float64, device=p.device)
    return torch.linalg.solve(system, p @ k)


def factors(residuals: torch.Tensor, directions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``dW = R X^T`` as the environment's ``(U [n, d_out], V [n, d_in])``."""
    return residuals.T.to(dtype).contiguous(), directions.T.to(dtype).contiguous()
