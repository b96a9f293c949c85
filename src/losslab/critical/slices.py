r"""Loss-landscape slices: the loss along lines and planes through a point in parameter space.

A model with flat parameters :math:`\theta_0 \in \mathbb{R}^P` (in the order of
:func:`losslab.linalg.model_loss.parameter_layout`) and the mean loss
:math:`L(\theta)` of :class:`losslab.linalg.model_loss.ModelLoss` define

* a **1-D slice** along a direction :math:`d`:
  :math:`f(\alpha) = L(\theta_0 + \alpha d)` on a grid of :math:`\alpha` (:func:`slice_1d`);
* a **2-D slice** spanned by :math:`d_1, d_2`:
  :math:`f(\alpha, \beta) = L(\theta_0 + \alpha d_1 + \beta d_2)` (:func:`slice_2d`);
* the **linear interpolation** between two models (Goodfellow, Vinyals & Saxe 2015,
  "Qualitatively characterizing neural network optimization problems"):
  :math:`g(t) = L((1 - t)\,\theta_a + t\,\theta_b)` (:func:`interpolate`).

The default directions are the *filter-normalised* random directions of Li, Xu, Taylor,
Studer & Goldstein (2018), "Visualizing the Loss Landscape of Neural Nets", Sec. 4
(:func:`filter_normalized_direction`): Gaussian directions rescaled so that every filter
of :math:`d` has the Frobenius norm of the matching filter of the weights. Because a ReLU
net is invariant to scaling the weights of one layer up and another down, slices along
unnormalised directions are not comparable across models; filter normalisation removes
that scale so that the width of a valley means something.

Units: :math:`\alpha, \beta, t` are dimensionless step sizes (in units of :math:`\|d\|`,
per filter of the weights for the default directions); losses are in the units of
``loss_fn``. The model is never modified: every loss is evaluated functionally through
:class:`~losslab.linalg.model_loss.ModelLoss`, and buffers that a model in training mode
updates in place (batch-norm running statistics) are restored afterwards. Put models
with dropout or batch norm in ``eval()`` mode first, or the losses are random / computed
with batch statistics.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import nn

from losslab.errors import CurvatureError
from losslab.linalg.model_loss import (
    Data,
    LossFn,
    ModelLoss,
    parameter_layout,
    preserved_buffers,
)

__all__ = [
    "Slice1D",
    "Slice2D",
    "filter_normalized_direction",
    "interpolate",
    "plot_slice_1d",
    "plot_slice_2d",
    "slice_1d",
    "slice_2d",
]

_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,  # BatchNorm1d/2d/3d, InstanceNorm1d/2d/3d, SyncBatchNorm
    nn.LayerNorm,
    nn.GroupNorm,
) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())


# ----------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Slice1D:
    r"""The loss along a line: ``losses[i] = L(theta0 + alphas[i] * direction)``.

    For :func:`interpolate`, ``theta0 = theta_a``, ``direction = theta_b - theta_a`` and
    ``alphas`` are the interpolation weights ``t`` (``kind == "interpolation"``); the
    losses there are evaluated as ``L((1 - t) theta_a + t theta_b)``.

    Attributes:
        alphas: (n,) grid of step sizes, dtype/device of the model.
        losses: (n,) loss at each grid point; NaN/inf where the loss is not finite (kept:
            they show where the model blows up).
        center_loss: ``L(theta0)``, finite, evaluated directly (not read off the grid).
        direction: the flat (P,) direction ``d``.
        kind: ``"slice"`` or ``"interpolation"``.
    """

    alphas: torch.Tensor
    losses: torch.Tensor
    center_loss: float
    direction: torch.Tensor
    kind: str = "slice"

    def to_dict(self) -> dict[str, Any]:
        """Plain Python numbers for the store: the grid, the losses (NaN/inf kept as
        floats), the centre loss, the dimension ``P`` and ``||d||_2`` (the direction
        itself is not stored)."""
        return {
            "kind": self.kind,
            "alphas": [float(a) for a in self.alphas.tolist()],
            "losses": [float(v) for v in self.losses.tolist()],
            "center_loss": self.center_loss,
            "n_points": int(self.alphas.numel()),
            "dim": int(self.direction.numel()),
            "direction_norm": float(torch.linalg.vector_norm(self.direction.double())),
        }


@dataclass(frozen=True)
class Slice2D:
    r"""The loss on a plane: ``losses[j, i] = L(theta0 + alphas[i] d1 + betas[j] d2)``.

    Rows index ``beta`` (the second direction), columns ``alpha`` (the first), so
    ``losses`` has shape ``(m, n)`` and plots directly with
    ``contour(alphas, betas, losses)``.

    Attributes:
        alphas: (n,) steps along ``directions[0]``.
        betas: (m,) steps along ``directions[1]``.
        losses: (m, n) losses; NaN/inf kept where the loss is not finite.
        center_loss: ``L(theta0)``, finite.
        directions: ``(d1, d2)``, flat (P,) tensors.
    """

    alphas: torch.Tensor
    betas: torch.Tensor
    losses: torch.Tensor
    center_loss: float
    directions: tuple[torch.Tensor, torch.Tensor]

    def to_dict(self) -> dict[str, Any]:
        """Plain Python numbers for the store: both grids, the (m, n) losses as nested
        lists (row = beta index), the centre loss, ``P``, ``||d1||``, ``||d2||`` and the
        cosine of the angle between ``d1`` and ``d2``."""
        d1, d2 = (d.double() for d in self.directions)
        n1 = float(torch.linalg.vector_norm(d1))
        n2 = float(torch.linalg.vector_norm(d2))
        return {
            "alphas": [float(a) for a in self.alphas.tolist()],
            "betas": [float(b) for b in self.betas.tolist()],
            "losses": [[float(v) for v in row] for row in self.losses.tolist()],
            "center_loss": self.center_loss,
            "dim": int(d1.numel()),
            "direction_norms": [n1, n2],
            "direction_cosine": float(torch.dot(d1, d2)) / (n1 * n2),
        }


# ----------------------------------------------------------------------------- checks


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise CurvatureError(f"seed must be an integer; got {seed!r}")
    return seed


def _check_n_points(n_points: int, name: str = "n_points") -> int:
    if isinstance(n_points, bool) or not isinstance(n_points, int) or n_points < 2:
        raise CurvatureError(f"{name} must be an integer >= 2; got {n_points!r}")
    return n_points


def _check_span(span: Sequence[float], name: str = "span") -> tuple[float, float]:
    try:
        low, high = (float(v) for v in span)
    except (TypeError, ValueError) as error:
        raise CurvatureError(
            f"{name} must be a pair (low, high) of numbers; got {span!r}"
        ) from error
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise CurvatureError(f"{name} must be finite with low < high; got ({low}, {high})")
    return low, high


def _check_chunk_size(chunk_size: int) -> int:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise CurvatureError(f"chunk_size must be an integer >= 1; got {chunk_size!r}")
    return chunk_size


def _finite_like(vector: torch.Tensor, theta0: torch.Tensor, name: str) -> torch.Tensor:
    """``vector`` detached, cast to ``theta0``'s dtype and device, checked finite."""
    vector = vector.detach().to(dtype=theta0.dtype).to(device=theta0.device)
    if not bool(torch.isfinite(vector).all()):
        raise CurvatureError(f"{name} holds NaN or inf (in the model's dtype {theta0.dtype})")
    return vector


