r"""Certificates of optimality for a solved convex ReLU program (P3).

A solution ``U`` over sampled patterns is optimal for *its* program when the duality gap
is small. It is optimal for the *global* problem (all patterns the data admits, hence the
non-convex training problem with enough neurons; Pilanci & Ergen 2020) when the same
dual point ``q`` (the solver's best, by default the residual ``(y - A U) / n``) is
feasible for every pattern ``D`` as well:

- gated form: ``||X^T D q|| <= lam``;
- ReLU form:  ``||Pi_{K_D}(X^T D q)|| <= lam`` and ``||Pi_{K_D}(-X^T D q)|| <= lam`` with
  ``K_D = {v : (2D - I) X v >= 0}``, i.e. ``max_{||u|| <= 1} |q . (X u)_+| <= lam``.

When every pattern can be enumerated (:func:`enumerate_patterns`) this is checked
exactly and ``is_global`` may be true. Otherwise the largest violation over a large
fresh sample of patterns is reported: a lower bound on the true violation, so the
certificate then speaks for the sampled patterns only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch

from losslab.convex.patterns import (
    PackedPatterns,
    packed_activation_patterns,
    sample_gates,
    try_enumerate_patterns,
)
from losslab.convex.solvers import SolveResult


@dataclass(frozen=True)
class Certificate:
    """What is proved about a solution.

    ``relative_gap`` is over the program's own patterns; ``global_relative_gap`` uses the
    dual point shrunk to be feasible for all checked patterns; ``max_dual_ratio`` is the
    largest ``||Pi_K(A_D^T q)|| / lam`` over them (<= 1 + tol at a global optimum): exact
    when at least 1, and below 1 an upper bound (no constraint violated; the exact value
    would change no bound).
    """

    objective: float
    dual_objective: float
    duality_gap: float
    relative_gap: float
    constraint_violation: float
    global_check: Literal["enumerated", "sampled"]
    n_patterns_checked: int
    max_dual_ratio: float
    global_dual_objective: float
    global_relative_gap: float
    is_global: bool
    message: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def certify(
    result: SolveResult,
    *,
    tol: float = 1e-6,
    max_enumerated: int = 20_000,
    n_check_gates: int = 20_000,
    seed: int = 0,
) -> Certificate:
    """Certificate of ``result``: gaps, and the global check (see the module docstring).

    ``is_global`` is true only when every pattern of ``X`` was enumerated and the gap
    with the globally feasible dual point is at most ``tol`` (relative). The sampled check
    keeps its ``n_check_gates`` patterns packed (``n / 8`` bytes each) and forms their
    masks and correlations a chunk at a time: O(n d n_check_gates) time, O(2^22 +
    n_check_gates (n / 8 + d)) memory, never an (n, n_check_gates) float64 array.
    """
    program = result.program
    q = result.dual_point
    if q is None:
        q = (program.y - program.operator.fit(result.blocks)) / program.n
    check: Literal["enumerated", "sampled"] = "sampled"
    # the gated form's global problem also has the patterns of gates on lower-dimensional cells
    enumerated = try_enumerate_patterns(
        program.X, max_patterns=max_enumerated, closed=program.formulation == "gated", seed=seed
    )
    patterns: torch.Tensor | PackedPatterns
    if enumerated is not None:
        check, patterns = "enumerated", enumerated
    else:
        # packed (n / 8 bytes a pattern), formed and checked a chunk of gates at a time
        gates = sample_gates(program.X.shape[1], n_check_gates, seed=seed + 7919).to(program.X)
        patterns = packed_activation_patterns(program.X, gates)
    ratio_all = program.max_dual_ratio(q, patterns)
    ratio_own = program.max_dual_ratio(q, program.patterns)
    bound = program._bound(q, max(ratio_all, ratio_own))
    global_gap = max(result.objective - bound.objective, 0.0) / max(abs(result.objective), 1e-300)
    is_global = check == "enumerated" and global_gap <= tol
    n_checked = patterns.shape[1]
    if is_global:
        message = f"globally optimal: all {n_checked} patterns of X checked, gap {global_gap:.1e}"
    elif check == "enumerated":
        message = (
            f"not certified globally optimal: over all {n_checked} patterns the relative gap "
            f"is {global_gap:.1e} (> tol {tol:.0e}); largest dual ratio {ratio_all:.4f}"
        )
    else:
        message = (
            f"optimal over the sampled patterns only (relative gap {result.relative_gap:.1e}); "
            f"largest dual-constraint ratio over {patterns.shape[1]} fresh patterns "
            f"{ratio_all:.4f} (<= 1 means no violation found)"
        )
    return Certificate(
        objective=result.objective,
        dual_objective=result.dual_objective,
        duality_gap=result.duality_gap,
        relative_gap=result.relative_gap,
        constraint_violation=result.constraint_violation,
        global_check=check,
        n_patterns_checked=int(patterns.shape[1]),
        max_dual_ratio=ratio_all,
        global_dual_objective=bound.objective,
        global_relative_gap=global_gap,
        is_global=is_global,
        message=message,
    )
