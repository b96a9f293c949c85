r"""Piecewise strong convexity of ReLU networks with weight decay (Milne 2019, P4).

**Setting.** A ReLU MLP ``f(x) = A_L s(A_{L-1} ... s(A_1 x))`` (``s`` the ReLU, ``A_l`` affine
with weight ``W_l`` and bias ``b_l``; ``L - 1`` hidden layers), data ``(x_i, y_i)``,
``i = 1..n``, targets in ``R^m``, and the regularised squared loss

.. math::  \mathcal{L}(\theta) = E(\theta) + \frac{\lambda}{2} \|\theta\|^2, \qquad
           E(\theta) = \frac{1}{2n} \sum_i \|r_i\|^2, \quad r_i = f(x_i) - y_i,

with weight decay ``lambda`` on every parameter, biases included. ``E`` is the
*training error*.

**Regions.** Each sample's activation pattern (which hidden units are positive) is fixed
on an open set of parameters, its *activation region*; there ``f(x_i)`` is a polynomial in
``theta`` (a product of the layers' masked matrices), so ``L`` is smooth and

.. math::  \nabla^2 \mathcal{L} = \lambda I + \frac1n \sum_i J_i^T J_i
           + \frac1n \sum_i \sum_k r_{ik} \nabla^2 f_k(x_i).

The middle term is positive semidefinite, so ``lambda_min(nabla^2 L) >= lambda - (1/n)
sum_i ||r_i|| B_i`` with ``B_i`` any bound on the operator norm of ``u -> d^2 f(x_i)[u, u]``
over unit ``u`` (the output-space vector of second directional derivatives).

**The bound** ``B_i`` (derived here; P4's own constant is not reproduced). Carry the bias
in an extra coordinate: ``x~ = (x, 1)``, ``W~_l = [[W_l, b_l], [0, 1]]`` for hidden layers,
``[W_l, b_l]`` for the last. In a region, ``f(x) = W~_L D~_{L-1} W~_{L-1} ... D~_1 W~_1 x~``
with 0/1 diagonal masks (``||D~|| <= 1``), multilinear in the layers. A direction ``u``
perturbs layer ``l`` by ``U_l`` (zero last row), with ``s_l = ||U_l||_F``,
``sum s_l^2 = 1``; the second derivative replaces two distinct layers by their
perturbations:

.. math::  \|d^2 f[u, u]\| \le \sum_{a \ne b} s_a s_b \prod_{l \ne a, b} w_l \,\|\tilde x\|
           = \|\tilde x\| P\, s^T M s \le \|\tilde x\| P \lambda_{\max}(M) =: B(x),

with ``w_l = ||W~_l||_2``, ``P = prod_l w_l`` and ``M_ab = 1 / (w_a w_b)`` for ``a != b``,
``M_aa = 0`` (an ``L x L`` matrix; computed as ``(P M)_ab = prod_{l != a, b} w_l``, which
stays right when a layer is zero). For one hidden layer ``B(x) = ||x~||``; for a linear
model ``B = 0``. ``B`` grows with depth (``lambda_max(M) P`` has ``L - 2`` norm factors and
grows like ``L - 1``).

**Threshold.** By Cauchy-Schwarz ``(1/n) sum ||r_i|| B_i <= sqrt(2 E) B_bar`` with
``B_bar^2 = (1/n) sum B_i^2``, so the region's loss is ``mu``-strongly convex with
``mu >= lambda - sqrt(2E) B_bar > 0`` whenever

.. math::  E < E^* = \frac{\lambda^2}{2 \bar B^2}

(P4's statement: below an error threshold that shrinks with depth and weight norms, the
regularised loss is strongly convex in every region, so its critical points there are
isolated local minima). :class:`RegionCertificate` reports ``E``, ``E*``, the sharper
``lambda - (1/n) sum ||r_i|| B_i``, and the true smallest eigenvalue of the in-region
Hessian for comparison.

**Margin.** A certified radius ``rho`` such that no pattern flips while
``||Delta theta||_2 < rho``: with the pattern fixed, a hidden pre-activation changes by at
most ``(||a_{l,j}|| + rho) e_{l-1} + rho ||h~_{l-1}||`` (``a_{l,j}`` row ``j`` of
``[W_l, b_l]``), where ``e_l = (||[W_l, b_l]||_2 + rho) e_{l-1} + rho ||h~_{l-1}||``,
``e_0 = 0``, bounds the change of ``h_l``; ``rho`` is the largest radius (by bisection) at
which every bound stays below ``|z|``. By continuity no pre-activation can reach zero
inside that ball.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.func import grad

from losslab.critical.points import DENSE_LIMIT
from losslab.errors import CurvatureError
from losslab.linalg.hvp import CachedHessianVectorProduct, dense_from_products
from losslab.linalg.lanczos import lanczos_eigenpairs
from losslab.linalg.model_loss import Data, ParameterLayout, as_batches, parameter_layout
from losslab.nets.hooks import has_forward_hooks


@dataclass(frozen=True)
class RegionCertificate:
    """Strong convexity of the regularised loss in the activation region of ``theta``.

    Attributes:
        training_error: ``E = (1/2n) sum ||f(x_i) - y_i||^2``.
        loss: ``E + (lambda/2) ||theta||^2``.
        weight_decay: ``lambda``.
        gradient_norm: ``||nabla L||`` (in the region, where ``L`` is smooth).
        hessian_min_eigenvalue: the smallest eigenvalue of the in-region Hessian.
        eigenvalue_exact: computed by dense ``eigvalsh``; else a Lanczos Ritz value, an
            upper bound of the smallest eigenvalue (used when it proves a negative
            eigenvalue, or above ``dense_limit`` parameters).
        strongly_convex: proven strong convexity in the region: ``True`` when the exact
            smallest eigenvalue is positive or ``lower_bound > 0``; ``False`` when the exact
            value, or a Lanczos Ritz value (an upper bound of the smallest eigenvalue), is at
            most 0; ``None`` (undecided) when only a positive Ritz value is known.
        curvature_bound: ``(1/n) sum ||r_i|| B_i``, bounding the residual term.
        lower_bound: ``lambda - curvature_bound``, a proven lower bound of the smallest
            eigenvalue.
        error_threshold: ``E* = lambda^2 / (2 B_bar^2)``.
        below_threshold: ``E < E*`` (then strong convexity is proven).
        margin: certified parameter distance before any pattern flips.
        min_abs_preactivation: the smallest ``|z|`` over samples and hidden units.
        weight_norms: ``||W~_l||_2`` per layer (bias-augmented).
        depth: hidden layers; ``n_params``: parameters.
        patterns: per hidden layer, the (n, width) boolean activation pattern.
        critical_point_distance: ``||nabla L|| / mu`` with ``mu`` the smallest eigenvalue
            at ``theta`` (exact, or ``lower_bound``): the Newton estimate of how far the
            critical point is (exact for a quadratic; for the region's polynomial loss an
            estimate, as ``mu`` is taken at ``theta`` only). ``inf`` when strong convexity
            is not proven. A search stops at ``||nabla L|| <= tol``, near the critical
            point, not on it.
        isolated_minimum: a critical point (``gradient_norm <= grad_tol``) with a proven
            positive definite in-region Hessian (``strongly_convex is True``) strictly inside
            its region: ``margin > 2 critical_point_distance``, so the critical point the
            search approached lies in the same region (a margin of 1e-16 at a point 1e-11
            from a critical point on a region boundary proves nothing).
    """

    training_error: float
    loss: float
    weight_decay: float
    gradient_norm: float
    hessian_min_eigenvalue: float
    eigenvalue_exact: bool
    strongly_convex: bool | None
    curvature_bound: float
    lower_bound: float
    error_threshold: float
    below_threshold: bool
    margin: float
    min_abs_preactivation: float
    weight_norms: list[float]
    depth: int
    n_params: int
    patterns: list[torch.Tensor]
    isolated_minimum: bool
    critical_point_distance: float = math.inf

    def to_dict(self) -> dict[str, Any]:
        skip = {"patterns"}
        return {k: v for k, v in vars(self).items() if k not in skip}


@dataclass(frozen=True)
class _ReLUNetwork:
    """The affine layers of a ReLU MLP, by their parameter names in the flat layout."""

    weight_names: tuple[str, ...]
    bias_names: tuple[str | None, ...]
    layout: ParameterLayout


def _runs_own_forward(module: nn.Module, base: type[nn.Module]) -> bool:
    """Whether ``module`` computes exactly what ``base`` does: it keeps ``base.forward``
    and carries no forward hooks (a subclass or a hook may compute anything)."""
    return (
        type(module).forward is base.forward
        and type(module).__call__ is nn.Module.__call__
        and not has_forward_hooks(module)
    )


def _relu_layers(model: nn.Module) -> _ReLUNetwork:
    """The ``Linear`` layers of a ``Linear (ReLU [Dropout] Linear)*`` ``nn.Sequential``.

    Only what the analysis reproduces is accepted: ``nn.Sequential``, ``nn.Linear`` and
    ``nn.ReLU`` modules (or subclasses) that keep torch's own ``forward`` and carry no
    forward hooks, each ``Linear`` used once (a repeated ``ReLU`` instance is harmless)."""
    if not isinstance(model, nn.Sequential) or not _runs_own_forward(model, nn.Sequential):
        raise CurvatureError(
            "strong_convexity needs an nn.Sequential of Linear, ReLU (and Dropout) layers, "
            "with torch's own forward and no forward hooks, such as losslab.nets.ReLUMLP; "
            f"got {type(model).__name__}"
        )
    weights: list[str] = []
    biases: list[str | None] = []
    seen_linear: set[int] = set()
    expect_linear = True
    # model._modules, not named_children(): that skips a module's second appearance
    for name, module in model._modules.items():
        if module is None:
            continue
        if isinstance(module, nn.Dropout | nn.Identity):
            base = nn.Dropout if isinstance(module, nn.Dropout) else nn.Identity
            if not _runs_own_forward(module, base):
                raise CurvatureError(
                    f"layer {name} ({type(module).__name__}) overrides {base.__name__}'s "
                    "forward or carries a forward hook: strong_convexity cannot analyse it"
                )
            continue
        if isinstance(module, nn.Linear) and expect_linear:
            if not _runs_own_forward(module, nn.Linear):
                raise CurvatureError(
                    f"layer {name} ({type(module).__name__}) overrides nn.Linear's forward or "
                    "carries a forward hook: strong_convexity cannot analyse it"
                )
            if id(module) in seen_linear:
                raise CurvatureError(
                    f"layer {name} reuses a Linear module that appears earlier: shared "
                    "weights are not the Linear (ReLU Linear)* network strong_convexity "
                    "analyses"
                )
            seen_linear.add(id(module))
            weights.append(f"{name}.weight")
            biases.append(f"{name}.bias" if module.bias is not None else None)
            expect_linear = False
        elif isinstance(module, nn.ReLU) and not expect_linear:
            if not _runs_own_forward(module, nn.ReLU):
                raise CurvatureError(
                    f"layer {name} ({type(module).__name__}) overrides nn.ReLU's forward or "
                    "carries a forward hook: strong_convexity cannot analyse it"
                )
            expect_linear = True
        else:
            raise CurvatureError(
                f"layer {name} ({type(module).__name__}) breaks the Linear (ReLU Linear)* "
                "pattern that strong_convexity analyses"
            )
    if expect_linear:
        raise CurvatureError("the network must start and end with a Linear layer")
    layout = parameter_layout(model)
    missing = [n for n in (*weights, *biases) if n is not None and n not in layout.names]
    if missing or len(layout.names) != len(weights) + sum(b is not None for b in biases):
        raise CurvatureError(
            "every Linear parameter must be trainable, and only those: "
            f"layout {layout.names}, frozen or missing {missing}"
        )
    return _ReLUNetwork(tuple(weights), tuple(biases), layout)


def _affine_maps(
    network: _ReLUNetwork, named: dict[str, torch.Tensor]
) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    return [
        (named[w], None if b is None else named[b])
        for w, b in zip(network.weight_names, network.bias_names, strict=True)
    ]


def _forward_with_masks(
    maps: list[tuple[torch.Tensor, torch.Tensor | None]],
    inputs: torch.Tensor,
    masks: list[torch.Tensor] | None,
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """Outputs, hidden pre-activations and the hidden inputs ``h_{l-1}`` of each layer;
    with ``masks`` the ReLU is replaced by the fixed 0/1 masks (the region's polynomial)."""
    hidden = inputs
    preactivations: list[torch.Tensor] = []
    layer_inputs: list[torch.Tensor] = []
    for index, (weight, bias) in enumerate(maps):
        layer_inputs.append(hidden)
        z = hidden @ weight.T + (bias if bias is not None else 0)
        if index == len(maps) - 1:
            return z, preactivations, layer_inputs
        preactivations.append(z)
        hidden = z * masks[index] if masks is not None else torch.relu(z)
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class RegionObjective:
    """The weight-decayed squared loss on one activation region, as the polynomial it is.

    Attributes:
        function: ``theta -> E(theta) + (lambda/2) ||theta||^2`` with every sample's
            activation pattern frozen at ``theta0`` (ReLU replaced by fixed 0/1 masks):
            smooth everywhere, and equal to the network's loss on the region.
        theta: ``theta0``, the model's parameters, flat, float64.
        inputs, targets: the data in float64, targets as (n, m).
        patterns: per hidden layer, the (n, width) patterns at ``theta0``.
    """

    function: Callable[[torch.Tensor], torch.Tensor]
    theta: torch.Tensor
    inputs: torch.Tensor
    targets: torch.Tensor
    patterns: list[torch.Tensor]
    network: _ReLUNetwork

    def patterns_at(self, theta: torch.Tensor) -> list[torch.Tensor]:
        """The activation patterns of the network at other parameters ``theta``."""
        maps = _affine_maps(self.network, self.network.layout.unflatten(theta))
        return [z > 0 for z in _forward_with_masks(maps, self.inputs, None)[1]]

    def contains(self, theta: torch.Tensor) -> bool:
        """Whether ``theta`` lies in the same activation region as ``theta0`` (every
        pattern equal), where ``function`` is the network's loss."""
        return all(
            torch.equal(a, b) for a, b in zip(self.patterns, self.patterns_at(theta), strict=True)
        )


def region_objective(model: nn.Module, data: Data, weight_decay: float) -> RegionObjective:
    """The loss of ``model``'s activation region as a smooth function of flat parameters
    (:class:`RegionObjective`), in float64; inputs are checked as in
    :func:`strong_convexity`. Newton-type searches on ``function`` do not stall at the
    kinks of the ReLU loss; a critical point they find is one of the network's loss when
    :meth:`RegionObjective.contains` it."""
    if not weight_decay > 0 or not math.isfinite(weight_decay):
        raise CurvatureError(f"weight_decay must be a positive number, got {weight_decay}")
    network = _relu_layers(model)
    batches = as_batches(data)  # checked: pairs, rows agree, finite
    if any(b[0].ndim != 2 or b[1].ndim not in (1, 2) for b in batches):
        shapes = [(tuple(x.shape), tuple(y.shape)) for x, y in batches]
        raise CurvatureError(f"data must hold X (n, d) and Y (n, m) or (n,); got {shapes}")
    inputs = torch.cat([x.to(torch.float64) for x, _ in batches])
    targets = torch.cat([y.reshape(len(y), -1).to(torch.float64) for _, y in batches])
    layout = network.layout
    first_weight = layout.shapes[layout.names.index(network.weight_names[0])]
    if inputs.shape[1] != first_weight[1]:
        raise CurvatureError(
            f"X has {inputs.shape[1]} features but the model's first Linear layer takes "
            f"{first_weight[1]}"
        )
    params = dict(model.named_parameters())
    # a certificate: analysed in float64 whatever the model's dtype
    theta = layout.flatten({n: params[n].detach() for n in layout.names}).to(torch.float64)
    inputs = inputs.to(theta)
    targets = targets.to(theta)
    n = inputs.shape[0]
    maps = _affine_maps(network, layout.unflatten(theta))
    outputs, preactivations, _ = _forward_with_masks(maps, inputs, None)
    if outputs.shape != targets.shape:
        raise CurvatureError(f"outputs {tuple(outputs.shape)} but targets {tuple(targets.shape)}")
    masks = [(z > 0).to(theta.dtype) for z in preactivations]

    def region_loss(flat: torch.Tensor) -> torch.Tensor:
        prediction = _forward_with_masks(
            _affine_maps(network, layout.unflatten(flat)), inputs, masks
        )[0]
        return ((prediction - targets) ** 2).sum() / (2 * n) + weight_decay / 2 * (flat @ flat)

    patterns = [z > 0 for z in preactivations]
    return RegionObjective(region_loss, theta, inputs, targets, patterns, network)


def strong_convexity(
    model: nn.Module,
    data: Data,
    weight_decay: float,
    *,
    grad_tol: float = 1e-8,
    dense_limit: int = DENSE_LIMIT,
    eigenvalue_method: Literal["auto", "dense"] = "auto",
    seed: int = 0,
) -> RegionCertificate:
    """Is the weight-decayed squared loss strongly convex in ``model``'s activation region?

    Args:
        model: a ReLU MLP (``nn.Sequential`` of ``Linear``, ``ReLU`` and ``Dropout``, which
            is ignored: the deterministic network is analysed), e.g.
            :class:`losslab.nets.ReLUMLP`; use float64.
        data: ``(X, Y)`` with ``X`` (n, d) and ``Y`` (n, m) or (n,) (one output), or an
            iterable of such batches (a ``DataLoader``): the region is that of all samples.
        weight_decay: ``lambda > 0``, on every parameter.
        grad_tol: gradient norm below which the point counts as critical.
        dense_limit: the most parameters for a dense in-region Hessian.
        eigenvalue_method: ``"auto"``: Lanczos first, and the dense Hessian only when
            Lanczos does not prove a negative eigenvalue (fast; a proven-negative value is
            a Ritz value, an upper bound of the smallest eigenvalue); ``"dense"``: always
            the exact value up to ``dense_limit`` parameters.

    Returns:
        A :class:`RegionCertificate` (module docstring for each number).
    """
    objective = region_objective(model, data, weight_decay)
    theta, inputs, targets = objective.theta, objective.inputs, objective.targets
    n = inputs.shape[0]
    maps = _affine_maps(objective.network, objective.network.layout.unflatten(theta))
    outputs, preactivations, layer_inputs = _forward_with_masks(maps, inputs, None)
    region_loss = objective.function
    residuals = outputs - targets
    training_error = float((residuals**2).sum() / (2 * n))
    loss = training_error + weight_decay / 2 * float(theta @ theta)
    gradient_norm = float(grad(region_loss)(theta).norm())
    if not math.isfinite(loss):
        raise CurvatureError(f"the loss is {loss}: not finite")

    min_eigenvalue, exact = _smallest_eigenvalue(
        region_loss, theta, dense_limit, seed, probe_first=eigenvalue_method == "auto"
    )
    augmented = any(b is not None for _, b in maps)
    weight_norms = _augmented_norms(maps, augmented)
    bounds = _second_derivative_bounds(inputs, weight_norms, augmented)
    curvature_bound = float((residuals.norm(dim=1) * bounds).mean())
    mean_square_bound = float((bounds**2).mean())
    threshold = math.inf if mean_square_bound == 0 else weight_decay**2 / (2 * mean_square_bound)
    margin = _certified_margin(maps, preactivations, layer_inputs)
    min_abs = min((float(z.abs().min()) for z in preactivations), default=math.inf)
    lower_bound = weight_decay - curvature_bound
    strongly_convex: bool | None = min_eigenvalue > 0
    if not exact and min_eigenvalue > 0:  # a Ritz value bounds the smallest one from above
        strongly_convex = True if lower_bound > 0 else None
    proven_modulus = max(lower_bound, min_eigenvalue if exact else -math.inf)
    distance = gradient_norm / proven_modulus if strongly_convex else math.inf
    return RegionCertificate(
        training_error=training_error,
        loss=loss,
        weight_decay=weight_decay,
        gradient_norm=gradient_norm,
        hessian_min_eigenvalue=min_eigenvalue,
        eigenvalue_exact=exact,
        strongly_convex=strongly_convex,
        curvature_bound=curvature_bound,
        lower_bound=lower_bound,
        error_threshold=threshold,
        below_threshold=training_error < threshold,
        margin=margin,
        min_abs_preactivation=min_abs,
        weight_norms=weight_norms,
        depth=len(maps) - 1,
        n_params=theta.numel(),
        patterns=[z > 0 for z in preactivations],
        isolated_minimum=(
            gradient_norm <= grad_tol and strongly_convex is True and margin > 2 * distance
        ),
        critical_point_distance=distance,
    )


def output_hessian_bounds(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """``B(x_i)`` per row of ``inputs``: a bound on ``||d^2 f(x_i)[u, u]||_2`` over unit
    parameter directions ``u``, valid in every activation region (module docstring)."""
    network = _relu_layers(model)
    params = dict(model.named_parameters())
    maps = _affine_maps(
        network, {n: params[n].detach().to(torch.float64) for n in network.layout.names}
    )
    augmented = any(b is not None for _, b in maps)
    inputs = inputs.to(torch.float64)
    return _second_derivative_bounds(inputs, _augmented_norms(maps, augmented), augmented)


def _smallest_eigenvalue(
    function: Any, theta: torch.Tensor, dense_limit: int, seed: int, *, probe_first: bool
) -> tuple[float, bool]:
    """The smallest Hessian eigenvalue of ``function`` at ``theta`` and whether it is exact.

    With ``probe_first``, Lanczos first (a few hundred products): its smallest Ritz value
    ``t`` with residual ``r`` bounds the spectrum, ``lambda_min <= t``, and an eigenvalue lies in
    ``[t - r, t + r]``; when ``t + r < 0`` the Hessian is certainly indefinite and ``t``
    is returned. Otherwise, up to ``dense_limit`` parameters, the dense Hessian
    (products with the identity, in chunks) and ``eigvalsh``
    give the exact value; above it, the Lanczos value is returned as an estimate."""
    matvec = CachedHessianVectorProduct(function, theta)
    size = theta.numel()

    if (probe_first and size > 64) or size > dense_limit:
        pairs = lanczos_eigenpairs(matvec, size, 1, which="smallest", tol=1e-8, seed=seed,
                                   max_matvecs=min(size, 300), dtype=theta.dtype,
                                   device=theta.device)  # fmt: skip
        value, residual = float(pairs.values[0]), float(pairs.residuals[0])
        if value + residual < 0 or size > dense_limit:
            return value, False
    matrix = dense_from_products(matvec, size, dtype=theta.dtype, device=theta.device)
    return float(torch.linalg.eigvalsh(matrix)[0]), True


def _augmented_norms(
    maps: list[tuple[torch.Tensor, torch.Tensor | None]], augmented: bool
) -> list[float]:
    """``||W~_l||_2``: ``[[W, b], [0, 1]]`` for hidden layers, ``[W, b]`` for the last."""
    norms = []
    for index, (weight, bias) in enumerate(maps):
        matrix = weight
        if augmented:
            column = bias if bias is not None else torch.zeros_like(weight[:, 0])
            matrix = torch.cat([weight, column[:, None]], dim=1)
            if index < len(maps) - 1:
                last_row = torch.zeros_like(matrix[:1])
                last_row[0, -1] = 1
                matrix = torch.cat([matrix, last_row])
        norms.append(float(torch.linalg.matrix_norm(matrix, ord=2)))
    return norms


def _second_derivative_bounds(
    inputs: torch.Tensor, weight_norms: list[float], augmented: bool
) -> torch.Tensor:
    """``B(x_i) = ||x~_i|| lambda_max(P M)`` per sample (module docstring), with
    ``(P M)_ab = prod_{l != a, b} w_l`` formed without division (a layer of norm zero
    leaves the terms that perturb it)."""
    count = len(weight_norms)
    if count < 2:
        return torch.zeros(inputs.shape[0], dtype=inputs.dtype, device=inputs.device)
    norms = torch.tensor(weight_norms, dtype=torch.float64)
    coupling = torch.zeros(count, count, dtype=torch.float64)
    for a in range(count):
        for b in range(count):
            if a != b:
                others = [norms[layer] for layer in range(count) if layer not in (a, b)]
                coupling[a, b] = torch.stack(others).prod() if others else 1.0
    factor = float(torch.linalg.eigvalsh(coupling)[-1])
    input_norms = inputs.norm(dim=1)
    if augmented:
        input_norms = torch.sqrt(input_norms**2 + 1)
    return input_norms * factor


def _certified_margin(
    maps: list[tuple[torch.Tensor, torch.Tensor | None]],
    preactivations: list[torch.Tensor],
    layer_inputs: list[torch.Tensor],
) -> float:
    """The largest radius (bisection, 1e-6 relative) at which every hidden pre-activation
    provably keeps its sign (module docstring)."""
    if not preactivations:
        return math.inf
    levels = [z.abs() for z in preactivations]
    if min(float(level.min()) for level in levels) == 0:
        return 0.0
    row_norms, spectral, input_norms = [], [], []
    for (weight, bias), hidden in zip(maps[:-1], layer_inputs, strict=False):
        matrix = weight if bias is None else torch.cat([weight, bias[:, None]], dim=1)
        row_norms.append(matrix.norm(dim=1))
        spectral.append(float(torch.linalg.matrix_norm(matrix, ord=2)))
        extra = 0 if bias is None else 1
        input_norms.append(torch.sqrt(hidden.norm(dim=1) ** 2 + extra))

    def safe(radius: float) -> bool:
        change = torch.zeros_like(input_norms[0])
        for rows, norm, size, level in zip(row_norms, spectral, input_norms, levels, strict=True):
            unit_change = (rows[None, :] + radius) * change[:, None] + radius * size[:, None]
            if bool((unit_change >= level).any()):
                return False
            change = (norm + radius) * change + radius * size
        return True

    high = 1.0
    while safe(high):
        high *= 2
        if high > 1e12:
            return math.inf
    low = 0.0
    while high - low > 1e-6 * high:
        middle = (low + high) / 2
        low, high = (middle, high) if safe(middle) else (low, middle)
    return low
