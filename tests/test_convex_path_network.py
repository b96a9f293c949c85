from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from losslab.convex import (
    ConvexReLU,
    ConvexReLUProgram,
    activation_patterns,
    certify_network,
    regularization_path,
    sample_gates,
    solve,
)
from losslab.convex.path import PathPoint, _describe
from losslab.errors import ConvexProblemError
from tests.convex_reference import relu_teacher


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
