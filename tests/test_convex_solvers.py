from __future__ import annotations

import numpy as np
import pytest
import torch

from losslab.convex import (
    ConvexReLUProgram,
    activation_patterns,
    as_features,
    certify,
    enumerate_patterns,
    neurons_from_blocks,
    project_onto_cone,
    projection_norm_bounds,
    sample_gates,
    solve,
    split_gated_block,
)
from losslab.convex import patterns as patterns_module
from losslab.convex.interior_point_method import _zero_is_optimal
from losslab.convex.patterns import packed_activation_patterns
from losslab.convex.program import max_cone_projection_norm
from losslab.errors import ConvexProblemError
from tests.convex_reference import clarabel_objective, relu_teacher


def program(formulation: str, *, bias: bool, lam: float, n=30, d=3, gates=20, seed=0):
    X, y = relu_teacher(n, d, seed)
    X = as_features(X, bias=bias)
    patterns = activation_patterns(X, sample_gates(X.shape[1], gates, seed=seed + 1))
    return ConvexReLUProgram(X, y, patterns, lam, formulation)


@pytest.mark.parametrize("formulation", ["gated", "relu"])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("lam", [0.02, 0.1])
def test_objective_matches_clarabel(formulation, bias, lam):
    prog = program(formulation, bias=bias, lam=lam)
    result = solve(prog, tol=1e-7, max_iter=40_000)
    assert result.converged, result.reason
    reference = clarabel_objective(prog.X, prog.y, prog.patterns, lam, formulation)
    assert result.objective == pytest.approx(reference, rel=1e-6)
    # The certified interval [dual, primal] contains the reference optimum.
    assert result.dual_objective <= reference * (1 + 1e-7)
    assert result.objective >= reference * (1 - 1e-7)
    assert result.constraint_violation <= 1e-10


def test_gap_history_and_convergence_report():
    result = solve(program("gated", bias=False, lam=0.05), tol=1e-8)
    assert result.converged
    assert result.relative_gap <= 1e-8
    assert result.gap_history[-1] <= 1e-8
    assert "relative duality gap" in result.reason


@pytest.mark.parametrize(("formulation", "max_iter"), [("gated", 5), ("relu", 3)])
def test_max_iter_returns_best_point_not_converged(formulation, max_iter):
    result = solve(program(formulation, bias=False, lam=0.02), tol=1e-12, max_iter=max_iter)
    assert not result.converged
    assert f"max_iter={max_iter}" in result.reason
    assert result.iterations == max_iter
    assert result.constraint_violation == 0  # still a feasible point
    assert result.dual_objective <= result.objective


def test_warm_start_from_the_solution_stops_at_once():
    prog = program("gated", bias=True, lam=0.05)
    first = solve(prog, tol=1e-9)
    again = solve(prog, tol=1e-9, init=first.blocks)
    assert again.iterations <= 10
    assert again.objective == pytest.approx(first.objective, rel=1e-9)


@pytest.mark.parametrize("formulation", ["gated", "relu"])
def test_zero_is_optimal_above_lam_max(formulation):
    prog = program(formulation, bias=False, lam=0.05)
    lam_max = prog.lam_max()
    zero_objective = float(prog.y.square().sum()) / (2 * prog.n)
    above = solve(ConvexReLUProgram(prog.X, prog.y, prog.patterns, 1.01 * lam_max, formulation))
    assert above.objective == pytest.approx(zero_objective, rel=1e-7)
    below = solve(ConvexReLUProgram(prog.X, prog.y, prog.patterns, 0.9 * lam_max, formulation))
    assert below.objective < zero_objective * (1 - 1e-4)
    if formulation == "gated":  # the group soft-threshold gives exact zeros
        assert float(above.blocks.abs().max()) == 0.0


@pytest.mark.parametrize("formulation", ["gated", "relu"])
def test_global_certificate_on_an_enumerable_problem(formulation):
    X, y = relu_teacher(12, 2, seed=3)
    # the gated form's global problem also has the patterns of gates on lower-dimensional cells
    all_patterns = enumerate_patterns(X, closed=formulation == "gated")
    full = solve(
        ConvexReLUProgram(X, y, all_patterns, 0.05, formulation), tol=1e-9, max_iter=50_000
    )
    certificate = certify(full, tol=1e-6)
    assert certificate.global_check == "enumerated"
    assert certificate.n_patterns_checked == all_patterns.shape[1]
    assert certificate.is_global, certificate.message
    assert certificate.max_dual_ratio <= 1 + 1e-5


