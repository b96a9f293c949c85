"""Reference solutions of the convex ReLU programs by cvxpy with Clarabel (tests only)."""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import torch


def clarabel_objective(
    X: torch.Tensor, y: torch.Tensor, patterns: torch.Tensor, lam: float, formulation: str
) -> float:
    Xn, yn = X.numpy(), y.numpy()
    n, d = Xn.shape
    masks = patterns.numpy().astype(float)
    P = masks.shape[1]
    if formulation == "gated":
        U = cp.Variable((P, d))
        fit = cp.sum(cp.multiply(masks, Xn @ U.T), axis=1)
        objective = cp.sum_squares(fit - yn) / (2 * n) + lam * cp.sum(cp.norm(U, 2, axis=1))
        constraints = []
    else:
        V, W = cp.Variable((P, d)), cp.Variable((P, d))
        fit = cp.sum(cp.multiply(masks, Xn @ (V - W).T), axis=1)
        norms = cp.sum(cp.norm(V, 2, axis=1)) + cp.sum(cp.norm(W, 2, axis=1))
        objective = cp.sum_squares(fit - yn) / (2 * n) + lam * norms
        signs = 2 * masks - 1
        constraints = [cp.multiply(signs, Xn @ V.T) >= 0, cp.multiply(signs, Xn @ W.T) >= 0]
    problem = cp.Problem(cp.Minimize(objective), constraints)
    problem.solve(solver="CLARABEL", tol_gap_abs=1e-9, tol_gap_rel=1e-9, tol_feas=1e-9)
    assert problem.status == "optimal", problem.status
    return float(problem.value)


def relu_teacher(
    n: int, d: int, seed: int, noise: float = 0.1
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    W = torch.randn(d, 2, generator=g, dtype=torch.float64)
    y = (
        torch.relu(X @ W).sum(1)
        - 0.5 * torch.relu(-X @ W[:, 0])
        + noise * torch.randn(n, generator=g, dtype=torch.float64)
    )
    return X, y


def brute_force_patterns(X: np.ndarray) -> set[tuple[bool, ...]]:
    """Every realisable pattern, by one LP per sign vector (2^n LPs: tiny n only).

    Zero rows are active in every pattern; patterns with no active non-zero row are left out.
    """
    from itertools import product

    from scipy.optimize import linprog

    rows = np.linalg.norm(X, axis=1) > 0
    Xr = X[rows]
    found = set()
    for signs in product((1.0, -1.0), repeat=Xr.shape[0]):
        s = np.array(signs)
        bounds = [(None, None)] * X.shape[1]
        result = linprog(
            np.zeros(X.shape[1]),
            A_ub=-(s[:, None] * Xr),
            b_ub=-np.ones(len(s)),
            bounds=bounds,
            method="highs",
        )
        if result.status == 0 and (s > 0).any():
            pattern = np.ones(X.shape[0], dtype=bool)
            pattern[rows] = s > 0
            found.add(tuple(bool(v) for v in pattern))
    return found


def brute_force_closed_patterns(X: np.ndarray) -> set[tuple[bool, ...]]:
    """Every pattern ``1[X g >= 0]`` over all gates ``g`` (lower-dimensional cells and
    ``g = 0`` included), by one LP per assignment of each non-zero row to ``x . g >= 1``,
    ``= 0`` or ``<= -1`` (3^n LPs: tiny n only). Patterns with no active non-zero row are
    left out."""
    from itertools import product

    from scipy.optimize import linprog

    rows = np.linalg.norm(X, axis=1) > 0
    Xr = X[rows]
    found = set()
    for signs in product((1.0, 0.0, -1.0), repeat=Xr.shape[0]):
        s = np.array(signs)
        strict, zero = s != 0, s == 0
        result = linprog(
            np.zeros(X.shape[1]),
            A_ub=-(s[strict, None] * Xr[strict]) if strict.any() else None,
            b_ub=-np.ones(int(strict.sum())) if strict.any() else None,
            A_eq=Xr[zero] if zero.any() else None,
            b_eq=np.zeros(int(zero.sum())) if zero.any() else None,
            bounds=[(None, None)] * X.shape[1],
            method="highs",
        )
        if result.status == 0 and (s >= 0).any():
            pattern = np.ones(X.shape[0], dtype=bool)
            pattern[rows] = s >= 0
            found.add(tuple(bool(v) for v in pattern))
    return found
