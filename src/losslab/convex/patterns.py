r"""Activation patterns of a two-layer ReLU network on data ``X``.

A neuron with weights ``w`` is active on the rows ``{i : x_i . w >= 0}``; its pattern is
``D(w) = diag(1[X w >= 0])``. The convex reformulation (Pilanci & Ergen 2020; P3) has one
block of variables per pattern, so the patterns are stored as a boolean matrix of shape
``(n, P)``, column ``i`` the diagonal of ``D_i``. Patterns that activate no non-zero row
contribute nothing to any fit and are dropped, as are repeats.

The full set ``{D(w) : w in R^d}`` is the set of regions of the central hyperplane
arrangement ``{w : x_i . w = 0}``; every ``w`` lies in the closure of a full-dimensional
region, and that region's pattern fits it equally well, so the full-dimensional regions
suffice for the ReLU form. For ``n`` hyperplanes spanning a space of rank ``r`` there are
at most ``2 * sum_{k<r} C(n-1, k)`` regions (Cover 1965; equality in general position).

The gated form's global problem ranges over every gate ``g``, and a gate on a
lower-dimensional cell (``x_i . g = 0`` for some rows, ``g = 0`` at the extreme) has its
own pattern: those rows count as active, ``1[X g >= 0]``, a pattern no full-dimensional
region has. ``enumerate_patterns(X, closed=True)`` lists these too: the cells of every
intersection of ``k < r`` independent hyperplanes (each an arrangement of the other
hyperplanes in a space of dimension ``r - k``), and ``g = 0``.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from itertools import combinations, product
from math import comb

import numpy as np
import torch
from scipy.optimize import linprog

from losslab.convex.validation import as_features
from losslab.errors import ConvexProblemError


def sample_gates(
    d: int,
    n_gates: int,
    seed: int = 0,
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """``n_gates`` standard Gaussian gate vectors as the columns of a (d, n_gates) tensor."""
    for name, value in (("d", d), ("n_gates", n_gates)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ConvexProblemError(f"{name} must be an integer >= 1; got {value!r}")
    generator = torch.Generator().manual_seed(int(seed))
    return torch.randn(int(d), int(n_gates), generator=generator, dtype=dtype).to(device)


def activation_patterns(X: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
    """Distinct patterns ``1[X g >= 0]`` of the gates (columns of ``gates``), shape (n, P).

    Patterns that activate no non-zero row of ``X`` are dropped. Columns come in the
    order of the gates that first produce them.
    """
    if not bool(torch.isfinite(gates).all()):
        raise ConvexProblemError("gates hold NaN or inf; use finite gate vectors")
    if gates.ndim != 2 or gates.shape[0] != X.shape[1]:
        raise ConvexProblemError(
            f"gates must have shape (d, n_gates) = ({X.shape[1]}, ...) to match X; "
            f"got {tuple(gates.shape)}"
        )
    return unique_patterns(X, X @ gates.to(X) >= 0)


def unique_patterns(X: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Distinct columns of the boolean ``masks`` (n, k) in first-seen order, without the
    ones that activate no non-zero row of ``X``."""
    return masks[:, unique_pattern_columns(X, masks)]


