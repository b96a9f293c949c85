"""Jacobian spectra, the free-probability ESD of J J^T, and power-law tail fits (P5)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate

from losslab.errors import FixedPointError
from losslab.fixedpoints.spectra import (
    ensemble_spectrum,
    free_probability_singular_density,
    gram_eigenvalues,
    input_output_jacobian,
    jacobian_moments,
    jacobian_spectrum,
    mean_field_variances,
    power_law_alpha,
)
from losslab.nets.square import SquareNet


def explicit_jacobian(net: SquareNet, x: torch.Tensor) -> torch.Tensor:
    """``J = D_L W_L ... D_1 W_1`` by hand, ``D_l = diag(sigma'(h_l))``."""
    J = torch.eye(net.N, dtype=x.dtype)
    for W, b in net.weights():
        h = W @ x + b
        if net.activation == "sigmoid":
            s = torch.sigmoid(h)
            d, x = s * (1 - s), s
        else:
            t = torch.tanh(h)
            d, x = 1 - t**2, t
        J = d[:, None] * (W @ J)
    return J


@pytest.mark.parametrize("activation", ["sigmoid", "tanh"])
def test_jacobian_matches_explicit_product_and_finite_differences(activation):
    net = SquareNet(7, 3, activation, weight_scale=2.0, seed=3)
    points = torch.rand(4, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    jac = input_output_jacobian(net, points)
    for p in range(4):
        ref = explicit_jacobian(net, points[p])
        torch.testing.assert_close(jac[p], ref, rtol=1e-12, atol=1e-14)
        # central finite differences, column by column
        h = 1e-6
        eye = torch.eye(7, dtype=torch.float64)
        with torch.no_grad():
            fd = torch.stack(
                [
                    (net(points[p] + h * eye[j]) - net(points[p] - h * eye[j])) / (2 * h)
                    for j in range(7)
                ],
                dim=1,
            )
        torch.testing.assert_close(jac[p], fd, rtol=1e-6, atol=1e-8)


def test_spectrum_matches_dense_linear_algebra():
    net = SquareNet(9, 2, "tanh", weight_scale=1.7, seed=5)
    points = torch.rand(3, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    spec = jacobian_spectrum(net, points)
    assert spec.jacobians is not None
    for p in range(3):
        J = explicit_jacobian(net, points[p])
        ref_eig = torch.linalg.eigvals(J)
        # same multiset: every computed eigenvalue is close to a reference one and back
        dist = (spec.eigenvalues[p][:, None] - ref_eig[None, :]).abs()
        assert dist.min(dim=1).values.max() < 1e-10
        assert dist.min(dim=0).values.max() < 1e-10
        ref_sq = torch.linalg.eigvalsh(J @ J.T).flip(0)
        torch.testing.assert_close(spec.singular_values_sq[p], ref_sq, rtol=1e-9, atol=1e-13)
        assert spec.spectral_radius[p] == pytest.approx(float(ref_eig.abs().max()), rel=1e-10)
    assert torch.all(spec.eigenvalues.abs().diff(dim=1) <= 1e-15)
    summary = spec.to_dict()
    assert summary["n_points"] == 3
    assert summary["N"] == 9


def test_ensemble_spectrum_pools_nets_and_is_seeded():
    def make(seed: int) -> SquareNet:
        return SquareNet(6, 2, seed=seed)

    a = ensemble_spectrum(make, n_nets=3, n_points=4, seed=10)
    b = ensemble_spectrum(make, n_nets=3, n_points=4, seed=10)
    assert a.eigenvalues.shape == (12, 6)
    assert a.jacobians is None
    assert a.net_index is not None
    assert a.net_index.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert torch.equal(a.singular_values_sq, b.singular_values_sq)
    assert a.points.min() > 0
    assert a.points.max() < 1
    # the points of net i come from a generator seeded with seed + i
    first = jacobian_spectrum(make(10), a.points[:4])
    torch.testing.assert_close(first.singular_values_sq, a.singular_values_sq[:4])
    # supplied points: a fixed tensor or a callable of the net
    fixed = torch.full((2, 6), 0.5, dtype=torch.float64)
    c = ensemble_spectrum(make, n_nets=2, points=lambda net: fixed, keep_jacobians=True)
    assert c.jacobians is not None
    assert c.jacobians.shape == (4, 6, 6)


def test_spectrum_rejects_bad_input():
    net = SquareNet(4, 1)
    with pytest.raises(FixedPointError, match="NaN"):
        jacobian_spectrum(net, torch.tensor([[0.1, float("nan"), 0.2, 0.3]], dtype=torch.float64))
    with pytest.raises(FixedPointError, match="shape"):
        jacobian_spectrum(net, torch.zeros(2, 3, 4, dtype=torch.float64))
    with pytest.raises(FixedPointError, match="R\\^N -> R\\^N"):
        jacobian_spectrum(lambda x: x[..., :2], torch.zeros(2, 4, dtype=torch.float64))
    with pytest.raises(FixedPointError, match="n_nets"):
        ensemble_spectrum(lambda s: net, n_nets=0)
    with pytest.raises(FixedPointError, match="width"):
        ensemble_spectrum(lambda s: lambda x: x, n_nets=1)


# ------------------------------------------------------------------ free probability


def gaussian_mean(g, q: float) -> float:
    """E[g(h)], h ~ N(0, q), by adaptive quadrature (independent of the library's rule):
    ``[-50, 50]`` with a break point at 0 (where ``phi'`` lives however large ``q``), and
    the two infinite tails."""

    def integrand(h: float) -> float:
        return g(h) * math.exp(-(h**2) / (2 * q)) / math.sqrt(2 * math.pi * q)

    middle, _ = integrate.quad(integrand, -50, 50, points=[0.0], limit=500, epsabs=0, epsrel=1e-13)
    tails = [integrate.quad(integrand, a, b, epsabs=0, epsrel=1e-13)[0]
             for a, b in ((-np.inf, -50), (50, np.inf))]  # fmt: skip
    return middle + sum(tails)


def sigmoid(h: float) -> float:
    return 0.5 * (1 + math.tanh(h / 2))


def sigmoid_derivative(h: float) -> float:
    return sigmoid(h) * (1 - sigmoid(h))


def tanh_derivative(h: float) -> float:
    return 1 / math.cosh(h) ** 2 if abs(h) < 300 else 0.0


@pytest.mark.parametrize(
    ("activation", "sw", "sb", "L"),
    # moderate, and saturated: q ~ 2e3 puts phi' inside one node of a rule in h / sqrt(q)
    [("sigmoid", 2.5, 0.7, 3), ("sigmoid", 16.0, 1.0, 3), ("sigmoid", 64.0, 1.0, 2),
     ("tanh", 10.0, 0.5, 3)],
)  # fmt: skip
def test_mean_field_recursion_and_moments_match_adaptive_quadrature(activation, sw, sb, L):
    phi = sigmoid if activation == "sigmoid" else math.tanh
    dphi = sigmoid_derivative if activation == "sigmoid" else tanh_derivative
    q = [sw**2 / 3 + sb**2]
    for _ in range(L - 1):
        q.append(sw**2 * gaussian_mean(lambda h: phi(h) ** 2, q[-1]) + sb**2)
    np.testing.assert_allclose(mean_field_variances(L, activation, sw, sb), q, rtol=1e-10)
    mu1 = [gaussian_mean(lambda h: dphi(h) ** 2, ql) for ql in q]
    mu2 = [gaussian_mean(lambda h: dphi(h) ** 4, ql) for ql in q]
    m1 = math.prod(sw**2 * m for m in mu1)
    m2 = m1**2 * (1 + sum(b / a**2 for a, b in zip(mu1, mu2, strict=True)))
    got = jacobian_moments(L, activation, sw, sb)
    assert got[0] == pytest.approx(m1, rel=1e-9)
    assert got[1] == pytest.approx(m2, rel=1e-9)


def test_density_reduces_to_marchenko_pastur_and_fuss_catalan():
    # tanh with tiny weights: D ~ I, so J J^T is a product of Gaussian Wisharts
    sw = 1e-3
    one = free_probability_singular_density(1, "tanh", sw, 0.0, n_grid=400)
    x = one.grid / one.m1
    bulk = (x > 0.05) & (x < 3.9)
    mp = np.sqrt(np.clip(x * (4 - x), 0, None)) / (2 * np.pi * x) / one.m1
    np.testing.assert_allclose(one.density[bulk], mp[bulk], rtol=2e-3)
    assert one.mass == pytest.approx(1.0, abs=5e-3)
    # Fuss-Catalan moments of a product of two free Wisharts: 1, 3, 12
    two = free_probability_singular_density(2, "tanh", sw, 0.0, n_grid=800)
    for k, fc in [(1, 1.0), (2, 3.0), (3, 12.0)]:
        assert two.moment(k) / two.m1**k == pytest.approx(fc, rel=1e-2)


@pytest.mark.parametrize(
    ("L", "activation", "sw", "sb"),
    [(1, "sigmoid", 3.0, 0.5), (2, "sigmoid", 3.0, 0.5), (2, "tanh", 1.5, 0.3),
     (3, "sigmoid", 16.0, 1.0), (3, "tanh", 10.0, 0.5)],
)  # fmt: skip
def test_density_matches_monte_carlo_of_wide_gaussian_nets(L, activation, sw, sb):
    density = free_probability_singular_density(L, activation, sw, sb, n_grid=400)
    assert density.converged.all()
    if sw < 10:  # unsaturated: all the mass on the grid, the moments from the density
        assert density.mass == pytest.approx(1.0, abs=1e-2)
        assert density.moment(1) == pytest.approx(density.m1, rel=1e-2)
        assert density.moment(2) == pytest.approx(density.m2, rel=2e-2)
    N = 400
    spec = ensemble_spectrum(
        lambda s: SquareNet(N, L, activation, weight_scale=sw, bias_scale=sb, seed=s),
        n_nets=3,
        n_points=2,
        seed=0,
    )
    ev = np.sort(spec.singular_values_sq.flatten().numpy())
    if sw < 10:  # saturated nets' moments are carried by rare huge values: no MC check
        assert ev.mean() == pytest.approx(density.m1, rel=0.05)
        assert (ev**2).mean() == pytest.approx(density.m2, rel=0.08)
    # the whole distribution: Kolmogorov distance between predicted and empirical CDFs
    empirical = np.searchsorted(ev, density.grid) / ev.size
    assert np.max(np.abs(density.cdf() - empirical)) < 0.03


def test_density_rejects_bad_parameters():
    with pytest.raises(FixedPointError, match="L must"):
        free_probability_singular_density(0)
    with pytest.raises(FixedPointError, match="weight_scale"):
        free_probability_singular_density(2, weight_scale=0.0)
    with pytest.raises(FixedPointError, match="activation"):
        free_probability_singular_density(2, "relu")  # type: ignore[arg-type]
    with pytest.raises(FixedPointError, match="grid"):
        free_probability_singular_density(2, grid=np.array([0.0, 1.0]))


# ------------------------------------------------------------------ power-law tails


@pytest.mark.parametrize("alpha", [2.0, 2.7, 3.5])
def test_power_law_recovers_pareto_exponent(alpha):
    rng = np.random.default_rng(int(alpha * 10))
    x = 2.0 * (1 - rng.random(4000)) ** (-1 / (alpha - 1))  # Pareto, xmin = 2
    known = power_law_alpha(x, xmin=2.0)
    assert known.n_tail == 4000
    assert abs(known.alpha - alpha) < 3 * known.alpha_se
    assert known.alpha_se == pytest.approx((known.alpha - 1) / math.sqrt(4000))
    scanned = power_law_alpha(torch.as_tensor(x))
    assert abs(scanned.alpha - alpha) < 3 * scanned.alpha_se
    assert scanned.xmin >= 2.0
    assert scanned.ks < 0.05


def test_power_law_finds_the_tail_of_a_glued_distribution():
    rng = np.random.default_rng(7)
    body = rng.random(3000)  # uniform body on (0, 1)
    tail = (1 - rng.random(1500)) ** (-1 / 2.0)  # Pareto alpha = 3 above 1
    fit = power_law_alpha(np.concatenate([body, tail]))
    assert abs(fit.alpha - 3.0) < 3 * fit.alpha_se
    assert 0.7 < fit.xmin < 1.5
    # a fit forced over the whole body is far off
    assert abs(power_law_alpha(np.concatenate([body, tail]), xmin=0.01).alpha - 3.0) > 1.0


def test_power_law_separates_gaussian_from_cauchy_weights():
    gauss = [
        power_law_alpha(gram_eigenvalues(SquareNet(100, 1, seed=s).weights()[0][0]))
        for s in range(3)
    ]
    cauchy = [
        power_law_alpha(gram_eigenvalues(SquareNet(100, 1, init="cauchy", seed=s).weights()[0][0]))
        for s in range(3)
    ]
    # Cauchy entries: |W|^2 has tail exponent 3/2; Gaussian: no power-law tail (large alpha)
    assert all(abs(f.alpha - 1.5) < 0.3 for f in cauchy)
    assert min(f.alpha for f in gauss) > 2.5
    entries = power_law_alpha(SquareNet(100, 1, init="cauchy", seed=0).weights()[0][0].abs())
    assert abs(entries.alpha - 2.0) < 3 * entries.alpha_se + 0.05


def test_gram_eigenvalues_and_power_law_errors():
    W = torch.randn(5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(gram_eigenvalues(W), torch.linalg.eigvalsh(W.T @ W).flip(0))
    with pytest.raises(FixedPointError, match="NaN"):
        power_law_alpha(np.array([1.0, np.nan, 2.0]))
    with pytest.raises(FixedPointError, match="min_tail"):
        power_law_alpha(np.arange(1.0, 5.0))
    with pytest.raises(FixedPointError, match="xmin"):
        power_law_alpha(np.arange(1.0, 50.0), xmin=100.0)
    with pytest.raises(FixedPointError, match="equals it"):
        power_law_alpha(np.full(20, 3.0), xmin=3.0)
    with pytest.raises(FixedPointError, match="max_candidates"):
        power_law_alpha(np.arange(1.0, 50.0), max_candidates=0)
    with pytest.raises(FixedPointError, match="matrix"):
        gram_eigenvalues(torch.zeros(3))


def test_ensemble_follows_a_float32_net_and_skips_nets_without_points():
    def make(seed: int) -> SquareNet:
        return SquareNet(5, 2, seed=seed).to(torch.float32)

    pooled = ensemble_spectrum(make, n_nets=2, n_points=3)
    assert pooled.points.dtype == torch.float32
    assert pooled.points.shape == (6, 5)
    # the float32 Jacobian agrees with the float64 one of the same weights at the same points
    reference = jacobian_spectrum(make(0).double(), pooled.points[:3].double())
    torch.testing.assert_close(
        pooled.singular_values_sq[:3].double(), reference.singular_values_sq, rtol=1e-4, atol=1e-7
    )
    # a net whose callable gives no points (a search that found none) adds no rows
    nets = [make(0), make(1)]
    points = {id(nets[0]): torch.zeros(0, 5), id(nets[1]): torch.full((2, 5), 0.5)}
    some = ensemble_spectrum(lambda s: nets[s], n_nets=2, points=lambda net: points[id(net)])
    assert some.net_index.tolist() == [1, 1]
    with pytest.raises(FixedPointError, match="no points"):
        ensemble_spectrum(make, n_nets=2, points=lambda net: torch.zeros(0, 5))


def test_a_small_gaussian_weight_matrix_fits_a_moderate_tail_exponent():
    # the docstring's warning: at N = 64 a Gaussian W's ESD (Marchenko-Pastur, no power
    # law) still fits alpha between about 2 and 6, so compare with untrained nets of the size
    generator = torch.Generator().manual_seed(0)
    alphas = [
        power_law_alpha(gram_eigenvalues(torch.randn(64, 64, generator=generator,
                                                     dtype=torch.float64) / 8)).alpha
        for _ in range(20)
    ]  # fmt: skip
    assert min(alphas) >= 2.0
    assert max(alphas) <= 7.0
    assert 2.5 <= float(np.median(alphas)) <= 4.5