def _check_direction(direction: Any, theta0: torch.Tensor, name: str = "direction") -> torch.Tensor:
    """A user direction as a flat tensor with ``theta0``'s dtype and device: the right
    shape, floating point, finite, not all zero."""
    if not isinstance(direction, torch.Tensor):
        raise CurvatureError(f"{name} must be a torch.Tensor; got {type(direction).__name__}")
    if direction.shape != theta0.shape:
        raise CurvatureError(
            f"{name} must be a flat vector of shape {tuple(theta0.shape)} (the model's "
            f"trainable parameters, in named_parameters() order); got {tuple(direction.shape)}"
        )
    if not direction.is_floating_point():
        raise CurvatureError(f"{name} must be floating point; got {direction.dtype}")
    direction = _finite_like(direction, theta0, name)
    if not bool((direction != 0).any()):
        raise CurvatureError(
            f"{name} is all zero: a slice along it is a single point. For a filter-normalised "
            "direction this means every included filter of the model is zero"
        )
    return direction


def _grid(low: float, high: float, n: int, like: torch.Tensor) -> torch.Tensor:
    """``low + (high - low) * i / (n - 1)``, ``i = 0..n-1``, formed in float64 (so that a
    grid symmetric about 0 holds 0 exactly) and cast to ``like``'s dtype and device."""
    fractions = torch.arange(n, dtype=torch.float64) / (n - 1)
    grid = low + (high - low) * fractions
    grid[-1] = high
    return grid.to(dtype=like.dtype).to(device=like.device)


