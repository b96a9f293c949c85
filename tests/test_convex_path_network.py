from __future__ import annotations

import functools
import itertools

import cvxpy as cp
import numpy as np
import pytest
import torch
from scipy.optimize import lsq_linear
from torch import nn

from losslab.convex import (
    ConvexReLU,
    ConvexReLUProgram,
    activation_patterns,
    certify_network,
    network,
    own_pattern_gap,
    regularization_path,
    sample_gates,
    solve,
)
from losslab.convex.path import PathPoint, _describe
from losslab.errors import ConvexProblemError
from tests.convex_reference import brute_force_patterns, relu_teacher


def test_path_starts_at_lam_max_and_matches_cold_solves():
    X, y = relu_teacher(40, 3, seed=1)
    path = regularization_path(X, y, n_lams=8, lam_min_ratio=1e-2, n_gates=30, tol=1e-8)
    assert path.lams[0] == pytest.approx(path.lam_max)
    assert path.lams == sorted(path.lams, reverse=True)
    # Zero is optimal at lam_max: the fit vanishes there (to rounding).
    assert float(path.points[0].fit.norm()) <= 1e-12 * float(y.norm())
    assert path.points[-1].n_neurons > 0
    patterns = activation_patterns(X, sample_gates(3, 30, seed=0))
    for point in path.points[1::3]:
        assert point.result.converged
        cold = solve(ConvexReLUProgram(X, y, patterns, point.lam, "gated"), tol=1e-8)
        assert point.result.objective == pytest.approx(cold.objective, rel=1e-6)
    for i, added, removed in path.active_set_changes:
        assert set(added) == path.points[i + 1].active - path.points[i].active
        assert set(removed) == path.points[i].active - path.points[i + 1].active
    assert len(path.fit_change) == len(path.points) - 1
    assert len(path.sensitivity) == len(path.points)


def test_path_callback_sees_each_point_as_it_is_solved():
    X, y = relu_teacher(30, 2, seed=2)
    seen = []
    path = regularization_path(
        X, y, n_lams=5, n_gates=20, callback=lambda i, total, point: seen.append((i, total, point))
    )
    assert [(i, total) for i, total, _ in seen] == [(i, 5) for i in range(5)]
    assert [point for _, _, point in seen] == path.points


def test_path_given_lams_relu_form():
    X, y = relu_teacher(30, 2, seed=2)
    path = regularization_path(
        X, y, lams=[0.01, 0.1, 0.05, 0.1], formulation="relu", n_gates=20, tol=1e-7
    )
    assert path.lams == [0.1, 0.05, 0.01]  # sorted, the repeat dropped
    assert all(p.result.constraint_violation <= 1e-10 for p in path.points)


def test_fast_moving_fit_is_flagged():
    def point(lam, fit):
        return PathPoint(lam, None, torch.tensor(fit, dtype=torch.float64), frozenset())  # type: ignore[arg-type]

    lams = np.geomspace(1.0, 0.01, 6)
    fits = [[1.0, 0.0], [1.01, 0.0], [1.02, 0.0], [3.0, 2.0], [3.01, 2.0], [3.02, 2.0]]
    described = _describe([point(lam, f) for lam, f in zip(lams, fits, strict=True)], 1.0, 10.0)
    assert described.jumps == [2]


def test_bad_path_arguments():
    X, y = relu_teacher(10, 2, seed=0)
    with pytest.raises(ConvexProblemError, match="lams must be"):
        regularization_path(X, y, lams=[0.1, -1.0])
    with pytest.raises(ConvexProblemError, match="n_lams >= 2"):
        regularization_path(X, y, n_lams=1)
    with pytest.raises(ConvexProblemError, match="lam_max is 0"):
        regularization_path(X, 0 * y)


