r"""The set of all optimal solutions of a convex ReLU program (Mishkin & Pilanci 2023, P3).

The loss is strictly convex in the fit, so every optimum has the same fit ``yhat`` and
the same dual point ``q = (y - yhat) / n``. Block ``b`` solves
``min_{u in K_b} lam ||u|| - z_b . u`` with ``z_b = A_b^T q``: it is zero unless
``||Pi_{K_b}(z_b)|| = lam`` (the block is *equicorrelated*), and then ``u_b = t_b xi_b``
with the fixed unit direction ``xi_b = Pi_{K_b}(z_b) / lam`` and ``t_b >= 0``. Since
``lam t_b = z_b . u_b``, the penalty ``lam sum_b t_b = q . yhat`` is the same for every
member, so the optimal set is the polytope

    ``{ U : u_b = t_b xi_b,  t >= 0,  sum_b t_b f_b = yhat }``,   ``f_b = A_b xi_b``,

of non-negative rescalings of the active blocks with the common fit. Its dimension is
``k - rank(F)`` for the ``k`` active blocks (``F = [f_b]``); its vertices are the
members whose active fits are linearly independent (the optimally pruned networks).

Computed from a solution ``U`` that is optimal only to its duality gap: ``gap = P(U) -
D`` with ``D`` the larger of the solve's certified dual objective (when given) and the
dual bound at ``U``'s own residual (:meth:`ConvexReLUProgram.dual_bound`); ``rel`` is the
residual's own relative gap, the accuracy of the dual ratios read from it (in the ReLU
form it can be 1e-3 where the solve certified 2e-8). By the strong convexity of the loss
in the fit,
``||A U - yhat||^2 <= 2 n gap``: a solve's fit and directions are accurate to about
``sqrt(rel)``, not to rounding (less still in directions the fit does not see), and an
interior point also holds *residue*: blocks of norm 1e-6 that no optimum uses, with
meaningless directions. Taking every non-zero block as active, with its own direction,
gave polytopes of dimension 21 for a unique optimum, members 3% above it, and copies of
one neuron counted apart. So the set is built in three steps.

1. Candidates: the blocks whose dual ratio ``r_b = ||Pi(z_b)|| / lam`` at the solution's
   dual point is within ``max(uncertain_tol, sqrt(rel))`` of 1 (non-zero blocks; the
   others are ``residue``) or within ``uncertain_tol`` of 1 (zero blocks, listed in
   ``uncertain``: an optimum that leaves a block at zero cannot tell whether it could be
   active; candidates when ``include_uncertain``). Their directions are either the dual's
   ``Pi(z_b) / ||Pi(z_b)||`` (the theory's ``xi_b``, as accurate as ``q``) or, for the
   non-zero blocks, the solution's ``u_b / ||u_b||``. In the ReLU form, candidates that
   hold one neuron (same sign, unit directions and fits within
   ``max(COPY_TOL, COPY_FACTOR sqrt(rel))``) count once: the one of largest norm is
   kept, and ``copies`` lists the others.
2. Polish: with the directions fixed, the program is the non-negative lasso
   ``min_{t >= 0} P_F(t) = 1/(2n) ||F t - y||^2 + lam sum_b t_b``, solved exactly: its
   dual ``max_q q . y - n/2 ||q||^2`` s.t. ``F^T q <= lam`` is the least-distance program
   ``min ||q - y/n||`` s.t. ``F^T q <= lam``, one non-negative least squares (Lawson &
   Hanson 1974, ch. 23) whose multipliers are ``t_R / n``. Both choices of directions are
   polished and the lower optimum ``P_R`` is kept. With the solution's directions and no
   merge, ``U`` (residue aside) is a point of the lasso, so ``P_R <= P(U)``: that is the
   fallback when a merge raised ``P_R`` above ``limit`` (below). When even that misses
   ``limit`` (blocks the residual's ratios misread as residue), every non-zero block of
   ``U`` is a candidate with its own direction: ``U`` is then a point of the lasso, and
   the set's dimension may be overcounted (solve to a smaller ``tol`` for its shape).
3. Active blocks: the candidates with deficit ``delta_b = 1 - f_b . q_R / lam <= tau``
   (the dual ratio at the polished dual point ``q_R = (y - F t_R) / n``; residue has
   deficits of order 1e-3). For every ``t``,
   ``P_F(t) = P_R + lam delta . t + ||F t - F t_R||^2 / (2n)``, and a member
   (``F t = F t_R``) has ``lam sum_b t_b = q_R . F t_R + lam delta . t <= P_R +
   lam delta . t``, so ``tau = min((limit - P_R) / (2 P_R), 1/2)`` keeps every member
   below ``limit = P(U) + max(gap, MEMBER_RTOL |P(U)|)`` (``max_objective``): the members
   are optimal to the solve's own accuracy. Every member a method returns is checked
   against it (:class:`~losslab.errors.ConvexProblemError` if not: a numerical failure).

The set's ``fit`` is ``F t_R`` and its ``dual`` ``q_R``. Members are picked in the
parametrisation ``t = t0 + N s`` (``N`` an orthonormal basis of ``ker F``,
``t0 = t_R - N N^T t_R`` the minimum-norm solution of ``F t = F t_R``), where each choice
is a least-distance program ``min ||z||`` s.t. ``G z >= h``, solved exactly by one
non-negative least squares.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
from scipy.optimize import linprog, nnls

from losslab.convex.program import ConvexReLUProgram, project_onto_cone
from losslab.convex.pruning import block_fits, prune_blocks
from losslab.errors import ConvexProblemError

#: Candidates whose unit directions and fits (relative to the largest) are within
#: ``max(COPY_TOL, COPY_FACTOR sqrt(rel))`` are one neuron's copies (``rel``: the
#: solution's relative duality gap, ``sqrt(rel)`` the accuracy of its directions; copies
#: were seen 1e-3 apart at ``rel = 8e-8``, ``lam = 6e-3``).
COPY_TOL, COPY_FACTOR = 1e-9, 10.0
#: Members may exceed the solution's objective by ``max(gap, MEMBER_RTOL |objective|)``.
MEMBER_RTOL = 1e-9


@dataclass(frozen=True)
class OptimalSet:
    """The polytope of optimal solutions around a computed one (module docstring).

    Attributes:
        program: the convex program.
        fit: the common fit ``yhat = F t_R`` of the polished solution (n,).
        dual: the dual point ``q_R = (y - yhat) / n`` (n,).
        active: indices (k,) of the active blocks.
        directions: their unit directions ``xi_b`` (k, d).
        fits: ``F``, the fits ``f_b = A_b xi_b`` as columns (n, k).
        scales: ``t`` (k,) of the computed solution: the member nearest its block norms
            (copies added to the block they merge into, residue left out), or ``t_R``
            should rounding put that member above ``max_objective``.
        minimum_norm_scales: ``t0`` (k,), the minimum-norm solution of ``F t = yhat``
            (which may have negative entries).
        null_space: ``N`` (k, m), an orthonormal basis of ``ker F``; ``m`` is the dimension.
        uncertain: zero blocks whose dual ratio is within ``uncertain_tol`` of 1 (in
            ``active`` too, when included and equicorrelated after the polish).
        copies: (c, 2) pairs ``(block, kept)``: a block holding the same neuron as the
            active block ``kept`` (same sign, direction and fit), merged into it.
        residue: non-zero blocks of the solution that are neither active nor copies (their
            dual ratio, before or after the polish, is too low: solver residue).
        max_objective: ``limit``, the objective no member exceeds: the solution's plus
            ``max(gap, MEMBER_RTOL |objective|)``.
    """

    program: ConvexReLUProgram
    fit: torch.Tensor
    dual: torch.Tensor
    active: torch.Tensor
    directions: torch.Tensor
    fits: torch.Tensor
    scales: torch.Tensor
    minimum_norm_scales: torch.Tensor
    null_space: torch.Tensor
    uncertain: torch.Tensor
    copies: torch.Tensor
    residue: torch.Tensor
    max_objective: float

    @property
    def dimension(self) -> int:
        """``dim ker F``: the dimension of the polytope when a member uses every active
        block (0: the optimum is unique)."""
        return int(self.null_space.shape[1])

    def blocks(self, scales: torch.Tensor) -> torch.Tensor:
        """The blocks (B, d) of the member with scales ``t`` (k,)."""
        if scales.shape != self.scales.shape:
            raise ConvexProblemError(f"scales must have shape {tuple(self.scales.shape)}")
        U = self.program.zeros()
        U[self.active] = scales.to(U)[:, None] * self.directions
        return U

    def objective(self, scales: torch.Tensor) -> float:
        """The convex objective of a member (at most ``max_objective`` for every member)."""
        return self.program.objective(self.blocks(scales))

    def min_norm(self) -> torch.Tensor:
        """The member of smallest ``sum_b ||u_b||^2 = ||t||^2`` (unique)."""
        return self._checked(self.nearest(torch.zeros_like(self.scales)), "minimum-norm member")

    def nearest(self, target: torch.Tensor) -> torch.Tensor:
        """The member nearest ``target`` (k,): ``t0`` is orthogonal to ``ker F``, so
        ``||t0 + N s - target||^2 = const + ||s - N^T target||^2``, and with
        ``z = s - N^T target`` it is the LDP ``min ||z||`` s.t.
        ``N z >= -t0 - N N^T target`` (``t >= 0``). A polytope of dimension 0 has the
        polished scales (exact zeros from the NNLS) as its only member."""
        if self.dimension == 0:
            return self.scales.clone()
        N, bound = self.null_space.cpu().numpy(), self._relaxed_t0()
        along = N.T @ target.cpu().numpy()
        z = _least_distance(N, -bound - N @ along)[0]
        return self._scales(z + along)

    def vertex(self, cost: torch.Tensor) -> torch.Tensor:
        """The vertex minimising ``cost . t`` over the polytope, by the HiGHS simplex in the
        null-space coordinates ``t = t0 + N s`` (so every member keeps ``F t = yhat`` to
        rounding, and a polytope of dimension 0 has the polished scales as its only
        vertex); if rounding makes the simplex fail, the polished scales."""
        if self.dimension == 0:
            return self.scales.clone()
        N, bound = self.null_space.cpu().numpy(), self._relaxed_t0()
        result = linprog(N.T @ cost.cpu().numpy(), A_ub=-N, b_ub=bound, bounds=(None, None),
                         method="highs-ds")  # fmt: skip
        if result.status != 0:
            return self.scales.clone()  # rounding made the polytope look empty
        return self._checked(self._scales(result.x), "vertex")

    def sparsest(self, n_tries: int = 8, seed: int = 0) -> torch.Tensor:
        """The vertex with the fewest active blocks among the optimally pruned polished
        solution and ``n_tries`` simplex vertices for random positive costs (a
        minimum-support member is NP-hard to find in general; every vertex has at most
        ``rank F`` active blocks). A polytope of dimension 0 has the polished scales as its
        only member."""
        if self.dimension == 0:
            return self.scales.clone()
        pruned = prune_blocks(self.program, self.blocks(self.scales)).blocks
        candidates = [self._checked(pruned[self.active].norm(dim=1), "pruned member")]
        generator = torch.Generator().manual_seed(seed)
        for _ in range(n_tries):
            cost = torch.rand(self.scales.shape[0], generator=generator, dtype=torch.float64)
            candidates.append(self.vertex(cost + 0.5))
        return min(candidates, key=lambda t: int((t > 0).sum()))

    def best_fit_to(self, outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The member minimising ``||outputs @ t - target||`` (ties: the smallest ``||t||``).

        ``outputs`` (n_val, k) holds each active block's unit-scale output on validation
        data (so a member predicts ``outputs @ t``), ``target`` (n_val,) the labels.
        """
        if outputs.ndim != 2 or outputs.shape[1] != self.scales.shape[0]:
            raise ConvexProblemError(
                f"outputs must have shape (n_val, {self.scales.shape[0]}); "
                f"got {tuple(outputs.shape)}"
            )
        if target.shape != (outputs.shape[0],):
            raise ConvexProblemError(f"target must have shape ({outputs.shape[0]},)")
        if self.dimension == 0:
            return self.scales.clone()
        N = self.null_space.cpu().numpy()
        t0 = self.minimum_norm_scales.cpu().numpy()
        C = outputs.cpu().numpy() @ N
        d = target.cpu().numpy() - outputs.cpu().numpy() @ t0
        # min ||C s - d||^2 + eps ||s||^2 (eps breaks ties towards the smallest ||t||):
        # with [C; sqrt(eps) I] = Q R and z = R s - Q^T [d; 0], an LDP in z.
        eps = 1e-8 * max(float(np.square(C).sum()), 1.0)
        stacked = np.vstack([C, np.sqrt(eps) * np.eye(C.shape[1])])
        Q, R = np.linalg.qr(stacked)
        offset = Q.T @ np.concatenate([d, np.zeros(C.shape[1])])
        R_inv = np.linalg.inv(R)
        G = N @ R_inv
        z = _least_distance(G, -self._relaxed_t0() - G @ offset)[0]
        return self._checked(self._scales(R_inv @ (z + offset)), "validation member")

    def _relaxed_t0(self) -> np.ndarray:
        """``t0 + 64 eps max |t0|``: the members' bounds ``t0 + N s >= 0``, relaxed by
        rounding (a polytope that is a single point although ``ker F`` is not zero would
        otherwise look empty half of the time); :func:`_without_rounding` sets the scales
        left at ``-64 eps max |t0|`` to zero."""
        t0 = self.minimum_norm_scales.cpu().numpy()
        return t0 + 64 * np.finfo(t0.dtype).eps * float(np.abs(t0).max(initial=0.0))

    def _scales(self, s: np.ndarray) -> torch.Tensor:
        """``t = t0 + N s``, without its rounding (:func:`_without_rounding`)."""
        t = self.minimum_norm_scales + self.null_space @ torch.as_tensor(s).to(self.null_space)
        return _without_rounding(t)

    def _checked(self, scales: torch.Tensor, what: str) -> torch.Tensor:
        """``scales``, after checking that the member's objective is at most
        ``max_objective`` (guaranteed by the choice of ``tau`` up to rounding)."""
        objective = self.objective(scales)
        if not objective <= self.max_objective:
            raise ConvexProblemError(
                f"the {what} of the optimal set has objective {objective:.12g}, above the "
                f"solution's {self.max_objective:.12g} (objective plus its duality gap); "
                "solve to a smaller tol"
            )
        return scales


