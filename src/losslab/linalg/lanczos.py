r"""Extreme eigenpairs of a symmetric operator seen only through products: thick-restart Lanczos.

For a symmetric ``A`` (``dim x dim``) given as ``matvec(v) = A v``, Lanczos builds an
orthonormal basis ``Q_m = [q_0, ..., q_{m-1}]`` of the Krylov space
``K_m(A, q_0) = span{q_0, A q_0, ..., A^{m-1} q_0}`` and the projection
``T_m = Q_m^T A Q_m`` with

.. math::  A Q_m = Q_m T_m + \beta_m q_m e_m^T,

``T_m`` tridiagonal (``alpha_j = q_j^T A q_j`` on the diagonal, ``beta_j = ||r_j||`` beside
it). An eigenpair ``T_m y = theta y`` gives the Ritz pair ``(theta, Q_m y)``, whose residual is
known without another product:

.. math::  ||A Q_m y - \theta Q_m y||_2 = |\beta_m\, y_{m-1}|.

**Full reorthogonalisation.** Every new vector is orthogonalised against *all* stored vectors
by classical Gram-Schmidt, twice ("twice is enough", Giraud et al. 2005; a third pass when the
second still removed more than half the norm), so ``Q_m`` stays orthonormal to rounding and no
spurious copies of converged eigenvalues appear.

**Thick restart** (Wu & Simon 2000, "Thick-restart Lanczos method for large symmetric
eigenvalue problems", SIAM J. Matrix Anal. Appl. 22). Memory: the basis of
``krylov_dim + 1`` vectors of length ``dim``; while a restart rewrites it, the kept Ritz
vectors (fewer than ``krylov_dim``) are held beside it, and the result adds ``k``: at most
about ``2 krylov_dim + k + 1`` vectors at the peak (measured: ``dim = 10^6``, ``k = 100``,
2.7 times the basis).
When the basis is full, the ``l`` Ritz vectors nearest the wanted end(s) of the spectrum are
kept, ``q_m`` is appended, and the projection becomes the arrowhead matrix

.. math::  T = \begin{pmatrix} \mathrm{diag}(\theta_1..\theta_l) & s \\ s^T & \alpha_l
           \end{pmatrix}, \qquad s_i = \beta_m y_{m-1, i},

after which plain Lanczos steps continue. This is mathematically the implicitly restarted
Lanczos method with exact shifts (ARPACK's), in ``O(krylov_dim * dim)`` memory.

**Convergence** is checked after every step, from the small ``m x m`` eigenproblem (cheap
next to a product): a wanted Ritz pair is converged when ``|beta_m y_{m-1,i}| <= tol *
max_j |theta_j|``, i.e. ``tol`` is *relative to the largest Ritz value in magnitude* (an
estimate of ``||A||_2`` from below). When all wanted pairs pass, their residuals
``||A v - theta v||_2`` are recomputed with ``k`` explicit products and must pass the same test
(if they do not, iteration continues once with a 100 times smaller internal tolerance; a
second failure ends with ``reason="accuracy floor"``: ``tol`` is below what the dtype and the
operator's rounding allow).

**Invariant subspaces and repeated eigenvalues.** When ``beta_m`` vanishes (to ``10 eps
sqrt(dim) ||A||``, or to a tenth of the tolerance, ``0.1 tol max|theta|``, so that every Ritz
pair of the basis has converged) the Krylov space is invariant: its Ritz pairs are eigenpairs
(to that accuracy). A *block* (the steps since the start or since the last block) started from
a random vector becomes invariant after ``r`` steps only when the space it was drawn from holds
``r`` distinct eigenvalues (with probability one), all found by the block; the rest of the
space holds only copies of them. So when one of the block's eigenvalues lies beyond the
``k``-th wanted value (a copy could displace it), convergence is not judged until a new block
has been explored, as long as the longest block so far (at most ``k + 1`` such blocks, and each
fitting between two restarts). The new block starts from a fresh random vector orthogonal to
the basis (coupling ``0``) after an invariant subspace. In floating point a Krylov space that
is invariant in exact arithmetic often ends with ``beta_m`` far above rounding (the rounding is
amplified by the steps), so ``beta_m <= 1e-5 ||A||`` (:data:`NEARLY_INVARIANT`) also ends a
block; the next block then continues with ``q_m = w / beta_m`` and the coupling kept (no
accuracy is lost), but since ``q_m`` is mostly rounding, not a random vector, that block ends
only after its full length. This finds repeated eigenvalues (e.g. the null space of a low-rank
matrix, or eight copies of the top eigenvalue among a few distinct ones) as often as they are
wanted. When the basis spans the whole space every pair is exact.

**Copies of found eigenvalues.** A single-vector Krylov method sees, in exact arithmetic,
one direction of each eigenspace reachable from its start. Without an invariant subspace to
reveal them, further copies of a wanted eigenvalue are found only when rounding brings in
their directions, which is not guaranteed: then the next distinct eigenvalue takes the
copy's place with ``converged=True`` (ARPACK shares this). The typical case is a Hessian's
null space (dead ReLU units, symmetries): the Krylov space meets one zero direction, and
"the three smallest" came back as ``0, 5e-5, 4.5e-3`` where 119 zeros exist. So when the
converged wanted values of one side hold a repeated value (two within ``tol max|theta|``)
or a zero, other than the boundary value, the found vectors ``V`` are *deflated*: Lanczos
runs again, for the same wanted pairs, on ``P A P + sigma V V^T`` (``P = I - V V^T``,
``sigma`` a value that is not wanted) from a fresh random vector orthogonal to ``V``; its
converged values beyond the found boundary values replace them. Each such round can
bring one more copy of each value, so rounds go on (at most ``k``) until one brings none or
the wanted values of each side are all copies of its extreme one. The returned pairs get
explicit residuals. A round that does not converge or cannot run within ``max_matvecs``
(``k`` products are kept for the residuals), or residuals that miss the tolerance, give
``converged=False, reason="repeated eigenvalue unresolved"``; by default the search may
use ``k`` more runs' worth of products beyond ``max_matvecs``' default. Measured:
the null-space case above now returns zeros; five copies of 3 among 395 distinct values
come back as five. A copy can still hide when no repeat and no zero is visible among the
wanted values (one copy of a non-zero value seen, the others not). Clustered, distinct
eigenvalues are found.

**Cost.** One product per step, plus ``k`` for the explicit residuals; the reorthogonalisation
costs ``4 m dim`` flops per step, the small eigenproblem ``O(m^3)`` on the CPU (``m <=
krylov_dim``). A deflation round (only when a repeat or a zero is seen) is a Lanczos run of
its own, about as long as the first: 80 products against 23 for the three smallest pairs of
the 139-parameter Hessian above.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch

from losslab.errors import CurvatureError

Matvec = Callable[[torch.Tensor], torch.Tensor]
Which = Literal["largest", "smallest", "both"]

#: ``|q_i^T A q_j - q_j^T A q_i|`` above this fraction of ``||A||`` means ``matvec`` is not
#: symmetric (rounding of a float32 Hessian-vector product stays far below it).
ASYMMETRY_TOL = 1e-2
#: ``beta <= NEARLY_INVARIANT ||A||`` ends a Krylov block (module doc).
NEARLY_INVARIANT = 1e-5


@dataclass(frozen=True)
class Eigenpairs:
    """Eigenpairs ``A v_i = lambda_i v_i`` of a symmetric operator (approximate).

    Attributes:
        values: (k,) the eigenvalue estimates (Ritz values). Order: ``which="largest"``
            descending; ``"smallest"`` ascending; ``"both"`` the largest ones descending
            followed by the smallest ones ascending. Power iteration: in the order found
            (descending magnitude).
        vectors: (dim, k) orthonormal columns, ``vectors[:, i]`` belonging to ``values[i]``,
            each signed so that its largest-magnitude entry is positive.
        residuals: (k,) ``||A v_i - lambda_i v_i||_2``, recomputed with explicit products.
        converged: every pair met the tolerance.
        reason: why the iteration stopped: ``"converged"``, ``"max_matvecs"``,
            ``"max_iter"``, ``"lost orthogonality"``, ``"accuracy floor"``,
            ``"invariant subspace"``, ``"repeated eigenvalue unresolved"`` (the search for
            further copies of a repeated or zero wanted eigenvalue did not finish: raise
            ``max_matvecs``).
        matvecs: products with ``A`` used in all (the explicit residuals included).
        iterations: Lanczos steps (or power iterations).
        seconds: wall time.
    """

    values: torch.Tensor
    vectors: torch.Tensor
    residuals: torch.Tensor
    converged: bool
    reason: str
    matvecs: int
    iterations: int
    seconds: float

    @property
    def k(self) -> int:
        """The number of pairs."""
        return int(self.values.shape[0])

    def to_dict(self, *, include_vectors: bool = False) -> dict[str, Any]:
        """Plain numbers for the store; the (dim, k) vectors only on request (they can be big)."""
        out: dict[str, Any] = {
            "values": self.values.tolist(),
            "residuals": self.residuals.tolist(),
            "converged": self.converged,
            "reason": self.reason,
            "matvecs": self.matvecs,
            "iterations": self.iterations,
            "seconds": self.seconds,
            "dim": int(self.vectors.shape[0]),
            "k": self.k,
        }
        if include_vectors:
            out["vectors"] = self.vectors.T.tolist()
        return out


class CountingMatvec:
    """``matvec`` wrapped: counts products, checks each one and casts it to ``dtype``/``device``.

    A product must be a tensor with ``dim`` entries (shape ``(dim,)``) and finite; otherwise
    :class:`CurvatureError`. The output is detached (no autograd graph is kept).
    """

    def __init__(self, matvec: Matvec, dim: int, dtype: torch.dtype, device: torch.device) -> None:
        if not callable(matvec):
            raise CurvatureError(f"matvec must be a callable v -> A v; got {type(matvec).__name__}")
        self.matvec = matvec
        self.dim = dim
        self.dtype = dtype
        self.device = device
        self.count = 0

    def __call__(self, vector: torch.Tensor) -> torch.Tensor:
        out = self.matvec(vector)
        self.count += 1
        if not isinstance(out, torch.Tensor):
            raise CurvatureError(
                f"matvec returned {type(out).__name__}, not a tensor: it must map a ({self.dim},) "
                f"tensor to a ({self.dim},) tensor"
            )
        if out.shape != (self.dim,):
            raise CurvatureError(
                f"matvec returned shape {tuple(out.shape)} for an input of shape ({self.dim},): "
                "it must return a flat vector of the same length"
            )
        out = out.detach().to(dtype=self.dtype, device=self.device)
        if not bool(torch.isfinite(out).all()):
            raise CurvatureError(
                f"matvec returned NaN or inf (product {self.count}): the operator is not "
                "finite at this point; check the model, the loss and the data for non-finite "
                "values, or use float64"
            )
        return out


def check_dim(dim: Any) -> int:
    """``dim`` as a positive ``int``, or :class:`CurvatureError`."""
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise CurvatureError(f"dim must be a positive integer (the operator's size); got {dim!r}")
    return dim


def check_count(value: Any, name: str, minimum: int = 1) -> int:
    """``value`` as an ``int >= minimum``, or :class:`CurvatureError` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise CurvatureError(f"{name} must be an integer >= {minimum}; got {value!r}")
    return value


