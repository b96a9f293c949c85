r"""Batched, globalised Newton / Levenberg-Marquardt for many independent systems ``F(x) = 0``.

Given a batched map ``F: (B, N) -> (B, N)`` whose row ``b`` depends on row ``b`` of the
input only (``B`` independent systems, or one system from ``B`` starts), every start is
driven to ``||F(x)||_2 <= tol`` by Levenberg-Marquardt (LM) steps, all starts at once.

**Step.** At an iterate ``x`` with ``J = dF/dx(x)`` (``N x N``) the LM step ``dx`` solves

.. math::  (J^T J + \mu I)\, dx = -J^T F(x),

the minimiser of the linear model ``||F + J dx||^2 + mu ||dx||^2``. ``mu -> 0`` gives the
Gauss-Newton step, which for a square invertible ``J`` is the Newton step ``-J^{-1} F``;
large ``mu`` a short gradient step on ``||F||^2``. With ``damping="marquardt"`` the identity
is replaced by ``D = diag(J^T J)`` (floored at ``1e-12 max diag``; Marquardt 1963, the
scaling of MINPACK's ``lmder``): the step no longer depends on the units of each
coordinate, which matters when the coordinates differ by orders of magnitude (saturated
pre-activations of ``1e4`` next to ones of order one). The damping is
``mu = lambda ||F(x)||_2`` (Fan & Yuan 2005): it vanishes at a root, so the method
converges quadratically near a regular root. ``lambda`` starts at
``lambda0 max diag(J^T J) / ||F||`` (Nielsen's ``mu_0 = tau max diag(J^T J)``, free of the
scales of ``x`` and ``F``; ``lambda0 / ||F||`` with Marquardt's ``D``) and is adapted per
start by the gain ratio

.. math::  \rho = \frac{||F(x)||^2 - ||F(x + s)||^2}{||F(x)||^2 - ||F(x) + J s||^2},

the actual over the predicted decrease of the step ``s`` really taken (``s = dx``, or the
projected step when a box is given). A step is accepted when ``rho > 1e-4``; then
``lambda *= max(1/3, 1 - (2 rho - 1)^3)`` (Nielsen 1999); a rejected step (also a step to
a NaN / inf value, or a singular ``J^T J + mu I``) is retried with ``lambda *= nu``,
``nu *= 2`` without a new Jacobian, up to ``max_retries`` times per iteration. The
retries are evaluated up to :data:`RETRY_BATCH` at a time, in one batch (the same damping
sequence; each start keeps the first accepted trial, or stalls where the sequential order
would have stalled): the result is that of sequential retries up to rounding (batched
products of other sizes), in a quarter of the Python round trips, which dominate for
small ``N``. Trials are stacked only up to about :data:`TRIAL_ROWS` rows per batch: with
many pending starts the arithmetic dominates, and a trial that is never needed (most
starts accept the first) is wasted work.

**Newton first.** The first trial of an iteration is the undamped step ``mu = 0``, solved
by an LU factorisation of ``J`` itself (cheaper than ``J^T J`` plus Cholesky, and without
squaring the condition number), for every start whose last LM step was very successful
(``rho > 0.75``) or that has not yet needed damping; it is accepted by the same gain-ratio
test, and a start whose Newton step is rejected takes LM steps until its model is good
again.

**Box.** With ``box = (low, high)`` every trial point is mapped into the box, by clamping
(``"clamp"``) or by mirror reflection at the faces (``"reflect"``).

**Termination per start** (``NewtonBatchResult.status`` / ``reason``):
``converged`` (``||F(x)||_2 <= tol``, absolute, in the units of ``F``), ``max_iter``
(``max_iter`` Jacobians spent), ``nan`` (``F`` or ``J`` not finite at an accepted point,
e.g. at the start), ``diverged`` (``||x||_inf > bound``), ``stalled`` (a step below
rounding size, ``mu`` overflowing, or ``||F||`` falling by less than the factor
``stall_ratio`` in ``stall_window`` iterations: a local minimum of ``||F||`` that is not a
root, a face of the box, or a singular point), ``captured`` (stopped by the caller's
``stop`` rule). A start that fails never stops the others.

**Cost per start and iteration**: one Jacobian (``N`` forward-mode passes of ``F``, or
the user's ``jacobian``), one LU (``N^3 / 3`` multiply-adds) for the Newton trial; for LM
trials ``J^T J`` (``N^3``), a Cholesky factorisation (``N^3 / 6``) and two triangular
solves per trial; one evaluation of ``F`` per trial. Memory: ``O(chunk_size N^2)``. Only
the starts still running are computed on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from losslab.errors import FixedPointError

Map = Callable[[torch.Tensor], torch.Tensor]
BoxMode = Literal["clamp", "reflect"]
Damping = Literal["identity", "marquardt"]

RUNNING, CONVERGED, MAX_ITER, NAN, DIVERGED, STALLED, CAPTURED = -1, 0, 1, 2, 3, 4, 5
#: Most damped trials evaluated together, in one batch, per round of retries.
RETRY_BATCH = 4
#: Trials are stacked while the batch has at most about this many rows (pending starts
#: times trials): below, Python round trips dominate; above, the arithmetic does.
TRIAL_ROWS = 512
#: Marquardt's scaling ``D = diag(J^T J)`` is floored at this fraction of its largest entry.
SCALING_FLOOR = 1e-12
#: ``REASONS[code]`` for the codes in ``NewtonBatchResult.status``.
REASONS = ("converged", "max_iter", "nan", "diverged", "stalled", "captured")


@dataclass(frozen=True)
class NewtonBatchResult:
    """Outcome of :func:`newton_batch`, per start.

    Attributes:
        x: (B, N) the last accepted iterate (the best point found: ``||F||`` never rises).
        residual: (B,) ``||F(x)||_2`` there (``inf`` where ``F`` was not finite).
        converged: (B,) ``residual <= tol``.
        iterations: (B,) Jacobians evaluated for the start.
        status: (B,) codes into :data:`REASONS` (0 converged, 1 max_iter, 2 nan,
            3 diverged, 4 stalled, 5 captured).
        tol: the tolerance used.
        seconds: wall time of the whole batch.
        evaluations: evaluations of ``F``, rows of all starts together.
    """

    x: torch.Tensor
    residual: torch.Tensor
    converged: torch.Tensor
    iterations: torch.Tensor
    status: torch.Tensor
    tol: float
    seconds: float
    evaluations: int = field(default=0)

    @property
    def reason(self) -> list[str]:
        """Per start, the name of its termination status."""
        return [REASONS[int(code)] for code in self.status.tolist()]

    def counts(self) -> dict[str, int]:
        """How many starts ended with each reason."""
        return {name: int((self.status == code).sum()) for code, name in enumerate(REASONS)}

    def to_dict(self) -> dict[str, Any]:
        return {
            "x": self.x.tolist(),
            "residual": self.residual.tolist(),
            "converged": self.converged.tolist(),
            "iterations": self.iterations.tolist(),
            "reason": self.reason,
            "tol": self.tol,
            "seconds": self.seconds,
            "evaluations": self.evaluations,
            "counts": self.counts(),
        }


def batched_jacobian(F: Map, x: torch.Tensor) -> torch.Tensor:
    r"""``J[b] = dF(x)[b] / dx[b]``, shape (B, N, N), for a batched row-wise map ``F``.

    Forward mode: the ``N`` Jacobian-vector products ``J e_j`` are taken for all rows at
    once by ``torch.func.vmap`` over the tangents ``e_j`` (broadcast to every row) of
    ``torch.func.jvp`` of the batched map; cost ``N`` forward passes of the batch. Maps
    that ``torch.func`` cannot transform fall back to ``N`` reverse-mode passes with
    ``torch.autograd`` (row ``i`` of every Jacobian from the gradient of ``sum_b F_i``,
    exact because rows are independent).
    """
    B, N = x.shape
    x = x.detach()
    basis = torch.eye(N, dtype=x.dtype, device=x.device).unsqueeze(1).expand(N, B, N)

    def column(tangent: torch.Tensor) -> torch.Tensor:
        return torch.func.jvp(F, (x,), (tangent,))[1]

    try:
        columns = torch.func.vmap(column)(basis)  # (N_j, B, N_i)
        return columns.permute(1, 2, 0).detach()
    except (RuntimeError, NotImplementedError):
        pass
    with torch.enable_grad():
        xg = x.clone().requires_grad_(True)
        y = F(xg)
        rows = [torch.autograd.grad(y[:, i].sum(), xg, retain_graph=i < N - 1)[0] for i in range(N)]
    return torch.stack(rows, dim=1)


def check_batch_arguments(x0: Any, *counts: tuple[str, Any, int]) -> None:
    """Raise :class:`FixedPointError` unless ``x0`` is a (B, N) tensor with ``N >= 1`` and
    each ``(name, value, minimum)`` is an integer ``>= minimum``."""
    if not isinstance(x0, torch.Tensor) or x0.ndim != 2 or x0.shape[1] < 1:
        shape = tuple(x0.shape) if isinstance(x0, torch.Tensor) else type(x0).__name__
        raise FixedPointError(f"x0 must be a (B, N) tensor; got {shape}")
    for name, value, minimum in counts:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise FixedPointError(f"{name} must be an integer >= {minimum}; got {value!r}")


def check_output_shape(value: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``value = F(z)``, checked to have the shape of ``z``."""
    if value.shape != z.shape:
        raise FixedPointError(
            f"F must map (B, N) to (B, N); got input {tuple(z.shape)} and output "
            f"{tuple(value.shape)}"
        )
    return value


