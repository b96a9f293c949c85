"""Convex two-layer ReLU program (gated form), next to cvxpy + Clarabel and to Adam.

Synthetic ReLU teacher, n = 2000, d = 20, 500 gates, lam = 1e-3, float64. Measured in
one run: losslab's time to a certified relative duality gap of 1e-6 (which bounds the
relative objective error; ADMM, and a semismooth Newton polish when ADMM is slow); cvxpy
+ Clarabel on the same program; Adam on the non-convex gated network (same gates and
patterns) until its objective is within 1e-6 of the certified optimum or 120 s pass; and
the 50-point regularization path. Ratios are to losslab's time. Issue target: at least 100x faster
than Clarabel, and under 2 s.

Then the ReLU (cone) form, losslab's interior-point solver next to cvxpy + Clarabel on
the same programs: the 2-D teacher (n = 80, 97 patterns), 60 standardised rows of
breast cancer (d = 30, 200 gates) and a teacher with n = 500, d = 10, 300 gates.
"""

from __future__ import annotations

import time

import torch

from losslab.convex import (
    ConvexReLUProgram,
    activation_patterns,
    regularization_path,
    sample_gates,
    solve,
)
from losslab.data import load

N, D, GATES, LAM = 2000, 20, 500, 1e-3


def _clarabel_seconds(program: ConvexReLUProgram) -> tuple[float, float]:
    import cvxpy as cp

    X, y, lam = program.X.numpy(), program.y.numpy(), program.lam
    masks = program.patterns.numpy().astype(float)
    constraints = []
    if program.formulation == "gated":
        U = cp.Variable((masks.shape[1], X.shape[1]))
        fit = cp.sum(cp.multiply(masks, X @ U.T), axis=1)
        norms = cp.sum(cp.norm(U, 2, axis=1))
    else:
        V, W = cp.Variable((masks.shape[1], X.shape[1])), cp.Variable((masks.shape[1], X.shape[1]))
        fit = cp.sum(cp.multiply(masks, X @ (V - W).T), axis=1)
        norms = cp.sum(cp.norm(V, 2, axis=1)) + cp.sum(cp.norm(W, 2, axis=1))
        signs = 2 * masks - 1
        constraints = [cp.multiply(signs, X @ V.T) >= 0, cp.multiply(signs, X @ W.T) >= 0]
    objective = cp.sum_squares(fit - y) / (2 * len(y)) + lam * norms
    start = time.perf_counter()
    problem = cp.Problem(cp.Minimize(objective), constraints)
    problem.solve(solver="CLARABEL")
    return time.perf_counter() - start, float(problem.value)


