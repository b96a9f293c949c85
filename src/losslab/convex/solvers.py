r"""Solvers of the convex ReLU programs (:mod:`losslab.convex.program`), in torch.

- Gated form, float64, ``n <=`` :data:`FACTOR_MAX_SAMPLES`: ADMM with exact ridge steps
  on an (n, n) factor (:mod:`losslab.convex.admm`). When ADMM is slow (below a relative
  gap of :data:`POLISH_BELOW`, a check that cut the gap less than 3-fold; or at any gap,
  20 checks that did not halve it) a semismooth Newton polish (:func:`_newton_polish`,
  (n, n) systems) takes over; its dual iterate is a sharper certificate. If the polish
  does not certify, ADMM goes on from the best point (three polishes at most).
- Gated form, float32 data or larger ``n``: FISTA with backtracking and restarts
  (:mod:`losslab.convex.fista`), iterating on the fit vector ``A U`` (for float64 data
  first on a float32 copy, about twice as fast, until the relative gap is below 3e-2),
  with the same Newton polish below a gap of 3e-2 when ``n`` allows it.
- ReLU form: a primal-dual interior-point method with Nesterov-Todd scaling, finished by
  Newton's method on the optimal face it identifies
  (:mod:`losslab.convex.interior_point_method`); its iterates stay exactly in the cones.

Both stop on the relative duality gap ``(P(U) - D(q)) / |P(U)| <= tol`` (the gated form
pairs the lowest objective with the highest dual bound seen, checked every
``check_every`` iterations), with ``q`` a dual-feasible point (for the ReLU form, its
cone projections computed exactly); at ``max_iter`` they return the best point
(lowest objective) with ``converged=False`` and the reason.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from losslab.convex.admm import admm
from losslab.convex.fista import fista, group_soft_threshold
from losslab.convex.interior_point_method import solve_relu_interior_point
from losslab.convex.operator import PatternOperator
from losslab.convex.program import ConvexReLUProgram
from losslab.convex.pruning import drop_negligible_blocks
from losslab.errors import ConvexProblemError
from losslab.linalg.cholesky import solve_with_cholesky


@dataclass(frozen=True)
class SolveResult:
    """A solved convex program and its certificate over the program's own patterns.

    ``blocks`` is (B, d): the ``u_i`` of the gated form, or ``[v_1..v_P, w_1..w_P]`` of
    the ReLU form. ``duality_gap`` is ``objective - dual_objective`` (>= 0), an upper bound
    on the distance to the optimum; ``relative_gap`` divides it by ``|objective|``.
    ``dual_point`` is the dual-feasible ``q`` (n,) whose value is ``dual_objective`` (gated
    form; None for the ReLU form, whose dual point is the residual ``(y - A U) / n`` with
    exact cone projections): :func:`losslab.convex.certify` checks it over all patterns.
    """

    program: ConvexReLUProgram
    blocks: torch.Tensor
    objective: float
    dual_objective: float
    duality_gap: float
    relative_gap: float
    constraint_violation: float
    iterations: int
    seconds: float
    converged: bool
    reason: str
    gap_history: list[float] = field(default_factory=list)
    dual_point: torch.Tensor | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.program.to_dict(),
            "objective": self.objective,
            "dual_objective": self.dual_objective,
            "duality_gap": self.duality_gap,
            "relative_gap": self.relative_gap,
            "constraint_violation": self.constraint_violation,
            "iterations": self.iterations,
            "seconds": self.seconds,
            "converged": self.converged,
            "reason": self.reason,
        }


def solve(
    program: ConvexReLUProgram,
    *,
    tol: float = 1e-8,
    max_iter: int = 20_000,
    init: torch.Tensor | None = None,
    check_every: int = 10,
) -> SolveResult:
    """Solve ``program`` to relative duality gap ``tol`` (see the module docstring).

    ``init`` warm-starts the gated form from blocks of shape (B, d) (e.g. the solution at
    a nearby ``lam``; the interior-point method of the ReLU form starts from its own
    interior point and ignores it); ``max_iter`` counts ADMM (or FISTA) iterations of the
    gated form and interior-point iterations (at most :data:`MAX_INTERIOR_POINT_ITERATIONS`) of the
    ReLU form. A ``tol`` below the rounding floor of the data's dtype,
    :data:`TOL_FLOOR_EPS` ``* eps`` (about 1.9e-6 in float32), is raised to it: no gap
    computed in that dtype can certify less.
    """
    if not (isinstance(tol, int | float) and math.isfinite(tol) and tol > 0):
        raise ConvexProblemError(f"tol must be a finite number > 0; got {tol!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ConvexProblemError(f"max_iter must be an integer >= 1; got {max_iter!r}")
    tol = max(tol, TOL_FLOOR_EPS * torch.finfo(program.X.dtype).eps)
    U0 = program.zeros() if init is None else init.to(program.zeros())
    if U0.shape != program.zeros().shape:
        raise ConvexProblemError(f"init must have shape {tuple(program.zeros().shape)}")
    start = time.perf_counter()
    if program.formulation == "gated":
        result = _solve_gated(program, U0, tol, max_iter, check_every, start)
    else:
        result = _solve_relu(program, tol, max_iter, start)
    return _without_negligible_blocks(result, tol)


def _without_negligible_blocks(result: SolveResult, tol: float) -> SolveResult:
    """The result with its negligible blocks dropped (an interior point is never exactly
    sparse: :func:`losslab.convex.pruning.drop_negligible_blocks`); the objective does not
    rise beyond rounding, and the dual bound stays valid, so the gap is recomputed, and a
    converged result stays so only if the new gap still meets ``tol``."""
    blocks = drop_negligible_blocks(result.program, result.blocks)
    if blocks is result.blocks:
        return result
    objective = result.program.objective(blocks)
    gap = max(objective - result.dual_objective, 0.0)
    relative = gap / max(abs(objective), 1e-300)
    if relative > max(tol, result.relative_gap):
        return result  # (rounding made the trimmed point worse: keep the solver's)
    reason = result.reason
    if result.converged:
        reason = f"relative duality gap {relative:.2e} <= tol {tol:.0e}"
    return replace(
        result,
        blocks=blocks,
        objective=objective,
        duality_gap=gap,
        relative_gap=relative,
        constraint_violation=result.program.constraint_violation(blocks),
        reason=reason,
    )


#: ``tol`` is at least this many rounding units of the data's dtype (see :func:`solve`).
TOL_FLOOR_EPS = 16


def _gated_result(
    program: ConvexReLUProgram,
    U: torch.Tensor,
    iterations: int,
    start: float,
    tol: float,
    check: _GatedGapCheck,
    reason: str,
) -> SolveResult:
    """The result at ``U`` (recorded in ``check`` first); the dual objective is the best
    ``check`` has seen, from any dual-feasible point."""
    check.record(U, program.operator.fit(U))  # U is check's best point: its values decide
    objective, dual = check.best_objective, check.best_dual
    gap = max(objective - dual, 0.0)
    relative = gap / max(abs(objective), 1e-300)
    converged = check.certified()
    return SolveResult(
        program=program,
        blocks=U,
        objective=objective,
        dual_objective=dual,
        duality_gap=gap,
        relative_gap=relative,
        constraint_violation=program.constraint_violation(U),
        iterations=iterations,
        seconds=time.perf_counter() - start,
        converged=converged,
        reason=f"relative duality gap {relative:.2e} <= tol {tol:.0e}" if converged else reason,
        gap_history=check.history,
        dual_point=check.best_dual_point,
    )


def _solve_gated(
    program: ConvexReLUProgram,
    U0: torch.Tensor,
    tol: float,
    max_iter: int,
    check_every: int,
    start: float,
) -> SolveResult:
    history: list[float] = []
    factored = program.n <= FACTOR_MAX_SAMPLES
    if factored and program.X.dtype == torch.float64:
        check = _GatedGapCheck(program, tol, check_every, history, POLISH_BELOW)
        check(U0, program.operator.fit(U0), 0, 0.0)
        U, used = _admm_and_polish(program, U0, max_iter, check_every, check)
    else:
        # float32 data (ADMM's penalty can get small enough near interpolation for float32
        # rounding to stall it) or n too large for (n, n) factors
        polish_below = FIRST_ORDER_POLISH_BELOW if factored else 0.0
        check = _GatedGapCheck(program, tol, check_every, history, polish_below)
        check(U0, program.operator.fit(U0), 0, 0.0)
        U, used = _first_order(program, U0, max_iter, check_every, check)
    reason = f"reached max_iter={max_iter} before the duality gap fell below tol"
    return _gated_result(program, U, used, start, tol, check, reason)


#: Relative gap below which ADMM hands over to the Newton polish (:func:`_newton_polish`).
POLISH_BELOW = 1e-3
#: The same for FISTA, whose gap falls slowly (its scaled residual is a lagging dual).
FIRST_ORDER_POLISH_BELOW = 3e-2
#: ... and only once a check cut the gap less than this factor (ADMM is then slow).
SLOW_PROGRESS = 3.0
#: A polish at any gap once this many checks in a row did not halve the gap.
STUCK_CHECKS = 20


def _admm_and_polish(
    program: ConvexReLUProgram,
    U: torch.Tensor,
    max_iter: int,
    check_every: int,
    check: _GatedGapCheck,
) -> tuple[torch.Tensor, int]:
    """ADMM (:mod:`losslab.convex.admm`) until ``check`` certifies or asks for a Newton
    polish; after a polish that did not certify, ADMM goes on from the best point. Returns
    the best point and the ADMM iterations used."""
    used = 0
    while not check.certified() and used < max_iter:
        run = admm(program.operator, program.y, program.lam, U, max_iter=max_iter - used,
                   stop=check, check_every=check_every)  # fmt: skip
        used += run.iterations
        if not run.stopped:
            check.record(run.V, run.fit)
        U = check.best_point(run.V)
        if check.polish_due:
            U = _polish(program, U, check)
    return U, used


def _polish(program: ConvexReLUProgram, U: torch.Tensor, check: _GatedGapCheck) -> torch.Tensor:
    """The Newton polish ``check`` asked for, from ``U``; returns the best point since."""
    _newton_polish(program, U, check)
    check.polish_done()
    return check.best_point(U)


def _first_order(
    program: ConvexReLUProgram,
    U: torch.Tensor,
    max_iter: int,
    check_every: int,
    check: _GatedGapCheck,
) -> tuple[torch.Tensor, int]:
    """FISTA (first on a float32 copy of a float64 program, to relative gap
    :data:`SINGLE_PRECISION_GAP`) until ``check`` certifies, with a Newton polish whenever
    ``check`` asks for one. Returns the best point and the FISTA iterations used."""
    fit_term = _LeastSquares(program.operator, program.y)
    lipschitz = program.operator.squared_norm() / program.n
    used = 0
    if program.X.dtype == torch.float64 and not check.certified():
        U, used = _single_precision_start(program, U, lipschitz, max_iter, check_every)
        check(U, program.operator.fit(U), 0, 0.0)
    while not check.certified():
        if check.polish_due:
            U = _polish(program, check.best_point(U), check)
            continue
        if used >= max_iter:
            break
        run = fista(program.operator.fit, fit_term.smooth, fit_term.value, program.lam, U,
                    lipschitz=lipschitz, max_iter=max_iter - used, stop=check)  # fmt: skip
        used += run.iterations
        U = check.best_point(run.U)
    return check.best_point(U), used


#: Relative gap (measured in float32) at which FISTA leaves the float32 copy.
SINGLE_PRECISION_GAP = 3e-2


def _single_precision_start(
    program: ConvexReLUProgram,
    U0: torch.Tensor,
    lipschitz: float,
    max_iter: int,
    check_every: int,
) -> tuple[torch.Tensor, int]:
    """FISTA on a float32 copy of the gated program (about twice as fast as float64 on a
    CPU) until its relative gap, measured in float32, is below
    :data:`SINGLE_PRECISION_GAP`: the starting point of the float64 phase, which alone
    decides convergence. Returns the point (in the program's dtype) and the iterations
    used."""
    single = ConvexReLUProgram(program.X.float(), program.y.float(), program.patterns,
                               program.lam, "gated")  # fmt: skip
    check = _GatedGapCheck(single, SINGLE_PRECISION_GAP, check_every, [], polish_below=0.0)
    fit_term = _LeastSquares(single.operator, single.y)
    run = fista(single.operator.fit, fit_term.smooth, fit_term.value, program.lam, U0.float(),
                lipschitz=lipschitz, max_iter=max_iter, stop=check)  # fmt: skip
    return check.best_point(run.U).to(U0.dtype), run.iterations


#: Largest number of interior-point iterations of the ReLU form (it needs 20 to 40).
MAX_INTERIOR_POINT_ITERATIONS = 200


def _solve_relu(program: ConvexReLUProgram, tol: float, max_iter: int, start: float) -> SolveResult:
    solution = solve_relu_interior_point(
        program, tol=tol, max_iter=min(max_iter, MAX_INTERIOR_POINT_ITERATIONS)
    )
    U = solution.blocks.to(program.X)
    gap = max(solution.objective - solution.dual_objective, 0.0)
    return SolveResult(
        program=program,
        blocks=U,
        objective=solution.objective,
        dual_objective=solution.dual_objective,
        duality_gap=gap,
        relative_gap=solution.relative_gap,
        constraint_violation=program.constraint_violation(U),
        iterations=solution.iterations,
        seconds=time.perf_counter() - start,
        converged=solution.converged,
        reason=solution.reason,
        gap_history=[solution.relative_gap],
    )


class _GatedGapCheck:
    """Stop rule of the gated form: the objective comes from the solver's fit ``Z = A U``
    and the dual bound from one adjoint of the residual; the certificate pairs the lowest
    objective with the highest dual bound seen (any dual-feasible point bounds the optimum
    from below). It also stops ADMM or FISTA when a Newton polish (:func:`_newton_polish`)
    is due: the gap is below ``polish_below`` and the last check cut it less than
    :data:`SLOW_PROGRESS`-fold, or :data:`STUCK_CHECKS` checks did not halve it; after a
    polish that did not certify, the threshold drops 10-fold."""

    def __init__(self, program: ConvexReLUProgram, tol: float, check_every: int,
                 history: list[float], polish_below: float = POLISH_BELOW) -> None:  # fmt: skip
        self.program, self.tol, self.check_every, self.history = program, tol, check_every, history
        self.best: torch.Tensor | None = None
        self.best_objective, self.best_dual = float("inf"), float("-inf")
        self.best_dual_point: torch.Tensor | None = None
        self.polish_below, self.polish_due = polish_below, False
        self.n_polish = 0

    def record(self, U: torch.Tensor, fit: torch.Tensor, q: torch.Tensor | None = None) -> bool:
        """Record ``U`` (with ``fit = A U``) and the dual points: the scaled residual and,
        when given, ``q``; True once the gap is <= tol."""
        program = self.program
        residual = program.y - fit
        objective = float(residual.square().sum()) / (2 * program.n)
        objective += program.lam * float(U.norm(dim=1).sum())
        if objective < self.best_objective:
            self.best, self.best_objective = U, objective
        candidates = [(residual / program.n, program.operator.adjoint(residual) / program.n)]
        if q is not None:  # its image computed afresh: no drift from updated images
            candidates.append((q, program.operator.adjoint(q)))
        for point, image in candidates:
            bound = program._bound(point, float(image.norm(dim=1).max()) / program.lam)
            if bound.objective > self.best_dual:
                self.best_dual, self.best_dual_point = bound.objective, bound.scale * point
        self.history.append(self.gap())
        return self.certified()

    def gap(self) -> float:
        return (self.best_objective - self.best_dual) / max(abs(self.best_objective), 1e-300)

    def certified(self) -> bool:
        return self.gap() <= self.tol

    def __call__(self, U: torch.Tensor, Z: torch.Tensor, iteration: int, mapping: float) -> bool:
        if iteration % self.check_every:
            return False
        if self.record(U, Z):
            return True
        # Polish when the gap is small and the iteration slow (the last check did not cut
        # the gap 3-fold): a fast ADMM certifies on its own for less than two Newton steps.
        # Polish at any gap when the last STUCK_CHECKS checks did not even halve it.
        history = self.history
        slow = len(history) < 2 or history[-2] < SLOW_PROGRESS * history[-1]
        stuck = len(history) > STUCK_CHECKS and history[-1 - STUCK_CHECKS] < 2 * history[-1]
        small = self.gap() <= self.polish_below
        due = (small and slow) or (stuck and self.polish_below > 0)
        self.polish_due = due and self.n_polish < 3
        return self.polish_due

    def polish_done(self) -> None:
        self.polish_due, self.n_polish = False, self.n_polish + 1
        self.polish_below = min(self.polish_below, self.gap()) / 10

    def best_point(self, U: torch.Tensor) -> torch.Tensor:
        """The recorded point of lowest objective (``U`` when none was recorded)."""
        return U if self.best is None else self.best


#: Largest ``n`` for which the gated solver factors (n, n) matrices (ADMM's ridge solves and
#: the Newton systems of the polish); above it, FISTA alone.
FACTOR_MAX_SAMPLES = 6000


def _polish_dual(
    program: ConvexReLUProgram,
    xi: torch.Tensor,
    adjoint_xi: torch.Tensor,
    centre: torch.Tensor,
    centre_sq: float,
    sigma: float,
) -> tuple[float, torch.Tensor]:
    """``(Phi(xi), V)`` of :func:`_newton_polish`, ``V = C - sigma A^T xi``: by the Moreau
    identity ``Phi = xi . y + n/2 ||xi||^2 + (||prox(V)||^2 - ||C||^2) / (2 sigma)``, a form
    with no cancellation between terms of size ``sigma ||A^T xi||^2``."""
    V = centre - sigma * adjoint_xi
    prox = group_soft_threshold(V, sigma * program.lam)
    value = float(xi @ program.y) + 0.5 * program.n * float(xi @ xi)
    return value + (float(prox.square().sum()) - centre_sq) / (2 * sigma), V


def _newton_polish(
    program: ConvexReLUProgram,
    U: torch.Tensor,
    check: _GatedGapCheck,
    levels: tuple[float, ...] = (1.0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6),
    steps_per_level: int = 8,
    finishing_steps: int = 4,
) -> bool:
    r"""Semismooth Newton steps on proximal-point subproblems (SSNAL, Li, Sun & Toh 2018).

    For ``sigma > 0`` and a centre ``C`` the subproblem ``min_U f(A U) + lam sum ||u_b||
    + ||U - C||^2 / (2 sigma)`` has the dual ``min_xi Phi(xi) = xi . y + n/2 ||xi||^2 +
    (||U(xi)||^2 - ||C||^2) / (2 sigma)`` with ``U(xi) = prox_{sigma lam ||.||}(C - sigma
    A^T xi)`` (the group soft-threshold), ``grad Phi = y + n xi - A U(xi)`` and generalised
    Hessian ``n I + sigma A J A^T``; ``J`` is block-diagonal, ``alpha_b I + beta_b v_b v_b^T``
    on the blocks the threshold keeps (``alpha_b = 1 - sigma lam / ||v_b||``, ``beta_b =
    sigma lam / ||v_b||``, ``v_b`` the unit direction of ``C - sigma A^T xi``), zero on the
    rest. Each Newton step solves that (n, n) system (:class:`_NewtonSystems`), with an
    Armijo backtracking on ``Phi``. At the subproblem's solution ``q = -xi`` is the residual
    of ``U(xi)`` over ``n``, and ``||A_b^T q|| <= lam + ||U(xi)_b - C_b|| / sigma``: as
    ``sigma`` grows and the centres converge, ``q`` becomes dual-feasible; every ``U(xi)``
    and ``q`` go to ``check`` (which scales ``q`` into the dual-feasible set).

    The outer (augmented Lagrangian) loop runs ``sigma lam`` through ``levels`` times the
    largest block norm, each level centred at the last ``U(xi)`` and given at most
    ``steps_per_level`` Newton steps (fewer once ``||grad Phi||`` fell 10-fold). Once
    ``check`` certifies, up to ``finishing_steps`` more steps at the same level make
    ``U(xi)`` stationary (so the best point, the one returned, is accurate beyond its
    objective), then True; False when the levels run out, when ``n`` exceeds
    :data:`FACTOR_MAX_SAMPLES`, or when a system fails to factor.
    """
    op, y, n, lam = program.operator, program.y, program.n, program.lam
    scale = float(U.norm(dim=1).max())
    if n > FACTOR_MAX_SAMPLES or scale == 0:
        return False
    residual = y - op.fit(U)
    ratio = float(op.adjoint(residual).norm(dim=1).max()) / (n * lam)
    xi = -residual / (n * max(ratio, 1.0))
    certified, systems = False, _NewtonSystems(op)
    for level in levels:
        sigma = level * scale / lam
        centre, centre_sq = U, float(U.square().sum())

        def phi(xi: torch.Tensor, adjoint_xi: torch.Tensor) -> tuple[float, torch.Tensor]:
            return _polish_dual(program, xi, adjoint_xi, centre, centre_sq, sigma)  # noqa: B023

        adjoint_xi = op.adjoint(xi)
        value, V = phi(xi, adjoint_xi)
        first, steps, finish = None, 0, 0
        while True:
            U = group_soft_threshold(V, sigma * lam)
            fit = op.fit(U)
            certified = check.record(U, fit, -xi) or certified
            grad = y + n * xi - fit
            size = float(grad.norm())
            first = size if first is None else first
            if certified:
                # A few more steps make U(xi) stationary: it is then the proximal point of
                # the centre (objective below the centre's) with a residual of KKT accuracy.
                if size <= 1e-13 * float(y.norm()) or finish >= finishing_steps:
                    return True
                finish += 1
            elif steps >= steps_per_level or size <= 0.1 * first < first:
                break
            steps += 1
            direction = systems.direction(V, sigma, lam, grad)
            if direction is None:
                return certified
            adjoint_direction = op.adjoint(direction)
            slope, step = float(grad @ direction), 1.0
            while True:
                trial, V_trial = phi(xi + step * direction, adjoint_xi + step * adjoint_direction)
                if trial <= value + 1e-4 * step * slope or step < 1e-4:
                    break
                step /= 2
            xi, adjoint_xi = xi + step * direction, adjoint_xi + step * adjoint_direction
            value, V = trial, V_trial
        U = group_soft_threshold(V, sigma * lam)
    return check.record(U, op.fit(U), -xi)


class _NewtonSystems:
    r"""Newton directions ``d``: ``(n I + sigma A J A^T) d = -grad`` (see
    :func:`_newton_polish` for ``J`` at ``V``), to relative residual ``rtol``.

    The system is built and factored in float32 (:meth:`PatternOperator.weighted_gram`,
    about 3 times cheaper than float64) and used as the preconditioner of conjugate
    gradients on the float64 system, applied matrix-free
    (:meth:`PatternOperator.weighted_normal`): a few iterations reach float64 accuracy.
    The factor is kept for the next steps at the same ``sigma`` (``J`` changes little
    between them) and rebuilt when CG needs more than ``reuse_cg`` iterations with it. When
    the float32 factorisation fails (a system too ill-conditioned for it) or CG stalls,
    the float64 system is factored and solved directly; None when that fails too.
    """

    def __init__(self, op: PatternOperator, rtol: float = 1e-10, reuse_cg: int = 5,
                 max_cg: int = 30) -> None:  # fmt: skip
        self.op, self.rtol, self.reuse_cg, self.max_cg = op, rtol, reuse_cg, max_cg
        self.factor: torch.Tensor | None = None
        self.sigma = 0.0

    def direction(
        self, V: torch.Tensor, sigma: float, lam: float, grad: torch.Tensor
    ) -> torch.Tensor | None:
        op, n = self.op, grad.shape[0]
        norms = V.norm(dim=1)
        kept = norms > sigma * lam
        beta = torch.where(kept, sigma * lam / norms.clamp(min=1e-300), 0.0)
        alpha = torch.where(kept, 1 - beta, 0.0)
        directions = V / norms.clamp(min=1e-300)[:, None]

        def system(dtype: torch.dtype) -> torch.Tensor:
            matrix = sigma * op.weighted_gram(alpha, beta, directions, dtype=dtype)
            matrix.diagonal().add_(n)
            return matrix

        def product(v: torch.Tensor) -> torch.Tensor:
            return n * v + sigma * op.weighted_normal(v, alpha, beta, directions)

        if grad.dtype == torch.float64:
            if self.factor is not None and self.sigma == sigma:
                solution = self._cg(product, -grad, self.reuse_cg)
                if solution is not None:
                    return solution
            factor, info = torch.linalg.cholesky_ex(system(torch.float32))
            self.factor, self.sigma = (factor, sigma) if int(info) == 0 else (None, 0.0)
            if self.factor is not None:
                solution = self._cg(product, -grad, self.max_cg)
                if solution is not None:
                    return solution
        factor, info = torch.linalg.cholesky_ex(system(grad.dtype))
        if int(info) != 0:
            return None
        return solve_with_cholesky(factor, -grad)

    def _cg(
        self, product: Callable[[torch.Tensor], torch.Tensor], rhs: torch.Tensor, max_iter: int
    ) -> torch.Tensor | None:
        factor = self.factor
        assert factor is not None

        def precondition(r: torch.Tensor) -> torch.Tensor:
            return solve_with_cholesky(factor, r.float()).to(r.dtype)

        return _preconditioned_cg(product, precondition, rhs, self.rtol, max_iter)


def _preconditioned_cg(
    product: Callable[[torch.Tensor], torch.Tensor],
    precondition: Callable[[torch.Tensor], torch.Tensor],
    rhs: torch.Tensor,
    rtol: float,
    max_iter: int,
) -> torch.Tensor | None:
    """Preconditioned conjugate gradients for ``product(x) = rhs`` (symmetric positive
    definite) from ``precondition(rhs)``; None unless ``||rhs - product(x)|| <= rtol ||rhs||``
    within ``max_iter`` iterations."""
    x = precondition(rhs)
    residual = rhs - product(x)
    limit = rtol * float(rhs.norm())
    z = precondition(residual)
    p, rz = z, float(residual @ z)
    for _ in range(max_iter):
        if float(residual.norm()) <= limit:
            return x
        image = product(p)
        curvature = float(p @ image)
        if not curvature > 0:
            return None
        step = rz / curvature
        x, residual = x + step * p, residual - step * image
        z = precondition(residual)
        rz_next = float(residual @ z)
        p, rz = z + (rz_next / rz) * p, rz_next
    return x if float(residual.norm()) <= limit else None


@dataclass(frozen=True)
class _LeastSquares:
    """``||A U - y||^2 / (2n)`` as a function of the fit ``A U`` (the image
    ``operator.fit``); its gradient in ``U`` is ``A^T (A U - y) / n``."""

    operator: PatternOperator
    y: torch.Tensor

    def value(self, fit: torch.Tensor) -> float:
        return float((fit - self.y).square().sum()) / (2 * self.y.shape[0])

    def smooth(self, fit: torch.Tensor) -> tuple[float, torch.Tensor]:
        n = self.y.shape[0]
        residual = fit - self.y
        return float(residual.square().sum()) / (2 * n), self.operator.adjoint(residual / n)