def check_dtype(dtype: Any) -> torch.dtype:
    """``dtype`` if it is a real floating torch dtype, else :class:`CurvatureError`."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise CurvatureError(
            f"dtype must be a real floating torch dtype (torch.float64 recommended); got {dtype!r}"
        )
    return dtype


def make_generator(seed: Any) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``seed`` (draws are moved to the device after,
    so a seed gives the same numbers on every device)."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise CurvatureError(f"seed must be an integer; got {seed!r}")
    return torch.Generator().manual_seed(seed)


def _gaussian(
    dim: int, generator: torch.Generator, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    return torch.randn(dim, generator=generator, dtype=torch.float64).to(dtype=dtype, device=device)


def _unit_start(
    start: torch.Tensor, dim: int, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    if not isinstance(start, torch.Tensor) or start.shape != (dim,):
        shape = tuple(start.shape) if isinstance(start, torch.Tensor) else type(start).__name__
        raise CurvatureError(f"start must be a tensor of shape ({dim},); got {shape}")
    vector = start.detach().to(dtype=dtype, device=device)
    norm = float(torch.linalg.vector_norm(vector))
    if not math.isfinite(norm) or norm == 0.0:
        raise CurvatureError("start must be a finite, nonzero vector")
    return vector / norm


def _orthogonalize(
    basis: torch.Tensor, w: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``w`` minus its projection on the rows of ``basis``: classical Gram-Schmidt twice, a
    third time when the second pass still removed more than half the norm (DGKS criterion).
    Returns the new ``w``, the coefficients ``basis @ w_in`` and ``||w||``."""
    h = basis @ w
    w = torch.addmv(w, basis.T, h, alpha=-1)
    before = float(torch.linalg.vector_norm(w))
    correction = basis @ w
    w = torch.addmv(w, basis.T, correction, alpha=-1)
    h = h + correction
    after = float(torch.linalg.vector_norm(w))
    if after < 0.5 * before:
        correction = basis @ w
        w = torch.addmv(w, basis.T, correction, alpha=-1)
        h = h + correction
        after = float(torch.linalg.vector_norm(w))
    return w, h, after


