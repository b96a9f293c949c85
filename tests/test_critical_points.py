"""Critical points: Newton-MR and LM reach minima, saddles and maxima; classification
against analytic Hessians and dense eigenvalues."""

from __future__ import annotations

import pytest
import torch

from losslab.critical.points import classify, find_critical_point
from losslab.errors import CurvatureError
from losslab.linalg.model_loss import ModelLoss
from losslab.nets import ReLUMLP

pytestmark = pytest.mark.usefixtures("float64_default")


def double_well(theta: torch.Tensor) -> torch.Tensor:
    """``x^4/4 - x^2/2 + y^2/2 - z^2/2``: saddles of index 1 at (+-1, 0, 0), index 2 at 0."""
    x, y, z = theta
    return x**4 / 4 - x**2 / 2 + y**2 / 2 - z**2 / 2


@pytest.mark.parametrize("method", ["newton_mr", "levenberg_marquardt"])
@pytest.mark.parametrize(
    ("start", "expected"),
    [((0.3, 0.2, -0.1), (0.0, 0.0, 0.0)), ((1.4, -0.3, 0.2), (1.0, 0.0, 0.0))],
)
def test_converges_to_saddles_of_the_double_well(method, start, expected) -> None:
    result = find_critical_point(double_well, torch.tensor(start), method=method)
    assert result.converged
    assert result.reason == "converged"
    assert result.gradient_norm <= 1e-10
    torch.testing.assert_close(result.params, torch.tensor(expected), atol=1e-10, rtol=0)
    point = classify(double_well, result.params)
    # the Hessian is diag(3x^2 - 1, 1, -1): index 2 at the origin, 1 at x = +-1
    assert point.kind == "saddle"
    assert point.morse_index == (2 if expected[0] == 0 else 1)
    assert point.nullity == 0


@pytest.mark.parametrize("method", ["newton_mr", "levenberg_marquardt"])
def test_rosenbrock_minimum_and_a_maximum(method) -> None:
    def rosenbrock(theta: torch.Tensor) -> torch.Tensor:
        return (1 - theta[0]) ** 2 + 100 * (theta[1] - theta[0] ** 2) ** 2

    # from the classic start LM on ||g||^2 crawls along a valley of ||g||: start it closer
    start = [-1.2, 1.0] if method == "newton_mr" else [0.6, 0.3]
    result = find_critical_point(rosenbrock, torch.tensor(start), method=method)
    assert result.converged
    torch.testing.assert_close(result.params, torch.tensor([1.0, 1.0]), atol=1e-9, rtol=0)
    point = classify(rosenbrock, result.params)
    assert point.kind == "minimum"
    assert point.morse_index == 0
    # the Hessian at (1, 1) is [[802, -400], [-400, 200]]
    exact = torch.linalg.eigvalsh(torch.tensor([[802.0, -400.0], [-400.0, 200.0]]))
    torch.testing.assert_close(point.eigenvalues, exact, rtol=1e-10, atol=0)

    def bump(theta: torch.Tensor) -> torch.Tensor:
        return torch.exp(-(theta**2).sum())  # a maximum at 0

    top = find_critical_point(bump, torch.tensor([0.2, -0.1]), method=method)
    assert top.converged
    torch.testing.assert_close(top.params, torch.zeros(2), atol=1e-10, rtol=0)
    peak = classify(bump, top.params)
    assert (peak.kind, peak.morse_index, peak.nullity) == ("maximum", 2, 0)
    # the Hessian of exp(-|theta|^2) at 0 is -2 I
    torch.testing.assert_close(peak.eigenvalues, torch.tensor([-2.0, -2.0]), rtol=1e-10, atol=0)


