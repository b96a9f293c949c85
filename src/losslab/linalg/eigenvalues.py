r"""Eigenvalues of batches of general (non-symmetric) matrices, robust to extreme scales.

LAPACK's QR algorithm (``geev``, behind ``torch.linalg.eigvals``) balances each matrix and
is accurate on badly scaled ones, but it fails to converge on matrices whose entries are
all tiny: the Jacobian of a saturated sigmoid net at a fixed point in a corner of the
box has rows of ``1e-218`` next to subnormal rows of ``1e-315``. :func:`general_eigenvalues`
calls ``eigvals`` as it is, and only when that fails divides each matrix by a power of two
``2^e`` near its largest entry (exact in floating point: the eigenvalues are those of the
scaled matrix times ``2^e``) and sets the entries of the scaled matrix that are still
subnormal (below ``finfo.tiny``) to zero. That perturbation ``E`` has
``||E||_2 <= N tiny``; for a diagonalisable matrix ``V Lambda V^{-1}`` it moves no
eigenvalue farther than ``cond(V) N tiny 2^e`` (Bauer-Fike), and in general no farther
than about ``(N tiny)^{1/m} 2^e`` for a Jordan block of size ``m``.
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
    try:
        return torch.linalg.eigvals(matrices)
    except torch.linalg.LinAlgError:
        pass
    largest = matrices.abs().amax(dim=(-2, -1), keepdim=True)  # real, also for complex input
    power = torch.ldexp(torch.ones_like(largest), torch.frexp(largest).exponent)  # 1 for 0
    scaled = matrices / power  # exact: a power of two
    tiny = torch.finfo(scaled.dtype).tiny
    scaled = torch.where(scaled.abs() < tiny, torch.zeros_like(scaled), scaled)
    return torch.linalg.eigvals(scaled) * power.squeeze(-1)
