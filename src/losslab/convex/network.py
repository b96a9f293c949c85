r"""Certify a trained two-layer ReLU network against the convex program (P3).

For a network ``Sequential(Linear(d, m, bias), ReLU(), Linear(m, 1, bias=False))`` and
``lam``, with objective ``L(W, alpha) = 1/(2n) ||f(X) - y||^2 + lam/2 sum_j (||w_j||^2 +
alpha_j^2)``, ``f(X) = sum_j (X w_j)_+ alpha_j`` (rows ``x_i`` of ``X`` carry a 1 for the
bias):

- stationarity, first order: the steepest one-sided descent rate
  ``rho = max(0, -min_{||v|| = 1} L'(theta; v))`` of ``L`` at ``theta = (W, alpha)``
  (``stationarity_residual``): ``rho = 0`` exactly when no direction lowers ``L`` to first
  order, and ``rho > 0`` exhibits one. With ``q = (f(X) - y) / n``, the kink points
  ``K_j = {i : x_i . w_j = 0}`` of neuron ``j`` and ``c_ij = alpha_j q_i``,

      ``L'(theta; V, beta) = g_alpha . beta + sum_j phi_j(v_j)``,
      ``phi_j(v) = g_j . v + sum_{i in K_j} c_ij (x_i . v)_+``,

  with the gradient off the kinks ``g_alpha_j = (X w_j)_+ . q + lam alpha_j`` and
  ``g_j = alpha_j sum_{i : x_i . w_j > 0} q_i x_i + lam w_j`` (what autograd returns, with
  ``ReLU'(0) = 0``). The blocks separate and ``phi_j`` is positively homogeneous, so
  ``rho^2 = ||g_alpha||^2 + sum_j rho_j^2``, ``rho_j = max(0, -min_{||v|| <= 1} phi_j(v))``.
  A convex kink (``c_ij > 0``) contributes ``c_ij [0, 1] x_i`` to the subdifferential (the
  Clarke choice ``ReLU'(0) in [0, 1]``); a concave one (``c_ij < 0``) is
  ``min_{s in {0, 1}} s c_ij x_i . v``, so ``phi_j`` is the least, over subsets ``S`` of
  the concave kinks ``N_j``, of convex functions whose subdifferentials at 0 are
  ``Z_S = g_j + sum_{i in S} c_ij x_i + sum_{i in P_j} [0, 1] c_ij x_i`` (``P_j`` the
  convex kinks), and ``-min_{||v|| <= 1}`` of each is ``dist(0, Z_S)``:

      ``rho_j = max_S min_{s in [0, 1]^{P_j}} ||g_j + sum_{i in S} c_ij x_i +
      sum_{i in P_j} s_i c_ij x_i||``,

  a bounded least squares per ``S``. The maximum of this convex function of
  ``sum_S c_ij x_i`` is at a vertex of the zonotope ``sum_{N_j} [0, 1] c_ij x_i``, so ``S``
  ranges over the activation patterns of the points ``c_ij x_i`` (every subset when they
  are linearly independent, as for data in general position) and the empty set. Without
  concave kinks ``rho`` is the distance of 0 from the Clarke subdifferential; a concave
  kink can be Clarke stationary and still give a descent direction. A point counts as a
  kink when ``|x_i . w_j| <= kink_tol ||x_i|| ||w_j||`` (its hyperplane within
  ``kink_tol ||w_j||`` of ``w_j``), so neurons that sit at kinks up to the rounding of a
  solver are judged there. The network is stationary when ``rho R <= stationarity_tol
  L`` with ``R = sqrt(2 L / lam)``, the largest ``||theta||`` (``||theta||^2 = ||W||^2 +
  ||alpha||^2``) at which the objective can be ``L``: moving the parameters by a fraction
  ``t`` of that scale lowers the objective by at most a fraction ``stationarity_tol t``,
  to first order (a scale in ``||theta||`` itself would pass any network near 0); and
  when its gap to the optimum over its own patterns (below) is at most
  ``max(stationarity_tol, tol)``, which every stationary point attains. This is a
  first-order measure, so it goes like the square root of an objective gap: a neuron
  unbalanced by 1.001 (``w (1 + e)``, ``alpha / (1 + e)``) has a relative objective gap
  near ``1e-7`` and a relative ``rho`` near ``1e-3``, and a network recovered from a
  convex solve is stationary only to that solve's accuracy (solve to ``tol=1e-9``).
  Where a neuron's
  concave kinks have too many patterns to enumerate they are sampled, ``rho`` is a lower
  bound, and stationarity is never claimed. The autograd gradient norm is reported too,
  but does not decide: optimal ReLU networks have neurons exactly at kinks, where it need
  not vanish;
- the optimum over the network's *own* patterns ``D_j = 1[X w_j >= 0]``: every
  stationary point of the training problem is optimal for this sub-sampled ReLU-form
  program (Mishkin & Pilanci 2023), so a stationary network attains it. The converse
  fails: the program holds a kink point on the active side, and a network optimal over
  its own patterns can still descend by moving a kink point across (``rho > 0``);
- the global optimum: the program over every pattern (enumerated when the data allow;
  otherwise the network's and a large sample of patterns). Its dual objective is a
  rigorous lower bound on the global optimum when enumerated, and the network's gap to it
  bounds how far the network is from globally optimal.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from itertools import product
from typing import Any, Literal

import numpy as np
import torch
from scipy.optimize import lsq_linear
from torch import nn

from losslab.convex.patterns import (
    activation_patterns,
    network_patterns,
    sample_gates,
    try_enumerate_patterns,
    unique_patterns,
)
from losslab.convex.program import ConvexReLUProgram
from losslab.convex.solvers import solve
from losslab.convex.validation import as_features, as_target, check_lam
from losslab.errors import ConvexProblemError

#: Up to this many concave kink points on a neuron, every subset of them is tried (the
#: vertices of their zonotope are among the subset sums); beyond, their patterns.
ALL_SUBSETS = 10


@dataclass(frozen=True)
class NetworkCertificate:
    """What is known about a trained network (module docstring). Gaps are relative to
    the network's objective; ``global_gap`` is rigorous when ``global_check`` is
    ``"enumerated"``."""

    objective: float
    gradient_norm: float
    stationarity_residual: float
    is_stationary: bool
    n_neurons: int
    own_patterns: int
    own_optimum: float
    own_gap: float
    global_check: Literal["enumerated", "sampled"]
    global_lower_bound: float
    global_optimum: float
    global_gap: float
    is_global: bool
    message: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def network_parameters(net: nn.Module) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """``(W, alpha, bias)`` of ``Sequential(Linear, ReLU, Linear(m, 1, bias=False))``;
    ``W`` (m, d) or (m, d + 1) with the first layer's bias as its last column."""
    layers = list(net.children()) if isinstance(net, nn.Sequential) else []
    first, middle, second = layers if len(layers) == 3 else (None, None, None)
    if not (
        isinstance(first, nn.Linear)
        and isinstance(middle, nn.ReLU)
        and isinstance(second, nn.Linear)
        and second.out_features == 1
        and second.bias is None
    ):
        got = f"Sequential({', '.join(map(repr, layers))})" if layers else type(net).__name__
        why = ""
        if isinstance(second, nn.Linear) and second.bias is not None:
            why = (" The output layer has a bias, which the convex reformulation (P3) does "
                   "not have: build it with Linear(m, 1, bias=False).")  # fmt: skip
        elif isinstance(second, nn.Linear) and second.out_features != 1:
            why = f" The output layer has {second.out_features} outputs: certify one at a time."
        raise ConvexProblemError(
            f"expected Sequential(Linear(d, m), ReLU(), Linear(m, 1, bias=False)); got {got}.{why}"
        )
    W = first.weight.detach().to(torch.float64)
    if first.bias is not None:
        W = torch.cat([W, first.bias.detach().to(torch.float64)[:, None]], dim=1)
    return W, second.weight.detach().to(torch.float64)[0], first.bias is not None


