r"""Eigenvalues of batches of general (non-symmetric) matrices, robust to extreme scales.

LAPACK's QR algorithm (``geev``, behind ``torch.linalg.eigvals``) balances each matrix and
is accurate on badly scaled ones, but it can fail to converge on the Jacobians of
saturated sigmoid nets at fixed points in corners of the box: rank-one matrices whose
rows run from ``1e-150`` down to ``1e-320`` (on about a third of such random matrices,
with and without subnormal entries). :func:`general_eigenvalues` calls ``eigvals`` as it
is, and only for a batch on which it fails:

1. divides each matrix by a power of two ``2^e`` with its largest modulus in ``[1, 2)``
   (exact in floating point; the eigenvalues are those of the scaled matrix times
   ``2^e``), sets entries of modulus below ``finfo.tiny`` to zero (``||E||_2 <= N tiny``)
   and calls ``eigvals`` again;
2. if that fails too, sets the entries of modulus below ``eps`` of the scaled matrix to
   zero, a perturbation ``||E||_2 <= 2 N eps`` relative to the matrix's largest entry
   ``~2^e``.

For a diagonalisable matrix ``V Lambda V^{-1}`` a perturbation ``E`` moves no eigenvalue
farther than ``cond(V) ||E||_2`` (Bauer-Fike); for a Jordan block of size ``m`` about
``||E||_2^{1/m}``. Step 2 costs the balancing its accuracy on the few matrices that need it.
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
    # 2^(e - 1) with largest = m 2^e, m in [0.5, 1): finite even for largest near 2^1024
    power = torch.ldexp(torch.ones_like(largest), torch.frexp(largest).exponent - 1)
    scaled = matrices / power  # exact: a power of two
    finfo = torch.finfo(largest.dtype)
    scaled = torch.where(scaled.abs() < finfo.tiny, torch.zeros_like(scaled), scaled)
    try:
        return torch.linalg.eigvals(scaled) * power.squeeze(-1)
    except torch.linalg.LinAlgError:
        pass
    scaled = torch.where(scaled.abs() < finfo.eps, torch.zeros_like(scaled), scaled)
    return torch.linalg.eigvals(scaled) * power.squeeze(-1)
