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
from math import comb, sqrt

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


#: Largest number of entries of one (n, chunk) block of pre-activations ``X G`` (float64:
#: 32 MiB) when many gates or patterns are visited a chunk of columns at a time.
CHUNK_ENTRIES = 2**22


def chunk_width(n: int) -> int:
    """Columns per chunk of an (n, P) array: ``CHUNK_ENTRIES // n``, at least 1."""
    return max(1, CHUNK_ENTRIES // max(n, 1))


@dataclass(frozen=True, eq=False)
class PackedPatterns:
    """Patterns (n, P) stored 8 rows to a byte: ``bits`` (P, ceil(n / 8)) uint8, row ``p``
    the column ``p`` packed by :func:`numpy.packbits`; ``n / 8`` bytes a pattern (1/64 of
    its float64 mask). ``shape`` is that of the boolean (n, P) matrix they stand for;
    :meth:`columns` unpacks some of them on ``device``."""

    bits: np.ndarray
    n: int
    device: torch.device

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n, int(self.bits.shape[0]))

    def columns(self, ids: torch.Tensor) -> torch.Tensor:
        """The patterns ``ids`` (1-D integer tensor) as a boolean (n, len(ids)) tensor
        (row-major, as a boolean index of a mask produces it)."""
        rows = np.unpackbits(self.bits[ids.cpu().numpy()], axis=1, count=self.n)
        return torch.as_tensor(np.ascontiguousarray(rows.T, dtype=bool), device=self.device)

    def unpacked(self) -> torch.Tensor:
        """All the patterns as a boolean (n, P) tensor."""
        return self.columns(torch.arange(self.shape[1]))


def pattern_columns(patterns: torch.Tensor | PackedPatterns, ids: torch.Tensor) -> torch.Tensor:
    """Columns ``ids`` of a boolean (n, P) ``patterns`` tensor or of packed patterns."""
    if isinstance(patterns, PackedPatterns):
        return patterns.columns(ids)
    return patterns[:, ids]