def _invariance_threshold(dim: int, dtype: torch.dtype, anorm: float) -> float:
    """``beta`` at or below this is rounding: the Krylov space is numerically invariant."""
    return 10.0 * torch.finfo(dtype).eps * math.sqrt(dim) * anorm


def lanczos_tridiagonal(
    matvec: Matvec,
    dim: int,
    n_steps: int,
    *,
    start: torch.Tensor,
    reorthogonalize: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    r"""``m`` steps of plain Lanczos from ``start``: the tridiagonal ``T_m = Q_m^T A Q_m``.

    From ``q_0 = start / ||start||``: ``r_j = A q_j - beta_{j-1} q_{j-1} - alpha_j q_j``
    with ``alpha_j = q_j^T A q_j``, ``beta_j = ||r_j||``, ``q_{j+1} = r_j / beta_j`` (Lanczos
    1950). With ``reorthogonalize=True`` each ``r_j`` is instead orthogonalised against all
    of ``Q_{j+1}`` (classical Gram-Schmidt, twice), the ``m`` vectors are stored and returned;
    without, only the three-term recurrence is used (memory ``O(dim)``; orthogonality, and
    with it the multiplicities of the Ritz values, degrade once Ritz values converge; Paige
    1976).

    Stochastic Lanczos quadrature uses ``alpha``/``beta``: for unit ``q_0`` and
    ``T_m = U diag(theta) U^T``, ``q_0^T f(A) q_0 ~= sum_j U_{0j}^2 f(theta_j)``, the
    ``m``-node Gauss quadrature, exact for polynomials of degree ``< 2m``.

    Args:
        matvec: ``v -> A v`` for symmetric ``A``, (dim,) -> (dim,).
        dim: the size of ``A``.
        n_steps: ``m``, the number of steps (products); capped at ``dim``.
        start: (dim,) nonzero start vector (normalised here); its dtype and device are used.
        reorthogonalize: full reorthogonalisation (recommended).

    Returns:
        ``(alphas, betas, Q)``: ``alphas`` (m,), ``betas`` (m - 1,) the off-diagonal, ``Q``
        (dim, m) with orthonormal columns or ``None`` without reorthogonalisation; in the
        dtype and device of ``start``. Fewer than ``n_steps`` steps are returned when the
        Krylov space becomes invariant (``beta`` at rounding level): then ``T_m``'s
        eigenvalues are exact eigenvalues of ``A``.
    """
    dim = check_dim(dim)
    n_steps = min(check_count(n_steps, "n_steps"), dim)
    if not isinstance(start, torch.Tensor):
        raise CurvatureError(f"start must be a tensor of shape ({dim},)")
    dtype = check_dtype(start.dtype)
    device = start.device
    op = CountingMatvec(matvec, dim, dtype, device)
    q = _unit_start(start, dim, dtype, device)
    alphas: list[float] = []
    betas: list[float] = []
    anorm = 0.0
    if reorthogonalize:
        Q = torch.empty(n_steps, dim, dtype=dtype, device=device)
        Q[0] = q
        for j in range(n_steps):
            w = op(Q[j])
            anorm = max(anorm, float(torch.linalg.vector_norm(w)))
            w, h, beta = _orthogonalize(Q[: j + 1], w)
            alphas.append(float(h[j]))
            if j == n_steps - 1 or beta <= _invariance_threshold(dim, dtype, anorm):
                break
            betas.append(beta)
            Q[j + 1] = w / beta
        m = len(alphas)
        basis: torch.Tensor | None = Q[:m].T
    else:
        previous = torch.zeros_like(q)
        beta_prev = 0.0
        for j in range(n_steps):
            w = op(q)
            anorm = max(anorm, float(torch.linalg.vector_norm(w)))
            alpha = float(q @ w)
            w = w - alpha * q - beta_prev * previous
            beta = float(torch.linalg.vector_norm(w))
            alphas.append(alpha)
            if j == n_steps - 1 or beta <= _invariance_threshold(dim, dtype, anorm):
                break
            betas.append(beta)
            previous, q, beta_prev = q, w / beta, beta
        basis = None
    return (
        torch.tensor(alphas, dtype=dtype, device=device),
        torch.tensor(betas, dtype=dtype, device=device),
        basis,
    )


def default_krylov_dim(k: int, dim: int) -> int:
    """The default basis size: ``max(2 k + 20, 40)``, at most ``dim`` (room for the wanted
    pairs and enough others that restarts rarely slow convergence)."""
    return min(dim, max(2 * k + 20, 40))


def _split(k: int, which: str) -> tuple[int, int]:
    if which == "largest":
        return k, 0
    if which == "smallest":
        return 0, k
    if which == "both":
        return (k + 1) // 2, k // 2
    raise CurvatureError(f"which must be 'largest', 'smallest' or 'both'; got {which!r}")


def _ends(m: int, n_large: int, n_small: int) -> list[int]:
    """Indices into ascending Ritz values: the ``n_large`` largest descending, then the
    ``n_small`` smallest ascending."""
    return [m - 1 - i for i in range(n_large)] + list(range(n_small))


def _n_keep(m: int, k: int) -> int:
    """Ritz vectors kept at a thick restart of a full basis of ``m``: the wanted ``k`` and half
    of the rest (at least one new step before the next restart)."""
    return min(m - 1, k + max((m - k) // 2, 1))


def normalize_signs(vectors: torch.Tensor) -> torch.Tensor:
    """Columns of ``vectors`` flipped so that each one's largest-magnitude entry is
    positive (eigenvectors are defined up to sign; this makes results reproducible)."""
    if not vectors.numel():
        return vectors
    rows = vectors.abs().argmax(dim=0)
    signs = torch.sign(vectors[rows, torch.arange(vectors.shape[1], device=vectors.device)])
    return vectors * torch.where(signs == 0, torch.ones_like(signs), signs)


def _ritz(
    Q: torch.Tensor, theta: torch.Tensor, Y: torch.Tensor, index: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ritz values and sign-normalised Ritz vectors (dim, len(index)) for ``index``."""
    values = theta[index]
    vectors = Q.T @ Y[:, index].to(dtype=Q.dtype, device=Q.device)
    return values, normalize_signs(vectors)


def _residuals(op: CountingMatvec, values: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """``||A v_i - lambda_i v_i||_2`` with one explicit product per pair."""
    out = [
        torch.linalg.vector_norm(op(vectors[:, i]) - float(values[i]) * vectors[:, i])
        for i in range(vectors.shape[1])
    ]
    return torch.stack(out) if out else vectors.new_zeros(0)


def _orthogonality_error(rows: torch.Tensor) -> float:
    """``max |R R^T - I|`` for the rows ``R``."""
    gram = rows @ rows.T
    gram.diagonal().sub_(1)
    return float(gram.abs().max()) if gram.numel() else 0.0


def _may_hide_wanted(
    block: torch.Tensor, theta: torch.Tensor, n_large: int, n_small: int, gap: float
) -> bool:
    """After the basis became invariant: could its complement hold eigenvalues that belong
    among the wanted ones?

    A Krylov block started from a random vector becomes invariant after ``r`` steps only
    when ``A`` restricted to the space it was drawn from has ``r`` distinct eigenvalues, all
    found by the block (with probability one); the rest of that space holds further copies of
    them. So the complement can hide a wanted eigenvalue only if one of the block's
    eigenvalues lies beyond the ``k``-th wanted value (by more than ``gap``)."""
    values = torch.linalg.eigvalsh(block)
    m = theta.shape[0]
    if n_large and bool((values > theta[m - n_large] + gap).any()):
        return True
    return bool(n_small and bool((values < theta[n_small - 1] - gap).any()))


def _repeats_inside(values: torch.Tensor, n_large: int, n_small: int, gap: float) -> bool:
    """Does one side's wanted values hold a repeated eigenvalue (two within ``gap``) other
    than its last, boundary one? Then a further copy, unseen by a single-vector Krylov
    space, could belong where the boundary value is."""
    sides = [values[:n_large], values[n_large : n_large + n_small]]
    for side in sides:
        if side.numel() < 3:
            continue
        inner = side[:-1]
        close = (inner[:, None] - inner[None, :]).abs() <= gap
        close.fill_diagonal_(False)
        repeated = close.any(1) & ((inner - side[-1]).abs() > gap)
        if bool(repeated.any()):
            return True
    return False


def _zero_inside(values: torch.Tensor, n_large: int, n_small: int, gap: float) -> bool:
    """Does one side's wanted values hold a zero (within ``gap``) other than its last,
    boundary one? A single-vector Krylov space sees one direction of a null space; its
    other directions (a Hessian's null space is often large: dead ReLU units, symmetries)
    are further copies that belong where the values beyond the zero are."""
    for side in (values[:n_large], values[n_large : n_large + n_small]):
        if side.numel() >= 2 and bool((side[:-1].abs() <= gap).any()):
            return True
    return False


class _Deflated:
    """``A`` on the complement of the orthonormal columns of ``V``, with ``V`` moved to
    ``shift`` (a value that is not wanted): ``P A P + shift V V^T``, ``P = I - V V^T``.
    Products are counted by the wrapped operator; ``count`` is this one's share."""

    def __init__(self, op: CountingMatvec, V: torch.Tensor, shift: float) -> None:
        self.op, self.V, self.shift = op, V, shift
        self.dim, self.dtype, self.device = op.dim, op.dtype, op.device
        self.start = op.count

    @property
    def count(self) -> int:
        return self.op.count - self.start

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        coefficients = self.V.T @ x
        image = self.op(x - self.V @ coefficients)
        return image - self.V @ (self.V.T @ image) + self.shift * (self.V @ coefficients)


def _saturated(values: torch.Tensor, n_large: int, n_small: int, gap: float) -> bool:
    """Are all wanted values of each side copies of its most extreme one? Then no further
    copy can enter: nothing is wanted beyond them."""
    for side in (values[:n_large], values[n_large : n_large + n_small]):
        if side.numel() and not bool(((side - side[0]).abs() <= gap).all()):
            return False
    return True


def _search_for_copies(
    op: CountingMatvec,
    values: torch.Tensor,
    vectors: torch.Tensor,
    residuals: torch.Tensor,
    split: tuple[int, int],
    tol: float,
    scale: float,
    capacity: int,
    max_matvecs: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, bool]:
    """Further copies of the found eigenvalues, by deflation (module docstring): Lanczos
    for the same wanted pairs of ``A`` on the complement of the found vectors ``V`` (moved
    out of the wanted range), from a fresh random vector; its values that lie beyond the
    found boundary values (by more than ``tol * scale``) replace them. Each round can bring
    one more copy of each value; rounds go on (at most ``k``) until one brings none or the
    wanted values are all copies of the extreme ones. ``k`` products of ``max_matvecs``
    are kept for the final residuals.

    Returns ``(values, vectors, residuals, iterations, resolved)``, the residuals those of
    the returned vectors: ``resolved`` is False when a round did not converge or could not
    run within ``max_matvecs`` before the search ended, or a residual misses the tolerance.
    """
    n_large, n_small = split
    k = values.shape[0]
    gap = tol * scale
    dim = op.dim
    iterations = 0
    if n_large and n_small:  # between the two wanted sides
        shift = float(values[n_large - 1] + values[-1]) / 2
    else:
        shift = scale if n_small else -scale
    changed, resolved = False, False
    for _ in range(k):
        if dim - vectors.shape[1] < 1 or _saturated(values, n_large, n_small, gap):
            resolved = True  # nothing left to search, or nothing could enter
            break
        budget = max_matvecs - op.count - k  # k kept for the final residuals
        if budget < 2 * k + 1:
            break
        deflated = _Deflated(op, vectors, shift)
        fresh = _gaussian(dim, generator, op.dtype, op.device)
        fresh, _, norm = _orthogonalize(vectors.T, fresh)
        run = _thick_restart(deflated, fresh / norm, k, n_large, n_small, tol, capacity,
                             budget, generator)  # fmt: skip
        iterations += run.iterations
        if run.reason != "converged":
            break
        large, small = values[:n_large], values[n_large:]
        entering = torch.zeros_like(run.values, dtype=torch.bool)
        if n_large:
            entering[:n_large] = run.values[:n_large] > large[-1] + gap
        if n_small:
            entering[n_large:] = run.values[n_large:] < small[-1] - gap
        if not bool(entering.any()):
            resolved = True
            break
        merged_values = torch.cat([values, run.values[entering]])
        merged_vectors = torch.cat([vectors, run.vectors[:, entering]], dim=1)
        ascending = torch.argsort(merged_values)
        pick = ascending[_ends(merged_values.shape[0], n_large, n_small)]
        values, vectors = merged_values[pick], merged_vectors[:, pick]
        changed = True
    if changed:
        residuals = _residuals(op, values, vectors)
    return values, vectors, residuals, iterations, resolved and bool((residuals <= gap).all())


def lanczos_eigenpairs(
    matvec: Matvec,
    dim: int,
    k: int = 1,
    *,
    which: Which = "largest",
    tol: float = 1e-6,
    max_matvecs: int | None = None,
    krylov_dim: int | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    start: torch.Tensor | None = None,
) -> Eigenpairs:
    r"""``k`` extreme eigenpairs of a symmetric operator by thick-restart Lanczos (module doc).

    Each returned pair satisfies ``||A v - theta v||_2 <= tol * max_j |theta_j|`` (explicitly
    recomputed) when ``converged``; ``max_j |theta_j|`` is the largest Ritz value in
    magnitude, an estimate of ``||A||_2``, so ``tol`` is relative to the operator's scale,
    not to each eigenvalue (small eigenvalues are resolved to ``tol ||A||`` in absolute terms;
    the eigenvalue error is at most the residual, and about ``residual^2 / gap``).

    Args:
        matvec: ``v -> A v`` for a symmetric ``A``: called with (dim,) tensors of ``dtype``
            on ``device``, must return (dim,) (cast to ``dtype``; NaN / inf is an error).
        dim: the size of ``A``.
        k: how many pairs (``1 <= k <= dim``).
        which: ``"largest"`` (algebraic), ``"smallest"`` (algebraic), or ``"both"``:
            ``ceil(k/2)`` largest and ``floor(k/2)`` smallest.
        tol: relative residual tolerance (> 0), see above. Below about ``10 eps(dtype)``
            it cannot be met (``reason="accuracy floor"``).
        max_matvecs: budget of products, the ``k`` explicit residuals included; default
            ``max(50 k, 10 krylov_dim)`` (and, when a search for copies runs, up to ``k``
            more runs' worth); at least ``2 k``. Hitting it returns the current Ritz pairs
            with ``converged=False, reason="max_matvecs"``.
        krylov_dim: basis size (memory: ``krylov_dim + 1`` vectors, about twice that at
            a restart, module docstring); default
            ``max(2 k + 20, 40)``; capped at ``dim``; at least ``k + 2`` unless ``dim``.
        seed: seeds the random start (and fresh vectors after an invariant subspace).
        dtype, device: of the basis vectors and of the vectors ``matvec`` receives.
        start: optional (dim,) start vector (e.g. a previous eigenvector), else Gaussian.

    Returns:
        :class:`Eigenpairs`; ``matvecs`` counts every product.

    Raises:
        CurvatureError: bad arguments, a non-finite or wrongly shaped product, or a
            ``matvec`` that is visibly not symmetric.
    """
    started = time.perf_counter()
    dim = check_dim(dim)
    k = check_count(k, "k")
    if k > dim:
        raise CurvatureError(
            f"k = {k} eigenpairs were asked of a {dim}-dimensional operator: k must be at "
            f"most dim; ask for k <= {dim}"
        )
    n_large, n_small = _split(k, which)
    if isinstance(tol, bool) or not isinstance(tol, int | float) or not 0 < tol < math.inf:
        raise CurvatureError(f"tol must be a positive finite number (relative); got {tol!r}")
    dtype = check_dtype(dtype)
    device = (
        torch.device(device)
        if device is not None
        else (start.device if isinstance(start, torch.Tensor) else torch.device("cpu"))
    )
    if krylov_dim is None:
        capacity = default_krylov_dim(k, dim)
    else:
        capacity = min(check_count(krylov_dim, "krylov_dim"), dim)
        if capacity < dim and capacity < k + 2:
            raise CurvatureError(
                f"krylov_dim = {krylov_dim} leaves no room to restart with k = {k} wanted "
                f"pairs: use krylov_dim >= k + 2 = {k + 2} (2 k + 20 is a good choice)"
            )
    given_budget = max_matvecs is not None
    if max_matvecs is None:
        max_matvecs = max(50 * k, 10 * capacity)
    else:
        max_matvecs = check_count(max_matvecs, "max_matvecs", 2 * k)
    op = CountingMatvec(matvec, dim, dtype, device)
    generator = make_generator(seed)
    first = (
        _unit_start(start, dim, dtype, device)
        if start is not None
        else _unit_start(_gaussian(dim, generator, dtype, device), dim, dtype, device)
    )
    run = _thick_restart(op, first, k, n_large, n_small, tol, capacity, max_matvecs, generator,
                         random_start=start is None)  # fmt: skip
    values, vectors, residuals = run.values, run.vectors, run.residuals
    reason, iterations = run.reason, run.iterations
    converged = reason == "converged"
    gap = tol * run.scale
    if converged and (
        _repeats_inside(values, n_large, n_small, gap)
        or _zero_inside(values, n_large, n_small, gap)
    ):
        # by default the search may cost up to k more runs like the first
        budget = max_matvecs if given_budget else max(max_matvecs, (k + 1) * op.count + k)
        values, vectors, residuals, more, resolved = _search_for_copies(
            op, values, vectors, residuals, (n_large, n_small), tol, run.scale, capacity,
            budget, generator,
        )  # fmt: skip
        iterations += more
        if not resolved:
            converged, reason = False, "repeated eigenvalue unresolved"
    if _orthogonality_error(vectors.T) > math.sqrt(torch.finfo(dtype).eps):
        converged, reason = False, "lost orthogonality"
    return Eigenpairs(
        values=values.to(dtype=dtype, device=device),
        vectors=vectors,
        residuals=residuals,
        converged=converged,
        reason=reason,
        matvecs=op.count,
        iterations=iterations,
        seconds=time.perf_counter() - started,
    )


@dataclass(frozen=True)
class _Run:
    """What one thick-restart Lanczos run returns (before any search for copies)."""

    values: torch.Tensor
    vectors: torch.Tensor
    residuals: torch.Tensor
    reason: str
    scale: float
    iterations: int


def _thick_restart(
    op: Any,
    first: torch.Tensor,
    k: int,
    n_large: int,
    n_small: int,
    tol: float,
    capacity: int,
    max_matvecs: int,
    generator: torch.Generator,
    random_start: bool = True,
) -> _Run:
    """The thick-restart Lanczos iteration of the module docstring on ``op`` (a
    :class:`CountingMatvec`, or a :class:`_Deflated` one), from the unit vector ``first``;
    ``max_matvecs`` counts ``op.count``; ``random_start``: ``first`` was drawn at random
    (not given by the user)."""
    dim, dtype, device = op.dim, op.dtype, op.device
    eps = torch.finfo(dtype).eps
    orthogonality_tol = math.sqrt(eps)

    Q = torch.empty(capacity + 1, dim, dtype=dtype, device=device)
    Q[0] = first
    H = torch.zeros(capacity + 1, capacity + 1, dtype=torch.float64)
    anorm = 0.0
    j = 0  # index of the vector to expand next
    m_done = 0  # basis vectors whose column of H is complete
    iterations = 0
    internal_tol = tol
    failed_checks = 0
    reason = ""
    final: tuple[torch.Tensor, torch.Tensor, torch.Tensor, float] | None = None
    # the current Krylov block starts at Q[block_start] from a "random" vector, the user's
    # "start", or a "continuation" w / beta; after an invariant subspace that may hide wanted
    # eigenvalues, new blocks are explored for forced_left more steps each
    block_start = 0
    block_kind = "random" if random_start else "start"
    forced_left, forced_length, forcing, blocks_left = 0, 0, False, k + 1

    while True:
        if op.count + 1 + k > max_matvecs:
            reason = "max_matvecs"
            break
        w = op(Q[j])
        iterations += 1
        anorm = max(anorm, float(torch.linalg.vector_norm(w)))
        w, h, beta = _orthogonalize(Q[: j + 1], w)
        h64 = h.to(device="cpu", dtype=torch.float64)
        if j > 0:
            asymmetry = float((h64[:j] - H[:j, j]).abs().max())
            if asymmetry > ASYMMETRY_TOL * anorm:
                raise CurvatureError(
                    f"matvec does not look symmetric: q_i^T A q_j and q_j^T A q_i differ by "
                    f"{asymmetry:.3g} for ||A|| >= {anorm:.3g}; Lanczos needs a symmetric "
                    "operator (a Hessian or Gauss-Newton product; symmetrise (A + A^T) / 2)"
                )
        H[j, j] = h64[j]
        m = j + 1
        m_done = m
        theta = Y = None
        scale = 0.0
        if m >= k:
            theta, Y = torch.linalg.eigh(H[:m, :m])
            scale = float(theta.abs().max())
            anorm = max(anorm, scale)
        # invariant: beta at rounding level, or so small that every Ritz pair of the basis
        # has converged (then dropping it perturbs no pair beyond a tenth of the tolerance)
        tiny = max(_invariance_threshold(dim, dtype, anorm), 0.1 * internal_tol * scale)
        invariant = m == dim or beta <= tiny
        # nearly invariant: in floating point the Krylov space of an operator with few
        # distinct eigenvalues ends with beta far above rounding (amplified by the steps)
        nearly = not invariant and beta <= NEARLY_INVARIANT * anorm
        if forced_left > 0:
            forced_left -= 1
        expired = forcing and forced_left == 0
        # where a block ends (module doc): a continuation of rounding noise is no random
        # vector, so its own near-invariance is not trusted, only its full length
        if block_kind == "continuation":
            block_end = invariant or expired
        else:
            block_end = invariant or nearly or expired
        block_end = block_end and m < dim
        explore = forced_left > 0 and m < dim
        if block_end:
            # could the rest of the space hide wanted eigenvalues? (_may_hide_wanted)
            generic = block_kind == "random" or (block_kind == "continuation" and expired)
            hide = not generic or theta is None
            if not hide:
                assert theta is not None
                gap = max(tol, 1e3 * eps) * scale
                block = H[block_start:m, block_start:m]
                hide = _may_hide_wanted(block, theta, n_large, n_small, gap)
            # each new block can bring a wanted copy: k + 1 blocks are enough
            hide = hide and blocks_left > 0
            if hide:  # explore the rest with new blocks, each as long as the longest one
                blocks_left -= 1
                forced_length = max(forced_length, m - block_start)
                forced_left, forcing = forced_length, True
                explore = True
                # from a fresh random vector when beta can be dropped, else from w / beta
                block_start = m
                block_kind = "random" if invariant else "continuation"
            else:
                forced_left, forcing = 0, False
        coupling = 0.0 if invariant else beta
        if theta is not None and Y is not None and not explore:
            wanted = _ends(m, n_large, n_small)
            estimates = (coupling * Y[m - 1, wanted]).abs()
            if bool((estimates <= internal_tol * scale).all()):
                values, vectors = _ritz(Q[:m], theta, Y, wanted)
                residuals = _residuals(op, values, vectors)
                if bool((residuals <= tol * scale).all()):
                    final = values, vectors, residuals, scale
                    reason = "converged"
                    break
                failed_checks += 1
                if failed_checks >= 2 or m == dim:
                    final = values, vectors, residuals, scale
                    reason = "accuracy floor"
                    break
                internal_tol = tol / 100
                if op.count + 1 + k > max_matvecs:
                    final = values, vectors, residuals, scale
                    reason = "max_matvecs"
                    break
        if invariant and m == dim:  # pragma: no cover - the check above always ends it
            reason = "invariant subspace"
            break
        if invariant:
            fresh = _gaussian(dim, generator, dtype, device)
            fresh, _, norm = _orthogonalize(Q[:m], fresh)
            next_vector = fresh / norm
        else:
            next_vector = w / beta
        if m < capacity:
            Q[m] = next_vector
            H[m, m - 1] = H[m - 1, m] = coupling
            j = m
            continue
        # thick restart: keep l Ritz vectors nearest the wanted end(s), then q_m
        assert theta is not None
        assert Y is not None
        keep_count = _n_keep(m, k)
        extra = keep_count - k
        if n_small == 0:
            keep = _ends(m, keep_count, 0)
        elif n_large == 0:
            keep = _ends(m, 0, keep_count)
        else:
            keep = _ends(m, n_large + (extra + 1) // 2, n_small + extra // 2)
        kept = Y[:, keep].T.to(dtype=dtype, device=device) @ Q[:m]
        if _orthogonality_error(kept) > orthogonality_tol:
            reason = "lost orthogonality"
            break
        count = len(keep)
        Q[:count] = kept
        Q[count] = next_vector
        H.zero_()
        H[range(count), range(count)] = theta[keep]
        arrow = coupling * Y[m - 1, keep]
        H[count, :count] = arrow
        H[:count, count] = arrow
        j = count
        m_done = count
        # the kept Ritz vectors absorb the blocks; a block being explored starts over after them
        block_start = count if forcing else 0
        if forcing:  # (a block must fit between restarts)
            forced_left = min(forced_length, capacity - count)
            if not block_end:
                block_kind = "continuation"
    if final is None:
        theta, Y = torch.linalg.eigh(H[:m_done, :m_done])
        scale = float(theta.abs().max())
        values, vectors = _ritz(Q[:m_done], theta, Y, _ends(m_done, n_large, n_small))
        residuals = _residuals(op, values, vectors)
        final = values, vectors, residuals, scale
    values, vectors, residuals, scale = final
    return _Run(values, vectors, residuals, reason, scale, iterations)