def test_two_layer_linear_network_at_zero_is_a_saddle() -> None:
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(20, 3, generator=generator)
    targets = torch.randn(20, 2, generator=generator)

    def loss(named: dict[str, torch.Tensor]) -> torch.Tensor:
        prediction = inputs @ named["first"].T @ named["second"].T
        return ((prediction - targets) ** 2).sum() / 40

    zero = {"first": torch.zeros(4, 3), "second": torch.zeros(2, 4)}
    point = classify(loss, zero)
    assert point.gradient_norm == 0
    assert point.kind == "saddle"
    # at zero the Hessian is [[0, -C], [-C^T, 0]] built from C = Y^T X / n: its eigenvalues
    # are +-(singular values of C), each repeated once per hidden unit, and zeros
    singular = torch.linalg.svdvals(targets.T @ inputs / 20)
    expected = torch.sort(torch.cat([singular.repeat(4), -singular.repeat(4), torch.zeros(4)]))
    torch.testing.assert_close(point.eigenvalues, expected.values, atol=1e-12, rtol=0)
    assert point.morse_index == 8
    assert point.nullity == 4


def test_dict_parameters_of_a_model_reach_tol_and_match_autograd() -> None:
    model = ReLUMLP(3, [4], 2, seed=1)
    model[1] = torch.nn.Tanh()  # smooth, so Newton converges quadratically
    generator = torch.Generator().manual_seed(1)
    data = (torch.randn(30, 3, generator=generator), torch.randn(30, 2, generator=generator))
    model_loss = ModelLoss(model, torch.nn.MSELoss(), data)

    def regularised(named: dict[str, torch.Tensor]) -> torch.Tensor:
        flat = model_loss.layout.flatten(named)
        return model_loss(flat) + 1e-2 * (flat @ flat)

    # Newton-type searches converge from nearby: start from gradient descent's end point
    theta = model_loss.theta0.clone()
    for _ in range(300):
        theta = theta - 0.5 * torch.func.grad(
            lambda t: regularised(model_loss.layout.unflatten(t))
        )(theta)
    start = model_loss.layout.unflatten(theta)
    result = find_critical_point(regularised, start)
    assert result.converged
    assert result.gradient_norm <= 1e-10
    assert set(result.params) == set(start)
    # an independent gradient: load the point into the model and backpropagate
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            parameter.copy_(result.params[name])
    model.zero_grad()
    flat = torch.cat([p.reshape(-1) for p in model.parameters()])
    value = torch.nn.MSELoss()(model(data[0]), data[1]) + 1e-2 * (flat @ flat)
    value.backward()
    gradient = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    assert float(gradient.norm()) <= 1e-9


def test_matrix_free_paths_agree_with_dense() -> None:
    result_dense = find_critical_point(double_well, torch.tensor([0.3, 0.2, -0.1]))
    result_free = find_critical_point(double_well, torch.tensor([0.3, 0.2, -0.1]), dense_limit=0)
    torch.testing.assert_close(result_free.params, result_dense.params, atol=1e-10, rtol=0)
    lm_free = find_critical_point(
        double_well, torch.tensor([1.4, -0.3, 0.2]), method="levenberg_marquardt", dense_limit=0
    )
    assert lm_free.converged
    point = classify(double_well, result_free.params, dense_limit=0)
    assert point.kind == "saddle"
    assert point.morse_index is None
    assert not point.exact
    torch.testing.assert_close(
        torch.tensor([point.min_eigenvalue, point.max_eigenvalue]),
        torch.tensor([-1.0, 1.0]),
        atol=1e-8,
        rtol=0,
    )


def test_degenerate_and_not_critical() -> None:
    def quartic(theta: torch.Tensor) -> torch.Tensor:
        return theta[0] ** 4 + theta[1] ** 2

    assert classify(quartic, torch.zeros(2)).kind == "degenerate"
    assert classify(quartic, torch.ones(2)).kind == "not critical"


DEGENERATE_POINTS = {
    # name: (loss, start, Morse index, nullity) at the degenerate critical point 0
    "x^3 + y^2, an inflection": (lambda t: t[0] ** 3 + t[1] ** 2, (0.5, 0.2), 0, 1),
    "x^4 + y^2": (lambda t: t[0] ** 4 + t[1] ** 2, (0.7, 0.4), 0, 1),
    "x^4 - y^2": (lambda t: t[0] ** 4 - t[1] ** 2, (0.7, 0.4), 1, 1),
    "monkey saddle x^3 - 3 x y^2": (lambda t: t[0] ** 3 - 3 * t[0] * t[1] ** 2, (0.5, 0.2), 0, 2),
}


