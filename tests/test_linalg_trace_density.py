"""Hutchinson / Hutch++ trace estimates and stochastic Lanczos quadrature (losslab.linalg.trace,
losslab.linalg.density) against exact traces and dense eigenvalues."""

from __future__ import annotations

import json
import math

import pytest
import torch

from losslab.errors import CurvatureError
from losslab.linalg.density import SpectralDensity, spectral_density
from losslab.linalg.lanczos import lanczos_tridiagonal
from losslab.linalg.trace import TraceEstimate, hutch_plus_plus_trace, hutchinson_trace

DT = torch.float64


def symmetric(eigenvalues: torch.Tensor, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    n = len(eigenvalues)
    U, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=DT))
    A = (U * eigenvalues.to(DT)) @ U.T
    return (A + A.T) / 2


def _indefinite(n: int = 80, seed: int = 0) -> torch.Tensor:
    M = torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=DT)
    return (M + M.T) / 2 + 0.5 * torch.eye(n, dtype=DT)


def _low_rank_plus_small(n: int = 200, rank: int = 10, seed: int = 1) -> torch.Tensor:
    """A matrix whose trace is dominated by a few large eigenvalues (Hutch++'s good case)."""
    eigenvalues = torch.cat(
        [
            torch.linspace(50, 100, rank, dtype=DT),
            0.05 * torch.rand(n - rank, generator=torch.Generator().manual_seed(seed), dtype=DT),
        ]
    )
    return symmetric(eigenvalues, seed)


# ---------------------------------------------------------------- trace


@pytest.mark.parametrize("estimator", [hutchinson_trace, hutch_plus_plus_trace])
def test_trace_estimators_are_unbiased(estimator):
    A = _indefinite()
    exact = float(A.trace())
    estimates = [estimator(lambda v: A @ v, 80, 30, seed=seed) for seed in range(150)]
    values = torch.tensor([e.value for e in estimates], dtype=DT)
    spread = float(values.std())
    # the mean over seeds lies within a few standard errors of the exact trace
    assert abs(float(values.mean()) - exact) <= 4 * spread / math.sqrt(len(values))
    # the reported standard error estimates the real spread of one estimate
    reported = torch.tensor([e.std_error for e in estimates], dtype=DT)
    assert 0.6 * spread <= float(reported.mean()) <= 1.5 * spread
    assert all(e.matvecs == 30 for e in estimates)


def test_hutch_plus_plus_beats_hutchinson_on_low_rank_plus_small():
    A = _low_rank_plus_small()
    exact = float(A.trace())
    errors = {}
    for estimator in (hutchinson_trace, hutch_plus_plus_trace):
        runs = [estimator(lambda v: A @ v, 200, 60, seed=seed).value for seed in range(20)]
        errors[estimator.__name__] = math.sqrt(sum((r - exact) ** 2 for r in runs) / len(runs))
    assert errors["hutch_plus_plus_trace"] <= 0.02 * errors["hutchinson_trace"]
    result = hutch_plus_plus_trace(lambda v: A @ v, 200, 60)
    assert result.method == "hutch++"
    assert result.matvecs == 60
    assert abs(result.value - exact) <= 5 * result.std_error


@pytest.mark.parametrize("estimator", [hutchinson_trace, hutch_plus_plus_trace])
def test_exact_trace_when_budget_covers_dim(estimator):
    A = _indefinite(40)
    result = estimator(lambda v: A @ v, 40, 40)
    assert result.method == "exact"
    assert result.std_error == 0.0
    assert result.matvecs == 40
    assert result.value == pytest.approx(float(A.trace()), rel=0, abs=1e-12)
    json.dumps(result.to_dict())
    assert isinstance(result, TraceEstimate)


def test_small_budgets():
    A = _indefinite(40)
    one = hutchinson_trace(lambda v: A @ v, 40, 1)
    assert math.isnan(one.std_error)
    assert one.matvecs == 1
    two = hutch_plus_plus_trace(lambda v: A @ v, 40, 2)  # no sketch: plain Hutchinson
    assert two.matvecs == 2
    assert math.isfinite(two.std_error)
    four = hutch_plus_plus_trace(lambda v: A @ v, 40, 4)  # sketch 1, exact 1, probes 2
    assert four.matvecs == 4
    assert (one.samples, two.samples, four.samples) == (1, 2, 2)
    assert hutch_plus_plus_trace(lambda v: A @ v, 40, 30).samples == 30 - 2 * 10
    assert hutch_plus_plus_trace(lambda v: A @ v, 40, 40).samples == 0  # exact


