r"""The spectral density of a symmetric operator by stochastic Lanczos quadrature (SLQ).

The (normalised) spectral density of a symmetric ``A`` (``dim x dim``, eigenvalues
``lambda_i``) is ``phi(t) = (1/dim) sum_i delta(t - lambda_i)``, and for a smooth ``f``

.. math::  \int f\, d\phi = \frac{1}{dim} \mathrm{tr} f(A) = E_v[v^T f(A) v]

for a random unit ``v`` with ``E[v v^T] = I / dim`` (here Rademacher ``+-1`` entries divided
by ``sqrt(dim)``). ``m`` steps of Lanczos from ``v`` give ``T_m = U diag(theta) U^T``, and
the ``m``-node Gauss quadrature of the measure ``mu_v = sum_i (v^T u_i)^2 delta_{lambda_i}``:

.. math::  v^T f(A) v \approx \sum_{j=1}^m \tau_j f(\theta_j), \qquad \tau_j = U_{0j}^2,

exact for polynomials of degree ``< 2m`` (Golub & Meurant 2010). Averaging over
``n_vectors`` probes estimates ``phi`` by discrete measures, smoothed here with a Gaussian of
width ``sigma``:

.. math::  \hat\phi(t) = \frac{1}{n_v} \sum_{l=1}^{n_v} \sum_{j=1}^m \tau_j^{(l)}
           \frac{1}{\sigma\sqrt{2\pi}} e^{-(t - \theta^{(l)}_j)^2 / (2\sigma^2)}.

References: Lin, Saad & Yang 2016, "Approximating spectral densities of large matrices",
SIAM Review 58 (Sec. 3.2); Ghorbani, Krishnan & Xiao 2019, "An investigation into neural
net optimization via Hessian eigenvalue density", ICML (Sec. 2-3).

**Defaults.** ``sigma = (theta_max - theta_min) / 100``: one percent of the spread of all
Ritz nodes (if the nodes coincide, one percent of their magnitude, else ``1``). The grid
holds ``grid_size`` equispaced points on ``[theta_min - 5 sigma, theta_max + 5 sigma]``, by
default ``max(1000, 4 (span / sigma) + 1)`` of them (spacing at most ``sigma / 4``: peaks
within 1% of their height; with the default ``sigma`` it is ``~0.11 sigma``), so the curve
integrates to one up to ``~1e-6`` (Gaussian tails; the trapezoid rule on a Gaussian is
exact to ``exp(-2 pi^2 sigma^2 / h^2)`` for spacing ``h``). A grid whose spacing exceeds
``sigma`` (a small ``sigma`` with an explicit ``grid_size``, or one that would need more
than ``MAX_GRID_SIZE`` points) undersamples the peaks and is refused.

**Cost.** ``n_vectors * min(n_steps, dim)`` products; memory ``n_steps`` vectors (full
reorthogonalisation, :func:`~losslab.linalg.lanczos.lanczos_tridiagonal`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch

from losslab.errors import CurvatureError
from losslab.linalg.lanczos import (
    Matvec,
    check_count,
    check_dim,
    check_dtype,
    lanczos_tridiagonal,
    make_generator,
)
from losslab.linalg.trace import rademacher

#: the default ``sigma`` as a fraction of the spread of the Ritz nodes.
SIGMA_FRACTION = 0.01
#: the grid extends this many ``sigma`` beyond the extreme nodes.
GRID_PAD = 5.0
#: the default grid has at least this many points, and spacing at most ``sigma / 4``.
MIN_GRID_SIZE = 1000
#: the most points of a default grid.
MAX_GRID_SIZE = 1_000_000


@dataclass(frozen=True)
class SpectralDensity:
    """Stochastic Lanczos quadrature of ``phi(t) = (1/dim) sum_i delta(t - lambda_i)``.

    All tensors are float64 on the CPU.

    Attributes:
        nodes: (n_vectors, n_steps) Ritz values ``theta_j`` per probe, ascending. A probe
            whose Krylov space became invariant after ``m < n_steps`` steps has its row
            padded with its largest node at weight ``0``.
        weights: (n_vectors, n_steps) Gauss weights ``tau_j = U_{0j}^2``; each row sums to 1.
        grid: (G,) points ``t``.
        curve: (G,) the smoothed density ``phi_hat(t)`` (integrates to ~1 over the grid).
        sigma: the Gaussian width.
        matvecs: products used.
        seconds: wall time.
    """

    nodes: torch.Tensor
    weights: torch.Tensor
    grid: torch.Tensor
    curve: torch.Tensor
    sigma: float
    matvecs: int
    seconds: float

    def moments(self, p: int) -> float:
        """``(1/n_v) sum_l sum_j tau_j theta_j^p``, an estimate of ``tr(A^p) / dim`` (exact in
        expectation over the probes while ``p < 2 n_steps``)."""
        p = check_count(p, "p", minimum=0)
        return float((self.weights * self.nodes**p).sum(dim=1).mean())

    def to_dict(self) -> dict[str, Any]:
        return {
            "nodes": self.nodes.tolist(),
            "weights": self.weights.tolist(),
            "grid": self.grid.tolist(),
            "curve": self.curve.tolist(),
            "sigma": self.sigma,
            "matvecs": self.matvecs,
            "seconds": self.seconds,
        }


def gaussian_smoothing(
    nodes: torch.Tensor, weights: torch.Tensor, grid: torch.Tensor, sigma: float
) -> torch.Tensor:
    """``(1/n_v) sum_{l,j} weights[l, j] N(grid; nodes[l, j], sigma^2)``, row by row and
    in chunks of the grid (memory ``O(chunk x nodes)``, not ``O(grid x nodes)``)."""
    curve = torch.zeros_like(grid)
    norm = 1.0 / (sigma * math.sqrt(2.0 * math.pi))
    chunk = max(1, 2**22 // max(1, nodes.shape[1]))
    for row_nodes, row_weights in zip(nodes, weights, strict=True):
        for start in range(0, grid.shape[0], chunk):
            z = (grid[start : start + chunk, None] - row_nodes[None, :]) / sigma
            curve[start : start + chunk] += (torch.exp(-0.5 * z * z) * row_weights).sum(dim=1)
    return curve * (norm / nodes.shape[0])


def spectral_density(
    matvec: Matvec,
    dim: int,
    *,
    n_steps: int = 100,
    n_vectors: int = 1,
    sigma: float | None = None,
    grid_size: int | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> SpectralDensity:
    r"""The spectral density of a symmetric operator by stochastic Lanczos quadrature.

    Args:
        matvec: ``v -> A v`` for a symmetric ``A``, (dim,) -> (dim,).
        dim: the size of ``A``.
        n_steps: Lanczos steps per probe (>= 1, capped at ``dim``): the number of nodes.
        n_vectors: independent probes (>= 1); the statistical error of the moments falls
            like ``1 / sqrt(n_vectors dim)``.
        sigma: width of the Gaussian smoothing (> 0); default one percent of the spread of
            the nodes (module doc).
        grid_size: points of the grid (>= 2; default: spacing at most ``sigma / 4``, at
            least 1000 points; module doc). A spacing above ``sigma`` is refused.
        seed: seeds the probes.
        dtype, device: of the Lanczos vectors and the vectors ``matvec`` receives.

    Returns:
        :class:`SpectralDensity`.
    """
    started = time.perf_counter()
    dim = check_dim(dim)
    n_steps = min(check_count(n_steps, "n_steps"), dim)
    n_vectors = check_count(n_vectors, "n_vectors")
    if grid_size is not None:
        grid_size = check_count(grid_size, "grid_size", minimum=2)
    dtype = check_dtype(dtype)
    if sigma is not None and (
        isinstance(sigma, bool) or not isinstance(sigma, int | float) or not 0 < sigma < math.inf
    ):
        raise CurvatureError(f"sigma must be a positive finite number (or None); got {sigma!r}")
    resolved = torch.device(device) if device is not None else torch.device("cpu")
    generator = make_generator(seed)

    nodes = torch.zeros(n_vectors, n_steps, dtype=torch.float64)
    weights = torch.zeros(n_vectors, n_steps, dtype=torch.float64)
    matvecs = 0
    for row in range(n_vectors):
        probe = rademacher(dim, generator, dtype, resolved) / math.sqrt(dim)
        alphas, betas, _ = lanczos_tridiagonal(matvec, dim, n_steps, start=probe)
        m = alphas.shape[0]
        matvecs += m
        alphas64 = alphas.to(device="cpu", dtype=torch.float64)
        betas64 = betas.to(device="cpu", dtype=torch.float64)
        T = torch.diag(alphas64) + torch.diag(betas64, 1) + torch.diag(betas64, -1)
        theta, U = torch.linalg.eigh(T)
        tau = U[0] ** 2
        nodes[row, :m] = theta
        nodes[row, m:] = theta[-1]
        weights[row, :m] = tau / tau.sum()

    low, high = float(nodes.min()), float(nodes.max())
    if sigma is None:
        spread = high - low
        if spread <= 0.0:
            spread = max(abs(low), abs(high)) or 1.0
        sigma = SIGMA_FRACTION * spread
    sigma = float(sigma)
    span = high - low + 2 * GRID_PAD * sigma
    if grid_size is None:
        grid_size = max(MIN_GRID_SIZE, math.ceil(4 * span / sigma) + 1)
        if grid_size > MAX_GRID_SIZE:
            # 4 ((high - low) / sigma + 2 GRID_PAD) + 1 <= MAX_GRID_SIZE, with 1% to spare
            smallest = 1.01 * (high - low) / ((MAX_GRID_SIZE - 1) / 4 - 2 * GRID_PAD)
            raise CurvatureError(
                f"sigma = {sigma:.3g} is too small for nodes spread over {high - low:.3g}: a "
                f"grid resolving it needs {grid_size} points (over {MAX_GRID_SIZE}); choose "
                f"sigma >= {smallest:.3g}, or use the nodes and weights alone"
            )
    if span / (grid_size - 1) > sigma:
        raise CurvatureError(
            f"grid_size = {grid_size} spaces the grid by {span / (grid_size - 1):.3g}, more "
            f"than sigma = {sigma:.3g}: the curve would miss its peaks. Use grid_size >= "
            f"{math.ceil(span / sigma) + 1}, or leave it None"
        )
    grid = torch.linspace(
        low - GRID_PAD * sigma, high + GRID_PAD * sigma, grid_size, dtype=torch.float64
    )
    curve = gaussian_smoothing(nodes, weights, grid, sigma)
    return SpectralDensity(
        nodes=nodes,
        weights=weights,
        grid=grid,
        curve=curve,
        sigma=sigma,
        matvecs=matvecs,
        seconds=time.perf_counter() - started,
    )