@pytest.mark.parametrize("formulation", ["gated", "relu"])
def test_too_few_patterns_are_not_certified_global(formulation):
    X, y = relu_teacher(12, 2, seed=3)
    few = activation_patterns(X, sample_gates(2, 2, seed=0))
    result = solve(ConvexReLUProgram(X, y, few, 0.05, formulation), tol=1e-10)
    certificate = certify(result, tol=1e-6)
    assert result.converged  # optimal for its own two patterns ...
    assert not certificate.is_global  # ... but not over all of them
    assert certificate.max_dual_ratio > 1.01
    assert "not certified" in certificate.message


def test_sampled_certificate_when_enumeration_is_too_large():
    prog = program("gated", bias=False, lam=0.05, n=200, d=10, gates=50)
    certificate = certify(solve(prog, tol=1e-8), n_check_gates=2000)
    assert certificate.global_check == "sampled"
    assert not certificate.is_global
    assert "sampled patterns only" in certificate.message


@pytest.mark.parametrize("bias", [False, True])
def test_recovered_network_has_the_convex_objective(bias):
    prog = program("relu", bias=bias, lam=0.05)
    result = solve(prog, tol=1e-8)
    signs = torch.cat([torch.ones(prog.patterns.shape[1]), -torch.ones(prog.patterns.shape[1])])
    network = neurons_from_blocks(result.blocks, signs)
    assert network.objective(prog.X, prog.y, prog.lam) == pytest.approx(result.objective, rel=1e-9)
    model = network.to_torch(bias=bias)
    features = prog.X[:, :-1] if bias else prog.X
    torch.testing.assert_close(
        model(features)[:, 0], prog.operator.fit(result.blocks), rtol=1e-10, atol=1e-12
    )
    assert model[0].weight.dtype == torch.float64


@pytest.mark.parametrize("bias", [False, True])
def test_split_gated_block_reproduces_the_gated_fit_at_near_least_cost(bias):
    import cvxpy as cp

    prog = program("gated", bias=bias, lam=0.05)
    result = solve(prog, tol=1e-8)
    d = prog.X.shape[1]
    for b in torch.nonzero(result.blocks.norm(dim=1) > 0).flatten().tolist():
        pattern, u = prog.patterns[:, b], result.blocks[b]
        v, w = split_gated_block(prog.X, pattern, u)
        signs = pattern.double() * 2 - 1
        assert bool((signs * (prog.X @ v) >= 0).all())
        assert bool((signs * (prog.X @ w) >= 0).all())
        torch.testing.assert_close(v - w, u, rtol=0, atol=1e-12)
        torch.testing.assert_close(
            torch.relu(prog.X @ v) - torch.relu(prog.X @ w), pattern.double() * (prog.X @ u)
        )
        # The least-cost split, a second-order cone program, by Clarabel: the l1 split is
        # within sqrt(d) of it by norm equivalence, and within 5% here (the docs say so).
        A = (signs[:, None] * prog.X).numpy()
        shift = cp.Variable(d)
        best = cp.Problem(
            cp.Minimize(cp.norm(u.numpy() + shift) + cp.norm(shift)),
            [A @ shift >= -A @ u.numpy(), A @ shift >= 0],
        ).solve(solver="CLARABEL")
        cost = float(v.norm() + w.norm())
        assert best * (1 - 1e-6) <= cost <= 1.05 * best <= d**0.5 * best
        along = signs * (prog.X @ u)
        if bool((along >= 0).all()):  # u in its cone: one neuron, no split
            assert bool((w == 0).all())
    # a block inside its cone is not split, and neither is one whose negative is
    from losslab.convex.recovery import interior_point

    pattern = prog.patterns[:, 0]
    inside = interior_point(prog.X, pattern)  # (2D - I) X g >= 1
    v, w = split_gated_block(prog.X, pattern, inside)
    assert torch.equal(v, inside)
    assert bool((w == 0).all())
    v, w = split_gated_block(prog.X, pattern, -inside)
    assert bool((v == 0).all())
    assert torch.equal(w, inside)


