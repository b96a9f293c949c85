"""All fixed points of a map (losslab.fixedpoints.search) against independent references:
bisection on dense grids, linear algebra, scipy.optimize.root from a dense grid of starts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.optimize
import scipy.special
import torch

from losslab.errors import FixedPointError
from losslab.fixedpoints.certify import certify_fixed_points
from losslab.fixedpoints.search import (
    FixedPointSet,
    classify,
    find_fixed_points,
    fixed_point_indices,
    square_net_jacobian,
)
from losslab.nets.square import SquareNet
from losslab.solve.newton import batched_jacobian

DT = torch.float64


def sigmoid_map(x: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(10 * x - 5)


def _bisection_roots(g, low: float, high: float, n: int = 20001) -> list[float]:
    """Zeros of a scalar function by sign changes on a dense grid plus Brent's method."""
    grid = np.linspace(low, high, n)
    values = g(grid)
    roots = []
    for i in np.nonzero(np.sign(values[:-1]) * np.sign(values[1:]) < 0)[0]:
        roots.append(scipy.optimize.brentq(g, grid[i], grid[i + 1], xtol=1e-15))
    roots += [float(x) for x, v in zip(grid, values, strict=True) if v == 0]
    return sorted(roots)


def _dense_kinds(f, points: torch.Tensor) -> list[str]:
    """Stability from dense eigenvalues of autograd Jacobians (independent of the module)."""
    eigs = []
    for x in points:
        J = torch.autograd.functional.jacobian(lambda z: f(z[None])[0], x)
        eigs.append(torch.linalg.eigvals(J))
    kinds = []
    for moduli in torch.stack(eigs).abs():
        if bool(((moduli - 1).abs() < 1e-9).any()):
            kinds.append("non-hyperbolic")
        elif bool((moduli < 1).all()):
            kinds.append("attractor")
        elif bool((moduli > 1).all()):
            kinds.append("repeller")
        else:
            kinds.append("saddle")
    return kinds


def _box(low, high, N: int = 1):
    return (torch.full((N,), low, dtype=DT), torch.full((N,), high, dtype=DT))


def _sigmoid_reference() -> np.ndarray:
    return np.array(_bisection_roots(lambda x: 1 / (1 + np.exp(-(10 * x - 5))) - x, -0.5, 1.5))


def test_sigmoid_1d_three_points_against_bisection():
    ref = _sigmoid_reference()
    assert len(ref) == 3
    result = find_fixed_points(sigmoid_map, box=_box(0.0, 1.0), n_starts=300, basin_starts=500)
    assert result.count == 3
    np.testing.assert_allclose(result.points.squeeze(1).numpy(), ref, atol=1e-12)
    assert result.kinds == ["attractor", "repeller", "attractor"]
    assert result.kinds == _dense_kinds(sigmoid_map, result.points)
    slope = 10 * ref * (1 - ref)  # f' = 10 s (1 - s) with s = f(x) = x
    np.testing.assert_allclose(result.eigenvalues.real.squeeze(1).numpy(), slope, rtol=1e-10)
    np.testing.assert_allclose(result.spectral_radius.numpy(), np.abs(slope), rtol=1e-10)
    assert float(result.residuals.max()) <= 1e-12
    assert int(result.hits.sum()) == result.n_converged <= result.n_starts == 300
    assert all(r > 0 for r in result.radii.tolist())


def test_sigmoid_basins_are_the_two_sides_of_the_repeller():
    low, high, n = -0.2, 1.0, 4000
    result = find_fixed_points(sigmoid_map, box=_box(low, high), n_starts=200, basin_starts=n)
    repeller = float(result.points[1, 0])
    share_left = (repeller - low) / (high - low)
    sigma = math.sqrt(share_left * (1 - share_left) / n)
    fractions = result.basin_fraction.tolist()
    assert math.isnan(fractions[1])
    assert abs(fractions[0] - share_left) <= 4 * sigma
    assert abs(fractions[2] - (1 - share_left)) <= 4 * sigma
    assert result.unassigned_fraction == 0.0
    assert fractions[0] + fractions[2] == pytest.approx(1.0)


def test_product_map_nine_points_four_attractors():
    result = find_fixed_points(sigmoid_map, box=_box(0.0, 1.0, N=2), n_starts=1000)
    ref = _sigmoid_reference()
    expected = np.array([[a, b] for a in ref for b in ref])  # lexicographic order
    assert result.count == 9
    np.testing.assert_allclose(result.points.numpy(), expected, atol=1e-12)
    assert result.counts_by_kind() == {
        "attractor": 4,
        "saddle": 4,
        "repeller": 1,
        "non-hyperbolic": 0,
    }
    assert result.kinds == _dense_kinds(sigmoid_map, result.points)
    attractors = result.attractors()
    assert attractors.count == 4
    assert set(attractors.kinds) == {"attractor"}
    # symmetric box: each corner attractor draws about a quarter of the box
    np.testing.assert_allclose(attractors.basin_fraction.numpy(), 0.25, atol=0.04)
    assert result.unassigned_fraction <= 0.01
    assert float(attractors.basin_fraction.sum()) + result.unassigned_fraction == pytest.approx(1)


@pytest.mark.parametrize(
    ("diag", "kind"),
    [
        ([0.5, -0.3, 0.2], "attractor"),
        ([1.5, -2.0, 3.0], "repeller"),
        ([0.5, 2.0, -0.1], "saddle"),
    ],
)
def test_linear_map_unique_point(diag, kind):
    g = torch.Generator().manual_seed(len(kind))
    Q, _ = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=DT))
    S = torch.randn(3, 3, generator=g, dtype=DT).triu(1) * 0.3
    A = Q @ (torch.diag(torch.tensor(diag, dtype=DT)) + S) @ Q.T  # eigenvalues = diag
    b = torch.randn(3, generator=g, dtype=DT)

    def f(x: torch.Tensor) -> torch.Tensor:
        return x @ A.T + b

    expected = torch.linalg.solve(torch.eye(3, dtype=DT) - A, b)
    bound = float(expected.abs().max()) + 2
    result = find_fixed_points(f, box=_box(-bound, bound, N=3), n_starts=400, basin_starts=300)
    assert result.count == 1  # one point found from every start, reported once
    assert int(result.hits[0]) == result.n_converged == result.n_starts >= 400
    np.testing.assert_allclose(result.points[0].numpy(), expected.numpy(), atol=1e-11)
    assert result.kinds == [kind] == classify(torch.linalg.eigvals(A)[None])
    np.testing.assert_allclose(
        np.sort(np.abs(result.eigenvalues[0].numpy())), np.sort(np.abs(diag)), rtol=1e-9
    )
    if kind == "attractor":
        assert float(result.basin_fraction[0]) == 1.0
    else:
        assert math.isnan(float(result.basin_fraction[0]))