# ----------------------------------------------------------------------------- directions


def filter_normalized_direction(
    model: nn.Module,
    *,
    seed: int = 0,
    include_bias: bool = False,
    include_norm: bool = False,
) -> torch.Tensor:
    r"""A random direction in parameter space, filter-normalised (Li et al. 2018, Sec. 4).

    Draw :math:`z \sim \mathcal{N}(0, I_P)` (one flat vector over all trainable
    parameters, from a CPU ``torch.Generator`` seeded with ``seed``, in float64, then cast
    to the parameters' dtype and moved to their device) and rescale it parameter by
    parameter, :math:`w` denoting the model's parameter and :math:`z_w` its part of
    :math:`z`:

    * **Weights** (``ndim >= 2``, not in a normalisation layer): every *filter* -- the
      slice along dim 0, i.e. one row of a ``Linear`` weight ``(out, in)``, one output
      channel of a ``Conv`` weight ``(out, in/groups, *k)`` -- is rescaled to the
      Frobenius norm of the matching filter of :math:`w`:

      .. math::  d_{w,i} = \frac{z_{w,i}}{\|z_{w,i}\|_F}\, \|w_i\|_F
                 \quad (\text{Li et al. 2018, Eq. (1)}).

      A zero filter of :math:`w` gives a zero filter of :math:`d`. (For ``ConvTranspose``
      weights, shape ``(in, out/groups, *k)``, dim 0 is the *input* channel; the rule is
      applied to dim 0 all the same, as in Li et al.'s code.)
    * **Biases and other parameters with** ``ndim <= 1`` outside normalisation layers
      (e.g. a ``PReLU`` slope): zero, unless ``include_bias``; then the whole vector is
      rescaled, :math:`d_w = z_w \|w\|_2 / \|z_w\|_2`.
    * **Parameters of normalisation layers** (``BatchNorm*``/``InstanceNorm*``, i.e.
      ``nn.modules.batchnorm._NormBase``, ``LayerNorm``, ``GroupNorm``, ``RMSNorm``),
      weight and bias, whatever their ``ndim``: zero, unless ``include_norm``; then
      rescaled as a whole like a bias.

    Li et al. zero biases and batch-norm parameters for their plots (``--xignore biasbn``):
    that is the default here. The Gaussian draw covers every entry whatever the flags, so
    the weight part of the direction depends on ``seed`` only, not on the flags, and a
    float32 model and its float64 copy get the same direction up to rounding.

    Args:
        model: any ``nn.Module`` with trainable parameters.
        seed: the seed of the Gaussian draw; the same seed gives the same direction.
        include_bias: give biases (and other non-norm ``ndim <= 1`` parameters) a
            normalised random component instead of zero.
        include_norm: the same for the parameters of normalisation layers.

    Returns:
        A flat (P,) tensor in the layout of ``parameter_layout(model)``, with the
        parameters' dtype and device.

    Raises:
        CurvatureError: no trainable parameters, a non-integer seed, non-finite weights.
    """
    seed = _check_seed(seed)
    layout = parameter_layout(model)
    params = dict(model.named_parameters())
    weights = {name: params[name].detach() for name in layout.names}
    theta = layout.flatten(weights)
    if not theta.is_floating_point():
        raise CurvatureError(f"the model's parameters must be floating point; got {theta.dtype}")
    if not bool(torch.isfinite(theta).all()):
        raise CurvatureError("the model's parameters hold NaN or inf: no direction to scale by")
    norm_ids = {
        id(p)
        for module in model.modules()
        if isinstance(module, _NORM_TYPES)
        for p in module.parameters(recurse=False)
    }
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(layout.dim, generator=gen, dtype=torch.float64)
    noise = noise.to(dtype=theta.dtype).to(device=theta.device)
    direction = torch.zeros_like(theta)
    for name, shape, offset, numel in zip(
        layout.names, layout.shapes, layout.offsets, layout.numels, strict=True
    ):
        if numel == 0:
            continue
        w = weights[name].reshape(shape)
        z = noise[offset : offset + numel]
        if id(params[name]) in norm_ids:
            piece = _scale_whole(z, w) if include_norm else None
        elif len(shape) <= 1:
            piece = _scale_whole(z, w) if include_bias else None
        else:
            rows_z = z.reshape(shape[0], -1)
            rows_w = w.reshape(shape[0], -1)
            norm_z = torch.linalg.vector_norm(rows_z, dim=1, keepdim=True)
            norm_w = torch.linalg.vector_norm(rows_w, dim=1, keepdim=True)
            scale = torch.where(norm_z > 0, norm_w / norm_z, torch.zeros_like(norm_z))
            piece = (rows_z * scale).reshape(-1)
        if piece is not None:
            direction[offset : offset + numel] = piece
    return direction