def test_bad_programs():
    X, y = relu_teacher(10, 2, seed=0)
    patterns = enumerate_patterns(X)
    with pytest.raises(ConvexProblemError, match="lam must be a finite number > 0"):
        ConvexReLUProgram(X, y, patterns, 0.0)
    with pytest.raises(ConvexProblemError, match="formulation must be"):
        ConvexReLUProgram(X, y, patterns, 0.1, "cone")  # type: ignore[arg-type]
    with pytest.raises(ConvexProblemError, match="patterns must have shape"):
        ConvexReLUProgram(X, y, patterns[:5], 0.1)
    with pytest.raises(ConvexProblemError, match="NaN or inf"):
        as_features(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]))
    with pytest.raises(ConvexProblemError, match="constant"):
        as_features(torch.ones(5, 2))
    with pytest.raises(ConvexProblemError, match="empty"):
        as_features(torch.ones(0, 2))
    # the program checks its data as the estimator does: no NaN y (it once ran 20,000
    # iterations to an infinite objective), no half precision (a "certified" gap of 0)
    with pytest.raises(ConvexProblemError, match="y has NaN"):
        ConvexReLUProgram(X, torch.where(y > 0, float("nan"), y), patterns, 0.1)
    with pytest.raises(ConvexProblemError, match="y must have shape"):
        ConvexReLUProgram(X, y[:-1], patterns, 0.1)
    assert ConvexReLUProgram(X.round().long(), y, patterns, 0.1).X.dtype == torch.float64
    for dtype in (torch.float16, torch.bfloat16):
        with pytest.raises(ConvexProblemError, match="float32 or float64"):
            ConvexReLUProgram(X.to(dtype), y, patterns, 0.1)
    with pytest.raises(ConvexProblemError, match="meta"):
        ConvexReLUProgram(X.to("meta"), y, patterns, 0.1)


def test_a_program_takes_targets_of_shape_n_1_other_dtypes_and_numpy_patterns():
    X, y = relu_teacher(12, 2, seed=0)
    patterns = enumerate_patterns(X)
    reference = solve(ConvexReLUProgram(X, y, patterns, 0.1), tol=1e-9)
    variants = [
        ConvexReLUProgram(X, y[:, None], patterns, 0.1),
        ConvexReLUProgram(X, y.float(), patterns.numpy(), 0.1),
        ConvexReLUProgram(X.numpy()[:, ::-1].copy()[:, ::-1], y.numpy(), patterns, 0.1),
    ]
    for variant in variants:
        assert variant.y.shape == (12,)
        assert variant.y.dtype == X.dtype
        result = solve(variant, tol=1e-9)
        assert result.objective == pytest.approx(reference.objective, rel=1e-6)


def _dense_blocks(prog):
    """The (n, d) matrices ``A_b = D_b X`` of the gated form, stacked (B, n, d)."""
    masks = prog.patterns.to(prog.X.dtype)
    return masks.T[:, :, None] * prog.X[None, :, :]


def test_adjoint_and_weighted_gram_match_dense_algebra():
    prog = program("gated", bias=True, lam=0.05)
    op, blocks = prog.operator, _dense_blocks(prog)
    generator = torch.Generator().manual_seed(0)
    r = torch.randn(prog.n, generator=generator, dtype=torch.float64)
    torch.testing.assert_close(op.adjoint(r), torch.einsum("bnd,n->bd", blocks, r))
    B, d = blocks.shape[0], blocks.shape[2]
    alpha = torch.rand(B, generator=generator, dtype=torch.float64)
    beta = torch.rand(B, generator=generator, dtype=torch.float64)
    alpha[::3], beta[::3] = 0.0, 0.0  # blocks the prox zeroes take no part
    directions = torch.randn(B, d, generator=generator, dtype=torch.float64)
    directions /= directions.norm(dim=1, keepdim=True)
    jacobians = alpha[:, None, None] * torch.eye(d, dtype=torch.float64) + beta[:, None, None] * (
        directions[:, :, None] * directions[:, None, :]
    )
    dense = torch.einsum("bnd,bde,bme->nm", blocks, jacobians, blocks)
    torch.testing.assert_close(op.weighted_gram(alpha, beta, directions), dense)
    single = op.weighted_gram(alpha, beta, directions, dtype=torch.float32)
    assert single.dtype == torch.float32
    torch.testing.assert_close(
        single.double(), dense, rtol=1e-5, atol=1e-5 * float(dense.abs().max())
    )
    torch.testing.assert_close(op.weighted_normal(r, alpha, beta, directions), dense @ r)