def test_two_fixed_points_a_micrometre_apart_are_two():
    a, delta, c = 0.3, 1e-6, 1e3

    def f(x: torch.Tensor) -> torch.Tensor:
        return x + c * (x - a) * (x - a - delta)

    result = find_fixed_points(f, box=_box(0.29, 0.31), n_starts=500, basin_starts=100)
    assert result.count == 2
    np.testing.assert_allclose(result.points.squeeze(1).numpy(), [a, a + delta], atol=1e-12)
    assert result.kinds == ["attractor", "repeller"]  # f' = 1 -+ c delta
    assert int(result.hits.sum()) == result.n_converged == 500
    # the uniqueness radius sees the other point: rho <= its distance
    assert float(result.radii.max()) <= delta


def test_hyperbolicity_classification():
    eig = torch.tensor(
        [[0.5, -0.2], [2.0, -1.5], [0.5, 3.0], [1.0 + 1e-12, 0.3], [0.6j, 0.1]],
        dtype=torch.complex128,
    )
    assert classify(eig) == ["attractor", "repeller", "saddle", "non-hyperbolic", "attractor"]


def _brute_force_square_net(net: SquareNet, grid: int = 21) -> np.ndarray:
    """Fixed points of a 2-D SquareNet: scipy root (hybr) from a dense grid, deduplicated."""
    layers = [(W.numpy(), b.numpy()) for W, b in net.weights()]

    def f(x: np.ndarray) -> np.ndarray:
        for W, b in layers:
            x = scipy.special.expit(W @ x + b)
        return x

    found: list[np.ndarray] = []
    axis = (np.arange(grid) + 0.5) / grid
    for u in axis:
        for v in axis:
            sol = scipy.optimize.root(lambda x: f(x) - x, np.array([u, v]), tol=1e-14)
            if np.linalg.norm(f(sol.x) - sol.x) > 1e-11 or not np.all(np.abs(sol.x - 0.5) <= 0.5):
                continue
            if all(np.linalg.norm(sol.x - p) > 1e-7 for p in found):
                found.append(sol.x)
    return np.array(sorted(found, key=tuple))


@pytest.mark.parametrize(
    ("L", "weight_scale", "seed"),
    [(1, 32.0, 2), (1, 32.0, 5), (1, 32.0, 1), (2, 16.0, 4), (2, 8.0, 0)],
)
def test_small_cauchy_nets_against_brute_force(L, weight_scale, seed):
    net = SquareNet(2, L, init="cauchy", weight_scale=weight_scale, seed=seed)
    ref = _brute_force_square_net(net)
    result = find_fixed_points(net, n_starts=400, basin_starts=200)
    assert result.count == len(ref)
    np.testing.assert_allclose(result.points.numpy(), ref, atol=1e-9)
    assert result.kinds == _dense_kinds(net, result.points)


@pytest.mark.parametrize("activation", ["sigmoid", "tanh"])
def test_square_net_chain_rule_jacobian(activation):
    net = SquareNet(5, 3, activation=activation, init="cauchy", weight_scale=4.0, seed=1)
    x = torch.rand(6, 5, generator=torch.Generator().manual_seed(0), dtype=DT)
    np.testing.assert_allclose(
        square_net_jacobian(net)(x).numpy(), batched_jacobian(net, x).numpy(), atol=1e-13
    )


def test_square_net_defaults_seed_and_dict():
    net = SquareNet(3, 2, init="cauchy", weight_scale=8.0, seed=3)
    first = find_fixed_points(net, n_starts=200, basin_starts=200, seed=7)
    again = find_fixed_points(net, n_starts=200, basin_starts=200, seed=7)
    assert torch.equal(first.points, again.points)
    np.testing.assert_array_equal(first.basin_fraction.numpy(), again.basin_fraction.numpy())
    # 200 // 4 uniform starts, and the converged ones of a SquareNet's 200 pre-activation starts
    assert 50 < first.n_starts <= 50 + 200
    assert bool(((first.points > 0) & (first.points < 1)).all())  # sigmoid output box
    d = first.to_dict()
    assert d["count"] == first.count
    assert len(d["kinds"]) == first.count
    assert isinstance(first.select([True] * first.count), FixedPointSet)


def test_starts_only_without_box():
    def f(x: torch.Tensor) -> torch.Tensor:
        return 0.5 * torch.cos(x)

    starts = torch.linspace(-3, 3, 25, dtype=DT)[:, None]
    result = find_fixed_points(f, starts=starts)
    ref = scipy.optimize.brentq(lambda x: 0.5 * np.cos(x) - x, 0, 1, xtol=1e-15)
    assert result.count == 1
    assert result.n_starts == 25
    np.testing.assert_allclose(result.points[0, 0].item(), ref, atol=1e-12)
    assert result.kinds == ["attractor"]
    assert float(result.basin_fraction[0]) == 1.0


def test_nan_starts_are_dropped():
    def f(x: torch.Tensor) -> torch.Tensor:
        return torch.where(x < 0, torch.nan, 2 * x * x)

    result = find_fixed_points(f, box=_box(-1.0, 1.0), n_starts=100, basin_starts=0)
    assert result.n_starts < 100  # the starts below 0 are dropped
    np.testing.assert_allclose(np.sort(result.points.squeeze(1).numpy()), [0.0, 0.5], atol=1e-12)
    assert math.isnan(result.unassigned_fraction)