def test_optimal_network_is_certified_global():
    X, y = relu_teacher(12, 2, seed=3)
    model = ConvexReLU(lam=0.05, n_gates=2000, tol=1e-10, max_iter=50_000, check_global=False)
    net = model.fit(X.numpy(), y.numpy()).to_torch()
    certificate = certify_network(net, X, y, 0.05, tol=1e-9)
    assert certificate.objective == pytest.approx(model.objective_, rel=1e-9)
    assert certificate.global_check == "enumerated"
    assert certificate.is_global, certificate.message
    assert certificate.own_gap <= 1e-6
    assert certificate.global_lower_bound <= certificate.objective


def test_an_optimal_network_with_neurons_at_kinks_is_stationary():
    # The optimum at lam = 1e-2 puts neurons exactly at kinks (pre-activations 0), where the
    # autograd gradient (ReLU'(0) = 0) does not vanish; the KKT conditions of the
    # own-pattern program hold, and that is what decides.
    X, y = relu_teacher(12, 2, seed=3)
    model = ConvexReLU(lam=1e-2, n_gates=2000, tol=1e-10, check_global=False)
    net = model.fit(X.numpy(), y.numpy()).to_torch()
    weights = net[0].weight.detach()
    assert int((X @ weights.T).abs().le(1e-12).sum()) > 0  # neurons at kinks
    certificate = certify_network(net, X, y, 1e-2, tol=1e-9)
    assert certificate.is_global, certificate.message
    assert certificate.gradient_norm > 1e-4
    assert certificate.is_stationary, certificate.message


def test_a_random_network_is_neither_stationary_nor_global():
    X, y = relu_teacher(12, 2, seed=3)
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(2, 5, dtype=torch.float64),
        nn.ReLU(),
        nn.Linear(5, 1, bias=False, dtype=torch.float64),
    )
    certificate = certify_network(net, X, y, 0.05)
    assert not certificate.is_stationary
    assert not certificate.is_global
    assert certificate.global_gap > 0.1
    assert certificate.own_optimum < certificate.objective
    assert "not stationary" in certificate.message


def test_wrong_architecture_is_refused():
    X, y = relu_teacher(12, 2, seed=3)
    net = nn.Sequential(nn.Linear(2, 5), nn.Tanh(), nn.Linear(5, 1, bias=False))
    with pytest.raises(ConvexProblemError, match=r"expected Sequential\(Linear.*Tanh"):
        certify_network(net, X, y, 0.05)
    biased = nn.Sequential(nn.Linear(2, 5), nn.ReLU(), nn.Linear(5, 1))
    with pytest.raises(ConvexProblemError, match="output layer has a bias"):
        certify_network(biased, X, y, 0.05)


def test_zero_fits_above_lam_max_do_not_make_every_step_a_jump():
    def point(lam, fit):
        return PathPoint(lam, None, torch.tensor(fit, dtype=torch.float64), frozenset())  # type: ignore[arg-type]

    # a smooth path below lam_max = 1 (fit = (1 - lam) v), and most of the grid above it
    lams = np.geomspace(1e4, 0.1, 16)
    fits = [(max(0.0, 1 - lam) * np.array([1.0, 2.0])).tolist() for lam in lams]
    described = _describe([point(lam, f) for lam, f in zip(lams, fits, strict=True)], 1.0, 10.0)
    assert sum(f == [0.0, 0.0] for f in fits) > 8  # the median rate would be 0
    below = [i for i, lam in enumerate(lams) if lam < 1]
    alone = _describe([point(lams[i], fits[i]) for i in below], 1.0, 10.0)
    assert described.jumps == alone.jumps == []


