from __future__ import annotations

import dataclasses

import pytest
import torch

from losslab.convex import (
    ConvexReLUProgram,
    activation_patterns,
    as_features,
    enumerate_patterns,
    interior_point_method,
    sample_gates,
)
from losslab.convex.interior_point_method import InteriorPointResult, solve_relu_interior_point
from losslab.errors import ConvexProblemError
from tests.convex_reference import clarabel_objective, relu_teacher


def relu_program(
    *, bias: bool, lam: float, n: int = 30, d: int = 3, gates: int | None = 20, seed: int = 0
) -> ConvexReLUProgram:
    """The teacher data with sampled gates, or every pattern when ``gates`` is None."""
    X, y = relu_teacher(n, d, seed)
    X = as_features(X, bias=bias)
    if gates is None:
        patterns = enumerate_patterns(X)
    else:
        patterns = activation_patterns(X, sample_gates(X.shape[1], gates, seed=seed + 1))
    return ConvexReLUProgram(X, y, patterns, lam, "relu")


def assert_certified(program: ConvexReLUProgram, result: InteriorPointResult, tol: float) -> None:
    """Feasible blocks, consistent numbers and a rigorous gap recomputed from scratch."""
    assert result.converged, result.reason
    assert result.blocks.dtype == torch.float64
    assert result.blocks.shape == program.zeros().shape
    assert program.constraint_violation(result.blocks) == 0
    assert result.objective == program.objective(result.blocks)
    exact = program.dual_bound(result.blocks).objective
    assert result.dual_objective >= exact
    assert (result.objective - exact) / result.objective <= tol
    assert result.relative_gap <= tol
    assert "relative duality gap" in result.reason


@pytest.mark.parametrize(
    ("bias", "lam", "n", "d", "gates", "seed"),
    [
        (False, 0.02, 30, 3, 20, 0),
        (True, 0.1, 30, 3, 20, 0),
        (True, 1e-3, 30, 3, 40, 1),
        (False, 1e-3, 50, 4, 40, 2),
        (False, 1e-3, 25, 2, None, 3),  # every pattern, no bias
        (True, 1e-2, 14, 2, None, 4),  # every pattern, bias column
    ],
)
def test_objective_matches_clarabel(bias, lam, n, d, gates, seed):
    program = relu_program(bias=bias, lam=lam, n=n, d=d, gates=gates, seed=seed)
    result = solve_relu_interior_point(program, tol=1e-8)
    assert_certified(program, result, 1e-8)
    reference = clarabel_objective(program.X, program.y, program.patterns, lam, "relu")
    assert result.objective == pytest.approx(reference, rel=1e-6)
    # The certified interval [dual, primal] contains the reference optimum.
    assert result.dual_objective <= reference * (1 + 1e-7)
    assert result.objective >= reference * (1 - 1e-7)


@pytest.mark.parametrize("fraction", [0.5, 0.95])
def test_near_lam_max(fraction):
    base = relu_program(bias=True, lam=1.0, n=30, d=3, gates=20, seed=5)
    lam = fraction * base.lam_max()
    program = dataclasses.replace(base, lam=lam)
    result = solve_relu_interior_point(program, tol=1e-8)
    assert_certified(program, result, 1e-8)
    reference = clarabel_objective(program.X, program.y, program.patterns, lam, "relu")
    assert result.objective == pytest.approx(reference, rel=1e-6)
    assert result.blocks.norm(dim=1).gt(0).any()


@pytest.mark.parametrize("factor", [1.0001, 3.0])
def test_lam_at_least_lam_max_gives_zero(factor):
    base = relu_program(bias=False, lam=1.0, seed=6)
    program = dataclasses.replace(base, lam=factor * base.lam_max())
    result = solve_relu_interior_point(program)
    assert result.converged
    assert result.iterations == 0
    assert bool((result.blocks == 0).all())
    assert result.relative_gap == 0
    assert result.objective == pytest.approx(float(program.y.square().sum()) / (2 * program.n))
    assert "lam_max" in result.reason


def test_float32_program_is_solved_in_float64():
    program = relu_program(bias=True, lam=0.05, seed=7)
    program32 = dataclasses.replace(program, X=program.X.float(), y=program.y.float())
    result = solve_relu_interior_point(program32, tol=1e-8)
    # The float32 data, exactly, in float64: the program that was solved.
    widened = dataclasses.replace(program32, X=program32.X.double(), y=program32.y.double())
    assert_certified(widened, result, 1e-8)


def test_zero_rows_and_one_feature():
    X, y = relu_teacher(20, 1, seed=8)
    X[3] = 0  # a zero row: its cone constraints are 0 >= 0
    program = ConvexReLUProgram(X, y, enumerate_patterns(X), 1e-3, "relu")
    result = solve_relu_interior_point(program, tol=1e-9)
    assert_certified(program, result, 1e-9)
    reference = clarabel_objective(program.X, program.y, program.patterns, 1e-3, "relu")
    assert result.objective == pytest.approx(reference, rel=1e-6)


def test_max_iter_returns_a_feasible_point_not_converged():
    program = relu_program(bias=False, lam=1e-3, n=50, d=4, gates=40, seed=2)
    result = solve_relu_interior_point(program, tol=1e-8, max_iter=3)
    assert not result.converged
    assert result.iterations == 3
    assert "max_iter=3" in result.reason
    assert program.constraint_violation(result.blocks) == 0
    assert result.dual_objective <= result.objective
    assert result.relative_gap > 1e-8


@pytest.mark.parametrize(
    ("change", "kwargs", "message"),
    [
        ({"formulation": "gated"}, {}, "'relu' form"),
        ({}, {"tol": 0.0}, "tol must be"),
        ({}, {"tol": float("nan")}, "tol must be"),
        ({}, {"max_iter": 0}, "max_iter must be"),
        ({}, {"max_iter": 2.5}, "max_iter must be"),
    ],
)
def test_bad_arguments_raise_a_clear_error(change, kwargs, message):
    program = dataclasses.replace(relu_program(bias=False, lam=0.05), **change)
    with pytest.raises(ConvexProblemError, match=message):
        solve_relu_interior_point(program, **kwargs)


@pytest.mark.parametrize("chunk_entries", [50, 2**20])  # one block a chunk, and all at once
def test_tight_row_grams_match_the_table_of_outer_products(monkeypatch, chunk_entries):
    monkeypatch.setattr(interior_point_method, "CHUNK_ENTRIES", chunk_entries)
    g = torch.Generator().manual_seed(4)
    X_rows = torch.randn(37, 5, generator=g, dtype=torch.float64)
    tight = (torch.rand(37, 23, generator=g) < 0.3).double()
    tight[:, 0] = 0.0  # no tight row: a zero Gram matrix
    outer = (X_rows[:, :, None] * X_rows[:, None, :]).reshape(37, -1)  # (m, d^2), the reference
    expected = (tight.T @ outer).reshape(-1, 5, 5)
    grams = interior_point_method._tight_grams(X_rows, tight)
    torch.testing.assert_close(grams, expected, rtol=1e-13, atol=1e-13)
    assert float(grams[0].abs().max()) == 0.0