@pytest.mark.parametrize(
    ("f", "kwargs", "message"),
    [
        (
            lambda x: torch.cat([x, x], dim=-1),
            {"box": _box(0.0, 1.0, 2)},
            r"\(100, 2\).*\(100, 4\)",
        ),
        (lambda x: x * torch.nan, {"box": _box(0.0, 1.0, 2)}, "NaN"),
        (sigmoid_map, {"box": _box(1.0, 0.0, 2)}, "inverted"),
        (sigmoid_map, {"box": (torch.zeros(2), torch.tensor([1.0, 0.0]))}, "inverted"),
        (sigmoid_map, {"box": (0.0, 1.0)}, "infer the dimension"),
        (sigmoid_map, {}, "infer the dimension"),
        (sigmoid_map, {"starts": torch.zeros(3, 2)}, None),
        (sigmoid_map, {"box": _box(0.0, 1.0, 2), "starts": torch.zeros(3, 3)}, "inconsistent"),
        (sigmoid_map, {"box": (0.0, float("inf")), "starts": torch.zeros(3, 2)}, "finite"),
        (sigmoid_map, {"box": _box(0.0, 1.0, 2), "n_starts": -1}, "n_starts"),
        (sigmoid_map, {"box": _box(0.0, 1.0, 2), "tol": 0.0}, "tol"),
        (  # a map of (N,) vectors only
            lambda x: torch.tensor([[0.5, 0.2], [0.1, 0.3]], dtype=DT) @ x,
            {"box": _box(0.0, 1.0, 2)},
            r"f failed on a batch of shape \(100, 2\).*torch.vmap",
        ),
    ],
)
def test_bad_input(f, kwargs, message):
    kwargs = {"n_starts": 100} | kwargs
    if message is None:  # starts without a box are fine
        assert find_fixed_points(f, **kwargs).count >= 1
        return
    with pytest.raises(FixedPointError, match=message):
        find_fixed_points(f, **kwargs)


def test_map_with_dimension_but_no_box():
    class Map:
        N = 2

        def __call__(self, x: torch.Tensor) -> torch.Tensor:
            return sigmoid_map(x)

    with pytest.raises(FixedPointError, match="no box"):
        find_fixed_points(Map())
    assert find_fixed_points(Map(), box=(0.0, 1.0), n_starts=300).count == 9


def test_square_net_wrong_dimension_starts():
    net = SquareNet(3, 1, seed=0)
    with pytest.raises(FixedPointError, match="inconsistent"):
        find_fixed_points(net, starts=torch.zeros(2, 4, dtype=DT))


def test_square_net_fast_path_matches_generic_path():
    net = SquareNet(2, 1, init="cauchy", weight_scale=32.0, seed=2)  # 3 fixed points
    fast = find_fixed_points(net, n_starts=600, basin_starts=300)
    generic = find_fixed_points(
        lambda x: net(x), box=_box(0.0, 1.0, 2), n_starts=600, basin_starts=300
    )
    assert fast.count == generic.count == 3
    assert fast.kinds == generic.kinds
    np.testing.assert_allclose(fast.points.numpy(), generic.points.numpy(), atol=1e-12)
    # The same basin starts; an assignment or two may differ where the fast path found its
    # points from more starts (a SquareNet also gets pre-activation starts).
    np.testing.assert_allclose(
        fast.basin_fraction.numpy(), generic.basin_fraction.numpy(), atol=0.01, equal_nan=True
    )


def test_float32_net_follows_its_dtype():
    net64 = SquareNet(2, 1, init="cauchy", weight_scale=32.0, seed=2)
    net32 = SquareNet(2, 1, init="cauchy", weight_scale=32.0, seed=2, dtype=torch.float32)
    ref = find_fixed_points(net64, n_starts=400, basin_starts=0)
    result = find_fixed_points(net32, n_starts=400, basin_starts=0)
    assert result.points.dtype == torch.float32
    assert result.eigenvalues.dtype == torch.complex64
    assert result.count == ref.count
    assert result.kinds == ref.kinds
    np.testing.assert_allclose(result.points.numpy(), ref.points.numpy(), atol=1e-5)


def test_map_without_fixed_points():
    result = find_fixed_points(lambda x: x + 1, box=_box(-1.0, 1.0, 2), n_starts=50)
    assert result.count == 0
    assert result.n_converged == 0
    assert result.points.shape == (0, 2)
    assert result.eigenvalues.shape == (0, 2)
    assert result.kinds == []
    assert result.unassigned_fraction == 1.0
    assert result.to_dict()["count"] == 0
    assert result.attractors().count == 0


def test_float32_starts_follow_the_net_and_no_grad_is_fine():
    net = SquareNet(2, 1, init="cauchy", weight_scale=32.0, seed=2)
    with torch.no_grad():
        result = find_fixed_points(net, starts=torch.rand(20, 2), n_starts=300)
        generic = find_fixed_points(lambda x: net(x), box=_box(0.0, 1.0, 2), n_starts=300)
    assert result.points.dtype == torch.float64
    # 300 // 4 uniform, 20 user and the converged ones of 300 pre-activation starts
    assert 95 < result.n_starts <= 95 + 300
    assert result.count == generic.count == 3


def test_saturated_roots_are_found_as_the_proof_counts():
    # Weights this heavy hide two of the five fixed points in steep, saturated corners that
    # 1000 uniform starts in x miss; the pre-activation starts find them.

    net = SquareNet(6, 2, init="cauchy", weight_scale=64.0, seed=18)
    proof = certify_fixed_points(net, time_limit=math.inf)
    assert proof.status == "certified"
    assert proof.count == 5
    assert find_fixed_points(net, n_starts=1000, seed=18, basin_starts=0).count == 5


def test_lifted_starts_find_saddles_in_saturated_corners():
    # A saddle with x = (0.18, 3e-18, 1, 1, 0.06, 4e-201): the single-layer pre-activation
    # system found 2 of the 3 points; the lifted system of both layers finds the saddle.

    net = SquareNet(6, 2, init="cauchy", weight_scale=64.0, seed=30)
    proof = certify_fixed_points(net, time_limit=math.inf)
    assert proof.status == "certified"
    found = find_fixed_points(net, n_starts=1000, seed=30, basin_starts=0)
    assert found.count == proof.count == 3
    inside = (found.points[:, None, :] >= proof.enclosures[None, :, :, 0] - 1e-12) & (
        found.points[:, None, :] <= proof.enclosures[None, :, :, 1] + 1e-12
    )
    assert bool(inside.all(2).any(0).all())  # every proven point has a found one in its box
    assert "saddle" in found.kinds


