"""Root and fixed-point solvers for one solution, or a batch of independent ones."""

from losslab.solve.dogleg import dogleg_batch
from losslab.solve.newton import (
    NewtonBatchResult,
    batched_jacobian,
    newton_batch,
    project_into_box,
)

__all__ = [
    "NewtonBatchResult",
    "batched_jacobian",
    "dogleg_batch",
    "newton_batch",
    "project_into_box",
]
