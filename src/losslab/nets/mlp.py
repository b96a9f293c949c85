"""Fully connected ReLU networks (Milne, P4): ``Linear -> ReLU -> ... -> Linear``.

``ReLUMLP(d_in, widths, d_out)`` has ``len(widths)`` hidden layers (its *depth*) and
``len(widths) + 1`` affine maps; with ``dropout > 0`` a ``Dropout`` follows every ReLU
(it acts in ``train()`` mode only). Weights and biases start as PyTorch's default
``Linear`` initialisation, ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, drawn from a generator
seeded by ``seed`` (no global random state). Float64 by default.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
from torch import nn

from losslab.errors import CurvatureError


class ReLUMLP(nn.Sequential):
    """``d_in -> widths[0] -> ... -> widths[-1] -> d_out`` with ReLU after each hidden layer.

    Attributes:
        widths: the hidden widths; ``depth = len(widths)``.
        dropout: the dropout probability after each ReLU (0: none).
    """

    def __init__(
        self,
        d_in: int,
        widths: Sequence[int],
        d_out: int,
        *,
        bias: bool = True,
        dropout: float = 0.0,
        seed: int = 0,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        sizes = [d_in, *widths, d_out]
        if any(int(size) < 1 for size in sizes):
            raise CurvatureError(f"every layer size must be at least 1, got {sizes}")
        if not 0.0 <= dropout < 1.0:
            raise CurvatureError(f"dropout must lie in [0, 1), got {dropout}")
        generator = torch.Generator().manual_seed(seed)
        layers: list[nn.Module] = []
        for index, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
            linear = nn.Linear(fan_in, fan_out, bias=bias, dtype=dtype)
            bound = 1 / math.sqrt(fan_in)
            with torch.no_grad():
                for parameter in linear.parameters():
                    uniform = torch.rand(parameter.shape, generator=generator, dtype=dtype)
                    parameter.copy_((2 * uniform - 1) * bound)
            layers.append(linear)
            if index < len(sizes) - 2:
                layers.append(nn.ReLU())
                if dropout > 0:
                    layers.append(nn.Dropout(dropout))
        super().__init__(*layers)
        self.widths = tuple(int(w) for w in widths)
        self.dropout = float(dropout)

    @property
    def depth(self) -> int:
        """The number of hidden layers."""
        return len(self.widths)
