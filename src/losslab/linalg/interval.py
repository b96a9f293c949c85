r"""Interval arithmetic with outward rounding on torch float64 tensors.

An :class:`Interval` is a pair of tensors ``lo <= hi`` of the same shape; it stands for
the set of real arrays ``x`` with ``lo <= x <= hi`` elementwise (a box, or a batch of
boxes over the leading dimensions). Every operation returns an *enclosure*: a box that
provably contains the exact real result of the operation applied to every element of its
operands (Moore, *Interval Analysis*, 1966; Neumaier, *Interval Methods for Systems of
Equations*, 1990).

**Rounding model.** IEEE 754 binary64 arithmetic with rounding to nearest (torch's
default on CPU and CUDA; no x87 extended precision, no flush-to-zero). Write
``u = 2^-53`` for the unit roundoff and ``eta = 2^-1074`` for the smallest subnormal.

- Elementwise ``+ - *`` are each followed by :func:`round_down` / :func:`round_up`
  (``torch.nextafter`` toward ``-inf`` / ``+inf``): a correctly rounded result is at most
  half an ulp from the exact one, so one step outward encloses it (also for subnormal
  results and for overflow to ``inf``).
- Matrix products use the midpoint-radius form (Rump, *Fast and parallel interval
  arithmetic*, BIT 1999) on top of torch's float64 ``matmul``, whatever its summation
  order or use of FMA. For a float dot product of length ``n`` computed in any order,
  ``|fl(a^T b) - a^T b| <= gamma_n |a|^T |b| + n eta`` with ``gamma_n = n u / (1 - n u)``
  (Higham, *Accuracy and Stability of Numerical Algorithms*, 2002, Thm 3.1 and §2.1 for
  underflow). Since ``|a|^T |b|`` is itself computed, its exact value is bounded by
  ``(P + n eta) / (1 - gamma_n)`` with ``P = fl(|a|^T |b|)``; the code adds
  ``c1 P + c2`` with ``c1 >= gamma_n / (1 - gamma_n)`` and ``c2 = 2 n eta``, rounding every
  step upward. This assumes a classical ``O(n^3)`` product (every BLAS torch uses for
  float64; not Strassen-like algorithms).
- ``sigmoid`` and ``tanh`` are monotone: they are evaluated at the end points with
  torch's own functions, and the result is widened by ``2^-50 |y| + 2^-1000``. This
  assumes torch's float64 ``sigmoid`` and ``tanh`` are accurate to **4 ulps** (``2^-50``
  relative; torch uses SLEEF's 1-ulp ``exp``/``tanh`` on CPU and libdevice on CUDA, whose
  composition errors stay below 3 ulps) plus ``2^-1000`` absolute where the result
  underflows. The tests check the assumption against ``mpmath`` at 50 digits.

Intervals must be finite: with infinite end points the products ``0 * inf`` produce NaN.

**Cost.** An elementwise operation costs a small constant number of tensor operations;
a product of an ``(..., n, k)`` by a ``(..., k, m)`` interval costs three to four float
``matmul`` calls of those shapes, so intervals are a few times slower than floats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import torch
from torch import Tensor

from losslab.errors import IntervalError

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

UNIT_ROUNDOFF = 2.0**-53
SMALLEST_SUBNORMAL = 2.0**-1074
ACTIVATION_REL_ERROR = 2.0**-50  # 4 ulps: one ulp of y is at most 2u|y|
ACTIVATION_ABS_ERROR = 2.0**-1000  # covers results in or near the subnormal range

_NEG_INF = float("-inf")
_POS_INF = float("inf")


def round_down(x: Tensor) -> Tensor:
    """The next float64 below ``x`` elementwise (``torch.nextafter`` toward ``-inf``)."""
    # new_full: a fill on the device (torch.tensor would copy from the host and wait)
    return torch.nextafter(x, x.new_full((), _NEG_INF))


def round_up(x: Tensor) -> Tensor:
    """The next float64 above ``x`` elementwise (``torch.nextafter`` toward ``+inf``)."""
    return torch.nextafter(x, x.new_full((), _POS_INF))


def _float_up(value: Fraction) -> float:
    """The smallest float64 >= the exact rational ``value``."""
    candidate = float(value)
    if Fraction(candidate) < value:
        candidate = math.nextafter(candidate, math.inf)
    return candidate


_DOT_CONSTANTS: dict[int, tuple[float, float]] = {}


def _dot_constants(n: int) -> tuple[float, float]:
    """``(c1, c2)`` with ``|fl(A B) - A B| <= c1 fl(|A| |B|) + c2`` for inner size ``n``."""
    if n not in _DOT_CONSTANTS:
        u = Fraction(1, 2**53)
        if n * u >= Fraction(1, 2):
            raise IntervalError(f"inner dimension {n} is too large for the error bound")
        gamma = n * u / (1 - n * u)
        c1 = _float_up(gamma / (1 - gamma))
        c2 = 2 * max(n, 1) * SMALLEST_SUBNORMAL
        _DOT_CONSTANTS[n] = (c1, c2)
    return _DOT_CONSTANTS[n]


def _error_bound(abs_product: Tensor, n: int) -> Tensor:
    """Upper bound on ``|fl(A B) - A B|`` given ``abs_product = fl(|A| |B|)``."""
    c1, c2 = _dot_constants(n)
    return round_up(round_up(abs_product * c1) + c2)


def _upper_nonneg(product: Tensor, n: int) -> Tensor:
    """Upper bound on the exact ``A B`` of nonnegative ``A, B`` from ``product = fl(A B)``."""
    return round_up(product + _error_bound(product, n))


def _as_float64(x: Tensor | float, like: Tensor | None = None) -> Tensor:
    if isinstance(x, Tensor):
        # float16/32 (and integers up to 2^53) convert to float64 exactly
        return x if x.dtype == torch.float64 else x.to(torch.float64)
    device = like.device if like is not None else None
    return torch.tensor(float(x), dtype=torch.float64, device=device)


@dataclass(frozen=True)
class Interval:
    """A box ``[lo, hi]`` (or a batch of boxes) of float64 tensors, ``lo <= hi``.

    Build one with :meth:`point` or :meth:`from_bounds` (which validate); the fields are
    not validated on direct construction so that internal code stays fast. The result of
    :meth:`intersect` may be empty (``lo > hi`` in some entry; see :meth:`is_empty`).
    """

    lo: Tensor
    hi: Tensor

    # ----------------------------------------------------------------- construction
    @classmethod
    def point(cls, x: Tensor | float) -> Interval:
        """The degenerate interval ``[x, x]`` (``x`` converted exactly to float64)."""
        x = _as_float64(torch.as_tensor(x) if not isinstance(x, Tensor) else x)
        if torch.isnan(x).any():
            raise IntervalError("a point interval has NaN entries; pass finite numbers")
        return cls(x, x)

    @classmethod
    def from_bounds(cls, lo: Tensor | float, hi: Tensor | float) -> Interval:
        """``[lo, hi]`` after checking shapes, NaN and ``lo <= hi`` (broadcast together)."""
        lo_t = _as_float64(torch.as_tensor(lo) if not isinstance(lo, Tensor) else lo)
        hi_t = _as_float64(torch.as_tensor(hi) if not isinstance(hi, Tensor) else hi)
        try:
            lo_t, hi_t = torch.broadcast_tensors(lo_t, hi_t)
        except RuntimeError as exc:
            raise IntervalError(
                f"lo and hi must have broadcastable shapes; got {tuple(lo_t.shape)} "
                f"and {tuple(hi_t.shape)}"
            ) from exc
        if torch.isnan(lo_t).any() or torch.isnan(hi_t).any():
            raise IntervalError("interval end points contain NaN; pass finite numbers")
        if (lo_t > hi_t).any():
            raise IntervalError("interval has lo > hi; pass lo <= hi elementwise")
        return cls(lo_t.contiguous(), hi_t.contiguous())

    # -------------------------------------------------------------------- properties
    @property
    def shape(self) -> torch.Size:
        return self.lo.shape

    @property
    def ndim(self) -> int:
        return self.lo.ndim

    @property
    def mid(self) -> Tensor:
        """A float point inside the interval, within an ulp of the exact midpoint."""
        return torch.minimum(torch.maximum(0.5 * self.lo + 0.5 * self.hi, self.lo), self.hi)

    @property
    def width(self) -> Tensor:
        """An upper bound on ``hi - lo``."""
        return round_up(self.hi - self.lo)

    def midrad(self) -> tuple[Tensor, Tensor]:
        """``(c, r)`` with ``[lo, hi] ⊆ [c - r, c + r]`` (``c = mid``, ``r`` rounded up)."""
        c = self.mid
        r = torch.maximum(round_up(self.hi - c), round_up(c - self.lo))
        return c, r

    def mag(self) -> Tensor:
        """``max(|lo|, |hi|)``: the largest absolute value in the interval."""
        return torch.maximum(self.lo.abs(), self.hi.abs())

    def volume(self) -> Tensor:
        """``prod(hi - lo)`` over the last dimension (float, not rounded)."""
        return (self.hi - self.lo).clamp_min(0).prod(dim=-1)

    # -------------------------------------------------------------------- set logic
    def contains(self, other: Interval | Tensor | float) -> Tensor:
        """Elementwise ``lo <= x <= hi`` for a point, or ``other ⊆ self`` for an interval."""
        if isinstance(other, Interval):
            return (self.lo <= other.lo) & (other.hi <= self.hi)
        x = _as_float64(other, self.lo) if not isinstance(other, Tensor) else other
        return (self.lo <= x) & (x <= self.hi)

    def interior_contains(self, other: Interval) -> Tensor:
        """Elementwise ``lo < other.lo`` and ``other.hi < hi`` (``other ⊂ int self``)."""
        return (self.lo < other.lo) & (other.hi < self.hi)

    def intersect(self, other: Interval) -> Interval:
        """``self ∩ other`` elementwise; may be empty (``lo > hi``; see :meth:`is_empty`)."""
        return Interval(torch.maximum(self.lo, other.lo), torch.minimum(self.hi, other.hi))

    def is_empty(self) -> Tensor:
        """Elementwise ``lo > hi``."""
        return self.lo > self.hi

    def hull(self, other: Interval) -> Interval:
        """The smallest interval containing both."""
        return Interval(torch.minimum(self.lo, other.lo), torch.maximum(self.hi, other.hi))

    # ------------------------------------------------------------------ reshaping
    def __getitem__(self, index: object) -> Interval:
        return Interval(self.lo[index], self.hi[index])  # type: ignore[index]

    def unsqueeze(self, dim: int) -> Interval:
        return Interval(self.lo.unsqueeze(dim), self.hi.unsqueeze(dim))

    def squeeze(self, dim: int) -> Interval:
        return Interval(self.lo.squeeze(dim), self.hi.squeeze(dim))

    @property
    def mT(self) -> Interval:
        return Interval(self.lo.mT, self.hi.mT)

    # ------------------------------------------------------------------ arithmetic
    def __neg__(self) -> Interval:
        return Interval(-self.hi, -self.lo)

    def __add__(self, other: Interval | Tensor | float) -> Interval:
        if isinstance(other, Interval):
            return Interval(round_down(self.lo + other.lo), round_up(self.hi + other.hi))
        p = _as_float64(other, self.lo)
        return Interval(round_down(self.lo + p), round_up(self.hi + p))

    def __radd__(self, other: Tensor | float) -> Interval:
        return self + other

    def __sub__(self, other: Interval | Tensor | float) -> Interval:
        if isinstance(other, Interval):
            return Interval(round_down(self.lo - other.hi), round_up(self.hi - other.lo))
        p = _as_float64(other, self.lo)
        return Interval(round_down(self.lo - p), round_up(self.hi - p))

    def __rsub__(self, other: Tensor | float) -> Interval:
        p = _as_float64(other, self.lo)
        return Interval(round_down(p - self.hi), round_up(p - self.lo))

    def __mul__(self, other: Interval | Tensor | float) -> Interval:
        """Elementwise product with a scalar, a point tensor or an interval (broadcast)."""
        if isinstance(other, Interval):
            a, b = self.lo * other.lo, self.lo * other.hi
            c, d = self.hi * other.lo, self.hi * other.hi
            lo = torch.minimum(torch.minimum(a, b), torch.minimum(c, d))
            hi = torch.maximum(torch.maximum(a, b), torch.maximum(c, d))
            return Interval(round_down(lo), round_up(hi))
        if isinstance(other, Tensor):
            p = _as_float64(other)
            a, b = self.lo * p, self.hi * p
            return Interval(round_down(torch.minimum(a, b)), round_up(torch.maximum(a, b)))
        s = float(other)
        if math.isnan(s):
            raise IntervalError("cannot multiply an interval by NaN")
        if s >= 0:
            return Interval(round_down(self.lo * s), round_up(self.hi * s))
        return Interval(round_down(self.hi * s), round_up(self.lo * s))

    def __rmul__(self, other: Tensor | float) -> Interval:
        return self * other

    def __matmul__(self, other: Interval | Tensor) -> Interval:
        return matmul(self, other)

    def __rmatmul__(self, other: Tensor) -> Interval:
        return matmul(other, self)

    def __repr__(self) -> str:
        return f"Interval(shape={tuple(self.shape)}, lo={self.lo!r}, hi={self.hi!r})"


# ------------------------------------------------------------------ matrix products
def matmul(a: Interval | Tensor, b: Interval | Tensor) -> Interval:
    r"""Enclosure of ``A @ B`` (torch ``matmul`` shapes and broadcasting) where either
    factor is a point tensor or an :class:`Interval`.

    Midpoint-radius form (Rump 1999): with ``A ⊆ <Ac, Ar>`` and ``B ⊆ <Bc, Br>``,
    ``A B ⊆ <Ac Bc, |Ac| Br + Ar (|Bc| + Br)>``. For a point factor this is the exact hull
    of the product set (up to rounding); for two interval factors the radius is at most
    1.5 times the optimal one. The float error of ``fl(Ac Bc)`` and of the radius products
    is bounded rigorously (module docstring), so the result contains every exact product;
    an end point that overflows is infinite (never NaN) for factors free of NaN.
    """
    if isinstance(a, Interval):
        ac, ar = a.midrad()
        n = a.shape[-1]
    else:
        ac, ar = _as_float64(a), None
        n = ac.shape[-1]
    if isinstance(b, Interval):
        bc, br = b.midrad()
    else:
        bc, br = _as_float64(b), None
    center = torch.matmul(ac, bc)
    abs_ac, abs_bc = ac.abs(), bc.abs()
    radius = _error_bound(torch.matmul(abs_ac, abs_bc), n)
    if br is not None:
        radius = round_up(radius + _upper_nonneg(torch.matmul(abs_ac, br), n))
    if ar is not None:
        right = abs_bc if br is None else round_up(abs_bc + br)
        radius = round_up(radius + _upper_nonneg(torch.matmul(ar, right), n))
    lo, hi = round_down(center - radius), round_up(center + radius)
    # an overflow (an infinite center and radius) gives inf - inf: no bound on that side
    lo = torch.where(torch.isnan(lo), torch.full_like(lo, -math.inf), lo)
    hi = torch.where(torch.isnan(hi), torch.full_like(hi, math.inf), hi)
    return Interval(lo, hi)


def matvec(a: Interval | Tensor, x: Interval | Tensor) -> Interval:
    """Enclosure of ``A x`` batched over leading dimensions: ``A`` (..., n, m) and ``x``
    (..., m) give (..., n). A single matrix ``A`` (n, m) is applied to every row of ``x``
    with one product ``x @ A^T``."""
    if a.ndim == 2:
        a_t = a.mT
        return matmul(x, a_t)
    x_col = x.unsqueeze(-1)
    out = matmul(a, x_col)
    return out.squeeze(-1) if isinstance(out, Interval) else out


# ------------------------------------------------------------------ activations
def _widen(lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """Widen end points computed by a libm function by ``2^-50 |y| + 2^-1000``."""
    lo_err = round_up(round_up(lo.abs() * ACTIVATION_REL_ERROR) + ACTIVATION_ABS_ERROR)
    hi_err = round_up(round_up(hi.abs() * ACTIVATION_REL_ERROR) + ACTIVATION_ABS_ERROR)
    return round_down(lo - lo_err), round_up(hi + hi_err)


def sigmoid(x: Interval) -> Interval:
    """Enclosure of the logistic ``1 / (1 + exp(-t))`` over ``x`` (increasing, so its end
    points are the values at ``lo`` and ``hi``), widened by the 4-ulp libm assumption and
    clipped to ``[0, 1]``."""
    lo, hi = _widen(torch.sigmoid(x.lo), torch.sigmoid(x.hi))
    return Interval(lo.clamp_min(0.0), hi.clamp_max(1.0))


def tanh(x: Interval) -> Interval:
    """Enclosure of ``tanh`` over ``x`` (increasing), widened by the 4-ulp libm assumption
    and clipped to ``[-1, 1]``."""
    lo, hi = _widen(torch.tanh(x.lo), torch.tanh(x.hi))
    return Interval(lo.clamp_min(-1.0), hi.clamp_max(1.0))


def _sigmoid_derivative_point(t: Tensor) -> tuple[Tensor, Tensor]:
    """Enclosure of ``s(t)(1 - s(t))`` at points ``t``, evaluated as ``s(1 - s)`` with
    ``s = sigmoid(-|t|) <= 1/2`` (the function is even; this avoids cancellation)."""
    s = -t.abs()
    s_lo, s_hi = _widen(torch.sigmoid(s), torch.sigmoid(s))
    s_lo, s_hi = s_lo.clamp(0.0, 0.5), s_hi.clamp(0.0, 0.5)
    one_minus_lo = round_down(1.0 - s_hi)  # >= 1/2 > 0
    one_minus_hi = round_up(1.0 - s_lo)
    lo = round_down(s_lo * one_minus_lo)
    hi = round_up(s_hi * one_minus_hi)
    return lo.clamp(0.0, 0.25), hi.clamp(0.0, 0.25)


def sigmoid_derivative(x: Interval) -> Interval:
    r"""Enclosure of ``sigma'(t) = s(1 - s)`` over ``x``.

    ``sigma'`` is increasing on ``(-inf, 0]`` and decreasing on ``[0, inf)`` with maximum
    ``sigma'(0) = 1/4``, so its range on ``[a, b]`` is ``[g(a), g(b)]`` for ``b <= 0``,
    ``[g(b), g(a)]`` for ``a >= 0`` and ``[min(g(a), g(b)), 1/4]`` when ``a <= 0 <= b``.
    """
    ga_lo, ga_hi = _sigmoid_derivative_point(x.lo)
    gb_lo, gb_hi = _sigmoid_derivative_point(x.hi)
    left = x.hi <= 0  # increasing part
    right = x.lo >= 0  # decreasing part
    quarter = torch.full_like(ga_hi, 0.25)
    lo = torch.where(left, ga_lo, torch.where(right, gb_lo, torch.minimum(ga_lo, gb_lo)))
    hi = torch.where(left, gb_hi, torch.where(right, ga_hi, quarter))
    return Interval(lo, hi)


def tanh_derivative(x: Interval) -> Interval:
    r"""Enclosure of ``tanh'(t) = 1 - tanh(t)^2 = 4 sigma'(2 t)`` over ``x`` (same shape
    as ``sigma'``: increasing then decreasing, maximum 1 at 0). Doubling is exact, and the
    sigmoid form avoids the cancellation of ``1 - tanh^2`` for large ``|t|``."""
    d = sigmoid_derivative(Interval(2.0 * x.lo, 2.0 * x.hi))
    # multiplying by 4 is exact (barring overflow, impossible below 1/4 * 4 = 1)
    return Interval(4.0 * d.lo, 4.0 * d.hi)
