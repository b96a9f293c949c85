r"""All fixed points of a map ``f: R^N -> R^N`` in a box: multistart search, de-duplication,
stability and basins of attraction (P5, Berlyand & Slavin: counting the fixed points of
square sigmoid networks).

**Search.** The fixed points are the zeros of ``F(x) = f(x) - x``. From ``n_starts``
uniform starts in the box (seeded ``torch.Generator``; ``max(1, n_starts // 4)`` for a
SquareNet whose lifted starts found roots, see **Cost**) plus any user ``starts``, every
start runs the batched Levenberg-Marquardt solver
:func:`losslab.solve.newton.newton_batch` (iterates clamped into the box), and the starts
with ``||F(x)||_2 <= tol_eff`` are kept,
``tol_eff = max(tol, 64 eps sqrt(N)) * max(1, max_i max(|low_i|, |high_i|))``: ``tol`` is
absolute for points and values of order one (the default ``1e-12`` is a few thousand
rounding units ``eps`` of float64), grows with the size of the box, and is never below what
rounding in the map's dtype allows (``eps`` of float32 maps gives about ``1e-5``).

Jacobians ``J_f`` come from ``torch.func`` forward mode (:func:`batched_jacobian`) for any
map; for a :class:`~losslab.nets.square.SquareNet` ``f = sigma o A_L o ... o sigma o A_1``
they are built by the chain rule, ``J_f = D_L W_L ... D_1 W_1`` with
``D_l = diag(sigma'(z_l))`` (``L - 1`` products of ``N x N`` matrices per start).

**De-duplication (uniqueness radius).** Let ``x*`` be a zero of ``F`` with
``beta = ||J_F(x*)^{-1}||_2 = 1 / sigma_min(J_F(x*))`` and let
``omega(r) = max_{||y - x*|| <= r} ||J_F(y) - J_F(x*)||_2`` be the modulus of continuity
of the Jacobian (``omega(r) <= gamma r`` when ``J_F`` is ``gamma``-Lipschitz). For any
zero ``z`` with ``||z - x*|| <= r``,
``z - x* = -J_F(x*)^{-1} int_0^1 (J_F(x* + t (z - x*)) - J_F(x*)) (z - x*) dt``, so
``||z - x*|| <= beta omega(r) ||z - x*||``: whenever ``beta omega(r) < 1`` the point
``x*`` is the **only** zero in the ball of radius ``r`` (the Newton-Kantorovich
uniqueness argument; for Lipschitz ``J_F`` it holds for ``r < 1 / (beta gamma)``). The
uniqueness radius ``rho`` is the largest ``r`` of the ladder ``scale * 2^-j``,
``j = 0..30``, at which the estimate ``beta omega(r) < 1`` holds (and at every smaller
``r``), ``omega`` sampled at ``x* +- r e`` for the direction ``e`` of the smallest singular
value and one random unit direction (a sampled, hence optimistic, ``omega``: hence the
safety factor 4 below). Two
converged points ``x_l`` (a cluster leader, refined by Newton steps) and ``x_m`` are the
same fixed point when

.. math::  ||x_m - x_l|| \le \max\bigl(\min(\text{merge\_atol},\ \rho_l / 4),\
           \min(\text{DEGENERATE\_SPREAD},\ 4 (s_l + \beta_l ||F(x_m)||))\bigr),

with ``merge_atol = max(1e-8, 100 eps sqrt(N))`` (times the scale; ``1e-8`` in
float64), ``DEGENERATE_SPREAD = 1e-3`` (times the scale) and
``s_l = ||J_F(x_l)^{-1} F(x_l)||`` the Newton step left at the leader (its error
estimate): within a quarter of the uniqueness radius (but no farther than
``merge_atol``), or within the points' own error bars. Two fixed points ``1e-6`` apart
(``rho < 1e-6``, error bars near ``1e-10``) are therefore kept apart, while the thousand
copies of one point found from a thousand starts are one, and so are the starts that stop
anywhere in the ``tol^(1/m)`` ball around a degenerate root of multiplicity ``m`` (the
Newton step there covers ``1/m`` of the way: the factor 4 covers ``m <= 4`` from both
sides).
Each unique point is refined with up to three Newton steps (kept only when the residual
does not grow), and the unique points are compared once more after the refinement.

**Capture.** Starts are solved in chunks (the lifted starts of a SquareNet first, else 256
first; then about ``2^21 / N^2``); a start of a later chunk stops as soon as its iterate is
within ``rho / 4`` of a point already found (there ``beta omega < 1/4``, so the Newton map
contracts towards that point, the only zero in the ball): it counts as a hit of that point
and as converged (``n_converged``). A start whose ``||F||`` falls by less than half in 5
iterations is given up (it creeps along a face of the box towards a local minimum of
``||F||``). For a SquareNet the Jacobians of starts with ``||F|| > 1e-3 scale`` are
computed in float32 (twice the speed; the steps still pass the float64 gain-ratio test),
the others and every Jacobian of the analysis in float64.

**Stability.** With ``lambda_i`` the eigenvalues of ``J_f(x*)`` (dense, complex;
:func:`losslab.linalg.general_eigenvalues`, robust to the subnormal entries of saturated
nets):
``"attractor"`` when all ``|lambda_i| < 1``, ``"repeller"`` when all ``|lambda_i| > 1``,
``"saddle"`` when some are below and some above 1, and ``"non-hyperbolic"`` when some
``| |lambda_i| - 1 | <= 1e-9`` (the linearisation does not decide stability). A search
stops at ``||F|| <= tol``, not at ``x*``: near a degenerate fixed point (``x - x^3`` at
0) it stops ``tol^(1/3) = 1e-4`` away, where ``|lambda| = 1 - 3e-8`` looks hyperbolic.
So the hyperbolicity margin ``m = min_i | |lambda_i| - 1 |`` is read again at the Newton
estimate ``x - J_F^+ F(x)``; at a hyperbolic point it moves by ``O(||J_F^+ F||)``, at a
degenerate one it shrinks by a fixed share (``lambda - 1 ~ x^(k-2)`` on an ``x^k`` term,
the Newton step covers ``1/(k-1)`` of the way). A margin that moves by more than a
quarter of itself is unresolved: the point is ``"non-hyperbolic"`` and its index 0.
Such points also merge more widely: the starts that converge near a degenerate root
spread over ``tol^(1/m)``, so two points within ``4 (s_l + s_m)`` of each other (their
Newton error bars, capped at ``DEGENERATE_SPREAD``) are one. A *continuum* of fixed
points (``f`` the identity on a line) has no isolated points: each start finds its own,
all non-hyperbolic.

**Basins.** From ``basin_starts`` further uniform starts in the box the forward iteration
``x <- f(x)`` runs (batched) for up to ``basin_iterations`` steps; a start is assigned to
attractor ``a`` as soon as it is within ``r_a = min(1e-6 scale, rho_a / 4,
dist(a, other fixed points) / 4)`` of it. A slowly contracting attractor (spectral radius
0.99: 500 steps shrink a distance only 150-fold) gets more time: an orbit still within
``min(rho_a, dist(a, other fixed points)) / 4`` of ``a`` after ``basin_iterations`` steps
goes on, up to 20 times as many steps, and counts once it is within ``r_a``; it is
dropped when its closest approach to ``a`` (over every step: a spiral's distance swings)
has not improved by 0.1% in 30 steps (an orbit on a cycle never arrives).
``basin_fraction[a]`` is the share of basin starts assigned to ``a`` (NaN for
non-attractors); ``unassigned_fraction`` the share that ended nowhere (periodic or
chaotic orbits, escape, NaN, or convergence too slow even for that: raise
``basin_iterations``). The sampling error of a fraction ``p`` is
``sqrt(p (1 - p) / basin_starts)``.

**Scale.** Tolerances and radii are for values of order one, times the scale
``max(1, min(box scale, max_i ||f(x_i)||_inf))``, the box scale ``max |box|`` capped by the
largest image of the first starts: fixed points lie in ``f(box)``, so ``tanh(3 x)`` searched
in ``[-1e10, 1e10]`` keeps the tolerances of ``[-1, 1]`` (with the box's scale two of its
points, 2 apart, were one). For the same reason, when the images of the uniform starts span
less than half the box in some coordinate, half as many starts again are drawn in the hull
of those images (:func:`_image_hull_starts`; not for a SquareNet in a box it maps into
itself, where the starts already lie in its range): there ``tanh(3 x)`` finds its repeller
at 0, which uniform starts in ``[-1e10, 1e10]`` reach with probability about ``1e-10``.

**Cost.** Per start and iteration: one Jacobian (``N`` forward-mode passes generically,
``(L - 1) N^3`` multiply-adds for a SquareNet) and an LU (``N^3 / 3``), plus ``J^T J`` and
a Cholesky factorisation (``N^3 + N^3 / 6``) when the Newton step is rejected; about 3 to
5 iterations per start from uniform starts, 1 to 3 once points are known (capture). Per
unique point: 3 refinement Jacobians, an SVD and 124 Jacobians for ``rho``. Per basin start
and forward step: one evaluation of ``f``. For a SquareNet with ``L N <=``
:data:`LIFTED_MAX_UNKNOWNS` (48), in addition, ``max(64, n_starts)`` lifted starts
(:func:`preactivation_starts`) of dimension ``L N``, up to 30 Powell dogleg iterations
each (:func:`losslab.solve.dogleg.dogleg_batch`), a dense ``(L N)^3`` LU per iteration;
they are solved first, so that the points they give capture the uniform starts, of which
there are then ``max(1, n_starts // UNIFORM_SHARE_LIFTED)`` (a quarter; all ``n_starts``
when no lifted start converged). On
``SquareNet(6, 2, cauchy, weight_scale=64)`` the lifted starts take about three quarters of
the search's 0.27 to 0.33 s. Deeper or wider nets skip them: their search is the uniform starts
only (all ``n_starts`` of them).

**Index check.** The index of a nondegenerate fixed point is
``sign det(I - J_f(x*)) = (-1)^m``, ``m`` the number of real eigenvalues of ``J_f(x*)`` above
1 (:func:`fixed_point_indices`): +1 for every attractor, -1 or +1 for a saddle. When ``f``
maps the box ``K`` into its interior, the indices of all its fixed points in ``K`` sum to
1: the Brouwer degree of ``x - f(x)`` on ``K`` is that of ``x - c`` for a point ``c``
inside, by the homotopy ``x - (t f(x) + (1 - t) c)``, which has no zero on the boundary
(the Lefschetz-Hopf theorem for a map of a ball into itself). Every SquareNet maps its
output box (``[0, 1]^N`` for sigmoid, ``[-1, 1]^N`` for tanh) into the open box, so on any
box containing it (``FixedPointSet.maps_into_box``) a sum other than 1 *proves* that fixed
points were missed (in particular an even count); the search then runs again from fresh
starts, twice as many each time, up to ``index_retries`` times, keeping every point found.
A sum of 1 does not prove completeness: a missed pair of opposite indices (a saddle and an
attractor born together in a fold) leaves it unchanged. The check is the only one available
where the proof is out of reach (``N = 64`` autoencoders).

**Completeness.** Nothing here proves that every fixed point was found (the search is a
search; :func:`losslab.fixedpoints.certify.certify_fixed_points` proves counts). Measured
against proved counts on heavy-tailed nets ``SquareNet(6, 2, cauchy, weight_scale=64)``
with the default 1000 starts: exact on 198 of the 199 certified nets of seeds 0 to 199,
which guided the design of the lifted starts (net 150: 12 of 13, one saddle with a tiny
basin), and on all 120 held-out nets of seeds 200 to 319 (all certified; ``BENCHMARKS.md``).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from losslab.errors import FixedPointError
from losslab.linalg.eigenvalues import general_eigenvalues, spectral_norms
from losslab.nets.square import ACTIVATION_SLOPES, ACTIVATIONS, SquareNet
from losslab.solve.dogleg import dogleg_batch
from losslab.solve.newton import CAPTURED, batched_jacobian, newton_batch

Map = Callable[[torch.Tensor], torch.Tensor]

#: ``| |lambda| - 1 | <=`` this marks a fixed point non-hyperbolic.
HYPERBOLICITY_TOL = 1e-9
#: Absolute cap (times the scale) on the distance of two points called the same.
MERGE_ATOL = 1e-8
#: Cap (times the scale) on the error bars ``4 (s + beta ||F||)`` within which two
#: points merge: near a degenerate root of multiplicity ``m``, ``||F|| <= tol`` holds on a
#: ball of radius about ``tol^(1/m)`` (``1e-4`` for ``x - x^3`` at ``tol = 1e-12``), and
#: the starts that converge there are one point, not hundreds.
DEGENERATE_SPREAD = 1e-3
#: A start that stopped with ``||F|| <=`` this many rounding units of ``||J_F|| ||x||``
#: (``eps ||J_F||_2 max(1, ||x||) sqrt(N)``) is converged as far as the dtype allows: at
#: a steep root (``||J_F|| = 1e5`` on saturated tanh nets) no float64 point has
#: ``||F|| <= 1e-12``.
ROUNDING_UNITS = 16
#: Absolute cap (times the scale) on the capture radius of an attractor.
BASIN_CAPTURE = 1e-6
#: A start whose ``||F||`` falls by less than half in 5 iterations is given up (creeping
#: along a face of the box towards a local minimum of ``||F||``; other starts find roots).
STALL_WINDOW, STALL_RATIO = 5, 0.5
#: Float32 Jacobians (SquareNet) while ``||F|| >`` this (times the scale).
COARSE_ABOVE = 1e-3
#: Starts solved before the first known points are used to capture the others.
FIRST_CHUNK = 256
#: Powell dogleg on the lifted pre-activation system (:func:`preactivation_starts`): at
#: most this many iterations, and a start whose residual did not halve in
#: ``LIFTED_STALL_WINDOW`` iterations is given up (chosen with Levenberg-Marquardt on
#: heavy-tailed nets against their certified counts: on 80 nets 60 iterations and the
#: default stall rule found the same points, in 1.5x the time, and 5 iterations to halve
#: lost saddles on 2; on 199 nets 15 or 20 iterations lost points on 9 and 7).
LIFTED_MAX_ITER, LIFTED_STALL_WINDOW, LIFTED_STALL_RATIO = 30, 10, 0.5
#: Lifted starts only for SquareNets with ``L N <=`` this many pre-activations: the cost of
#: a lifted iteration grows as ``(L N)^3`` (Cauchy weights, 1000 starts, dogleg: 0.25 s at
#: ``L N = 12``, 0.3 to 0.45 s at 24, 0.7 to 0.9 s at 36, 0.9 to 1.2 s at 48, 10 s at 128;
#: with Levenberg-Marquardt the whole search of SquareNet(16, 8, cauchy) took 53 s).
LIFTED_MAX_UNKNOWNS = 48
#: With lifted roots, ``max(1, n_starts // UNIFORM_SHARE_LIFTED)`` uniform starts in ``x``: a
#: safety net (on the 199 certified heavy-tailed nets of seeds 0 to 199 the search counted the same
#: with 1, 250 and 1000 of them; 250 instead of 1000 saves about 0.04 s per net).
UNIFORM_SHARE_LIFTED = 4
#: When the images of the uniform starts span less than this share of the box in some
#: coordinate, half as many again are drawn in the box hull of those images (where every
#: fixed point lies, since fixed points lie in ``f(box)``).
IMAGE_HULL_SHARE = 0.5
#: Distances (times the scale) at which the Jacobian's modulus of continuity is probed.
RADIUS_LADDER = 2.0 ** -torch.arange(31, dtype=torch.float64)


@dataclass(frozen=True)
class FixedPointSet:
    """The fixed points found, one row each, sorted lexicographically by coordinates.

    Attributes:
        points: (k, N) fixed points.
        residuals: (k,) ``||f(x) - x||_2``.
        eigenvalues: (k, N) complex eigenvalues of the Jacobian ``J_f`` at each point,
            sorted by decreasing modulus.
        spectral_radius: (k,) ``max |eigenvalue|``.
        kinds: ``"attractor"``, ``"repeller"``, ``"saddle"`` or ``"non-hyperbolic"``.
        basin_fraction: (k,) share of basin starts attracted (NaN for non-attractors, and
            for all when ``basin_starts = 0``).
        unassigned_fraction: share of basin starts attracted to no fixed point.
        radii: (k,) uniqueness radius ``rho``: no other fixed point within it (estimated,
            module docstring), at most the scale.
        hits: (k,) how many search starts converged to each point.
        indices: (k,) fixed-point index ``sign det(I - J_f(x*))`` of each point, +1 or -1
            (0 for a point with an eigenvalue within ``max(1e-9, 1000 eps)`` of 1, eps of
            the map's dtype: undecided); see
            **Index check** in the module docstring.
        maps_into_box: whether ``f`` is known to map the box into its interior (a
            SquareNet on a box containing its output box), so that the indices of all
            fixed points sum to 1.
        rounds: search rounds run (more than one when the index check failed).
        n_starts: starts the search ran in ``x`` over all rounds (uniform, user, image
            hull and, for a SquareNet, the converged pre-activation starts; NaN starts
            dropped).
        n_converged: starts that converged, or were captured by a point already found
            (module docstring).
        tol: the effective tolerance on ``||f(x) - x||_2``.
        seconds: wall time of the whole search.
    """

    points: torch.Tensor
    residuals: torch.Tensor
    eigenvalues: torch.Tensor
    spectral_radius: torch.Tensor
    kinds: list[str]
    basin_fraction: torch.Tensor
    unassigned_fraction: float
    radii: torch.Tensor
    hits: torch.Tensor
    indices: torch.Tensor
    maps_into_box: bool
    rounds: int
    n_starts: int
    n_converged: int
    tol: float
    seconds: float

    @property
    def count(self) -> int:
        """Number of distinct fixed points found."""
        return int(self.points.shape[0])

    @property
    def index_sum(self) -> int:
        """Sum of the fixed-point indices of the points found."""
        return int(self.indices.sum())

    @property
    def index_consistent(self) -> bool | None:
        """The index check (module docstring): ``False`` proves that fixed points are
        missing; ``True`` that the points found are consistent with the index theorem (pairs
        of opposite index may still be missing); ``None`` when the theorem does not apply
        (``maps_into_box`` is false, or some index is undecided)."""
        if not self.maps_into_box or bool((self.indices == 0).any()):
            return None
        return self.index_sum == 1

    def counts_by_kind(self) -> dict[str, int]:
        """How many points of each kind."""
        names = ("attractor", "saddle", "repeller", "non-hyperbolic")
        return {name: self.kinds.count(name) for name in names}

    def select(self, mask: torch.Tensor | list[bool]) -> FixedPointSet:
        """The sub-set of points where ``mask`` is true (search statistics kept)."""
        keep = torch.as_tensor(mask, dtype=torch.bool, device=self.points.device)
        rows = keep.nonzero().squeeze(1).tolist()
        return FixedPointSet(
            points=self.points[keep],
            residuals=self.residuals[keep],
            eigenvalues=self.eigenvalues[keep],
            spectral_radius=self.spectral_radius[keep],
            kinds=[self.kinds[i] for i in rows],
            basin_fraction=self.basin_fraction[keep],
            unassigned_fraction=self.unassigned_fraction,
            radii=self.radii[keep],
            hits=self.hits[keep],
            indices=self.indices[keep],
            maps_into_box=self.maps_into_box,
            rounds=self.rounds,
            n_starts=self.n_starts,
            n_converged=self.n_converged,
            tol=self.tol,
            seconds=self.seconds,
        )

    def attractors(self) -> FixedPointSet:
        """The attracting fixed points only."""
        return self.select([kind == "attractor" for kind in self.kinds])

    def to_dict(self) -> dict[str, Any]:
        eig = self.eigenvalues.detach().cpu()
        return {
            "count": self.count,
            "counts_by_kind": self.counts_by_kind(),
            "points": self.points.tolist(),
            "residuals": self.residuals.tolist(),
            "eigenvalues_real": eig.real.tolist(),
            "eigenvalues_imag": eig.imag.tolist(),
            "spectral_radius": self.spectral_radius.tolist(),
            "kinds": list(self.kinds),
            "basin_fraction": self.basin_fraction.tolist(),
            "unassigned_fraction": self.unassigned_fraction,
            "radii": self.radii.tolist(),
            "hits": self.hits.tolist(),
            "indices": self.indices.tolist(),
            "index_sum": self.index_sum,
            "index_consistent": self.index_consistent,
            "maps_into_box": self.maps_into_box,
            "rounds": self.rounds,
            "n_starts": self.n_starts,
            "n_converged": self.n_converged,
            "tol": self.tol,
            "seconds": self.seconds,
        }


def square_net_jacobian(net: SquareNet, dtype: torch.dtype | None = None) -> Map:
    """``x (B, N) -> J_f(x) (B, N, N)`` of a SquareNet by the chain rule (module doc),
    computed in ``dtype`` (default: the net's; ``x`` is cast to it)."""
    pairs = [
        (W.T.contiguous().to(dtype or W.dtype), b.to(dtype or b.dtype)) for W, b in net.weights()
    ]
    sigma, slope = ACTIVATIONS[net.activation], ACTIVATION_SLOPES[net.activation]

    def jacobian(x: torch.Tensor) -> torch.Tensor:
        B, N = x.shape
        x = x.to(pairs[0][0].dtype)
        h, KT = x, None  # KT = J^T, so each product is one (B N, N) x (N, N) matmul
        for WT, b in pairs:
            z = torch.addmm(b, h, WT)
            h, d = sigma(z), slope(z)
            if KT is None:
                KT = WT.unsqueeze(0) * d.unsqueeze(1)
            else:
                KT = (KT.view(B * N, N) @ WT).view(B, N, N).mul_(d.unsqueeze(1))
        assert KT is not None
        return KT.mT

    return jacobian


def _infer_dtype_device(
    f: Any, starts: torch.Tensor | None, box: Any = None
) -> tuple[torch.dtype, torch.device]:
    """The module's parameters decide (starts are cast to them), else the starts, else a
    box given as floating tensors, else float64 on the CPU."""
    if isinstance(f, torch.nn.Module):
        for parameter in f.parameters():
            if parameter.is_floating_point():
                return parameter.dtype, parameter.device
    if starts is not None and starts.is_floating_point():
        return starts.dtype, starts.device
    if isinstance(box, tuple | list):
        for bound in box:
            if isinstance(bound, torch.Tensor) and bound.is_floating_point():
                return bound.dtype, bound.device
    return torch.float64, torch.device("cpu")


def _resolve(
    f: Any, box: tuple[Any, Any] | None, starts: Any
) -> tuple[int, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """N, low, high (or None), user starts (k, N) (or None), all checked."""
    user = None
    if starts is not None:
        user = torch.as_tensor(starts)
        if not user.is_floating_point():
            user = user.to(torch.float64)
        if user.ndim == 1:
            user = user.unsqueeze(0)
        if user.ndim != 2 or user.shape[1] < 1:
            raise FixedPointError(f"starts must have shape (k, N); got {tuple(user.shape)}")
    if box is None and hasattr(f, "output_box"):
        box = f.output_box
    dtype, device = _infer_dtype_device(f, user, box)
    if user is not None:
        user = user.to(dtype=dtype, device=device)
    bounds: list[torch.Tensor] = []
    if box is not None:
        if not isinstance(box, tuple | list) or len(box) != 2:
            raise FixedPointError(f"box must be a pair (low, high); got {box!r}")
        bounds = [torch.as_tensor(b, dtype=dtype, device=device) for b in box]
        for name, b in zip(("low", "high"), bounds, strict=True):
            if b.ndim > 1:
                raise FixedPointError(f"box {name} must be a scalar or (N,); got {tuple(b.shape)}")
            if not bool(torch.isfinite(b).all()):
                raise FixedPointError(f"box {name} must be finite; got {b.tolist()}")
    candidates: dict[str, int] = {}
    if user is not None:
        candidates["starts"] = int(user.shape[1])
    for name, b in zip(("box low", "box high"), bounds, strict=False):
        if b.ndim == 1:
            candidates[name] = int(b.shape[0])
    net_N = getattr(f, "N", None)
    if isinstance(net_N, int) and not isinstance(net_N, bool):
        candidates["f.N"] = net_N
    if not candidates:
        raise FixedPointError(
            "cannot infer the dimension N: give starts of shape (k, N), a box with (N,) "
            "bounds, or a map with an integer attribute N"
        )
    if len(set(candidates.values())) > 1:
        raise FixedPointError(f"inconsistent dimensions N: {candidates}")
    N = next(iter(candidates.values()))
    if not bounds:
        if user is None:
            raise FixedPointError(
                "no box to search: pass box=(low, high) or starts (the map has no output_box)"
            )
        return N, None, None, user
    low, high = (b.expand(N).clone() for b in bounds)
    if not bool((low < high).all()):
        raise FixedPointError(
            f"box must satisfy low < high in every coordinate (empty or inverted box); "
            f"got low={low.tolist()}, high={high.tolist()}"
        )
    return N, low, high, user


def _evaluate(f: Map, x: torch.Tensor) -> torch.Tensor:
    try:
        with torch.no_grad():
            y = f(x)
    except (RuntimeError, ValueError, TypeError, IndexError, AssertionError) as error:
        raise FixedPointError(
            f"f failed on a batch of shape {tuple(x.shape)} ({type(error).__name__}: {error}). "
            "find_fixed_points evaluates f on (B, N) batches; a map of (N,) vectors can be "
            "batched with torch.vmap(f)"
        ) from error
    if not isinstance(y, torch.Tensor) or y.shape != x.shape:
        shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise FixedPointError(
            f"f must map (..., N) to (..., N): input of shape {tuple(x.shape)} gave output "
            f"of shape {shape}"
        )
    if y.dtype != x.dtype:
        raise FixedPointError(
            f"f returned {y.dtype} for {x.dtype} input: the search runs in the map's dtype "
            "(an nn.Module's parameters', else the starts', else the box's, else float64); "
            "pass starts or a box of the dtype the map computes in"
        )
    return y


def _distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Euclidean distances of the rows of ``a`` and ``b``, computed from differences
    (``torch.cdist``'s matrix-product shortcut loses the small distances to cancellation:
    in float32 a point was 5e-4 from itself)."""
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")


def _leader_clusters(X: torch.Tensor, atol: float) -> list[tuple[int, torch.Tensor]]:
    """Greedy clusters of the rows of ``X`` with every member within ``atol`` of its leader.

    Rows are sorted by a projection on a fixed direction; two rows closer than ``atol``
    have projections closer than ``atol``, so clusters live inside runs of the sorted
    projection with gaps ``<= atol``; inside a run the first row left is the leader.
    """
    _n, N = X.shape
    direction = torch.linspace(1.0, 2.0, N, dtype=X.dtype, device=X.device)
    direction = direction / direction.norm()
    proj = X @ direction
    order = torch.argsort(proj)
    gaps = proj[order].diff() > atol
    cuts = (gaps.nonzero().squeeze(1) + 1).tolist()
    clusters: list[tuple[int, torch.Tensor]] = []
    for run in torch.tensor_split(order, cuts):
        left = run
        while left.numel():
            leader = int(left[0])
            near = torch.linalg.vector_norm(X[left] - X[leader], dim=1) <= atol
            clusters.append((leader, left[near]))
            left = left[~near]
    return clusters


class _Analysis:
    """Jacobian-based quantities at points: refinement, beta, gamma, rho, Newton step."""

    def __init__(self, f: Map, jac_f: Map, generator: torch.Generator) -> None:
        self.f, self.jac_f, self.generator = f, jac_f, generator

    def jac_F(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            J = self.jac_f(x)
        return J - torch.eye(x.shape[1], dtype=x.dtype, device=x.device)

    def refine(self, x: torch.Tensor, steps: int = 3) -> torch.Tensor:
        """Up to ``steps`` Newton steps per point, each kept only if ``||F||`` does not grow."""
        res = torch.linalg.vector_norm(_evaluate(self.f, x) - x, dim=1)
        for _ in range(steps):
            J = self.jac_F(x)
            Fx = _evaluate(self.f, x) - x
            dx, info = torch.linalg.solve_ex(J, -Fx)
            trial = x + dx
            ok = (info == 0) & torch.isfinite(trial).all(1)
            trial = torch.where(ok[:, None], trial, x)
            rt = torch.linalg.vector_norm(_evaluate(self.f, trial) - trial, dim=1)
            better = ok & torch.isfinite(rt) & (rt <= res)
            x = torch.where(better[:, None], trial, x)
            res = torch.where(better, rt, res)
        return x

    def radii(
        self, x: torch.Tensor, scale: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(beta, rho, s)`` per point: ``||J_F^{-1}||``, uniqueness radius, Newton step."""
        k, N = x.shape
        J = self.jac_F(x)
        # a map may be non-differentiable at a point (sqrt at 0): nothing is known there
        finite = torch.isfinite(J).all(dim=2).all(dim=1)
        J = torch.where(finite[:, None, None], J, torch.zeros_like(J))
        U, S, Vh = torch.linalg.svd(J)
        smin = torch.where(finite, S[:, -1], torch.zeros_like(S[:, -1]))
        beta = torch.where(smin > 0, 1 / smin, torch.full_like(smin, torch.inf))
        Fx = _evaluate(self.f, x) - x
        # Newton step via the SVD (stable for ill-conditioned J): V diag(1/S) U^T F
        s = torch.linalg.vector_norm((U.mT @ Fx.unsqueeze(2)).squeeze(2) / S, dim=1)
        s = torch.where(torch.isfinite(s), s, torch.full_like(s, torch.inf))
        random = torch.randn(k, 1, N, generator=self.generator, dtype=x.dtype).to(x.device)
        directions = torch.cat([Vh[:, -1:, :], random], dim=1)
        directions = directions / torch.linalg.vector_norm(directions, dim=2, keepdim=True)
        directions = torch.cat([directions, -directions], dim=1)  # (k, E, N)
        E = directions.shape[1]
        ladder = scale * RADIUS_LADDER.to(dtype=x.dtype, device=x.device)  # (H,) decreasing
        H = ladder.shape[0]
        # H E Jacobians per point: points in chunks of at most 2^21 Jacobian entries
        chunk = max(1, 2**21 // (H * E * N * N))
        omega = torch.cat(
            [
                self._modulus(x[i : i + chunk], J[i : i + chunk], directions[i : i + chunk], ladder)
                for i in range(0, k, chunk)
            ]
        )  # (k, H)
        omega = torch.where(torch.isfinite(omega), omega, torch.full_like(omega, torch.inf))
        # modulus of continuity up to each scale: running max from the smallest scale up
        omega = torch.flip(torch.cummax(torch.flip(omega, [1]), dim=1).values, [1])
        ok = beta[:, None] * omega < 1  # (k, H), monotone: true on a tail of small scales
        largest = torch.where(ok, ladder[None, :], torch.zeros_like(omega)).amax(1)
        # no scale passes: extrapolate linearly below the smallest one
        fallback = ladder[-1] / (beta * omega[:, -1])
        fallback = torch.where(torch.isfinite(fallback), fallback, torch.zeros_like(fallback))
        rho = torch.where(largest > 0, largest, fallback.clamp(max=ladder[-1]))
        return beta, rho, s

    def _modulus(
        self, x: torch.Tensor, J: torch.Tensor, directions: torch.Tensor, ladder: torch.Tensor
    ) -> torch.Tensor:
        """``max_e ||J_F(x + h e) - J_F(x)||_2`` per point and scale ``h`` of ``ladder``
        over the ``directions`` ``e``: (k, H)."""
        (k, E, N), H = directions.shape, ladder.shape[0]
        probes = x[:, None, None, :] + ladder[None, :, None, None] * directions[:, None, :, :]
        change = self.jac_F(probes.reshape(-1, N)).reshape(k, H, E, N, N) - J[:, None, None]
        # probes may leave the map's domain (sqrt below 0): an undefined change is infinite
        defined = torch.isfinite(change).all(dim=4).all(dim=3)
        change = torch.where(defined[..., None, None], change, torch.zeros_like(change))
        norms = spectral_norms(change)
        return torch.where(defined, norms, torch.full_like(norms, torch.inf)).amax(2)


def _deduplicate(
    X: torch.Tensor, residual: torch.Tensor, analysis: _Analysis, atol: float, scale: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unique points, their beta, rho, Newton step s, and hits (module doc, the rule);
    the caller merges them once more after the refinement (:func:`_merge_pairs`)."""
    remaining = torch.arange(X.shape[0], device=X.device)
    found: list[tuple[torch.Tensor, ...]] = []
    while remaining.numel():
        clusters = _leader_clusters(X[remaining], atol)
        leaders = torch.stack([remaining[leader] for leader, _ in clusters])
        refined = analysis.refine(X[leaders])
        beta, rho, s = analysis.radii(refined, scale)
        counts: list[int] = []
        rest = []
        for c, (_, members) in enumerate(clusters):
            rows = remaining[members]
            d = torch.linalg.vector_norm(X[rows] - refined[c], dim=1)
            slack = _error_bars(4 * (s[c] + beta[c] * residual[rows]), scale)
            radius = torch.maximum(torch.minimum(torch.full_like(d, atol), rho[c] / 4), slack)
            same = d <= radius
            same[members == clusters[c][0]] = True  # the leader itself
            counts.append(int(same.sum()))
            rest.append(rows[~same])
        found.append((refined, beta, rho, s, torch.tensor(counts, device=X.device)))
        remaining = torch.cat(rest)
    points = torch.cat([item[0] for item in found])
    beta = torch.cat([item[1] for item in found])
    rho = torch.cat([item[2] for item in found])
    s = torch.cat([item[3] for item in found])
    hits = torch.cat([item[4] for item in found])
    return points, beta, rho, s, hits


def _error_bars(slack: torch.Tensor, scale: float) -> torch.Tensor:
    """``slack`` capped at ``DEGENERATE_SPREAD`` (times the scale); NaN (a singular
    Jacobian: ``inf * 0``) counts as the cap."""
    cap = torch.full_like(slack, DEGENERATE_SPREAD * scale)
    return torch.where(torch.isnan(slack), cap, torch.minimum(slack, cap))


def _merge_pairs(
    points: torch.Tensor,
    beta: torch.Tensor,
    rho: torch.Tensor,
    s: torch.Tensor,
    hits: torch.Tensor,
    atol: float,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Merge refined unique points that are the same by the rule (earlier rows survive)."""
    k = points.shape[0]
    if k < 2:
        return points, beta, rho, s, hits
    d = _distances(points, points)
    unique_within = torch.minimum(rho[:, None], rho[None, :]) / 4
    r = torch.maximum(
        torch.minimum(unique_within, torch.full_like(d, atol)),
        _error_bars(4 * (s[:, None] + s[None, :]), scale),
    )
    same = (d <= r) & ~torch.eye(k, dtype=torch.bool, device=points.device)
    if not bool(same.any()):
        return points, beta, rho, s, hits
    keep = torch.ones(k, dtype=torch.bool, device=points.device)
    hits = hits.clone()
    for i in range(k):
        if not keep[i]:
            continue
        dup = same[i] & keep
        dup[: i + 1] = False
        if bool(dup.any()):
            hits[i] += hits[dup].sum()
            keep &= ~dup
    return points[keep], beta[keep], rho[keep], s[keep], hits[keep]


class _Known:
    """The distinct points found so far, their radii and hits; captures starts near them.

    A running start is *captured* by a known point ``x*`` once its iterate is within
    ``rho / 4`` of it (and within a quarter of the distance to the nearest other point):
    there ``beta omega < 1/4`` (for a modulus ``omega`` about linear), so the Newton map
    contracts towards ``x*``, the only zero in that ball; the start would converge to
    ``x*`` and is counted as a hit of ``x*`` without more iterations.
    """

    def __init__(self, N: int, dtype: torch.dtype, device: torch.device) -> None:
        self.points = torch.empty(0, N, dtype=dtype, device=device)
        self.beta = torch.empty(0, dtype=dtype, device=device)
        self.rho = torch.empty(0, dtype=dtype, device=device)
        self.s = torch.empty(0, dtype=dtype, device=device)
        self.hits = torch.empty(0, dtype=torch.int64, device=device)
        self.radius = torch.empty(0, dtype=dtype, device=device)

    @property
    def count(self) -> int:
        return int(self.points.shape[0])

    def _ratio(self, x: torch.Tensor) -> torch.Tensor:
        return _distances(x, self.points) / self.radius[None, :]

    def captured(self, x: torch.Tensor) -> torch.Tensor:
        return (self._ratio(x) <= 1).any(1)

    def add_hits(self, x: torch.Tensor) -> None:
        nearest = self._ratio(x).argmin(1)
        self.hits = self.hits + torch.bincount(nearest, minlength=self.count)

    def merge(
        self,
        points: torch.Tensor,
        beta: torch.Tensor,
        rho: torch.Tensor,
        s: torch.Tensor,
        hits: torch.Tensor,
        *,
        atol: float,
        scale: float,
    ) -> None:
        merged = _merge_pairs(
            torch.cat([self.points, points]),
            torch.cat([self.beta, beta]),
            torch.cat([self.rho, rho]),
            torch.cat([self.s, s]),
            torch.cat([self.hits, hits]),
            atol,
            scale,
        )
        self.points, self.beta, self.rho, self.s, self.hits = merged
        # capture radius: rho / 4, and never beyond a quarter of the way to another point
        self.radius = self.rho / 4
        if self.count > 1:
            d = _distances(self.points, self.points)
            d.fill_diagonal_(torch.inf)
            self.radius = torch.minimum(self.radius, d.amin(1) / 4)


def classify(eigenvalues: torch.Tensor, tol: float = HYPERBOLICITY_TOL) -> list[str]:
    """Stability kind per row of eigenvalues of ``J_f`` (module doc)."""
    modulus = eigenvalues.abs()
    kinds = []
    for row in modulus:
        if bool(((row - 1).abs() <= tol).any()):
            kinds.append("non-hyperbolic")
        elif bool((row < 1).all()):
            kinds.append("attractor")
        elif bool((row > 1).all()):
            kinds.append("repeller")
        else:
            kinds.append("saddle")
    return kinds


def fixed_point_indices(eigenvalues: torch.Tensor, tol: float = HYPERBOLICITY_TOL) -> torch.Tensor:
    r"""Fixed-point index ``sign det(I - J_f(x*))`` per row of eigenvalues of ``J_f``.

    ``det(I - J_f) = prod_i (1 - lambda_i)``: a complex-conjugate pair contributes
    ``|1 - lambda|^2 > 0`` and a real eigenvalue the sign of ``1 - lambda``, so the index is
    ``(-1)^m`` with ``m`` the number of real eigenvalues above 1 (counted, not multiplied,
    so no overflow for large spectra; the two members of a pair are counted together, so a
    pair taken for real leaves the parity unchanged). 0 where some ``|lambda_i - 1| <= tol``:
    there ``I - J_f`` is (nearly) singular and the index is undecided.

    An attractor has index +1; a saddle ``(-1)^m`` (+1 or -1); a repeller in dimension ``N``
    with real eigenvalues ``(-1)^N``.
    """
    real = eigenvalues.imag.abs() <= tol * eigenvalues.abs().clamp(min=1)
    above = (real & (eigenvalues.real > 1)).sum(1)
    index = 1 - 2 * (above % 2)
    degenerate = ((eigenvalues - 1).abs() <= tol).any(1)
    return torch.where(degenerate, torch.zeros_like(index), index)


def _hyperbolicity_unresolved(
    f: Map, jac_f: Map, points: torch.Tensor, eigenvalues: torch.Tensor
) -> torch.Tensor:
    """Points whose hyperbolicity margin ``m = min_i | |lambda_i| - 1 |`` moves by more than
    a quarter of itself between the point and its Newton estimate of the fixed point (module
    docstring, **Stability**): the margin is then an artefact of where the search stopped."""
    with torch.no_grad():
        J = jac_f(points)
        J.diagonal(dim1=1, dim2=2).sub_(1)
        U, S, Vh = torch.linalg.svd(J)
        coefficients = (U.mT @ (_evaluate(f, points) - points).unsqueeze(2)).squeeze(2)
        coefficients = torch.where(S > 0, coefficients / S, torch.zeros_like(S))
        step = -(Vh.mT @ coefficients.unsqueeze(2)).squeeze(2)
        moved_jacobian = jac_f(points + step)
    margin = (eigenvalues.abs() - 1).abs().amin(1).to(points.dtype)
    readable = torch.isfinite(moved_jacobian).flatten(1).all(1) & (step != 0).any(1)
    unresolved = torch.zeros_like(readable)
    if bool(readable.any()):
        moved_eigenvalues = general_eigenvalues(moved_jacobian[readable])
        moved = (moved_eigenvalues.abs() - 1).abs().amin(1).to(points.dtype)
        kept = margin[readable]
        unresolved[readable] = ~((moved - kept).abs() <= kept / 4) & (kept > 0)
    return unresolved


def _image_hull_starts(
    images: torch.Tensor,
    low: torch.Tensor,
    high: torch.Tensor,
    count: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """``count`` uniform starts in the hull ``[min_i f(x_i), max_i f(x_i)]`` of the
    starts' finite images, clipped to the box, when that hull spans less than
    :data:`IMAGE_HULL_SHARE` of the box in some coordinate; none otherwise. Fixed points
    lie in ``f(box)``: for ``tanh(3 x)`` in ``[-1e10, 1e10]`` uniform starts land within
    ``1`` of the repeller at 0 with probability ``1e-10``, starts in ``[-1, 1]`` often."""
    finite = images[torch.isfinite(images).all(1)]
    empty = images.new_empty(0, images.shape[1])
    if finite.shape[0] == 0:
        return empty
    hull_low = torch.maximum(finite.amin(0), low)
    hull_high = torch.minimum(finite.amax(0), high)
    if bool((hull_high < hull_low).any()):  # the images miss the box in some coordinate
        return empty
    if not bool((hull_high - hull_low < IMAGE_HULL_SHARE * (high - low)).any()):
        return empty
    uniform = torch.rand(count, images.shape[1], generator=generator, dtype=images.dtype)
    return hull_low + (hull_high - hull_low) * uniform.to(images.device)


def _scale_of(images: torch.Tensor, box_scale: float) -> float:
    """The scale of the tolerances and radii (module docstring, **Scale**):
    ``max(1, min(box scale, max_i ||f(x_i)||_inf))`` over the first starts. Fixed points
    lie in ``f(box)``, so a map of bounded range (``tanh(3 x)``) searched in a box of
    ``1e10`` keeps tolerances of order one, and two points 2 apart stay two."""
    image_scale = float(images.abs().amax()) if images.numel() else box_scale
    return max(1.0, min(box_scale, image_scale))


def _at_rounding_floor(
    result: Any, residual_map: Map, jac_f: Map, dtype: torch.dtype
) -> torch.Tensor:
    """Starts that stopped short of ``tol`` at the rounding floor (module docstring): ``||F||
    <= ROUNDING_UNITS eps ||J_F||_2 max(1, ||x||) sqrt(N)`` *and* a Newton step
    ``||J_F^{-1} F||`` below ``ROUNDING_UNITS eps max(1, ||x||) sqrt(N)``, the spacing of
    the floats around ``x``. The second condition rejects a ghost: a local minimum of
    ``||F||`` next to a fold, where ``F`` is small only because ``J_F`` is steep in another
    direction, and Newton points far away."""
    floor_ok = torch.zeros_like(result.converged)
    near = (~result.converged & (result.status != CAPTURED)).nonzero().squeeze(1)
    eps = torch.finfo(dtype).eps
    # only starts whose residual a Jacobian norm up to 1e8 could explain
    near = near[result.residual[near] <= ROUNDING_UNITS * eps * 1e8 * result.x.shape[1]]
    if near.numel() == 0:
        return floor_ok
    x = result.x[near]
    with torch.no_grad():
        J = jac_f(x)
        F = residual_map(x)
    J.diagonal(dim1=1, dim2=2).sub_(1)
    spacing = (
        ROUNDING_UNITS * eps * math.sqrt(x.shape[1])
        * torch.linalg.vector_norm(x, dim=1).clamp(min=1.0)
    )  # fmt: skip
    floor = spacing * spectral_norms(J)
    step, info = torch.linalg.solve_ex(J, -F.unsqueeze(2))
    step_norm = torch.linalg.vector_norm(step.squeeze(2), dim=1)
    floor_ok[near] = (result.residual[near] <= floor) & (info == 0) & (step_norm <= spacing)
    return floor_ok


def square_structure(f: Any) -> SquareNet | None:
    """The SquareNet whose structure the search may use for ``f`` (chain-rule Jacobians,
    pre-activation starts, the index theorem): ``f`` itself when it is a SquareNet that
    :attr:`~SquareNet.computes_its_layers`; a copy (same function and dtype) when ``f`` is a
    plain ``nn.Sequential`` of SquareNet's form; else None (``f`` is a generic map)."""
    if isinstance(f, SquareNet):
        return f if f.computes_its_layers else None
    if type(f) is nn.Sequential:
        try:
            return SquareNet.from_sequential(f)
        except FixedPointError:
            return None
    return None


def _maps_into_box(
    net: SquareNet | None, low: torch.Tensor | None, high: torch.Tensor | None
) -> bool:
    """Whether the map provably maps the box ``[low, high]`` into its interior: a SquareNet,
    whose outputs lie in the open output box of its activation, on a box containing it."""
    if net is None or low is None or high is None:
        return False
    out_low, out_high = net.output_box
    return bool((low <= out_low).all() and (high >= out_high).all())


def _index_check(known: _Known, f: Map, jac_f: Map, tol: float) -> bool | None:
    """Whether the indices of the known points sum to 1 (None: some index undecided, as
    the reported indices decide it)."""
    if known.count == 0:
        return False
    with torch.no_grad():
        eigenvalues = general_eigenvalues(jac_f(known.points))
    indices = fixed_point_indices(eigenvalues, tol)
    indices[_hyperbolicity_unresolved(f, jac_f, known.points, eigenvalues).to(indices.device)] = 0
    if bool((indices == 0).any()):
        return None
    return int(indices.sum()) == 1


#: Orbits still on their way after ``basin_iterations`` steps may take this many times as
#: many more, as long as they keep approaching their attractor (module docstring).
SLOW_BASIN_FACTOR = 20
#: ... by at least this factor of their closest approach within ``SLOW_BASIN_PATIENCE``
#: windows of ``2 check_every`` steps.
SLOW_BASIN_SHRINK = 0.999
SLOW_BASIN_PATIENCE = 3


def _basins(
    f: Map,
    attractors: torch.Tensor,
    capture: torch.Tensor,
    reach: torch.Tensor,
    starts: torch.Tensor,
    iterations: int,
    check_every: int = 5,
) -> tuple[torch.Tensor, float]:
    """Fractions of ``starts`` whose forward orbit enters ``capture[a]`` of attractor ``a``
    within ``iterations`` steps; then the orbits that lie within ``reach[a]`` of an
    attractor go on (up to ``SLOW_BASIN_FACTOR * iterations`` more steps) and count once
    they enter a capture radius (slowly contracting attractors). An orbit is dropped when
    its closest approach to the attractor (over every step, so that a spiral's elliptic
    swings do not hide its progress) has not improved by ``SLOW_BASIN_SHRINK`` for
    ``SLOW_BASIN_PATIENCE`` windows of ``2 check_every`` steps: a periodic orbit never
    enters the capture radius, and stops costing steps."""
    n = starts.shape[0]
    label = torch.full((n,), -1, dtype=torch.int64, device=starts.device)
    if n == 0 or attractors.shape[0] == 0:
        return torch.zeros(attractors.shape[0], dtype=starts.dtype), 1.0
    active = torch.arange(n, device=starts.device)
    z = starts.clone()

    def assign(z: torch.Tensor, active: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d = _distances(z, attractors)  # (b, a)
        inside = d <= capture[None, :]
        hit = inside.any(1)
        label[active[hit]] = inside[hit].to(torch.int64).argmax(1)
        alive = ~hit & torch.isfinite(z).all(1)
        return alive, d

    step = 0
    while active.numel():
        alive, d = assign(z, active)
        active, z, d = active[alive], z[alive], d[alive]
        if step >= iterations or active.numel() == 0:
            break
        burst = min(check_every, iterations - step)
        with torch.no_grad():
            for _ in range(burst):
                z = f(z)
        step += burst
    if active.numel() and iterations > 0:  # slow attractors: follow the orbits within reach
        near = (d <= reach[None, :]).any(1)
        active, z, d = active[near], z[near], d[near]
        target = (d / reach[None, :]).argmin(1)
        best = d.gather(1, target[:, None])[:, 0]
        stall = torch.zeros_like(target)
        extra = 0
        while active.numel() and extra < SLOW_BASIN_FACTOR * iterations:
            centre = attractors[target]
            closest = torch.full_like(best, torch.inf)
            with torch.no_grad():
                for _ in range(2 * check_every):
                    z = f(z)
                    distance = torch.linalg.vector_norm(z - centre, dim=1)
                    closest = torch.minimum(closest, distance.nan_to_num(torch.inf))
            extra += 2 * check_every
            alive, d = assign(z, active)
            better = closest <= SLOW_BASIN_SHRINK * best
            best = torch.where(better, closest, best)
            stall = torch.where(better, torch.zeros_like(stall), stall + 1)
            alive = alive & (stall < SLOW_BASIN_PATIENCE)
            active, z, target = active[alive], z[alive], target[alive]
            best, stall = best[alive], stall[alive]
    counts = torch.bincount(label[label >= 0], minlength=attractors.shape[0]).to(starts.dtype)
    fractions = counts / n
    return fractions, float((label < 0).sum()) / n


def preactivation_starts(net: SquareNet, n_starts: int, generator: torch.Generator) -> torch.Tensor:
    r"""Starts near the fixed points that saturated nets hide in the box's corners.

    A fixed point ``x = f(x)`` of a :class:`SquareNet` ``f = sigma o A_L o ... o sigma o
    A_1`` (``A_l(a) = W_l a + b_l``) is ``x = sigma(y_L)`` for a zero of the *lifted* system
    in the pre-activations ``Y = (y_1, ..., y_L)`` of all layers (multiple shooting:
    Albersmeyer & Diehl 2010, "The lifted Newton method"),

    .. math::  G_l(Y) = W_l\,\sigma(y_{l-1}) + b_l - y_l = 0, \quad l = 1..L,
               \qquad y_0 := y_L,

    with the block-cyclic Jacobian ``dG_l / dy_{l-1} = W_l diag(sigma'(y_{l-1}))``,
    ``dG_l / dy_l = -I``. Each equation holds one activation instead of the composition of
    ``L``: where ``sigma`` saturates, ``F(x) = f(x) - x`` is steep (Jacobian norms of 1e5
    at heavy-tailed weights) and few uniform starts in ``x`` reach such a root, while in
    ``Y`` the same root is well conditioned and the saturation pattern of every layer is
    sampled independently. Powell's dogleg with MINPACK's scaling
    (:func:`losslab.solve.dogleg.dogleg_batch`; the coordinates of ``Y`` range from
    ``1e-2`` to ``1e4``) from ``n_starts`` random ``Y`` (random signs,
    magnitudes log-uniform in ``[r_l, R_l]``, ``R_l = |b_l| + sum_j |W_l|_{:j}`` bounding
    ``|y_l|`` on the activation's range, ``r_l = min(0.1, 0.1 / ||W_{l+1}[:, j]||)``: a
    coordinate fed through a heavy column is resolved at ``1 / ||column||``) gives
    ``sigma(y_L*)``: starts for the search in
    ``x``, which confirms them there. :func:`find_fixed_points` adds ``max(64, n_starts)``
    of them for a SquareNet with ``L N <=`` :data:`LIFTED_MAX_UNKNOWNS`.

    Measured (``SquareNet(6, 2, cauchy, weight_scale=64)``, nets against their certified
    counts, 1000 uniform starts): with the old single-layer system
    ``y_L = A_L(h(sigma(y_L)))`` and 250 starts the search missed saddles on 8 of 80 nets;
    lifted, with 1000 starts solved by Levenberg-Marquardt (Marquardt's scaling), on 3 of
    199; by the dogleg, on 1 of 199 in three quarters of the time (``BENCHMARKS.md``). The
    column-scaled floor ``r_l`` (a floor of 0.1 before) left those 199 counts unchanged and
    raised the count on 10 of 40 tanh nets ``SquareNet(6, 2, tanh, cauchy, 64)``, whose
    missed roots had ``x_j ~ 1e-3`` behind columns of norm ``1e5`` (measured once; the
    benchmark's tanh nets, seeds 0 to 19, are counted exactly wherever proved).
    """
    sigma, sigma_slope = ACTIVATIONS[net.activation], ACTIVATION_SLOPES[net.activation]
    weights = net.weights()
    L, N = len(weights), net.N
    transposed = [(W.T, b) for W, b in weights]

    def previous(Y: torch.Tensor) -> torch.Tensor:
        """``y_{l-1}`` for l = 1..L (``y_0 = y_L``), shape (B, L, N)."""
        return Y.reshape(-1, L, N).roll(1, dims=1)

    def G(Y: torch.Tensor) -> torch.Tensor:
        a = sigma(previous(Y))
        out = torch.stack([torch.addmm(b, a[:, k], WT) for k, (WT, b) in enumerate(transposed)], 1)
        return out.reshape(-1, L * N) - Y

    def G_jacobian(Y: torch.Tensor) -> torch.Tensor:
        slope = sigma_slope(previous(Y))  # sigma'(y_{l-1})
        J = torch.zeros(Y.shape[0], L * N, L * N, dtype=Y.dtype, device=Y.device)
        blocks = J.view(-1, L, N, L, N)
        for k, (W, _) in enumerate(weights):  # dG_k / dy_{k-1}
            blocks[:, k, :, (k - 1) % L] += W * slope[:, k, None, :]
        J.diagonal(dim1=1, dim2=2).sub_(1)
        return J

    radius = torch.stack([b.abs() + W.abs().sum(dim=1) for W, b in weights])  # (L, N)
    if not bool(torch.isfinite(radius).all()):  # weights near the dtype's overflow
        return torch.empty(0, N, dtype=radius.dtype, device=radius.device)
    # magnitudes log-uniform in [r, R] (random signs): a root can be saturated in some
    # coordinates (|y| large) and moderate in others; uniform y would rarely be moderate.
    # The floor r = min(0.1, 0.1 / c): y_{l-1, j} enters y_l through sigma(y_{l-1, j}) times
    # column j of W_l (norm c), which resolves it to about 1 / c: a root of a heavy column
    # sits at |y| ~ 1 / c, below any fixed floor (tanh nets: x_j ~ 1e-3)
    uniform = torch.rand(2, n_starts, L, N, generator=generator, dtype=radius.dtype)
    top = torch.log10(radius.clamp(min=1.0)).cpu()
    columns = torch.stack([torch.linalg.vector_norm(W, dim=0) for W, _ in weights])  # (L, N)
    feeds = columns.roll(-1, dims=0)  # y_l enters through W_{l+1} (y_L through W_1)
    bottom = torch.log10(0.1 / feeds.clamp(min=1.0)).cpu()
    magnitude = 10 ** (bottom + uniform[0] * (top - bottom))
    Y0 = torch.where(uniform[1] < 0.5, -magnitude, magnitude).to(radius).view(n_starts, L * N)
    # roots only to seed the search in x, which confirms them to its own tolerance
    tol = max(1e-10, 64 * torch.finfo(radius.dtype).eps) * (1 + float(radius.max()))
    solved = dogleg_batch(
        G, Y0, jacobian=G_jacobian, tol=tol,
        max_iter=LIFTED_MAX_ITER, stall_window=LIFTED_STALL_WINDOW, stall_ratio=LIFTED_STALL_RATIO,
    )  # fmt: skip
    return sigma(solved.x[solved.converged].view(-1, L, N)[:, -1])


def find_fixed_points(
    f: Map,
    *,
    box: tuple[Any, Any] | None = None,
    starts: torch.Tensor | None = None,
    n_starts: int = 1000,
    tol: float = 1e-12,
    max_iter: int = 100,
    basin_starts: int = 2000,
    basin_iterations: int = 500,
    index_retries: int = 2,
    seed: int = 0,
) -> FixedPointSet:
    """All fixed points ``f(x) = x`` of a batched map in a box (module docstring for the math).

    Args:
        f: an ``nn.Module`` or callable mapping (..., N) -> (..., N), built from torch ops.
        box: ``(low, high)``, scalars or (N,) tensors; default ``f.output_box`` when ``f``
            has one (a SquareNet: ``(0, 1)`` for sigmoid), else ``starts`` are required.
        starts: optional (k, N) extra starts (the only ones when there is no box; clamped
            into the box when there is one).
        n_starts: uniform starts in the box; for a small SquareNet (``L N <=``
            :data:`LIFTED_MAX_UNKNOWNS`) ``max(64, n_starts)`` starts of the lifted
            pre-activation system (:func:`preactivation_starts`) and, when they find roots,
            ``max(1, n_starts // 4)`` uniform ones. For other maps, when the images of
            the uniform starts span less than half the box in some coordinate, ``n_starts
            // 2`` more in the hull of those images (module docstring, **Scale**).
        tol: tolerance on ``||f(x) - x||_2`` for values of order one (times the scale:
            module docstring, **Scale**).
        max_iter: Levenberg-Marquardt iterations per start in ``x`` (lifted starts: at most
            :data:`LIFTED_MAX_ITER`).
        basin_starts: uniform starts of the forward iteration that estimates basins (from
            ``starts`` when there is no box).
        basin_iterations: most forward steps per basin start.
        index_retries: when ``f`` maps the box into itself and the indices of the points
            found do not sum to 1 (points are missing: module docstring, **Index check**),
            search again with fresh starts, twice as many each time, at most this often.
        seed: seed of the ``torch.Generator`` for the starts and directions.

    Returns:
        :class:`FixedPointSet` of the distinct converged points, with their stability.

    Raises:
        FixedPointError: N cannot be inferred, the box is missing, empty or inverted,
            ``f`` changes the shape, or ``f`` is NaN / inf at every start.
    """
    t0 = time.perf_counter()
    for name, value, minimum in (
        ("n_starts", n_starts, 0),
        ("max_iter", max_iter, 1),
        ("basin_starts", basin_starts, 0),
        ("basin_iterations", basin_iterations, 0),
        ("index_retries", index_retries, 0),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise FixedPointError(f"{name} must be an integer >= {minimum}; got {value!r}")
    if not (isinstance(tol, int | float) and math.isfinite(tol) and tol > 0):
        raise FixedPointError(f"tol must be a finite number > 0; got {tol!r}")
    net = square_structure(f)
    f = net if net is not None else f  # a Sequential's copy computes the same function
    N, low, high, user = _resolve(f, box, starts)
    dtype, device = _infer_dtype_device(f, user, (low, high))
    if dtype not in (torch.float32, torch.float64) or device.type == "meta":
        raise FixedPointError(
            f"the map works in {dtype} on {device.type}: the search needs float32 or float64 "
            "numbers (half precision has no linear solvers); cast it, e.g. net.double()"
        )
    generator = torch.Generator().manual_seed(seed)
    # lifted starts draw from a generator of their own, so that they do not shift the others
    lifted_generator = torch.Generator().manual_seed(seed + 1)
    lifted_net = (
        net
        if net is not None and net.L * N <= LIFTED_MAX_UNKNOWNS and low is not None and n_starts > 0
        else None
    )
    box_scale = 1.0
    if low is not None and high is not None:
        box_scale = max(1.0, float(torch.maximum(low.abs(), high.abs()).max()))
    scale = tol_eff = atol = math.nan  # set from the first starts' images (_scale_of)
    jac_f: Map = square_net_jacobian(net) if net is not None else (lambda z: batched_jacobian(f, z))

    def residual_map(x: torch.Tensor) -> torch.Tensor:
        return f(x) - x

    def residual_jacobian(x: torch.Tensor) -> torch.Tensor:
        J = jac_f(x)  # a fresh tensor: J_F = J_f - I in place
        J.diagonal(dim1=1, dim2=2).sub_(1)
        return J

    coarse: Map | None = None
    if net is not None and dtype == torch.float64:
        jac_32 = square_net_jacobian(net, torch.float32)

        def coarse(x: torch.Tensor) -> torch.Tensor:
            J = jac_32(x)
            J.diagonal(dim1=1, dim2=2).sub_(1)
            return J

    analysis = _Analysis(f, jac_f, generator)
    known = _Known(N, dtype, device)
    maps_into_box = _maps_into_box(net, low, high)
    # an eigenvalue this close to 1 leaves the index undecided (rounding of the dtype's
    # Jacobians could flip the sign of 1 - lambda)
    index_tol = max(HYPERBOLICITY_TOL, 1e3 * torch.finfo(dtype).eps)
    n_searched = n_converged = rounds = 0
    chunk = max(1, 2**21 // (N * N))
    x0 = torch.empty(0, N, dtype=dtype, device=device)
    while rounds <= index_retries:
        # a retry draws fresh random starts (none to draw when n_starts is 0)
        if rounds and not (
            maps_into_box and n_starts > 0 and _index_check(known, f, jac_f, index_tol) is False
        ):
            break
        size = n_starts * 2**rounds  # each retry doubles the starts
        parts = []
        if lifted_net is not None:
            # first: they are (nearly) roots, and the points they give capture later starts
            parts.append(
                preactivation_starts(lifted_net, max(64, size), lifted_generator).to(dtype)
            )
        n_lifted = parts[0].shape[0] if parts else 0
        if low is not None and high is not None:
            # a quarter when lifted roots were found; all of them when the lifted solve gave none
            n_uniform = max(1, size // UNIFORM_SHARE_LIFTED) if n_lifted else size
            uniform = torch.rand(n_uniform, N, generator=generator, dtype=dtype).to(device)
            parts.append(low + (high - low) * uniform)
        if user is not None and rounds == 0:
            parts.append(user)
        x0 = torch.cat(parts) if parts else torch.empty(0, N, dtype=dtype, device=device)
        rounds += 1
        if x0.shape[0] == 0:
            raise FixedPointError("no starts: set n_starts >= 1 or pass starts")
        fx0 = _evaluate(f, x0)
        if (
            rounds == 1
            and n_starts > 0
            and low is not None
            and high is not None
            and not maps_into_box
        ):
            hull_starts = _image_hull_starts(
                fx0, low, high, max(1, n_uniform // 2), torch.Generator().manual_seed(seed + 2)
            )  # a generator of their own: the other starts and the basins stay as they were
            if hull_starts.shape[0]:
                x0 = torch.cat([x0, hull_starts])
                fx0 = torch.cat([fx0, _evaluate(f, hull_starts)])
        finite = torch.isfinite(x0).all(1) & torch.isfinite(fx0).all(1)
        if not bool(finite.any()):
            if rounds > 1:
                break
            raise FixedPointError(
                f"f is NaN or infinite at all {x0.shape[0]} starts: check the map and the box"
            )
        x0 = x0[finite]
        n_searched += x0.shape[0]
        if rounds == 1:
            scale = _scale_of(fx0[finite], box_scale)
            # never below what rounding allows in the dtype (float32 maps: about 1e-5)
            tol_eff = max(tol, 64 * torch.finfo(dtype).eps * math.sqrt(N)) * scale
            atol = max(MERGE_ATOL, 100 * torch.finfo(dtype).eps * math.sqrt(N)) * scale
        # lifted starts (nearly roots) alone first, then the others, captured by their points
        head = int(finite[:n_lifted].sum()) or FIRST_CHUNK
        bounds = [0, min(x0.shape[0], head)]
        while bounds[-1] < x0.shape[0]:
            bounds.append(min(x0.shape[0], bounds[-1] + chunk))
        for first, last in itertools.pairwise(bounds):
            result = newton_batch(
                residual_map,
                x0[first:last],
                jacobian=residual_jacobian,
                tol=tol_eff,
                max_iter=max_iter,
                box=None if low is None else (low, high),
                stop=known.captured if known.count else None,
                stall_window=STALL_WINDOW,
                stall_ratio=STALL_RATIO,
                coarse_jacobian=coarse,
                coarse_above=COARSE_ABOVE * scale,
                chunk_size=chunk,
            )
            captured = result.status == CAPTURED
            if bool(captured.any()):
                known.add_hits(result.x[captured])
            conv = result.converged | _at_rounding_floor(result, residual_map, jac_f, dtype)
            n_converged += int(conv.sum()) + int(captured.sum())
            if bool(conv.any()):
                new = _deduplicate(result.x[conv], result.residual[conv], analysis, atol, scale)
                known.merge(*new, atol=atol, scale=scale)
    points, rho, hits = known.points, known.rho, known.hits
    # sort lexicographically (stable keys from the last coordinate to the first)
    order = torch.arange(points.shape[0], device=device)
    for j in reversed(range(N)):
        order = order[torch.sort(points[order, j], stable=True).indices]
    points, rho, hits = points[order], rho[order], hits[order]
    residuals = torch.linalg.vector_norm(_evaluate(f, points) - points, dim=1)
    k = points.shape[0]
    if k:
        with torch.no_grad():
            eig = general_eigenvalues(jac_f(points))
        eig = torch.gather(eig, 1, torch.argsort(eig.abs(), dim=1, descending=True))
    else:
        eig = torch.empty(
            0, N, dtype=torch.complex128 if dtype == torch.float64 else torch.complex64
        )
    spectral_radius = eig.abs().amax(1) if k else torch.empty(0, dtype=dtype)
    kinds = classify(eig)
    indices = fixed_point_indices(eig, index_tol).to(device)
    if k:
        unresolved = _hyperbolicity_unresolved(f, jac_f, points, eig)
        flags = unresolved.tolist()
        kinds = ["non-hyperbolic" if u else kind for kind, u in zip(kinds, flags, strict=True)]
        indices[unresolved.to(device)] = 0
    basin = torch.full((k,), torch.nan, dtype=dtype, device=device)
    unassigned = math.nan
    is_attractor = torch.tensor([kind == "attractor" for kind in kinds], dtype=torch.bool)
    if low is not None and high is not None:
        basin_x0 = low + (high - low) * torch.rand(
            basin_starts, N, generator=generator, dtype=dtype
        ).to(device)
    else:
        basin_x0 = x0
    if basin_x0.shape[0]:
        attract = points[is_attractor.to(device)]
        capture = torch.empty(attract.shape[0], dtype=dtype, device=device)
        if attract.shape[0]:
            d_all = _distances(attract, points)
            d_all[d_all == 0] = torch.inf
            nearest = d_all.amin(1)
            reach = torch.minimum(rho[is_attractor.to(device)] / 4, nearest / 4)
            capture = torch.minimum(torch.full_like(nearest, BASIN_CAPTURE * scale), reach)
        else:
            reach = capture
        fractions, unassigned = _basins(f, attract, capture, reach, basin_x0, basin_iterations)
        basin[is_attractor.to(device)] = fractions.to(device)
    return FixedPointSet(
        points=points,
        residuals=residuals,
        eigenvalues=eig,
        spectral_radius=spectral_radius,
        kinds=kinds,
        basin_fraction=basin,
        unassigned_fraction=unassigned,
        radii=rho,
        hits=hits,
        indices=indices,
        maps_into_box=maps_into_box,
        rounds=rounds,
        n_starts=n_searched,
        n_converged=n_converged,
        tol=tol_eff,
        seconds=time.perf_counter() - t0,
    )
