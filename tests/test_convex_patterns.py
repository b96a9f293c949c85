from __future__ import annotations

from math import comb

import numpy as np
import pytest
import torch

from losslab.convex import (
    activation_patterns,
    count_bound,
    enumerate_patterns,
    network_patterns,
    sample_gates,
    try_enumerate_patterns,
)
from losslab.errors import ConvexProblemError
from tests.convex_reference import brute_force_closed_patterns, brute_force_patterns


def as_set(patterns: torch.Tensor) -> set[tuple[bool, ...]]:
    return {tuple(bool(v) for v in column) for column in patterns.T}


@pytest.mark.parametrize(("n", "d", "seed"), [(6, 2, 0), (7, 3, 1), (8, 3, 2), (6, 4, 3)])
def test_enumeration_matches_brute_force(n, d, seed):
    X = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    patterns = enumerate_patterns(X)
    assert as_set(patterns) == brute_force_patterns(X.numpy())
    assert patterns.shape[1] == len(as_set(patterns))  # no repeats


def test_degenerate_data_matches_brute_force():
    rng = np.random.default_rng(4)
    X = rng.integers(-2, 3, size=(9, 3)).astype(float)
    X[3] = 2 * X[1]  # parallel rows
    X[5] = -X[2]  # opposite rows
    X[7] = 0.0  # a zero row is active in every pattern
    patterns = enumerate_patterns(torch.as_tensor(X))
    expected = brute_force_patterns(X)
    assert as_set(patterns) == expected


@pytest.mark.parametrize("seed", range(5))
def test_integer_grid_data_matches_brute_force(seed):
    X = np.random.default_rng(seed).integers(-1, 2, size=(8, 3)).astype(float)
    assert as_set(enumerate_patterns(torch.as_tensor(X))) == brute_force_patterns(X)


@pytest.mark.parametrize(("n", "d", "seed"), [(5, 2, 0), (6, 3, 1), (5, 3, 2), (6, 2, 3)])
def test_closed_enumeration_matches_brute_force(n, d, seed):
    # the gated form's gates also lie on lower-dimensional cells: x . g = 0 rows are active
    X = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    closed = as_set(enumerate_patterns(X, closed=True))
    assert closed == brute_force_closed_patterns(X.numpy())
    assert as_set(enumerate_patterns(X)) <= closed  # the regions, and perhaps more
    assert tuple([True] * n) in closed  # g = 0


def test_closed_enumeration_of_degenerate_data_matches_brute_force():
    rng = np.random.default_rng(6)
    X = rng.integers(-2, 3, size=(6, 3)).astype(float)
    X[3] = 2 * X[1]
    X[4] = 0.0
    assert as_set(enumerate_patterns(torch.as_tensor(X), closed=True)) == (
        brute_force_closed_patterns(X)
    )


def test_degenerate_enumeration_refuses_past_its_linear_program_budget():
    X = torch.as_tensor(np.random.default_rng(0).integers(-5, 6, size=(40, 3)).astype(float))
    with pytest.raises(ConvexProblemError, match="max_linear_programs=5"):
        enumerate_patterns(X, max_linear_programs=5)
    assert try_enumerate_patterns(X, max_linear_programs=5) is None  # callers then sample


def test_count_in_general_position_is_covers_formula():
    X = torch.randn(30, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    patterns = enumerate_patterns(X)
    cover = 2 * sum(comb(29, k) for k in range(3))
    # the all-negative pattern (left out) exists iff some g has X g <= -1: one LP decides
    from scipy.optimize import linprog

    lp = linprog(np.zeros(3), A_ub=X.numpy(), b_ub=-np.ones(30), bounds=[(None, None)] * 3)
    assert lp.status in (0, 2)  # solved: feasible (0) or proved infeasible (2)
    all_negative_exists = lp.status == 0
    assert patterns.shape[1] == cover - all_negative_exists
    assert count_bound(X).bound == cover


def test_sampled_patterns_are_a_subset_of_all_patterns():
    X = torch.randn(12, 3, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    sampled = activation_patterns(X, sample_gates(3, 200, seed=1))
    assert as_set(sampled) <= as_set(enumerate_patterns(X))
    expected = {tuple(bool(v) for v in (X @ g >= 0)) for g in sample_gates(3, 200, seed=1).T}
    assert as_set(sampled) == {p for p in expected if any(p)}


def test_network_patterns_are_the_neurons_patterns():
    X = torch.randn(10, 3, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    weights = torch.randn(4, 3, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    weights = torch.cat([weights, weights[:1]])  # a repeated neuron gives one pattern
    patterns = network_patterns(X, weights)
    assert patterns.shape[1] == 4
    assert torch.equal(patterns[:, 0], X @ weights[0] >= 0)


def test_too_many_patterns_is_refused_with_the_bound():
    X = torch.randn(200, 8, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    with pytest.raises(ConvexProblemError, match=r"may have up to [\d,]+ activation patterns"):
        enumerate_patterns(X)


def test_bad_gate_arguments():
    with pytest.raises(ConvexProblemError, match="n_gates must be an integer >= 1"):
        sample_gates(3, 0)
    X = torch.ones(4, 3, dtype=torch.float64)
    with pytest.raises(ConvexProblemError, match=r"gates must have shape \(d, n_gates\)"):
        activation_patterns(X, torch.ones(2, 5, dtype=torch.float64))


def test_pattern_functions_validate_their_input():
    rng = np.random.default_rng(0)
    assert enumerate_patterns(rng.normal(size=(5, 2))).shape[0] == 5  # numpy is fine
    with pytest.raises(ConvexProblemError, match="NaN"):
        enumerate_patterns(np.array([[np.nan, 1.0], [1.0, 2.0]]))
    with pytest.raises(ConvexProblemError, match="2-D"):
        enumerate_patterns(np.ones(5))
    with pytest.raises(ConvexProblemError, match="every row the same point"):
        enumerate_patterns(np.ones((3, 2)))  # (the message says: every row the same point)
    assert sample_gates(np.int64(3), np.int64(4)).shape == (3, 4)
    with pytest.raises(ConvexProblemError, match="n_gates"):
        sample_gates(3, True)
    with pytest.raises(ConvexProblemError, match="NaN"):
        activation_patterns(torch.randn(4, 2, dtype=torch.float64), torch.full((2, 3), np.nan))