def test_preactivation_map_jacobian_matches_autograd(monkeypatch):
    import losslab.fixedpoints.search as search
    from losslab.solve import batched_jacobian

    seen = {}
    solve = search.dogleg_batch

    def spy(G, y0, *, jacobian=None, **kwargs):
        seen.update(G=G, jacobian=jacobian, y0=y0)
        return solve(G, y0, jacobian=jacobian, **kwargs)

    monkeypatch.setattr(search, "dogleg_batch", spy)
    for activation, L in (("sigmoid", 3), ("tanh", 3), ("sigmoid", 1), ("tanh", 1), ("sigmoid", 2)):
        net = SquareNet(4, L, activation=activation, init="cauchy", weight_scale=8.0, seed=1)
        search.preactivation_starts(net, 16, torch.Generator().manual_seed(0))
        y = seen["y0"][:5]
        torch.testing.assert_close(seen["jacobian"](y), batched_jacobian(seen["G"], y))


def test_lifted_starts_only_for_nets_with_few_pre_activations(monkeypatch):
    # The lifted system has L N unknowns and a dense (L N)^3 step: deep or wide nets skip it
    # (SquareNet(16, 8) took 53 s with it), small ones use max(64, n_starts) lifted starts.
    import losslab.fixedpoints.search as search

    calls = []
    lifted = search.preactivation_starts

    def spy(net, n_starts, generator):
        calls.append((net.N, net.L, n_starts))
        return lifted(net, n_starts, generator)

    monkeypatch.setattr(search, "preactivation_starts", spy)
    for N, L in ((8, 6), (7, 7)):  # L N = 48 and 49
        net = SquareNet(N, L, init="cauchy", weight_scale=4.0, seed=0)
        search.find_fixed_points(net, n_starts=20, basin_starts=0, max_iter=20)
    assert calls == [(8, 6, 64)]


def test_lifted_nets_take_a_quarter_of_the_uniform_starts(monkeypatch):
    # With lifted roots the uniform starts in x are a safety net: max(1, n_starts // 4) of
    # them (none of 199 certified nets needed them); all n_starts when the lifted solve found
    # nothing, and for other maps.
    import losslab.fixedpoints.search as search

    net = SquareNet(3, 2, init="cauchy", weight_scale=8.0, seed=3)
    one_root = torch.full((1, 3), 0.5, dtype=DT)
    monkeypatch.setattr(search, "preactivation_starts", lambda net, n, g: one_root)
    assert find_fixed_points(net, n_starts=200, basin_starts=0).n_starts == 1 + 50
    assert find_fixed_points(net, n_starts=3, basin_starts=0).n_starts == 1 + 1
    monkeypatch.setattr(search, "preactivation_starts", lambda net, n, g: one_root[:0])
    assert find_fixed_points(net, n_starts=200, basin_starts=0).n_starts == 200
    generic = find_fixed_points(lambda x: net(x), box=(0.0, 1.0), starts=torch.rand(1, 3, dtype=DT))
    # 1000 uniform, the user's, and 500 in the hull of the images (less than half the box)
    assert generic.n_starts == 1000 + 1 + 500


def test_lifted_starts_are_solved_alone_first(monkeypatch):
    # The x-space solve takes the finite lifted starts as its first chunk (a NaN one is
    # dropped), then the uniform and user starts, which the points found can capture.
    import losslab.fixedpoints.search as search

    net = SquareNet(3, 2, init="cauchy", weight_scale=8.0, seed=3)
    lifted = search.preactivation_starts(net, 64, torch.Generator().manual_seed(1))
    assert lifted.shape[0] >= 2
    lifted[0] = torch.nan
    monkeypatch.setattr(search, "preactivation_starts", lambda net, n, g: lifted)
    chunks = []
    solve = search.newton_batch

    def spy(F, x0, **kwargs):
        chunks.append((x0.shape[0], kwargs["stop"] is not None))
        return solve(F, x0, **kwargs)

    monkeypatch.setattr(search, "newton_batch", spy)
    user = torch.rand(7, 3, dtype=DT)
    result = find_fixed_points(net, n_starts=40, starts=user, basin_starts=0)
    assert chunks == [(lifted.shape[0] - 1, False), (10 + 7, True)]
    assert result.n_starts == lifted.shape[0] - 1 + 10 + 7


def test_float32_lifted_starts_reach_roots():
    # A float32 net's lifted solve runs in float32, to a tolerance of max(1e-10, 64 eps)
    # (1 + R); each returned start is a fixed point of the float64 net to float32 accuracy.
    from losslab.fixedpoints.search import preactivation_starts

    net32 = SquareNet(6, 2, init="cauchy", weight_scale=64.0, seed=18, dtype=torch.float32)
    net64 = SquareNet(6, 2, init="cauchy", weight_scale=64.0, seed=18)
    starts = preactivation_starts(net32, 200, torch.Generator().manual_seed(0))
    assert starts.dtype == torch.float32
    assert starts.shape[0] >= 1
    x = starts.double()
    with torch.no_grad():
        assert float((net64(x) - x).norm(dim=1).max()) < 1e-3


