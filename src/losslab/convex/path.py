r"""Regularization paths of the convex ReLU programs (P3): ``lam -> solution``.

From ``lam_max`` (the smallest ``lam`` at which ``U = 0`` is optimal) down a log grid,
each point warm-started from the previous one (gated form; the ReLU form's interior-point
solver starts from its own interior point), each with its duality-gap certificate.
The optimal *fit* ``A U*(lam)`` is unique (the loss is strictly convex in the fit), so
it moves continuously with ``lam``; where it moves much faster per unit of ``log lam``
than along the rest of the path, the grid is too coarse to follow it and the interval
is flagged. Fit changes are measured relative to the largest fit on the path (relative to
the pair's own fits, the first step away from the zero fit at ``lam_max`` would always
count as a change of 1, however fine the grid). Changes of the active set (the neurons)
are listed, and the sensitivity ``||d fit / d lam||`` is estimated on the active set:
by differences with the neighbours that share the point's active set (central where both
do, one-sided where one does; NaN where neither does, at an isolated active set).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any, Literal

import numpy as np
import torch

from losslab.convex.patterns import activation_patterns, sample_gates
from losslab.convex.program import ConvexReLUProgram
from losslab.convex.solvers import SolveResult, solve
from losslab.convex.validation import as_features, as_target
from losslab.errors import ConvexProblemError


@dataclass(frozen=True)
class PathPoint:
    """One solved point of the path."""

    lam: float
    result: SolveResult
    fit: torch.Tensor
    active: frozenset[int]

    @property
    def n_neurons(self) -> int:
        return len(self.active)

    def to_dict(self) -> dict[str, Any]:
        r = self.result
        return {
            "lam": self.lam,
            "objective": r.objective,
            "relative_gap": r.relative_gap,
            "converged": r.converged,
            "n_neurons": self.n_neurons,
            "iterations": r.iterations,
        }


@dataclass(frozen=True)
class RegularizationPath:
    """Points in decreasing ``lam``, ``lam_max``, and what changes between neighbours.

    ``fit_change[i]`` is ``||fit_{i+1} - fit_i|| / max_j ||fit_j||`` (0 when every fit is
    zero); ``jumps`` the indices ``i`` whose change per unit of ``log lam`` exceeds
    ``jump_factor`` times its median over the intervals where the fit is not zero at both
    ends (those above ``lam_max`` do not move); ``active_set_changes`` the ``(i, added,
    removed)`` block indices; ``sensitivity[i]`` estimates ``||d fit / d lam||`` at point i
    on its active set (module docstring; NaN where no neighbour shares it).
    """

    points: list[PathPoint]
    lam_max: float
    fit_change: list[float] = field(default_factory=list)
    jumps: list[int] = field(default_factory=list)
    active_set_changes: list[tuple[int, list[int], list[int]]] = field(default_factory=list)
    sensitivity: list[float] = field(default_factory=list)

    @property
    def lams(self) -> list[float]:
        return [p.lam for p in self.points]

    def to_dict(self) -> dict[str, Any]:
        return {
            "lam_max": self.lam_max,
            "points": [p.to_dict() for p in self.points],
            "fit_change": self.fit_change,
            "jumps": self.jumps,
            "sensitivity": self.sensitivity,
        }


def regularization_path(
    X: Any,
    y: Any,
    lams: Any = None,
    n_lams: int = 50,
    *,
    lam_min_ratio: float = 1e-3,
    formulation: Literal["gated", "relu"] = "gated",
    n_gates: int = 500,
    gates: Any = None,
    bias: bool = False,
    tol: float = 1e-6,
    max_iter: int = 20_000,
    seed: int = 0,
    jump_factor: float = 10.0,
    callback: Callable[[int, int, PathPoint], None] | None = None,
) -> RegularizationPath:
    """Solve along ``lams`` (default: ``n_lams`` log-spaced values from ``lam_max`` down to
    ``lam_min_ratio * lam_max``), warm-starting each point from the previous one (gated form).
    A given ``lams`` is sorted into decreasing order and its repeats dropped: read each
    point's ``lam`` from ``path.points[i].lam``, not from the position in your list.

    The patterns are sampled once (``n_gates`` Gaussian gates, or ``gates``) and shared
    by every point, so the points are solutions of one family of programs.

    ``callback(i, total, point)`` is called after each solved point (``i`` from 0): for a
    progress display, or to keep the points of a long path that may be interrupted (the
    ReLU form at n = 1000, d = 30 took 26 to 45 s per point on 2 cores, measured once).
    """
    features = as_features(X, bias=bias)
    target = as_target(y, features)
    if gates is None:
        gates = sample_gates(features.shape[1], n_gates, seed=seed).to(features)
    patterns = activation_patterns(features, torch.as_tensor(gates).to(features))
    probe = ConvexReLUProgram(features, target, patterns, 1.0, formulation)
    lam_max = probe.lam_max()
    if not lam_max > 0:
        raise ConvexProblemError(
            "lam_max is 0: no pattern's fit correlates with y (y is zero?), so U = 0 is "
            "optimal for every lam and there is no path"
        )
    if lams is None:
        if not (n_lams >= 2 and 0 < lam_min_ratio < 1):
            raise ConvexProblemError("need n_lams >= 2 and 0 < lam_min_ratio < 1")
        grid = lam_max * np.geomspace(1.0, lam_min_ratio, n_lams)
    else:
        grid = np.unique(np.asarray(lams, dtype=np.float64))[::-1]  # decreasing, no repeats
        if grid.size == 0 or not np.all(np.isfinite(grid)) or grid[-1] <= 0:
            raise ConvexProblemError("lams must be a non-empty list of finite values > 0")
    points: list[PathPoint] = []
    init = None
    for lam in grid:
        program = probe.with_lam(float(lam))
        result = solve(program, tol=tol, max_iter=max_iter, init=init)
        init = result.blocks
        active = frozenset(torch.nonzero(result.blocks.norm(dim=1) > 0).flatten().tolist())
        points.append(PathPoint(float(lam), result, program.operator.fit(result.blocks), active))
        if callback is not None:
            callback(len(points) - 1, len(grid), points[-1])
    return _describe(points, lam_max, jump_factor)


def _describe(points: list[PathPoint], lam_max: float, jump_factor: float) -> RegularizationPath:
    changes, rates, active_changes = [], [], []
    scale = max((float(point.fit.norm()) for point in points), default=0.0)
    for i, (a, b) in enumerate(pairwise(points)):
        change = float((b.fit - a.fit).norm()) / scale if scale > 0 else 0.0
        changes.append(change)
        rates.append(change / abs(np.log(a.lam / b.lam)))
        if a.active != b.active:
            active_changes.append((i, sorted(b.active - a.active), sorted(a.active - b.active)))
    # the typical rate where the path moves: intervals above lam_max, with U = 0 at both
    # ends, would make the median 0 and every other interval a jump
    zero = [bool(point.fit.norm() == 0) for point in points]
    moving = [r for i, r in enumerate(rates) if not (zero[i] and zero[i + 1])]
    median = float(np.median(moving)) if moving else 0.0
    jumps = [i for i, r in enumerate(rates) if r > jump_factor * median and changes[i] > 1e-3]
    sensitivity = []
    for i, point in enumerate(points):
        same = [j for j in (i - 1, i + 1) if 0 <= j < len(points)
                and points[j].active == point.active]  # fmt: skip
        lo, hi = points[min([i, *same])], points[max([i, *same])]
        spread = abs(hi.lam - lo.lam)
        sensitivity.append(float((hi.fit - lo.fit).norm()) / spread if spread > 0 else np.nan)
    return RegularizationPath(points, lam_max, changes, jumps, active_changes, sensitivity)