def _scale_whole(z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    norm_z = torch.linalg.vector_norm(z)
    if float(norm_z) == 0.0:
        return torch.zeros_like(z)
    return z * (torch.linalg.vector_norm(w) / norm_z)


# ----------------------------------------------------------------------------- evaluation


def _center_loss(loss: ModelLoss, theta: torch.Tensor, what: str) -> float:
    center = float(loss(theta))
    if not math.isfinite(center):
        raise CurvatureError(
            f"the loss at {what} is {center}: a slice around a point where the loss is not "
            "finite shows nothing; check the model, the data and loss_fn"
        )
    return center


def _evaluate(
    loss: ModelLoss,
    coeffs: torch.Tensor,
    basis: torch.Tensor,
    base: torch.Tensor | None,
    chunk_size: int,
) -> torch.Tensor:
    """``L(base + coeffs[k] @ basis)`` for every row ``k`` of ``coeffs`` (K, r), ``basis``
    (r, P). Chunks of ``chunk_size`` points go through ``torch.func.vmap``; if vmap cannot
    trace the model (in-place updates, data-dependent control flow, ``.item()``), every
    remaining point is evaluated in a plain loop. Only one chunk of parameter vectors is
    held in memory at a time."""
    out = torch.empty(coeffs.shape[0], dtype=basis.dtype, device=basis.device)
    use_vmap = chunk_size > 1
    batched = torch.func.vmap(loss)
    for start in range(0, coeffs.shape[0], chunk_size):
        thetas = coeffs[start : start + chunk_size] @ basis
        if base is not None:
            thetas = base + thetas
        if use_vmap:
            try:
                out[start : start + thetas.shape[0]] = batched(thetas).reshape(-1)
                continue
            except Exception:  # vmap cannot run this model: fall back to a loop
                use_vmap = False
        for k in range(thetas.shape[0]):
            out[start + k] = loss(thetas[k]).reshape(())
    return out


# ----------------------------------------------------------------------------- slices


def slice_1d(
    model: nn.Module,
    loss_fn: LossFn,
    data: Data,
    *,
    direction: torch.Tensor | None = None,
    span: tuple[float, float] = (-1.0, 1.0),
    n_points: int = 51,
    seed: int = 0,
    include_bias: bool = False,
    include_norm: bool = False,
    chunk_size: int = 16,
) -> Slice1D:
    r"""The loss along a line through the model's parameters (Li et al. 2018, Sec. 3-4).

    .. math::  f(\alpha_i) = L(\theta_0 + \alpha_i d), \qquad
               \alpha_i = \text{low} + i\,\frac{\text{high} - \text{low}}{n - 1},

    with :math:`L` the sample-weighted mean loss of ``loss_fn`` over ``data``
    (:class:`~losslab.linalg.model_loss.ModelLoss`) and :math:`\theta_0` the model's
    current trainable parameters. ``alpha = 0`` is on the grid only if the span makes it
    so (exactly 0 for a symmetric span and odd ``n_points``: the grid is formed in
    float64); ``center_loss`` is :math:`L(\theta_0)` evaluated directly.

    Args:
        model: the model; not modified (parameters are passed functionally, buffers
            restored).
        loss_fn: ``loss_fn(outputs, targets)``, the mean loss of a batch.
        data: an ``(inputs, targets)`` pair or an iterable of batches.
        direction: flat (P,) direction; default :func:`filter_normalized_direction` with
            ``seed``, ``include_bias``, ``include_norm`` (ignored when a direction is
            given). Cast to the model's dtype/device.
        span: ``(low, high)``, finite, ``low < high``.
        n_points: grid size, >= 2.
        chunk_size: grid points evaluated at once with ``torch.func.vmap``
            (memory ~ ``chunk_size`` parameter vectors plus activations); 1 evaluates
            them one by one.

    Returns:
        :class:`Slice1D`. Grid points where the loss is NaN/inf keep that value.

    Raises:
        CurvatureError: ``n_points < 2``, ``low >= high``, a direction of the wrong
            shape, non-finite or all zero, bad data, a non-finite loss at
            :math:`\theta_0`.
    """
    n_points = _check_n_points(n_points)
    low, high = _check_span(span)
    chunk_size = _check_chunk_size(chunk_size)
    loss = ModelLoss(model, loss_fn, data)
    theta0 = loss.theta0
    if direction is None:
        direction = filter_normalized_direction(
            model, seed=seed, include_bias=include_bias, include_norm=include_norm
        )
    d = _check_direction(direction, theta0)
    alphas = _grid(low, high, n_points, theta0)
    with torch.no_grad(), preserved_buffers(model):
        center = _center_loss(loss, theta0, "the model's parameters")
        losses = _evaluate(loss, alphas[:, None], d[None, :], theta0, chunk_size)
    return Slice1D(alphas=alphas, losses=losses, center_loss=center, direction=d)


def _pair_spans(
    span: tuple[float, float] | tuple[tuple[float, float], tuple[float, float]],
) -> tuple[tuple[float, float], tuple[float, float]]:
    try:
        first = span[0]
    except (TypeError, IndexError) as error:
        raise CurvatureError(f"span must be (low, high) or two such pairs; got {span!r}") from error
    if isinstance(first, Sequence | torch.Tensor | np.ndarray):
        if len(span) != 2:
            raise CurvatureError(f"span must be (low, high) or two such pairs; got {span!r}")
        return _check_span(span[0], "span[0]"), _check_span(span[1], "span[1]")  # type: ignore[arg-type]
    one = _check_span(span)  # type: ignore[arg-type]
    return one, one


def _pair_n_points(n_points: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(n_points, tuple | list):
        if len(n_points) != 2:
            raise CurvatureError(f"n_points must be an int or a pair (n, m); got {n_points!r}")
        return _check_n_points(n_points[0], "n_points[0]"), _check_n_points(
            n_points[1], "n_points[1]"
        )
    n = _check_n_points(n_points)
    return n, n


def slice_2d(
    model: nn.Module,
    loss_fn: LossFn,
    data: Data,
    *,
    directions: tuple[torch.Tensor, torch.Tensor] | None = None,
    span: tuple[float, float] | tuple[tuple[float, float], tuple[float, float]] = (-1.0, 1.0),
    n_points: int | tuple[int, int] = 25,
    seed: int = 0,
    include_bias: bool = False,
    include_norm: bool = False,
    chunk_size: int = 16,
) -> Slice2D:
    r"""The loss on a plane through the model's parameters (Li et al. 2018, Sec. 4, Fig. 1).

    .. math::  f(\alpha_i, \beta_j) = L(\theta_0 + \alpha_i d_1 + \beta_j d_2),

    stored as ``losses[j, i]`` (row = :math:`\beta`, column = :math:`\alpha`; shape
    ``(m, n)``).

    The default directions are two filter-normalised directions drawn with seeds ``seed``
    and ``seed + 1`` (:func:`filter_normalized_direction`). As in Li et al. they are *not*
    orthogonalised: two random Gaussian vectors in dimension P have cosine of order
    :math:`1/\sqrt{P}`, nearly orthogonal already, and orthogonalising would undo the
    filter normalisation of the second. ``Slice2D.to_dict()`` reports their cosine.

    Args:
        directions: ``(d1, d2)``, flat (P,) tensors, finite, non-zero, not parallel
            (``|cos| < 1 - 1e-6``); cast to the model's dtype/device.
        span: ``(low, high)`` for both axes, or ``((low_a, high_a), (low_b, high_b))``.
        n_points: ``n`` for both axes, or ``(n, m)`` -- ``n`` alphas, ``m`` betas.
        seed, include_bias, include_norm, chunk_size: as in :func:`slice_1d`.

    Returns:
        :class:`Slice2D`; non-finite losses are kept as NaN/inf.

    Raises:
        CurvatureError: as :func:`slice_1d`, and for parallel directions.
    """
    n_alpha, n_beta = _pair_n_points(n_points)
    (low_a, high_a), (low_b, high_b) = _pair_spans(span)
    chunk_size = _check_chunk_size(chunk_size)
    loss = ModelLoss(model, loss_fn, data)
    theta0 = loss.theta0
    if directions is None:
        directions = (
            filter_normalized_direction(
                model, seed=seed, include_bias=include_bias, include_norm=include_norm
            ),
            filter_normalized_direction(
                model, seed=seed + 1, include_bias=include_bias, include_norm=include_norm
            ),
        )
    if not isinstance(directions, tuple | list) or len(directions) != 2:
        raise CurvatureError("directions must be a pair (d1, d2) of flat tensors")
    d1 = _check_direction(directions[0], theta0, "directions[0]")
    d2 = _check_direction(directions[1], theta0, "directions[1]")
    a, b = d1.double(), d2.double()
    cosine = float(torch.dot(a, b) / (torch.linalg.vector_norm(a) * torch.linalg.vector_norm(b)))
    if abs(cosine) > 1 - 1e-6:
        raise CurvatureError(
            f"directions[0] and directions[1] are parallel (cosine {cosine:.8f}): they span a "
            "line, not a plane; use slice_1d or pass two independent directions"
        )
    alphas = _grid(low_a, high_a, n_alpha, theta0)
    betas = _grid(low_b, high_b, n_beta, theta0)
    grid_b, grid_a = torch.meshgrid(betas, alphas, indexing="ij")  # (m, n) each
    coeffs = torch.stack([grid_a.reshape(-1), grid_b.reshape(-1)], dim=1)  # row-major (j, i)
    basis = torch.stack([d1, d2])
    with torch.no_grad(), preserved_buffers(model):
        center = _center_loss(loss, theta0, "the model's parameters")
        losses = _evaluate(loss, coeffs, basis, theta0, chunk_size)
    return Slice2D(
        alphas=alphas,
        betas=betas,
        losses=losses.reshape(n_beta, n_alpha),
        center_loss=center,
        directions=(d1, d2),
    )


def interpolate(
    model_a: nn.Module,
    model_b: nn.Module,
    loss_fn: LossFn,
    data: Data,
    *,
    n_points: int = 51,
    span: tuple[float, float] = (-0.5, 1.5),
    chunk_size: int = 16,
    buffers: Literal["same", "model_a"] = "same",
) -> Slice1D:
    r"""The loss on the straight line through two models (Goodfellow et al. 2015).

    .. math::  g(t_i) = L\big((1 - t_i)\,\theta_a + t_i\,\theta_b\big),

    evaluated with ``model_a``'s architecture and buffers; :math:`t = 0` is ``model_a``,
    :math:`t = 1` is ``model_b`` (exactly: the convex combination is formed as written),
    values outside ``[0, 1]`` extrapolate. Returned as a :class:`Slice1D` with
    ``kind="interpolation"``, ``alphas`` the :math:`t` grid,
    ``direction`` :math:`= \theta_b - \theta_a` and ``center_loss`` :math:`= g(0)`.

    Parameters are matched by name (``named_parameters()``), so the two models may list
    them in different orders; ``model_b``'s are cast to ``model_a``'s dtype and device.
    The models must be of one architecture (the same module types, in order). Buffers
    (batch-norm statistics) are ``model_a``'s for every :math:`t`, so with
    ``buffers="same"`` (default) floating-point buffers that differ are an error:
    :math:`g(1)` would not be ``model_b``'s loss. ``buffers="model_a"`` accepts them
    (recompute the statistics along the line yourself for a faithful path).

    Raises:
        CurvatureError: the models' module types differ, their trainable parameters
            differ in names or shapes (the message lists them), their frozen parameters or
            (with ``buffers="same"``) floating-point buffers differ (only trainable
            parameters move),
            identical parameters (a zero direction), bad
            ``n_points``/``span``, non-finite parameters of ``model_b``, a non-finite
            loss at ``model_a``.
    """
    n_points = _check_n_points(n_points)
    low, high = _check_span(span)
    chunk_size = _check_chunk_size(chunk_size)
    if buffers not in ("same", "model_a"):
        raise CurvatureError(f"buffers must be 'same' or 'model_a'; got {buffers!r}")
    loss = ModelLoss(model_a, loss_fn, data)
    layout_a, layout_b = loss.layout, parameter_layout(model_b)
    shapes_a = dict(zip(layout_a.names, layout_a.shapes, strict=True))
    shapes_b = dict(zip(layout_b.names, layout_b.shapes, strict=True))
    problems = []
    only_a = [n for n in shapes_a if n not in shapes_b]
    only_b = [n for n in shapes_b if n not in shapes_a]
    if only_a:
        problems.append(f"only in model_a: {only_a}")
    if only_b:
        problems.append(f"only in model_b: {only_b}")
    for name in shapes_a:
        if name in shapes_b and shapes_a[name] != shapes_b[name]:
            problems.append(
                f"{name}: {tuple(shapes_a[name])} in model_a vs {tuple(shapes_b[name])} in model_b"
            )
    if problems:
        raise CurvatureError(
            "model_a and model_b must have the same trainable parameters (names and shapes): "
            + "; ".join(problems)
        )
    types_a = [type(m).__name__ for m in model_a.modules()]
    types_b = [type(m).__name__ for m in model_b.modules()]
    if types_a != types_b:
        raise CurvatureError(
            f"model_a and model_b are different architectures: modules {types_a} vs {types_b}"
        )
    if buffers == "same":
        _check_same_buffers(model_a, model_b)
    params_b = dict(model_b.named_parameters())
    frozen_differ = [
        name
        for name, frozen in model_a.named_parameters()
        if name not in shapes_a
        and not (
            name in params_b
            and params_b[name].shape == frozen.shape
            and torch.equal(params_b[name].detach().to(frozen), frozen.detach())
        )
    ]
    if frozen_differ:
        raise CurvatureError(
            f"model_a's frozen parameters {frozen_differ} differ from model_b's: only trainable "
            "parameters are interpolated, so t = 1 would not be model_b. Unfreeze them "
            "(requires_grad_(True)) to interpolate them too"
        )
    theta_a = loss.theta0
    theta_b = _finite_like(
        layout_a.flatten({n: params_b[n].detach() for n in layout_a.names}),
        theta_a,
        "model_b's parameters",
    )
    direction = theta_b - theta_a
    if not bool((direction != 0).any()):
        raise CurvatureError(
            "model_a and model_b have identical parameters: the interpolation is constant"
        )
    ts = _grid(low, high, n_points, theta_a)
    coeffs = torch.stack([1 - ts, ts], dim=1)
    basis = torch.stack([theta_a, theta_b])
    with torch.no_grad(), preserved_buffers(model_a):
        center = _center_loss(loss, theta_a, "model_a's parameters")
        losses = _evaluate(loss, coeffs, basis, None, chunk_size)
    return Slice1D(
        alphas=ts, losses=losses, center_loss=center, direction=direction, kind="interpolation"
    )


def _check_same_buffers(model_a: nn.Module, model_b: nn.Module) -> None:
    """Refuse floating-point buffers of ``model_b`` that differ from ``model_a``'s (by
    name): the interpolation evaluates every ``t`` with ``model_a``'s."""
    buffers_b = dict(model_b.named_buffers())
    differ = [
        name
        for name, buffer in model_a.named_buffers()
        if buffer.is_floating_point()
        and not (
            name in buffers_b
            and buffers_b[name].shape == buffer.shape
            and torch.equal(buffers_b[name].to(buffer), buffer)
        )
    ]
    if differ:
        raise CurvatureError(
            f"model_a's buffers {differ} differ from model_b's: every t is evaluated with "
            "model_a's, so t = 1 would not be model_b. Pass buffers='model_a' to accept "
            "that (e.g. batch-norm statistics to be recomputed along the line)"
        )


# ----------------------------------------------------------------------------- figures


def _numpy(values: torch.Tensor) -> np.ndarray:
    """Float64 NumPy copy with NaN in place of every non-finite value (matplotlib skips
    NaN; inf would wreck the autoscaling)."""
    array = values.detach().to(torch.float64).cpu().numpy()
    return np.where(np.isfinite(array), array, np.nan)


def _root_figure(ax: Axes) -> Figure:
    figure: Any = ax.figure
    while not isinstance(figure, Figure):  # a SubFigure: climb to the root figure
        figure = figure.figure
    return figure


def plot_slice_1d(
    slice_or_slices: Slice1D | Sequence[Slice1D],
    ax: Axes | None = None,
    label: str | Sequence[str] | None = None,
) -> Figure:
    """Loss against step size for one or several :class:`Slice1D` (one curve each), the
    centre ``(0, center_loss)`` marked with a dot. Non-finite losses leave gaps.

    Args:
        slice_or_slices: a slice or a sequence of slices (e.g. several seeds).
        ax: draw on these axes (returns their figure); default a new 5 x 3.5 in figure.
        label: one legend label per slice (a string for a single slice); a legend is drawn
            when labels are given.

    Returns:
        The figure (``matplotlib.figure.Figure``, no pyplot state).
    """
    slices = [slice_or_slices] if isinstance(slice_or_slices, Slice1D) else list(slice_or_slices)
    if not slices or not all(isinstance(s, Slice1D) for s in slices):
        raise CurvatureError("plot_slice_1d needs a Slice1D or a non-empty sequence of them")
    if label is None:
        labels: list[str | None] = [None] * len(slices)
    elif isinstance(label, str):
        labels = [label] if len(slices) == 1 else [f"{label} {i}" for i in range(len(slices))]
    else:
        labels = list(label)
        if len(labels) != len(slices):
            raise CurvatureError(f"{len(labels)} labels for {len(slices)} slices")
    if ax is None:
        figure = Figure(figsize=(5, 3.5), layout="constrained")
        ax = figure.add_subplot(1, 1, 1)
    else:
        figure = _root_figure(ax)
    for piece, name in zip(slices, labels, strict=True):
        (line,) = ax.plot(_numpy(piece.alphas), _numpy(piece.losses), label=name)
        ax.plot([0.0], [piece.center_loss], "o", color=line.get_color(), markersize=4)
    kinds = {piece.kind for piece in slices}
    ax.set_xlabel("t (interpolation weight)" if kinds == {"interpolation"} else "α (step)")
    ax.set_ylabel("loss")
    if any(name is not None for name in labels):
        ax.legend(fontsize=8)
    return figure


def plot_slice_2d(
    slice2d: Slice2D,
    kind: Literal["contour", "surface"] = "contour",
    levels: int | Sequence[float] = 30,
    log: bool = False,
) -> Figure:
    r"""A figure of a :class:`Slice2D` on one axes.

    ``kind="contour"``: contour lines of ``losses`` over ``(alpha, beta)`` (Li et al.
    2018, Fig. 1 / 5 style) with every fifth level labelled (``clabel``) and the centre
    ``(0, 0)`` marked with a star. ``kind="surface"``: a 3-D surface plot on a ``"3d"``
    axes. ``log=True`` plots :math:`\log_{10}` of the loss (non-positive losses become
    gaps). Non-finite losses leave gaps.

    Args:
        levels: number of contour levels, or their values (contour only).

    Returns:
        A new ``matplotlib.figure.Figure`` with one axes.
    """
    if not isinstance(slice2d, Slice2D):
        raise CurvatureError(f"plot_slice_2d needs a Slice2D; got {type(slice2d).__name__}")
    if kind not in ("contour", "surface"):
        raise CurvatureError(f'kind must be "contour" or "surface"; got {kind!r}')
    if isinstance(levels, int) and (isinstance(levels, bool) or levels < 1):
        raise CurvatureError(f"levels must be a positive integer or a sequence; got {levels!r}")
    alphas, betas = _numpy(slice2d.alphas), _numpy(slice2d.betas)
    z = _numpy(slice2d.losses)
    label = "loss"
    if log:
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.where(z > 0, np.log10(np.where(z > 0, z, 1.0)), np.nan)
        label = "log10 loss"
    grid_a, grid_b = np.meshgrid(alphas, betas)  # (m, n), as losses
    if kind == "contour":
        figure = Figure(figsize=(5, 4.5), layout="constrained")
        ax = figure.add_subplot(1, 1, 1)
        if np.isfinite(z).any() and np.nanmax(z) > np.nanmin(z):
            contours = ax.contour(grid_a, grid_b, np.ma.masked_invalid(z), levels=levels)
            ax.clabel(contours, np.asarray(contours.levels)[::5], inline=True, fontsize=7)
        ax.plot([0.0], [0.0], "*", color="black", markersize=8)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("α (direction 1)")
        ax.set_ylabel("β (direction 2)")
        return figure
    figure = Figure(figsize=(6, 5), layout="constrained")
    ax3: Any = figure.add_subplot(1, 1, 1, projection="3d")
    ax3.plot_surface(grid_a, grid_b, z, cmap="viridis", linewidth=0, antialiased=True)
    ax3.set_xlabel("α")
    ax3.set_ylabel("β")
    ax3.set_zlabel(label)
    return figure