def _without_rounding(t: torch.Tensor) -> torch.Tensor:
    """``t`` with the scales below ``sqrt(eps) max t`` set to zero: a simplex vertex's
    bounds and an NNLS solution hold to about ``eps cond(F) max t``, and blocks of scale
    1e-15 would otherwise count as neurons (and make a vertex's fits dependent)."""
    floor = math.sqrt(torch.finfo(t.dtype).eps) * float(t.abs().max()) if t.numel() else 0.0
    return torch.where(t > floor, t, torch.zeros_like(t))


def _least_distance(G: np.ndarray, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``argmin ||z||`` s.t. ``G z >= h`` and its multipliers ``mu >= 0`` (``z = G^T mu``)
    by one NNLS (Lawson & Hanson, Algorithm LDP): with ``E = [G^T; h^T]``,
    ``u = argmin_{u >= 0} ||E u - e_last||`` and ``r = E u - e``, ``z = -r[:-1] / r[-1]``
    and ``mu = -u / r[-1]``; ``r = 0`` means the constraints are inconsistent."""
    m = G.shape[1]
    if m == 0 or G.shape[0] == 0:
        return np.zeros(m), np.zeros(G.shape[0])
    E = np.vstack([G.T, h[None, :]])
    target = np.zeros(m + 1)
    target[-1] = 1.0
    u, _ = nnls(E, target, maxiter=50 * E.shape[1])
    r = E @ u - target
    if abs(r[-1]) < 1e-14:
        raise ConvexProblemError("the optimal-set polytope is empty (inconsistent data)")
    return -r[:-1] / r[-1], -u / r[-1]


def _polish(program: ConvexReLUProgram, fits: torch.Tensor) -> torch.Tensor:
    """``t_R = argmin_{t >= 0} 1/(2n) ||F t - y||^2 + lam sum_b t_b`` (a basic solution)
    for the fits ``F`` (n, k), exactly: the dual point ``q = y/n + z`` solves the LDP
    ``min ||z||`` s.t. ``-F^T z >= F^T y / n - lam``, whose multipliers ``mu`` give
    ``q = y/n - F mu``, i.e. ``t_R = n mu`` (module docstring, step 2)."""
    if fits.shape[1] == 0:
        return fits.new_zeros(0)
    F = fits.double().cpu().numpy()
    y = program.y.double().cpu().numpy()
    _, multipliers = _least_distance(-F.T, F.T @ y / program.n - program.lam)
    return torch.as_tensor(program.n * multipliers).to(fits)


def optimal_set(
    program: ConvexReLUProgram,
    blocks: torch.Tensor,
    *,
    rank_tol: float = 1e-9,
    uncertain_tol: float = 1e-6,
    include_uncertain: bool = True,
    merge_copies: bool = True,
    dual_objective: float | None = None,
) -> OptimalSet:
    """Describe the optimal set of ``program`` from a solution ``blocks`` (B, d).

    ``dual_objective`` is the solve's certified dual objective (``SolveResult
    .dual_objective``; the estimator passes it): the gap is measured against the larger of
    it and the dual bound at ``blocks``' own residual, which in the ReLU form can be far
    looser (1e-3 relative where the solve certified 2e-8): members are held to the
    certified gap. The residual's own gap still sets the accuracy of the dual ratios and
    directions read from it (step 1); when the polished candidates miss the limit, every
    non-zero block of ``blocks`` is a candidate with its own direction (``blocks`` is then
    a member, so the polish meets it).

    ``rank_tol`` is the relative singular-value cut-off that decides ``rank F``;
    ``uncertain_tol`` the distance to 1 of a zero block's dual ratio that lists it as
    possibly equicorrelated; ``include_uncertain`` makes those blocks candidates (module
    docstring). With ``merge_copies``, ReLU-form candidates that hold one neuron (same
    sign, unit directions and fits within ``max(COPY_TOL, COPY_FACTOR sqrt(rel))``) count
    once: a direction on the boundary that two patterns' cones share is feasible in both blocks,
    and moving scale between such copies changes no network (it would add a dimension per
    copy to a set whose networks are all the same). ``copies`` lists them. Without it the
    set is the program's own, in block coordinates.
    """
    if blocks.shape != program.zeros().shape:
        raise ConvexProblemError(f"blocks must have shape {tuple(program.zeros().shape)}")
    objective = program.objective(blocks)
    own_dual = program.dual_bound(blocks).objective  # at the residual, whose ratios we read
    gap = max(objective - max(own_dual, -math.inf if dual_objective is None else dual_objective),
              0.0)  # fmt: skip
    limit = objective + max(gap, MEMBER_RTOL * abs(objective))
    # the accuracy of the residual's dual ratios, and so of the directions read from them
    accuracy = math.sqrt(max(objective - own_dual, 0.0) / max(abs(objective), 1e-300))
    # 1. candidates: the blocks whose dual constraint is tight (the others are residue)
    dual = (program.y - program.operator.fit(blocks)) / program.n
    norms = blocks.norm(dim=1)
    nonzero = norms > 0
    slack = torch.where(nonzero.cpu(), max(uncertain_tol, accuracy), uncertain_tol).clamp(max=0.5)
    tight, correlations = _tight_blocks(program, dual, slack)
    uncertain = tight[~nonzero.cpu()[tight]]
    chosen = nonzero.cpu()[tight] | include_uncertain
    candidates = tight[chosen].to(norms.device)
    from_dual = program.zeros()
    from_dual[candidates] = correlations[chosen] / correlations[chosen].norm(dim=1, keepdim=True)
    from_solution = from_dual.clone()
    from_solution[nonzero] = blocks[nonzero] / norms[nonzero, None]
    # 2. polish with either directions; the lower objective is the better approximation
    merge = merge_copies and program.formulation == "relu"
    copy_tol = max(COPY_TOL, COPY_FACTOR * accuracy)

    def polish(unit: torch.Tensor, merged: bool) -> _Polished:
        return _polished(program, unit, candidates, norms, merged, copy_tol)

    best = min(polish(from_dual, merge), polish(from_solution, merge), key=lambda o: o[-1])
    if merge and not best[-1] <= limit:
        best = polish(from_solution, False)  # one direction per copies cost too much: apart
    if not best[-1] <= limit:
        # the residual's ratios misread a block needed at the solve's accuracy as residue:
        # every non-zero block with its own direction (U is a point of this lasso: P_R <= P(U))
        every = torch.unique(torch.cat([candidates, torch.nonzero(nonzero).flatten()]))
        best = _polished(program, from_solution, every, norms, False, copy_tol)
    unit, candidates, fits, copies, scales, polished = best
    if not polished <= limit:
        raise ConvexProblemError(
            f"the polished solution has objective {polished:.12g}, above the solution's "
            f"{objective:.12g} plus its duality gap: the directions are too inaccurate"
        )
    # 3. the active blocks: equicorrelated at the polished dual point, deficit <= tau
    fit = fits @ scales
    polished_dual = (program.y - fit) / program.n
    deficits = 1 - (fits.T @ polished_dual) / program.lam
    tau = min((limit - polished) / (2 * max(polished, 1e-300)), 0.5)
    equicorrelated = (deficits <= tau) | (scales > 0)
    active, fits, scales = (
        candidates[equicorrelated],
        fits[:, equicorrelated],
        scales[equicorrelated],
    )
    copies = copies[torch.isin(copies[:, 1], active.cpu())] if copies.numel() else copies
    used = torch.cat([active.cpu(), copies[:, 0]])
    residue = torch.nonzero(nonzero.cpu() & ~torch.isin(torch.arange(norms.numel()), used))
    if active.numel():
        _, singular, vh = torch.linalg.svd(fits, full_matrices=True)
        rank = int((singular > rank_tol * singular[0]).sum())
        null_space = vh[rank:].T
        # t0 = t_R - N N^T t_R: the same point as pinv(F) yhat in exact arithmetic, but
        # without dividing by small singular values (yhat = F t_R exactly)
        t0 = scales - null_space @ (null_space.T @ scales)
    else:
        t0, null_space = scales.clone(), scales.new_zeros(0, 0)
    optimum = OptimalSet(
        program=program,
        fit=fit,
        dual=polished_dual,
        active=active,
        directions=unit[active],
        fits=fits,
        scales=_without_rounding(scales),
        minimum_norm_scales=t0,
        null_space=null_space,
        uncertain=uncertain,
        copies=copies,
        residue=residue.flatten(),
        max_objective=limit,
    )
    # the solution itself as a member: the one nearest its scales (copies added to the
    # block they are merged into, residue left out); t_R if rounding put it above the limit
    target = norms.clone().index_add_(0, copies[:, 1].to(norms.device), norms[copies[:, 0]])
    nearest = optimum.nearest(target[active])
    if not optimum.objective(nearest) <= limit:
        return optimum
    return replace(optimum, scales=nearest)


_Polished = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float]


def _polished(
    program: ConvexReLUProgram,
    unit: torch.Tensor,
    candidates: torch.Tensor,
    norms: torch.Tensor,
    merge: bool,
    copy_tol: float,
) -> _Polished:
    """Steps 1-2 of the module docstring for the unit directions ``unit`` (B, d): the
    candidates with copies of one neuron merged when ``merge`` (ReLU form only: gated
    blocks with one direction and training fit but different gates are different networks
    off the training data), then the exact optimum ``t_R`` with these directions. Returns
    ``unit``, the kept candidates, their fits, the ``(copy, kept)`` pairs, ``t_R`` and its
    objective."""
    fits = block_fits(program, unit)[:, candidates]
    copies = torch.zeros(0, 2, dtype=torch.long)
    if merge:
        keep, copies = _copies(program, candidates, unit[candidates], fits, norms[candidates],
                               copy_tol)  # fmt: skip
        candidates, fits = candidates[keep], fits[:, keep]
    scales = _polish(program, fits)
    objective = program.objective(_blocks(program, candidates, unit[candidates], scales))
    return unit, candidates, fits, copies, scales, objective


def _blocks(
    program: ConvexReLUProgram,
    indices: torch.Tensor,
    directions: torch.Tensor,
    scales: torch.Tensor,
) -> torch.Tensor:
    """The blocks (B, d) with ``u_b = t_b xi_b`` on ``indices`` and zero elsewhere."""
    U = program.zeros()
    U[indices] = scales.to(U)[:, None] * directions
    return U


def _copies(
    program: ConvexReLUProgram,
    candidates: torch.Tensor,
    directions: torch.Tensor,
    fits: torch.Tensor,
    norms: torch.Tensor,
    tol: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Which ReLU-form candidates to keep, one per neuron, and the ``(copy, kept)`` pairs.
    Taken by decreasing norm (the largest block's direction is the most accurate), a
    candidate with the sign of a kept one, its unit direction within ``tol`` and its fit
    within ``tol`` times the largest fit's norm is a copy of the first such kept one."""
    k = candidates.numel()
    keep = torch.zeros(k, dtype=torch.bool)
    if k == 0:
        return keep, torch.zeros(0, 2, dtype=torch.long)
    signs = (candidates < program.patterns.shape[1]).cpu()  # blocks v_1..v_P, w_1..w_P
    fit_scale = float(fits.norm(dim=0).max())
    same = (
        (signs[:, None] == signs[None, :])
        & (torch.cdist(directions, directions) <= tol).cpu()
        & (torch.cdist(fits.T, fits.T) <= tol * fit_scale).cpu()
    )
    pairs = []
    for i in torch.argsort(norms.cpu(), descending=True, stable=True).tolist():
        kept = torch.nonzero(same[i] & keep).flatten()
        if kept.numel():
            pairs.append((int(candidates[i]), int(candidates[kept[0]])))
        else:
            keep[i] = True
    return keep.to(candidates.device), torch.tensor(pairs, dtype=torch.long).reshape(-1, 2)


def _tight_blocks(
    program: ConvexReLUProgram, dual: torch.Tensor, slack: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The blocks whose dual ratio ``||Pi_{K_b}(A_b^T q)|| / lam`` is at least
    ``1 - slack_b`` (slack (B,) < 1), and their projected correlations
    ``Pi_{K_b}(A_b^T q)`` (lam times each block's dual direction), shape (c, d). For the
    ReLU form ``||A_b^T q||`` bounds the ratio from above, so only the blocks it lets
    through are projected (non-negative least squares each)."""
    op = program.operator
    correlations = op.adjoint(dual)
    ratios = correlations.norm(dim=1).cpu() / program.lam
    tight = torch.nonzero(ratios >= 1 - slack).flatten()
    projected = correlations[tight.to(correlations.device)]
    if program.formulation == "relu" and tight.numel():
        projected = torch.stack([project_onto_cone(correlations[b], op.X, op.cone_signs[:, b])
                                 for b in tight.tolist()])  # fmt: skip
        still = projected.norm(dim=1).cpu() / program.lam >= 1 - slack[tight]
        tight, projected = tight[still], projected[still.to(projected.device)]
    return tight, projected
