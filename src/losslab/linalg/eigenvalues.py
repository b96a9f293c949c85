r"""Eigenvalues of batches of general (non-symmetric) matrices, robust to extreme scales.

LAPACK's QR algorithm (``geev``, behind ``torch.linalg.eigvals``) fails to converge on
matrices whose entries are subnormal or span hundreds of orders of magnitude: the
Jacobian of a saturated sigmoid net at a fixed point in a corner of the box has rows of
``1e-275`` next to rows of ``1e-315``. :func:`general_eigenvalues` divides each matrix by
its largest entry ``s`` (the eigenvalues scale with it) and sets the entries below
``eps`` of the scaled matrix to zero, a perturbation ``E`` with ``||E||_2 <= N eps`` that
moves no eigenvalue farther than the condition of its eigenvector basis times ``N eps s``
(Bauer-Fike), and removes the subnormals; the eigenvalues are those of the result,
times ``s``.
"""

from __future__ import annotations

import torch


def general_eigenvalues(matrices: torch.Tensor) -> torch.Tensor:
    """Complex eigenvalues of each (..., N, N) matrix (module doc), as ``torch.linalg.eigvals``.

    Raises:
        ValueError: the matrices are not square or hold NaN / inf.
    """
    if matrices.ndim < 2 or matrices.shape[-1] != matrices.shape[-2]:
        raise ValueError(f"expected square matrices (..., N, N); got {tuple(matrices.shape)}")
    if not bool(torch.isfinite(matrices).all()):
        raise ValueError("the matrices hold NaN or inf: their eigenvalues are undefined")
    if matrices.numel() == 0:
        return torch.linalg.eigvals(matrices)
    scale = matrices.abs().amax(dim=(-2, -1), keepdim=True)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    scaled = matrices / scale
    eps = torch.finfo(matrices.dtype).eps
    scaled = torch.where(scaled.abs() < eps, torch.zeros_like(scaled), scaled)
    return torch.linalg.eigvals(scaled) * scale.squeeze(-1)