def project_into_box(
    x: torch.Tensor, low: torch.Tensor, high: torch.Tensor, mode: BoxMode = "clamp"
) -> torch.Tensor:
    """Map ``x`` into ``[low, high]``: clamp, or reflect at the faces (period 2 (high - low))."""
    if mode == "clamp":
        return torch.maximum(torch.minimum(x, high), low)
    width = high - low
    y = torch.remainder(x - low, 2 * width)
    return low + width - (y - width).abs()


def _as_bound(value: Any, N: int, like: torch.Tensor, name: str) -> torch.Tensor:
    bound = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if bound.ndim == 0:
        bound = bound.expand(N)
    if bound.shape != (N,):
        raise FixedPointError(
            f"box {name} must be a scalar or have shape ({N},); got {tuple(bound.shape)}"
        )
    if not torch.isfinite(bound).all():
        raise FixedPointError(f"box {name} must be finite; got {bound.tolist()}")
    return bound


def newton_batch(
    F: Map,
    x0: torch.Tensor,
    *,
    jacobian: Callable[..., torch.Tensor] | None = None,
    indexed: bool = False,
    tol: float = 1e-12,
    max_iter: int = 100,
    box: tuple[Any, Any] | None = None,
    box_mode: BoxMode = "clamp",
    bound: float = 1e8,
    lambda0: float = 1e-3,
    damping: Damping = "identity",
    max_retries: int = 8,
    stall_window: int = 10,
    stall_ratio: float = 0.9,
    stop: Callable[[torch.Tensor], torch.Tensor] | None = None,
    chunk_size: int | None = None,
    coarse_jacobian: Callable[..., torch.Tensor] | None = None,
    coarse_above: float = 1e-3,
) -> NewtonBatchResult:
    """Solve ``F(x) = 0`` from every row of ``x0`` (B, N) by Levenberg-Marquardt (module doc).

    Args:
        F: batched map (B, N) -> (B, N), row-wise independent, built from torch operations.
        x0: (B, N) starts (float64 recommended; the dtype and device are followed).
        jacobian: optional (B, N) -> (B, N, N) Jacobian of ``F``; default
            :func:`batched_jacobian` (forward mode with ``torch.func``).
        indexed: ``False`` (default) when every row solves the same system, so ``F`` may be
            evaluated on any subset of rows; ``True`` when the systems differ per row: then
            ``F`` (and ``jacobian``) are called as ``F(x_rows, rows)`` with ``rows`` the
            (b,) int64 indices into ``x0`` of the rows passed (only running starts are
            evaluated).
        tol: absolute tolerance on ``||F(x)||_2`` (Euclidean norm, units of ``F``).
        max_iter: most Jacobians per start.
        box: optional ``(low, high)``, scalars or (N,) tensors; iterates stay inside.
        box_mode: ``"clamp"`` or ``"reflect"``.
        bound: a start whose iterate has ``||x||_inf > bound`` is stopped as ``diverged``.
        lambda0: initial damping factor ``lambda`` in ``mu = lambda ||F||``.
        damping: ``"identity"`` (``J^T J + mu I``) or ``"marquardt"`` (``J^T J + mu D``,
            ``D = diag(J^T J)``: invariant to the scale of each coordinate; module doc).
        max_retries: trial steps per Jacobian before the next iteration.
        stall_window, stall_ratio: a start whose ``||F||`` fell by less than the factor
            ``stall_ratio`` over the last ``stall_window`` iterations is stopped as
            ``stalled`` (it creeps towards a local minimum of ``||F||``, e.g. on a face of
            the box; near a regular root LM converges quadratically).
        stop: optional rule ``x (r, N) -> (r,) bool`` asked after every iteration with the
            iterates of the running starts; flagged starts stop as ``captured`` (e.g. they
            entered a ball where the solution they converge to is already known).
        chunk_size: starts solved together (default ``max(1, 2**21 // N**2)``, about 16 MB
            per (b, N, N) float64 buffer, so that buffers are reused, not re-allocated).
        coarse_jacobian, coarse_above: optional cheaper Jacobian (e.g. computed in float32)
            used while ``||F(x)|| > coarse_above``. Its steps pass the same gain-ratio test,
            so it can slow the iteration down but not mislead it; below ``coarse_above``
            the exact Jacobian is used and convergence stays quadratic.

    Returns:
        :class:`NewtonBatchResult`; ``x`` is the best point found for every start.
    """
    start_time = time.perf_counter()
    check_batch_arguments(
        x0, ("max_iter", max_iter, 0), ("max_retries", max_retries, 1),
        ("stall_window", stall_window, 1),
    )  # fmt: skip
    if not (tol > 0):
        raise FixedPointError(f"tol must be > 0; got {tol!r}")
    if box_mode not in ("clamp", "reflect"):
        raise FixedPointError(f"box_mode must be 'clamp' or 'reflect'; got {box_mode!r}")
    if damping not in ("identity", "marquardt"):
        raise FixedPointError(f"damping must be 'identity' or 'marquardt'; got {damping!r}")
    B, N = x0.shape
    if chunk_size is None:
        chunk_size = max(1, 2**21 // (N * N))
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise FixedPointError(f"chunk_size must be an integer >= 1; got {chunk_size!r}")

    def F_rows(z: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            value = F(z, rows) if indexed else F(z)  # type: ignore[call-arg]
        return check_output_shape(value, z)

    def exact(z: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            if jacobian is not None:
                return jacobian(z, rows) if indexed else jacobian(z)
            return batched_jacobian(lambda y: F(y, rows) if indexed else F(y), z)  # type: ignore[call-arg]

    def jac(z: torch.Tensor, rows: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
        far = norms > coarse_above
        if coarse_jacobian is None or not bool(far.any()):
            return exact(z, rows)
        with torch.no_grad():
            if bool(far.all()):  # kept in the coarse dtype: the LU runs in it too
                J = coarse_jacobian(z, rows) if indexed else coarse_jacobian(z)
                bad = ~torch.isfinite(J.sum((1, 2)))  # e.g. float32 overflow
                if not bool(bad.any()):
                    return J
                far = ~bad
            J = torch.empty(z.shape[0], N, N, dtype=z.dtype, device=z.device)
            if bool(far.any()):
                zf, rf = z[far], rows[far]
                Jf = coarse_jacobian(zf, rf) if indexed else coarse_jacobian(zf)
                J[far] = Jf.to(z.dtype)
            J[~far] = exact(z[~far], rows[~far])
            redo = far & ~torch.isfinite(J.sum((1, 2)))
            if bool(redo.any()):
                J[redo] = exact(z[redo], rows[redo])
        return J

    low = high = None
    x = x0.detach().clone()
    if box is not None:
        low = _as_bound(box[0], N, x, "low")
        high = _as_bound(box[1], N, x, "high")
        if not bool((low < high).all()):
            raise FixedPointError(f"box must have low < high in every coordinate; got {box!r}")
        x = torch.where(torch.isfinite(x), project_into_box(x, low, high, box_mode), x)
    solver = _Chunk(
        F_rows,
        jac,
        tol,
        max_iter,
        low,
        high,
        box_mode,
        bound,
        lambda0,
        damping == "marquardt",
        max_retries,
        stall_window,
        stall_ratio,
        stop,
    )
    norm = torch.empty(B, dtype=x.dtype, device=x.device)
    status = torch.empty(B, dtype=torch.int64, device=x.device)
    iterations = torch.empty(B, dtype=torch.int64, device=x.device)
    for first in range(0, B, chunk_size):
        rows = torch.arange(first, min(B, first + chunk_size), device=x.device)
        x[rows], norm[rows], status[rows], iterations[rows] = solver.solve(x[rows], rows)
    return NewtonBatchResult(
        x=x,
        residual=norm,
        converged=norm <= tol,
        iterations=iterations,
        status=status,
        tol=float(tol),
        seconds=time.perf_counter() - start_time,
        evaluations=solver.evaluations,
    )


def _model_decrease(
    A: torch.Tensor, g: torch.Tensor, copies: int
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``s -> -2 g.s - s.A s`` (the linear model's predicted decrease of ``||F||^2``, with
    ``A = J^T J`` (p, N, N) and ``g = J^T F`` (p, N)) for ``copies`` stacked trials per
    row: the steps are (copies p, N), ``A`` and ``g`` broadcast, not copied."""

    def decrease(step: torch.Tensor) -> torch.Tensor:
        steps = step.view(copies, *g.shape)
        curvature = (A @ steps.unsqueeze(3)).squeeze(3)
        return (-2 * (g * steps).sum(2) - (steps * curvature).sum(2)).flatten()

    return decrease


class _Chunk:
    """The LM iteration on one chunk of starts (all running starts share the iteration)."""

    def __init__(
        self,
        F_rows: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        jac: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
        tol: float,
        max_iter: int,
        low: torch.Tensor | None,
        high: torch.Tensor | None,
        box_mode: BoxMode,
        bound: float,
        lambda0: float,
        marquardt: bool,
        max_retries: int,
        stall_window: int,
        stall_ratio: float,
        stop: Callable[[torch.Tensor], torch.Tensor] | None,
    ) -> None:
        self.F_rows, self.jac, self.tol, self.max_iter = F_rows, jac, tol, max_iter
        self.low, self.high, self.box_mode, self.bound = low, high, box_mode, bound
        self.lambda0, self.max_retries, self.stop = lambda0, max_retries, stop
        self.marquardt = marquardt
        self.stall_window, self.stall_ratio = stall_window, stall_ratio
        self.evaluations = 0

    def solve(
        self, x: torch.Tensor, rows: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        b = x.shape[0]
        dtype, device = x.dtype, x.device
        Fx = self.F_rows(x, rows)
        self.evaluations += b
        norm = torch.linalg.vector_norm(Fx, dim=1)
        finite = torch.isfinite(norm) & torch.isfinite(x.sum(1))
        norm = torch.where(finite, norm, torch.full_like(norm, torch.inf))
        status = torch.full((b,), RUNNING, dtype=torch.int64, device=device)
        status[~finite] = NAN
        status[finite & (norm <= self.tol)] = CONVERGED
        iterations = torch.zeros(b, dtype=torch.int64, device=device)
        lam = torch.full((b,), -self.lambda0, dtype=dtype, device=device)  # < 0: unset
        newton = torch.ones(b, dtype=torch.bool, device=device)
        nu = torch.full((b,), 2.0, dtype=dtype, device=device)
        reference = norm.clone()
        idx = (status == RUNNING).nonzero().squeeze(1)
        if self.stop is not None and idx.numel():
            status[idx[self.stop(x[idx])]] = CAPTURED
        for iteration in range(1, self.max_iter + 1):
            idx = (status == RUNNING).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            xa, Fa, na = x[idx], Fx[idx], norm[idx]
            J = self.jac(xa, rows[idx], na)
            iterations[idx] = iteration
            good = torch.isfinite(J.sum((1, 2)))
            if not bool(good.all()):
                status[idx[~good]] = NAN
                idx, xa, Fa, na, J = idx[good], xa[good], Fa[good], na[good], J[good]
                if idx.numel() == 0:
                    continue
            lam_a, nu_a = lam[idx], nu[idx]
            # 1. the Newton step (mu = 0) by LU of J, where the last model was good
            first = newton[idx].nonzero().squeeze(1)
            if first.numel():
                Jn = J if first.numel() == idx.numel() else J[first]
                LU, pivots, info = torch.linalg.lu_factor_ex(Jn)
                rhs = Fa[first].to(J.dtype).unsqueeze(2)
                dx = torch.linalg.lu_solve(LU, pivots, rhs).squeeze(2).to(dtype)
                del LU
                accept = self._try(x, Fx, norm, idx, first, xa, na, dx, info == 0, rows, Jn)
                del Jn
                newton[idx[first[~accept]]] = False
                done = torch.zeros(idx.numel(), dtype=torch.bool, device=device)
                done[first[accept]] = True
                pending = (~done).nonzero().squeeze(1)
            else:
                pending = torch.arange(idx.numel(), device=device)
            # 2. Levenberg-Marquardt steps for the others, damping raised until accepted
            if pending.numel():
                Jp = J if pending.numel() == idx.numel() else J[pending]
                Jp = Jp.to(dtype)
                A = Jp.mT @ Jp
                g = (Jp.mT @ Fa[pending].unsqueeze(2)).squeeze(2)
                del Jp
                diag_A = A.diagonal(dim1=1, dim2=2)
                if self.marquardt:  # D = diag(J^T J), floored
                    D = torch.maximum(diag_A, SCALING_FLOOR * diag_A.amax(1, keepdim=True))
                # first LM step: mu_0 I = lambda0 max diag(J^T J) I, or mu_0 D = lambda0 D
                unset = lam_a[pending] < 0
                if bool(unset.any()):
                    scale = (1.0 if self.marquardt else diag_A.amax(1)) / na[pending]
                    start_lam = (-lam_a[pending] * scale).clamp(min=torch.finfo(dtype).tiny)
                    lam_a[pending] = torch.where(unset, start_lam, lam_a[pending])
                local = torch.arange(pending.numel(), device=device)
            retries = 0
            while pending.numel() and retries < self.max_retries:
                # RETRY_BATCH damped trials at once: the damping sequence of sequential
                # retries (lambda *= nu, nu *= 2 after each rejection), all evaluated in
                # one batch; each start takes the first that is accepted, or stalls.
                p = pending.numel()
                K = min(RETRY_BATCH, self.max_retries - retries, max(1, TRIAL_ROWS // p))
                retries += K
                everyone = local.numel() == A.shape[0]
                Ap = A if everyone else A[local]
                gp = g if everyone else g[local]
                lam_p, nu_p, na_p = lam_a[pending], nu_a[pending], na[pending]
                raise_by = [torch.ones_like(lam_p)]  # lambda multiplier of trial j
                for j in range(K):
                    raise_by.append(raise_by[-1] * nu_p * 2.0**j)
                multipliers = torch.stack(raise_by)  # (K + 1, p); row K: after K rejections
                mu = (lam_p * multipliers[:K] * na_p).clamp(min=torch.finfo(dtype).tiny)
                M = Ap.unsqueeze(0).repeat(K, 1, 1, 1)
                if self.marquardt:
                    Dp = D if everyone else D[local]
                    M.diagonal(dim1=2, dim2=3).add_(mu[:, :, None] * Dp)
                else:
                    M.diagonal(dim1=2, dim2=3).add_(mu[:, :, None])
                chol, info = torch.linalg.cholesky_ex(M.view(K * p, *Ap.shape[1:]))
                del M
                gK = gp.repeat(K, 1)
                dx = torch.linalg.solve_triangular(
                    chol.mT,
                    torch.linalg.solve_triangular(chol, gK.unsqueeze(2), upper=False),
                    upper=True,
                ).squeeze(2)
                del chol
                trial, Ft, nt, accept, rho, tiny_step = self._trials(
                    xa[pending].repeat(K, 1), na_p.repeat(K), dx, info == 0,
                    rows[idx[pending]].repeat(K), _model_decrease(Ap, gp, K),
                )  # fmt: skip
                accept, rho, tiny_step = (t.view(K, p) for t in (accept, rho, tiny_step))
                unbounded = ~torch.isfinite(lam_p * multipliers[1:] * na_p)
                event = accept | tiny_step | unbounded  # accepted, or stalled, at trial j
                first = torch.where(event.any(0), event.to(torch.int8).argmax(0), K)
                ended = first < K
                chosen = first.clamp(max=K - 1)
                columns = torch.arange(p, device=device)
                won = ended & accept[chosen, columns]
                stalled = ended & ~won
                picked = chosen * p + columns  # rows of the stacked trials
                where = idx[pending[won]]
                x[where], Fx[where], norm[where] = (
                    trial[picked[won]],
                    Ft[picked[won]],
                    nt[picked[won]],
                )
                rho_won = rho[chosen, columns][won]
                factor = (1 - (2 * rho_won - 1) ** 3).clamp(min=1 / 3)
                lam_won = lam_p[won] * multipliers[chosen[won], columns[won]] * factor
                lam_a[pending[won]] = lam_won.clamp(min=torch.finfo(dtype).tiny)
                nu_a[pending[won]] = 2.0
                newton[idx[pending[won][rho_won > 0.75]]] = True  # good model: Newton next
                status[idx[pending[stalled]]] = STALLED
                left = ~ended  # rejected K times: the damping raised K times
                lam_a[pending[left]] = lam_p[left] * multipliers[K, left]
                nu_a[pending[left]] = nu_p[left] * 2.0**K
                pending, local = pending[left], local[left]
            lam[idx], nu[idx] = lam_a, nu_a
            idx = idx[status[idx] == RUNNING]
            status[idx[norm[idx] <= self.tol]] = CONVERGED
            far = torch.linalg.vector_norm(x[idx], ord=torch.inf, dim=1) > self.bound
            status[idx[far & (status[idx] == RUNNING)]] = DIVERGED
            if iteration % self.stall_window == 0:
                slow = (status[idx] == RUNNING) & (norm[idx] > self.stall_ratio * reference[idx])
                status[idx[slow]] = STALLED
                reference[idx] = norm[idx]
            if self.stop is not None:
                idx = idx[status[idx] == RUNNING]
                if idx.numel():
                    status[idx[self.stop(x[idx])]] = CAPTURED
        status[status == RUNNING] = MAX_ITER
        return x, norm, status, iterations

    def _try(
        self,
        x: torch.Tensor,
        Fx: torch.Tensor,
        norm: torch.Tensor,
        idx: torch.Tensor,
        sub: torch.Tensor,
        xa: torch.Tensor,
        na: torch.Tensor,
        dx: torch.Tensor,
        ok: torch.Tensor,
        rows: torch.Tensor,
        J: torch.Tensor,
    ) -> torch.Tensor:
        """Trial ``x - dx`` for the running starts ``idx[sub]`` (:meth:`_trials`, the model
        ``F + J s``); accepted trials are written into ``x, Fx, norm``. Returns accepted."""
        Fp, np_ = Fx[idx[sub]], na[sub]

        def decrease(step: torch.Tensor) -> torch.Tensor:
            model = Fp + (J @ step.to(J.dtype).unsqueeze(2)).squeeze(2).to(Fp.dtype)
            return np_.square() - model.square().sum(1)

        trial, Ft, nt, accept, _, _ = self._trials(xa[sub], np_, dx, ok, rows[idx[sub]], decrease)
        where = idx[sub[accept]]
        x[where], Fx[where], norm[where] = trial[accept], Ft[accept], nt[accept]
        return accept

    def _trials(
        self,
        xp: torch.Tensor,
        np_: torch.Tensor,
        dx: torch.Tensor,
        ok: torch.Tensor,
        rows: torch.Tensor,
        decrease: Callable[[torch.Tensor], torch.Tensor],
    ) -> tuple[torch.Tensor, ...]:
        """Trials ``xp - dx`` (projected) from points ``xp`` with ``||F|| = np_`` (rows
        ``rows`` of the starts); ``decrease(s)`` is the linear model's predicted decrease of
        ``||F||^2`` for the step ``s`` really taken. Returns (trial, F(trial),
        ``||F(trial)||``, accepted, gain ratio, step below rounding)."""
        trial = xp - dx
        if self.low is not None and self.high is not None:
            trial = project_into_box(trial, self.low, self.high, self.box_mode)
        ok = ok & torch.isfinite(trial.sum(1))
        trial = torch.where(ok[:, None], trial, xp)
        step = trial - xp
        Ft = self.F_rows(trial, rows)
        self.evaluations += int(rows.numel())
        nt = torch.linalg.vector_norm(Ft, dim=1)
        ok = ok & torch.isfinite(nt)
        predicted = decrease(step)
        rho = (np_.square() - nt.square()) / predicted
        accept = ok & (predicted > 0) & (rho > 1e-4) & (nt < np_)
        eps = torch.finfo(xp.dtype).eps
        size = torch.linalg.vector_norm(step, dim=1)
        tiny = ok & (size <= 4 * eps * (1 + torch.linalg.vector_norm(xp, dim=1)))
        return trial, Ft, nt, accept, rho, tiny
