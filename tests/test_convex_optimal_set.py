from __future__ import annotations

import dataclasses
import functools

import cvxpy as cp
import numpy as np
import pytest
import torch

from losslab.convex import (
    ConvexReLU,
    ConvexReLUProgram,
    activation_patterns,
    block_fits,
    optimal_set,
    sample_gates,
    solve,
)
from losslab.data import load
from losslab.errors import ConvexProblemError
from tests.convex_reference import clarabel_objective, relu_teacher


@functools.cache
def _doubled_program(formulation: str) -> tuple[ConvexReLUProgram, torch.Tensor]:
    """Every pattern twice, so the optimal set of the program, in block coordinates
    (``merge_copies=False``), is a polytope of positive dimension."""
    X, y = relu_teacher(20, 3, seed=2)
    patterns = activation_patterns(X, sample_gates(3, 15, seed=1))
    program = ConvexReLUProgram(X, y, torch.cat([patterns, patterns], dim=1), 0.05, formulation)
    return program, solve(program, tol=1e-9).blocks


def _assert_member(optimum, scales: torch.Tensor, reference: float) -> None:
    assert bool((scales >= 0).all())
    torch.testing.assert_close(optimum.fits @ scales, optimum.fit, atol=1e-9, rtol=1e-9)
    assert optimum.objective(scales) == pytest.approx(reference, rel=1e-8)


@pytest.mark.parametrize("formulation", ["gated", "relu"])
def test_members_share_the_fit_and_the_optimal_objective(formulation):
    program, blocks = _doubled_program(formulation)
    reference = clarabel_objective(program.X, program.y, program.patterns, 0.05, formulation)
    optimum = optimal_set(program, blocks, merge_copies=False)
    assert optimum.dimension > 0
    assert optimum.objective(optimum.scales) == pytest.approx(reference, rel=1e-6)
    best = optimum.objective(optimum.scales)
    generator = torch.Generator().manual_seed(0)
    outputs = torch.randn(7, optimum.scales.shape[0], generator=generator, dtype=torch.float64)
    target = torch.randn(7, generator=generator, dtype=torch.float64)
    for scales in [
        optimum.min_norm(),
        optimum.sparsest(),
        optimum.vertex(torch.rand(optimum.scales.shape[0], dtype=torch.float64)),
        optimum.best_fit_to(outputs, target),
    ]:
        _assert_member(optimum, scales, best)
        if formulation == "relu":  # non-negative rescalings stay in the cones
            values = (program.X @ optimum.blocks(scales).T) * program.operator.cone_signs
            assert float(values.min()) >= -1e-12


def _reference_qp(optimum, outputs=None, target=None) -> np.ndarray:
    F, yhat = optimum.fits.numpy(), optimum.fit.numpy()
    t = cp.Variable(F.shape[1])
    if outputs is None:
        objective = cp.sum_squares(t)
    else:
        objective = cp.sum_squares(outputs.numpy() @ t - target.numpy())
    problem = cp.Problem(cp.Minimize(objective), [F @ t == yhat, t >= 0])
    problem.solve(solver="CLARABEL", tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12)
    return np.asarray(t.value)


@pytest.mark.parametrize("formulation", ["gated", "relu"])
def test_min_norm_member_matches_clarabel(formulation):
    program, blocks = _doubled_program(formulation)
    optimum = optimal_set(program, blocks, merge_copies=False)
    expected = _reference_qp(optimum)
    np.testing.assert_allclose(optimum.min_norm().numpy(), expected, atol=1e-6)


def test_best_member_on_validation_matches_clarabel():
    program, blocks = _doubled_program("gated")
    optimum = optimal_set(program, blocks, merge_copies=False)
    generator = torch.Generator().manual_seed(3)
    outputs = torch.randn(9, optimum.scales.shape[0], generator=generator, dtype=torch.float64)
    target = torch.randn(9, generator=generator, dtype=torch.float64)
    expected = _reference_qp(optimum, outputs, target)
    ours = optimum.best_fit_to(outputs, target)
    error = float((outputs @ ours - target).square().sum())
    reference = float(np.square(outputs.numpy() @ expected - target.numpy()).sum())
    assert error == pytest.approx(reference, rel=1e-6, abs=1e-9)


def test_sparsest_member_is_a_vertex():
    program, blocks = _doubled_program("gated")
    optimum = optimal_set(program, blocks, merge_copies=False)
    scales = optimum.sparsest()
    support = scales > 0
    fits = block_fits(program, optimum.blocks(scales))[:, optimum.active[support]]
    assert int(torch.linalg.matrix_rank(fits)) == int(support.sum())
    assert int(support.sum()) < int((optimum.scales > 0).sum())