@pytest.mark.parametrize("method", ["newton_mr", "levenberg_marquardt"])
@pytest.mark.parametrize("name", sorted(DEGENERATE_POINTS))
def test_points_found_near_degenerate_critical_points_are_degenerate(method, name) -> None:
    # The search stops at ||g|| <= 1e-10, where the vanishing eigenvalue is still ~1e-5 and
    # above zero_tol: it must move toward zero at the Newton estimate, and count as zero.
    loss, start, index, nullity = DEGENERATE_POINTS[name]
    found = find_critical_point(loss, torch.tensor(start), method=method)
    assert found.converged
    point = classify(loss, found.params)
    # the eigenvalues reported are those at the point found (the dense Hessian there)
    dense = torch.linalg.eigvalsh(torch.func.hessian(loss)(found.params))
    torch.testing.assert_close(point.eigenvalues, dense, rtol=1e-10, atol=1e-14)
    assert point.unresolved >= 1
    assert (point.kind, point.morse_index, point.nullity) == ("degenerate", index, nullity)
    if name.startswith("x^3 +"):
        free = classify(loss, found.params, dense_limit=0)  # Lanczos and MINRES
        assert (free.kind, free.unresolved) == ("degenerate", 1)


def test_non_degenerate_points_found_keep_their_kind() -> None:
    # A quadratic with known spectrum plus cubic terms: the found point's eigenvalues move
    # by O(||s||) only, none is unresolved, and the index matches dense eigenvalues.
    generator = torch.Generator().manual_seed(3)
    basis, _ = torch.linalg.qr(torch.randn(6, 6, generator=generator))
    spectrum = torch.tensor([-3.0, -0.5, 1e-3, 0.2, 1.0, 4.0])
    hessian = basis @ torch.diag(spectrum) @ basis.T
    cubic = torch.randn(6, generator=generator)

    def loss(theta: torch.Tensor) -> torch.Tensor:
        return 0.5 * theta @ hessian @ theta + 0.1 * ((cubic * theta) ** 3).sum()

    found = find_critical_point(loss, 1e-3 * torch.randn(6, generator=generator))
    assert found.converged
    point = classify(loss, found.params)
    dense = torch.linalg.eigvalsh(torch.autograd.functional.hessian(loss, found.params))
    assert (point.kind, point.unresolved, point.nullity) == ("saddle", 0, 0)
    assert point.morse_index == int((dense < 0).sum()) == 2


def test_bad_input_and_stalling() -> None:
    with pytest.raises(CurvatureError, match="method"):
        find_critical_point(double_well, torch.zeros(3), method="adam")  # type: ignore[arg-type]
    with pytest.raises(CurvatureError, match="NaN"):
        find_critical_point(double_well, torch.tensor([float("nan"), 0.0, 0.0]))
    with pytest.raises(CurvatureError, match="flat"):
        find_critical_point(double_well, torch.zeros(3, 1))
    with pytest.raises(CurvatureError, match="not finite"):
        classify(lambda t: torch.log(t).sum(), torch.tensor([-1.0]))
    for dtype in (torch.float16, torch.bfloat16):
        with pytest.raises(CurvatureError, match="float64 for analysis"):
            find_critical_point(double_well, torch.zeros(3, dtype=dtype))
    with pytest.raises(CurvatureError, match="meta"):
        classify(double_well, torch.zeros(3, device="meta"))
    # a loss of shape (1,) is one number
    ones = find_critical_point(lambda t: double_well(t).reshape(1), torch.tensor([0.3, 0.2, 0.1]))
    assert ones.converged
    assert ones.gradient_norm <= 1e-10

    def no_root(theta: torch.Tensor) -> torch.Tensor:
        # gradient x^2 + 1 never vanishes: the search must stop, not claim success
        return theta[0] ** 3 / 3 + theta[0]

    result = find_critical_point(no_root, torch.tensor([0.5]), max_iter=50)
    assert not result.converged
    assert result.reason in ("stalled", "max_iter")
    assert result.gradient_norm >= 1.0 - 1e-12