def activation_patterns(X: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
    """Distinct patterns ``1[X g >= 0]`` of the gates (columns of ``gates``), shape (n, P).

    Patterns that activate no non-zero row of ``X`` are dropped. Columns come in the
    order of the gates that first produce them. :func:`packed_activation_patterns`, unpacked.
    """
    return packed_activation_patterns(X, gates).unpacked()


def packed_activation_patterns(X: torch.Tensor, gates: torch.Tensor) -> PackedPatterns:
    """The patterns of :func:`activation_patterns` (the same, in the same order), packed.

    ``X G`` is formed a chunk of ``chunk_width(n)`` gates at a time and kept only as packed
    bits: O(n d k) time for ``k`` gates, O(CHUNK_ENTRIES + k n / 8) memory (never an (n, k)
    float64 or boolean array)."""
    if not bool(torch.isfinite(gates).all()):
        raise ConvexProblemError("gates hold NaN or inf; use finite gate vectors")
    if gates.ndim != 2 or gates.shape[0] != X.shape[1]:
        raise ConvexProblemError(
            f"gates must have shape (d, n_gates) = ({X.shape[1]}, ...) to match X; "
            f"got {tuple(gates.shape)}"
        )
    gates = gates.to(X)
    nonzero_rows = (X != 0).any(dim=1).cpu().numpy()
    width = chunk_width(X.shape[0])
    bits, useful = [], []
    for first in range(0, gates.shape[1], width):
        # reduced in NumPy: a small torch result kept per chunk fragmented the heap (+1 GB
        # resident at n = 20,000 and 20,000 gates)
        columns = (X @ gates[:, first : first + width] >= 0).T.cpu().numpy()  # (chunk, n)
        useful.append((columns & nonzero_rows).any(axis=1))
        bits.append(np.packbits(columns, axis=1))
    packed = np.concatenate(bits) if bits else np.zeros((0, (X.shape[0] + 7) // 8), np.uint8)
    keep = _first_distinct_rows(packed, np.concatenate(useful) if useful else np.zeros(0, bool))
    return PackedPatterns(packed[keep], int(X.shape[0]), X.device)


def unique_patterns(X: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Distinct columns of the boolean ``masks`` (n, k) in first-seen order, without the
    ones that activate no non-zero row of ``X``."""
    return masks[:, unique_pattern_columns(X, masks)]


def unique_pattern_columns(X: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Indices of the columns :func:`unique_patterns` keeps (each pattern's first column)."""
    nonzero_rows = (X != 0).any(dim=1)
    useful = (masks & nonzero_rows[:, None]).any(dim=0).cpu().numpy()
    first = _first_distinct_rows(np.packbits(masks.T.cpu().numpy(), axis=1), useful)
    return torch.as_tensor(first, dtype=torch.long, device=masks.device)


def _first_distinct_rows(packed: np.ndarray, useful: np.ndarray) -> np.ndarray:
    """Increasing indices of the first occurrence of each distinct row of ``packed`` (k, b)
    among the rows where ``useful`` (k,) is true."""
    candidates = np.flatnonzero(useful)
    if candidates.size == 0:
        return candidates
    _, first = np.unique(packed[candidates], axis=0, return_index=True)
    return candidates[np.sort(first)]


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
    """Cover's bound ``2 sum_{k<r} C(m-1, k)`` for ``m`` distinct hyperplanes of rank ``r``.

    Cost O(n m d) for the distinct hyperplanes (:func:`_distinct_normals`), O(m d^2) for
    the rank."""
    normals, _, _ = _distinct_normals(np.asarray(X.detach().cpu(), dtype=np.float64))
    return _count_of(normals)


def _count_of(normals: np.ndarray, rank: int | None = None) -> PatternCount:
    """Cover's bound for the distinct unit ``normals`` (m, d), of rank ``rank`` (by default
    ``np.linalg.matrix_rank(normals)``)."""
    m = normals.shape[0]
    if rank is None:
        rank = int(np.linalg.matrix_rank(normals)) if m else 0
    bound = 2 * sum(comb(m - 1, k) for k in range(rank)) if m else 1
    return PatternCount(bound=bound, hyperplanes=m, rank=rank)


def _leading_count_above(X: np.ndarray, limit: int) -> tuple[int, PatternCount] | None:
    """``(rows, count)``: Cover's bound over the first ``rows`` rows of ``X`` (n, d) when it
    already exceeds ``limit`` (then so does :func:`count_bound` of all of ``X``); None when
    no leading block of 64, 256, 1024, ... rows (fewer than n) does.

    It is a lower bound on the full one: Cover's bound increases with ``m`` and with ``r``
    (``r <= m``), the distinct normals of the first rows are the first of all rows' (the
    grouping is greedy in row order), and the rank used counts only the singular values
    above ``tau = 4 sqrt(n) max(n, d) eps``, at least ``matrix_rank``'s tolerance for all
    the (unit) normals, whose singular values are at least those of any subset of them.
    So the refusal comes after O(rows^2 d) work, not O(n^2 d); the blocks grow 4-fold, so
    the work is at most 4/3 of the last block's."""
    n = X.shape[0]
    tau = 4 * sqrt(n) * max(n, X.shape[1]) * np.finfo(np.float64).eps
    rows = 64
    while rows < n:
        normals, _, _ = _distinct_normals(X[:rows])
        singular = np.linalg.svd(normals, compute_uv=False) if normals.size else np.zeros(0)
        count = _count_of(normals, rank=int((singular > tau).sum()))
        if count.bound > limit:
            return rows, count
        rows *= 4
    return None


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
    The refusal comes early, from the bound of the first few rows when that already
    exceeds ``max_patterns`` (:func:`_leading_count_above`).

    ``closed=True`` adds the patterns ``1[X g >= 0]`` of gates on lower-dimensional cells
    (module docstring): what the gated form's global problem ranges over. Cost: one
    enumeration of the same kind per intersection of ``k < r`` independent hyperplanes,
    ``sum_{k<r} C(m, k)`` of them.
    """
    X = as_features(X)
    X_np = np.asarray(X.detach().cpu(), dtype=np.float64)
    leading = _leading_count_above(X_np, max_patterns)
    if leading is not None:
        read, low = leading
        raise ConvexProblemError(
            f"X (n={X_np.shape[0]}) may have {low.bound:,} activation patterns or more "
            f"(Cover's bound for its first {read} rows alone: {low.hyperplanes} distinct "
            f"hyperplanes, rank {low.rank}), more than max_patterns={max_patterns:,}; sample "
            "gates instead, or raise max_patterns"
        )
    normals, group, orientation = _distinct_normals(X_np)
    count = _count_of(normals)
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
    factor share one), each row's hyperplane index (-1 for a zero row) and orientation.

    Greedy in row order: row ``i`` joins the first hyperplane so far whose unit normal
    ``a_j`` has ``|x_i . a_j| / ||x_i|| > 1 - 1e-12`` (orientation the cosine's sign), or
    starts a new one with normal ``x_i / ||x_i||``. The cosines are taken for a chunk of 256
    rows at once, against the normals so far (one BLAS product), and then among the
    chunk's unmatched rows (one product, then a short Python step per row): O(n m d)
    time for ``m`` hyperplanes, O(256 (m + 256)) memory."""
    norms = np.linalg.norm(X, axis=1)
    group = np.full(X.shape[0], -1)
    orientation = np.ones(X.shape[0])
    normals = np.zeros((0, X.shape[1]))
    nonzero = np.flatnonzero(norms > 0)
    for first in range(0, nonzero.size, 256):
        rows = nonzero[first : first + 256]
        units = X[rows] / norms[rows, None]
        cosines = units @ normals.T  # (chunk, m) against the normals so far
        near = np.abs(cosines) > 1 - 1e-12
        matched = near.any(axis=1)
        j = near[matched].argmax(axis=1) if matched.any() else np.zeros(0, int)  # the first
        group[rows[matched]] = j
        orientation[rows[matched]] = np.sign(cosines[matched, j])
        # the other rows, in order, against the chunk's new normals
        fresh = np.flatnonzero(~matched)
        among = units[fresh] @ units[fresh].T
        starts: list[int] = []  # positions in fresh of the rows that start a hyperplane
        for a in range(fresh.size):
            cosine = among[a, starts]
            hit = np.flatnonzero(np.abs(cosine) > 1 - 1e-12)
            if hit.size:
                group[rows[fresh[a]]] = normals.shape[0] + hit[0]
                orientation[rows[fresh[a]]] = np.sign(cosine[hit[0]])
            else:
                group[rows[fresh[a]]] = normals.shape[0] + len(starts)
                starts.append(a)
        normals = np.concatenate([normals, units[fresh[starts]]])
    return normals, group, orientation


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
