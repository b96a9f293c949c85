"""Batched Levenberg-Marquardt (losslab.solve.newton) against scipy.optimize.root."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.optimize
import torch

from losslab.errors import FixedPointError
from losslab.solve.newton import (
    REASONS,
    NewtonBatchResult,
    batched_jacobian,
    newton_batch,
    project_into_box,
)

DT = torch.float64


def _systems(B: int, N: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row ``x + 0.3 sin(A x) = b`` with ``||A||_2 = 2``: ``J = I + 0.3 diag(cos) A`` has
    ``||J - I|| <= 0.6``, so each system has one root and a well-conditioned Jacobian."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(B, N, N, generator=g, dtype=DT)
    A = 2 * A / torch.linalg.matrix_norm(A, ord=2)[:, None, None]
    b = 2 * torch.randn(B, N, generator=g, dtype=DT)
    return A, b


def test_random_systems_match_scipy_root():
    B, N = 24, 5
    A, b = _systems(B, N, seed=0)

    def F(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return x + 0.3 * torch.sin(torch.einsum("bij,bj->bi", A[rows], x)) - b[rows]

    x0 = 3 * torch.randn(B, N, generator=torch.Generator().manual_seed(1), dtype=DT)
    result = newton_batch(F, x0, indexed=True, tol=1e-12)
    assert bool(result.converged.all()), result.counts()
    assert float(result.residual.max()) <= 1e-12
    for i in range(B):
        Ai, bi = A[i].numpy(), b[i].numpy()
        ref = scipy.optimize.root(
            lambda x, Ai=Ai, bi=bi: x + 0.3 * np.sin(Ai @ x) - bi,
            x0[i].numpy(),
            jac=lambda x, Ai=Ai: np.eye(N) + 0.3 * np.cos(Ai @ x)[:, None] * Ai,
            tol=1e-13,
        )
        assert np.linalg.norm(ref.fun) <= 1e-12
        np.testing.assert_allclose(result.x[i].numpy(), ref.x, atol=1e-10)
    # residual recomputed independently
    np.testing.assert_allclose(
        torch.linalg.vector_norm(F(result.x, torch.arange(B)), dim=1).numpy(),
        result.residual.numpy(),
        atol=1e-15,
    )


def test_shared_system_default_jacobian_many_starts():
    N = 4
    A, b = _systems(1, N, seed=3)

    def F(x: torch.Tensor) -> torch.Tensor:
        return x + 0.3 * torch.sin(x @ A[0].T) - b[0]

    x0 = 5 * torch.randn(50, N, generator=torch.Generator().manual_seed(2), dtype=DT)
    result = newton_batch(F, x0)
    assert bool(result.converged.all())
    ref = scipy.optimize.root(
        lambda x: x + 0.3 * np.sin(A[0].numpy() @ x) - b[0].numpy(), np.zeros(N), tol=1e-14
    )
    np.testing.assert_allclose(result.x.numpy(), np.broadcast_to(ref.x, (50, N)), atol=1e-10)
    assert result.reason == ["converged"] * 50
    assert int(result.iterations.max()) <= 20


def test_nan_starts_do_not_poison_the_batch():
    def F(x: torch.Tensor) -> torch.Tensor:
        return torch.log(x) - 0.5

    x0 = torch.tensor([[-1.0], [2.0], [float("nan")], [0.3], [-0.2], [5.0]], dtype=DT)
    result = newton_batch(F, x0)
    assert result.reason == ["nan", "converged", "nan", "converged", "nan", "converged"]
    ok = result.converged
    np.testing.assert_allclose(result.x[ok].squeeze(1).numpy(), math.exp(0.5), rtol=2e-12)
    assert torch.isinf(result.residual[~ok]).all()
    assert result.counts() == {
        "converged": 3,
        "max_iter": 0,
        "nan": 3,
        "diverged": 0,
        "stalled": 0,
        "captured": 0,
    }


def test_step_into_nan_region_is_rejected_and_damped():
    # the Newton step from x = 100 lands at x < 0 where log is NaN; damping recovers
    def F(x: torch.Tensor) -> torch.Tensor:
        return torch.log(x) - 3.0

    result = newton_batch(F, torch.tensor([[100.0], [1e4]], dtype=DT))
    assert bool(result.converged.all())
    np.testing.assert_allclose(result.x.squeeze(1).numpy(), math.exp(3.0), rtol=2e-12)


@pytest.mark.parametrize("mode", ["clamp", "reflect"])
def test_box_keeps_iterates_inside_and_selects_the_root(mode):
    def F(x: torch.Tensor) -> torch.Tensor:
        return x * x - 4.0

    x0 = torch.linspace(0.05, 9.5, 20, dtype=DT)[:, None]
    result = newton_batch(F, x0, box=(0.0, 10.0), box_mode=mode)
    assert bool(result.converged.all())
    np.testing.assert_allclose(result.x.numpy(), 2.0, atol=1e-12)


def test_project_into_box():
    low, high = torch.zeros(2, dtype=DT), torch.ones(2, dtype=DT)
    x = torch.tensor([[-0.25, 1.5], [0.5, 2.25]], dtype=DT)
    clamp = project_into_box(x, low, high, "clamp")
    reflect = project_into_box(x, low, high, "reflect")
    np.testing.assert_allclose(clamp.numpy(), [[0.0, 1.0], [0.5, 1.0]])
    np.testing.assert_allclose(reflect.numpy(), [[0.25, 0.5], [0.5, 0.25]])


def test_no_root_is_reported_not_converged():
    # |x^2 + 1| has a minimum 1 at 0 (stalls); 1 / (1 + x) has its infimum at +inf, and
    # Newton's step x -> 2 x + 1 runs away (diverges)
    stall = newton_batch(lambda x: x * x + 1, torch.tensor([[0.7], [-2.0]], dtype=DT))
    assert not bool(stall.converged.any())
    assert set(stall.reason) <= {"stalled", "max_iter"}
    np.testing.assert_allclose(stall.x.numpy(), 0.0, atol=1e-4)
    run = newton_batch(lambda x: 1 / (1 + x), torch.tensor([[1.0], [2.0]], dtype=DT), bound=1e3)
    assert run.reason == ["diverged", "diverged"]
    assert not bool(run.converged.any())


def test_max_iter_zero_and_converged_start():
    x0 = torch.tensor([[2.0], [3.0]], dtype=DT)
    result = newton_batch(lambda x: x - 2.0, x0, max_iter=0)
    assert result.reason == ["converged", "max_iter"]
    assert result.iterations.tolist() == [0, 0]


class _NoVmap(torch.autograd.Function):
    """``x^3`` as a custom autograd function without a vmap rule."""

    @staticmethod
    def forward(ctx, x):  # type: ignore[override]
        ctx.save_for_backward(x)
        return x**3

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return 3 * x * x * grad


def test_batched_jacobian_matches_autograd_and_falls_back():
    W = torch.randn(3, 3, generator=torch.Generator().manual_seed(0), dtype=DT)

    def f(x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x @ W.T) * x[..., :1] + x**2

    x = torch.randn(7, 3, generator=torch.Generator().manual_seed(1), dtype=DT)
    J = batched_jacobian(f, x)
    for i in range(7):
        ref = torch.autograd.functional.jacobian(lambda z: f(z[None])[0], x[i])
        np.testing.assert_allclose(J[i].numpy(), ref.numpy(), atol=1e-13)

    def g(x: torch.Tensor) -> torch.Tensor:
        return _NoVmap.apply(x) + x

    Jg = batched_jacobian(g, x)
    expected = torch.diag_embed(3 * x * x + 1)
    np.testing.assert_allclose(Jg.numpy(), expected.numpy(), atol=1e-13)
    result = newton_batch(lambda z: g(z) - 2.0, torch.ones(4, 3, dtype=DT))
    assert bool(result.converged.all())


def test_result_dict_and_reasons():
    result = newton_batch(lambda x: x - 1.0, torch.zeros(3, 2, dtype=DT))
    d = result.to_dict()
    assert d["reason"] == ["converged"] * 3
    assert d["counts"]["converged"] == 3
    assert REASONS[0] == "converged"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"x0": torch.zeros(3, dtype=DT)}, "x0"),
        ({"tol": 0.0}, "tol"),
        ({"max_iter": -1}, "max_iter"),
        ({"box": (1.0, 0.0)}, "low < high"),
        ({"box": (torch.zeros(3), 1.0)}, "shape"),
        ({"box_mode": "wrap"}, "box_mode"),
        ({"damping": "scaled"}, "damping"),
    ],
)
def test_bad_input(kwargs, message):
    args = {"x0": torch.zeros(2, 2, dtype=DT)} | kwargs
    with pytest.raises(FixedPointError, match=message):
        newton_batch(lambda x: x, **args)


def test_map_changing_shape_is_an_error():
    with pytest.raises(FixedPointError, match="F must map"):
        newton_batch(lambda x: x[:, :1], torch.zeros(2, 2, dtype=DT))


def _shared_system(N: int = 4):
    A, b = _systems(1, N, seed=5)

    def F(x: torch.Tensor) -> torch.Tensor:
        return x + 0.3 * torch.sin(x @ A[0].T) - b[0]

    return F


def test_chunks_give_the_same_result():
    F = _shared_system()
    x0 = 4 * torch.randn(37, 4, generator=torch.Generator().manual_seed(3), dtype=DT)
    whole = newton_batch(F, x0)
    chunked = newton_batch(F, x0, chunk_size=5)
    assert torch.equal(whole.x, chunked.x)
    assert torch.equal(whole.iterations, chunked.iterations)
    assert whole.reason == chunked.reason


def test_stop_rule_captures_starts():
    F = _shared_system()
    root = newton_batch(F, torch.zeros(1, 4, dtype=DT)).x[0]
    x0 = root + 0.5 * torch.randn(20, 4, generator=torch.Generator().manual_seed(4), dtype=DT)
    x0[0] = root + 1e-3  # captured before any iteration

    def near(x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.vector_norm(x - root, dim=1) <= 1e-2

    result = newton_batch(F, x0, stop=near)
    assert set(result.reason) == {"captured"}
    assert int(result.iterations[0]) == 0
    assert bool((torch.linalg.vector_norm(result.x - root, dim=1) <= 1e-2).all())
    assert not bool(result.converged.any())  # captured is not converged


def test_coarse_jacobian_keeps_the_answer():
    F = _shared_system()
    x0 = 4 * torch.randn(30, 4, generator=torch.Generator().manual_seed(6), dtype=DT)
    exact = newton_batch(F, x0)

    def coarse(x: torch.Tensor) -> torch.Tensor:  # float32 Jacobian, as for large nets
        return batched_jacobian(F, x).to(torch.float32)

    calls = []

    def counted(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        return coarse(x)

    rough = newton_batch(F, x0, coarse_jacobian=counted, coarse_above=1e-2)
    assert calls  # used while far from the root
    assert bool(rough.converged.all())
    np.testing.assert_allclose(rough.x.numpy(), exact.x.numpy(), atol=1e-11)


def test_stalled_on_a_face_of_the_box():
    # |x^2 + 1| on [0.5, 2]: the minimum of ||F|| in the box is at the face x = 0.5
    result = newton_batch(
        lambda x: x * x + 1, torch.tensor([[1.5]], dtype=DT), box=(0.5, 2.0), stall_window=3
    )
    assert result.reason == ["stalled"]
    np.testing.assert_allclose(result.x.numpy(), 0.5)


def test_coarse_jacobian_overflow_falls_back_to_exact():
    F = _shared_system()

    def broken(x: torch.Tensor) -> torch.Tensor:
        J = batched_jacobian(F, x).to(torch.float32)
        J[::2] = torch.inf  # overflow in half the rows
        return J

    x0 = 4 * torch.randn(12, 4, generator=torch.Generator().manual_seed(8), dtype=DT)
    result = newton_batch(F, x0, coarse_jacobian=broken, coarse_above=1e-6)
    assert bool(result.converged.all())


@pytest.mark.parametrize("trial_rows", [10**9, 40])
def test_batched_retries_follow_the_sequential_damping_sequence(monkeypatch, trial_rows):
    # A saturated heavy-tailed net: many Newton steps are rejected and retried with more
    # damping. Trials evaluated four at a time (or as many as TRIAL_ROWS = 40 rows allow:
    # one per start while more than 20 are pending) must give the sequential answer.
    import losslab.solve.newton as newton
    from losslab.nets import SquareNet

    net = SquareNet(4, 2, init="cauchy", weight_scale=64, seed=5)
    x0 = torch.rand(300, 4, generator=torch.Generator().manual_seed(0), dtype=DT)

    def run() -> newton.NewtonBatchResult:
        return newton_batch(lambda x: net(x) - x, x0, box=(0.0, 1.0), max_iter=40)

    monkeypatch.setattr(newton, "TRIAL_ROWS", trial_rows)
    batched = run()
    monkeypatch.setattr(newton, "RETRY_BATCH", 1)
    sequential = run()
    assert torch.equal(batched.status, sequential.status)
    assert torch.equal(batched.iterations, sequential.iterations)
    torch.testing.assert_close(batched.x, sequential.x, rtol=1e-12, atol=1e-12)
    # retries ran: the batches evaluated trials that the sequential order never needed
    assert batched.evaluations > sequential.evaluations


def test_marquardt_damping_is_invariant_to_the_scale_of_each_coordinate():
    # With D = diag(J^T J) the LM step for F(S z) is S^{-1} times the step for F(x): the
    # same iterates in other units (coordinates scaled by 0.1 .. 100; far wider scales would
    # meet the floor of D).
    from losslab.nets import SquareNet

    net = SquareNet(4, 2, init="cauchy", weight_scale=16, seed=3)
    S = torch.tensor([0.1, 1.0, 10.0, 100.0], dtype=DT)
    x0 = torch.rand(200, 4, generator=torch.Generator().manual_seed(1), dtype=DT)

    def run(scale: torch.Tensor, damping: str) -> NewtonBatchResult:
        return newton_batch(
            lambda z: net(z * scale) - z * scale, x0 / scale, damping=damping, max_iter=30
        )

    plain = run(torch.ones(4, dtype=DT), "marquardt")
    scaled = run(S, "marquardt")
    assert int(plain.converged.sum()) > 100
    assert torch.equal(plain.status, scaled.status)
    assert torch.equal(plain.iterations, scaled.iterations)
    torch.testing.assert_close(scaled.x * S, plain.x, rtol=1e-8, atol=1e-9)
    # the identity damping is not invariant: the rescaled problem goes elsewhere
    identity = run(S, "identity")
    assert not torch.equal(identity.status, plain.status) or not torch.allclose(
        identity.x * S, plain.x, rtol=1e-9, atol=1e-12
    )