def test_trace_validation():
    A = _indefinite(40)
    for estimator in (hutchinson_trace, hutch_plus_plus_trace):
        with pytest.raises(CurvatureError, match="dim must be a positive integer"):
            estimator(lambda v: A @ v, 0, 10)
        with pytest.raises(CurvatureError, match="n_matvecs must be an integer >= 1"):
            estimator(lambda v: A @ v, 40, 0)
        with pytest.raises(CurvatureError, match="NaN or inf"):
            estimator(lambda v: v * float("nan"), 40, 10)
        with pytest.raises(CurvatureError, match="dtype must be a real floating"):
            estimator(lambda v: A @ v, 40, 10, dtype=torch.int32)


def test_trace_float32():
    A = _low_rank_plus_small()
    A32 = A.float()
    result = hutch_plus_plus_trace(lambda v: A32 @ v, 200, 60, dtype=torch.float32)
    assert abs(result.value - float(A.trace())) <= 5 * result.std_error + 1e-3


# ---------------------------------------------------------------- density


def test_full_lanczos_nodes_are_the_eigenvalues():
    eigenvalues = torch.linspace(-2, 3, 60, dtype=DT)
    A = symmetric(eigenvalues, seed=3)
    seen = []  # Lanczos's first product is with the (normalised) probe q

    def matvec(v: torch.Tensor) -> torch.Tensor:
        seen.append(v.clone())
        return A @ v

    density = spectral_density(matvec, 60, n_steps=60, n_vectors=1, sigma=0.05)
    assert density.nodes.shape == (1, 60)
    torch.testing.assert_close(density.nodes[0], eigenvalues, rtol=0, atol=1e-8)
    # the weights are q's squared coordinates in A's eigenbasis, from a dense eigh
    values, vectors = torch.linalg.eigh(A)
    probe = seen[0] / seen[0].norm()
    expected = (vectors.T @ probe) ** 2
    torch.testing.assert_close(density.weights[0], expected, rtol=0, atol=1e-8)
    # and the curve is their Gaussian mixture on the grid
    z = (density.grid[:, None] - values[None, :]) / 0.05
    mixture = (torch.exp(-0.5 * z**2) * expected).sum(dim=1) / (0.05 * math.sqrt(2 * math.pi))
    torch.testing.assert_close(density.curve, mixture, rtol=0, atol=1e-8)
    assert density.matvecs == 60
    # n_steps above dim is capped
    capped = spectral_density(lambda v: A @ v, 60, n_steps=500)
    assert capped.nodes.shape == (1, 60)


def test_gauss_quadrature_is_exact_for_low_degree_polynomials():
    """sum_j tau_j theta_j^p == q^T A^p q for p < 2m (Golub & Meurant)."""
    A = _indefinite(80)
    q = torch.randn(80, generator=torch.Generator().manual_seed(2), dtype=DT)
    q = q / q.norm()
    m = 6
    alphas, betas, _ = lanczos_tridiagonal(lambda v: A @ v, 80, m, start=q)
    T = torch.diag(alphas) + torch.diag(betas, 1) + torch.diag(betas, -1)
    theta, U = torch.linalg.eigh(T)
    tau = U[0] ** 2
    power = q.clone()
    for p in range(2 * m):
        quadrature = float((tau * theta**p).sum())
        assert quadrature == pytest.approx(float(q @ power), rel=1e-9, abs=1e-9)
        power = A @ power


def test_moments_estimate_normalised_traces():
    A = _indefinite(100, seed=4)
    density = spectral_density(lambda v: A @ v, 100, n_steps=12, n_vectors=200, seed=5)
    assert density.matvecs == 200 * 12
    for p in (1, 2):
        exact = float(torch.linalg.matrix_power(A, p).trace()) / 100
        per_probe = (density.weights * density.nodes**p).sum(dim=1)
        standard_error = float(per_probe.std()) / math.sqrt(per_probe.shape[0])
        assert density.moments(p) == pytest.approx(float(per_probe.mean()))
        assert abs(density.moments(p) - exact) <= 4 * standard_error
    assert density.moments(0) == pytest.approx(1.0)


def test_curve_is_a_density():
    A = _low_rank_plus_small(150)
    density = spectral_density(lambda v: A @ v, 150, n_steps=40, n_vectors=3, seed=1)
    area = float(torch.trapezoid(density.curve, density.grid))
    assert abs(area - 1.0) <= 1e-3
    assert bool((density.curve >= 0).all())
    assert density.grid.shape == density.curve.shape == (1000,)
    assert float(density.grid[0]) < float(density.nodes.min())
    assert float(density.grid[-1]) > float(density.nodes.max())
    spread = float(density.nodes.max() - density.nodes.min())
    assert density.sigma == pytest.approx(0.01 * spread)
    narrow = spectral_density(lambda v: A @ v, 150, n_steps=40, sigma=0.5, grid_size=4000)
    assert narrow.sigma == 0.5
    assert abs(float(torch.trapezoid(narrow.curve, narrow.grid)) - 1.0) <= 1e-3
    data = density.to_dict()
    json.dumps(data)
    assert isinstance(density, SpectralDensity)