def test_independent_fits_give_a_single_point():
    X, y = relu_teacher(30, 3, seed=4)
    program = ConvexReLUProgram(X, y, activation_patterns(X, sample_gates(3, 6, seed=0)), 0.05)
    blocks = solve(program, tol=1e-9).blocks
    optimum = optimal_set(program, blocks)
    assert optimum.dimension == 0
    torch.testing.assert_close(optimum.min_norm(), optimum.scales)
    torch.testing.assert_close(optimum.blocks(optimum.min_norm()), blocks)
    # Every member of a single point is that point, whatever the cost of a vertex.
    cost = torch.rand(optimum.scales.shape[0], dtype=torch.float64)
    torch.testing.assert_close(optimum.vertex(cost), optimum.scales)
    torch.testing.assert_close(optimum.sparsest(), optimum.scales)


def test_vertices_keep_the_common_fit_to_rounding():
    # Vertices are found in the null-space coordinates t = t0 + N s, so F t = yhat holds to
    # rounding, not merely to the simplex's feasibility tolerance (about 1e-8).
    program, blocks = _doubled_program("gated")
    optimum = optimal_set(program, blocks, merge_copies=False)
    for seed in range(4):
        cost = torch.rand(optimum.scales.shape[0], generator=torch.Generator().manual_seed(seed),
                          dtype=torch.float64)  # fmt: skip
        scales = optimum.vertex(cost)
        assert bool((scales >= 0).all())
        error = float((optimum.fits @ scales - optimum.fit).norm() / optimum.fit.norm())
        assert error <= 1e-12


def test_directions_are_those_of_the_dual_point():
    """Each active block's direction is Pi_K(A_b^T q) / lam for the common dual point q."""
    program, blocks = _doubled_program("gated")
    optimum = optimal_set(program, blocks, merge_copies=False)
    correlations = program.operator.adjoint(optimum.dual)[optimum.active] / program.lam
    torch.testing.assert_close(optimum.directions, correlations, atol=1e-5, rtol=0)


@pytest.mark.parametrize("formulation", ["gated", "relu"])
def test_estimator_members(formulation):
    X, y = relu_teacher(40, 3, seed=5)
    gates = sample_gates(3, 10, seed=0).numpy()
    model = ConvexReLU(
        lam=0.02, formulation=formulation, gates=np.hstack([gates, gates]), tol=1e-9
    ).fit(X.numpy(), y.numpy())
    X_val, y_val = relu_teacher(25, 3, seed=6)
    members = {
        kind: model.optimal_member(kind, X_val.numpy(), y_val.numpy())
        for kind in ["min_norm", "sparsest", "validation"]
    }
    for member in members.values():
        assert member.objective_ == pytest.approx(model.objective_, rel=1e-7)
        np.testing.assert_allclose(member.predict(X.numpy()), model.predict(X.numpy()), atol=1e-7)
    errors = {k: float(np.square(m.predict(X_val.numpy()) - y_val.numpy()).sum())
              for k, m in members.items()}  # fmt: skip
    assert errors["validation"] <= min(errors.values()) + 1e-9
    assert members["sparsest"].n_neurons_ <= model.n_neurons_
    with pytest.raises(ConvexProblemError, match="X_val and y_val"):
        model.optimal_member("validation")
    with pytest.raises(ConvexProblemError, match="kind must be"):
        model.optimal_member("best")  # type: ignore[arg-type]


def test_a_solution_and_its_pruned_copy_describe_the_same_set():
    # Pruning zeroes blocks that stay equicorrelated: the pruned member's set takes them
    # back (as possibly equicorrelated blocks at scale 0), so both describe one polytope:
    # the same neurons (sign and direction, to the solve's accuracy), the same dimension,
    # members at the optimal objective. (Their minimum-norm members are not compared: at
    # lam = 1e-4 the fits' smallest singular values are 1e-8 of the largest, and the
    # directions' 1e-6 accuracy moves the exact minimum norm by 15%, Clarabel on each.)
    X, y = relu_teacher(15, 2, seed=2)
    model = ConvexReLU(lam=1e-4, n_gates=300, tol=1e-9, check_global=False)
    model.fit(X.numpy(), y.numpy())
    pruned = model.prune()
    assert pruned.n_neurons_ < model.n_neurons_
    sets = model.optimal_set(), pruned.optimal_set()
    assert sets[0].dimension == sets[1].dimension > 0
    assert pruned.optimal_set(include_uncertain=False).dimension == 0
    P = model.patterns_.shape[1]
    neurons = [
        torch.cat([torch.where(o.active < P, 1.0, -1.0)[:, None], o.directions], dim=1)
        for o in sets
    ]
    assert neurons[0].shape == neurons[1].shape
    assert float(torch.cdist(neurons[0], neurons[1]).min(dim=1).values.max()) < 1e-5
    assert float(torch.cdist(neurons[0], neurons[1]).min(dim=0).values.max()) < 1e-5
    first = model.optimal_member("min_norm")
    second = pruned.optimal_member("min_norm")
    for member in (first, second):
        assert member.objective_ == pytest.approx(model.objective_, rel=1e-8)
    torch.testing.assert_close(
        first.solution_.program.operator.fit(first.solution_.blocks),
        second.solution_.program.operator.fit(second.solution_.blocks),
        atol=1e-6, rtol=0,
    )  # fmt: skip