def test_newton_polish_certifies_from_a_coarse_point():
    from losslab.convex.solvers import _GatedGapCheck, _newton_polish

    prog = program("gated", bias=True, lam=0.02)
    coarse = solve(prog, tol=1e-3)  # where the solver itself starts polishing
    history: list[float] = []
    check = _GatedGapCheck(prog, 1e-9, 10, history)
    assert _newton_polish(prog, coarse.blocks, check)
    assert check.gap() <= 1e-9
    reference = clarabel_objective(prog.X, prog.y, prog.patterns, prog.lam, "gated")
    assert check.best_dual <= reference * (1 + 1e-7)
    assert check.best_objective >= reference * (1 - 1e-7)
    assert check.best_objective == pytest.approx(reference, rel=1e-6)


def test_gated_solve_polishes_to_a_tight_certificate():
    prog = program("gated", bias=False, lam=0.01, n=300, d=5, gates=60)
    result = solve(prog, tol=1e-10, max_iter=50_000)
    assert result.converged, result.reason
    assert result.dual_objective <= result.objective
    assert result.relative_gap <= 1e-10


def test_float32_data_solve_in_float32_without_stalling():
    # Float32 rounding must not stall the backtracking (it once doubled the step's
    # Lipschitz estimate forever): the solve reaches a float32-sized gap in float32.
    double = program("gated", bias=True, lam=0.02, n=200, d=5, gates=40)
    single = ConvexReLUProgram(double.X.float(), double.y.float(), double.patterns, 0.02)
    result = solve(single, tol=1e-4, max_iter=20_000)
    assert result.converged, result.reason
    assert result.blocks.dtype == torch.float32
    reference = solve(double, tol=1e-9).objective
    assert result.objective == pytest.approx(reference, rel=2e-4)


