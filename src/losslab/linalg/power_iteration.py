r"""Power iteration with deflation: the baseline for matrix-free eigenpairs (PyHessian-style).

For a symmetric ``A`` given as ``matvec(v) = A v``, pair ``i`` is found by power iteration
on ``A`` restricted to the orthogonal complement of the pairs already found
``V = [v_1, ..., v_{i-1}]`` (Yao, Gholami, Keutzer & Mahoney 2020, "PyHessian: Neural
networks through the lens of the Hessian", Alg. 1, with the deflation made explicit):

.. math::  w = A v, \qquad \rho = v^T w, \qquad
           v \leftarrow \frac{(I - V V^T)\, w}{||(I - V V^T)\, w||},

with ``v`` orthogonal to ``V`` and of unit length throughout. ``rho`` is the Rayleigh
quotient of ``v``; the pair ``(rho, v)`` is accepted when its residual, available from the
product already taken,

.. math::  ||A v - \rho v||_2 \le \mathrm{tol}\, \max_i |\rho_i|,

i.e. ``tol`` is relative to the largest eigenvalue found (the scale of
:func:`~losslab.linalg.lanczos.lanczos_eigenpairs`, so the two are compared at the same
accuracy). The test uses the residual of the
*deflated* operator, ``||(I - V V^T) A v - rho v||``: the earlier pairs are only accurate to
their own tolerance, and ``A v`` keeps components of size ``~ tol lambda_1`` along them, which
the full residual ``||A v - rho v||`` (reported in ``Eigenpairs.residuals``) cannot drop
below, however long one iterates (it can thus exceed the tolerance for later pairs). One
product per iteration, nothing more.

Power iteration converges to the eigenvalue of largest **magnitude** (here: of the deflated
operator), so the pairs come out in decreasing ``|lambda|``, negative ones included; the
residual falls like ``|lambda_{i+1} / lambda_i|^t``, slowly for close eigenvalues, which is
why Lanczos (:func:`~losslab.linalg.lanczos.lanczos_eigenpairs`) needs far fewer products.
"""

from __future__ import annotations

import math
import time

import torch

from losslab.errors import CurvatureError
from losslab.linalg.lanczos import (
    CountingMatvec,
    Eigenpairs,
    Matvec,
    check_count,
    check_dim,
    check_dtype,
    make_generator,
    normalize_signs,
)


def _project_out(vectors: list[torch.Tensor], w: torch.Tensor) -> torch.Tensor:
    """``(I - V V^T) w``, twice (classical Gram-Schmidt with reorthogonalisation)."""
    if not vectors:
        return w
    V = torch.stack(vectors, dim=1)
    for _ in range(2):
        w = w - V @ (V.T @ w)
    return w


def power_iteration_eigenpairs(
    matvec: Matvec,
    dim: int,
    k: int = 1,
    *,
    tol: float = 1e-6,
    max_iter: int = 1000,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> Eigenpairs:
    r"""The ``k`` eigenpairs of largest magnitude by power iteration with deflation (module doc).

    Args:
        matvec: ``v -> A v`` for a symmetric ``A``, (dim,) -> (dim,).
        dim: the size of ``A``.
        k: how many pairs (``1 <= k <= dim``).
        tol: a pair stops when ``||(I - V V^T) A v - rho v|| <= tol max_i |rho_i|`` (relative
            to the largest eigenvalue found, the scale :func:`lanczos_eigenpairs` uses; > 0).
        max_iter: most iterations (products) per pair; a pair that does not meet ``tol`` is
            kept as it is and the next pair starts (``converged=False, reason="max_iter"``).
        seed: seeds the random start of each pair.
        dtype, device: of the iterates.

    Returns:
        :class:`~losslab.linalg.lanczos.Eigenpairs` in the order found (decreasing
        ``|lambda|``); ``residuals`` are the full ``||A v - rho v||`` from the last product
        (explicit), ``iterations == matvecs``.
    """
    started = time.perf_counter()
    dim = check_dim(dim)
    k = check_count(k, "k")
    if k > dim:
        raise CurvatureError(
            f"k = {k} eigenpairs were asked of a {dim}-dimensional operator: ask for k <= {dim}"
        )
    if isinstance(tol, bool) or not isinstance(tol, int | float) or not 0 < tol < math.inf:
        raise CurvatureError(f"tol must be a positive finite number (relative); got {tol!r}")
    max_iter = check_count(max_iter, "max_iter")
    dtype = check_dtype(dtype)
    device = torch.device(device) if device is not None else torch.device("cpu")
    op = CountingMatvec(matvec, dim, dtype, device)
    generator = make_generator(seed)

    def fresh() -> torch.Tensor:
        draw = torch.randn(dim, generator=generator, dtype=torch.float64)
        v = _project_out(vectors, draw.to(dtype=dtype, device=device))
        return v / torch.linalg.vector_norm(v)

    vectors: list[torch.Tensor] = []
    values: list[float] = []
    residuals: list[float] = []
    all_converged = True
    scale = 0.0  # max |rho| so far: the same relative scale as lanczos_eigenpairs' tol
    for _ in range(k):
        v = fresh()
        rho, residual, done = 0.0, math.inf, False
        for iteration in range(max_iter):
            w = op(v)
            rho = float(v @ w)
            residual = float(torch.linalg.vector_norm(w - rho * v))
            w = _project_out(vectors, w)
            deflated = float(torch.linalg.vector_norm(w - rho * v))
            if deflated <= tol * max(scale, abs(rho)):
                done = True
                break
            norm = float(torch.linalg.vector_norm(w))
            if norm == 0:  # A v in span(V) (v in the deflated null space): restart
                v = fresh()
                continue
            if iteration + 1 < max_iter:
                v = w / norm  # (on the last iteration v stays the vector rho belongs to)
        all_converged = all_converged and done
        scale = max(scale, abs(rho))
        vectors.append(v)
        values.append(rho)
        residuals.append(residual)

    stacked = torch.stack(vectors, dim=1)
    stacked = normalize_signs(stacked)
    return Eigenpairs(
        values=torch.tensor(values, dtype=dtype, device=device),
        vectors=stacked,
        residuals=torch.tensor(residuals, dtype=dtype, device=device),
        converged=all_converged,
        reason="converged" if all_converged else "max_iter",
        matvecs=op.count,
        iterations=op.count,
        seconds=time.perf_counter() - started,
    )
