from __future__ import annotations

import pytest
import torch

import losslab.convex.solvers as solvers
from losslab.convex import ConvexReLUProgram, activation_patterns, as_features, sample_gates, solve
from losslab.convex.admm import _RidgeSolver, admm
from losslab.linalg.cholesky import solve_with_cholesky
from tests.convex_reference import clarabel_objective, relu_teacher


def program(*, lam: float, n=40, d=3, gates=20, bias=True, seed=0) -> ConvexReLUProgram:
    X, y = relu_teacher(n, d, seed)
    X = as_features(X, bias=bias)
    patterns = activation_patterns(X, sample_gates(X.shape[1], gates, seed=seed + 1))
    return ConvexReLUProgram(X, y, patterns, lam, "gated")


def dense_matrix(prog: ConvexReLUProgram) -> torch.Tensor:
    """``A`` (n, B d) of the gated form: the columns of ``D_b X``, block after block."""
    masks = prog.patterns.to(prog.X.dtype)
    return (masks.T[:, :, None] * prog.X[None, :, :]).permute(1, 0, 2).reshape(prog.n, -1)


def test_solve_with_cholesky_matches_a_dense_solve():
    generator = torch.Generator().manual_seed(0)
    A = torch.randn(30, 30, generator=generator, dtype=torch.float64)
    matrix = A @ A.T + 30 * torch.eye(30, dtype=torch.float64)
    factor = torch.linalg.cholesky(matrix)
    rhs = torch.randn(30, generator=generator, dtype=torch.float64)
    torch.testing.assert_close(solve_with_cholesky(factor, rhs), torch.linalg.solve(matrix, rhs))
    many = torch.randn(30, 4, generator=generator, dtype=torch.float64)
    torch.testing.assert_close(solve_with_cholesky(factor, many), torch.linalg.solve(matrix, many))


def test_fit_gram_and_ridge_solve_match_dense_algebra():
    prog = program(lam=0.05)
    A = dense_matrix(prog)
    torch.testing.assert_close(prog.operator.fit_gram, A @ A.T)
    for rho in (0.3, 1e-9):  # small rho: the step must not lose digits (it once did)
        ridge = _RidgeSolver(prog.operator, prog.y, rho)
        center = torch.randn(prog.zeros().shape, generator=torch.Generator().manual_seed(1),
                             dtype=torch.float64)  # fmt: skip
        # the ridge problem as one least-squares problem, solved by QR (no normal equations,
        # whose conditioning would hide the digits this test is about)
        identity = torch.eye(A.shape[1], dtype=torch.float64)
        stacked = torch.cat([A / prog.n**0.5, rho**0.5 * identity])
        target = torch.cat([prog.y / prog.n**0.5, rho**0.5 * center.flatten()])
        expected = torch.linalg.lstsq(stacked, target[:, None]).solution[:, 0]
        torch.testing.assert_close(ridge(center), expected.reshape(center.shape),
                                   rtol=1e-9, atol=1e-9)  # fmt: skip


def test_a_rho_lost_in_rounding_is_raised_to_the_floor():
    # y 1e150 times larger than lam once made rho 1e-152: n rho I vanished in A A^T, and
    # the solve failed with "check X". The floor 1e-12 max|A A^T| / n always factors.
    prog = program(lam=0.05)
    ridge = _RidgeSolver(prog.operator, prog.y, 1e-200)
    floor = 1e-12 * float(prog.operator.fit_gram.abs().max()) / prog.n
    assert ridge.rho == pytest.approx(floor)
    huge = solve(ConvexReLUProgram(prog.X, prog.y * 1e150, prog.patterns, 0.05), max_iter=50)
    assert huge.objective > 0
    assert huge.objective < float("inf")