def test_vertex_members_have_independent_fits():
    # A simplex vertex's zero scales came back as 2e-16: extra "neurons" whose fits made
    # the vertex's fits dependent (6 or 7 neurons, rank 5). Dense fits and numpy's rank.
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((8, 2)), rng.standard_normal(8)
    model = ConvexReLU(lam=1e-2, n_gates=3000, bias=True, tol=1e-10).fit(X, y)
    features = np.c_[X, np.ones(8)]
    for seed in range(3):
        member = model.optimal_member("vertex", seed=seed)
        net = member.to_torch()
        with torch.no_grad():
            hidden = torch.relu(net[0](torch.as_tensor(X))).numpy()  # (n, m): each neuron's fit
        weights = np.c_[net[0].weight.detach().numpy(), net[0].bias.detach().numpy()]
        np.testing.assert_allclose(hidden, np.maximum(features @ weights.T, 0), atol=1e-12)
        assert np.linalg.matrix_rank(hidden, tol=1e-8 * np.abs(hidden).max()) == hidden.shape[1]
        assert member.n_neurons_ == hidden.shape[1] <= 8
        assert member.objective_ == pytest.approx(model.objective_, rel=1e-9)


def test_copies_of_one_neuron_count_once():
    # Every pattern twice: each neuron can sit in either copy of its pattern, which adds a
    # dimension per neuron to the program's set but no new network. Merged, the set is the
    # single program's. (The gated form is not merged: blocks of one direction and fit
    # under different gates differ off the training data.)
    formulation = "relu"
    program, blocks = _doubled_program(formulation)
    gated = optimal_set(*_doubled_program("gated"))
    assert gated.copies.shape[0] == 0
    assert gated.dimension == optimal_set(*_doubled_program("gated"), merge_copies=False).dimension
    separate = optimal_set(program, blocks, merge_copies=False)
    merged = optimal_set(program, blocks)
    P = program.patterns.shape[1] // 2
    single = ConvexReLUProgram(program.X, program.y, program.patterns[:, :P], 0.05, formulation)
    alone = optimal_set(single, solve(single, tol=1e-9).blocks)
    assert merged.dimension == alone.dimension < separate.dimension
    assert merged.active.numel() == alone.active.numel()
    assert merged.copies.shape[0] == separate.active.numel() - merged.active.numel() > 0
    for copy, kept in merged.copies.tolist():  # the same pattern, and the same sign
        assert copy % P == kept % P
        assert (copy < 2 * P) == (kept < 2 * P)
    assert merged.objective(merged.scales) == pytest.approx(
        separate.objective(separate.scales), rel=1e-12
    )
    _assert_member(merged, merged.min_norm(), merged.objective(merged.scales))


# The audit's data: 5 integer points, a bias, lam = 0.1. Its optimum (every pattern is
# sampled) is 4 ReLU neurons, unique (dimension 0), each of them feasible in 2 to 6
# patterns' cones. The interior-point answer spreads each neuron over those blocks, with
# directions that agree only to the solve's accuracy (3e-6..8e-6 at tol 1e-10, in the
# directions the fit does not see), and at the default tol 1e-6 it also holds residue:
# blocks of norm 1e-6..2e-5 whose dual ratio is 0.9985 or lower.
_AUDIT_X = np.array([[-2.0, 1.0], [-1.0, -1.0], [-1.0, 1.0], [-1.0, 2.0], [0.0, 1.0]])
_AUDIT_Y = np.array([1.0, -1.0, 0.0, -1.0, 1.0])


def _audit_model(tol: float) -> ConvexReLU:
    model = ConvexReLU(lam=0.1, n_gates=500, bias=True, tol=tol, check_global=False)
    return model.fit(_AUDIT_X, _AUDIT_Y)


def _clarabel(model: ConvexReLU) -> float:
    program = model.solution_.program
    return clarabel_objective(
        program.X, program.y, program.patterns, program.lam, program.formulation
    )


