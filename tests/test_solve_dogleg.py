"""Batched Powell dogleg (losslab.solve.dogleg) against scipy.optimize.root and closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.optimize
import torch

from losslab.errors import FixedPointError
from losslab.solve.dogleg import dogleg_batch

DT = torch.float64


def test_shared_system_from_many_starts_matches_scipy_hybrj():
    # x + 0.3 sin(A x) = b with ||A||_2 = 2 has exactly one root (J - I has norm <= 0.6)
    N = 5
    g = torch.Generator().manual_seed(3)
    A = torch.randn(N, N, generator=g, dtype=DT)
    A = 2 * A / torch.linalg.matrix_norm(A, ord=2)
    b = 2 * torch.randn(N, generator=g, dtype=DT)

    def F(x: torch.Tensor) -> torch.Tensor:
        return x + 0.3 * torch.sin(x @ A.T) - b

    x0 = 5 * torch.randn(40, N, generator=torch.Generator().manual_seed(2), dtype=DT)
    result = dogleg_batch(F, x0, tol=1e-12)
    assert result.reason == ["converged"] * 40
    ref = scipy.optimize.root(
        lambda x: x + 0.3 * np.sin(A.numpy() @ x) - b.numpy(), np.zeros(N), method="hybr", tol=1e-14
    )
    np.testing.assert_allclose(result.x.numpy(), np.broadcast_to(ref.x, (40, N)), atol=1e-10)
    recomputed = torch.linalg.vector_norm(F(result.x), dim=1)
    np.testing.assert_allclose(result.residual.numpy(), recomputed.numpy(), atol=1e-15)
    assert int(result.iterations.max()) <= 25


def test_linear_system_is_solved_by_one_newton_step():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(4, 4, generator=g, dtype=DT) + 4 * torch.eye(4, dtype=DT)
    b = torch.randn(4, generator=g, dtype=DT)
    x0 = torch.randn(6, 4, generator=g, dtype=DT)
    result = dogleg_batch(lambda x: x @ A.T - b, x0, jacobian=lambda x: A.expand(x.shape[0], 4, 4))
    expected = torch.linalg.solve(A, b)
    torch.testing.assert_close(result.x, expected.expand(6, 4), rtol=0, atol=1e-12)
    # the first radius 100 ||D x0|| holds the Newton step: one Jacobian per start
    assert result.iterations.tolist() == [1] * 6


def test_badly_scaled_powell_function():
    # MINPACK's Powell badly scaled function: 1e4 x y = 1, exp(-x) + exp(-y) = 1.0001, whose
    # coordinates differ by six orders of magnitude; its root by scipy's hybrj as reference
    def F(z: torch.Tensor) -> torch.Tensor:
        x, y = z[:, 0], z[:, 1]
        return torch.stack([1e4 * x * y - 1, torch.exp(-x) + torch.exp(-y) - 1.0001], 1)

    def F_np(z: np.ndarray) -> np.ndarray:
        return np.array([1e4 * z[0] * z[1] - 1, np.exp(-z[0]) + np.exp(-z[1]) - 1.0001])

    ref = scipy.optimize.root(F_np, np.array([0.0, 1.0]), method="hybr", tol=1e-15)
    assert np.linalg.norm(F_np(ref.x)) < 1e-12
    result = dogleg_batch(F, torch.tensor([[0.0, 1.0]], dtype=DT), tol=1e-12)
    assert result.reason == ["converged"]
    np.testing.assert_allclose(result.x[0].numpy(), ref.x, rtol=1e-9)


def test_rows_are_solved_independently():
    # a start's result does not depend on the others in its batch (up to batched rounding)
    def F(x: torch.Tensor) -> torch.Tensor:
        return torch.stack([x[:, 0] ** 2 + x[:, 1] ** 2 - 4, torch.sin(x[:, 0]) - x[:, 1]], 1)

    x0 = 3 * torch.randn(12, 2, generator=torch.Generator().manual_seed(5), dtype=DT)
    together = dogleg_batch(F, x0)
    for i in range(12):
        alone = dogleg_batch(F, x0[i : i + 1])
        assert alone.reason == [together.reason[i]]
        torch.testing.assert_close(alone.x[0], together.x[i], rtol=0, atol=1e-12)
        assert int(alone.iterations[0]) == int(together.iterations[i])
    assert bool(together.converged.all())
    roots = together.x
    torch.testing.assert_close(roots.norm(dim=1), torch.full((12,), 2.0, dtype=DT))
    torch.testing.assert_close(torch.sin(roots[:, 0]), roots[:, 1])


def test_analytic_and_forward_mode_jacobians_agree():
    def F(x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(3 * x.roll(1, 1)) - 0.5 * x

    def J(x: torch.Tensor) -> torch.Tensor:
        n = x.shape[1]
        slope = 3 / torch.cosh(3 * x.roll(1, 1)) ** 2
        shift = torch.eye(n, dtype=DT).roll(1, 0)  # (x.roll(1))_i = x_{i-1}
        return slope[:, :, None] * shift - 0.5 * torch.eye(n, dtype=DT)

    x0 = torch.randn(30, 3, generator=torch.Generator().manual_seed(1), dtype=DT)
    analytic = dogleg_batch(F, x0, jacobian=J)
    forward = dogleg_batch(F, x0)
    assert analytic.reason == forward.reason
    torch.testing.assert_close(analytic.x, forward.x, rtol=0, atol=1e-12)
    ok = analytic.converged
    assert int(ok.sum()) >= 20
    assert float(torch.linalg.vector_norm(F(analytic.x[ok]), dim=1).max()) <= 1e-12


def test_nan_starts_and_steps_into_nan_regions():
    def F(x: torch.Tensor) -> torch.Tensor:
        return torch.log(x) - 3.0

    # log's Newton step from 100 or 1e4 lands below 0, where it is NaN: rejected, radius cut
    x0 = torch.tensor([[-1.0], [100.0], [float("nan")], [1e4], [0.5]], dtype=DT)
    result = dogleg_batch(F, x0)
    assert result.reason == ["nan", "converged", "nan", "converged", "converged"]
    np.testing.assert_allclose(result.x[result.converged].numpy(), math.exp(3.0), rtol=1e-12)
    assert torch.isinf(result.residual[~result.converged]).all()


def test_no_root_is_reported_not_converged():
    # x^2 + 1 has its least norm 1 at 0 (stalls); 1 / (1 + x) has its infimum at +inf
    stall = dogleg_batch(lambda x: x * x + 1, torch.tensor([[0.7], [-2.0]], dtype=DT))
    assert stall.reason == ["stalled", "stalled"]
    np.testing.assert_allclose(stall.x.numpy(), 0.0, atol=1e-3)
    run = dogleg_batch(lambda x: 1 / (1 + x), torch.tensor([[1.0], [2.0]], dtype=DT), bound=1e3)
    assert set(run.reason) <= {"diverged", "stalled"}
    assert not bool(run.converged.any())


def test_float32_follows_the_input():
    def F(x: torch.Tensor) -> torch.Tensor:
        return x**3 - 2

    result = dogleg_batch(F, torch.tensor([[1.0], [3.0]]), tol=1e-5)
    assert result.x.dtype == torch.float32
    assert bool(result.converged.all())
    np.testing.assert_allclose(result.x.numpy(), 2 ** (1 / 3), rtol=1e-6)


def test_bad_input_is_refused():
    x0 = torch.zeros(3, 2, dtype=DT)
    with pytest.raises(FixedPointError, match=r"x0 must be a \(B, N\) tensor"):
        dogleg_batch(lambda x: x, torch.zeros(3, dtype=DT))
    with pytest.raises(FixedPointError, match="F must map"):
        dogleg_batch(lambda x: x[:, :1], x0)
    with pytest.raises(FixedPointError, match="trials must be an integer >= 1"):
        dogleg_batch(lambda x: x, x0, trials=0)
    with pytest.raises(FixedPointError, match="tol must be a finite number > 0"):
        dogleg_batch(lambda x: x, x0, tol=float("nan"))


def _reference_dogleg(F, J, x0, *, tol, max_iter, trials=4, max_rounds=2, stall_window=10,
                      stall_ratio=0.9, radius_factor=100.0, bound=1e8):  # fmt: skip
    """One start, sequentially, in numpy, as the module docstring states the method; the
    model value is the product ``F + J dx`` itself. Returns (x, reason, iterations)."""
    eps = np.finfo(np.float64).eps
    x = x0.copy()
    Fx = F(x)
    norm = np.linalg.norm(Fx)
    if not (np.isfinite(norm) and np.isfinite(x).all()):
        return x, "nan", 0
    if norm <= tol:
        return x, "converged", 0
    d = np.zeros_like(x)
    reference = norm
    radius = 0.0
    for iteration in range(1, max_iter + 1):
        Jx = J(x)
        if not np.isfinite(Jx).all():
            return x, "nan", iteration
        d = np.maximum(d, np.linalg.norm(Jx, axis=0))
        d[d == 0] = 1.0
        if iteration == 1:
            radius = radius_factor * np.linalg.norm(d * x) or radius_factor
        try:
            s_newton = d * np.linalg.solve(Jx, -Fx)
        except np.linalg.LinAlgError:
            s_newton = None
        g = Jx.T @ Fx / d
        alpha = (g @ g) / np.sum((Jx @ (g / d)) ** 2)
        s_cauchy = -alpha * g if np.isfinite(alpha) else np.zeros_like(g)
        delta, accepted = radius, False
        for _ in range(max_rounds):
            for k in range(trials):
                r = delta * 0.5**k
                if s_newton is not None and np.linalg.norm(s_newton) <= r:
                    step = s_newton
                elif np.linalg.norm(s_cauchy) >= r:
                    step = -r * g / np.linalg.norm(g)
                elif s_newton is None:
                    step = s_cauchy
                else:  # ||s_c + tau (s_n - s_c)|| = r
                    leg = s_newton - s_cauchy
                    a, b, c = leg @ leg, 2 * s_cauchy @ leg, s_cauchy @ s_cauchy - r * r
                    tau = min(max((-b + math.sqrt(max(b * b - 4 * a * c, 0))) / (2 * a), 0), 1)
                    step = s_cauchy + tau * leg
                if not np.isfinite(step).all():
                    continue
                dx = step / d
                Ft = F(x + dx)
                nt = np.linalg.norm(Ft)
                predicted = norm**2 - np.sum((Fx + Jx @ dx) ** 2)
                gain = (norm**2 - nt**2) / predicted
                if np.isfinite(nt) and predicted > 0 and gain > 1e-4 and nt < norm:
                    x, Fx, norm, accepted = x + dx, Ft, nt, True
                    size = np.linalg.norm(step)
                    grown = max(r, 2 * size) if gain > 0.75 else r
                    delta = 0.5 * r if gain < 0.25 else grown
                    break
            if accepted:
                break
            delta = 0.25 * delta * 0.5 ** (trials - 1)
        radius = delta
        if norm <= tol:
            return x, "converged", iteration
        if np.abs(x).max() > bound:
            return x, "diverged", iteration
        if radius < 4 * eps * (1 + np.linalg.norm(d * x)):
            return x, "stalled", iteration
        if iteration % stall_window == 0:
            if norm > stall_ratio * reference:
                return x, "stalled", iteration
            reference = norm
    return x, "max_iter", max_iter


def _rosenbrock(x):
    return np.array([10 * (x[1] - x[0] ** 2), 1 - x[0]])


def _rosenbrock_jacobian(x):
    return np.array([[-20 * x[0], 10.0], [-1.0, 0.0]])


def _freudenstein_roth(x):
    return np.array([
        -13 + x[0] + ((5 - x[1]) * x[1] - 2) * x[1],
        -29 + x[0] + ((x[1] + 1) * x[1] - 14) * x[1],
    ])  # fmt: skip


def _freudenstein_roth_jacobian(x):
    return np.array([
        [1.0, 10 * x[1] - 3 * x[1] ** 2 - 2],
        [1.0, 3 * x[1] ** 2 + 2 * x[1] - 14],
    ])  # fmt: skip


def _powell_badly_scaled(x):
    return np.array([1e4 * x[0] * x[1] - 1, np.exp(-x[0]) + np.exp(-x[1]) - 1.0001])


def _powell_badly_scaled_jacobian(x):
    return np.array([[1e4 * x[1], 1e4 * x[0]], [-np.exp(-x[0]), -np.exp(-x[1])]])


@pytest.mark.parametrize(
    ("F", "J"),
    [
        (_rosenbrock, _rosenbrock_jacobian),
        (_freudenstein_roth, _freudenstein_roth_jacobian),
        (_powell_badly_scaled, _powell_badly_scaled_jacobian),
    ],
    ids=["rosenbrock", "freudenstein-roth", "powell-badly-scaled"],
)
def test_batch_follows_the_documented_method_step_by_step(F, J):
    # MINPACK test problems from 64 starts each: every start's end point, reason and number
    # of Jacobians equal those of a sequential numpy transcription of the module docstring
    # (the step by its three branches, the gain ratio from the product F + J dx, the radius
    # rules, the scaling), so each rule is pinned, not only the roots.
    def F_batch(z: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.as_tensor(F(row.numpy())) for row in z])

    def J_batch(z: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.as_tensor(J(row.numpy())) for row in z])

    g = torch.Generator().manual_seed(7)
    x0 = torch.cat([torch.tensor([[-1.2, 1.0], [0.5, -2.0], [0.0, 1.0]], dtype=DT),
                    4 * torch.randn(61, 2, generator=g, dtype=DT)])  # fmt: skip
    result = dogleg_batch(F_batch, x0, jacobian=J_batch, tol=1e-10, max_iter=60, stall_window=8)
    reasons = set()
    for i in range(x0.shape[0]):
        with np.errstate(over="ignore"):  # exp(-x) of far starts; rejected like the batch's
            x, reason, iterations = _reference_dogleg(
                F, J, x0[i].numpy(), tol=1e-10, max_iter=60, stall_window=8
            )
        assert result.reason[i] == reason, i
        assert int(result.iterations[i]) == iterations, i
        np.testing.assert_allclose(result.x[i].numpy(), x, rtol=1e-9, atol=1e-12)
        reasons.add(reason)
    assert "converged" in reasons
    if F is _freudenstein_roth:  # its local minimum of ||F|| that is not a root
        assert "stalled" in reasons


def test_edge_cases_end_with_the_right_reason():
    # no rows; no iterations; a zero gradient at a non-root (x^2 + 1 at 0) stalls; float32
    # cannot reach the float64 default tolerance and must not claim it
    empty = dogleg_batch(lambda x: x, torch.empty(0, 3, dtype=DT))
    assert empty.x.shape == (0, 3)
    assert empty.evaluations == 0
    none = dogleg_batch(lambda x: x - 1, torch.zeros(2, 1, dtype=DT), max_iter=0)
    assert none.reason == ["max_iter", "max_iter"]
    flat = dogleg_batch(lambda x: x * x + 1, torch.zeros(1, 1, dtype=DT))
    assert flat.reason == ["stalled"]
    single = dogleg_batch(lambda x: x**3 - 2, torch.tensor([[1.0], [3.0]]))
    assert not bool(single.converged.any())
    np.testing.assert_allclose(single.x.numpy(), 2 ** (1 / 3), rtol=1e-6)
    with pytest.raises(FixedPointError, match="stall_ratio must lie in"):
        dogleg_batch(lambda x: x, torch.zeros(1, 1, dtype=DT), stall_ratio=1.5)
