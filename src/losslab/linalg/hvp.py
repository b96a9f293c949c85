r"""Hessian-vector products of a scalar function of one flat tensor.

``H v = d/dt nabla f(theta + t v) |_{t=0}``, computed without forming ``H``:

- forward-over-reverse (``torch.func.jvp`` of ``torch.func.grad``, Pearlmutter 1994): one
  forward-mode pass through the gradient computation, about the cost of two gradients;
- reverse-over-reverse (``torch.func.vjp`` of ``torch.func.grad``): ``v^T H = (H v)^T``
  for the symmetric Hessian; slower (it records the gradient's graph) but supported by
  every differentiable operation.

Some PyTorch kernels lack forward-mode derivatives of their backward (in torch 2.13
``torch.nn.functional.mse_loss`` raises "ZeroTensors are immutable" under ``jvp`` of
``grad``); :class:`HessianVectorProduct` tries forward-over-reverse on the first product
and falls back to reverse-over-reverse for good when torch raises.

At a fixed point ``theta`` with many products to take (Lanczos, traces, densities),
:class:`CachedHessianVectorProduct` records the gradient's graph once and then each
product is one backward pass through it: about a gradient's cost instead of two to three
(``benchmarks/bench_critical.py``, a 26k-parameter MLP: 8.2 ms against 17.4 ms per product
in float32), at the memory of one retained graph.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch.func import grad, jvp, vjp

from losslab.errors import CurvatureError, reraise_interrupt
from losslab.linalg.lanczos import ASYMMETRY_TOL

Mode = Literal["forward-over-reverse", "reverse-over-reverse"]


class HessianVectorProduct:
    """``(theta, v) -> nabla^2 f(theta) v`` for a scalar ``function`` of a flat tensor.

    Attributes:
        mode: the differentiation mode in use (chosen on the first product).
    """

    def __init__(self, function: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.function = function
        self.mode: Mode | None = None

    def __call__(self, theta: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
        if self.mode != "reverse-over-reverse":
            try:
                product = jvp(grad(self.function), (theta,), (vector,))[1]
                self.mode = "forward-over-reverse"
                return product
            except RuntimeError as error:
                if self.mode == "forward-over-reverse":
                    raise
                reraise_interrupt(error)
                self.mode = "reverse-over-reverse"
        return vjp(grad(self.function), theta)[1](vector)[0]


class CachedHessianVectorProduct:
    """``v -> nabla^2 f(theta) v`` at a fixed ``theta``: the gradient and its graph are
    computed once (``torch.func.vjp`` of ``torch.func.grad``) and every product is a
    backward pass through that graph (``v^T H = (H v)^T``, ``H`` symmetric)."""

    def __init__(
        self, function: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor
    ) -> None:
        result = vjp(grad(function), theta)
        self.gradient, self._pullback = result[0], result[1]

    def __call__(self, vector: torch.Tensor) -> torch.Tensor:
        return self._pullback(vector)[0]


def dense_from_products(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    dim: int,
    *,
    dtype: torch.dtype,
    device: torch.device | str | None = None,
    chunk_size: int = 256,
) -> torch.Tensor:
    """The ``dim x dim`` matrix of a symmetric ``matvec``, from its products with the
    identity (vectorised by ``torch.func.vmap`` in chunks; one by one where a kernel has
    no batching rule), symmetrised as ``(A + A^T) / 2``. An asymmetry above
    ``ASYMMETRY_TOL`` of the largest entry is no rounding error and raises
    :class:`CurvatureError` (a kernel with a wrong double-backward rule, or a
    ``matvec`` that is not a curvature product)."""
    basis = torch.eye(dim, dtype=dtype, device=device)
    columns = []
    for start in range(0, dim, chunk_size):
        block = basis[start : start + chunk_size]
        try:
            columns.append(torch.func.vmap(matvec)(block))
        except RuntimeError as error:
            reraise_interrupt(error)
            columns.append(torch.stack([matvec(row) for row in block]))
    matrix = torch.cat(columns)
    asymmetry = float((matrix - matrix.T).abs().max())
    scale = float(matrix.abs().max())
    if asymmetry > ASYMMETRY_TOL * scale:  # False with NaN: the callers report those
        raise CurvatureError(
            f"the products do not form a symmetric matrix: entries (i, j) and (j, i) differ "
            f"by up to {asymmetry:.3g} for a largest entry {scale:.3g}. A Hessian is "
            "symmetric: some operation's second derivative is wrong in this torch build "
            "(check it against finite differences), or the product is not a curvature one"
        )
    return (matrix + matrix.T) / 2


def dense_hessian(
    function: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor
) -> torch.Tensor:
    """``nabla^2 f(theta)``, dense and symmetrised, from cached Hessian-vector products."""
    product = CachedHessianVectorProduct(function, theta)
    return dense_from_products(product, theta.numel(), dtype=theta.dtype, device=theta.device)
