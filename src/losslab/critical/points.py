r"""Critical points of a smooth loss: find them (saddles as well as minima) and classify them.

A critical point of ``L: R^p -> R`` is a zero of the gradient ``g(theta) = nabla L(theta)``.
Gradient descent is attracted by minima only; to reach saddles too we drive ``||g||`` to
zero with the Hessian ``H = nabla g``:

- ``method="newton_mr"`` (Roosta, Liu, Xu & Mahoney 2022, *Newton-MR*): the step ``p`` is
  the minimum-norm least-squares solution of ``H p = -g``, i.e. ``p = -H^+ g`` (when
  ``p <= dense_limit``: an LU solve where ``H`` is regular; by MINRES on Hessian-vector
  products otherwise), followed by a backtracking Armijo line search on ``||g||^2``, whose
  derivative along ``p`` is ``2 p^T H g = -2 g^T H H^+ g <= 0``. Near a non-degenerate
  critical point of any index the unit step is accepted and convergence is quadratic.
  Where ``H`` is nearly singular, ``H^+ g`` is dominated by the components of ``g`` on
  eigenvectors of tiny eigenvalues: a huge step along which ``||g||^2`` hardly falls, so
  the line search fails. Then (dense case) the step is the *truncated* pseudo-inverse
  ``p_c = -sum_{|lambda_i| > c} (v_i^T g / lambda_i) v_i`` for cut-offs ``c`` rising from
  ``p eps max|lambda|`` to ``1e-2 max|lambda|`` (each a descent direction:
  ``p_c^T H g = -sum_{|lambda_i| > c} (v_i^T g)^2``), and last the steepest descent of
  ``||g||^2 / 2``, ``-H g``, from its Cauchy step ``||H g||^2 / ||H^2 g||^2``. So
  ``stalled`` means that no step along ``-H g`` decreases ``||g||``: ``H g`` vanishes to
  rounding, a minimum of ``||g||`` that is not a critical point.
- ``method="levenberg_marquardt"``: Gauss-Newton on ``g(theta) = 0`` with Jacobian ``H``:
  ``(H^2 + mu I) p = -H g``, ``mu`` adapted by the gain ratio of the actual to the
  predicted decrease of ``||g||^2`` (Nielsen's rule), ``mu = 0`` allowed near the solution.

Both stop when ``||g||_2 <= min(tol, rtol ||H||_2 max(1, ||theta||))``: the absolute
tolerance (default ``1e-10``: reachable in float64 on small models) and a relative one, the
Newton step along the stiffest direction, ``||g|| / ||H||``, at most ``rtol`` (default
``1e-10``) of the parameters' scale. The relative test matters for flat losses only: a loss
scaled by ``1e-8`` has ``||g|| < 1e-10`` already 1e-2 away from its critical point. Otherwise
a search reports ``converged=False`` with the reason (``max_iter``, ``stalled``: no
decrease of ``||g||`` possible, a minimum of ``||g||`` that is not a critical point, or
``||g||`` not halved in ``stall_window`` iterations; ``nan``: non-finite loss or
gradient). A search that stalls with ``||g||`` below the *rounding floor*
``eps ||H||_2 max(1, ||theta||)`` has converged as far as the dtype allows (the
gradient computed in floating point carries an error of about ``eps ||H|| ||theta||``: the
rounding of ``theta`` times the sensitivity of ``g`` to it), and is reported
``converged`` with the floor as ``tol_effective`` (a loss scaled by ``1e8`` has its
gradient scaled so, and ``1e-10`` may be out of reach). ``||H||_2`` is estimated by 20 steps
of power iteration (a lower bound: the tests are, if anything, stricter), at every
iteration once ``||g|| <= tol``. Where ``H`` itself vanishes at the critical point (a
degenerate one, ``x^4``), the relative test follows it down: ``x^4`` stops at
``|x| ~ 2e-10`` after 55 Newton-MR iterations, and a higher-order degeneracy can need more
than ``max_iter`` (raise it, or ``rtol``).

:func:`classify` reads the Hessian's spectrum at a point: the Morse index (negative
eigenvalues), the nullity (eigenvalues of magnitude at most ``zero_tol``, a tolerance
that scales with the spectrum: ``max(rtol * max|lambda|, p * eps * max|lambda|)``), and
the kind: ``minimum`` (all eigenvalues > tol), ``maximum`` (all < -tol), ``saddle`` (both
signs present, whatever the nullity: a direction of descent and one of ascent exist),
``degenerate`` (semidefinite with zero eigenvalues: second order cannot decide), or
``not critical`` when ``||g|| > max(min(grad_tol, grad_rtol s), eps s)`` with
``s = max|lambda| max(1, ||theta||)``: the absolute tolerance, or the relative one where the
loss is flat (a Newton step ``||g|| / max|lambda|`` larger than ``grad_rtol`` of the
parameters' scale), or the rounding floor where the loss is steep.

A search stops at ``||g|| <= tol``, not at the critical point ``theta*`` itself, and an
eigenvalue that vanishes at ``theta*`` need not be small at ``theta``: on ``x^3 + y^2``,
``||g|| = 3 x^2 = 1e-10`` leaves ``lambda_x = 6 x = 3.5e-5``. So each eigenvalue is also
read along Newton estimates of the critical point, ``theta_{k+1} = theta_k + s_k`` with
``s_k = -sum_{|mu_j| > zero_tol} (w_j^T g / mu_j) w_j`` from the eigenpairs of
``H(theta_k)`` (MINRES on Hessian-vector products above ``dense_limit``, its step capped
at ``||g|| / zero_tol``), by the Rayleigh quotients ``v_i^T H(theta_k) v_i``. Along a
degenerate direction (``lambda ~ x^(k-2)`` on a ``x^k`` term) each Newton step covers a
fixed share of the way and the eigenvalue shrinks toward zero by half or more per step; a
non-degenerate eigenvalue may move at first (a small ``lambda`` next to a cubic term) but
settles once Newton converges quadratically. An eigenvalue that shrinks by more than a
quarter at each of up to 8 estimates is *unresolved*: it counts as zero (in ``nullity``
and for the kind) and ``unresolved`` says how many did. Eigenvalues that grow are
resolved.

``loss_fn`` takes a flat parameter tensor, or a dict of named tensors as
``torch.func.functional_call`` takes them (``ModelLoss(model, loss, data)`` of
:mod:`losslab.linalg` is one, with its start ``.theta0``); ``params`` is given in the same
form and returned so.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch.func import grad

from losslab.errors import CurvatureError
from losslab.linalg.hvp import HessianVectorProduct, dense_hessian
from losslab.linalg.lanczos import lanczos_eigenpairs
from losslab.linalg.model_loss import ModelLoss, ParameterLayout

Params = torch.Tensor | dict[str, torch.Tensor]
Method = Literal["newton_mr", "levenberg_marquardt"]
Kind = Literal["minimum", "maximum", "saddle", "degenerate", "not critical"]

#: Above this many parameters the Hessian is not formed: steps use MINRES / CG on
#: Hessian-vector products, classification and ``strong_convexity`` use Lanczos on the
#: extreme eigenvalues.
DENSE_LIMIT = 3000


class _FlatLoss:
    """``loss_fn`` as a function of one flat tensor, whatever form the user gave."""

    def __init__(self, loss_fn: Callable[[Any], torch.Tensor], params: Params) -> None:
        if isinstance(params, dict):
            if not params:
                raise CurvatureError("params is an empty dict: nothing to differentiate")
            names = tuple(params)
            self.layout: ParameterLayout | None = ParameterLayout(
                names, tuple(params[n].shape for n in names)
            )
            self.theta0 = self.layout.flatten({n: params[n].detach() for n in names})
        elif isinstance(params, torch.Tensor):
            if params.ndim != 1 or params.numel() == 0:
                raise CurvatureError(
                    f"params must be a non-empty flat tensor or a dict, got shape "
                    f"{tuple(params.shape)}"
                )
            self.layout = None
            self.theta0 = params.detach()
        else:
            raise CurvatureError("params must be a flat tensor or a dict of named tensors")
        if self.theta0.dtype not in (torch.float32, torch.float64):
            raise CurvatureError(
                f"params have dtype {self.theta0.dtype}: use float64 for analysis (float32 "
                "works; half precision has no linear solvers)"
            )
        if self.theta0.device.type == "meta":
            raise CurvatureError("params are on the meta device: they hold no numbers")
        if not bool(torch.isfinite(self.theta0).all()):
            raise CurvatureError("params hold NaN or inf")
        if isinstance(loss_fn, ModelLoss):  # dropout, batch norm in training mode
            loss_fn.check_fixed_function()
        self.loss_fn = loss_fn
        with torch.no_grad():
            value = self._value(self.theta0)
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise CurvatureError(
                f"loss_fn must return a scalar tensor (one number); got {shape}: reduce it, "
                "e.g. with .mean() or .sum()"
            )
        self._hessian_vector_product = HessianVectorProduct(self)

    def _value(self, theta: torch.Tensor) -> Any:
        return self.loss_fn(theta if self.layout is None else self.layout.unflatten(theta))

    def __call__(self, theta: torch.Tensor) -> torch.Tensor:
        return self._value(theta).reshape(())  # one number (checked at construction)

    def as_given(self, theta: torch.Tensor) -> Params:
        return theta if self.layout is None else self.layout.unflatten(theta.clone())

    def gradient(self, theta: torch.Tensor) -> torch.Tensor:
        return grad(self)(theta)

    def hvp(self, theta: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
        return self._hessian_vector_product(theta, vector)

    def hessian(self, theta: torch.Tensor) -> torch.Tensor:
        return dense_hessian(self, theta)


@dataclass(frozen=True)
class CriticalPointSearch:
    """Outcome of :func:`find_critical_point`.

    Attributes:
        params: the last iterate, in the form ``params0`` was given (flat or a dict).
        loss: ``L`` there.
        gradient_norm: ``||nabla L||_2`` there.
        converged: ``gradient_norm <= tol_effective``.
        reason: ``converged``, ``max_iter``, ``stalled`` or ``nan``.
        tol_effective: the tolerance tested last: ``min(tol, rtol ||H|| max(1, ||theta||))``
            once ``||g|| <= tol``, else ``tol``; or the rounding floor (module docstring)
            when the search stalled below it.
        iterations: Newton / LM iterations taken.
        gradient_norms: ``||nabla L||`` at every accepted iterate, from the start.
        seconds: wall time.
    """

    params: Params
    loss: float
    gradient_norm: float
    converged: bool
    reason: str
    iterations: int
    method: str
    gradient_norms: list[float] = field(default_factory=list)
    seconds: float = 0.0
    tol_effective: float = math.nan

    def to_dict(self) -> dict[str, Any]:
        return {
            "loss": self.loss,
            "gradient_norm": self.gradient_norm,
            "converged": self.converged,
            "reason": self.reason,
            "iterations": self.iterations,
            "method": self.method,
            "gradient_norms": list(self.gradient_norms),
            "seconds": self.seconds,
            "tol_effective": self.tol_effective,
        }


def find_critical_point(
    loss_fn: Callable[[Any], torch.Tensor],
    params0: Params,
    *,
    method: Method = "newton_mr",
    tol: float = 1e-10,
    rtol: float = 1e-10,
    max_iter: int = 200,
    stall_window: int | None = None,
    dense_limit: int = DENSE_LIMIT,
) -> CriticalPointSearch:
    """Drive ``||nabla L||`` to ``tol`` from ``params0`` by Newton-MR or Levenberg-Marquardt
    (module docstring); converges to saddles and maxima as well as minima.

    Args:
        loss_fn: ``L`` of a flat tensor or of a dict of named tensors.
        params0: the start, flat or a dict (use float64 to reach ``tol = 1e-10``).
        method: ``"newton_mr"`` (default) or ``"levenberg_marquardt"``.
        tol: absolute gradient-norm tolerance.
        rtol: relative tolerance: also ``||g|| <= rtol ||H||_2 max(1, ||theta||)`` (module
            docstring; it binds only where ``||H||`` is small).
        max_iter: iterations (each one Hessian, or one Krylov solve, and a few gradients).
        stall_window: stop as ``stalled`` when ``||g||`` has not halved in this many
            iterations (it creeps: a degenerate critical point, or one at infinity, such as
            a hidden unit whose weights grow without bound). Off by default: Newton-MR from
            Rosenbrock's ``(-1.2, 1)`` creeps for 170 iterations at ``||g|| = 4.6``, then
            converges in ten.
        dense_limit: form the Hessian when the dimension is at most this.
    """
    if method not in ("newton_mr", "levenberg_marquardt"):
        raise CurvatureError(
            f"unknown method {method!r}: choose 'newton_mr' or 'levenberg_marquardt'"
        )
    if (
        not tol > 0
        or not rtol > 0
        or max_iter < 1
        or (stall_window is not None and stall_window < 1)
    ):
        raise CurvatureError(
            f"need tol > 0, rtol > 0, max_iter >= 1 and stall_window >= 1, got {tol}, {rtol}, "
            f"{max_iter}, {stall_window}"
        )
    flat = _FlatLoss(loss_fn, params0)
    start_time = time.perf_counter()
    theta = flat.theta0.clone()
    value, gradient = _value_and_gradient(flat, theta)
    norms = [float(gradient.norm())]
    reason = "nan" if not math.isfinite(norms[0]) or not math.isfinite(value) else "max_iter"
    damping = None
    iterations = 0
    tol_effective = tol
    while True:
        if norms[-1] <= tol:
            tol_effective = min(tol, rtol * _curvature_scale(flat, theta))
            if norms[-1] <= tol_effective:
                reason = "converged"
                break
        if reason != "max_iter" or iterations >= max_iter:
            break
        iterations += 1
        if method == "newton_mr":
            accepted = _newton_mr_iteration(flat, theta, gradient, dense_limit)
        else:
            accepted, damping = _levenberg_marquardt_step(
                flat, theta, gradient, damping, dense_limit
            )
        if accepted is None:
            reason = "stalled"
            break
        theta, value, gradient = accepted
        norms.append(float(gradient.norm()))
        window = stall_window or len(norms)
        if len(norms) > window and norms[-1] > norms[-1 - window] / 2:
            reason = "stalled"  # creeping: a degenerate critical point, or one at infinity
            break
    if reason == "stalled":
        floor = torch.finfo(theta.dtype).eps * _curvature_scale(flat, theta)
        if norms[-1] <= floor:
            reason, tol_effective = "converged", floor
    return CriticalPointSearch(
        params=flat.as_given(theta),
        loss=float(value),
        gradient_norm=norms[-1],
        converged=reason == "converged",
        reason=reason,
        iterations=iterations,
        method=method,
        gradient_norms=norms,
        seconds=time.perf_counter() - start_time,
        tol_effective=tol_effective,
    )


def _value_and_gradient(flat: _FlatLoss, theta: torch.Tensor) -> tuple[float, torch.Tensor]:
    gradient, value = torch.func.grad_and_value(flat)(theta)
    return float(value), gradient


Accepted = tuple[torch.Tensor, float, torch.Tensor]


#: Relative cut-offs ``c / max|lambda|`` of the truncated pseudo-inverse steps tried when the
#: Newton-MR step fails its line search (the first, ``p eps``, is the plain ``-H^+ g``).
TRUNCATION_LADDER = (1e-12, 1e-10, 1e-8, 1e-6, 1e-4, 1e-2)
#: Step halvings of the line search for the Newton step, and for each truncated step.
NEWTON_HALVINGS, TRUNCATED_HALVINGS = 40, 8


def _newton_mr_iteration(
    flat: _FlatLoss, theta: torch.Tensor, gradient: torch.Tensor, dense_limit: int
) -> Accepted | None:
    """One accepted Newton-MR step (module docstring): ``-H^+ g`` (LU where ``H`` is regular,
    MINRES above ``dense_limit``), then truncated pseudo-inverse steps, then ``-H g``;
    ``None`` when none decreases ``||g||``."""
    if theta.numel() > dense_limit:
        step = -_krylov_solve(lambda v: flat.hvp(theta, v), gradient, "minres")
        accepted = _armijo_on_gradient_norm(flat, theta, gradient, step, NEWTON_HALVINGS)
        if accepted is not None:
            return accepted
        hg = flat.hvp(theta, gradient)
        return _steepest_descent_of_gradient_norm(flat, theta, gradient, hg, flat.hvp(theta, hg))
    hessian = flat.hessian(theta)
    step, info = torch.linalg.solve_ex(hessian, -gradient)
    residual = torch.linalg.vector_norm(hessian @ step + gradient)
    regular = (
        int(info) == 0 and bool(torch.isfinite(step).all()) and residual <= 1e-10 * gradient.norm()
    )
    if regular:  # then -H^{-1} g is -H^+ g: the first cut-off's step, already tried here
        accepted = _armijo_on_gradient_norm(flat, theta, gradient, step, NEWTON_HALVINGS)
        if accepted is not None:
            return accepted
    values, vectors = torch.linalg.eigh(hessian)
    largest = float(values.abs().max())
    floor = theta.numel() * torch.finfo(theta.dtype).eps  # the pseudo-inverse's cut-off
    cutoffs = ([] if regular else [floor]) + [c for c in TRUNCATION_LADDER if c > floor]
    for relative in cutoffs:
        step = _truncated_newton_step(values, vectors, gradient, relative * largest)
        accepted = _armijo_on_gradient_norm(flat, theta, gradient, step, TRUNCATED_HALVINGS)
        if accepted is not None:
            return accepted
    hg = hessian @ gradient
    return _steepest_descent_of_gradient_norm(flat, theta, gradient, hg, hessian @ hg)


def _truncated_newton_step(
    values: torch.Tensor, vectors: torch.Tensor, gradient: torch.Tensor, cutoff: float
) -> torch.Tensor:
    """``-sum_{|lambda_i| > cutoff} (v_i^T g / lambda_i) v_i`` from the eigenpairs of ``H``."""
    keep = values.abs() > cutoff
    return -(vectors[:, keep] @ ((vectors[:, keep].T @ gradient) / values[keep]))


def _steepest_descent_of_gradient_norm(
    flat: _FlatLoss,
    theta: torch.Tensor,
    gradient: torch.Tensor,
    hg: torch.Tensor,
    hhg: torch.Tensor,
) -> Accepted | None:
    """Armijo along ``-H g`` (the gradient of ``||g||^2 / 2``) from the Cauchy step of the
    model ``||g + H p||^2``, ``t = ||H g||^2 / ||H^2 g||^2``."""
    curvature = float(hhg @ hhg)
    if not (curvature > 0 and math.isfinite(curvature)):
        return None
    step = -(float(hg @ hg) / curvature) * hg
    return _armijo_on_gradient_norm(flat, theta, gradient, step, NEWTON_HALVINGS)


def _curvature_scale(flat: _FlatLoss, theta: torch.Tensor, products: int = 20) -> float:
    """``||H||_2 max(1, ||theta||)``, the scale of the tolerances (module docstring):
    ``||H||_2`` by ``products`` steps of power iteration (a lower bound)."""
    generator = torch.Generator().manual_seed(0)
    vector = torch.randn(theta.numel(), generator=generator, dtype=theta.dtype).to(theta.device)
    norm = 0.0
    for _ in range(products):
        vector = vector / vector.norm()
        image = flat.hvp(theta, vector)
        norm = float(image.norm())
        if not (norm > 0 and math.isfinite(norm)):
            return 0.0
        vector = image
    return norm * max(1.0, float(theta.norm()))


def _krylov_solve(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    rhs: torch.Tensor,
    solver: str,
    max_iter: int | None = None,
) -> torch.Tensor:
    from scipy.sparse.linalg import LinearOperator, cg, minres

    size = rhs.numel()

    def apply(vector: np.ndarray) -> np.ndarray:
        as_tensor = torch.as_tensor(vector, dtype=rhs.dtype, device=rhs.device)
        return matvec(as_tensor).detach().cpu().numpy()

    operator = LinearOperator((size, size), matvec=apply, dtype=np.float64)
    routine = minres if solver == "minres" else cg
    maxiter = 4 * size if max_iter is None else max_iter
    solution, _ = routine(operator, rhs.detach().cpu().numpy(), rtol=1e-10, maxiter=maxiter)
    return torch.as_tensor(solution, dtype=rhs.dtype, device=rhs.device)


def _armijo_on_gradient_norm(
    flat: _FlatLoss,
    theta: torch.Tensor,
    gradient: torch.Tensor,
    step: torch.Tensor,
    halvings: int,
) -> Accepted | None:
    """Backtrack from the unit step (at most ``halvings`` times) until ``||g||^2`` falls by
    the Armijo fraction."""
    if not bool(torch.isfinite(step).all()):
        return None
    norm_sq = float(gradient @ gradient)
    slope = 2 * float(flat.hvp(theta, step) @ gradient)
    if not slope < 0:
        slope = -1e-4 * norm_sq  # rounding: still demand a decrease
    size = 1.0
    for _ in range(halvings):
        candidate = theta + size * step
        value, candidate_gradient = _value_and_gradient(flat, candidate)
        candidate_sq = float(candidate_gradient @ candidate_gradient)
        if math.isfinite(value) and candidate_sq <= norm_sq + 1e-4 * size * slope:
            return candidate, value, candidate_gradient
        size /= 2
    return None


def _levenberg_marquardt_step(
    flat: _FlatLoss,
    theta: torch.Tensor,
    gradient: torch.Tensor,
    damping: float | None,
    dense_limit: int,
) -> tuple[Accepted | None, float | None]:
    """One accepted LM step on ``g(theta) = 0`` (Jacobian ``H``), or ``None`` after 30
    rejected trials; returns the adapted damping."""
    small = theta.numel() <= dense_limit
    if small:
        values, vectors = torch.linalg.eigh(flat.hessian(theta))
        projected = vectors.T @ gradient
        scale = float(values.abs().max()) ** 2
    else:
        hg = flat.hvp(theta, gradient)
        scale = float(hg.norm() / max(float(gradient.norm()), 1e-300)) ** 2
    mu = 1e-3 * scale if damping is None else damping
    norm_sq = float(gradient @ gradient)
    factor = 2.0
    for _ in range(30):
        if small:
            step = -(vectors @ (values * projected / (values**2 + mu)))
            predicted_residual = gradient + vectors @ (values * (vectors.T @ step))
        else:

            def normal(v: torch.Tensor, mu: float = mu) -> torch.Tensor:
                return flat.hvp(theta, flat.hvp(theta, v)) + mu * v

            step = -_krylov_solve(normal, hg, "cg")
            predicted_residual = gradient + flat.hvp(theta, step)
        value, candidate_gradient = _value_and_gradient(flat, theta + step)
        actual = norm_sq - float(candidate_gradient @ candidate_gradient)
        predicted = norm_sq - float(predicted_residual @ predicted_residual)
        if math.isfinite(value) and predicted > 0 and actual > 1e-4 * predicted:
            gain = actual / predicted
            mu *= max(1 / 3, 1 - (2 * gain - 1) ** 3)
            return (theta + step, value, candidate_gradient), mu
        mu = max(mu * factor, 1e-12 * scale, 1e-300)
        factor *= 2
    return None, mu


@dataclass(frozen=True)
class CriticalPoint:
    """The classification of a point by its gradient and Hessian spectrum.

    Attributes:
        gradient_norm: ``||nabla L||_2``.
        loss: ``L``.
        kind: ``minimum``, ``maximum``, ``saddle``, ``degenerate`` or ``not critical``.
        morse_index: the number of negative eigenvalues (``None`` when only extreme
            eigenvalues were computed, i.e. above ``dense_limit`` parameters).
        nullity: the number of eigenvalues with ``|lambda| <= zero_tol`` or unresolved
            (``None`` likewise).
        min_eigenvalue, max_eigenvalue: the extreme Hessian eigenvalues.
        zero_tol: the tolerance below which an eigenvalue counts as zero.
        gradient_tol: the gradient norm above which the point is ``not critical``:
            ``max(min(grad_tol, grad_rtol s), eps s)``, ``s = max|lambda| max(1, ||theta||)``.
        eigenvalues: every eigenvalue (ascending) when dense, else the extreme ones found.
        unresolved: how many of ``eigenvalues`` exceed ``zero_tol`` but move by more than a
            quarter of themselves between ``theta`` and the Newton estimate of the critical
            point (module docstring); they count as zero.
        exact: whether the whole spectrum was computed (dense ``eigh``).
        converged: the eigenvalues are exact, or the Lanczos pairs met their tolerance.
            From Lanczos, ``saddle`` and ``maximum`` / ``minimum`` rest on extreme Ritz
            values: a Ritz value lies inside the spectrum, so a negative smallest and a
            positive largest one prove a saddle, while ``minimum`` means only that no
            negative eigenvalue was found.
    """

    gradient_norm: float
    loss: float
    kind: Kind
    morse_index: int | None
    nullity: int | None
    min_eigenvalue: float
    max_eigenvalue: float
    zero_tol: float
    eigenvalues: torch.Tensor
    exact: bool
    converged: bool = True
    gradient_tol: float = math.nan
    unresolved: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "gradient_norm": self.gradient_norm,
            "loss": self.loss,
            "kind": self.kind,
            "morse_index": self.morse_index,
            "nullity": self.nullity,
            "min_eigenvalue": self.min_eigenvalue,
            "max_eigenvalue": self.max_eigenvalue,
            "zero_tol": self.zero_tol,
            "exact": self.exact,
            "converged": self.converged,
            "gradient_tol": self.gradient_tol,
            "unresolved": self.unresolved,
        }


def classify(
    loss_fn: Callable[[Any], torch.Tensor],
    params: Params,
    *,
    grad_tol: float = 1e-8,
    grad_rtol: float = 1e-8,
    rtol: float = 1e-8,
    dense_limit: int = DENSE_LIMIT,
    seed: int = 0,
) -> CriticalPoint:
    """Classify ``params`` by the gradient norm and the Hessian spectrum (module docstring).

    Eigenvalues below ``zero_tol = max(rtol, p eps) * max|lambda|`` in magnitude count as
    zero; the point is critical when ``||g|| <= max(min(grad_tol, grad_rtol s), eps s)``,
    ``s = max|lambda| max(1, ||theta||)``. Up to ``dense_limit`` parameters the whole
    spectrum is computed (Morse index and nullity exact); above, the extreme eigenvalues by
    Lanczos decide the kind (a minimum needs the smallest > ``zero_tol``, a saddle one of
    each sign) and the index is ``None``.
    """
    if not (grad_tol >= 0 and grad_rtol >= 0 and rtol >= 0):
        raise CurvatureError(
            f"need grad_tol, grad_rtol and rtol >= 0, got {grad_tol}, {grad_rtol}, {rtol}"
        )
    flat = _FlatLoss(loss_fn, params)
    theta = flat.theta0
    value, gradient = _value_and_gradient(flat, theta)
    if not math.isfinite(value) or not bool(torch.isfinite(gradient).all()):
        raise CurvatureError(f"the loss or its gradient is not finite at params ({value})")
    size = theta.numel()
    exact = size <= dense_limit
    converged = True
    hessian = flat.hessian(theta) if exact else None
    if hessian is not None:
        eigenvalues, vectors = torch.linalg.eigh(hessian)
    else:

        def matvec(vector: torch.Tensor) -> torch.Tensor:
            return flat.hvp(theta, vector)

        pairs = lanczos_eigenpairs(
            matvec,
            size,
            2,
            which="both",
            tol=1e-8,
            seed=seed,
            dtype=theta.dtype,
            device=theta.device,
        )
        order = torch.argsort(pairs.values)
        eigenvalues, vectors = pairs.values[order], pairs.vectors[:, order]
        converged = pairs.converged
    if not bool(torch.isfinite(eigenvalues).all()):
        raise CurvatureError("the Hessian has non-finite entries at params")
    spectral_norm = float(eigenvalues.abs().max())
    zero_tol = max(rtol, size * torch.finfo(theta.dtype).eps) * spectral_norm
    smallest, largest = float(eigenvalues[0]), float(eigenvalues[-1])
    gradient_norm = float(gradient.norm())
    # the absolute tolerance, the relative one where the loss is flat, or the rounding floor
    # where it is steep (module docstring)
    scale = spectral_norm * max(1.0, float(theta.norm()))
    gradient_tol = max(min(grad_tol, grad_rtol * scale), torch.finfo(theta.dtype).eps * scale)
    critical = gradient_norm <= gradient_tol
    zero = eigenvalues.abs() <= zero_tol
    unresolved = torch.zeros_like(zero)
    if critical and gradient_norm > 0:
        unresolved = ~zero & _moves_toward_critical_point(
            flat, theta, gradient, eigenvalues, vectors, zero_tol, hessian
        )
    zero = zero | unresolved
    negative, positive = (eigenvalues < 0) & ~zero, (eigenvalues > 0) & ~zero
    kind: Kind
    if not critical:
        kind = "not critical"
    elif bool(negative.any()) and bool(positive.any()):
        kind = "saddle"
    elif bool(positive.all()):
        kind = "minimum"
    elif bool(negative.all()):
        kind = "maximum"
    else:
        kind = "degenerate"
    return CriticalPoint(
        gradient_norm=gradient_norm,
        loss=value,
        kind=kind,
        morse_index=int(negative.sum()) if exact else None,
        nullity=int(zero.sum()) if exact else None,
        min_eigenvalue=smallest,
        max_eigenvalue=largest,
        zero_tol=zero_tol,
        eigenvalues=eigenvalues,
        exact=exact,
        converged=converged,
        gradient_tol=gradient_tol,
        unresolved=int(unresolved.sum()),
    )


def _moves_toward_critical_point(
    flat: _FlatLoss,
    theta: torch.Tensor,
    gradient: torch.Tensor,
    eigenvalues: torch.Tensor,
    vectors: torch.Tensor,
    zero_tol: float,
    hessian: torch.Tensor | None,
    max_steps: int = 8,
) -> torch.Tensor:
    """Which eigenvalues shrink toward zero by more than a quarter at every one of up to
    ``max_steps`` Newton estimates of the critical point (module docstring): a degenerate
    direction's eigenvalue shrinks geometrically (by half or more per step), a
    non-degenerate one settles once Newton converges quadratically."""
    signs = torch.sign(eigenvalues)
    current = eigenvalues.abs()  # |lambda_i|, then sign(lambda_i) v_i^T H v_i per estimate
    shrinking = current > zero_tol
    point, g = theta, gradient  # hessian: the dense H(theta), or None (Lanczos path)
    for _ in range(max_steps):
        if not bool(shrinking.any()):
            break
        if hessian is not None:  # theta's eigenpairs are known; later points' are not
            values, basis = (eigenvalues, vectors) if point is theta else torch.linalg.eigh(hessian)
            step = _truncated_newton_step(values, basis, g, zero_tol)
        else:
            # an estimate of the way to the critical point: 200 products at most per step
            step = -_krylov_solve(functools.partial(flat.hvp, point), g, "minres", 200)
            cap = float(g.norm()) / zero_tol  # no larger than the step of a zero_tol eigenvalue
            if float(step.norm()) > cap:
                step = step * (cap / float(step.norm()))
        if not (bool(torch.isfinite(step).all()) and float(step.norm()) > 0):
            if point is theta:  # theta is its own estimate: nothing moves
                return torch.zeros_like(shrinking)
            break
        point = point + step
        if hessian is not None:
            hessian = flat.hessian(point)
            quotients = torch.einsum("pi,pq,qi->i", vectors, hessian, vectors)
        else:
            columns = [flat.hvp(point, vectors[:, i]) for i in range(vectors.shape[1])]
            quotients = (vectors * torch.stack(columns, dim=1)).sum(0)
        moved = signs * quotients
        shrinking = shrinking & ~(moved >= 0.75 * current)  # NaN counts as shrinking
        current = moved
        g = flat.gradient(point)
        if not bool(torch.isfinite(g).all()):
            break
    return shrinking
