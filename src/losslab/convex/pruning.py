r"""Optimal pruning (P3): the smallest network with the same optimal objective.

Let ``f_j = s_j D_j X z_j`` be the fits of the active blocks. If they are linearly
dependent, ``sum_j beta_j f_j = 0`` for some ``beta != 0``, and rescaling every block by
``1 - t beta_j >= 0`` keeps the fit; the penalty changes by ``-t lam sum_j beta_j ||z_j||``,
which is zero at an optimum (else a small ``t`` of either sign would lower the objective).
So the objective is constant along the line, and the smallest ``t`` at which a factor
reaches zero removes that neuron. Non-negative rescaling keeps every block in its cone.
Repeating until the fits are linearly independent leaves at most ``n`` neurons
(Mishkin & Pilanci 2023, optimal pruning). The sign of ``beta`` is chosen so that the
penalty never grows, so rounding cannot raise the objective by more than the fit's change.

In floating point a solver's answer also holds *negligible* blocks: an interior point is
never exactly sparse (blocks of norm ``1e-9`` where the optimum has zeros), and a block
that small makes the fits look dependent along a null vector concentrated on it, whose
rescaling would move a real neuron. So the negligible blocks are dropped first
(:func:`drop_negligible_blocks`: the most, by increasing norm, whose removal does not
raise the objective beyond rounding), and a pruning step that raises the objective by more
than ``objective_rtol`` (relative) is undone and ends the pruning.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from losslab.convex.program import ConvexReLUProgram


@dataclass(frozen=True)
class PruneResult:
    """Pruned blocks, the indices of the blocks removed, and the objective before/after."""

    blocks: torch.Tensor
    removed: list[int]
    objective_before: float
    objective_after: float

    @property
    def n_neurons(self) -> int:
        return int((self.blocks.norm(dim=1) > 0).sum())


def block_fits(program: ConvexReLUProgram, blocks: torch.Tensor) -> torch.Tensor:
    """``s_b D_b X z_b`` for every block, as the columns of an (n, B) matrix."""
    return program.operator.preactivations(blocks) * program.operator.weights


#: A block is negligible when its norm is at most ``NEGLIGIBLE_NORM`` times the largest and
#: its removal raises the objective by at most ``NEGLIGIBLE_EPS`` rounding units (relative).
NEGLIGIBLE_NORM, NEGLIGIBLE_EPS = 1e-6, 8


def drop_negligible_blocks(program: ConvexReLUProgram, blocks: torch.Tensor) -> torch.Tensor:
    """``blocks`` without the most blocks of norm at most ``NEGLIGIBLE_NORM`` times the
    largest, taken by increasing norm, whose removal keeps the objective within
    ``NEGLIGIBLE_EPS eps`` (relative) of its value or lowers it (a bisection over how many;
    zeroed blocks stay in their cones)."""
    norms = blocks.norm(dim=1)
    order = torch.argsort(norms)
    order = order[(norms[order] > 0) & (norms[order] <= NEGLIGIBLE_NORM * norms.max())]
    before = program.objective(blocks)
    allowed = before + NEGLIGIBLE_EPS * torch.finfo(blocks.dtype).eps * abs(before)

    def without(count: int) -> torch.Tensor:
        trimmed = blocks.clone()
        trimmed[order[:count]] = 0
        return trimmed

    low, high = 0, order.numel()  # dropping `low` blocks is allowed
    while low < high:
        middle = (low + high + 1) // 2
        if program.objective(without(middle)) <= allowed:
            low = middle
        else:
            high = middle - 1
    return without(low) if low else blocks


def prune_blocks(
    program: ConvexReLUProgram,
    blocks: torch.Tensor,
    *,
    rank_tol: float = 1e-9,
    objective_rtol: float = 1e-12,
) -> PruneResult:
    """Remove neurons along linear dependencies of their fits (module docstring).

    Fits count as dependent when the smallest singular value of the active fits is at
    most ``rank_tol`` times the largest (always when there are more than ``n``). Negligible
    blocks go first; a step that raises the objective by more than ``objective_rtol``
    (relative) is undone and ends the pruning.
    """
    before = program.objective(blocks)
    U = drop_negligible_blocks(program, blocks)
    removed = [int(b) for b in torch.nonzero((blocks.norm(dim=1) > 0) & (U.norm(dim=1) == 0))]
    limit = before + objective_rtol * abs(before)
    while True:
        active = torch.nonzero(U.norm(dim=1) > 0).flatten()
        if active.numel() == 0:
            break
        fits = block_fits(program, U)[:, active]
        _, singular, vh = torch.linalg.svd(fits, full_matrices=True)
        independent = active.numel() <= fits.shape[0] and singular[-1] > rank_tol * singular[0]
        if independent:
            break
        beta = vh[-1]
        if float(beta @ U[active].norm(dim=1)) < 0 or not bool((beta > 0).any()):
            beta = -beta  # the penalty must not grow, and some factor must reach zero
        positive = beta > 0
        t = float((1 / beta[positive]).min())
        factors = (1 - t * beta).clamp(min=0)
        factors[positive & (1 / beta.clamp(min=1e-300) <= t)] = 0.0
        trial = U.clone()
        trial[active] = U[active] * factors[:, None]
        if program.objective(trial) > limit:
            break  # the dependency is numerical only: rescaling along it moves the fit
        U = trial
        removed.extend(int(b) for b in active[factors == 0])
    return PruneResult(U, removed, before, program.objective(U))