def test_the_first_step_away_from_zero_is_no_jump_and_sensitivity_stays_on_active_sets():
    def point(lam, fit, active):
        return PathPoint(lam, None, torch.tensor(fit, dtype=torch.float64), frozenset(active))  # type: ignore[arg-type]

    # the fit grows linearly from zero at lam_max = 1: fit = (1 - lam) * v on active set {0},
    # then (1 - lam) * w on {0, 1}; the last point's active set {2} is isolated
    lams = [1.0, 0.9, 0.8, 0.7, 0.6, 0.5]
    v, w = np.array([1.0, 2.0]), np.array([3.0, -1.0])
    fits = [(1 - lam) * (v if lam > 0.75 else w) for lam in lams[:-1]] + [[9.0, 9.0]]
    actives = [{0}, {0}, {0}, {0, 1}, {0, 1}, {2}]
    described = _describe([point(*a) for a in zip(lams, fits, actives, strict=True)], 1.0, 10.0)
    assert 0 not in described.jumps
    assert described.sensitivity[0] == pytest.approx(np.linalg.norm(v))  # one-sided, same set
    assert described.sensitivity[1] == pytest.approx(np.linalg.norm(v))  # central
    assert described.sensitivity[2] == pytest.approx(np.linalg.norm(v))  # one-sided
    assert described.sensitivity[3] == pytest.approx(np.linalg.norm(w))
    assert np.isnan(described.sensitivity[5])  # no neighbour shares its active set
    # and on a real path the step away from the zero fit is not flagged
    X, y = relu_teacher(40, 3, seed=1)
    path = regularization_path(X, y, n_lams=20, lam_min_ratio=1e-2, n_gates=30, tol=1e-8)
    assert 0 not in path.jumps


def test_float32_data_are_certified_in_float64():
    X, y = relu_teacher(12, 2, seed=3)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 5, dtype=torch.float64), nn.ReLU(),
                        nn.Linear(5, 1, bias=False, dtype=torch.float64))  # fmt: skip
    single = certify_network(net, X.float(), y.float(), 0.05)
    double = certify_network(net, X.float().double(), y.float().double(), 0.05)
    assert single.objective == double.objective
    assert single.own_gap == double.own_gap


def test_a_network_is_not_stationary_on_an_unfinished_own_solve():
    # an own-pattern solve cut short has a primal value far above the optimum; the gap is
    # measured against its dual bound, and an unconverged solve never proves stationarity
    X, y = relu_teacher(12, 2, seed=3)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 5, dtype=torch.float64), nn.ReLU(),
                        nn.Linear(5, 1, bias=False, dtype=torch.float64))  # fmt: skip
    for max_iter in (1, 3, 20_000):
        certificate = certify_network(net, X, y, 0.05, max_iter=max_iter)
        assert not certificate.is_stationary
        assert certificate.own_gap > 0.5


# --- stationarity: an independent reference -------------------------------------------------
# L(W, a) = 1/(2n) ||(F W')_+ a - y||^2 + lam/2 (||W||^2 + ||a||^2), the rows of F with a 1
# for the bias. Its one-sided directional derivative along (V, b) is linear on each cone where
# the kink points (F w_j = 0) keep a side; the steepest descent over unit (V, b) is found by one
# small cone program (cvxpy) per neuron and side assignment, and checked by finite differences.


def _parts(net: nn.Sequential) -> tuple[np.ndarray, np.ndarray]:
    W = net[0].weight.detach().numpy()
    if net[0].bias is not None:
        W = np.c_[W, net[0].bias.detach().numpy()]
    return W, net[2].weight.detach().numpy()[0]


def _net(W: np.ndarray, a: np.ndarray, bias: bool) -> nn.Sequential:
    d, m = W.shape[1] - bias, len(a)
    net = nn.Sequential(nn.Linear(d, m, bias=bias, dtype=torch.float64), nn.ReLU(),
                        nn.Linear(m, 1, bias=False, dtype=torch.float64))  # fmt: skip
    with torch.no_grad():
        net[0].weight.copy_(torch.from_numpy(W[:, :d]))
        if bias:
            net[0].bias.copy_(torch.from_numpy(W[:, d]))
        net[2].weight.copy_(torch.from_numpy(a)[None])
    return net


def _objective(F: np.ndarray, y: np.ndarray, lam: float, W: np.ndarray, a: np.ndarray) -> float:
    fit = np.maximum(F @ W.T, 0) @ a
    return float(((fit - y) ** 2).sum() / (2 * len(y)) + lam / 2 * ((W**2).sum() + (a**2).sum()))


