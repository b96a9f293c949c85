r"""Batched Powell dogleg (trust region) for many independent square systems ``F(x) = 0``.

The same problem as :func:`losslab.solve.newton.newton_batch` (every row of ``x0`` a start,
row ``b`` of ``F`` depending on row ``b`` of ``x`` only), solved by Powell's hybrid
method (Powell 1970; MINPACK ``hybrj``, Moré, Garbow & Hillstrom 1980): one LU
factorisation of the Jacobian per iteration, and every retry after a rejected step is a
few vector operations, not a new factorisation as in Levenberg-Marquardt. That makes it
the cheaper method when most of the work is spent on starts that never converge (the
lifted pre-activation starts of :func:`losslab.fixedpoints.search.preactivation_starts`).

**Scaling.** Coordinates may differ by orders of magnitude (saturated pre-activations of
``1e4`` next to ones of order one), so the trust region is taken in scaled coordinates
``s = D dx``, ``D = diag(d)``, with ``d_j`` the largest norm of column ``j`` of ``J``
seen so far for the start (MINPACK's ``mode = 1``; a zero column gives ``d_j = 1``).

**Step.** At ``x`` with ``F = F(x)``, ``J = F'(x)``: the Newton step ``dn = -J^{-1} F``
(LU; none when ``J`` is singular), the scaled gradient of ``||F||^2 / 2``,
``g_s = D^{-1} J^T F``, and the Cauchy point ``s_c = -alpha g_s`` with
``alpha = ||g_s||^2 / ||J D^{-1} g_s||^2`` (the minimiser of the linear model along
``-g_s``). For a radius ``Delta`` the dogleg step is the Newton step ``s_n = D dn`` when
``||s_n|| <= Delta``; the steepest-descent step ``-Delta g_s / ||g_s||`` when
``||s_c|| >= Delta``; otherwise the point ``s_c + tau (s_n - s_c)``, ``tau in [0, 1]``,
where the segment leaves the ball ``||s|| = Delta``. Without a Newton step (singular ``J``)
it is the Cauchy point, or the steepest-descent step when that leaves the region. Its
model value ``F + J dx`` needs no product with ``J``: it is ``0`` for the Newton step and
a combination of ``F`` and ``J D^{-1} g_s`` otherwise.

**Acceptance and radius.** A trial ``x + dx`` is accepted when the gain ratio
``rho = (||F(x)||^2 - ||F(x + dx)||^2) / (||F(x)||^2 - ||F + J dx||^2) > 1e-4`` and
``||F||`` falls. Up to ``trials`` radii ``Delta, Delta / 2, Delta / 4, ...`` are evaluated
in one batch and each start takes the first accepted one (the result of sequential
halving, in one round trip); when all are rejected the radius drops to a quarter of the
smallest and the next round tries again (at most ``max_rounds`` rounds per Jacobian).
After an accepted step with trial radius ``Delta_k``: ``rho < 0.25`` halves it,
``rho > 0.75`` sets it to ``max(Delta_k, 2 ||s||)``, otherwise it is kept. The first
radius is ``radius_factor ||D x0||`` (``radius_factor`` if that is zero), as in MINPACK.
Near a regular root the Newton step lies inside the region and is accepted: the method
converges quadratically.

**Termination per start** (codes and names of :data:`losslab.solve.newton.REASONS`):
``converged`` (``||F(x)||_2 <= tol``), ``max_iter``, ``nan`` (``F`` or ``J`` not finite
at an accepted point or at the start), ``diverged`` (``||x||_inf > bound``), ``stalled``
(the radius below rounding size, ``4 eps (1 + ||D x||)``, or, checked every
``stall_window`` iterations, ``||F||`` above ``stall_ratio`` times its value at the previous
check).

**Cost per start and iteration.** One Jacobian, one LU (``N^3 / 3`` multiply-adds), two
products with ``J`` (``J^T F`` and ``J D^{-1} g_s``), and ``trials`` evaluations of ``F``
per round; only the running starts are computed on.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch

from losslab.errors import FixedPointError
from losslab.solve.newton import (
    CONVERGED,
    DIVERGED,
    MAX_ITER,
    NAN,
    RUNNING,
    STALLED,
    NewtonBatchResult,
    batched_jacobian,
    check_batch_arguments,
    check_output_shape,
)

Map = Callable[[torch.Tensor], torch.Tensor]

#: A trial is accepted when its gain ratio (actual over predicted decrease) exceeds this.
ACCEPT_RATIO = 1e-4


def _by_branch(
    newton_inside: torch.Tensor,
    steepest: torch.Tensor,
    newton: torch.Tensor,
    steepest_value: torch.Tensor,
    dogleg_value: torch.Tensor,
) -> torch.Tensor:
    """Per (trial, start) the value of the dogleg branch taken: Newton step inside the region,
    steepest descent to its boundary, or the point on the dogleg's second leg."""
    inner = torch.where(steepest[..., None], steepest_value, dogleg_value)
    return torch.where(newton_inside[..., None], newton.expand(dogleg_value.shape), inner)


