"""Certified fixed-point counts of square networks against independent references:
grid + bisection in one dimension, products of 1-D counts for decoupled (diagonal) nets,
and damped Newton from many starts on small random Cauchy nets."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn
from torch.func import jacrev, vmap

from losslab.errors import FixedPointError
from losslab.fixedpoints.certify import CertifiedCount, _extract, _IntervalMap, certify_fixed_points
from losslab.linalg.interval import Interval
from losslab.nets.square import SquareNet


def _net(weights: list[tuple[list, list]], activation: str = "sigmoid") -> SquareNet:
    N = len(weights[0][1])
    net = SquareNet(N, len(weights), activation=activation)
    with torch.no_grad():
        for layer, (W, b) in zip(net.layers, weights, strict=True):
            layer.weight.copy_(torch.tensor(W, dtype=torch.float64))
            layer.bias.copy_(torch.tensor(b, dtype=torch.float64))
    return net


def _sigma(t: float, activation: str = "sigmoid") -> float:
    if activation == "tanh":
        return math.tanh(t)
    return 1 / (1 + math.exp(-t)) if t >= 0 else math.exp(t) / (1 + math.exp(t))


def _roots_1d(g, lo: float, hi: float, n: int = 20_001) -> list[float]:
    """Zeros of ``g`` on [lo, hi] by a dense grid of sign changes and bisection."""
    xs = [lo + (hi - lo) * k / (n - 1) for k in range(n)]
    gs = [g(x) for x in xs]
    roots = []
    for k in range(n):
        if gs[k] == 0:
            roots.append(xs[k])
        elif k + 1 < n and gs[k] * gs[k + 1] < 0:
            a, b = xs[k], xs[k + 1]
            for _ in range(80):
                c = 0.5 * (a + b)
                if g(c) == 0:
                    a = b = c
                    break
                if (g(a) < 0) == (g(c) < 0):
                    a = c
                else:
                    b = c
            roots.append(0.5 * (a + b))
    return roots


def _composite_1d(layers: list[tuple[float, float]], activation: str = "sigmoid"):
    def g(x: float) -> float:
        y = x
        for w, b in layers:
            y = _sigma(w * y + b, activation)
        return y - x

    return g


def _newton_roots(net: SquareNet, n_starts: int = 1500, seed: int = 0) -> torch.Tensor:
    """Fixed points by damped Newton from many starts, in pre-activation coordinates
    (united with Newton on ``f - id`` itself).

    ``x = sigma(y)`` is a fixed point iff ``G(y) = W_L a_{L-1}(sigma(y)) + b_L - y = 0``
    (``a_l`` the hidden activations), and every root has ``|y_i| <= R_i = sum_j |W_L,ij|
    + |b_L,i|``. ``G`` is free of the saturation of ``f - id``, so Newton from uniform
    starts in that box (half of them in ``[-8, 8]^N``, where unstable roots with small
    basins sit) finds its roots; dedup at 1e-8, keep ``|G| < 1e-12 (1 + R + |y|)``."""
    weights = net.weights()
    sigma = torch.sigmoid if net.activation == "sigmoid" else torch.tanh
    W_L, b_L = weights[-1]
    R = W_L.abs().sum(dim=1) + b_L.abs()

    def G(y: torch.Tensor) -> torch.Tensor:
        a = sigma(y)
        for W, b in weights[:-1]:
            a = sigma(a @ W.T + b)
        return a @ W_L.T + b_L - y

    max_step = 0.1 * float(R.max())
    gen = torch.Generator().manual_seed(seed)
    y = (2 * torch.rand(n_starts, net.N, generator=gen, dtype=torch.float64) - 1) * R
    y[: n_starts // 2] = y[: n_starts // 2] * (8.0 / R).clamp(max=1.0)  # dense near 0
    J = vmap(jacrev(G))
    with torch.no_grad():
        for _ in range(100):
            step = torch.linalg.lstsq(J(y), G(y).unsqueeze(-1)).solution.squeeze(-1)
            norm = step.norm(dim=-1, keepdim=True)
            y = y - torch.where(norm > max_step, step * max_step / norm, step)
        good = (G(y).abs() < 1e-12 * (1 + R + y.abs())).all(dim=-1)  # relative to sizes
        y = y[good]
    roots: list[torch.Tensor] = []
    for p in y:
        if all(float(((p - q).abs() / (1 + q.abs())).max()) > 1e-8 for q in roots):
            roots.append(p)
    found = [sigma(p) for p in roots]
    for p in _newton_roots_x(net, n_starts, seed):  # union with Newton on f - id
        if all(float((p - q).abs().max()) > 1e-8 for q in found):
            found.append(p)
    return torch.stack(found) if found else torch.empty(0, net.N, dtype=torch.float64)


def _newton_roots_x(net: SquareNet, n_starts: int, seed: int) -> list[torch.Tensor]:
    """Damped Newton on ``F = f - id`` from uniform starts and their images under f."""
    lo, hi = net.output_box
    gen = torch.Generator().manual_seed(seed + 1)
    x = lo + (hi - lo) * torch.rand(n_starts, net.N, generator=gen, dtype=torch.float64)

    def F(v: torch.Tensor) -> torch.Tensor:
        return net(v) - v

    J = vmap(jacrev(F))
    with torch.no_grad():
        x = torch.cat([x, net(x)])
        for _ in range(60):
            step = torch.linalg.lstsq(J(x), F(x).unsqueeze(-1)).solution.squeeze(-1)
            norm = step.norm(dim=-1, keepdim=True)
            x = (x - torch.where(norm > 0.25, step * 0.25 / norm, step)).clamp(lo, hi)
        x = x[F(x).norm(dim=-1) < 1e-12]
    roots: list[torch.Tensor] = []
    for p in x:
        if all(float((p - q).abs().max()) > 1e-8 for q in roots):
            roots.append(p)
    return roots


def _in_some_enclosure(result: CertifiedCount, point: torch.Tensor, slack: float) -> bool:
    lo = result.enclosures[..., 0] - slack
    hi = result.enclosures[..., 1] + slack
    return bool(((lo <= point) & (point <= hi)).all(dim=-1).any())


# ------------------------------------------------------------------ one dimension
ONE_D_CASES = [(10.0, -5.0, 3), (12.0, -6.5, 3), (20.0, -10.0, 3), (2.0, 0.0, 1),
               (-10.0, 5.0, 1), (10.0, -2.0, 1), (8.0, -3.5, 3)]  # fmt: skip


@pytest.mark.parametrize(("w", "b", "expected"), ONE_D_CASES)
def test_one_dimensional_sigmoid_counts(w, b, expected):
    reference = _roots_1d(_composite_1d([(w, b)]), 0.0, 1.0)
    assert len(reference) == expected
    result = certify_fixed_points(_net([([[w]], [b])]), time_limit=math.inf)
    assert result.status == "certified", result.reason
    assert result.count == expected
    for r in reference:
        assert _in_some_enclosure(result, torch.tensor([r], dtype=torch.float64), 1e-12)
    assert (result.enclosures[..., 1] - result.enclosures[..., 0]).max() < 1e-12


def test_root_exactly_on_a_bisection_face_is_counted_once():
    # w = 10, b = -5: x = 1/2 is a fixed point, and 1/2 is where the first cut falls
    result = certify_fixed_points(_net([([[10.0]], [-5.0])]), box=(0.0, 1.0), time_limit=math.inf)
    assert result.count == 3
    assert result.certified
    assert float(result.roots[1, 0]) == pytest.approx(0.5, abs=1e-14)


def test_tanh_one_dimensional():
    layers = [(3.0, 0.2)]
    reference = _roots_1d(_composite_1d(layers, "tanh"), -1.0, 1.0)
    assert len(reference) == 3
    result = certify_fixed_points(_net([([[3.0]], [0.2])], activation="tanh"), time_limit=math.inf)
    assert result.certified
    assert result.count == 3


# ------------------------------------------------------------------ decoupled nets
@pytest.mark.parametrize(
    "per_unit",
    [
        [[(10.0, -5.0)], [(12.0, -6.5)], [(2.0, 0.0)]],
        [[(10.0, -5.0)], [(8.0, -3.5)]],
        [[(6.0, -3.0), (7.0, -3.5)], [(-8.0, 4.0), (-8.0, 4.0)], [(3.0, -1.0), (2.0, 0.5)]],
    ],
)
def test_diagonal_net_count_is_product_of_1d_counts(per_unit):
    N, L = len(per_unit), len(per_unit[0])
    reference = math.prod(len(_roots_1d(_composite_1d(unit), 0.0, 1.0)) for unit in per_unit)
    weights = []
    for layer in range(L):
        W = [[per_unit[i][layer][0] if i == j else 0.0 for j in range(N)] for i in range(N)]
        weights.append((W, [per_unit[i][layer][1] for i in range(N)]))
    result = certify_fixed_points(_net(weights), time_limit=math.inf)
    assert result.certified, result.reason
    assert result.count == reference
    assert reference > 1


# ------------------------------------------------------------------ random Cauchy nets
CAUCHY_CASES = [(2, 1, 16.0, 2), (2, 1, 16.0, 27), (2, 2, 64.0, 3), (3, 1, 32.0, 7),
                (3, 2, 64.0, 29), (4, 2, 64.0, 12), (4, 3, 32.0, 29), (3, 3, 32.0, 4)]  # fmt: skip


@pytest.mark.parametrize(("N", "L", "scale", "seed"), CAUCHY_CASES)
def test_random_cauchy_counts_match_newton(N, L, scale, seed):
    net = SquareNet(N, L, init="cauchy", weight_scale=scale, seed=seed)
    reference = _newton_roots(net)
    result = certify_fixed_points(net, time_limit=math.inf)
    assert result.certified, result.reason
    assert result.count == len(reference)
    for p in reference:
        assert _in_some_enclosure(result, p, 1e-10)
    with torch.no_grad():
        residual = (net(result.roots) - result.roots).abs().max() if result.count else 0.0
    assert residual < 1e-10


def test_tanh_random_net_matches_newton():
    net = SquareNet(2, 2, activation="tanh", init="cauchy", weight_scale=8.0, seed=2)
    reference = _newton_roots(net)
    result = certify_fixed_points(net, time_limit=math.inf)
    assert result.certified, result.reason
    assert result.count == len(reference)


def test_user_box_and_tensor_bounds():
    net = _net([([[10.0, 0.0], [0.0, 10.0]], [-5.0, -5.0])])  # 9 fixed points
    whole = certify_fixed_points(net, time_limit=math.inf)
    assert whole.count == 9
    low = torch.tensor([0.6, 0.6], dtype=torch.float64)
    part = certify_fixed_points(net, box=(low, 1.0), time_limit=math.inf)
    assert part.certified
    assert part.count == 1
    assert part.box_lo.tolist() == [0.6, 0.6]


# ------------------------------------------------------------------ interval Jacobian
def test_interval_jacobian_contains_point_jacobians():
    net = SquareNet(4, 3, init="cauchy", weight_scale=8.0, seed=3)
    weights, activation, _ = _extract(net)
    fmap = _IntervalMap(weights, activation)
    gen = torch.Generator().manual_seed(0)
    lo = torch.rand(5, 4, generator=gen, dtype=torch.float64) * 0.8
    X = Interval(lo, lo + 0.05 + 0.1 * torch.rand(5, 4, generator=gen, dtype=torch.float64))
    fX, Zs = fmap.forward(X)
    J = fmap.jacobian(Zs)
    points = X.lo[:, None, :] + (X.hi - X.lo)[:, None, :] * torch.rand(
        5, 20, 4, generator=gen, dtype=torch.float64
    )
    with torch.no_grad():
        jac = vmap(vmap(jacrev(net)))(points)  # (5, 20, 4, 4)
        values = net(points)
    tol = 1e-13 * (1 + jac.abs())
    assert (J.lo[:, None] <= jac + tol).all()
    assert (jac - tol <= J.hi[:, None]).all()
    assert (fX.lo[:, None] <= values).all()
    assert (values <= fX.hi[:, None]).all()


@pytest.mark.parametrize(("activation", "seed"), [("sigmoid", 0), ("sigmoid", 5), ("tanh", 2)])
def test_backward_contraction_keeps_every_fixed_point(activation, seed):
    """Boxes around known fixed points (found by this file's own Newton) keep them after the
    backward contraction, and boxes far from every fixed point often come out empty."""
    net = SquareNet(3, 2, activation, init="cauchy", weight_scale=64.0, seed=seed)
    points = _newton_roots(net)
    assert len(points) >= 1
    weights, activation_name, _ = _extract(net)
    fmap = _IntervalMap(weights, activation_name)
    gen = torch.Generator().manual_seed(seed)
    for point in points:
        lower = torch.rand(40, 3, generator=gen, dtype=torch.float64) * 0.2
        upper = torch.rand(40, 3, generator=gen, dtype=torch.float64) * 0.2
        X = Interval(point - lower - 1e-9, point + upper + 1e-9)
        fX, Zs = fmap.forward(X)
        contracted = fmap.contract_backward(X.intersect(fX), Zs)
        assert (contracted.lo <= point).all()
        assert (point <= contracted.hi).all()
        assert bool((contracted.hi - contracted.lo < X.hi - X.lo).any())  # it does contract
    low, high = (0.0, 1.0) if activation == "sigmoid" else (-1.0, 1.0)
    corners = low + (high - low) * torch.rand(200, 3, generator=gen, dtype=torch.float64)
    X = Interval(corners, (corners + 0.02).clamp(max=high))
    far = (torch.cdist(X.mid, points) > 0.2).all(dim=1)
    fX, Zs = fmap.forward(X)
    contracted = fmap.contract_backward(X.intersect(fX), Zs)
    assert bool(contracted.is_empty().any(dim=-1)[far].any())


# ------------------------------------------------------------------ budgets and errors
def test_impossible_budget_is_incomplete_never_certified():
    net = _net([([[10.0]], [-5.0])])
    result = certify_fixed_points(net, max_boxes=1)
    assert result.status == "incomplete"
    assert result.is_lower_bound
    assert result.unresolved_volume > 0
    assert 0 < result.unresolved_fraction <= 1
    assert result.boxes_processed == 1
    assert "lower bound" in result.reason
    quick = certify_fixed_points(net, time_limit=1e-9)
    assert quick.status == "incomplete"
    assert quick.count == 0
    assert quick.unresolved_fraction == pytest.approx(1.0)


def test_to_dict_is_json_ready():
    result = certify_fixed_points(_net([([[10.0]], [-5.0])]), time_limit=math.inf)
    record = result.to_dict()
    json.dumps(record)
    assert record["count"] == 3
    assert record["status"] == "certified"
    assert record["count_is_lower_bound"] is False
    assert len(record["roots"]) == 3


def test_bad_inputs_raise():
    net = _net([([[10.0]], [-5.0])])
    with pytest.raises(FixedPointError, match="inverted"):
        certify_fixed_points(net, box=(1.0, 0.0))
    with pytest.raises(FixedPointError, match="positive width"):
        certify_fixed_points(net, box=(0.5, 0.5))
    with pytest.raises(FixedPointError, match="NaN or infinite"):
        certify_fixed_points(net, box=(0.0, float("nan")))
    with pytest.raises(FixedPointError, match="shape"):
        certify_fixed_points(net, box=(torch.zeros(3), 1.0))
    with pytest.raises(FixedPointError, match="SquareNet"):
        certify_fixed_points(nn.Linear(2, 2))
    with pytest.raises(FixedPointError, match="SquareNet"):
        certify_fixed_points(lambda x: x)
    with pytest.raises(FixedPointError, match="max_boxes"):
        certify_fixed_points(net, max_boxes=0)
    with pytest.raises(FixedPointError, match="time_limit"):
        certify_fixed_points(net, time_limit=0)
    bad = SquareNet(2, 2, seed=0)
    with torch.no_grad():
        bad.layers[1].weight[0, 0] = float("nan")
    with pytest.raises(FixedPointError, match="NaN"):
        certify_fixed_points(bad)


@pytest.mark.parametrize(("activation", "module"), [("sigmoid", nn.Sigmoid), ("tanh", nn.Tanh)])
def test_a_users_sequential_is_certified_as_its_square_net(activation, module):
    net = SquareNet(3, 2, activation=activation, init="cauchy", weight_scale=32.0, seed=7)
    layers = []
    for W, b in net.weights():
        linear = nn.Linear(3, 3, dtype=torch.float64)
        with torch.no_grad():
            linear.weight.copy_(W)
            linear.bias.copy_(b)
        layers += [linear, module()]
    sequential = nn.Sequential(*layers)
    converted = SquareNet.from_sequential(sequential)
    x = torch.rand(20, 3, dtype=torch.float64)
    torch.testing.assert_close(converted(x), sequential(x), rtol=0, atol=0)
    mine, reference = (
        certify_fixed_points(sequential, time_limit=math.inf),
        certify_fixed_points(net, time_limit=math.inf),
    )
    assert (mine.status, mine.count) == (reference.status, reference.count)
    if activation == "sigmoid":  # (the Newton reference misses steep tanh roots)
        assert mine.count == len(_newton_roots(net))


def test_sequentials_that_are_not_square_nets_and_false_claims_are_refused():
    for model in (
        nn.Sequential(nn.Linear(3, 3), nn.ReLU()),
        nn.Sequential(nn.Linear(3, 3), nn.Sigmoid(), nn.Linear(3, 3), nn.Tanh()),
        nn.Sequential(nn.Linear(3, 4), nn.Sigmoid(), nn.Linear(4, 3), nn.Sigmoid()),
        nn.Sequential(nn.Linear(3, 3), nn.Hardtanh()),
    ):
        with pytest.raises(FixedPointError, match="from_sequential needs"):
            certify_fixed_points(model.double())


def test_a_hopfield_map_without_biases_is_certified():
    # x -> tanh(beta W x), symmetric W, no bias: 0 and pairs +-x*; the count against a dense
    # grid polished by Newton (numpy-free: torch only), and the search
    from losslab.fixedpoints.search import find_fixed_points

    g = torch.Generator().manual_seed(4)
    A = torch.randn(2, 2, generator=g, dtype=torch.float64)
    hopfield = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Tanh()).double()
    with torch.no_grad():
        hopfield[0].weight.copy_(3.0 * (A + A.T) / 2)
    proof = certify_fixed_points(hopfield, time_limit=math.inf)
    assert proof.status == "certified", proof.reason

    def F(x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x @ hopfield[0].weight.detach().T) - x

    axis = torch.linspace(-1, 1, 101, dtype=torch.float64)
    x = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), dim=-1).reshape(-1, 2)
    for _ in range(60):
        x = (x - torch.linalg.solve(vmap(jacrev(F))(x), F(x))).clamp(-1.5, 1.5)
    roots: list[torch.Tensor] = []
    for r in x[F(x).abs().max(dim=1).values < 1e-13]:
        if all(float((r - q).abs().max()) > 1e-8 for q in roots):
            roots.append(r)
    assert proof.count == len(roots) >= 3
    assert find_fixed_points(hopfield, basin_starts=0).count == proof.count

    class ClaimsSigmoid(nn.Module):  # lists sigmoid layers but computes a ReLU
        N, activation = 2, "sigmoid"

        def __init__(self) -> None:
            super().__init__()
            self.inner = SquareNet(2, 1, seed=0)

        def weights(self):
            return self.inner.weights()

        def forward(self, x):
            ((W, b),) = self.weights()
            return torch.relu(x @ W.T + b)

    with pytest.raises(FixedPointError, match="not the composition of the layers"):
        certify_fixed_points(ClaimsSigmoid())


def test_roots_next_to_saturated_corners_are_certified_at_the_default_min_width():
    # Boxes of width 1e-12 around these roots were given up (incomplete, counts 1 and 2);
    # 45 rounding units decide them. The counts agree with the search.
    from losslab.fixedpoints.search import find_fixed_points

    corners = nn.Sequential(nn.Linear(2, 2), nn.Tanh()).double()
    with torch.no_grad():
        corners[0].weight.copy_(torch.tensor([[2.46485443, -6.45908023],
                                              [-6.45908023, 2.7160676]]))  # fmt: skip
        corners[0].bias.zero_()
    steep = SquareNet(1, 4, activation="tanh", init="gaussian", weight_scale=6, bias_scale=2,
                      seed=6)  # fmt: skip
    for net in (corners, steep):
        proof = certify_fixed_points(net, time_limit=math.inf)
        assert (proof.status, proof.count) == ("certified", 3), proof.reason
        assert find_fixed_points(net, basin_starts=0).count == 3
    with pytest.raises(FixedPointError, match="min_width"):
        certify_fixed_points(steep, min_width=-1.0)


def test_a_box_whose_interval_products_overflow_keeps_its_roots():
    # sigmoid(8x - 4) has 3 fixed points (bisection); in the box [0, 1e308] the products
    # 8 * [0, 1e308] overflow, and inf - inf once made the box look empty: 0 "certified"
    net = _net([([[8.0]], [-4.0])])
    roots = _roots_1d(_composite_1d([(8.0, -4.0)]), 0.0, 1.0)
    assert len(roots) == 3
    for box in (None, (0.0, 1e308), (-1e308, 1e308)):
        result = certify_fixed_points(net, box=box, time_limit=math.inf)
        assert result.certified, (box, result.reason)
        assert result.count == 3
        for root in roots:
            assert _in_some_enclosure(result, torch.tensor([root], dtype=torch.float64), 1e-12)


def test_well_conditioned_roots_next_to_saturation_are_certified():
    # tanh(W x), W = [[5, 2], [2, 5]]: 9 roots, the corner ones at 1 - 1.7e-6 with
    # eigenvalues of J_f of 1e-5. The inflated box once had to contain the Newton point
    # of the box before its Krawczyk contraction, and gave 7, "incomplete".
    net = SquareNet(2, 1, activation="tanh", seed=0)
    with torch.no_grad():
        net.layers[0].weight.copy_(torch.tensor([[5.0, 2.0], [2.0, 5.0]]))
        net.layers[0].bias.zero_()
    reference = _newton_roots(net)
    result = certify_fixed_points(net, time_limit=math.inf)
    assert result.certified, result.reason
    assert result.count == len(reference) == 9
    for p in reference:
        assert _in_some_enclosure(result, p, 1e-10)


def test_layers_are_checked_where_the_fixed_points_lie():
    # a subclass computing tanh(3 relu(x)) while listing tanh(3x): the two agree on
    # [0, 1]^N and differ on the negative half of the tanh box [-1, 1]^N
    class RectifiedFirst(SquareNet):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(torch.relu(x))

    net = RectifiedFirst(1, 1, activation="tanh", seed=0)
    with torch.no_grad():
        net.layers[0].weight.fill_(3.0)
        net.layers[0].bias.zero_()
    with pytest.raises(FixedPointError, match="not the composition"):
        certify_fixed_points(net)


def test_a_layer_without_bias_is_an_affine_layer_with_zero_bias():
    net = SquareNet(2, 2, init="cauchy", weight_scale=8.0, seed=5)
    plain = nn.Linear(2, 2, bias=False).double()
    with torch.no_grad():
        plain.weight.copy_(net.layers[1].weight)
        net.layers[1].bias.zero_()
    reference = certify_fixed_points(net, time_limit=math.inf)
    net.layers[1] = plain
    result = certify_fixed_points(net, time_limit=math.inf)
    assert result.certified
    assert reference.certified
    assert result.count == reference.count == len(_newton_roots(net))
    net.layers[1] = nn.Identity()
    with pytest.raises(FixedPointError, match=r"not nn\.Linear"):
        certify_fixed_points(net)
