r"""The trace of a symmetric operator seen only through products: Hutchinson and Hutch++.

**Hutchinson** (1989). For random ``z`` with ``E[z z^T] = I``, ``E[z^T A z] = tr A``. With
Rademacher probes (independent ``+-1`` entries) the variance of one sample is
``2 (||A||_F^2 - sum_i A_ii^2)``, the smallest among such probes; ``n`` products give

.. math::  \widehat{\mathrm{tr}}_H = \frac1n \sum_{i=1}^n z_i^T A z_i,
           \qquad \mathrm{SE} \approx \frac{s}{\sqrt n},

``s`` the sample standard deviation of the ``z_i^T A z_i``.

**Hutch++** (Meyer, Musco, Musco & Woodruff 2021, "Hutch++: Optimal stochastic trace
estimation", SOSA, Algorithm 1). With ``n`` products: ``s = floor(n/3)`` of them sketch the
range, ``Q = orth(A S)`` for a Rademacher ``S`` (dim x s); ``s`` more give the trace on that
range exactly, ``tr(Q^T A Q)``; the remaining ``n - 2 s`` run Hutchinson on the complement:

.. math::  \widehat{\mathrm{tr}} = \mathrm{tr}(Q^T A Q) + \frac{1}{n - 2s}
           \sum_i g_i^T (I - Q Q^T) A (I - Q Q^T) g_i .

The top of the spectrum is taken exactly, so the error is ``O(1/n)`` rather than
``O(1/sqrt n)`` for matrices with decaying spectra (Hessians of trained networks). The
reported standard error is that of the Hutchinson part (the sketch part has no sampling
variance given ``Q``), from its ``n - 2 floor(n/3)`` samples (``samples``). Their quadratic
forms are skewed (the remainder's spectrum is a tail), so ``value +- 1.96 std_error``
covers the trace less often than 95%: over 400 seeds on a ``1/i`` spectrum
(``benchmarks/bench_trace_coverage.py``), 82% at ``n = 10`` (4 samples), 92% at
``n = 30`` and 90% at ``n = 100``, where plain Hutchinson's covers 89%, 92% and 95%.
Widen it with a t quantile on ``samples - 1`` degrees of freedom, or spend more
products. With ``n < 3`` there is no sketch and Hutch++ is Hutchinson.

**Exact.** With ``n >= dim`` products, ``tr A = sum_i e_i^T A e_i`` is computed with the
``dim`` basis vectors instead (``method="exact"``, ``std_error = 0``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch

from losslab.linalg.lanczos import (
    CountingMatvec,
    Matvec,
    check_count,
    check_dim,
    check_dtype,
    make_generator,
)


@dataclass(frozen=True)
class TraceEstimate:
    """An estimate of ``tr A``.

    Attributes:
        value: the estimate.
        std_error: estimated standard error of ``value`` (``0`` when exact, NaN when it
            cannot be estimated: fewer than two Hutchinson samples).
        matvecs: products with ``A`` used.
        method: ``"hutchinson"``, ``"hutch++"`` or ``"exact"``.
        seconds: wall time.
        samples: the Hutchinson samples behind ``std_error`` (0 when exact).
    """

    value: float
    std_error: float
    matvecs: int
    method: str
    seconds: float
    samples: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "std_error": self.std_error,
            "matvecs": self.matvecs,
            "method": self.method,
            "seconds": self.seconds,
            "samples": self.samples,
        }


def rademacher(
    dim: int, generator: torch.Generator, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """A (dim,) vector of independent ``+-1`` entries (drawn on the CPU, then moved)."""
    signs = torch.randint(0, 2, (dim,), generator=generator, dtype=torch.int64)
    return (2 * signs - 1).to(dtype=dtype, device=device)


def _exact_trace(op: CountingMatvec, dim: int) -> float:
    total = 0.0
    basis = torch.zeros(dim, dtype=op.dtype, device=op.device)
    for i in range(dim):
        basis[i] = 1
        total += float(op(basis)[i])
        basis[i] = 0
    return total


def _mean_and_error(samples: list[float]) -> tuple[float, float]:
    n = len(samples)
    mean = math.fsum(samples) / n
    if n < 2:
        return mean, math.nan
    variance = math.fsum((x - mean) ** 2 for x in samples) / (n - 1)
    return mean, math.sqrt(variance / n)


def _setup(
    matvec: Matvec,
    dim: int,
    n_matvecs: int,
    seed: int,
    dtype: torch.dtype,
    device: torch.device | str | None,
) -> tuple[CountingMatvec, torch.Generator, int]:
    dim = check_dim(dim)
    n_matvecs = check_count(n_matvecs, "n_matvecs")
    dtype = check_dtype(dtype)
    resolved = torch.device(device) if device is not None else torch.device("cpu")
    return CountingMatvec(matvec, dim, dtype, resolved), make_generator(seed), n_matvecs


def hutchinson_trace(
    matvec: Matvec,
    dim: int,
    n_matvecs: int = 100,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> TraceEstimate:
    r"""``tr A`` by Hutchinson's estimator with ``n_matvecs`` Rademacher probes (module doc).

    Args:
        matvec: ``v -> A v``, (dim,) -> (dim,) (``A`` symmetric or not: only
            ``z^T A z`` is used).
        dim: the size of ``A``.
        n_matvecs: products to spend (>= 1); ``>= dim`` computes the exact trace.
        seed: seeds the probes.
        dtype, device: of the probes.

    Returns:
        :class:`TraceEstimate` with ``std_error = s / sqrt(n)`` (NaN for one probe).
    """
    started = time.perf_counter()
    op, generator, n_matvecs = _setup(matvec, dim, n_matvecs, seed, dtype, device)
    if n_matvecs >= dim:
        value = _exact_trace(op, dim)
        return TraceEstimate(value, 0.0, op.count, "exact", time.perf_counter() - started)
    samples = []
    for _ in range(n_matvecs):
        z = rademacher(dim, generator, op.dtype, op.device)
        samples.append(float(z @ op(z)))
    value, error = _mean_and_error(samples)
    elapsed = time.perf_counter() - started
    return TraceEstimate(value, error, op.count, "hutchinson", elapsed, len(samples))


def hutch_plus_plus_trace(
    matvec: Matvec,
    dim: int,
    n_matvecs: int = 100,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> TraceEstimate:
    r"""``tr A`` by Hutch++ (Meyer et al. 2021) with ``n_matvecs`` products (module doc).

    ``floor(n/3)`` products sketch the range of ``A``, as many give the exact trace on it,
    the rest (``>= n/3``) run Hutchinson on its orthogonal complement.

    Args:
        matvec: ``v -> A v`` for a symmetric ``A``, (dim,) -> (dim,).
        dim: the size of ``A``.
        n_matvecs: products to spend (>= 1); ``>= dim`` computes the exact trace.
        seed: seeds the sketch and the probes.
        dtype, device: of the probes.

    Returns:
        :class:`TraceEstimate`; ``std_error`` is the standard error of the Hutchinson part
        (NaN with fewer than two probes there; its normal interval covers less than 95%:
        module doc).
    """
    started = time.perf_counter()
    op, generator, n_matvecs = _setup(matvec, dim, n_matvecs, seed, dtype, device)
    if n_matvecs >= dim:
        value = _exact_trace(op, dim)
        return TraceEstimate(value, 0.0, op.count, "exact", time.perf_counter() - started)
    sketch = n_matvecs // 3
    exact_part = 0.0
    Q = torch.zeros(dim, 0, dtype=op.dtype, device=op.device)
    if sketch:
        AS = torch.stack(
            [op(rademacher(dim, generator, op.dtype, op.device)) for _ in range(sketch)], dim=1
        )
        Q = torch.linalg.qr(AS, mode="reduced").Q
        exact_part = math.fsum(float(Q[:, i] @ op(Q[:, i])) for i in range(sketch))
    samples = []
    for _ in range(n_matvecs - 2 * sketch):
        g = rademacher(dim, generator, op.dtype, op.device)
        for _ in range(2):  # project out range(Q) twice: the rounding of one pass is kept small
            g = g - Q @ (Q.T @ g)
        samples.append(float(g @ op(g)))
    rest, error = _mean_and_error(samples)
    elapsed = time.perf_counter() - started
    return TraceEstimate(exact_part + rest, error, op.count, "hutch++", elapsed, len(samples))
