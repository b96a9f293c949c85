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
    with pytest.raises(FixedPointError, match="tol must be > 0"):
        dogleg_batch(lambda x: x, x0, tol=float("nan"))