def test_members_are_optimal_at_the_default_tol():
    # Each non-zero block used to be an active block with its own direction u_b / ||u_b||:
    # "dimension 21" with 26 blocks, and members 3-4% above the optimum.
    model = _audit_model(tol=1e-6)
    reference = _clarabel(model)
    optimum = model.optimal_set()
    assert (optimum.dimension, optimum.active.numel()) == (0, 4)
    assert optimum.residue.numel() > 0  # the solver's residue is no part of the set
    rng = np.random.default_rng(5)
    X_val, y_val = rng.normal(size=(8, 2)), rng.normal(size=8)
    for kind in ["min_norm", "sparsest", "vertex", "validation"]:
        member = model.optimal_member(kind, X_val, y_val)
        assert member.n_neurons_ == 4
        # optimal to the solve's tol; Clarabel's value is accurate to about 1e-9
        assert reference * (1 - 1e-8) <= member.objective_ <= reference * (1 + 1e-6)


@pytest.mark.parametrize("tol", [1e-10, 1e-6])
def test_copies_are_merged_to_the_solves_accuracy(tol):
    # Copies used to be merged only when their directions agreed to 1e-9: "dimension 2",
    # and a minimum-norm member that split one neuron into three near-duplicates.
    model = _audit_model(tol=tol)
    optimum = model.optimal_set()
    assert (optimum.dimension, optimum.active.numel()) == (0, 4)
    assert optimum.copies.shape[0] == 8
    member = model.optimal_member("min_norm")
    assert member.objective_ == pytest.approx(_clarabel(model), rel=1e-8)
    net = member.to_torch()
    weights = torch.cat([net[0].weight, net[0].bias[:, None]], dim=1).detach()
    units = weights / weights.norm(dim=1, keepdim=True)
    distances = torch.cdist(units, units) + 2 * torch.eye(units.shape[0], dtype=units.dtype)
    assert units.shape[0] == 4
    assert float(distances.min()) > 0.1  # 4 distinct neurons
    with torch.no_grad():
        hidden = torch.relu(net[0](torch.as_tensor(_AUDIT_X)))
    assert int(torch.linalg.matrix_rank(hidden)) == 4  # independent fits: a vertex


def test_sparsest_member_has_no_residue_block():
    # Gated form: the sparsest member used to keep a block of norm 7.5e-7 (solver residue)
    # next to one neuron that fits alone, at the same objective.
    X, y = np.array([[-1.0, 0.0], [-1.0, 1.0], [1.0, -1.0], [1.0, 0.0]]), np.array([0, 0, 1, 1.0])
    model = ConvexReLU(lam=0.05, formulation="gated", n_gates=500, bias=True, tol=1e-10,
                       check_global=False).fit(X, y)  # fmt: skip
    member = model.optimal_member("sparsest")
    assert member.n_neurons_ == 1
    assert member.objective_ == pytest.approx(_clarabel(model), rel=1e-8)
    # the solve's own fit (its residue included) is accurate to about sqrt(2 n gap)
    np.testing.assert_allclose(member.predict(X), model.predict(X), atol=1e-6)


def test_a_member_above_the_solutions_objective_is_refused():
    program, blocks = _doubled_program("gated")
    optimum = optimal_set(program, blocks, merge_copies=False)
    solution = program.objective(blocks)
    assert optimum.max_objective == pytest.approx(solution, rel=1e-8)
    for scales in (optimum.scales, optimum.min_norm(), optimum.sparsest()):
        assert optimum.objective(scales) <= optimum.max_objective
    strict = dataclasses.replace(optimum, max_objective=solution * (1 - 1e-6))
    with pytest.raises(ConvexProblemError, match="above the solution"):
        strict.min_norm()


def test_members_are_held_to_the_solves_certified_gap():
    # ReLU form, many patterns, default tol: the dual bound at the solution's residual is
    # 1e-3 below its objective while the solve certified 2e-8. Measured against the former,
    # members were accepted 4.8e-4 above the optimum.
    data = load("teacher_relu", n=40, d=2, width=3, noise=0.1, seed=1)
    X, y = data.X.numpy(), data.y.numpy()
    fit = functools.partial(ConvexReLU, lam=1e-3, n_gates=3000, bias=True, check_global=False)
    model, exact = fit(tol=1e-6).fit(X, y), fit(tol=1e-9).fit(X, y)
    assert exact.solution_.relative_gap < 1e-11  # the optimum, to 1e-11
    assert model.solution_.relative_gap < 1e-7
    optimum = model.optimal_set()
    assert optimum.max_objective <= model.objective_ + model.solution_.duality_gap * (1 + 1e-12)
    for kind in ("min_norm", "sparsest", "vertex"):
        member = model.optimal_member(kind)
        assert member.objective_ <= exact.objective_ * (1 + 1e-7)