def test_a_steep_loss_converges_to_its_rounding_floor() -> None:
    # 1e8 ||A t - b||^2: its gradient cannot be computed below about 1e-7 in float64. The
    # search stops there as converged, with the floor as its tolerance; classify agrees.
    generator = torch.Generator().manual_seed(0)
    A = torch.randn(6, 6, generator=generator)
    b = torch.randn(6, generator=generator)
    exact = torch.linalg.solve(A, b)
    for scale in (1.0, 1e8):

        def loss(t: torch.Tensor, scale: float = scale) -> torch.Tensor:
            return scale * ((A @ t - b) ** 2).sum()

        result = find_critical_point(loss, torch.zeros(6))
        assert result.converged
        torch.testing.assert_close(result.params, exact, rtol=1e-8, atol=1e-10)
        point = classify(loss, exact)
        assert point.kind == "minimum"
        if scale == 1.0:
            assert result.tol_effective == 1e-10
            assert point.gradient_tol == 1e-8
        else:
            assert 1e-10 < result.gradient_norm <= result.tol_effective < 1e-3
            assert point.gradient_tol > point.gradient_norm > 1e-8
    # far from the minimiser the steep loss is not critical, whatever the floor
    assert classify(loss, exact + 1e-3).kind == "not critical"


@pytest.mark.parametrize("method", ["newton_mr", "levenberg_marquardt"])
def test_a_flat_loss_is_held_to_the_relative_tolerance(method) -> None:
    # 1e-8 Rosenbrock: ||g|| < 1e-10 already 2e-2 from (1, 1), where the absolute tolerance
    # alone stopped Levenberg-Marquardt. The relative test (||g|| / ||H|| <= 1e-10 of the
    # parameters' scale) holds both methods to the minimiser, as on the unscaled loss.
    def flat(t: torch.Tensor) -> torch.Tensor:
        return 1e-8 * ((1 - t[0]) ** 2 + 100 * (t[1] - t[0] ** 2) ** 2)

    result = find_critical_point(flat, torch.tensor([0.8, 0.6]), method=method)
    assert result.converged
    hessian_norm = float(torch.linalg.matrix_norm(torch.func.hessian(flat)(result.params), 2))
    assert result.gradient_norm <= result.tol_effective <= 1e-10 * hessian_norm * 1.5
    torch.testing.assert_close(result.params, torch.ones(2), rtol=0, atol=1e-7)

    # classify: 0.42 from the minimiser of a flat bowl is not critical, the minimiser is
    def bowl(t: torch.Tensor) -> torch.Tensor:
        return 1e-8 * ((t - 1) ** 2).sum()

    far = classify(bowl, torch.tensor([0.7, 0.7]))
    assert far.gradient_norm < 1e-8
    assert far.kind == "not critical"
    assert far.gradient_tol == pytest.approx(1e-8 * 2e-8 * 1.0)
    assert classify(bowl, torch.ones(2)).kind == "minimum"
    with pytest.raises(CurvatureError, match="rtol > 0"):
        find_critical_point(bowl, torch.zeros(2), rtol=0.0)
    with pytest.raises(CurvatureError, match="grad_rtol and rtol >= 0"):
        classify(bowl, torch.zeros(2), grad_rtol=-1.0)


def test_the_relative_tolerance_follows_a_vanishing_hessian_down() -> None:
    # x^4 + y^4: H -> 0 at the critical point, and ||g|| <= 1e-10 ||H|| holds only at
    # |x| ~ 1e-10 (the module docstring's numbers)
    def quartic(t: torch.Tensor) -> torch.Tensor:
        return (t**4).sum()

    result = find_critical_point(quartic, torch.tensor([1.0, 0.5]))
    assert result.converged
    assert result.iterations <= 60
    assert float(result.params.abs().max()) <= 1e-9
    assert classify(quartic, result.params).kind == "degenerate"


