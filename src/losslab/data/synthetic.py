"""Seeded synthetic datasets: planted teachers for the papers' models.

Each generator draws everything from one ``torch.Generator`` seeded by ``seed`` in
float64, so the same parameters give the same data on every machine. The teacher's
weights are recorded in ``meta["teacher"]`` so the target can be recomputed.
"""

from __future__ import annotations

from typing import Any

import torch

from losslab.data.dataset import Dataset
from losslab.errors import DatasetError


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def _check_sizes(name: str, **sizes: Any) -> None:
    for key, value in sizes.items():
        if key == "noise":
            if not (isinstance(value, int | float) and value >= 0):
                raise DatasetError(f"{name}: noise must be a number >= 0; got {value!r}")
        elif key == "seed":
            if not isinstance(value, int) or isinstance(value, bool):
                raise DatasetError(f"{name}: seed must be an integer; got {value!r}")
        elif not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise DatasetError(f"{name}: {key} must be an integer >= 1; got {value!r}")


def _add_noise(y: torch.Tensor, noise: float, gen: torch.Generator) -> torch.Tensor:
    return y + noise * torch.randn(y.shape, generator=gen, dtype=torch.float64)


def teacher_relu(
    n: int = 200, d: int = 5, width: int = 3, noise: float = 0.0, seed: int = 0
) -> Dataset:
    """Two-layer ReLU teacher (P3, P4): ``y = sum_j alpha_j (w_j . x)_+ + noise * eps``.

    ``x ~ N(0, I_d)``, ``w_j ~ N(0, I_d / d)``, ``alpha_j`` uniform random signs,
    ``eps ~ N(0, 1)``.
    """
    _check_sizes("teacher_relu", n=n, d=d, width=width, noise=noise, seed=seed)
    gen = _generator(seed)
    X = torch.randn(n, d, generator=gen, dtype=torch.float64)
    W = torch.randn(width, d, generator=gen, dtype=torch.float64) / d**0.5
    alpha = torch.randint(0, 2, (width,), generator=gen).to(torch.float64) * 2 - 1
    y = _add_noise(torch.relu(X @ W.T) @ alpha, noise, gen)
    teacher = {"W": W.tolist(), "alpha": alpha.tolist()}
    params = {"n": n, "d": d, "width": width, "noise": noise, "seed": seed}
    return Dataset(X, y, "teacher_relu", "regression", {"params": params, "teacher": teacher})


def teacher_quadratic(
    n: int = 200, d: int = 5, width: int = 3, noise: float = 0.0, seed: int = 0
) -> Dataset:
    """Quadratic-network teacher (P1): ``y = sum_j v_j (w_j . x)^2 + noise * eps``.

    Following the P1 scripts, ``x ~ N(0, I_d / d)``, ``w_j ~ N(0, I_d / d)`` and
    ``v_j`` uniform random signs, i.e. ``y = x^T W^T diag(v) W x``.
    """
    _check_sizes("teacher_quadratic", n=n, d=d, width=width, noise=noise, seed=seed)
    gen = _generator(seed)
    X = torch.randn(n, d, generator=gen, dtype=torch.float64) / d**0.5
    W = torch.randn(width, d, generator=gen, dtype=torch.float64) / d**0.5
    v = torch.randint(0, 2, (width,), generator=gen).to(torch.float64) * 2 - 1
    y = _add_noise((X @ W.T).square() @ v, noise, gen)
    teacher = {"W": W.tolist(), "v": v.tolist()}
    params = {"n": n, "d": d, "width": width, "noise": noise, "seed": seed}
    return Dataset(X, y, "teacher_quadratic", "regression", {"params": params, "teacher": teacher})


def gaussian_regression(n: int = 200, d: int = 5, noise: float = 0.1, seed: int = 0) -> Dataset:
    """Linear regression with Gaussian design: ``y = X beta + noise * eps``.

    ``x ~ N(0, I_d)``, ``beta ~ N(0, I_d / d)`` so that ``Var(x . beta) ~ 1``.
    """
    _check_sizes("gaussian_regression", n=n, d=d, noise=noise, seed=seed)
    gen = _generator(seed)
    X = torch.randn(n, d, generator=gen, dtype=torch.float64)
    beta = torch.randn(d, generator=gen, dtype=torch.float64) / d**0.5
    y = _add_noise(X @ beta, noise, gen)
    params = {"n": n, "d": d, "noise": noise, "seed": seed}
    meta = {"params": params, "teacher": {"beta": beta.tolist()}}
    return Dataset(X, y, "gaussian_regression", "regression", meta)
