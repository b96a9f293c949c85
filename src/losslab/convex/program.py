r"""The convex programs of two-layer ReLU networks (P3), their objectives and duals.

With ``X`` (n, d) (a column of ones appended for a bias), target ``y`` (n,), patterns
``D_1..D_P`` and ``lam > 0``:

- gated form:  ``min_U 1/(2n) ||sum_i D_i X u_i - y||^2 + lam sum_i ||u_i||``;
- ReLU form:   ``min_{V,W} 1/(2n) ||sum_i D_i X (v_i - w_i) - y||^2
  + lam sum_i (||v_i|| + ||w_i||)``  s.t. ``(2 D_i - I) X v_i >= 0``, ``(2 D_i - I) X w_i >= 0``.

Both are ``min_U f(A U) + sum_b g_b(u_b)`` with ``f(z) = ||z - y||^2 / (2n)``, whose
Fenchel dual is ``max_q  q . y - n/2 ||q||^2`` subject to, for every block ``b``,
``||Pi_{K_b}(A_b^T q)|| <= lam`` (``K_b`` the block's cone, all of R^d when gated). For
any ``rho >= 0``, ``||Pi_K(z)|| <= ||z + X^T ((2D-I) rho)||``, so the residual
``q = (y - A U) / n`` with cone multipliers ``rho`` (a solver's), shrunk by the
best factor that makes it feasible, gives a lower bound on the optimum: the duality gap
``P(U) - D(q)`` bounds how far ``U`` is from optimal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any, Literal

import numpy as np
import torch

from losslab.convex.operator import PatternOperator
from losslab.convex.patterns import PackedPatterns, chunk_width, pattern_columns
from losslab.convex.validation import as_features, as_target, check_lam
from losslab.errors import ConvexProblemError

Formulation = Literal["gated", "relu"]


@dataclass(frozen=True)
class DualBound:
    """A dual-feasible point's objective, and how feasible the unshrunk residual was.

    ``max_ratio = max_b ||A_b^T q + ...|| / lam`` for the unshrunk residual ``q``; at an
    optimum it is at most 1 (up to the solver's tolerance).
    """

    objective: float
    scale: float
    max_ratio: float


@dataclass(frozen=True)
class ConvexReLUProgram:
    """One convex program: data, patterns (boolean, (n, P)), ``lam`` and the form.

    ``X`` (n, d) already holds the bias column when there is one; ``X`` and ``y`` are
    checked as the estimator checks them (:func:`~losslab.convex.validation.as_features`,
    :func:`~losslab.convex.validation.as_target`: float32 or float64, finite, ``y`` of
    shape (n,) or (n, 1), cast to ``X``'s dtype and device).
    """

    X: torch.Tensor
    y: torch.Tensor
    patterns: torch.Tensor
    lam: float
    formulation: Formulation = "gated"

    def __post_init__(self) -> None:
        # a plain float: NumPy 2 keeps np.float32 * float in float32 (NEP 50)
        object.__setattr__(self, "lam", check_lam(self.lam))
        X = as_features(self.X)
        object.__setattr__(self, "X", X)
        object.__setattr__(self, "y", as_target(self.y, X))
        patterns = torch.as_tensor(np.asarray(self.patterns) if not isinstance(
            self.patterns, torch.Tensor) else self.patterns)  # fmt: skip
        object.__setattr__(self, "patterns", patterns.to(device=X.device, dtype=torch.bool))
        if self.formulation not in ("gated", "relu"):
            raise ConvexProblemError(
                f"formulation must be 'gated' or 'relu'; got {self.formulation!r}"
            )
        if self.patterns.ndim != 2 or self.patterns.shape[0] != self.X.shape[0]:
            raise ConvexProblemError(
                f"patterns must have shape (n, P) = ({self.X.shape[0]}, P); "
                f"got {tuple(self.patterns.shape)}"
            )
        if self.patterns.shape[1] == 0:
            raise ConvexProblemError("there are no activation patterns to fit with")

    @property
    def n(self) -> int:
        return int(self.X.shape[0])

    @cached_property
    def operator(self) -> PatternOperator:
        return PatternOperator(self.X, self.patterns.to(self.X.device), self.formulation == "relu")

    def with_lam(self, lam: float) -> ConvexReLUProgram:
        """The same program at another ``lam``, sharing this one's operator and the (n, n)
        matrices it has cached (a regularization path builds them once)."""
        program = replace(self, lam=lam)
        if "operator" in self.__dict__:
            program.__dict__["operator"] = self.operator  # what cached_property stores
        return program

    def zeros(self) -> torch.Tensor:
        """The all-zero blocks (B, d)."""
        return self.X.new_zeros(self.operator.n_blocks, self.X.shape[1])

    def objective(self, U: torch.Tensor) -> float:
        """``1/(2n) ||A U - y||^2 + lam sum_b ||u_b||``."""
        residual = self.operator.fit(U) - self.y
        return float(residual.square().sum() / (2 * self.n) + self.lam * U.norm(dim=1).sum())

    def constraint_violation(self, U: torch.Tensor) -> float:
        """Largest ``-(2 D_b - I) X u_b`` entry (0 when feasible, and for the gated form)."""
        if self.formulation == "gated":
            return 0.0
        values = self.operator.preactivations(U) * self.operator.cone_signs
        return float((-values).clamp(min=0).max())

    def dual_bound(self, U: torch.Tensor, multipliers: torch.Tensor | None = None) -> DualBound:
        """The dual objective at the best feasible multiple of ``q = (y - A U) / n``.

        For the ReLU form the cone projections are bounded with ``multipliers`` (n, B)
        when given, and computed exactly (non-negative least squares) otherwise.
        """
        op = self.operator
        q = (self.y - op.fit(U)) / self.n
        if self.formulation == "relu" and multipliers is None:
            return self._bound(q, self.max_dual_ratio(q, self.patterns))
        weights = op.weights * q[:, None]
        if multipliers is not None:
            weights = weights + op.cone_signs * multipliers
        ratio = float(op.adjoint_of_weights(weights).norm(dim=1).max()) / self.lam
        return self._bound(q, ratio)

    def pattern_correlations(
        self, q: torch.Tensor, patterns: torch.Tensor | PackedPatterns
    ) -> torch.Tensor:
        """``X^T D_p q`` for each pattern ``p``, as the rows of a (P, d) tensor:
        ``(masks * q)^T X`` over chunks of ``chunk_width(n)`` patterns, so that no (n, P)
        float64 array is formed: O(n d P) time, O(CHUNK_ENTRIES + P d) memory."""
        n_patterns = patterns.shape[1]
        correlations = self.X.new_empty(n_patterns, self.X.shape[1])
        width = chunk_width(self.n)
        for first in range(0, n_patterns, width):
            ids = torch.arange(first, min(first + width, n_patterns))
            masks = pattern_columns(patterns, ids.to(self.X.device)).to(self.X.dtype)
            correlations[first : first + width] = (masks * q[:, None]).T @ self.X
        return correlations

    def max_dual_ratio(self, q: torch.Tensor, patterns: torch.Tensor | PackedPatterns) -> float:
        """``max_D max(||Pi_K(X^T D q)||, ||Pi_K(-X^T D q)||) / lam`` over the patterns
        ``D`` (columns of ``patterns``, a boolean (n, P) tensor or packed), ``K = K_D``; for
        the gated form ``max_D ||X^T D q|| / lam``. Exact when it is at least 1; below 1 (no
        dual constraint violated) an upper bound, since only that matters to the dual bound.
        Patterns are visited in decreasing order of the cheap bound ``||X^T D q|| / lam``
        (:meth:`pattern_correlations`), in chunks of 256 whose bounds
        :func:`projection_norm_bounds` sharpens; only those whose bound exceeds ``max(1, the
        largest exact ratio so far)`` are projected exactly. Memory: O(CHUNK_ENTRIES + P d +
        256 n), no (n, P) float64 array."""
        if patterns.shape[1] == 0:
            return 0.0
        correlations = self.pattern_correlations(q, patterns)
        bounds = correlations.norm(dim=1) / self.lam
        if self.formulation == "gated":
            return float(bounds.max())
        order = torch.argsort(bounds, descending=True)
        best, rest, chunk = 0.0, 0.0, 256  # rest: an upper bound of the ratios not computed
        for first in range(0, order.numel(), chunk):
            if float(bounds[order[first]]) <= max(best, 1.0):
                # below 1 the exact value changes no dual bound: 1 is what counts there
                rest = max(rest, float(bounds[order[first]]))
                break
            ids = order[first : first + chunk]
            signs = pattern_columns(patterns, ids).to(self.X.dtype) * 2 - 1  # (n, chunk)
            # sharper upper bounds for this chunk (batched), exact norms where they matter
            both = torch.cat([correlations[ids], -correlations[ids]])
            cones = torch.cat([signs, signs], dim=1)
            sharp = projection_norm_bounds(both, self.X, cones) / self.lam
            sharp = torch.maximum(sharp[: ids.numel()], sharp[ids.numel() :])
            for index in torch.argsort(sharp, descending=True).tolist():
                if float(sharp[index]) <= max(best, 1.0):
                    rest = max(rest, float(sharp[index]))
                    break
                z = correlations[int(ids[index])]
                plus = float(project_onto_cone(z, self.X, signs[:, index]).norm())
                minus = float(project_onto_cone(-z, self.X, signs[:, index]).norm())
                best = max(best, plus / self.lam, minus / self.lam)
        # at or above 1, best is the exact maximum; below, an upper bound (at most 1)
        return best if best >= 1.0 else max(best, rest)

    def _bound(self, q: torch.Tensor, ratio: float) -> DualBound:
        linear, quadratic = float(q @ self.y), float(q @ q) * self.n
        scale = 1.0 / max(ratio, 1.0)
        if quadratic > 0:
            scale = min(scale, max(linear / quadratic, 0.0))
        return DualBound(scale * linear - 0.5 * scale**2 * quadratic, scale, ratio)

    def lam_max(self) -> float:
        """The smallest ``lam`` for which ``U = 0`` is optimal over these patterns:
        ``max_b ||Pi_{K_b}(A_b^T y)|| / n``. The ReLU form's projections are taken by
        :func:`max_cone_projection_norm` (in decreasing order of ``||A_b^T y||``, stopping
        once that bound falls below the largest so far): a few NNLS instead of one a block."""
        op = self.operator
        blocks = op.adjoint(self.y) / self.n
        if self.formulation == "gated":
            return float(blocks.norm(dim=1).max())
        return max_cone_projection_norm(blocks, op.X, op.cone_signs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "d": int(self.X.shape[1]),
            "n_patterns": int(self.patterns.shape[1]),
            "lam": self.lam,
            "formulation": self.formulation,
        }


def project_onto_cone(z: torch.Tensor, X: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of ``z`` on the cone ``{v : signs * (X v) >= 0}``.

    By Moreau's decomposition ``Pi_K(z) = z + G^T rho*`` with ``G = diag(signs) X`` and
    ``rho* = argmin_{rho >= 0} ||z + G^T rho||`` (non-negative least squares, SciPy).
    """
    return cone_projection(z, X, signs)[0]


def max_cone_projection_norm(
    Z: torch.Tensor,
    X: torch.Tensor,
    signs: torch.Tensor,
    *,
    floor: float = 0.0,
    stop_above: float = math.inf,
) -> float:
    """``max_b ||Pi_{K_b}(z_b)||`` over the rows ``z_b`` of ``Z`` (B, d), ``K_b = {v :
    signs[:, b] * (X v) >= 0}`` (``signs`` (n, B)), by as few projections as it can.

    ``||Pi_K(z)|| <= ||z||``, so the rows are projected (:func:`project_onto_cone`, one NNLS
    each) in decreasing order of ``||z_b||`` until that bound is at most ``max(floor, the
    largest norm so far)``: no row left can exceed it. It also stops as soon as a norm
    exceeds ``stop_above``. So the result is exact when it lies in ``[floor, stop_above]``;
    below ``floor`` it says that the maximum is at most ``floor``, above ``stop_above`` it
    is a lower bound of the maximum. SciPy's ``RuntimeError`` (an NNLS out of iterations)
    propagates. Cost: O(B d) for the bounds, then one NNLS (O(n d) per iteration) for each
    row visited."""
    bounds = Z.norm(dim=1)
    best = 0.0
    for b in torch.argsort(bounds, descending=True).tolist():
        if float(bounds[b]) <= max(best, floor):
            break
        best = max(best, float(project_onto_cone(Z[b], X, signs[:, b]).norm()))
        if best > stop_above:
            break
    return best


def projection_norm_bounds(
    Z: torch.Tensor, X: torch.Tensor, signs: torch.Tensor, iterations: int = 60
) -> torch.Tensor:
    """Upper bounds on ``||Pi_{K_p}(z_p)||`` for many cones at once: ``Z`` (P, d) the rows
    ``z_p``, ``signs`` (n, P) the cones ``K_p = {v : signs_p * (X v) >= 0}``.

    Any ``rho >= 0`` certifies ``||Pi_K(z)|| <= ||z + G^T rho||`` (``G = diag(signs) X``;
    :func:`cone_projection`), so a few accelerated projected-gradient steps on
    ``min_{rho >= 0} ||z + G^T rho||^2 / 2`` (step ``1 / ||X||_2^2``, FISTA with restarts
    and its extrapolated points kept feasible),
    batched over the cones as (n, P) x (P, d) products, give bounds that only decrease from
    ``||z||`` and approach the exact norms; each bound is the best iterate's."""
    step = 1.0 / max(float(torch.linalg.matrix_norm(X, ord=2)) ** 2, 1e-300)
    rho = torch.zeros_like(signs)
    momentum = rho.clone()
    t = 1.0
    best = Z.norm(dim=1)
    residual_old = None
    for _ in range(iterations):
        residual = Z + (signs * momentum).T @ X  # z + G^T rho, one row per cone
        best = torch.minimum(best, residual.norm(dim=1))
        gradient = signs * (X @ residual.T)  # G (z + G^T rho), (n, P)
        rho_next = (momentum - step * gradient).clamp(min=0)
        t_next = (1 + math.sqrt(1 + 4 * t * t)) / 2
        # kept >= 0: every residual below is then at a feasible rho, a valid bound
        momentum = (rho_next + ((t - 1) / t_next) * (rho_next - rho)).clamp(min=0)
        rho, t = rho_next, t_next
        if residual_old is not None and bool(residual.norm() > residual_old):
            momentum, t = rho.clone(), 1.0  # restart when the objective rose
        residual_old = residual.norm()
    final = Z + (signs * rho).T @ X
    return torch.minimum(best, final.norm(dim=1))


def cone_projection(
    z: torch.Tensor, X: torch.Tensor, signs: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Pi_K(z), rho*)`` of :func:`project_onto_cone`; ``rho*`` (n,) certifies the
    projection's norm: ``||Pi_K(z')|| <= ||z' + G^T rho*||`` for every ``z'``."""
    from scipy.optimize import nnls

    if bool(((X @ z) * signs >= 0).all()):
        return z.clone(), torch.zeros_like(signs)
    G = (signs[:, None] * X).double().cpu().numpy()
    rho, _ = nnls(G.T, -z.double().cpu().numpy(), maxiter=50 * G.shape[0])
    projection = z + torch.as_tensor(G.T @ rho, dtype=z.dtype, device=z.device)
    return projection, torch.as_tensor(rho, dtype=z.dtype, device=z.device)
