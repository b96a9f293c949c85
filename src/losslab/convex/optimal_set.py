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

Computed from a solution ``U`` (relative duality gap ``tol``): the active blocks are the
non-zero blocks of ``U`` with their directions ``u_b / ||u_b||`` (so ``U`` itself is a
member: ``t_b = ||u_b||``). Zero blocks whose dual ratio ``||Pi(z_b)|| / lam`` lies within
``uncertain_tol`` of 1 may be equicorrelated too (an optimum that leaves them at zero
cannot tell): with ``include_uncertain=True`` (the default) they join the polytope at
``t_b = 0`` with the direction ``xi_b = Pi(z_b) / ||Pi(z_b)||``, so that every optimal
member of the solution (a pruned one, or the dense one) describes the same set. A member
that uses such a block pays ``lam (1 - ratio_b) t_b`` at most over the optimum:
:meth:`ConvexReLU.optimal_member` checks each member's objective and falls back to the
set without them when it moved. They are listed in ``uncertain`` either way. Members are
picked in the parametrisation ``t = t0 + N s`` (``t0`` the minimum-norm
solution of ``F t = yhat``, ``N`` an orthonormal basis of ``ker F``), where each choice
is a least-distance program ``min ||z||`` s.t. ``G z >= h``, solved exactly by one
non-negative least squares (Lawson & Hanson 1974, ch. 23).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linprog, nnls

from losslab.convex.program import ConvexReLUProgram, project_onto_cone
from losslab.convex.pruning import block_fits, prune_blocks
from losslab.errors import ConvexProblemError

#: Unit directions and fits (relative to the largest) this close are one neuron's copies.
COPY_TOL = 1e-9


