r"""A primal-dual interior-point solver of the ReLU form of the convex program (P3),
finished by Newton's method on the optimal face that it identifies.

**Cone program.** The ReLU form (:mod:`losslab.convex.program`) with blocks ``u_b``
(``[v_1..v_P, w_1..w_P]``), signs ``s_b``, ``A u = sum_b s_b D_b X u_b`` and
``G_b = (2 D_b - I) X`` is, with epigraph variables ``t_b >= ||u_b||``,

    ``min_{u, t}  1/(2n) ||A u - y||^2 + lam sum_b t_b``
    ``s.t.  G_b u_b >= 0`` (``n`` linear rows per block),  ``(t_b, u_b) in Q^{d+1}``,

``Q^{d+1} = {(t, u) : t >= ||u||}`` the second-order cone. In the standard form
``min 1/2 x'Px + q'x  s.t.  G x + s = 0, s in K`` (CVXOPT's ``coneqp``) the variables are
``x = (u, t)``, ``P = A'A / n`` (on ``u`` only), ``q = (-A'y / n, lam 1)``, the slacks
``s = (G_b u_b, (t_b, u_b))_b`` lie in ``K = (R_+^n x Q^{d+1})^B`` and the multipliers
``z = (rho_b, (z_b0, z_b1))_b`` in the same self-dual cone. The dual constraints read
``||A_b' q + G_b' rho_b|| <= lam`` with ``q = (y - A u) / n``: ``rho`` are the cone
multipliers of :meth:`ConvexReLUProgram.dual_bound`. Zero rows of ``X`` (constraints
``0 >= 0``) are left out of the linear cone.

**Interior-point phase.** Mehrotra's predictor-corrector from CVXOPT's infeasible start
(Vandenberghe, "The CVXOPT linear and quadratic cone program solvers", 2010): the affine
direction (target ``lambda o lambda -> 0``) gives ``sigma = (1 - alpha_aff)^3``; the
combined direction adds the second-order correction and ``sigma mu e``; one step length
for all variables, 99% of the way to the boundary. The Nesterov-Todd scaling ``W``
(``W z = W^{-1} s = lambda``) is ``diag(sqrt(s / z))`` on the linear rows. On each
second-order cone, with ``J = diag(1, -I)``, ``s_bar = s / sqrt(s'Js)``,
``z_bar = z / sqrt(z'Jz)``, ``gamma = sqrt((1 + s_bar'z_bar) / 2)``,
``w = (s_bar + J z_bar) / (2 gamma)`` and ``beta = (s'Js / z'Jz)^{1/4}``, it is
``W = beta Q_v`` (``Q_v = 2 v v' - J``, ``v = w^{1/2}``), so ``W^2 = beta^2 Q_w`` and
``W^{-2} = beta^{-2} Q_{Jw}``. All three share the eigenbasis ``e_+- = (1, +-w_1 /
||w_1||) / sqrt(2)`` and ``(0, P)`` (``P`` orthonormal, orthogonal to ``w_1``), with
eigenvalues ``beta (rho, 1 / rho, 1, .., 1)`` for ``W`` (``rho = w_0 + ||w_1||``): near
the boundary ``W^{-2}`` is huge along ``e_-`` and tiny along ``e_+`` (the cone's ray),
and it is only ever applied in this form (:class:`_Scaling`), never as a matrix whose
rounding would swamp the tiny eigenvalue.

**Newton system.** Eliminating ``dz = W^{-2} (G dx - b_z)`` leaves ``N dx = r`` with
``N = P + G' W^{-2} G = H + Atilde' Atilde / n``: ``H`` is block-diagonal,
``H_b = W_b^{-2} + [[0, 0], [0, X' diag(rho_b / s_b) X]]`` ((d+1) x (d+1) in
``(t_b, u_b)``; the cone signs square away), and ``Atilde_b = [0, A_b]`` carries the
rank-``n`` loss term. By the Woodbury identity

    ``N^{-1} = H^{-1} - H^{-1} Atilde' S^{-1} Atilde H^{-1}``,
    ``S = n I + sum_b Y_b Y_b'``,  ``Y_b = Atilde_b L_b^{-T}``  (``H_b = L_b L_b'``),

so an iteration costs ``O(n B d^2)`` for the blocks ``H_b`` (each formed in the cone's
eigenbasis from ``X Q_u``), ``O(B d^3)`` for their Cholesky factors, ``O(n^2 B d)`` for
``S`` (formed over chunks of blocks: never the whole (n, d, B) tensor) and ``O(n^3)`` for
one (n, n) Cholesky factor: never a dense (Bd x Bd) matrix. One subtlety makes it exact:
near the optimum a non-zero block's ``H_b`` is singular along its ray up to ``O(mu)``
(the norm is linear along rays, the tight rows are orthogonal to ``u_b``), where only the
loss curves ``N``, and the Woodbury formula would cancel huge terms. The Cholesky factor
takes the ray last, so that its last pivot is that curvature ``sigma_b``, computed without
cancellation; on the blocks where it is negligible against the loss's own curvature
``gamma_b`` along the ray, ``gamma_b`` is moved into the factor and taken back by a
rank-``|R|`` correction whose capacitance matrix is formed without cancellation
(:class:`_NewtonSystem`). Two steps of iterative refinement on ``N`` follow each solve.

**Face phase.** Once the complementarity gap ``s'z`` is below ``1e-4`` of the objective
(and again each time it falls 10-fold), the iterate names the optimal face: the non-zero
blocks ``F`` (``t_b`` large against the dual slack ``z_b0 - ||z_b1||``) and each one's
tight rows ``T_b`` (``s_i`` small against ``rho_i``). On the face, ``u_b = N_b c_b`` with
``N_b`` an orthonormal basis of the null space of the tight rows, the program is the
smooth ``min_c 1/(2n) ||sum_{b in F} A_b N_b c_b - y||^2 + lam sum ||c_b||``, and Newton's
method (Armijo line search) converges quadratically, to machine precision. Its Hessian
``M'M / n + blockdiag(k_b (I - c_hat_b c_hat_b'))`` (``M_b = A_b N_b``,
``k_b = lam / ||c_b||``) is solved exactly by the Woodbury identity on
``blockdiag(k_b I)`` with the rank-``(n + |F|)`` correction ``[M', C_hat] diag(I / n, -k)
[M; C_hat']``: its capacitance matrix is ``[[S, E], [E', 0]]`` with ``S = n I + sum_b M_b
M_b' / k_b`` (n x n) and ``E_b = A_b u_b / lam`` (the zero block is exact), solved by the
Cholesky factors of ``S`` and of ``E' S^{-1} E`` (|F| x |F|): ``O(n^2 |F| d + n^3 +
|F|^3)`` a step.

**Certificate.** Each candidate, the interior-point iterate or the face solution, is made
exactly feasible in the arithmetic of :meth:`ConvexReLUProgram.constraint_violation`: an
iterate's block outside its cone is projected on it
(:func:`~losslab.convex.program.project_onto_cone`); a block that rounding leaves a hair
outside (``-1e-17``: a projection, or a face solution, lies on the cone's boundary) moves
inside along the direction ``g`` with ``(2D - I) x_i'g = 1`` on its tight rows, by a few
times the violation (:func:`_nudged_blocks`). Its relative duality gap is bounded with
:meth:`ConvexReLUProgram.dual_bound` and cone multipliers (the iterate's ``rho``; for a
face solution's non-zero blocks, the least-squares ``rho`` of their stationarity on the
tight rows); the solver stops at the first candidate whose gap is at most ``tol``. The
returned ``dual_objective`` is the better of that bound and the exact one of
``program.dual_bound(blocks)`` (non-negative least-squares cone projections): both are
rigorous lower bounds on the optimum.

The data are rescaled internally (``X / x_scale``, ``y / y_scale``, ``lam / (x_scale
y_scale)``) so that the rows of ``X`` and the entries of ``y`` have unit root-mean-square;
the blocks scale back by ``y_scale / x_scale``.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, replace

import torch

from losslab.convex.program import (
    ConvexReLUProgram,
    max_cone_projection_norm,
    project_onto_cone,
)
from losslab.errors import ConvexProblemError, reraise_interrupt

#: Fraction of the way to the boundary of the cone that a step goes.
STEP_FRACTION = 0.99
#: Largest number of entries of one chunk of the (n, B, d + 1) factors of ``S``.
CHUNK_ENTRIES = 2**20
#: Static regularisation of the block factorisations, relative to each block's diagonal.
STATIC_REGULARISATION = 1e-13
#: Iterative refinement steps per Newton solve.
REFINEMENT_STEPS = 2
#: A block whose curvature along its ray is below this fraction of the loss curvature there
#: has the loss curvature moved into its factorisation (see :class:`_NewtonSystem`).
RAY_THRESHOLD = 1e-6
#: The face phase starts once the complementarity gap ``s'z`` is below this fraction of
#: the objective, and is tried again each time that gap has fallen 10-fold.
FACE_GAP = 1e-4
#: Newton steps of one face phase, at most.
FACE_STEPS = 30


@dataclass(frozen=True)
class InteriorPointResult:
    """The solution of the ReLU form by :func:`solve_relu_interior_point`.

    ``blocks`` (B, d) is ``[v_1..v_P, w_1..w_P]`` (as ``program.zeros()``), exactly in its
    cones (``program.constraint_violation(blocks) == 0``). ``dual_objective`` is a rigorous
    lower bound on the optimum (a dual-feasible point's value), ``relative_gap`` is
    ``(objective - dual_objective) / |objective|``; ``converged`` says it is at most ``tol``.
    ``iterations`` counts interior-point iterations.
    """

    blocks: torch.Tensor
    objective: float
    dual_objective: float
    relative_gap: float
    iterations: int
    converged: bool
    reason: str


def solve_relu_interior_point(
    program: ConvexReLUProgram, *, tol: float = 1e-8, max_iter: int = 100
) -> InteriorPointResult:
    """Solve the ReLU form of ``program`` to relative duality gap ``tol`` (module docstring).

    Works in float64 (a program in another precision is converted). At ``lam >= lam_max``
    returns the zero blocks at once. At ``max_iter`` interior-point iterations, or when the
    iteration stalls numerically, returns the best certified point with ``converged=False``
    and the reason. Raises ``ConvexProblemError`` only for bad arguments.
    """
    if program.formulation != "relu":
        raise ConvexProblemError(
            f"the interior-point solver is for the 'relu' form; got {program.formulation!r}"
        )
    if isinstance(tol, bool) or not isinstance(tol, float | int) or not 0 < tol < math.inf:
        raise ConvexProblemError(f"tol must be a finite number > 0; got {tol!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ConvexProblemError(f"max_iter must be an integer >= 1; got {max_iter!r}")
    if program.X.dtype != torch.float64 or program.y.dtype != torch.float64:
        program = replace(program, X=program.X.double(), y=program.y.double())
    if _zero_is_optimal(program):
        zeros = _Candidate.zero(program).with_exact_bound(program)
        return _result(zeros, 0, tol, "lam >= lam_max: the zero blocks are optimal")
    return _Solver(program, _ScaledProblem.build(program), tol).run(max_iter)


def _zero_is_optimal(program: ConvexReLUProgram) -> bool:
    """Whether ``max_b ||Pi_{K_b}(A_b' y)|| / n <= lam`` (``U = 0`` is optimal): projects
    the blocks in decreasing order of the bound ``||A_b' y|| / n`` until one exceeds
    ``lam`` (then no) or the bound falls below it (then yes). No when a projection fails
    (the interior-point solver then decides). The scheme of
    :meth:`ConvexReLUProgram.lam_max` (:func:`max_cone_projection_norm`), told that only
    the comparison with ``lam`` matters."""
    op = program.operator
    correlations = op.adjoint(program.y) / program.n
    try:
        largest = max_cone_projection_norm(
            correlations, op.X, op.cone_signs, floor=program.lam, stop_above=program.lam
        )
    except RuntimeError:  # SciPy's NNLS out of iterations
        return False
    return largest <= program.lam


@dataclass(frozen=True)
class _ScaledProblem:
    """The program in scaled units, with the maps of the cone program.

    ``X`` (n, d) is ``program.X / x_scale``, ``y`` is ``program.y / y_scale`` and ``lam`` is
    ``program.lam / (x_scale y_scale)``. The linear cone rows are the non-zero rows ``rows`` of
    ``X`` (a zero row gives the constraint ``0 >= 0``): ``X_rows`` (m, d) and ``signs`` (m, B).
    """

    X: torch.Tensor
    y: torch.Tensor
    weights: torch.Tensor
    rows: torch.Tensor
    X_rows: torch.Tensor
    signs: torch.Tensor
    lam: float
    x_scale: float
    y_scale: float

    @staticmethod
    def build(program: ConvexReLUProgram) -> _ScaledProblem:
        op = program.operator
        x_scale = float(program.X.square().sum(dim=1).mean().sqrt())
        y_scale = float(program.y.square().mean().sqrt())
        X = program.X / x_scale
        rows = torch.nonzero((X != 0).any(dim=1)).flatten()
        return _ScaledProblem(
            X=X,
            y=program.y / y_scale,
            weights=op.weights,
            rows=rows,
            X_rows=X[rows],
            signs=op.cone_signs[rows],
            lam=program.lam / (x_scale * y_scale),
            x_scale=x_scale,
            y_scale=y_scale,
        )

    @property
    def n(self) -> int:
        return int(self.X.shape[0])

    @property
    def d(self) -> int:
        return int(self.X.shape[1])

    @property
    def n_blocks(self) -> int:
        return int(self.weights.shape[1])

    @property
    def degree(self) -> int:
        """The degree of the cone ``K``: one per linear row, one per second-order cone."""
        return int(self.signs.numel()) + self.n_blocks

    def fit(self, U: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """``A u`` (n,) (over the blocks whose columns ``weights`` holds, default all)."""
        weights = self.weights if weights is None else weights
        return ((weights @ U) * self.X).sum(dim=1)

    def adjoint(self, r: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """``A' r`` (B, d) (over the blocks whose columns ``weights`` holds, default all)."""
        weights = self.weights if weights is None else weights
        return ((r[:, None] * self.X).T @ weights).T

    def constraint_map(self, U: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``G x``: ``-G_b u_b`` (m, B) and ``-(t_b, u_b)`` (B, d + 1)."""
        return -(self.X_rows @ U.T) * self.signs, -torch.cat([t[:, None], U], dim=1)

    def constraint_adjoint(
        self, z_lin: torch.Tensor, z_soc: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``G' z``: the ``u`` part (B, d) and the ``t`` part (B,)."""
        return -(z_lin * self.signs).T @ self.X_rows - z_soc[:, 1:], -z_soc[:, 0]

    def to_original(self, U: torch.Tensor) -> torch.Tensor:
        return U * (self.y_scale / self.x_scale)


@dataclass(frozen=True)
class _Iterate:
    """Primal ``(U, t)``, slacks ``s`` and multipliers ``z`` (linear rows (m, B), cones
    (B, d + 1) as ``(scalar, vector)``); also used for directions."""

    U: torch.Tensor
    t: torch.Tensor
    s_lin: torch.Tensor
    z_lin: torch.Tensor
    s_soc: torch.Tensor
    z_soc: torch.Tensor

    def moved(self, step: _Iterate, alpha: float) -> _Iterate:
        return _Iterate(
            self.U + alpha * step.U,
            self.t + alpha * step.t,
            self.s_lin + alpha * step.s_lin,
            self.z_lin + alpha * step.z_lin,
            self.s_soc + alpha * step.s_soc,
            self.z_soc + alpha * step.z_soc,
        )

    def complementarity(self) -> float:
        """``s'z``."""
        return float((self.s_lin * self.z_lin).sum() + (self.s_soc * self.z_soc).sum())

    def is_finite(self) -> bool:
        parts = (self.U, self.t, self.s_lin, self.z_lin, self.s_soc, self.z_soc)
        return all(bool(torch.isfinite(part).all()) for part in parts)


@dataclass(frozen=True)
class _Residuals:
    """``r_dual = P x + q + G' z`` (``u`` and ``t`` parts), ``r_prim = G x + s``, the
    primal objective (scaled units) and ``mu = s'z / degree``."""

    dual_U: torch.Tensor
    dual_t: torch.Tensor
    prim_lin: torch.Tensor
    prim_soc: torch.Tensor
    objective: float
    gap: float
    mu: float

    @staticmethod
    def at(problem: _ScaledProblem, it: _Iterate) -> _Residuals:
        residual = problem.fit(it.U) - problem.y
        gz_U, gz_t = problem.constraint_adjoint(it.z_lin, it.z_soc)
        gx_lin, gx_soc = problem.constraint_map(it.U, it.t)
        objective = float(residual.square().sum()) / (2 * problem.n)
        objective += problem.lam * float(it.t.sum())
        gap = it.complementarity()
        return _Residuals(
            dual_U=problem.adjoint(residual) / problem.n + gz_U,
            dual_t=problem.lam + gz_t,
            prim_lin=gx_lin + it.s_lin,
            prim_soc=gx_soc + it.s_soc,
            objective=objective,
            gap=gap,
            mu=gap / problem.degree,
        )


def _soc_det_root(v: torch.Tensor) -> torch.Tensor:
    """``sqrt(v_0^2 - ||v_1||^2)`` per row, as ``sqrt((v_0 - ||v_1||)(v_0 + ||v_1||))``."""
    norm = v[:, 1:].norm(dim=1)
    return ((v[:, 0] - norm).clamp(min=0) * (v[:, 0] + norm)).sqrt()


def _jordan_product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a o b = (a'b, a_0 b_1 + b_0 a_1)`` per second-order cone (rows)."""
    head = (a * b).sum(dim=1, keepdim=True)
    return torch.cat([head, a[:, :1] * b[:, 1:] + b[:, :1] * a[:, 1:]], dim=1)


def _jordan_divide(lam: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``u`` with ``lam o u = v``: ``u_0 = (lam_0 v_0 - lam_1'v_1) / (lam'J lam)``,
    ``u_1 = (v_1 - u_0 lam_1) / lam_0``."""
    det = _soc_det_root(lam).square()
    u0 = (lam[:, 0] * v[:, 0] - (lam[:, 1:] * v[:, 1:]).sum(dim=1)) / det
    u1 = (v[:, 1:] - u0[:, None] * lam[:, 1:]) / lam[:, :1]
    return torch.cat([u0[:, None], u1], dim=1)


def _batched_matvec(M: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return torch.bmm(M, v[:, :, None])[:, :, 0]


@dataclass(frozen=True)
class _Scaling:
    """Nesterov-Todd scaling at ``(s, z)`` (module docstring): ``ratio = z / s`` on the
    linear rows (their ``W^{-2}``); per cone ``W = Q diag(omega) Q'`` in the eigenbasis
    ``Q = [e_-, (0, P), e_+]`` shared by ``W``, ``W^2`` and ``W^{-2}``: with ``w_hat =
    w_1 / ||w_1||``, ``e_+- = (1, +-w_hat) / sqrt(2)``, ``P`` an orthonormal basis of
    ``w_hat``'s complement and ``rho = w_0 + ||w_1||``, ``omega = beta (1 / rho, 1, ..,
    1, rho)``. ``e_+`` is the cone's ray: near the boundary ``W^{-2}`` is tiny there and
    huge along ``e_-``, and only this form keeps both accurate (the explicit matrix
    ``W^{-2}`` would lose the tiny eigenvalue to the rounding of the huge one)."""

    ratio: torch.Tensor
    rotation: torch.Tensor
    omega: torch.Tensor
    lambda_soc: torch.Tensor

    @staticmethod
    def at(it: _Iterate) -> _Scaling:
        s, z = it.s_soc, it.z_soc
        s_root, z_root = _soc_det_root(s), _soc_det_root(z)
        s_bar, z_bar = s / s_root[:, None], z / z_root[:, None]
        gamma = ((1 + (s_bar * z_bar).sum(dim=1)) / 2).sqrt()
        w0 = (s_bar[:, 0] + z_bar[:, 0]) / (2 * gamma)
        w1 = (s_bar[:, 1:] - z_bar[:, 1:]) / (2 * gamma[:, None])
        w1_norm = w1.norm(dim=1)
        rho = w0 + w1_norm
        beta = (s_root / z_root).sqrt()
        omega = torch.ones_like(s)
        omega[:, 0], omega[:, -1] = 1 / rho, rho
        omega = omega * beta[:, None]
        rotation = _cone_rotation(w1 / w1_norm.clamp(min=1e-300)[:, None], w1_norm > 0)
        scaling = _Scaling(it.z_lin / it.s_lin, rotation, omega, s)
        return replace(scaling, lambda_soc=scaling.W(z))

    def _apply(self, factors: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        inner = torch.bmm(self.rotation.transpose(1, 2), v[:, :, None])[:, :, 0]
        return _batched_matvec(self.rotation, factors * inner)

    def W(self, v: torch.Tensor) -> torch.Tensor:
        return self._apply(self.omega, v)

    def W_inverse(self, v: torch.Tensor) -> torch.Tensor:
        return self._apply(1 / self.omega, v)

    def W_inverse_sq(self, v: torch.Tensor) -> torch.Tensor:
        return self._apply(self.omega.pow(-2), v)


def _cone_rotation(direction: torch.Tensor, defined: torch.Tensor) -> torch.Tensor:
    """``Q = [e_-, (0, P), e_+]`` (B, k, k) of :class:`_Scaling` for unit ``direction``
    (B, d) (``w_hat``; where not ``defined``, ``e_1``): ``P`` is the last ``d - 1`` columns
    of the Householder reflection that maps ``w_hat`` to ``-sign(w_hat_1) e_1``."""
    B, d = direction.shape
    first = torch.zeros_like(direction)
    first[:, 0] = 1
    direction = torch.where(defined[:, None], direction, first)
    sign = torch.where(direction[:, 0] >= 0, 1.0, -1.0).to(direction)
    h = direction + sign[:, None] * first
    householder = (
        torch.eye(d, dtype=direction.dtype, device=direction.device)
        - 2 * (h[:, :, None] * h[:, None, :]) / (h * h).sum(dim=1)[:, None, None]
    )
    Q = torch.zeros(B, d + 1, d + 1, dtype=direction.dtype, device=direction.device)
    Q[:, 0, 0] = Q[:, 0, d] = 1 / math.sqrt(2)
    Q[:, 1:, 0] = -direction / math.sqrt(2)
    Q[:, 1:, 1:d] = householder[:, :, 1:]
    Q[:, 1:, d] = direction / math.sqrt(2)
    return Q


class _NumericalFailure(RuntimeError):
    """A Newton system could not be factored (the iteration stops with its best point)."""


def _woodbury_matrix(
    problem: _ScaledProblem, weights: torch.Tensor, factors: torch.Tensor
) -> torch.Tensor:
    """``n I + sum_b Y_b Y_b'`` with ``Y_b = diag(weights_b) X factors_b'`` (``factors`` (B,
    k, d)), formed over chunks of blocks of at most :data:`CHUNK_ENTRIES` entries."""
    n, B, k = problem.n, factors.shape[0], factors.shape[1]
    S = torch.eye(n, dtype=factors.dtype, device=factors.device) * n
    chunk = max(1, CHUNK_ENTRIES // (n * k))
    for start in range(0, B, chunk):
        part = slice(start, start + chunk)
        Y = torch.einsum("ni,bji->nbj", problem.X, factors[part])
        Y = (Y * weights[:, part, None]).reshape(n, -1)
        S += Y @ Y.T
    return S


class _NewtonSystem:
    """``N dx = r`` for ``N = P + G' W^{-2} G = H + Atilde'Atilde / n`` (module docstring),
    worked in each block's eigenbasis ``Q_b = [e_-, (0, P), e_+]`` of the cone scaling.

    There ``H_b = diag(omega_b^{-2}) + (X Q_u)' diag(rho_b / s_b) (X Q_u)`` (``Q_u`` the
    ``u`` rows of ``Q_b``; formed from the products ``X Q_u`` in chunks of blocks, so that
    the tiny curvature along the ray ``e_+`` is not lost to the rounding of the huge
    ones). Its Cholesky factor has the ray last: the last pivot is the Schur complement
    ``sigma_b = 1 / (H_b^{-1})_{kk}``, the block's curvature along its ray, and it tends to
    zero near the optimum (the norm is linear along rays, the tight rows are orthogonal to
    ``u_b``): only the loss curves there, ``gamma_b = ||A_b (e_+)_u||^2 / n``, and the
    Woodbury formula on such an ``H`` would cancel huge terms. So on the blocks ``R`` with
    ``sigma_b < RAY_THRESHOLD gamma_b`` the factored matrix is ``H' = H + sum_R gamma_b
    e_k e_k'`` (only the last pivot changes, to ``sigma_b + gamma_b``) and ``N = H' +
    [Atilde', V] diag(I / n, -Gamma) [Atilde; V']`` (``V`` the ``e_k`` of the blocks of
    ``R``) is inverted exactly by Woodbury with the (n + |R|) capacitance matrix
    ``[[S, E], [E', D]]``: ``S = n I + Atilde H'^{-1} Atilde'``, ``E = Atilde H'^{-1} V``
    and ``D = diag(-1 / gamma_b + (H'^{-1})_{kk}) = diag(-sigma_b / (gamma_b (sigma_b +
    gamma_b)))`` (no cancellation), solved through the Cholesky factors of ``S`` and of
    ``E' S^{-1} E - D``. Two steps of iterative refinement on ``N`` follow.
    """

    def __init__(
        self,
        problem: _ScaledProblem,
        ratio: torch.Tensor,
        rotation: torch.Tensor,
        omega: torch.Tensor,
    ):
        B, k = problem.n_blocks, problem.d + 1
        self.problem, self.rotation = problem, rotation
        rotation_u = rotation[:, 1:, :]
        H = _rotated_gram(problem, ratio, rotation_u) + torch.diag_embed(omega.pow(-2))
        self.blocks = H
        # Cholesky of the leading k - 1 coordinates, then the ray's row by hand.
        leading = H[:, : k - 1, : k - 1]
        shift = STATIC_REGULARISATION * H.diagonal(dim1=1, dim2=2).max(dim=1).values
        identity = torch.eye(k - 1, dtype=H.dtype, device=H.device)
        for _ in range(6):
            factor_lead, info = torch.linalg.cholesky_ex(leading + shift[:, None, None] * identity)
            failed = info != 0
            if not bool(failed.any()):
                break
            shift = torch.where(failed, shift * 100, shift)
        else:
            raise _NumericalFailure("a block of the Newton matrix does not factor")
        coupling = torch.linalg.solve_triangular(factor_lead, H[:, : k - 1, k - 1 :], upper=False)
        ray_curvature = (H[:, -1, -1] - coupling[:, :, 0].square().sum(dim=1)).clamp(min=0)
        images = problem.weights * (problem.X @ rotation_u[:, :, -1].T)
        loss_curvature = images.square().sum(dim=0) / problem.n
        ray = torch.nonzero(ray_curvature < RAY_THRESHOLD * loss_curvature).flatten()
        last_pivot = torch.maximum(ray_curvature, shift).clamp(min=1e-300)
        last_pivot[ray] = ray_curvature[ray] + loss_curvature[ray]
        factor = torch.zeros_like(H)
        factor[:, : k - 1, : k - 1] = factor_lead
        factor[:, -1, : k - 1] = coupling[:, :, 0]
        factor[:, -1, -1] = last_pivot.sqrt()
        self.factor = factor
        inverse_factor = torch.linalg.solve_triangular(
            factor, torch.eye(k, dtype=H.dtype, device=H.device).expand(B, k, k), upper=False
        )
        # Y_b = diag(w_b) X Q_u L_b^{-T}: factors L_b^{-1} Q_u'.
        S = _woodbury_matrix(problem, problem.weights, inverse_factor @ rotation_u.transpose(1, 2))
        S_factor, info = torch.linalg.cholesky_ex(S)
        if int(info) != 0:
            raise _NumericalFailure("the (n, n) Woodbury matrix does not factor")
        self.S_factor = S_factor
        self.ray = ray
        if len(ray):
            # H'^{-1} e_k = L^{-T} L^{-1} e_k, and L^{-1} e_k = e_k / L_kk.
            columns = _batched_matvec(
                inverse_factor[ray].transpose(1, 2), inverse_factor[ray, :, -1]
            )
            E = problem.weights[:, ray] * (problem.X @ _batched_matvec(rotation_u[ray], columns).T)
            self.E = E
            self.S_inv_E = torch.cholesky_solve(E, S_factor)
            sigma, gamma = ray_curvature[ray], loss_curvature[ray]
            schur = E.T @ self.S_inv_E + torch.diag(sigma / (gamma * (sigma + gamma)))
            schur_factor, info = torch.linalg.cholesky_ex((schur + schur.T) / 2)
            if int(info) != 0:
                raise _NumericalFailure("the ray capacitance matrix does not factor")
            self.schur_factor = schur_factor

    def _to_rotated(self, x: torch.Tensor) -> torch.Tensor:
        return torch.bmm(self.rotation.transpose(1, 2), x[:, :, None])[:, :, 0]

    def _from_rotated(self, x: torch.Tensor) -> torch.Tensor:
        return _batched_matvec(self.rotation, x)

    def _block_solve(self, r: torch.Tensor) -> torch.Tensor:
        return torch.cholesky_solve(r[:, :, None], self.factor)[:, :, 0]

    def _fit(self, x: torch.Tensor) -> torch.Tensor:
        """``Atilde x`` for rotated ``x``."""
        return self.problem.fit(_batched_matvec(self.rotation[:, 1:, :], x))

    def _fit_adjoint(self, r: torch.Tensor) -> torch.Tensor:
        """``Atilde' r``, rotated."""
        image = self.problem.adjoint(r)
        return torch.bmm(self.rotation[:, 1:, :].transpose(1, 2), image[:, :, None])[:, :, 0]

    def _woodbury_solve(self, r: torch.Tensor) -> torch.Tensor:
        """``N^{-1} r`` for rotated ``r`` (B, d + 1) by the Woodbury formula (class docstring)."""
        x0 = self._block_solve(r)
        S_inv_r1 = torch.cholesky_solve(self._fit(x0)[:, None], self.S_factor)[:, 0]
        correction = torch.zeros_like(r)
        if len(self.ray):
            rhs = self.E.T @ S_inv_r1 - x0[self.ray, -1]
            beta = torch.cholesky_solve(rhs[:, None], self.schur_factor)[:, 0]
            a = S_inv_r1 - self.S_inv_E @ beta
            correction[self.ray, -1] = beta
        else:
            a = S_inv_r1
        return x0 - self._block_solve(correction + self._fit_adjoint(a))

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        """``N x`` for rotated ``x``, without regularisation."""
        return _batched_matvec(self.blocks, x) + self._fit_adjoint(self._fit(x)) / self.problem.n

    def solve(self, r_U: torch.Tensor, r_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``N^{-1} r`` for ``r = (r_U, r_t)`` (original coordinates), refined twice."""
        r = self._to_rotated(torch.cat([r_t[:, None], r_U], dim=1))
        x = self._woodbury_solve(r)
        for _ in range(REFINEMENT_STEPS):
            x = x + self._woodbury_solve(r - self._apply(x))
        x = self._from_rotated(x)
        return x[:, 1:], x[:, 0]


def _rotated_gram(
    problem: _ScaledProblem, ratio: torch.Tensor, rotation_u: torch.Tensor
) -> torch.Tensor:
    """``(X Q_u)' diag(ratio_b) (X Q_u)`` (B, k, k) over the linear rows, from the products
    ``X Q_u`` (m, chunk, k) in chunks of blocks of at most :data:`CHUNK_ENTRIES` entries."""
    m, B, k = problem.X_rows.shape[0], rotation_u.shape[0], rotation_u.shape[2]
    gram = torch.empty(B, k, k, dtype=ratio.dtype, device=ratio.device)
    chunk = max(1, CHUNK_ENTRIES // (m * k))
    for start in range(0, B, chunk):
        part = slice(start, start + chunk)
        images = torch.einsum("mi,bik->bmk", problem.X_rows, rotation_u[part])
        gram[part] = images.transpose(1, 2) @ (ratio[:, part].T[:, :, None] * images)
    return gram


def _direction(
    problem: _ScaledProblem,
    it: _Iterate,
    scaling: _Scaling,
    newton: _NewtonSystem,
    res: _Residuals,
    target_lin: torch.Tensor,
    target_soc: torch.Tensor,
) -> _Iterate:
    """The Newton direction of ``P dx + G'dz = -r_dual``, ``G dx + ds = -r_prim``,
    ``lambda o (W dz + W^{-1} ds) = target``: with ``b_z = -r_prim - W (lambda \\ target)``,
    ``dx`` solves ``(P + G' W^{-2} G) dx = -r_dual + G' W^{-2} b_z``, then
    ``dz = W^{-2} (G dx - b_z)`` and ``ds = -r_prim - G dx``."""
    b_lin = -res.prim_lin - target_lin / it.z_lin
    b_soc = -res.prim_soc - scaling.W(_jordan_divide(scaling.lambda_soc, target_soc))
    g_U, g_t = problem.constraint_adjoint(scaling.ratio * b_lin, scaling.W_inverse_sq(b_soc))
    dU, dt = newton.solve(-res.dual_U + g_U, -res.dual_t + g_t)
    gx_lin, gx_soc = problem.constraint_map(dU, dt)
    return _Iterate(
        U=dU,
        t=dt,
        s_lin=-res.prim_lin - gx_lin,
        z_lin=scaling.ratio * (gx_lin - b_lin),
        s_soc=-res.prim_soc - gx_soc,
        z_soc=scaling.W_inverse_sq(gx_soc - b_soc),
    )


def _max_step_linear(v: torch.Tensor, dv: torch.Tensor) -> float:
    """Largest ``alpha`` with ``v + alpha dv >= 0`` (inf when ``dv >= 0``)."""
    steps = torch.where(dv < 0, -v / dv.clamp(max=-1e-300), math.inf)
    return float(steps.min())


def _max_step_soc(v: torch.Tensor, dv: torch.Tensor) -> float:
    """Largest ``alpha`` with ``v + alpha dv`` in the second-order cone: per row the smallest
    positive root of ``a alpha^2 + b alpha + c`` (``a = dv'J dv``, ``b = 2 v'J dv``,
    ``c = v'J v > 0``), the cone's residual along the ray."""
    a = dv[:, 0].square() - dv[:, 1:].square().sum(dim=1)
    b = 2 * (v[:, 0] * dv[:, 0] - (v[:, 1:] * dv[:, 1:]).sum(dim=1))
    c = _soc_det_root(v).square()
    disc = b.square() - 4 * a * c
    root = disc.clamp(min=0).sqrt()
    q = -0.5 * (b + torch.where(b >= 0, root, -root))
    inf = torch.full_like(a, math.inf)
    roots = torch.stack([torch.where(a != 0, q / a, inf), torch.where(q != 0, c / q, inf)])
    smallest = torch.where(roots > 0, roots, inf).min(dim=0).values
    smallest = torch.where((disc < 0) & (a != 0), inf, smallest)
    return float(smallest.min())


def _max_step(it: _Iterate, step: _Iterate) -> float:
    return min(
        _max_step_linear(it.s_lin, step.s_lin),
        _max_step_linear(it.z_lin, step.z_lin),
        _max_step_soc(it.s_soc, step.s_soc),
        _max_step_soc(it.z_soc, step.z_soc),
    )


def _initial_point(problem: _ScaledProblem) -> _Iterate:
    """CVXOPT's start: ``x`` minimises ``1/2 x'Px + q'x + 1/2 ||G x||^2``, ``s = -G x`` and
    ``z = G x``, each shifted along the cone's identity ``e`` into the interior if needed."""
    B, k = problem.n_blocks, problem.d + 1
    ones = torch.ones_like(problem.signs)
    identity = torch.eye(k, dtype=ones.dtype, device=ones.device).expand(B, k, k)
    newton = _NewtonSystem(problem, ones, identity.clone(), torch.ones_like(identity[:, 0]))
    lam = torch.full((B,), problem.lam, dtype=ones.dtype, device=ones.device)
    U, t = newton.solve(problem.adjoint(problem.y) / problem.n, -lam)
    gx_lin, gx_soc = problem.constraint_map(U, t)

    def shifted(lin: torch.Tensor, soc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shortfall = max(float((-lin).max()), float((soc[:, 1:].norm(dim=1) - soc[:, 0]).max()))
        if shortfall >= -1e-8 * max(float(lin.norm() + soc.norm()), 1.0):
            lin = lin + (1 + shortfall)
            soc = soc.clone()
            soc[:, 0] += 1 + shortfall
        return lin, soc

    s_lin, s_soc = shifted(-gx_lin, -gx_soc)
    z_lin, z_soc = shifted(gx_lin, gx_soc)
    return _Iterate(U, t, s_lin, z_lin, s_soc, z_soc)


@dataclass(frozen=True)
class _Face:
    """The optimal face that an iterate names: the non-zero ``blocks`` (F,) and, per block,
    ``bases`` (F, d, d) whose non-zero columns are an orthonormal basis of the null space
    of its tight rows."""

    blocks: torch.Tensor
    bases: torch.Tensor

    def key(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """What identifies the face (blocks and their free dimensions)."""
        free = (self.bases != 0).any(dim=1).sum(dim=1)
        return tuple(self.blocks.tolist()), tuple(free.tolist())


def _identify_face(problem: _ScaledProblem, it: _Iterate) -> _Face:
    """Block ``b`` is non-zero when ``t_b / max t`` exceeds ``(z_b0 - ||z_b1||) / lam``; a
    row ``i`` of a non-zero block is tight when ``s_i / (||x_i|| t_b)`` is below
    ``rho_i ||x_i|| / lam``. The free directions are the eigenvectors of the tight rows'
    Gram matrix with eigenvalues below ``1e-10`` of its trace."""
    t = it.s_soc[:, 0].clamp(min=0)
    dual_slack = (it.z_soc[:, 0] - it.z_soc[:, 1:].norm(dim=1)).clamp(min=0)
    nonzero = t / t.max().clamp(min=1e-300) > dual_slack / problem.lam
    blocks = torch.nonzero(nonzero).flatten()
    row_norms = problem.X_rows.norm(dim=1)[:, None]
    primal = it.s_lin[:, blocks] / (row_norms * t[blocks])
    dual = it.z_lin[:, blocks] * row_norms / problem.lam
    tight = (primal < dual).to(problem.X.dtype)
    gram = _tight_grams(problem.X_rows, tight)
    eigenvalues, vectors = torch.linalg.eigh(gram)
    trace = gram.diagonal(dim1=1, dim2=2).sum(dim=1, keepdim=True)
    free = eigenvalues <= 1e-10 * trace
    bases = vectors * free[:, None, :].to(vectors.dtype)
    keep = free.any(dim=1)
    return _Face(blocks[keep], bases[keep])


def _tight_grams(X_rows: torch.Tensor, tight: torch.Tensor) -> torch.Tensor:
    """``X' diag(tight_b) X = sum_i tight_ib x_i x_i'`` (F, d, d) for each 0/1 column
    ``tight_b`` of ``tight`` (m, F), ``X = X_rows`` (m, d): ``Y_b' Y_b`` with ``Y_b =
    tight_b * X`` (the 0/1 weights square away), over chunks of blocks whose (chunk, m, d)
    ``Y`` has at most ``CHUNK_ENTRIES`` entries. O(F m d^2) time, O(CHUNK_ENTRIES + F d^2)
    memory: no (m, d^2) table of the ``x_i x_i'``."""
    m, d = X_rows.shape
    grams = X_rows.new_empty(tight.shape[1], d, d)
    width = max(1, CHUNK_ENTRIES // max(m * d, 1))
    for first in range(0, tight.shape[1], width):
        Y = tight[:, first : first + width].T[:, :, None] * X_rows  # (chunk, m, d)
        grams[first : first + width] = Y.transpose(1, 2) @ Y
    return grams


def _face_newton(problem: _ScaledProblem, face: _Face, U: torch.Tensor) -> torch.Tensor | None:
    """Newton's method (Armijo line search) on ``F(c) = 1/(2n) ||sum_b A_b N_b c_b - y||^2 +
    lam sum_b ||c_b||`` over the face, from ``c_b = N_b' u_b``; the step solves the Hessian by
    the saddle-point Woodbury form of the module docstring. Returns all blocks (scaled
    units, zero off the face), or None when a block reaches zero (a wrong face)."""
    n, lam, N = problem.n, problem.lam, face.bases
    weights = problem.weights[:, face.blocks]
    c = torch.einsum("bij,bi->bj", N, U[face.blocks])

    def blocks_of(c: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bij,bj->bi", N, c)

    def value(c: torch.Tensor) -> float:
        residual = problem.fit(blocks_of(c), weights) - problem.y
        return float(residual.square().sum()) / (2 * n) + lam * float(c.norm(dim=1).sum())

    current, previous_size = value(c), math.inf
    for _ in range(FACE_STEPS):
        norms = c.norm(dim=1)
        if not bool((norms > 0).all()):
            return None
        u = blocks_of(c)
        residual = problem.fit(u, weights) - problem.y
        gradient = torch.einsum("bij,bi->bj", N, problem.adjoint(residual, weights)) / n
        gradient = gradient + lam * c / norms[:, None]
        size, scale = float(gradient.norm()), lam * math.sqrt(len(norms))
        # Converged, or at rounding level (Newton no longer halves the gradient).
        if size <= 1e-12 * scale or (size <= 1e-6 * scale and size > 0.5 * previous_size):
            break
        previous_size = size
        step = _face_newton_step(problem, weights, N, c, u, norms, gradient)
        if step is None:
            break
        slope = float((gradient * step).sum())
        alpha, accepted = 1.0, False
        while alpha >= 1e-10:
            trial = c - alpha * step
            trial_value = value(trial)
            if trial_value <= current - 1e-4 * alpha * slope or (
                alpha == 1.0 and trial_value <= current + 1e-15 * abs(current)
            ):
                accepted = True
                break
            alpha /= 2
        if not accepted:
            break
        small_step = float((alpha * step).norm()) <= 1e-15 * float(c.norm())
        c, current = trial, trial_value
        if small_step:
            break
    if not bool((c.norm(dim=1) > 0).all()):
        return None
    full = torch.zeros_like(U)
    full[face.blocks] = blocks_of(c)
    return full


def _face_newton_step(
    problem: _ScaledProblem,
    weights: torch.Tensor,
    N: torch.Tensor,
    c: torch.Tensor,
    u: torch.Tensor,
    norms: torch.Tensor,
    gradient: torch.Tensor,
) -> torch.Tensor | None:
    """``x = Hess^{-1} g`` for the face Hessian ``blockdiag(k_b I) + [M', C_hat] diag(I / n,
    -k) [M; C_hat']`` (``k_b = lam / ||c_b||``, the norm's curvature off the ray) by
    Woodbury (module docstring): ``[[S, E], [E', 0]] [a; beta] = [sum_b M_b g_b / k_b;
    c_hat_b'g_b / k_b]``, then ``x_b = (g_b - M_b'a - c_hat_b beta_b) / k_b``; None when
    a factorisation fails."""
    lam = problem.lam
    stiffness = lam / norms
    S = _woodbury_matrix(problem, weights / stiffness.sqrt(), N.transpose(1, 2))
    S_factor, info = torch.linalg.cholesky_ex(S)
    if int(info) != 0:
        return None
    E = weights * (problem.X @ u.T) / lam
    unit = c / norms[:, None]
    r1 = problem.fit(torch.einsum("bij,bj->bi", N, gradient) / stiffness[:, None], weights)
    r2 = (unit * gradient).sum(dim=1) / stiffness
    S_inv_E = torch.cholesky_solve(E, S_factor)
    S_inv_r1 = torch.cholesky_solve(r1[:, None], S_factor)[:, 0]
    T = E.T @ S_inv_E
    T = (T + T.T) / 2
    shift = 1e-14 * float(T.diagonal().max().clamp(min=1e-300))
    identity = torch.eye(T.shape[0], dtype=T.dtype, device=T.device)
    for _ in range(6):
        T_factor, info = torch.linalg.cholesky_ex(T + shift * identity)
        if int(info) == 0:
            break
        shift *= 100
    else:
        return None
    beta = torch.cholesky_solve((E.T @ S_inv_r1 - r2)[:, None], T_factor)[:, 0]
    a = S_inv_r1 - S_inv_E @ beta
    Ma = torch.einsum("bij,bi->bj", N, problem.adjoint(a, weights))
    return (gradient - Ma - unit * beta[:, None]) / stiffness[:, None]


@dataclass(frozen=True)
class _Candidate:
    """An exactly feasible point (original units), its objective and a rigorous lower
    bound ``dual_objective`` on the optimum."""

    blocks: torch.Tensor
    objective: float
    dual_objective: float
    exact_bound: bool = False

    @property
    def relative_gap(self) -> float:
        gap = max(self.objective - self.dual_objective, 0.0)
        return 0.0 if gap == 0 else gap / max(abs(self.objective), 1e-300)

    @staticmethod
    def zero(program: ConvexReLUProgram) -> _Candidate:
        """The zero blocks (always feasible), with the bound of zero multipliers."""
        zeros = program.zeros()
        bound = program.dual_bound(zeros, torch.zeros_like(program.operator.cone_signs))
        return _Candidate(zeros, program.objective(zeros), bound.objective)

    def with_exact_bound(self, program: ConvexReLUProgram) -> _Candidate:
        """The better of this bound and the exact one."""
        if self.exact_bound:
            return self
        bound = max(self.dual_objective, program.dual_bound(self.blocks).objective)
        return replace(self, dual_objective=bound, exact_bound=True)


def _violating_blocks(program: ConvexReLUProgram, U: torch.Tensor) -> torch.Tensor:
    """Blocks with a negative entry in ``(2 D_b - I) X u_b``, computed exactly as
    :meth:`ConvexReLUProgram.constraint_violation` does."""
    values = program.operator.preactivations(U) * program.operator.cone_signs
    return torch.nonzero((values < 0).any(dim=0)).flatten()


def _projected_blocks(program: ConvexReLUProgram, U: torch.Tensor) -> torch.Tensor:
    """``U`` with each block outside its cone projected on it (then nudged inside,
    :func:`_nudged_blocks`, since the projection lies on the boundary)."""
    op = program.operator
    U = U.clone()
    for b in _violating_blocks(program, U).tolist():
        U[b] = project_onto_cone(U[b], op.X, op.cone_signs[:, b])
    return _nudged_blocks(program, U)


def _nudged_blocks(
    program: ConvexReLUProgram, U: torch.Tensor, fallback: torch.Tensor | None = None
) -> torch.Tensor:
    """``U`` with each block that rounding leaves a hair outside its cone moved inside:
    ``u + tau g`` with ``g`` the least-norm solution of ``c_i x_i'g = 1`` on the rows
    where ``|x_i'u|`` is at rounding level (the tight rows, when they are independent) and
    ``tau`` a few times the violation plus the rounding of ``x_i'u`` (growing 4-fold while
    the block is still outside). A block that this does not mend takes its row of
    ``fallback`` (feasible), or becomes zero."""
    op = program.operator
    U = U.clone()
    directions: dict[int, torch.Tensor | None] = {}
    rounding = 1e-15 * float(op.X.norm(dim=1).max())
    for attempt in range(8):
        violating = _violating_blocks(program, U).tolist()
        if not violating:
            return U
        values = op.preactivations(U) * op.cone_signs
        for b in violating:
            if b not in directions:
                directions[b] = _inward_direction(op.X, op.cone_signs[:, b], U[b])
            direction = directions[b]
            if direction is not None:
                violation = float((-values[:, b]).clamp(min=0).max())
                tau = (2 * violation + rounding * float(U[b].norm())) * 4**attempt
                U[b] = U[b] + tau * direction
    for b in _violating_blocks(program, U).tolist():
        U[b] = 0 if fallback is None else fallback[b]
    return U


def _inward_direction(X: torch.Tensor, signs: torch.Tensor, u: torch.Tensor) -> torch.Tensor | None:
    """The least-norm ``g`` with ``signs_i x_i'g = 1`` on the rows where ``|x_i'u|`` is at
    rounding level, if it solves them (margin at least 1/2), else None."""
    values = (X @ u) * signs
    near = values.abs() <= 1e-9 * X.norm(dim=1) * u.norm()
    if not bool(near.any()):
        return None
    G = signs[near, None] * X[near]
    direction = torch.linalg.lstsq(G, torch.ones_like(values[near])[:, None]).solution[:, 0]
    if not float((G @ direction).min()) >= 0.5:
        return None
    return direction


def _face_multipliers(
    program: ConvexReLUProgram, U: torch.Tensor, multipliers: torch.Tensor
) -> torch.Tensor:
    """``multipliers`` (n, B) with the column of every non-zero block ``b`` replaced by the
    least-squares ``rho`` of its stationarity ``A_b'q + G_T' rho_T = lam u_b / ||u_b||`` on
    its tight rows ``T`` (``|x_i'u_b|`` at rounding level; ``q = (y - A U) / n``), clipped
    at zero: then ``||A_b'q + G_b' rho_b|| = lam`` up to rounding at a face optimum."""
    op = program.operator
    multipliers = multipliers.clone()
    correlations = op.adjoint((program.y - op.fit(U)) / program.n)
    norms = U.norm(dim=1)
    for b in torch.nonzero(norms > 0).flatten().tolist():
        signs = op.cone_signs[:, b]
        values = (op.X @ U[b]) * signs
        tight = values.abs() <= 1e-9 * op.X.norm(dim=1) * norms[b]
        multipliers[:, b] = 0
        if bool(tight.any()):
            G = signs[tight, None] * op.X[tight]
            target = program.lam * U[b] / norms[b] - correlations[b]
            rho = torch.linalg.lstsq(G.T, target[:, None]).solution[:, 0]
            multipliers[tight, b] = rho.clamp(min=0)
    return multipliers


class _Solver:
    """The interior-point loop with its face phases; keeps the best candidate."""

    def __init__(self, program: ConvexReLUProgram, problem: _ScaledProblem, tol: float):
        self.program, self.problem, self.tol = program, problem, tol
        self.best: _Candidate | None = None
        self.faces_tried: set[tuple[tuple[int, ...], tuple[int, ...]]] = set()
        self.next_face_gap = FACE_GAP

    def consider(self, candidate: _Candidate) -> bool:
        """Keep ``candidate`` if it has the smaller gap; True once the best one certifies."""
        if self.best is None or candidate.relative_gap < self.best.relative_gap:
            self.best = candidate
        return self.best.relative_gap <= self.tol

    def iterate_multipliers(self, it: _Iterate) -> torch.Tensor:
        """The iterate's ``rho`` (n, B) in original units (zero on the zero rows of X)."""
        multipliers = torch.zeros_like(self.program.operator.cone_signs)
        multipliers[self.problem.rows] = it.z_lin.clamp(min=0) * self.problem.y_scale
        return multipliers

    def iterate_candidate(self, it: _Iterate) -> _Candidate:
        """The iterate's blocks made feasible, bounded with its multipliers ``rho``."""
        program = self.program
        blocks = _projected_blocks(program, self.problem.to_original(it.U))
        bound = program.dual_bound(blocks, self.iterate_multipliers(it)).objective
        return _Candidate(blocks, program.objective(blocks), bound)

    def face_candidate(self, it: _Iterate, reference: torch.Tensor) -> _Candidate | None:
        """The solution on the face that ``it`` names (once per face), nudged into its
        cones (:func:`_nudged_blocks`, ``reference`` the fallback). Its bound takes the
        multipliers of :func:`_face_multipliers` on its non-zero blocks and the iterate's
        elsewhere; the exact bound too when that one is within 100 ``tol``."""
        face = _identify_face(self.problem, it)
        if face.key() in self.faces_tried:
            return None
        self.faces_tried.add(face.key())
        solution = _face_newton(self.problem, face, it.U)
        if solution is None:
            return None
        blocks = self.problem.to_original(solution)
        if not bool(torch.isfinite(blocks).all()):
            return None
        program = self.program
        blocks = _nudged_blocks(program, blocks, reference)
        multipliers = _face_multipliers(program, blocks, self.iterate_multipliers(it))
        bound = program.dual_bound(blocks, multipliers).objective
        candidate = _Candidate(blocks, program.objective(blocks), bound)
        if self.tol < candidate.relative_gap <= 100 * self.tol:
            candidate = candidate.with_exact_bound(program)
        return candidate

    def try_face(self, it: _Iterate, res: _Residuals) -> bool:
        """A face phase when the complementarity gap has fallen enough; True if certified."""
        if res.gap > self.next_face_gap * abs(res.objective):
            return False
        self.next_face_gap = res.gap / abs(res.objective) / 10
        return self.try_face_now(it)

    def try_face_now(self, it: _Iterate) -> bool:
        """The iterate's candidate, then (if that does not certify) the face's. A
        RuntimeError on the way (a factorisation on a wrong face, or SciPy's NNLS out of
        iterations) only loses that candidate."""
        try:
            reference = self.iterate_candidate(it)
            if self.consider(reference):
                return True
            candidate = self.face_candidate(it, reference.blocks)
        except RuntimeError as error:
            reraise_interrupt(error)
            return False
        return candidate is not None and self.consider(candidate)

    def run(self, max_iter: int) -> InteriorPointResult:
        problem = self.problem
        it = _initial_point(problem)
        reason = f"reached max_iter={max_iter} before the duality gap fell below tol"
        iterations, certified = 0, False
        while True:
            res = _Residuals.at(problem, it)
            if self.try_face(it, res):
                certified = True
                break
            if iterations >= max_iter:
                break
            try:
                it_next = self.step(it, res)
            except RuntimeError as failure:  # _NumericalFailure, or torch's LinAlgError
                reraise_interrupt(failure)
                reason = f"numerically stuck at iteration {iterations}: {failure}"
                break
            iterations += 1
            if it_next is None:
                reason = f"numerically stuck at iteration {iterations}: no step length"
                break
            it = it_next
        if not certified:
            self.try_face_now(it)
        best = self.best if self.best is not None else _Candidate.zero(self.program)
        # SciPy's NNLS out of iterations leaves the multiplier bound (also rigorous).
        with contextlib.suppress(RuntimeError):
            best = best.with_exact_bound(self.program)
        return _result(best, iterations, self.tol, reason)

    def step(self, it: _Iterate, res: _Residuals) -> _Iterate | None:
        """One predictor-corrector step; None when it makes no progress."""
        problem = self.problem
        scaling = _Scaling.at(it)
        newton = _NewtonSystem(problem, scaling.ratio, scaling.rotation, scaling.omega)
        lambda_sq_lin = it.s_lin * it.z_lin
        lambda_sq_soc = _jordan_product(scaling.lambda_soc, scaling.lambda_soc)
        affine = _direction(problem, it, scaling, newton, res, -lambda_sq_lin, -lambda_sq_soc)
        alpha_affine = min(1.0, _max_step(it, affine))
        centring = (1 - alpha_affine) ** 3 * res.mu
        corrector_soc = _jordan_product(scaling.W_inverse(affine.s_soc), scaling.W(affine.z_soc))
        target_soc = -lambda_sq_soc - corrector_soc
        target_soc[:, 0] += centring
        target_lin = -lambda_sq_lin - affine.s_lin * affine.z_lin + centring
        step = _direction(problem, it, scaling, newton, res, target_lin, target_soc)
        alpha = min(1.0, STEP_FRACTION * _max_step(it, step))
        moved = it.moved(step, alpha)
        if not moved.is_finite() or alpha < 1e-8:
            return None
        return moved


def _result(candidate: _Candidate, iterations: int, tol: float, reason: str) -> InteriorPointResult:
    relative = candidate.relative_gap
    converged = relative <= tol
    if converged and not reason.startswith("lam >="):
        reason = f"relative duality gap {relative:.2e} <= tol {tol:.0e}"
    return InteriorPointResult(
        blocks=candidate.blocks,
        objective=candidate.objective,
        dual_objective=candidate.dual_objective,
        relative_gap=relative,
        iterations=iterations,
        converged=converged,
        reason=reason,
    )