def certify_network(
    net: nn.Module,
    X: Any,
    y: Any,
    lam: float,
    *,
    tol: float = 1e-6,
    stationarity_tol: float = 1e-5,
    kink_tol: float = 1e-6,
    max_iter: int = 20_000,
    max_enumerated: int = 20_000,
    n_gates: int = 2000,
    seed: int = 0,
) -> NetworkCertificate:
    """Certificate of a trained network (module docstring); ``tol`` is the relative gap
    at which the convex programs stop and under which a gap counts as zero. The network
    is stationary when its steepest first-order descent rate ``rho``
    (``stationarity_residual``) satisfies ``rho sqrt(2 L / lam) <= stationarity_tol L``
    and its gap to the optimum over its own patterns is at most ``max(stationarity_tol,
    tol)`` (module docstring);
    ``kink_tol`` is the distance of a kink, relative to ``||w_j||``, within which a point
    counts as on it. ``max_enumerated``, ``n_gates`` and ``seed`` bound the pattern
    enumerations (of the data, and of a neuron's kink points) and the samples that
    replace them."""
    W, alpha, features, target = _network_and_data(net, X, y, lam)
    # the own-pattern program is small: solved ten times finer than tol
    own = _own_pattern_gap(W, alpha, features, target, lam, tol / 10, max_iter)
    objective, gradient_norm, own_optimum = own.objective, own.gradient_norm, own.own_optimum
    rho, exact = _steepest_descent_rate(
        W, alpha, features, target, lam, kink_tol, max_enumerated, n_gates, seed
    )
    # R = sqrt(2 L / lam) bounds ||theta|| wherever the objective is at most L: a scale
    # that does not shrink with the network (||theta|| did, and so passed tiny networks)
    radius = math.sqrt(2 * objective / lam)
    threshold = stationarity_tol * objective / radius
    small = rho <= threshold and own.own_gap <= max(stationarity_tol, tol)
    is_stationary = exact and small
    check: Literal["enumerated", "sampled"] = "sampled"
    enumerated = try_enumerate_patterns(features, max_patterns=max_enumerated)
    if enumerated is not None:
        check, patterns = "enumerated", enumerated
    else:
        sampled = activation_patterns(features, sample_gates(features.shape[1], n_gates, seed=seed))
        check = "sampled"
        patterns = unique_patterns(features, torch.cat([own.patterns, sampled], dim=1))
    full = solve(
        ConvexReLUProgram(features, target, patterns, lam, "relu"), tol=tol, max_iter=max_iter
    )
    scale = max(abs(objective), 1e-300)
    global_gap = max(objective - full.dual_objective, 0.0) / scale
    is_global = check == "enumerated" and global_gap <= 10 * tol
    state = "stationary" if is_stationary else "not stationary"
    if small and not exact:
        state = "stationarity undecided (too many kink patterns to enumerate)"
    message = (
        f"{state}: steepest first-order descent rate {rho:.1e}"
        + ("" if exact else " or more")
        + f" ({'at most' if rho <= threshold else 'above'} stationarity_tol "
        f"sqrt(lam L / 2) = {threshold:.1e}; gradient norm {gradient_norm:.1e}); "
        f"{own.own_gap:.1e} above the optimum over "
        f"its own {own.own_patterns} patterns; "
        + (f"{global_gap:.1e} above the global optimum (all {patterns.shape[1]} patterns)"
           if check == "enumerated" else
           f"{global_gap:.1e} above the optimum over {patterns.shape[1]} sampled patterns")
    )  # fmt: skip
    return NetworkCertificate(
        objective=objective,
        gradient_norm=gradient_norm,
        stationarity_residual=rho,
        is_stationary=is_stationary,
        n_neurons=own.n_neurons,
        own_patterns=own.own_patterns,
        own_optimum=own_optimum,
        own_gap=own.own_gap,
        global_check=check,
        global_lower_bound=full.dual_objective,
        global_optimum=full.objective,
        global_gap=global_gap,
        is_global=is_global,
        message=message,
    )