def unique_pattern_columns(X: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Indices of the columns :func:`unique_patterns` keeps (each pattern's first column)."""
    nonzero_rows = (X != 0).any(dim=1)
    useful = torch.nonzero((masks & nonzero_rows[:, None]).any(dim=0)).flatten()
    if useful.numel() == 0:
        return useful
    columns = masks[:, useful].T.cpu().numpy()
    _, first = np.unique(np.packbits(columns, axis=1), axis=0, return_index=True)
    return useful[torch.as_tensor(np.sort(first), device=useful.device)]


def network_patterns(X: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The distinct patterns of a network's neurons: ``weights`` has one row per neuron,
    of length ``X.shape[1]`` (include the bias as the last entry when ``X`` has a column
    of ones)."""
    return activation_patterns(X, weights.T)


@dataclass(frozen=True)
class PatternCount:
    """The upper bound on the number of patterns of ``X``, and what it depends on."""

    bound: int
    hyperplanes: int
    rank: int


def count_bound(X: torch.Tensor) -> PatternCount:
    """Cover's bound ``2 sum_{k<r} C(m-1, k)`` for ``m`` distinct hyperplanes of rank ``r``."""
    normals, _, _ = _distinct_normals(np.asarray(X.detach().cpu(), dtype=np.float64))
    m = normals.shape[0]
    rank = int(np.linalg.matrix_rank(normals)) if m else 0
    bound = 2 * sum(comb(m - 1, k) for k in range(rank)) if m else 1
    return PatternCount(bound=bound, hyperplanes=m, rank=rank)


class _LinearProgramBudget:
    """Counts the linear programs of a degenerate enumeration; refuses past ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0

    def spend(self) -> None:
        self.used += 1
        if self.used > self.limit:
            raise ConvexProblemError(
                f"X is degenerate (repeated, collinear or integer-grid rows): deciding its "
                f"activation regions needs more than max_linear_programs={self.limit:,} linear "
                "programs (2 to 4 ms each); sample gates instead, or raise "
                "max_linear_programs"
            )


def enumerate_patterns(
    X: torch.Tensor,
    *,
    max_patterns: int = 20_000,
    max_linear_programs: int = 200,
    closed: bool = False,
    seed: int = 0,
) -> torch.Tensor:
    """Every activation pattern that ``X`` admits, exactly, as a boolean (n, P) tensor.

    Witness points are placed next to every vertex ray of the hyperplane arrangement
    (and at random); their sign vectors are regions. When they number Cover's upper
    bound, which happens exactly for data in general position, the list is complete:
    cost ``O(C(m, r-1) 2^r (m + r^3))`` for ``m`` distinct hyperplanes of rank ``r``.
    Otherwise (degenerate data: repeated, collinear or integer-grid rows) the regions
    are built one hyperplane at a time, and a side of a region that no witness shows is
    decided by a linear program ``{g : s_j x_j . g >= 1}`` (HiGHS): up to ``m * P``
    LPs, seconds for a few hundred patterns. ``P`` grows like ``n^(r-1)``, so this is
    for small ``d`` (or small ``n``). Refuses, with the bound, when Cover's bound
    exceeds ``max_patterns``, and when degenerate data need more than
    ``max_linear_programs`` linear programs (2 to 4 ms each: integer data with entries in
    ``-1..1``, 8 x 3, need about 20; in ``-5..5``, 40 x 3, 14,000, and 20 x 5, 23,000).

    ``closed=True`` adds the patterns ``1[X g >= 0]`` of gates on lower-dimensional cells
    (module docstring): what the gated form's global problem ranges over. Cost: one
    enumeration of the same kind per intersection of ``k < r`` independent hyperplanes,
    ``sum_{k<r} C(m, k)`` of them.
    """
    X = as_features(X)
    X_np = np.asarray(X.detach().cpu(), dtype=np.float64)
    count = count_bound(X)
    if count.bound > max_patterns:
        raise ConvexProblemError(
            f"X (n={X_np.shape[0]}, rank {count.rank}) may have up to {count.bound:,} activation "
            f"patterns, more than max_patterns={max_patterns:,}; sample gates instead, "
            "or raise max_patterns"
        )
    faces = sum(comb(count.hyperplanes, k) for k in range(count.rank))
    if closed and faces > max_patterns:
        raise ConvexProblemError(
            f"X has {faces:,} intersections of fewer than {count.rank} of its hyperplanes, each "
            f"with cells of its own, more than max_patterns={max_patterns:,}; sample gates "
            "instead, or raise max_patterns"
        )
    normals, group, orientation = _distinct_normals(X_np)
    if normals.shape[0] == 0:
        if closed:  # g = 0 (or any g): every row is active
            return torch.ones(X_np.shape[0], 1, dtype=torch.bool, device=X.device)
        return torch.zeros(X_np.shape[0], 0, dtype=torch.bool, device=X.device)
    budget = _LinearProgramBudget(max_linear_programs)
    signs = _cell_signs(normals, seed, budget, closed)
    # Row i is active where its hyperplane's sign, times its orientation, is >= 0 (a sign
    # 0: g on that hyperplane); zero rows always.
    masks = np.ones((X_np.shape[0], signs.shape[0]), dtype=bool)
    rows = group >= 0
    masks[rows] = (signs[:, group[rows]].T * orientation[rows, None]) >= 0
    return unique_patterns(X, torch.as_tensor(masks, device=X.device))


def _row_space(normals: np.ndarray) -> np.ndarray:
    """``normals`` in coordinates of their row space (patterns depend on g only through its
    projection on it)."""
    _, singular, vt = np.linalg.svd(normals, full_matrices=False)
    return normals @ vt[singular > singular[0] * 1e-12].T


def _cell_signs(
    normals: np.ndarray, seed: int, budget: _LinearProgramBudget, closed: bool
) -> np.ndarray:
    """Sign vectors (F, m) of the full-dimensional regions of the arrangement of the
    (distinct, unit) ``normals``; with ``closed``, of every cell (signs 0 on the
    hyperplanes that contain it), ``g = 0`` included."""
    m = normals.shape[0]
    signs = [_arrangement_regions(_row_space(normals), seed, budget)]
    if not closed:
        return signs[0]
    rank = int(np.linalg.matrix_rank(normals))
    signs.append(np.zeros((1, m)))
    if signs[0].shape[0] == 2 * sum(comb(m - 1, k) for k in range(rank)):
        # general position (Cover's count): every cell of an intersection of k < r
        # hyperplanes borders the region on the positive side of all k, which has its
        # pattern; only g = 0 (all rows on their hyperplanes) can add one
        return np.concatenate(signs)
    for k in range(1, rank):
        for subset in combinations(range(m), k):
            chosen = normals[list(subset)]
            if np.linalg.matrix_rank(chosen) < k:
                continue
            _, _, vt = np.linalg.svd(chosen)
            restricted = normals @ vt[k:].T  # the hyperplanes within the subspace A_J g = 0
            scale = np.linalg.norm(restricted, axis=1)
            off = scale > 1e-12
            if not off.any():
                continue
            inner, inner_group, inner_orientation = _distinct_normals(restricted[off])
            inner_signs = _cell_signs(inner, seed, budget, closed=False)
            cell = np.zeros((inner_signs.shape[0], m))
            cell[:, off] = inner_signs[:, inner_group] * inner_orientation
            signs.append(cell)
    return np.concatenate(signs)


def try_enumerate_patterns(
    X: torch.Tensor,
    *,
    max_patterns: int = 20_000,
    max_linear_programs: int = 200,
    closed: bool = False,
    seed: int = 0,
) -> torch.Tensor | None:
    """:func:`enumerate_patterns`, or ``None`` where it refuses (too many patterns, or
    degenerate data needing too many linear programs): the caller samples instead."""
    try:
        return enumerate_patterns(X, max_patterns=max_patterns, closed=closed, seed=seed,
                                  max_linear_programs=max_linear_programs)  # fmt: skip
    except ConvexProblemError:
        return None


def _distinct_normals(X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit normals of the distinct hyperplanes ``x_i^perp`` (rows equal up to a non-zero
    factor share one), each row's hyperplane index (-1 for a zero row) and orientation."""
    norms = np.linalg.norm(X, axis=1)
    group = np.full(X.shape[0], -1)
    orientation = np.ones(X.shape[0])
    normals: list[np.ndarray] = []
    for i in np.flatnonzero(norms > 0):
        unit = X[i] / norms[i]
        for j, normal in enumerate(normals):
            cosine = float(unit @ normal)
            if abs(cosine) > 1 - 1e-12:
                group[i], orientation[i] = j, np.sign(cosine)
                break
        else:
            group[i] = len(normals)
            normals.append(unit)
    return np.array(normals).reshape(-1, X.shape[1]), group, orientation


def _arrangement_regions(
    normals: np.ndarray, seed: int, budget: _LinearProgramBudget
) -> np.ndarray:
    """Sign vectors (P, m) of the full-dimensional regions of ``{g : a_j . g = 0}``."""
    m, r = normals.shape
    if r == 1:  # a line: the two half-lines
        return np.stack([np.sign(normals[:, 0]), -np.sign(normals[:, 0])])
    rng = np.random.default_rng(seed)
    witnesses = np.c_[rng.standard_normal((r, 1024)), _vertex_witnesses(normals, rng)]
    # Keep witnesses clear of every hyperplane: rounding cannot flip their signs.
    products = normals @ witnesses  # (m, S)
    clear = (np.abs(products) > 1e-9 * np.linalg.norm(witnesses, axis=0)).all(axis=0)
    witness_signs = np.sign(products[:, clear])
    found = np.unique(witness_signs.T, axis=0)
    if found.shape[0] == 2 * sum(comb(m - 1, k) for k in range(r)):
        return found  # as many regions as Cover's upper bound: none is missing
    # A degenerate arrangement: build the regions hyperplane by hyperplane, with linear
    # programs deciding the sides that no witness shows.
    # A region: its sign vector on the hyperplanes so far, and the witnesses inside it.
    regions: list[tuple[np.ndarray, np.ndarray]] = [
        (np.zeros(0), np.arange(witness_signs.shape[1]))
    ]
    for k in range(m):
        split: list[tuple[np.ndarray, np.ndarray]] = []
        for signs, inside in regions:
            for side in (1.0, -1.0):
                members = inside[witness_signs[k, inside] == side]
                if members.size or _side_is_feasible(normals[: k + 1], np.r_[signs, side], budget):
                    split.append((np.r_[signs, side], members))
        regions = split
    return np.array([signs for signs, _ in regions]).reshape(len(regions), m)


def _vertex_witnesses(normals: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Points in every region next to each vertex ray of the arrangement, shape (r, S).

    A vertex ray ``v`` spans the intersection of ``r - 1`` hyperplanes ``J``; the point
    ``v + eps * pinv(A_J) sigma`` has sign ``sigma_j`` on each ``j`` in ``J`` and keeps
    ``v``'s sign on the others when ``eps`` is small. In general position every region
    has a vertex ray on its boundary, so these points witness every region; in
    degenerate arrangements the linear programs find the rest.
    """
    m, r = normals.shape
    if r < 2 or m < r - 1:
        return np.zeros((r, 0))
    subsets = np.array(list(combinations(range(m), r - 1)))
    if subsets.shape[0] > 100_000:
        subsets = subsets[rng.choice(subsets.shape[0], 100_000, replace=False)]
    A = normals[subsets]  # (T, r-1, r)
    _, singular, vt = np.linalg.svd(A)
    rays = vt[:, -1, :]  # (T, r): the null direction of each A_J
    independent = singular[:, -1] > 1e-9 * singular[:, 0]
    A, rays, subsets = A[independent], rays[independent], subsets[independent]
    pinv = np.linalg.pinv(A)  # (T, r, r-1)
    sigmas = np.array(list(product((1.0, -1.0), repeat=r - 1)))  # (K, r-1)
    offsets = np.einsum("trj,kj->tkr", pinv, sigmas)  # (T, K, r)
    points = []
    for ray_sign in (1.0, -1.0):
        ray = ray_sign * rays
        margin = np.abs(ray @ normals.T)  # (T, m)
        margin[np.arange(len(subsets))[:, None], subsets] = np.inf
        slope = np.abs(offsets @ normals.T).max(axis=2)  # (T, K)
        eps = 0.25 * margin.min(axis=1, keepdims=True) / np.maximum(slope, 1e-300)
        points.append((ray[:, None, :] + np.minimum(eps, 1.0)[..., None] * offsets).reshape(-1, r))
    return np.concatenate(points).T


def _side_is_feasible(normals: np.ndarray, signs: np.ndarray, budget: _LinearProgramBudget) -> bool:
    """Is ``{g : signs_j a_j . g >= 1 for all j}`` non-empty? (a linear program)."""
    budget.spend()
    result = linprog(
        c=np.zeros(normals.shape[1]),
        A_ub=-(signs[:, None] * normals),
        b_ub=-np.ones(normals.shape[0]),
        bounds=[(None, None)] * normals.shape[1],
        method="highs",
    )
    return bool(result.status == 0)
