"""Matrix-free linear algebra on torch: Hessian-vector products and curvature operators
of any model's loss, Lanczos eigenpairs (full reorthogonalisation, thick restarts), power
iteration, Hutchinson / Hutch++ traces, stochastic Lanczos quadrature; and outward-rounded
float64 interval arithmetic for certified computations."""

from losslab.errors import CurvatureError, IntervalError
from losslab.linalg.cholesky import solve_with_cholesky
from losslab.linalg.curvature import CurvatureOperator, GaussNewtonOperator, HessianOperator
from losslab.linalg.density import SpectralDensity, spectral_density
from losslab.linalg.eigenvalues import general_eigenvalues, spectral_norms
from losslab.linalg.hvp import (
    CachedHessianVectorProduct,
    HessianVectorProduct,
    dense_from_products,
    dense_hessian,
)
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
from losslab.linalg.lanczos import Eigenpairs, lanczos_eigenpairs, lanczos_tridiagonal
from losslab.linalg.model_loss import ModelLoss, ParameterLayout, as_batches, parameter_layout
from losslab.linalg.power_iteration import power_iteration_eigenpairs
from losslab.linalg.trace import TraceEstimate, hutch_plus_plus_trace, hutchinson_trace

__all__ = [
    "CachedHessianVectorProduct",
    "CurvatureError",
    "CurvatureOperator",
    "Eigenpairs",
    "GaussNewtonOperator",
    "HessianOperator",
    "HessianVectorProduct",
    "Interval",
    "IntervalError",
    "ModelLoss",
    "ParameterLayout",
    "SpectralDensity",
    "TraceEstimate",
    "as_batches",
    "dense_from_products",
    "dense_hessian",
    "general_eigenvalues",
    "hutch_plus_plus_trace",
    "hutchinson_trace",
    "lanczos_eigenpairs",
    "lanczos_tridiagonal",
    "matmul",
    "matvec",
    "parameter_layout",
    "power_iteration_eigenpairs",
    "round_down",
    "round_up",
    "sigmoid",
    "sigmoid_derivative",
    "solve_with_cholesky",
    "spectral_density",
    "spectral_norms",
    "tanh",
    "tanh_derivative",
]