@dataclass(frozen=True)
class OwnPatternGap:
    """A network's objective, gradient norm, and the optimum of the ReLU-form program over
    its own neurons' patterns. ``own_gap`` is ``objective`` minus the solve's dual bound
    (a lower bound on that optimum), relative to the objective: an upper bound on how far
    the network is above it; ``own_converged`` says whether the solve met its tolerance."""

    objective: float
    gradient_norm: float
    n_neurons: int
    own_patterns: int
    own_optimum: float
    own_gap: float
    patterns: torch.Tensor
    own_converged: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "patterns"}


def own_pattern_gap(
    net: nn.Module, X: Any, y: Any, lam: float, *, tol: float = 1e-8, max_iter: int = 20_000
) -> OwnPatternGap:
    """How far ``net`` is above the optimum of the convex program over its own patterns
    (cheap: one program with at most as many patterns as neurons). Every stationary point
    of the training problem attains that optimum (P3)."""
    lam = check_lam(lam)
    W, alpha, features, target = _network_and_data(net, X, y, lam)
    return _own_pattern_gap(W, alpha, features, target, lam, tol, max_iter)


def _network_and_data(
    net: nn.Module, X: Any, y: Any, lam: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(W, alpha, features, target)``, validated (features with the bias column)."""
    check_lam(lam)
    W, alpha, bias = network_parameters(net)
    features = as_features(X, bias=bias).to(torch.float64)  # certificates in float64
    target = as_target(y, features).to(torch.float64)
    if W.shape[1] != features.shape[1]:
        raise ConvexProblemError(f"the network takes {W.shape[1] - bias} features; X has "
                                 f"{features.shape[1] - bias}")  # fmt: skip
    return W, alpha, features, target


def _own_pattern_gap(
    W: torch.Tensor,
    alpha: torch.Tensor,
    features: torch.Tensor,
    target: torch.Tensor,
    lam: float,
    tol: float,
    max_iter: int,
) -> OwnPatternGap:
    objective, gradient_norm = _objective_and_gradient(W, alpha, features, target, lam)
    live = (W.norm(dim=1) > 0) & (alpha != 0)
    own = network_patterns(features, W[live])
    own_optimum = own_lower_bound = float(target.square().sum()) / (2 * target.shape[0])
    converged = True
    if own.shape[1]:
        result = solve(
            ConvexReLUProgram(features, target, own, lam, "relu"), tol=tol, max_iter=max_iter
        )
        own_optimum, own_lower_bound, converged = (
            result.objective,
            result.dual_objective,
            result.converged,
        )
    # against the dual bound: an upper bound on the gap, whatever the solve's accuracy
    gap = max(objective - own_lower_bound, 0.0) / max(abs(objective), 1e-300)
    return OwnPatternGap(objective, gradient_norm, int(live.sum()), int(own.shape[1]),
                         own_optimum, gap, own, converged)  # fmt: skip


def _objective_and_gradient(
    W: torch.Tensor, alpha: torch.Tensor, X: torch.Tensor, y: torch.Tensor, lam: float
) -> tuple[float, float]:
    """``L(W, alpha)`` and the norm of its gradient off the kinks (``g_alpha``, ``g_j`` of
    the module docstring, ``ReLU'(0) = 0`` as autograd takes it), in closed form: no
    autograd, so it also runs under ``torch.no_grad()`` and ``torch.inference_mode()``."""
    pre = X @ W.T
    residual = torch.relu(pre) @ alpha - y
    value = residual.square().sum() / (2 * X.shape[0]) + lam / 2 * (
        W.square().sum() + alpha.square().sum()
    )
    q = residual / X.shape[0]
    grad_alpha = torch.relu(pre).T @ q + lam * alpha
    grad_W = alpha[:, None] * ((pre > 0).to(q) * q[:, None]).T @ X + lam * W
    return float(value), float(torch.cat([grad_W.flatten(), grad_alpha]).norm())


def _steepest_descent_rate(
    W: torch.Tensor,
    alpha: torch.Tensor,
    X: torch.Tensor,
    y: torch.Tensor,
    lam: float,
    kink_tol: float,
    max_enumerated: int,
    n_gates: int,
    seed: int,
) -> tuple[float, bool]:
    """``(rho, exact)``: the steepest one-sided descent rate ``rho`` of ``L`` at
    ``(W, alpha)`` (module docstring: ``rho^2 = ||g_alpha||^2 + sum_j rho_j^2``), and
    whether every neuron's concave-kink patterns were enumerated (if not, the patterns
    are sampled and ``rho`` is a lower bound)."""
    pre = X @ W.T
    q = (torch.relu(pre) @ alpha - y) / X.shape[0]
    norms = X.norm(dim=1)[:, None]
    # rows x_i = 0 have no kink: (x_i . w)_+ = 0 for every w
    kink = (pre.abs() <= kink_tol * norms * W.norm(dim=1)[None, :]) & (norms > 0)
    grad_alpha = torch.relu(pre).T @ q + lam * alpha
    # g_j: the gradient in w_j from the points off the kinks
    grad_W = alpha[:, None] * (((pre > 0) & ~kink).to(q) * q[:, None]).T @ X + lam * W
    features, grads = X.cpu().numpy(), grad_W.cpu().numpy()
    squares, exact = float(grad_alpha.square().sum()), True
    for j in range(W.shape[0]):
        c = (alpha[j] * q * kink[:, j]).cpu().numpy()  # c_ij, zero off the kinks
        convex = features[c > 0] * c[c > 0, None]  # rows c_ij x_i, i in P_j
        concave = features[c < 0] * c[c < 0, None]  # rows c_ij x_i, i in N_j
        vertices, enumerated = _zonotope_vertices(concave, max_enumerated, n_gates, seed)
        exact = exact and enumerated
        rho_j = max(_distance_to_box_sum(grads[j] + vertex, convex) for vertex in vertices)
        squares += rho_j**2
    return math.sqrt(squares), exact


def _zonotope_vertices(
    rows: np.ndarray, max_enumerated: int, n_gates: int, seed: int
) -> tuple[np.ndarray, bool]:
    """Points ``sum_{i in S} b_i`` of the zonotope ``sum_i [0, 1] b_i`` (``b_i`` the rows)
    that include its vertices, and whether they were enumerated rather than sampled.
    ``S`` runs over every subset for up to :data:`ALL_SUBSETS` rows; otherwise over the
    activation patterns ``{i : b_i . v >= 0}`` of the rows (for generic ``v``: the
    vertices) and the empty set. Points that are not vertices are harmless: they lie in
    the zonotope, and the maximum sought is at a vertex."""
    k = rows.shape[0]
    if k <= ALL_SUBSETS:
        subsets = np.array(list(product((0.0, 1.0), repeat=k))).reshape(2**k, k)
        return subsets @ rows, True
    points = torch.from_numpy(rows)
    patterns = try_enumerate_patterns(points, max_patterns=max_enumerated)
    exact = patterns is not None
    if patterns is None:
        patterns = activation_patterns(points, sample_gates(rows.shape[1], n_gates, seed=seed))
    subsets = np.vstack([np.zeros((1, k)), patterns.T.to(points).numpy()])
    return subsets @ rows, exact


def _distance_to_box_sum(h: np.ndarray, rows: np.ndarray) -> float:
    """``min_{s in [0, 1]^k} ||h + sum_i s_i b_i||`` for the rows ``b_i``: a bounded least
    squares (BVLS, exact up to rounding)."""
    if rows.shape[0] == 0:
        return float(np.linalg.norm(h))
    s = lsq_linear(rows.T, -h, bounds=(0.0, 1.0), method="bvls").x
    return float(np.linalg.norm(h + rows.T @ s))