def dogleg_batch(
    F: Map,
    x0: torch.Tensor,
    *,
    jacobian: Map | None = None,
    tol: float = 1e-12,
    max_iter: int = 100,
    bound: float = 1e8,
    trials: int = 4,
    max_rounds: int = 2,
    radius_factor: float = 100.0,
    stall_window: int = 10,
    stall_ratio: float = 0.9,
) -> NewtonBatchResult:
    """Solve ``F(x) = 0`` from every row of ``x0`` (B, N) by Powell's dogleg (module doc).

    Args:
        F: batched map (B, N) -> (B, N), row-wise independent, built from torch operations.
        x0: (B, N) starts (float64 recommended; the dtype and device are followed).
        jacobian: optional (B, N) -> (B, N, N) Jacobian of ``F``; default
            :func:`losslab.solve.newton.batched_jacobian` (forward mode).
        tol: absolute tolerance on ``||F(x)||_2``.
        max_iter: most Jacobians per start.
        bound: a start with ``||x||_inf > bound`` is stopped as ``diverged``.
        trials: trust radii evaluated together per round (``Delta, Delta / 2, ...``).
        max_rounds: rounds of trials per Jacobian before the next iteration.
        radius_factor: the first radius is ``radius_factor ||D x0||``.
        stall_window, stall_ratio: every ``stall_window`` iterations, a start whose ``||F||``
            is above ``stall_ratio`` (in (0, 1)) times its value at the previous check is
            ``stalled``.

    Returns:
        :class:`~losslab.solve.newton.NewtonBatchResult` (``x`` the best point per start).
    """
    start_time = time.perf_counter()
    check_batch_arguments(
        x0, ("max_iter", max_iter, 0), ("trials", trials, 1), ("max_rounds", max_rounds, 1),
        ("stall_window", stall_window, 1),
    )  # fmt: skip
    for name, number in (("tol", tol), ("radius_factor", radius_factor), ("bound", bound)):
        if not (number > 0 and math.isfinite(number)):
            raise FixedPointError(f"{name} must be a finite number > 0; got {number!r}")
    if not 0 < stall_ratio < 1:
        raise FixedPointError(f"stall_ratio must lie in (0, 1); got {stall_ratio!r}")
    B, N = x0.shape
    dtype, device = x0.dtype, x0.device
    eps = torch.finfo(dtype).eps

    def evaluate(z: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return check_output_shape(F(z), z)

    def jac(z: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return jacobian(z) if jacobian is not None else batched_jacobian(F, z)

    x = x0.detach().clone()
    Fx = evaluate(x)
    evaluations = B
    norm = torch.linalg.vector_norm(Fx, dim=1)
    finite = torch.isfinite(norm) & torch.isfinite(x).all(1)
    norm = torch.where(finite, norm, torch.full_like(norm, torch.inf))
    status = torch.full((B,), RUNNING, dtype=torch.int64, device=device)
    status[~finite] = NAN
    status[finite & (norm <= tol)] = CONVERGED
    iterations = torch.zeros(B, dtype=torch.int64, device=device)
    scaling = torch.zeros(B, N, dtype=dtype, device=device)  # d, running max column norms
    radius = torch.zeros(B, dtype=dtype, device=device)
    reference = norm.clone()  # ||F|| at the last stall check
    halving = 0.5 ** torch.arange(trials, dtype=dtype, device=device)  # (K,)
    for iteration in range(1, max_iter + 1):
        idx = (status == RUNNING).nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        iterations[idx] = iteration
        J = jac(x[idx])
        good = torch.isfinite(J.sum((1, 2)))
        if not bool(good.all()):
            status[idx[~good]] = NAN
            idx, J = idx[good], J[good]
            if idx.numel() == 0:
                continue
        xa, Fa, na = x[idx], Fx[idx], norm[idx]
        d = torch.maximum(scaling[idx], J.square().sum(1).sqrt())
        d = torch.where(d > 0, d, torch.ones_like(d))
        scaling[idx] = d
        if iteration == 1:
            first = radius_factor * torch.linalg.vector_norm(d * xa, dim=1)
            radius[idx] = torch.where(first > 0, first, torch.full_like(first, radius_factor))
        # Newton step by LU; none (infinite) where J is singular
        LU, pivots, info = torch.linalg.lu_factor_ex(J)
        dn = -torch.linalg.lu_solve(LU, pivots, Fa.unsqueeze(2)).squeeze(2)
        has_newton = (info == 0) & torch.isfinite(dn.sum(1))
        s_newton = torch.where(has_newton[:, None], d * dn, torch.full_like(dn, torch.inf))
        # scaled gradient and Cauchy point
        g = (J.mT @ Fa.unsqueeze(2)).squeeze(2) / d
        Jg = (J @ (g / d).unsqueeze(2)).squeeze(2)  # J D^-1 g_s
        alpha = g.square().sum(1) / Jg.square().sum(1)
        s_cauchy = -alpha[:, None] * g
        s_cauchy = torch.where(torch.isfinite(s_cauchy), s_cauchy, torch.zeros_like(s_cauchy))
        alpha = torch.where(torch.isfinite(alpha), alpha, torch.zeros_like(alpha))
        norm_newton = torch.linalg.vector_norm(s_newton, dim=1)
        norm_cauchy = torch.linalg.vector_norm(s_cauchy, dim=1)
        norm_g = torch.linalg.vector_norm(g, dim=1)
        leg = torch.where(has_newton[:, None], s_newton - s_cauchy, torch.zeros_like(s_newton))
        leg_a = leg.square().sum(1)
        leg_b = 2 * (s_cauchy * leg).sum(1)
        # per start: vectors (8, n, N) and scalars (7, n), selected together for each round
        vectors = torch.stack([s_newton, s_cauchy, leg, g, Jg, Fa, xa, d])
        scalars = torch.stack([norm_newton, norm_cauchy, leg_a, leg_b, norm_g, alpha, na])
        delta = radius[idx]
        accepted = torch.zeros(idx.numel(), dtype=torch.bool, device=device)
        for _ in range(max_rounds):
            pending = (~accepted).nonzero().squeeze(1)
            p = pending.numel()
            if p == 0:
                break
            everyone = p == idx.numel()
            V = vectors if everyone else vectors[:, pending]
            sn, sc, lg, gp, Jgp, Fp, xp, dp = V[:, None]  # each (1, p, N)
            nn, nc, la, lb, ng, al, np_ = (scalars if everyone else scalars[:, pending])[:, None]
            radii = (delta if everyone else delta[pending])[None, :] * halving[:, None]  # (K, p)
            newton_inside = nn <= radii
            steepest = ~newton_inside & (nc >= radii)
            # tau: ||s_c + tau leg|| = radius on the dogleg's second leg
            c = nc.square() - radii.square()
            tau = (-lb + (lb * lb - 4 * la * c).clamp(min=0).sqrt()) / (2 * la)
            tau = torch.where(torch.isfinite(tau), tau.clamp(0, 1), torch.zeros_like(tau))
            # each branch's scaled step s and model change J dx = J D^-1 s (module doc)
            tau_, sd_scale = tau[..., None], (radii / ng)[..., None]
            step = _by_branch(newton_inside, steepest, sn, -sd_scale * gp, sc + tau_ * lg)
            on_leg = -(1 - tau_) * al[..., None] * Jgp - tau_ * Fp
            model_step = _by_branch(newton_inside, steepest, -Fp, -sd_scale * Jgp, on_leg)
            usable = torch.isfinite(step.sum(2))
            step = torch.where(usable[..., None], step, torch.zeros_like(step))
            trial = (xp + step / dp).reshape(trials * p, N)
            Ft = evaluate(trial)
            evaluations += trials * p
            nt = torch.linalg.vector_norm(Ft, dim=1).view(trials, p)
            predicted = np_.square() - (Fp + model_step).square().sum(2)
            gain = (np_.square() - nt.square()) / predicted
            ok = usable & torch.isfinite(nt) & (predicted > 0) & (gain > ACCEPT_RATIO) & (nt < np_)
            chosen = torch.where(ok.any(0), ok.to(torch.int8).argmax(0), trials)
            won = chosen < trials
            chosen = chosen.clamp(max=trials - 1)
            columns = torch.arange(p, device=device)
            picked = (chosen * p + columns)[won]
            where = idx[pending[won]]
            x[where], Fx[where] = trial[picked], Ft[picked]
            norm[where] = nt[chosen, columns][won]
            accepted[pending[won]] = True
            rho = gain[chosen, columns][won]
            size = torch.linalg.vector_norm(step[chosen, columns], dim=1)[won]
            tried = radii[chosen, columns][won]
            grown = torch.where(rho > 0.75, torch.maximum(tried, 2 * size), tried)
            delta[pending[won]] = torch.where(rho < 0.25, 0.5 * tried, grown)
            delta[pending[~won]] = 0.25 * radii[trials - 1][~won]
        radius[idx] = delta
        status[idx[norm[idx] <= tol]] = CONVERGED
        running = idx[status[idx] == RUNNING]
        xr = x[running]
        far = torch.linalg.vector_norm(xr, ord=torch.inf, dim=1) > bound
        status[running[far]] = DIVERGED
        size = torch.linalg.vector_norm(scaling[running] * xr, dim=1)
        status[running[~far & (radius[running] < 4 * eps * (1 + size))]] = STALLED
        if iteration % stall_window == 0:
            running = idx[status[idx] == RUNNING]
            slow = norm[running] > stall_ratio * reference[running]
            status[running[slow]] = STALLED
            reference[running] = norm[running]
    status[status == RUNNING] = MAX_ITER
    return NewtonBatchResult(
        x=x,
        residual=norm,
        converged=norm <= tol,
        iterations=iterations,
        status=status,
        tol=float(tol),
        seconds=time.perf_counter() - start_time,
        evaluations=evaluations,
    )
