"""Matrix-free linear algebra and interval arithmetic on torch (outward-rounded float64
intervals for certified computations)."""

from losslab.errors import IntervalError
from losslab.linalg.interval import (
    Interval,
    matmul,
    matvec,
    round_down,
    round_up,
    sigmoid,
    sigmoid_derivative,
    tanh,
    tanh_derivative,
)

__all__ = [
    "Interval",
    "IntervalError",
    "matmul",
    "matvec",
    "round_down",
    "round_up",
    "sigmoid",
    "sigmoid_derivative",
    "tanh",
    "tanh_derivative",
]
