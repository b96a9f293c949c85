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
from losslab.convex import patterns as patterns_module
from losslab.convex.patterns import (
    _distinct_normals,
    _leading_count_above,
    packed_activation_patterns,
    unique_pattern_columns,
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
    with pytest.raises(ConvexProblemError, match=r"may have [\w ]*[\d,]+ activation patterns"):
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


def dense_unique_patterns(X: np.ndarray, gates: np.ndarray) -> np.ndarray:
    """The reference: all of ``X G >= 0`` at once, then its distinct columns in first-seen
    order, without those that activate no non-zero row (a loop over the columns)."""
    masks = X @ gates >= 0
    nonzero = np.linalg.norm(X, axis=1) > 0
    seen: set[bytes] = set()
    kept = []
    for column in masks.T:
        if (column & nonzero).any() and column.tobytes() not in seen:
            seen.add(column.tobytes())
            kept.append(column)
    return np.array(kept).T.reshape(X.shape[0], len(kept))


def test_packed_patterns_formed_chunk_by_chunk_match_the_dense_masks(monkeypatch):
    monkeypatch.setattr(patterns_module, "CHUNK_ENTRIES", 97)  # chunks of 2 or 3 gates
    rng = np.random.default_rng(11)
    X = rng.normal(size=(40, 3))
    X[[3, 17]] = 0.0  # zero rows: active everywhere
    gates = rng.normal(size=(3, 400))
    gates[:, 200:] = gates[:, :200]  # repeats, across chunks
    gates[:, [7, 9]] = 0.0  # the zero gate activates every row
    expected = dense_unique_patterns(X, gates)
    packed = packed_activation_patterns(torch.as_tensor(X), torch.as_tensor(gates))
    assert packed.shape == expected.shape
    assert np.array_equal(packed.unpacked().numpy(), expected)
    unpacked = activation_patterns(torch.as_tensor(X), torch.as_tensor(gates))
    assert np.array_equal(unpacked.numpy(), expected)
    assert unpacked.is_contiguous()  # row-major, as before: later products read it in order
    ids = torch.as_tensor(rng.permutation(expected.shape[1])[:25])
    assert np.array_equal(packed.columns(ids).numpy(), expected[:, ids.numpy()])
    masks = torch.as_tensor(X @ gates >= 0)
    kept = unique_pattern_columns(torch.as_tensor(X), masks)
    assert np.array_equal(masks[:, kept].numpy(), expected)
    # no gate activating a non-zero row: no pattern
    none = packed_activation_patterns(torch.as_tensor(X[[3, 17]]), torch.as_tensor(gates))
    assert none.shape == (2, 0)
    assert none.unpacked().shape == (2, 0)


def greedy_distinct_normals(X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The reference grouping: row by row, against each hyperplane so far in turn."""
    norms = np.linalg.norm(X, axis=1)
    group, orientation = np.full(X.shape[0], -1), np.ones(X.shape[0])
    normals: list[np.ndarray] = []
    for i in np.flatnonzero(norms > 0):
        unit = X[i] / norms[i]
        for j, normal in enumerate(normals):
            cosine = float(unit @ normal)
            if abs(cosine) > 1 - 1e-12:
                group[i], orientation[i] = j, np.sign(cosine)
                break
        else:
            group[i] = len(normals)
            normals.append(unit)
    return np.array(normals).reshape(-1, X.shape[1]), group, orientation


@pytest.mark.parametrize("seed", range(4))
def test_distinct_normals_match_the_row_by_row_grouping(seed):
    rng = np.random.default_rng(seed)
    n, d = 700, 1 + seed  # more than two chunks of 256 rows
    X = rng.normal(size=(n, d)) if seed % 2 else rng.integers(-2, 3, size=(n, d)).astype(float)
    picks = rng.integers(0, n, size=(2, n // 3))
    X[picks[0]] = X[picks[1]] * rng.choice([-3.0, -1.0, 0.5, 2.0], size=(n // 3, 1))
    X[rng.integers(0, n, 20)] = 0.0
    X[5] = X[600] * (1 + 1e-15)  # parallel up to rounding, far apart
    normals, group, orientation = _distinct_normals(X)
    expected = greedy_distinct_normals(X)
    assert np.array_equal(normals, expected[0])
    assert np.array_equal(group, expected[1])
    assert np.array_equal(orientation, expected[2])
    reference_rank = int(np.linalg.matrix_rank(expected[0])) if len(expected[0]) else 0
    m = expected[0].shape[0]
    cover = 2 * sum(comb(m - 1, k) for k in range(reference_rank)) if m else 1
    assert count_bound(torch.as_tensor(X)).bound == cover


@pytest.mark.parametrize(
    ("n", "d", "seed"), [(300, 2, 0), (600, 4, 2), (900, 3, 1), (200, 8, 3), (5000, 20, 5)]
)
def test_early_refusal_is_a_lower_bound_of_covers(n, d, seed):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) if seed % 2 else rng.integers(-3, 4, size=(n, d)).astype(float)
    full = count_bound(torch.as_tensor(X)) if n <= 1000 else None
    for limit in (100, 20_000):
        leading = _leading_count_above(X, limit)
        if full is not None:  # refused early only where the full bound refuses too
            assert leading is None or limit < leading[1].bound <= full.bound
            assert leading is None or leading[1].rank <= full.rank
    if (n, d) in ((600, 4), (5000, 20)):  # these refuse from their first 64 rows
        leading = _leading_count_above(X, 20_000)
        assert leading is not None
        assert leading[0] == 64
        with pytest.raises(ConvexProblemError, match="for its first 64 rows alone"):
            enumerate_patterns(X)
    if full is None or full.bound > 20_000:
        with pytest.raises(ConvexProblemError, match=r"may have [\w ]*[\d,]+ activation patt"):
            enumerate_patterns(X)
        assert try_enumerate_patterns(torch.as_tensor(X), closed=True) is None


def test_enumerations_that_pass_the_early_check_are_unchanged():
    # 70 rows (a leading block of 64) with few distinct hyperplanes: Cover's bound 6 * 2
    X = np.tile(np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), (24, 1))[:70]
    X = X * np.random.default_rng(0).uniform(0.5, 2.0, size=(70, 1))
    assert _leading_count_above(X, 100) is None
    # the 6 regions of 3 lines through 0 in the plane (2,000 gates land in all of them),
    # less the one where no row is active
    sampled = {tuple(bool(v) for v in X @ g >= 0) for g in sample_gates(2, 2000).T.numpy()}
    assert len(sampled) == 6
    expected = sampled - {(False,) * 70}
    assert as_set(enumerate_patterns(torch.as_tensor(X), max_patterns=100)) == expected