@dataclass(frozen=True)
class OptimalSet:
    """The polytope of optimal solutions around a computed one (module docstring).

    Attributes:
        program: the convex program.
        fit: the common fit ``yhat`` (n,).
        dual: the dual point ``q = (y - yhat) / n`` (n,).
        active: indices (k,) of the active blocks.
        directions: their unit directions ``xi_b`` (k, d).
        fits: ``F``, the fits ``f_b = A_b xi_b`` as columns (n, k).
        scales: ``t`` of the computed solution (k,).
        minimum_norm_scales: ``t0`` (k,), the minimum-norm solution of ``F t = yhat``.
        null_space: ``N`` (k, m), an orthonormal basis of ``ker F``; ``m`` is the dimension.
        uncertain: zero blocks whose dual ratio is within ``uncertain_tol`` of 1 (in
            ``active`` too, at scale 0, when included).
        copies: (c, 2) pairs ``(block, kept)``: a block holding the same neuron as the
            active block ``kept`` (same sign, direction and fit), merged into it.
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

    @property
    def dimension(self) -> int:
        """Dimension of the polytope (0: the optimum is unique)."""
        return int(self.null_space.shape[1])

    def blocks(self, scales: torch.Tensor) -> torch.Tensor:
        """The blocks (B, d) of the member with scales ``t`` (k,)."""
        if scales.shape != self.scales.shape:
            raise ConvexProblemError(f"scales must have shape {tuple(self.scales.shape)}")
        U = self.program.zeros()
        U[self.active] = scales.to(U)[:, None] * self.directions
        return U

    def objective(self, scales: torch.Tensor) -> float:
        """The convex objective of a member (the same for all, up to the solve's gap)."""
        return self.program.objective(self.blocks(scales))

    def min_norm(self) -> torch.Tensor:
        """The member of smallest ``sum_b ||u_b||^2 = ||t||^2`` (unique)."""
        G, h = self._ldp_in_null_space()
        return self._scales(_least_distance(G, h))

    def vertex(self, cost: torch.Tensor) -> torch.Tensor:
        """The vertex minimising ``cost . t`` over the polytope, by the HiGHS simplex in the
        null-space coordinates ``t = t0 + N s`` (so every member keeps ``F t = yhat`` to
        rounding, and a polytope of dimension 0 has the computed scales as its only
        vertex); if rounding makes the simplex fail, the computed solution's scales."""
        if self.dimension == 0:
            return self.scales.clone()
        N, t0 = self.null_space.cpu().numpy(), self.minimum_norm_scales.cpu().numpy()
        result = linprog(N.T @ cost.cpu().numpy(), A_ub=-N, b_ub=t0, bounds=(None, None),
                         method="highs-ds")  # fmt: skip
        if result.status != 0:
            return self.scales.clone()  # rounding made the polytope look empty: keep U
        return self._scales(result.x)

    def sparsest(self, n_tries: int = 8, seed: int = 0) -> torch.Tensor:
        """The vertex with the fewest active blocks among the optimally pruned solution and
        ``n_tries`` simplex vertices for random positive costs (a minimum-support member is
        NP-hard to find in general; every vertex has at most ``rank F`` active blocks). A
        polytope of dimension 0 has the computed scales as its only member."""
        if self.dimension == 0:
            return self.scales.clone()
        pruned = prune_blocks(self.program, self.blocks(self.scales)).blocks
        candidates = [pruned[self.active].norm(dim=1)]
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
        z = _least_distance(G, -t0 - G @ offset)
        return self._scales(R_inv @ (z + offset))

    def _ldp_in_null_space(self) -> tuple[np.ndarray, np.ndarray]:
        # ||t0 + N s||^2 = ||t0||^2 + ||s||^2 (t0 is orthogonal to ker F); t >= 0.
        return self.null_space.cpu().numpy(), -self.minimum_norm_scales.cpu().numpy()

    def _scales(self, s: np.ndarray) -> torch.Tensor:
        """``t = t0 + N s``, with the scales that are zero up to rounding set to zero (a
        simplex vertex's bounds hold to about ``eps max t``; blocks of scale 1e-16 would
        otherwise count as neurons and make the vertex's fits dependent)."""
        t = self.minimum_norm_scales + self.null_space @ torch.as_tensor(s).to(self.null_space)
        floor = 64 * torch.finfo(t.dtype).eps * float(t.abs().max()) if t.numel() else 0.0
        return torch.where(t > floor, t, torch.zeros_like(t))


def _least_distance(G: np.ndarray, h: np.ndarray) -> np.ndarray:
    """``argmin ||z||`` s.t. ``G z >= h`` by one NNLS (Lawson & Hanson, Algorithm LDP):
    with ``E = [G^T; h^T]``, ``u = argmin_{u >= 0} ||E u - e_last||`` and ``r = E u - e``,
    ``z = -r[:-1] / r[-1]``; ``r = 0`` means the constraints are inconsistent."""
    m = G.shape[1]
    if m == 0:
        return np.zeros(0)
    E = np.vstack([G.T, h[None, :]])
    target = np.zeros(m + 1)
    target[-1] = 1.0
    u, _ = nnls(E, target, maxiter=50 * E.shape[1])
    r = E @ u - target
    if abs(r[-1]) < 1e-14:
        raise ConvexProblemError("the optimal-set polytope is empty (inconsistent data)")
    return -r[:-1] / r[-1]


def optimal_set(
    program: ConvexReLUProgram,
    blocks: torch.Tensor,
    *,
    rank_tol: float = 1e-9,
    uncertain_tol: float = 1e-6,
    include_uncertain: bool = True,
    merge_copies: bool = True,
) -> OptimalSet:
    """Describe the optimal set of ``program`` from a solution ``blocks`` (B, d).

    ``rank_tol`` is the relative singular-value cut-off that decides ``rank F``;
    ``uncertain_tol`` the distance to 1 of a zero block's dual ratio that lists it as
    possibly equicorrelated; ``include_uncertain`` puts those blocks in the polytope
    (module docstring). With ``merge_copies``, ReLU-form blocks that hold one neuron (same
    sign, unit directions and fits within ``COPY_TOL`` relative) count once: a direction
    on the boundary that two patterns' cones share is feasible in both blocks,
    and moving scale between such copies changes no network (it would add a dimension per
    copy to a set whose networks are all the same). ``copies`` lists them. Without it the
    set is the program's own, in block coordinates.
    """
    if blocks.shape != program.zeros().shape:
        raise ConvexProblemError(f"blocks must have shape {tuple(program.zeros().shape)}")
    op = program.operator
    fit = op.fit(blocks)
    dual = (program.y - fit) / program.n
    norms = blocks.norm(dim=1)
    uncertain, correlations = _uncertain_blocks(program, dual, norms, uncertain_tol)
    unit = program.zeros()
    nonzero = norms > 0
    unit[nonzero] = blocks[nonzero] / norms[nonzero, None]
    if include_uncertain and uncertain.numel():
        unit[uncertain] = correlations / correlations.norm(dim=1, keepdim=True)
    active = torch.nonzero(unit.norm(dim=1) > 0).flatten()
    directions = unit[active]
    fits = block_fits(program, unit)[:, active]
    scales = norms[active]
    copies = torch.zeros(0, 2, dtype=torch.long)
    # ReLU form only: gated blocks with one direction and training fit but different gates
    # are different networks off the training data
    if merge_copies and program.operator.signed:
        active, directions, fits, scales, copies = _merge_copies(
            program, active, directions, fits, scales, COPY_TOL
        )
    if active.numel():
        u_svd, singular, vh = torch.linalg.svd(fits, full_matrices=True)
        rank = int((singular > rank_tol * singular[0]).sum())
        t0 = vh[:rank].T @ ((u_svd[:, :rank].T @ fit) / singular[:rank])
        null_space = vh[rank:].T
    else:
        t0, null_space = scales.clone(), scales.new_zeros(0, 0)
    return OptimalSet(
        program=program,
        fit=fit,
        dual=dual,
        active=active,
        directions=directions,
        fits=fits,
        scales=scales,
        minimum_norm_scales=t0,
        null_space=null_space,
        uncertain=uncertain,
        copies=copies,
    )


def _merge_copies(
    program: ConvexReLUProgram,
    active: torch.Tensor,
    directions: torch.Tensor,
    fits: torch.Tensor,
    scales: torch.Tensor,
    tol: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The active blocks of a ReLU-form program with each group of copies of one neuron
    (same sign, direction and fit) merged into its first block, which takes the group's
    total scale; and the ``(copy, kept)`` pairs."""
    k = active.numel()
    if k < 2:
        return active, directions, fits, scales, torch.zeros(0, 2, dtype=torch.long)
    P = program.patterns.shape[1]
    signs = torch.where(active < P, 1, -1)  # ReLU form: blocks v_1..v_P, then w_1..w_P
    fit_scale = float(fits.norm(dim=0).max())
    same = (
        (signs[:, None] == signs[None, :])
        & (torch.cdist(directions, directions) <= tol)
        & (torch.cdist(fits.T, fits.T) <= tol * fit_scale)
    )
    kept_of = torch.arange(k)
    for i in range(k):
        earlier = torch.nonzero(same[i, :i]).flatten()
        if earlier.numel():
            kept_of[i] = kept_of[earlier[0]]
    keep = kept_of == torch.arange(k)
    merged_scales = torch.zeros(k, dtype=scales.dtype).index_add_(0, kept_of, scales.cpu())
    copies = torch.stack([active[~keep].cpu(), active[kept_of[~keep]].cpu()], dim=1)
    return (active[keep], directions[keep], fits[:, keep],
            merged_scales[keep].to(scales), copies)  # fmt: skip


def _uncertain_blocks(
    program: ConvexReLUProgram, dual: torch.Tensor, norms: torch.Tensor, tol: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero blocks with ``||Pi_{K_b}(A_b^T q)|| / lam >= 1 - tol``, and their projected
    correlations ``Pi_{K_b}(A_b^T q)`` (the direction of each such block), shape (u, d)."""
    op = program.operator
    correlations = op.adjoint(dual)
    ratios = correlations.norm(dim=1) / program.lam  # upper bounds for the ReLU form
    candidates = torch.nonzero((norms == 0) & (ratios >= 1 - tol)).flatten().tolist()
    projected = {b: correlations[b] for b in candidates}
    if program.formulation == "relu":
        projected = {b: project_onto_cone(correlations[b], op.X, op.cone_signs[:, b])
                     for b in candidates}  # fmt: skip
        bound = (1 - tol) * program.lam
        candidates = [b for b in candidates if float(projected[b].norm()) >= bound]
    directions = (
        torch.stack([projected[b] for b in candidates])
        if candidates
        else correlations.new_zeros(0, correlations.shape[1])
    )
    return torch.tensor(candidates, dtype=torch.long), directions
