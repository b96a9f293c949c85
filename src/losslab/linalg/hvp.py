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
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch.func import grad, jvp, vjp

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
            except RuntimeError:
                if self.mode == "forward-over-reverse":
                    raise
                self.mode = "reverse-over-reverse"
        return vjp(grad(self.function), theta)[1](vector)[0]
