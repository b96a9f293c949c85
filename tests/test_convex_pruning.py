from __future__ import annotations

import pytest
import torch

from losslab.convex import (
    ConvexReLU,
    ConvexReLUProgram,
    activation_patterns,
    prune_blocks,
    sample_gates,
    solve,
)
from tests.convex_reference import relu_teacher


def _check_pruned(program: ConvexReLUProgram, blocks: torch.Tensor, *, optimal: bool = True):
    result = prune_blocks(program, blocks)
    if optimal:  # constant along every dependency at an optimum
        assert result.objective_after == pytest.approx(result.objective_before, rel=1e-9)
    assert result.objective_after <= result.objective_before * (1 + 1e-12)  # never grows
    # the fit, dense: sum_b s_b D_b X z_b, with blocks [v_1..v_P, w_1..w_P] in the ReLU form
    P = program.patterns.shape[1]
    masks = program.patterns.double()
    masks = torch.cat([masks, masks], dim=1) if program.formulation == "relu" else masks
    signs = torch.ones(masks.shape[1], dtype=torch.float64)
    if program.formulation == "relu":
        signs[P:] = -1
    dense_fits = masks * (program.X @ result.blocks.T) * signs  # column b: s_b D_b X z_b
    before = (masks * (program.X @ blocks.T) * signs).sum(dim=1)
    torch.testing.assert_close(dense_fits.sum(dim=1), before)
    active = torch.nonzero(result.blocks.norm(dim=1) > 0).flatten()
    fits = dense_fits[:, active]
    assert int(torch.linalg.matrix_rank(fits)) == active.numel() <= program.n
    if program.formulation == "relu":  # non-negative rescaling keeps the blocks in their cones
        signs = program.operator.cone_signs
        assert bool(((program.X @ result.blocks.T) * signs >= -1e-12).all())
    return result


@pytest.mark.parametrize("formulation", ["gated", "relu"])
def test_duplicated_patterns_are_pruned_without_changing_the_optimum(formulation):
    X, y = relu_teacher(20, 3, seed=2)
    patterns = activation_patterns(X, sample_gates(3, 15, seed=1))
    doubled = torch.cat([patterns, patterns], dim=1)  # every pattern twice: dependent fits
    program = ConvexReLUProgram(X, y, doubled, 0.05, formulation)
    blocks = solve(program, tol=1e-9).blocks
    P = doubled.shape[1]
    # Spread each active block over its twin, as another optimum would.
    half = blocks.clone()
    for first in range(P // 2):
        for offset in [0] if formulation == "gated" else [0, P]:
            a, b = first + offset, first + P // 2 + offset
            total = blocks[a] + blocks[b]
            half[a], half[b] = 0.3 * total, 0.7 * total
    assert program.objective(half) == pytest.approx(program.objective(blocks), rel=1e-12)
    result = _check_pruned(program, half)
    assert len(result.removed) >= (half.norm(dim=1) > 0).sum() // 2


def test_more_neurons_than_samples_are_pruned_to_at_most_n():
    X, y = relu_teacher(6, 3, seed=4)
    patterns = activation_patterns(X, sample_gates(3, 400, seed=0))
    program = ConvexReLUProgram(X, y, patterns, 1e-3, "gated")
    rng = torch.Generator().manual_seed(0)
    blocks = torch.randn(
        patterns.shape[1], 3, generator=rng, dtype=torch.float64
    )  # feasible for gated
    result = _check_pruned(program, blocks, optimal=False)  # random blocks: not optimal
    assert result.n_neurons <= 6 < patterns.shape[1]


def test_estimator_prune_keeps_the_objective_and_the_predictions():
    X, y = relu_teacher(10, 2, seed=5)
    model = ConvexReLU(lam=0.01, n_gates=100, tol=1e-9, max_iter=50_000, check_global=False).fit(
        X.numpy(), y.numpy()
    )
    pruned = model.prune()
    assert pruned.objective_ == pytest.approx(model.objective_, rel=1e-9)
    assert pruned.n_neurons_ <= min(model.n_neurons_, 10)
    assert pruned.n_neurons_ == model.n_neurons_ - len(pruned.pruned_.removed)
    torch.testing.assert_close(
        torch.as_tensor(pruned.predict(X.numpy())),
        torch.as_tensor(model.predict(X.numpy())),
        rtol=1e-8,
        atol=1e-9,
    )
    assert model.solution_.blocks is not pruned.solution_.blocks  # the original is untouched