@pytest.mark.parametrize("sigma", [1e-2, 1e-3])
def test_a_narrow_sigma_gets_a_grid_that_resolves_it(sigma):
    # 1000 points at spacing 0.1 once held Gaussians of width 1e-3: integral 0.07. The
    # default grid now spaces points by sigma / 4; its curve integrates to one, and its
    # peaks are the mixture's own heights (from the nodes and weights, by hand).
    A = _low_rank_plus_small(150)
    density = spectral_density(lambda v: A @ v, 150, n_steps=40, sigma=sigma)
    spacing = float(density.grid[1] - density.grid[0])
    assert spacing <= sigma / 4 + 1e-15
    assert float(torch.trapezoid(density.curve, density.grid)) == pytest.approx(1.0, abs=1e-6)
    nodes, weights = density.nodes.flatten(), density.weights.flatten()
    gaps = (nodes[:, None] - nodes[None, :]) / sigma
    at_nodes = (weights[None, :] * torch.exp(-0.5 * gaps**2)).sum(1) / (
        sigma * math.sqrt(2 * math.pi)
    )
    at_nodes = at_nodes / density.nodes.shape[0]  # the mean over probes
    assert float(density.curve.max()) == pytest.approx(float(at_nodes.max()), rel=0.01)
    with pytest.raises(CurvatureError, match="more than sigma"):
        spectral_density(lambda v: A @ v, 150, n_steps=40, sigma=sigma, grid_size=1000)
    with pytest.raises(CurvatureError, match="too small"):
        spectral_density(lambda v: A @ v, 150, n_steps=40, sigma=1e-9)


def test_the_smallest_sigma_a_refusal_suggests_is_accepted(monkeypatch):
    import re

    import losslab.linalg.density as density_module

    monkeypatch.setattr(density_module, "MAX_GRID_SIZE", 10_000)
    A = _low_rank_plus_small(150)
    with pytest.raises(CurvatureError, match="too small") as refused:
        spectral_density(lambda v: A @ v, 150, n_steps=40, sigma=1e-6)
    suggested = float(re.search(r"sigma >= ([0-9.e+-]+)", str(refused.value)).group(1))
    density = spectral_density(lambda v: A @ v, 150, n_steps=40, sigma=suggested)
    assert 9_000 < density.grid.shape[0] <= 10_000


def test_invariant_krylov_space_pads_nodes():
    """Three distinct eigenvalues: Lanczos stops after three steps, exactly."""
    eigenvalues = torch.tensor([1.0] * 20 + [2.0] * 20 + [4.0] * 20, dtype=DT)
    A = symmetric(eigenvalues, seed=6)
    density = spectral_density(lambda v: A @ v, 60, n_steps=10, n_vectors=4)
    assert density.matvecs == 4 * 3
    assert density.nodes.shape == (4, 10)
    assert bool((density.weights[:, 3:] == 0).all())
    torch.testing.assert_close(
        density.nodes[:, :3], torch.tensor([[1.0, 2.0, 4.0]] * 4, dtype=DT), rtol=0, atol=1e-10
    )
    torch.testing.assert_close(density.weights.sum(dim=1), torch.ones(4, dtype=DT))
    assert abs(float(torch.trapezoid(density.curve, density.grid)) - 1.0) <= 1e-3


def test_density_float32_probes():
    eigenvalues = torch.linspace(-1, 2, 50, dtype=DT)
    A32 = symmetric(eigenvalues, seed=8).float()
    density = spectral_density(lambda v: A32 @ v, 50, n_steps=50, dtype=torch.float32)
    assert density.nodes.dtype == DT  # the small results are float64 on the CPU
    torch.testing.assert_close(density.nodes[0], eigenvalues, rtol=0, atol=1e-4)


def test_density_validation():
    A = _indefinite(30)
    bad = [
        ({"n_steps": 0}, "n_steps must be an integer >= 1"),
        ({"n_vectors": 0}, "n_vectors must be an integer >= 1"),
        ({"sigma": 0.0}, "sigma must be a positive finite"),
        ({"sigma": float("inf")}, "sigma must be a positive finite"),
        ({"grid_size": 1}, "grid_size must be an integer >= 2"),
        ({"dtype": torch.int64}, "dtype must be a real floating"),
    ]
    for kwargs, message in bad:
        with pytest.raises(CurvatureError, match=message):
            spectral_density(lambda v: A @ v, 30, **kwargs)
    with pytest.raises(CurvatureError, match="NaN or inf"):
        spectral_density(lambda v: v * float("nan"), 30)