def _adam_seconds(program: ConvexReLUProgram, target: float, budget: float) -> tuple[float, float]:
    """Adam on the gated blocks U directly (the smooth-plus-norm objective, subgradients)."""
    U = torch.zeros(program.patterns.shape[1], program.X.shape[1], dtype=torch.float64)
    U.normal_(0, 1e-3, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    optimizer = torch.optim.Adam([U], lr=1e-3)
    weights, X, y, n = program.operator.weights, program.X, program.y, program.n
    start, best = time.perf_counter(), float("inf")
    while time.perf_counter() - start < budget:
        optimizer.zero_grad()
        fit = ((weights @ U) * X).sum(dim=1)
        value = (fit - y).square().sum() / (2 * n) + LAM * U.norm(dim=1).sum()
        value.backward()
        optimizer.step()
        best = min(best, float(value.detach()))
        if best <= target:
            return time.perf_counter() - start, best
    return float("nan"), best


def _row(case: str, seconds: float, ours: float, note: str) -> None:
    print(f"| {case} | {seconds:.2f} | {seconds / ours:.2f} | {note} |", flush=True)


def main() -> None:
    data = load("teacher_relu", n=N, d=D, width=5, noise=0.1, seed=0)
    patterns = activation_patterns(data.X, sample_gates(D, GATES, seed=0))
    program = ConvexReLUProgram(data.X, data.y, patterns, LAM, "gated")
    threads = torch.get_num_threads()
    print(f"n={N}, d={D}, {patterns.shape[1]} patterns, lam={LAM}, float64, {threads} threads")
    print("| case | seconds | ratio to losslab | note |")
    print("|---|---|---|---|", flush=True)
    start = time.perf_counter()
    result = solve(program, tol=1e-6, max_iter=100_000)
    ours = time.perf_counter() - start
    note = f"{result.iterations} ADMM iterations, gap {result.relative_gap:.1e}"
    _row("losslab, certified gap <= 1e-6", ours, ours, note)
    clarabel, clarabel_value = _clarabel_seconds(program)
    error = (result.objective - clarabel_value) / clarabel_value
    _row("cvxpy + Clarabel", clarabel, ours, f"our objective minus its, relative: {error:+.1e}")
    adam, adam_best = _adam_seconds(program, result.objective * (1 + 1e-6), budget=120.0)
    if adam == adam:
        _row("Adam (lr 1e-3), same objective", adam, ours, "reached the optimum within 1e-6")
    else:
        gap = adam_best / result.objective - 1
        _row(
            "Adam (lr 1e-3), same objective",
            120.0,
            ours,
            f"not reached in 120 s: rel. error {gap:.1e}",
        )
    start = time.perf_counter()
    path = regularization_path(data.X, data.y, n_lams=50, n_gates=GATES, tol=1e-6, max_iter=2_000)
    converged = sum(p.result.converged for p in path.points)
    note = f"{converged}/50 converged within 2000 iterations each"
    _row("50-point path, warm starts", time.perf_counter() - start, ours, note)
    _gated_sweep(data.X, data.y, patterns)
    _relu_form()


def _gated_sweep(X: torch.Tensor, y: torch.Tensor, patterns: torch.Tensor) -> None:
    """The gated solver to a certified 1e-8 on this teacher over five lam and on four
    standardised built-in datasets (bias, 200 gates, targets +-1 or standardised)."""
    print("\nGated form, tol 1e-8: the same teacher over lam, and built-in datasets")
    print("| problem | lam | seconds | iterations | relative gap | converged |")
    print("|---|---|---|---|---|---|", flush=True)
    cases = [("teacher n=2000, d=20, 500 patterns", X, y, patterns, lam)
             for lam in (1e-1, 1e-2, 1e-3, 1e-4, 1e-5)]  # fmt: skip
    for name in ("breast_cancer", "diabetes", "wine", "iris"):
        data = load(name)
        features = (data.X - data.X.mean(0)) / data.X.std(0)
        features = torch.cat([features, torch.ones(len(features), 1, dtype=features.dtype)], 1)
        if name == "diabetes":
            target = (data.y - data.y.mean()) / data.y.std()
        else:
            target = (data.y == data.y[0]).double() * 2 - 1
        gates = sample_gates(features.shape[1], 200, seed=1)
        label = f"{name} n={features.shape[0]}, d={features.shape[1]}, 200 gates"
        for lam in (1e-2, 1e-4):
            cases.append((label, features, target, activation_patterns(features, gates), lam))
    for label, features, target, masks, lam in cases:
        program = ConvexReLUProgram(features, target, masks, lam, "gated")
        start = time.perf_counter()
        result = solve(program, tol=1e-8, max_iter=20_000)
        seconds = time.perf_counter() - start
        print(f"| {label} | {lam:.0e} | {seconds:.2f} | {result.iterations} | "
              f"{result.relative_gap:.1e} | {result.converged} |", flush=True)  # fmt: skip


def _relu_programs() -> dict[str, tuple[ConvexReLUProgram, float]]:
    teacher = load("teacher_relu", n=80, d=2, width=5, noise=0.1, seed=0)
    cancer = load("breast_cancer")
    X = cancer.X[:60]
    X = (X - X.mean(0)) / X.std(0)
    large = load("teacher_relu", n=500, d=10, width=5, noise=0.1, seed=0)
    return {
        "teacher n=80, d=2, 97 patterns, lam 1e-3, tol 1e-7": (ConvexReLUProgram(
            teacher.X, teacher.y, activation_patterns(teacher.X, sample_gates(2, 200, seed=0)),
            1e-3, "relu"), 1e-7),
        "breast cancer n=60, d=30, 200 gates, lam 1e-3, tol 1e-6": (ConvexReLUProgram(
            X, cancer.y[:60], activation_patterns(X, sample_gates(30, 200, seed=0)), 1e-3,
            "relu"), 1e-6),
        "teacher n=500, d=10, 300 gates, lam 1e-2, tol 1e-6": (ConvexReLUProgram(
            large.X, large.y, activation_patterns(large.X, sample_gates(10, 300, seed=0)),
            1e-2, "relu"), 1e-6),
    }  # fmt: skip


def _relu_form() -> None:
    print("\nReLU (cone) form: interior point vs cvxpy + Clarabel")
    print("| problem | losslab (s) | Clarabel (s) | ratio | note |")
    print("|---|---|---|---|---|", flush=True)
    for name, (program, tol) in _relu_programs().items():
        start = time.perf_counter()
        result = solve(program, tol=tol)
        ours = time.perf_counter() - start
        clarabel, value = _clarabel_seconds(program)
        error = (result.objective - value) / value
        note = (f"{result.iterations} iterations, gap {result.relative_gap:.1e}; our objective "
                f"minus Clarabel's, relative: {error:+.1e}")  # fmt: skip
        print(f"| {name} | {ours:.2f} | {clarabel:.2f} | {clarabel / ours:.1f} | {note} |",
              flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
