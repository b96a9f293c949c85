r"""Certify a trained two-layer ReLU network against the convex program (P3).

For a network ``Sequential(Linear(d, m, bias), ReLU(), Linear(m, 1, bias=False))`` and
``lam``, with objective ``1/(2n) ||f(X) - y||^2 + lam/2 sum_j (||w_j||^2 + alpha_j^2)``:

- the optimum over the network's *own* patterns ``D_j = 1[X w_j >= 0]``: every
  stationary point of the training problem is optimal for this sub-sampled ReLU-form
  program (Mishkin & Pilanci 2023), so a trained network that converged attains it;
- stationarity, as the KKT conditions of that program: the network (its convex image)
  is stationary when its objective is within ``stationarity_tol`` (relative) of the
  program's dual bound, a lower bound on its optimum (never when that solve did not
  converge). The norm of the autograd gradient is reported too, but does not
  decide: optimal ReLU networks have neurons exactly at their kinks (pre-activations 0,
  where autograd takes ``ReLU'(0) = 0``), and there the gradient need not vanish;
- the global optimum: the program over every pattern (enumerated when the data allow;
  otherwise the network's and a large sample of patterns). Its dual objective is a
  rigorous lower bound on the global optimum when enumerated, and the network's gap to it
  bounds how far the network is from globally optimal.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import nn

from losslab.convex.patterns import (
    activation_patterns,
    network_patterns,
    sample_gates,
    try_enumerate_patterns,
    unique_patterns,
)
from losslab.convex.program import ConvexReLUProgram
from losslab.convex.recovery import ReLUNetwork
from losslab.convex.solvers import solve
from losslab.convex.validation import as_features, as_target, check_lam
from losslab.errors import ConvexProblemError


@dataclass(frozen=True)
class NetworkCertificate:
    """What is known about a trained network (module docstring). Gaps are relative to
    the network's objective; ``global_gap`` is rigorous when ``global_check`` is
    ``"enumerated"``."""

    objective: float
    gradient_norm: float
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
    stationarity_tol: float = 1e-6,
    max_iter: int = 20_000,
    max_enumerated: int = 20_000,
    n_gates: int = 2000,
    seed: int = 0,
) -> NetworkCertificate:
    """Certificate of a trained network (module docstring); ``tol`` is the relative gap
    at which the convex programs stop and under which a gap counts as zero;
    ``stationarity_tol`` the relative gap to the own-pattern optimum under which the
    network is stationary (the program's KKT conditions hold)."""
    W, alpha, features, target = _network_and_data(net, X, y, lam)
    # the own-pattern program is small: solved well below the stationarity tolerance
    own_tol = min(tol, stationarity_tol / 10)
    own = _own_pattern_gap(W, alpha, features, target, lam, own_tol, max_iter)
    objective, gradient_norm, own_optimum = own.objective, own.gradient_norm, own.own_optimum
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
    is_stationary = own.own_converged and own.own_gap <= stationarity_tol
    state = "stationary" if is_stationary else "not stationary"
    message = (
        f"{state}: {own.own_gap:.1e} above the optimum over its own {own.own_patterns} "
        f"patterns (gradient norm {gradient_norm:.1e}); "
        + (f"{global_gap:.1e} above the global optimum (all {patterns.shape[1]} patterns)"
           if check == "enumerated" else
           f"{global_gap:.1e} above the optimum over {patterns.shape[1]} sampled patterns")
    )  # fmt: skip
    return NetworkCertificate(
        objective=objective,
        gradient_norm=gradient_norm,
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
    W, alpha = W.clone().requires_grad_(True), alpha.clone().requires_grad_(True)
    network = ReLUNetwork(W, alpha)
    residual = network.predict(X) - y
    value = residual.square().sum() / (2 * X.shape[0]) + lam / 2 * (
        W.square().sum() + alpha.square().sum()
    )
    grad_W, grad_alpha = torch.autograd.grad(value, (W, alpha))
    return float(value.detach()), float(torch.cat([grad_W.flatten(), grad_alpha]).norm())