def _kinks(F: np.ndarray, W: np.ndarray, rel: float = 1e-6) -> np.ndarray:
    scale = np.linalg.norm(F, axis=1)[:, None] * np.linalg.norm(W, axis=1)[None, :]
    return np.abs(F @ W.T) <= rel * scale


def _steepest_descent(F, y, lam, W, a):
    """(rate, V, b): the steepest descent rate -min L'(theta; V, b) over ||(V, b)|| = 1 and a
    unit direction attaining it."""
    H, kink = F @ W.T, _kinks(F, W)
    q = (np.maximum(H, 0) @ a - y) / len(y)
    grad_a = np.maximum(H, 0).T @ q + lam * a
    rates, directions = [], []
    for j in range(len(a)):
        K = np.flatnonzero(kink[:, j])
        g = a[j] * F.T @ (q * ((H[:, j] > 0) & ~kink[:, j])) + lam * W[j]
        best, best_v = 0.0, np.zeros(F.shape[1])
        for side in itertools.product((0.0, 1.0), repeat=len(K)):  # kink points made active
            s = np.array(side)
            v = cp.Variable(F.shape[1])
            constraints = [cp.norm(v) <= 1]
            if len(K):
                constraints.append(cp.multiply(2 * s - 1, F[K] @ v) >= 0)
            problem = cp.Problem(cp.Minimize((g + a[j] * F[K].T @ (q[K] * s)) @ v), constraints)
            problem.solve(solver="CLARABEL")
            if problem.value < best:
                best, best_v = problem.value, v.value
        rates.append(-best)
        directions.append(best_v)
    rate = float(np.sqrt((grad_a**2).sum() + sum(r**2 for r in rates)))
    V = np.array([r / rate * v for r, v in zip(rates, directions, strict=True)])
    return rate, V, -grad_a / rate


def _clarke_residual(F, y, lam, W, a):
    """min ||gradient|| with ReLU'(0) free in [0, 1] at each kink point (bounded least
    squares): a lower bound on the steepest descent rate."""
    H, kink = F @ W.T, _kinks(F, W)
    q = (np.maximum(H, 0) @ a - y) / len(y)
    squares = float(((np.maximum(H, 0).T @ q + lam * a) ** 2).sum())
    for j in range(len(a)):
        K = kink[:, j]
        g = a[j] * F.T @ (q * ((H[:, j] > 0) & ~K)) + lam * W[j]
        if K.any():
            M = a[j] * F[K].T * q[K]
            g = g + M @ lsq_linear(M, -g, bounds=(0, 1)).x
        squares += float(g @ g)
    return np.sqrt(squares)


@functools.cache
def _teacher_optimum(lam: float) -> tuple[np.ndarray, np.ndarray]:
    """A global optimum on relu_teacher(12, 2, seed=3) (no bias): the ReLU-form program
    over every pattern (cvxpy, Clarabel), and the neurons w = z / sqrt(||z||),
    a = +-sqrt(||z||) of its blocks."""
    X, y = relu_teacher(12, 2, seed=3)
    F, y = X.numpy(), y.numpy()
    masks = np.array(sorted(brute_force_patterns(F)), dtype=float).T
    n, d, P = *F.shape, masks.shape[1]
    V, U = cp.Variable((P, d)), cp.Variable((P, d))
    fit = cp.sum(cp.multiply(masks, F @ (V - U).T), axis=1)
    norms = cp.sum(cp.norm(V, 2, axis=1)) + cp.sum(cp.norm(U, 2, axis=1))
    cone = [cp.multiply(2 * masks - 1, F @ Z.T) >= 0 for Z in (V, U)]
    problem = cp.Problem(cp.Minimize(cp.sum_squares(fit - y) / (2 * n) + lam * norms), cone)
    problem.solve(solver="CLARABEL", tol_gap_abs=1e-10, tol_gap_rel=1e-10, tol_feas=1e-10)
    assert problem.status == "optimal", problem.status
    blocks, signs = np.vstack([V.value, U.value]), np.r_[np.ones(P), -np.ones(P)]
    size = np.linalg.norm(blocks, axis=1)
    keep = size > 1e-6 * size.max()
    return blocks[keep] / np.sqrt(size[keep])[:, None], signs[keep] * np.sqrt(size[keep])