@pytest.mark.parametrize("activation", ["sigmoid", "tanh"])
def test_jacobians_stay_accurate_where_the_activation_saturates(monkeypatch, activation):
    # At pre-activations of 40 (sigmoid) and 20 (tanh) the slope is e^-40 or 4 e^-40, not the
    # 0 that h (1 - h) or 1 - h^2 round to; both Jacobians carry it to full relative accuracy.
    import losslab.fixedpoints.search as search

    z = 40.0 if activation == "sigmoid" else 20.0
    slope = (
        math.exp(-z) / (1 + math.exp(-z)) ** 2
        if activation == "sigmoid"
        else 4 / (math.exp(z) + math.exp(-z)) ** 2
    )
    net = SquareNet(3, 2, activation=activation, init="gaussian", seed=0)
    W1, b1 = net.weights()[0]
    with torch.no_grad():
        b1.copy_(z - W1.sum(1))  # z_1 = W_1 x + b_1 = z at x = (1, 1, 1)
    x = torch.ones(1, 3, dtype=torch.float64)
    a1 = torch.full((3,), math.tanh(z) if activation == "tanh" else 1 / (1 + math.exp(-z)))
    W2, b2 = net.weights()[1]
    z2 = W2 @ a1.double() + b2
    d2 = torch.sigmoid(z2) * torch.sigmoid(-z2) if activation == "sigmoid" else 1 / z2.cosh() ** 2
    expected = d2[:, None] * W2 * slope @ W1  # J = D_2 W_2 D_1 W_1, D_1 = slope I
    jacobian = search.square_net_jacobian(net)(x)[0]
    torch.testing.assert_close(jacobian, expected, rtol=1e-12, atol=0.0)
    assert float(jacobian.abs().min()) > 0

    seen = {}
    solve = search.dogleg_batch

    def spy(G, y0, *, jacobian=None, **kwargs):
        seen.update(jacobian=jacobian)
        return solve(G, y0, jacobian=jacobian, **kwargs)

    monkeypatch.setattr(search, "dogleg_batch", spy)
    search.preactivation_starts(net, 4, torch.Generator().manual_seed(0))
    Y = torch.full((1, 6), z, dtype=torch.float64)  # y_1 = y_2 = z
    lifted = seen["jacobian"](Y)[0]
    torch.testing.assert_close(lifted[3:, :3], W2 * slope, rtol=1e-12, atol=0.0)  # dG_2/dy_1
    torch.testing.assert_close(lifted[:3, 3:], W1 * slope, rtol=1e-12, atol=0.0)  # dG_1/dy_2


def test_fixed_point_indices_are_the_sign_of_det_i_minus_j():
    # The index sign det(I - J) against LU determinants; eigenvalue 1 leaves it undecided;
    # large spectra are counted, not multiplied (prod (1 - lambda) overflows at 400 x 1e3).
    g = torch.Generator().manual_seed(0)
    for N in (1, 2, 3, 5, 8):
        J = 1.5 * torch.randn(300, N, N, generator=g, dtype=DT)
        reference = torch.linalg.slogdet(torch.eye(N, dtype=DT) - J).sign
        assert torch.equal(fixed_point_indices(torch.linalg.eigvals(J)), reference.long())
    one = torch.diag(torch.tensor([1.0, 0.5, 3.0], dtype=DT))[None]
    assert fixed_point_indices(torch.linalg.eigvals(one)).tolist() == [0]
    big = torch.diag(torch.cat([torch.full((399,), 1e3), torch.tensor([0.5])]).to(DT))[None]
    assert fixed_point_indices(torch.linalg.eigvals(big)).tolist() == [-1]


@pytest.mark.parametrize(
    ("N", "L", "activation", "seed"),
    [(3, 2, "sigmoid", 29), (6, 2, "sigmoid", 18), (6, 2, "sigmoid", 30), (3, 3, "tanh", 5)],
)
def test_indices_of_the_proved_fixed_points_sum_to_one(N, L, activation, seed):
    # The index theorem the search checks: a SquareNet maps its output box into the open
    # box, so the indices sign det(I - J_f) of all its fixed points sum to 1. Checked on
    # the proved points (enclosure midpoints), with autograd Jacobians and LU determinants.

    net = SquareNet(N, L, activation=activation, init="cauchy", weight_scale=64.0, seed=seed)
    proof = certify_fixed_points(net, max_boxes=500_000, time_limit=math.inf)
    assert proof.status == "certified"
    assert proof.count >= 3
    total = 0
    for x in proof.enclosures.mean(-1):
        J = torch.autograd.functional.jacobian(lambda z: net(z[None])[0], x)
        total += int(torch.linalg.slogdet(torch.eye(N, dtype=DT) - J).sign)
    assert total == 1
    found = find_fixed_points(net, seed=seed, basin_starts=0)
    assert found.count == proof.count
    assert found.maps_into_box
    assert found.index_sum == 1
    assert found.index_consistent is True


# Random heavy-tailed nets not used to tune the search (seeds 100 on): its count must be
# the proved one, and each proved enclosure must hold exactly one of its points.
SWEEP = [(N, L, scale, seed) for N, L, scale in ((2, 1, 16.0), (3, 2, 64.0), (4, 2, 32.0))
         for seed in range(100, 107)]  # fmt: skip


@pytest.mark.parametrize(("N", "L", "scale", "seed"), SWEEP)
def test_counts_agree_with_the_proof_on_random_cauchy_nets(N, L, scale, seed):

    net = SquareNet(N, L, init="cauchy", weight_scale=scale, seed=seed)
    # a box budget, not a clock: the outcome cannot depend on the machine's load
    proof = certify_fixed_points(net, max_boxes=200_000, time_limit=math.inf)
    assert proof.status == "certified", proof.reason
    found = find_fixed_points(net, seed=seed, basin_starts=0)
    assert found.count == proof.count
    low, high = proof.enclosures[..., 0] - 1e-10, proof.enclosures[..., 1] + 1e-10
    inside = ((low[:, None] <= found.points) & (found.points <= high[:, None])).all(-1)
    assert inside.sum(dim=1).tolist() == [1] * proof.count


def test_a_failed_index_check_searches_again():
    # One uniform start (and the 64 lifted ones) finds 8 of the 9 proved fixed points of this
    # net, with indices summing to 0: proof that one is missing. The retry (twice the starts,
    # fresh draws) finds the ninth.

    net = SquareNet(3, 2, init="cauchy", weight_scale=64.0, seed=62)
    proof = certify_fixed_points(net, time_limit=math.inf)
    assert (proof.status, proof.count) == ("certified", 9)
    first = find_fixed_points(net, n_starts=1, index_retries=0, basin_starts=0)
    assert first.count == 8
    assert first.index_sum != 1
    assert first.index_consistent is False
    assert first.rounds == 1
    again = find_fixed_points(net, n_starts=1, index_retries=3, basin_starts=0)
    assert again.count == 9
    assert again.rounds == 2
    assert again.index_consistent is True
    assert again.n_starts > first.n_starts
    # a generic map is not known to map the box into itself: no check, one round
    generic = find_fixed_points(lambda x: net(x), box=_box(0.0, 1.0, 3), n_starts=4, basin_starts=0)
    assert not generic.maps_into_box
    assert generic.index_consistent is None
    assert generic.rounds == 1
    # a box that does not contain the output box: the theorem does not apply either
    inner = find_fixed_points(net, box=(0.01, 0.99), n_starts=4, basin_starts=0)
    assert inner.index_consistent is None
    assert inner.to_dict()["index_consistent"] is None