@pytest.mark.parametrize("lam", [1e-1, 1e-2, 1e-3])
def test_admm_alone_reaches_the_clarabel_optimum(lam):
    prog = program(lam=lam)
    check = solvers._GatedGapCheck(prog, 1e-8, 10, [], polish_below=0.0)
    run = admm(prog.operator, prog.y, lam, prog.zeros(), max_iter=20_000, stop=check)
    assert run.stopped
    assert check.certified()
    reference = clarabel_objective(prog.X, prog.y, prog.patterns, lam, "gated")
    assert check.best_objective == pytest.approx(reference, rel=1e-6)
    assert check.best_dual <= reference * (1 + 1e-7)
    assert run.factorizations >= 1


def test_admm_warm_start_from_the_solution_certifies_within_two_checks():
    prog = program(lam=0.02)
    solution = solve(prog, tol=1e-10).blocks
    runs = []
    for start in (solution, prog.zeros()):
        check = solvers._GatedGapCheck(prog, 1e-8, 10, [], polish_below=0.0)
        runs.append(admm(prog.operator, prog.y, prog.lam, start, max_iter=5000, stop=check))
    warm, cold = runs
    assert warm.stopped
    assert cold.stopped
    assert warm.iterations <= 20
    assert warm.iterations < cold.iterations


@pytest.mark.parametrize("lam", [1e-2, 1e-5])
def test_solve_returns_a_dual_feasible_point_with_its_value(lam):
    # Near interpolation (lam = 1e-5) ADMM alone is slow and the Newton polish finishes;
    # the FISTA solver before them did not converge there in 1e5 iterations.
    prog = program(lam=lam, n=60, d=4, gates=30)
    result = solve(prog, tol=1e-8, max_iter=20_000)
    assert result.converged, result.reason
    q = result.dual_point
    assert q is not None
    ratios = prog.operator.adjoint(q).norm(dim=1) / lam
    assert float(ratios.max()) <= 1 + 1e-12
    value = float(q @ prog.y) - 0.5 * prog.n * float(q @ q)
    assert value == pytest.approx(result.dual_objective, rel=1e-12)
    reference = clarabel_objective(prog.X, prog.y, prog.patterns, lam, "gated")
    assert result.dual_objective <= reference * (1 + 1e-7)
    assert result.objective == pytest.approx(reference, rel=1e-6)


def test_large_n_falls_back_to_fista(monkeypatch):
    prog = program(lam=0.02, n=80)
    monkeypatch.setattr(solvers, "FACTOR_MAX_SAMPLES", 50)
    monkeypatch.setattr(solvers, "admm", lambda *args, **kwargs: pytest.fail("ADMM was used"))
    result = solve(prog, tol=1e-7, max_iter=50_000)
    assert result.converged, result.reason
    reference = clarabel_objective(prog.X, prog.y, prog.patterns, prog.lam, "gated")
    assert result.objective == pytest.approx(reference, rel=1e-6)


def test_with_lam_shares_the_operator_and_changes_only_lam():
    prog = program(lam=0.05)
    gram = prog.operator.fit_gram
    other = prog.with_lam(0.01)
    assert other.lam == 0.01
    assert prog.lam == 0.05
    assert other.operator is prog.operator
    assert other.operator.fit_gram is gram
    fresh = ConvexReLUProgram(prog.X, prog.y, prog.patterns, 0.01, "gated")
    U = torch.randn(prog.zeros().shape, generator=torch.Generator().manual_seed(2),
                    dtype=torch.float64)  # fmt: skip
    assert other.objective(U) == pytest.approx(fresh.objective(U), rel=1e-14)


def test_float32_tol_is_raised_to_the_rounding_floor():
    prog = program(lam=0.02, n=60)
    single = ConvexReLUProgram(prog.X.float(), prog.y.float(), prog.patterns, prog.lam)
    result = solve(single)  # default tol 1e-8: below what float32 can certify
    assert result.converged, result.reason
    floor = solvers.TOL_FLOOR_EPS * torch.finfo(torch.float32).eps
    assert result.relative_gap <= floor
    assert f"tol {floor:.0e}" in result.reason
    reference = clarabel_objective(prog.X, prog.y, prog.patterns, prog.lam, "gated")
    assert result.objective == pytest.approx(reference, rel=1e-5)