def test_stalled_searches_end_at_a_minimum_of_the_gradient_norm() -> None:
    # ||g|| = x^2 + 1 is smallest at x = 0, where H g = 2 x g = 0: both methods stop there
    def no_root(theta: torch.Tensor) -> torch.Tensor:
        return theta[0] ** 3 / 3 + theta[0]

    for method in ("newton_mr", "levenberg_marquardt"):
        result = find_critical_point(no_root, torch.tensor([0.5]), method=method)
        assert result.reason == "stalled"
        assert abs(float(result.params[0])) < 1e-6


def test_small_tanh_networks_reach_critical_points_or_say_why() -> None:
    # From initialisation a 2-4-1 tanh net often creeps towards critical points at infinity;
    # the search then stops as stalled by the documented rule (||g|| not halved in
    # stall_window iterations). A converged point is critical by an independent gradient.
    generator = torch.Generator().manual_seed(0)
    X = torch.randn(30, 2, generator=generator)
    y = torch.randn(30, 1, generator=generator)
    converged = 0
    for seed in range(4):
        torch.manual_seed(seed)
        model = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
        loss = ModelLoss(model, torch.nn.MSELoss(), (X, y))
        result = find_critical_point(loss, loss.theta0, stall_window=20, max_iter=150)
        norms = result.gradient_norms
        if result.converged:
            converged += 1
            assert float(torch.func.grad(loss)(result.params).norm()) <= 1e-10
            continue
        assert result.reason in ("stalled", "max_iter")
        if result.reason == "stalled":  # by the window rule, or with no descent left
            crept = len(norms) > 21 and norms[-1] > norms[-21] / 2
            theta, gradient = result.params, torch.func.grad(loss)
            g = gradient(theta)
            unit, step = g / g.norm(), 1e-6  # H g / ||g|| by central differences
            h_unit = (gradient(theta + step * unit) - gradient(theta - step * unit)) / (2 * step)
            assert crept or float(h_unit.norm()) <= 1e-4  # ||g|| cannot fall along -H g
    assert converged >= 1


def test_loss_must_be_a_scalar() -> None:
    with pytest.raises(CurvatureError, match="scalar"):
        find_critical_point(lambda t: t**2, torch.zeros(3))
    with pytest.raises(CurvatureError, match="scalar"):
        classify(lambda t: t[:2], torch.zeros(3))
    with pytest.raises(CurvatureError, match="stall_window"):
        find_critical_point(double_well, torch.zeros(3), stall_window=0)


@pytest.mark.parametrize("curvature", [1e-5, 3e-6])
def test_a_small_eigenvalue_next_to_a_cubic_term_is_still_a_minimum(curvature) -> None:
    # At ||g|| <= 1e-10 the point is ~3e-6 from the minimum, where lambda_x is 2 to 7
    # times its value at the minimum: the first Newton estimate moves it by half, the
    # later ones settle (quadratic convergence), so it is resolved, not degenerate.
    def loss(theta: torch.Tensor) -> torch.Tensor:
        return 0.5 * curvature * theta[0] ** 2 + theta[0] ** 3 + 0.5 * theta[1] ** 2

    for start in (1e-4, 2e-3):
        found = find_critical_point(loss, torch.tensor([start, 0.3]))
        assert found.converged
        point = classify(loss, found.params)
        assert (point.kind, point.unresolved, point.nullity) == ("minimum", 0, 0)


def test_an_eigenvalue_that_grows_along_the_newton_estimates_is_resolved() -> None:
    # lambda_x = 1 + z^2 grows as the Newton estimate moves along z (g_z = 1e-9 over a
    # 1e-12 eigenvalue, below zero_tol): the saddle stays a saddle on both paths.
    def loss(theta: torch.Tensor) -> torch.Tensor:
        x, y, z = theta
        return 0.5 * (1 + z**2) * x**2 - 0.5 * y**2 + 0.5e-12 * z**2 + 1e-9 * z

    for dense_limit in (3000, 0):
        point = classify(loss, torch.zeros(3), dense_limit=dense_limit)
        assert (point.kind, point.unresolved) == ("saddle", 0)