def test_no_retry_without_random_starts():
    # n_starts = 0 and one user start at the repeller of a 1-D net with three fixed points:
    # the index check fails (one point of index -1) but there is nothing to draw a retry
    # from; the result says so instead of raising
    net = SquareNet(1, 1)
    with torch.no_grad():
        net.layers[0].weight.fill_(10.0)
        net.layers[0].bias.fill_(-5.0)
    found = find_fixed_points(net, starts=torch.tensor([[0.5]], dtype=DT), n_starts=0,
                              basin_starts=0)  # fmt: skip
    assert found.count == 1
    assert found.indices.tolist() == [-1]
    assert found.index_consistent is False
    assert found.rounds == 1
    assert find_fixed_points(net, basin_starts=0).count == 3


DEGENERATE_MAPS = {
    # name: (map of the first coordinate (the second contracts), box of x) -- each has the
    # single fixed point x = 0 with eigenvalue 1: one point, non-hyperbolic
    "x - x^3 (weak attractor)": (lambda x: x - x**3, 0.5),
    "x + x^2 (saddle-node)": (lambda x: x + x**2, 0.5),
    "x + x^3 (weak repeller)": (lambda x: x + x**3, 0.5),
}


@pytest.mark.parametrize("name", sorted(DEGENERATE_MAPS))
def test_a_degenerate_fixed_point_is_one_non_hyperbolic_point(name):
    # ||f(x) - x|| <= 1e-12 holds on a whole interval around 0 (|x| <= 1e-4 for x^3): the
    # starts that converge there must merge into one point, and its eigenvalue, 1 - 3e-8
    # where the search stopped, must not pass for hyperbolic.
    first, half_width = DEGENERATE_MAPS[name]

    def f(z: torch.Tensor) -> torch.Tensor:
        return torch.stack([first(z[..., 0]), 0.5 * z[..., 1]], dim=-1)

    box = (torch.tensor([-half_width, -1.0], dtype=DT), torch.tensor([half_width, 1.0], dtype=DT))
    result = find_fixed_points(f, box=box, n_starts=300, basin_starts=100)
    assert result.count == 1
    assert result.kinds == ["non-hyperbolic"]
    assert float(result.points.abs().max()) < 1e-3
    assert int(result.indices[0]) == 0
    assert result.index_consistent is None or result.maps_into_box is False


def test_an_almost_degenerate_square_net_has_its_one_proved_point():
    from losslab.fixedpoints import certify_fixed_points

    net = SquareNet(1, 1)  # x -> sigmoid(w x + b) with slope 1 - 2.5e-9 at its fixed point 0.5
    with torch.no_grad():
        net.layers[0].weight.fill_(4 - 1e-8)
        net.layers[0].bias.fill_(-2 + 0.5e-8)
    proof = certify_fixed_points(net, time_limit=math.inf)
    result = find_fixed_points(net, basin_starts=0)
    assert (proof.status, proof.count, result.count) == ("certified", 1, 1)
    assert abs(float(result.points[0, 0]) - 0.5) < 1e-4


def test_steep_tanh_roots_below_tol_only_at_the_rounding_floor_are_found():
    # At two of this net's three proved roots ||J_F|| ~ 1e5: no float64 point has
    # ||F|| <= 1e-12 (the best is 2.2e-12), so the search accepts the rounding floor.
    from losslab.fixedpoints import certify_fixed_points

    net = SquareNet(3, 2, activation="tanh", init="cauchy", weight_scale=64, seed=26)
    proof = certify_fixed_points(net, time_limit=math.inf)
    result = find_fixed_points(net, n_starts=1000, basin_starts=0)
    assert (proof.status, proof.count) == ("certified", 3)
    assert result.count == 3
    assert float(result.residuals.max()) > 1e-12  # only the floor was reachable
    for box in proof.enclosures:  # each proved root's enclosure holds one point found
        inside = ((result.points >= box[:, 0] - 1e-9) & (result.points <= box[:, 1] + 1e-9)).all(1)
        assert int(inside.sum()) == 1


def test_float32_maps_capture_and_basins_use_exact_distances():
    # cdist's matrix-product shortcut put a float32 point 5e-4 from itself, far outside a
    # 1e-6 capture radius: basins came out 0.22 instead of 1.
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Tanh())  # float32
    with torch.no_grad():
        net[0].weight.mul_(0.5)
    box = (-torch.ones(3), torch.ones(3))
    result = find_fixed_points(net, box=box, n_starts=200, basin_starts=500)
    assert result.points.dtype == torch.float32
    assert result.kinds == ["attractor"]
    assert float(result.basin_fraction[0]) == 1.0
    assert result.unassigned_fraction == 0.0


def test_a_plain_callable_runs_in_the_box_dtype_and_must_keep_it():
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Tanh())  # float32

    def f(x: torch.Tensor) -> torch.Tensor:
        return net(x.float())

    result = find_fixed_points(f, box=(-torch.ones(2), torch.ones(2)), n_starts=50)
    assert result.points.dtype == torch.float32
    assert result.count >= 1
    with pytest.raises(FixedPointError, match=r"returned torch\.float32 for torch\.float64"):
        find_fixed_points(f, box=(-torch.ones(2, dtype=DT), torch.ones(2, dtype=DT)))


def test_a_ghost_next_to_a_fold_is_not_a_fixed_point():
    # f(x) = x + (1e6 x0, (x1 - 0.2)^2 + 1e-9) has no fixed point. At its local minimum
    # of ||F|| (x1 = 0.2) ||F|| = 1e-9 is below 16 eps ||J_F||, but Newton points 3e-5
    # away: not the rounding floor of a root.
    def f(z: torch.Tensor) -> torch.Tensor:
        x0, x1 = z[..., 0], z[..., 1]
        return torch.stack([x0 + 1e6 * x0, x1 + (x1 - 0.2) ** 2 + 1e-9], dim=-1)

    result = find_fixed_points(f, box=_box(-1.0, 1.0, 2), n_starts=300, basin_starts=0)
    assert result.count == 0