def _relative_rate(rate: float, F, y, lam, W, a) -> float:
    return rate * np.sqrt((W**2).sum() + (a**2).sum()) / _objective(F, y, lam, W, a)


def _three_gate_optimum():
    # optimal over the patterns of 3 random gates, so over its own neurons' patterns, with
    # neurons exactly at kinks: moving kink points across lowers the objective
    rng = np.random.default_rng(0)
    X = rng.normal(size=(12, 2))
    y = np.sin(2 * X[:, 0]) + 0.5 * X[:, 1] ** 2
    model = ConvexReLU(lam=0.01, formulation="relu", n_gates=3, bias=True, seed=4, tol=1e-10,
                      check_global=False)  # fmt: skip
    return X, y, model.fit(X, y).prune().to_torch()


def test_a_network_optimal_over_its_own_patterns_can_descend_across_a_kink():
    X, y, net = _three_gate_optimum()
    F, (W, a) = np.c_[X, np.ones(12)], _parts(net)
    assert _kinks(F, W).sum() > 0
    certificate = certify_network(net, X, y, 0.01)
    assert certificate.own_gap <= 1e-9  # optimal over its own patterns ...
    assert not certificate.is_stationary, certificate.message  # ... and not stationary
    assert "not stationary" in certificate.message
    rate, V, b = _steepest_descent(F, y, 0.01, W, a)
    assert rate > 0.1
    assert certificate.stationarity_residual == pytest.approx(rate, rel=1e-6)
    assert 0.05 < _clarke_residual(F, y, 0.01, W, a) <= rate  # Clarke alone sees less
    # the descent is real: the objective falls along (V, b) at the rate
    start = _objective(F, y, 0.01, W, a)
    for t in (1e-7, 1e-6):
        slope = (_objective(F, y, 0.01, W + t * V, a + t * b) - start) / t
        assert slope == pytest.approx(-rate, rel=1e-4)


def test_a_global_optimum_with_neurons_at_kinks_is_stationary():
    X, y = relu_teacher(12, 2, seed=3)
    F, lam = X.numpy(), 0.01
    W, a = _teacher_optimum(lam)
    net = _net(W, a, bias=False)
    assert _kinks(F, W).sum() > 2
    certificate = certify_network(net, X, y, lam)
    assert certificate.is_global, certificate.message
    assert certificate.gradient_norm > 1e-3  # autograd's gradient (ReLU'(0) = 0) does not vanish
    assert certificate.is_stationary, certificate.message
    # zero up to the accuracy of the solve (the default stationarity_tol is 1e-5)
    rate = certificate.stationarity_residual
    assert _relative_rate(rate, F, y.numpy(), lam, W, a) <= 5e-6
    assert _steepest_descent(F, y.numpy(), lam, W, a)[0] == pytest.approx(rate, abs=1e-8)


@pytest.mark.parametrize("change", ["unbalanced neuron", "tiny neuron"])
def test_networks_near_a_stationary_point_are_not_stationary(change):
    # within 1e-7 (relative) of the optimum in objective, but first-order far from stationary
    X, y = relu_teacher(12, 2, seed=3)
    F, yn, lam = X.numpy(), y.numpy(), 0.01
    W, a = (v.copy() for v in _teacher_optimum(lam))
    if change == "unbalanced neuron":
        W[0], a[0] = W[0] * 1.001, a[0] / 1.001
    else:
        W, a = np.vstack([W, [1e-4, 1e-4]]), np.r_[a, 1e-4]
    certificate = certify_network(_net(W, a, bias=False), X, y, lam)
    assert certificate.own_gap <= 1e-6
    assert not certificate.is_stationary, certificate.message
    rate, V, b = _steepest_descent(F, yn, lam, W, a)
    assert certificate.stationarity_residual == pytest.approx(rate, rel=1e-3)
    assert _relative_rate(rate, F, yn, lam, W, a) > 1e-5
    start = _objective(F, yn, lam, W, a)
    slope = (_objective(F, yn, lam, W + 1e-8 * V, a + 1e-8 * b) - start) / 1e-8
    assert slope == pytest.approx(-rate, rel=1e-3)