def test_gated_global_check_includes_gates_on_lower_dimensional_cells():
    # A gate g = 0 (or on a hyperplane x . g = 0) has a pattern no full-dimensional region
    # has: optimal over the regions is not optimal over every gate.
    X, y = relu_teacher(12, 2, seed=3)
    regions, closed = enumerate_patterns(X), enumerate_patterns(X, closed=True)
    over_regions = solve(ConvexReLUProgram(X, y, regions, 1e-2, "gated"), tol=1e-10)
    assert over_regions.converged
    assert not certify(over_regions, tol=1e-6).is_global
    over_all = solve(ConvexReLUProgram(X, y, closed, 1e-2, "gated"), tol=1e-10)
    assert certify(over_all, tol=1e-6).is_global
    assert over_all.objective < over_regions.objective * (1 - 1e-3)
    reference = clarabel_objective(X, y, closed, 1e-2, "gated")
    assert over_all.objective == pytest.approx(reference, rel=1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_cone_projection_against_clarabel(seed):
    """``project_onto_cone`` against cvxpy + Clarabel's ``min ||v - z||`` s.t.
    ``signs * (X v) >= 0``, on random cones (some z inside, most outside)."""
    import cvxpy as cp

    g = torch.Generator().manual_seed(seed)
    X = torch.randn(15, 4, generator=g, dtype=torch.float64)
    signs = 2.0 * (X @ torch.randn(4, generator=g, dtype=torch.float64) >= 0) - 1
    for _ in range(5):
        z = torch.randn(4, generator=g, dtype=torch.float64)
        projection = project_onto_cone(z, X, signs)
        v = cp.Variable(4)
        constraints = [cp.multiply(signs.numpy(), X.numpy() @ v) >= 0]
        problem = cp.Problem(cp.Minimize(cp.sum_squares(v - z.numpy())), constraints)
        problem.solve(solver="CLARABEL", tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12)
        assert problem.status == "optimal"
        np.testing.assert_allclose(projection.numpy(), v.value, atol=1e-7)
        assert float(((X @ projection) * signs).min()) >= -1e-12


def test_projection_norm_bounds_are_upper_bounds_close_to_the_norms():
    g = torch.Generator().manual_seed(5)
    X = torch.randn(40, 6, generator=g, dtype=torch.float64)
    signs = 2 * (X @ torch.randn(6, 50, generator=g, dtype=torch.float64) >= 0).double() - 1
    Z = torch.randn(50, 6, generator=g, dtype=torch.float64)
    bounds = projection_norm_bounds(Z, X, signs)
    exact = torch.stack([project_onto_cone(Z[p], X, signs[:, p]).norm() for p in range(50)])
    assert bool((bounds >= exact * (1 - 1e-12)).all())
    assert bool((bounds <= Z.norm(dim=1) * (1 + 1e-12)).all())
    assert float((bounds / exact).median()) < 1.05


@pytest.mark.parametrize("lam", [0.02, 5.0])  # dual constraints violated, and satisfied
def test_max_dual_ratio_against_every_projection(lam):
    X, y = relu_teacher(30, 3, seed=6)
    program = ConvexReLUProgram(X, y, activation_patterns(X, sample_gates(3, 40, seed=2)),
                                lam, "relu")  # fmt: skip
    q = (y - 0.5 * y.mean()) / len(y)
    patterns = activation_patterns(X, sample_gates(3, 600, seed=3))  # more than a chunk
    signs = patterns.double() * 2 - 1
    exact = (
        max(
            max(float(project_onto_cone(s * z, X, signs[:, p]).norm()) for s in (1, -1))
            for p, z in enumerate((patterns.double() * q[:, None]).T @ X)
        )
        / lam
    )
    ratio = program.max_dual_ratio(q, patterns)
    assert (exact >= 1) == (lam < 1)  # both branches are exercised
    if exact >= 1:
        assert ratio == pytest.approx(exact, rel=1e-10)
    else:  # below 1 an upper bound, at most 1
        assert exact * (1 - 1e-10) <= ratio <= 1.0


@pytest.mark.parametrize("formulation", ["gated", "relu"])
@pytest.mark.parametrize("lam", [0.02, 5.0])
def test_chunked_dual_ratio_matches_the_dense_formula(monkeypatch, formulation, lam):
    monkeypatch.setattr(patterns_module, "CHUNK_ENTRIES", 200)  # chunks of 6 patterns
    X, y = relu_teacher(30, 3, seed=6)
    own = activation_patterns(X, sample_gates(3, 40, seed=2))
    program = ConvexReLUProgram(X, y, own, lam, formulation)
    q = (y - 0.5 * y.mean()) / len(y)
    gates = sample_gates(3, 600, seed=3)
    patterns = activation_patterns(X, gates)
    packed = packed_activation_patterns(X, gates)
    masks = patterns.double()
    dense = (masks * q[:, None]).T @ X  # the (n, P) float64 formula, at once
    torch.testing.assert_close(program.pattern_correlations(q, patterns), dense, rtol=1e-14,
                               atol=1e-16)  # fmt: skip
    torch.testing.assert_close(program.pattern_correlations(q, packed), dense, rtol=1e-14,
                               atol=1e-16)  # fmt: skip
    ratio = program.max_dual_ratio(q, patterns)
    assert program.max_dual_ratio(q, packed) == ratio
    if formulation == "gated":
        assert ratio == pytest.approx(float(dense.norm(dim=1).max()) / lam, rel=1e-13)
        return
    signs = masks * 2 - 1
    exact = max(float(project_onto_cone(s * z, X, signs[:, p]).norm()) / lam
                for p, z in enumerate(dense) for s in (1, -1))  # fmt: skip
    if exact >= 1:
        assert ratio == pytest.approx(exact, rel=1e-10)
    else:
        assert exact * (1 - 1e-10) <= ratio <= 1.0


@pytest.mark.parametrize("formulation", ["gated", "relu"])
def test_sampled_certificate_checks_the_same_patterns_as_the_dense_check(monkeypatch, formulation):
    X, y = relu_teacher(60, 6, seed=8)  # Cover's bound ~1e7: sampled
    prog = ConvexReLUProgram(X, y, activation_patterns(X, sample_gates(6, 8)), 0.05, formulation)
    result = solve(prog, tol=1e-8)
    big = certify(result, n_check_gates=1500, seed=4)
    monkeypatch.setattr(patterns_module, "CHUNK_ENTRIES", 500)  # chunks of 8 gates
    chunked = certify(result, n_check_gates=1500, seed=4)
    assert chunked == big
    assert chunked.global_check == "sampled"
    # the reference: every gate's pattern at once, the dense correlations, NNLS per pattern
    gates = sample_gates(6, 1500, seed=4 + 7919)
    masks = X @ gates >= 0
    distinct = {tuple(column.tolist()) for column in masks.T if bool(column.any())}
    assert chunked.n_patterns_checked == len(distinct)
    D = torch.tensor(sorted(distinct), dtype=torch.float64).T
    q = result.dual_point  # certify's dual point: the solver's, or the residual
    if q is None:
        q = (y - prog.operator.fit(result.blocks)) / prog.n
    correlations = (D * q[:, None]).T @ X
    if formulation == "gated":
        expected = float(correlations.norm(dim=1).max()) / prog.lam
    else:
        signs = D * 2 - 1
        expected = max(float(project_onto_cone(s * z, X, signs[:, p]).norm()) / prog.lam
                       for p, z in enumerate(correlations) for s in (1, -1))  # fmt: skip
    assert expected > 1  # too few own patterns: violated
    assert chunked.max_dual_ratio == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("bias", [False, True])
def test_relu_lam_max_is_the_largest_projection_of_every_block(bias):
    X, y = relu_teacher(40, 3, seed=9)
    X = as_features(X, bias=bias)
    prog = ConvexReLUProgram(X, y, activation_patterns(X, sample_gates(X.shape[1], 60)), 1.0,
                             "relu")  # fmt: skip
    op = prog.operator
    blocks = op.adjoint(prog.y) / prog.n
    expected = max(float(project_onto_cone(blocks[b], X, op.cone_signs[:, b]).norm())
                   for b in range(blocks.shape[0]))  # fmt: skip
    assert prog.lam_max() == pytest.approx(expected, rel=1e-13)
    assert expected < float(blocks.norm(dim=1).max())  # the cones matter here
    # the same scheme decides whether zero is optimal, on either side of lam_max
    for factor, zero in ((1 + 1e-9, True), (1 - 1e-9, False)):
        at = ConvexReLUProgram(X, y, prog.patterns, factor * expected, "relu")
        assert _zero_is_optimal(at) == zero


def test_max_cone_projection_norm_stops_where_documented():
    g = torch.Generator().manual_seed(3)
    X = torch.randn(30, 4, generator=g, dtype=torch.float64)
    signs = 2 * (X @ torch.randn(4, 80, generator=g, dtype=torch.float64) >= 0).double() - 1
    Z = torch.randn(80, 4, generator=g, dtype=torch.float64) * torch.rand(80, 1, generator=g)
    norms = [float(project_onto_cone(Z[b], X, signs[:, b]).norm()) for b in range(80)]
    largest = max(norms)
    assert max_cone_projection_norm(Z, X, signs) == pytest.approx(largest, rel=1e-13)
    below = max_cone_projection_norm(Z, X, signs, floor=2 * largest)
    assert below <= 2 * largest  # "the maximum is at most floor"
    above = max_cone_projection_norm(Z, X, signs, stop_above=0.5 * largest)
    assert 0.5 * largest < above <= largest * (1 + 1e-13)  # a lower bound above stop_above


def test_max_cone_projection_norm_projects_only_rows_that_can_matter(monkeypatch):
    import losslab.convex.program as program

    g = torch.Generator().manual_seed(4)
    X = torch.randn(30, 4, generator=g, dtype=torch.float64)
    signs = 2 * (X @ torch.randn(4, 80, generator=g, dtype=torch.float64) >= 0).double() - 1
    Z = torch.randn(80, 4, generator=g, dtype=torch.float64) * torch.rand(80, 1, generator=g)
    norms = [float(project_onto_cone(Z[b], X, signs[:, b]).norm()) for b in range(80)]
    order = torch.argsort(Z.norm(dim=1), descending=True).tolist()
    calls: list[int] = []

    def counted(z: torch.Tensor, X: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return project_onto_cone(z, X, signs)

    monkeypatch.setattr(program, "project_onto_cone", counted)
    assert program.max_cone_projection_norm(Z, X, signs) == pytest.approx(max(norms), rel=1e-13)
    # rows are visited by decreasing ||z_b|| until ||z_b|| <= the best projection so far
    best, expected = 0.0, 0
    for b in order:
        if float(Z[b].norm()) <= best:
            break
        best, expected = max(best, norms[b]), expected + 1
    assert len(calls) == expected < 80
    calls.clear()
    assert program.max_cone_projection_norm(Z, X, signs, floor=float(Z.norm(dim=1).max())) == 0.0
    assert not calls  # no row can beat the floor
    assert program.max_cone_projection_norm(Z, X, signs, stop_above=0.0) == norms[order[0]]
    assert len(calls) == 1  # the first positive norm stops it