def test_a_sequential_is_searched_with_its_square_net_structure():
    # An nn.Sequential(Linear, Tanh) whose third fixed point (a saddle at a corner) the
    # generic search missed, with indices summing to 2 and no index check: the search now
    # uses the SquareNet structure of a plain Sequential (same function, same dtype).
    from torch import nn

    net = nn.Sequential(nn.Linear(2, 2), nn.Tanh()).double()
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[0.156497523188591, 3.1398816108703613],
                                          [16.631793975830078, 4237.04833984375]]))  # fmt: skip
        net[0].bias.copy_(torch.tensor([11.41674518585205, 9.80637264251709]))
    proof = certify_fixed_points(net, time_limit=math.inf)
    assert (proof.status, proof.count) == ("certified", 3)
    found = find_fixed_points(net, box=(-1.0, 1.0))
    assert found.count == 3
    assert found.index_consistent is True
    assert sorted(found.indices.tolist()) == [-1, 1, 1]


class _Flipped(SquareNet):
    """``x -> 1 - net(x)``: a subclass whose forward is not its layers' composition."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 1 - super().forward(x)


def test_a_square_net_subclass_with_its_own_forward_is_a_generic_map():

    net = _Flipped(2, 1, init="cauchy", weight_scale=20.0, seed=3)
    assert not net.computes_its_layers
    assert SquareNet(2, 1, seed=3).computes_its_layers
    with pytest.raises(FixedPointError, match="not the composition of the layers"):
        certify_fixed_points(net)
    found = find_fixed_points(net, basin_starts=0)  # the base map's structure is not used
    assert found.index_consistent is None  # no index theorem for a generic map

    # brute force: the roots of 1 - sigmoid(W x + b) - x from a 120 x 120 grid, polished
    (W, b) = net.weights()[0]

    def F(x: torch.Tensor) -> torch.Tensor:
        return 1 - torch.sigmoid(x @ W.T + b) - x

    grid = torch.stack(torch.meshgrid(*[torch.linspace(0, 1, 120, dtype=DT)] * 2,
                                      indexing="ij"), dim=-1).reshape(-1, 2)  # fmt: skip
    x = grid
    for _ in range(50):
        J = torch.func.vmap(torch.func.jacrev(F))(x)
        x = (x - torch.linalg.solve(J, F(x))).clamp(-0.5, 1.5)
    roots = x[(F(x).abs().max(dim=1).values < 1e-13)]
    distinct = []
    for r in roots:
        if all(float((r - q).abs().max()) > 1e-8 for q in distinct):
            distinct.append(r)
    assert found.count == len(distinct) == 3
    for r in distinct:
        assert float((found.points - r).abs().max(dim=1).values.min()) < 1e-10


def test_a_map_undefined_outside_the_box_is_searched():
    # sqrt is NaN below 0: the uniqueness radius's probes around a point near 0 leave the
    # domain; the search crashed in an SVD of NaN. x = 0.5 + 0.3 sqrt(x): s = sqrt(x) solves
    # s^2 - 0.3 s - 0.5 = 0.
    found = find_fixed_points(lambda x: 0.5 + 0.3 * torch.sqrt(x), box=(0.0, 1.0),
                              starts=torch.zeros(1, 1, dtype=DT))  # fmt: skip
    root = ((0.3 + math.sqrt(0.09 + 2.0)) / 2) ** 2
    assert found.count == 1
    assert float(found.points[0, 0]) == pytest.approx(root, abs=1e-14)
    assert found.kinds == ["attractor"]


def test_a_slowly_contracting_attractor_has_its_basin():
    # x -> 0.3 + 0.99 (x - 0.3) attracts every start, but 500 steps shrink a distance only
    # 150-fold: no start came within the 1e-6 capture radius, and the basin read 0.
    found = find_fixed_points(lambda x: 0.3 + 0.99 * (x - 0.3), box=_box(0.0, 1.0),
                              basin_starts=300)  # fmt: skip
    assert found.kinds == ["attractor"]
    assert float(found.basin_fraction[0]) == 1.0
    assert found.unassigned_fraction == 0.0

    # a slow spiral with non-orthogonal eigenvectors (0.99 e^{+-0.3i}, S = diag(4, 1)): its
    # distance swings over any window, and only its closest approach shows the progress
    rotation = torch.tensor([[math.cos(0.3), -math.sin(0.3)], [math.sin(0.3), math.cos(0.3)]],
                            dtype=DT)  # fmt: skip
    S = torch.diag(torch.tensor([4.0, 1.0], dtype=DT))
    A = 0.99 * S @ rotation @ torch.linalg.inv(S)
    centre = torch.tensor([0.1, -0.2], dtype=DT)
    spiral = find_fixed_points(lambda x: centre + (x - centre) @ A.T, box=_box(-1.0, 1.0, 2),
                               basin_starts=300)  # fmt: skip
    assert spiral.kinds == ["attractor"]
    assert float(spiral.basin_fraction[0]) == 1.0

    # two slow attractors at 0.2 and 0.8 (slope 0.98 at each), split at the repeller 0.5:
    # each start is assigned to the one on its side
    def two_wells(x: torch.Tensor) -> torch.Tensor:
        return x - 0.01 * (x - 0.2) * (x - 0.5) * (x - 0.8) / 0.09

    wells = find_fixed_points(two_wells, box=_box(0.0, 1.0), basin_starts=400, seed=3)
    assert wells.count == 3
    attractors = [i for i, kind in enumerate(wells.kinds) if kind == "attractor"]
    assert len(attractors) == 2
    starts = torch.rand(400, 1, generator=torch.Generator().manual_seed(3), dtype=DT)
    expected_left = float((starts < 0.5).double().mean())
    left = min(attractors, key=lambda i: float(wells.points[i, 0]))
    assert abs(float(wells.basin_fraction[left]) - expected_left) < 0.1  # other draws
    # only starts next to the repeller (slope 1.01) are still on their way after 500 steps
    total = float(wells.basin_fraction[attractors].sum())
    assert total >= 0.97
    assert total + wells.unassigned_fraction == pytest.approx(1.0)


def test_orbits_on_a_two_cycle_are_not_given_to_the_attractor_they_circle():
    # One attractor at 0 (multiplier -0.95) inside a stable 2-cycle {-1.88, 1.90}: orbits on
    # the cycle alternate between two distances from 0, so "came closer over the last
    # steps" gave half of them to 0 (basin 0.51 where 0.034 of the starts converge to it).
    def f(x: torch.Tensor) -> torch.Tensor:
        g = torch.exp(-(x**2))
        return -0.95 * x - 0.5 * x**3 * g + 0.15 * x**2 * g

    found = find_fixed_points(f, box=_box(-10.0, 10.0), n_starts=200, basin_starts=4000)
    assert found.count == 1
    assert found.kinds == ["attractor"]
    x = 20 * torch.rand(10_000, 1, generator=torch.Generator().manual_seed(1), dtype=DT) - 10
    with torch.no_grad():
        for _ in range(5_000):
            x = f(x)
    share = float((x.abs() < 1e-6).double().mean())  # the orbits that converge to 0
    assert 0.01 < share < 0.1
    assert abs(float(found.basin_fraction[0]) - share) < 0.02  # two samples' error
    for iterations in (0, 1):  # no slow-attractor rule without steps to judge by
        few = find_fixed_points(f, box=_box(-10.0, 10.0), n_starts=200, basin_starts=4000,
                                basin_iterations=iterations)  # fmt: skip
        assert float(few.basin_fraction[0]) <= 0.01


def test_a_huge_box_keeps_the_tolerances_of_the_maps_range():
    # tanh(3x) has fixed points -0.9949, 0, 0.9949 (x = tanh(3x) by bisection on (0.5, 1)).
    # In the box [-1e10, 1e10] the tolerances once scaled with the box: 2 apart was "the
    # same point". Fixed points lie in f(box) = (-1, 1), and the scale follows it.
    root = scipy.optimize.brentq(lambda x: math.tanh(3 * x) - x, 0.5, 1.0, xtol=1e-15)
    box = (torch.tensor([-1e10], dtype=torch.float64), torch.tensor([1e10], dtype=torch.float64))
    starts = torch.tensor([[0.1], [2.0], [-2.0]], dtype=torch.float64)
    found = find_fixed_points(lambda x: torch.tanh(3 * x), box=box, starts=starts, n_starts=50)
    torch.testing.assert_close(
        found.points[:, 0],
        torch.tensor([-root, 0.0, root], dtype=torch.float64),
        rtol=0,
        atol=1e-12,
    )
    assert found.kinds == ["attractor", "repeller", "attractor"]
    assert found.tol <= 1e-11
    # a SquareNet with the same map, uniform starts only: the count the index theorem needs
    net = SquareNet(1, 1, activation="tanh", seed=0)
    with torch.no_grad():
        net.layers[0].weight.fill_(3.0)
        net.layers[0].bias.zero_()
    for size in (1.0, 1e10):
        wide = (torch.tensor([-size]), torch.tensor([size]))
        result = find_fixed_points(net, box=tuple(b.double() for b in wide), n_starts=100)
        assert result.count == 3
        assert result.index_consistent is True


def test_starts_in_the_hull_of_the_images_find_points_a_huge_box_hides():
    # uniform starts in [-1e10, 1e10]^2 land within 1 of tanh(3x)'s repeller at 0 with
    # probability 1e-10 per coordinate; every fixed point lies in f(box) = (-1, 1)^2, where
    # the hull starts are drawn. Reference: the 3 x 3 products of the 1-D roots.
    root = scipy.optimize.brentq(lambda x: math.tanh(3 * x) - x, 0.5, 1.0, xtol=1e-15)
    roots_1d = torch.tensor([-root, 0.0, root], dtype=DT)
    expected = torch.cartesian_prod(roots_1d, roots_1d)  # lexicographic, as reported
    found = find_fixed_points(lambda x: torch.tanh(3 * x), box=_box(-1e10, 1e10, N=2), seed=4)
    assert found.count == 9
    torch.testing.assert_close(found.points, expected, rtol=0, atol=1e-12)
    assert found.kinds.count("saddle") == 4
    assert found.kinds.count("repeller") == 1


def test_a_half_precision_map_is_refused():
    with pytest.raises(FixedPointError, match="float32 or float64"):
        find_fixed_points(SquareNet(3, 2, seed=0).half())


def test_lifted_starts_reach_roots_whose_preactivations_a_heavy_column_pins_near_zero():
    # SquareNet(6, 2, tanh, cauchy, 64), seed 1: four of its five proved fixed points have
    # a coordinate x_4 ~ 1e-3 fed through a column of norm ~1e5 (||J_F|| ~ 1.8e5); lifted
    # starts with |y| >= 0.1 found only the fifth, and the index sum 1 could not tell
    net = SquareNet(6, 2, activation="tanh", init="cauchy", weight_scale=64.0, seed=1)
    proof = certify_fixed_points(net, time_limit=math.inf)
    assert proof.certified
    found = find_fixed_points(net)
    assert found.count == proof.count == 5
    for point in found.points:
        inside = (proof.enclosures[..., 0] <= point) & (point <= proof.enclosures[..., 1])
        assert bool(inside.all(dim=-1).any())


def test_no_hull_starts_without_uniform_starts_or_outside_the_box():
    user = torch.tensor([[0.3]], dtype=DT)
    only_user = find_fixed_points(lambda x: torch.tanh(3 * x), box=_box(-1e10, 1e10), starts=user,
                                  n_starts=0, basin_starts=0)  # fmt: skip
    assert only_user.n_starts == 1
    # x + 10 maps [0, 1] to [10, 11]: no fixed point, and no start outside the box
    shifted = find_fixed_points(lambda x: x + 10, box=_box(0.0, 1.0), n_starts=50, basin_starts=0)
    assert shifted.count == 0
    assert shifted.n_starts == 50