def test_kink_patterns_enumerated_or_sampled():
    # a neuron with w = 0 has every point at its kink, about half of them concave
    X, y, net = _three_gate_optimum()
    W, a = _parts(net)
    W, a = np.vstack([W, np.zeros(3)]), np.r_[a, 0.5]
    wide = _net(W, a, bias=True)
    q = np.maximum(np.c_[X, np.ones(12)] @ W.T, 0) @ a - y
    assert 2 <= int((a[-1] * q < 0).sum()) <= network.ALL_SUBSETS
    every_subset = certify_network(wide, X, y, 0.01)
    assert not every_subset.is_stationary
    assert "or more" not in every_subset.message
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(network, "ALL_SUBSETS", 1)  # the patterns of the concave kinks instead
        enumerated = certify_network(wide, X, y, 0.01)
        assert "or more" not in enumerated.message
        assert enumerated.stationarity_residual == pytest.approx(
            every_subset.stationarity_residual, rel=1e-12
        )
        # too many patterns to enumerate: sampled, a lower bound, and stationarity unproven
        sampled = certify_network(
            wide, X, y, 0.01, max_enumerated=1, n_gates=100, stationarity_tol=1e3
        )
        assert sampled.stationarity_residual <= every_subset.stationarity_residual * (1 + 1e-12)
        assert not sampled.is_stationary
        assert "undecided" in sampled.message
        assert "or more" in sampled.message


def test_certify_network_runs_without_autograd():
    X, y = relu_teacher(12, 2, seed=3)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 5, dtype=torch.float64), nn.ReLU(),
                        nn.Linear(5, 1, bias=False, dtype=torch.float64))  # fmt: skip
    outside = certify_network(net, X, y, 0.05)
    for context in (torch.no_grad, torch.inference_mode):
        with context():
            inside = certify_network(net, X, y, 0.05)
            own = own_pattern_gap(net, X, y, 0.05)
        assert inside == outside
        assert own.gradient_norm == outside.gradient_norm


def test_a_small_network_is_not_stationary_for_being_small():
    # rho ||theta|| <= tol L passed any network near 0: a fresh 5-neuron net at 1e-3 scale
    # descends at rate 4.7e-4 (the gradient, no neuron at a kink) and is 94% above the
    # optimum over its own patterns.
    X, y = relu_teacher(12, 2, seed=3)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 5), nn.ReLU(), nn.Linear(5, 1, bias=False)).double()
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.mul_(1e-3)
    certificate = certify_network(net, X, y, 0.01, max_enumerated=1, n_gates=50)
    assert not certificate.is_stationary
    # no kinks here: the rate is the gradient's norm (finite differences, by hand)
    W = torch.cat([net[0].weight, net[0].bias[:, None]], dim=1).detach()
    alpha = net[2].weight.detach()[0]
    features = torch.cat([torch.as_tensor(X), torch.ones(12, 1, dtype=torch.float64)], dim=1)
    target = torch.as_tensor(y)

    def objective(theta: torch.Tensor) -> torch.Tensor:
        w, a = theta[:15].reshape(5, 3), theta[15:]
        fit = torch.relu(features @ w.T) @ a
        return ((fit - target) ** 2).sum() / 24 + 0.005 * (theta**2).sum()

    theta = torch.cat([W.flatten(), alpha])
    steps = torch.eye(20, dtype=torch.float64) * 1e-7
    gradient = torch.stack([(objective(theta + e) - objective(theta - e)) / 2e-7 for e in steps])
    assert certificate.stationarity_residual == pytest.approx(float(gradient.norm()), rel=1e-5)
    assert "above stationarity_tol" in certificate.message
