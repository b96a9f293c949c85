"""Interval arithmetic with outward rounding: every enclosure must contain the exact real
result, checked against exact rational arithmetic (``fractions.Fraction``) and against
``mpmath`` at 50 digits for the activations."""

from __future__ import annotations

import math
from fractions import Fraction

import mpmath
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from losslab.linalg.interval import (
    Interval,
    IntervalError,
    matmul,
    matvec,
    round_down,
    round_up,
    sigmoid,
    sigmoid_derivative,
    tanh,
    tanh_derivative,
)

mpmath.mp.dps = 50

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
wide = st.floats(min_value=-1e300, max_value=1e300, allow_nan=False, allow_infinity=False)
unit = st.floats(min_value=0.0, max_value=1.0)
FAST = settings(max_examples=60, deadline=None)


def _interval(a: float, b: float) -> tuple[float, float]:
    return (a, b) if a <= b else (b, a)


def _inside(lo: float, hi: float, t: float) -> float:
    """A float of [lo, hi] at relative position t."""
    return min(max(lo + t * (hi - lo), lo), hi)


def _encloses(enc: Interval, exact: list[Fraction] | Fraction, index: int | tuple = ()) -> bool:
    lo = Fraction(float(enc.lo[index]))
    hi = Fraction(float(enc.hi[index]))
    return lo <= exact <= hi  # type: ignore[operator]


def _tight(enc: Interval, exact_lo: Fraction, exact_hi: Fraction, index: int = 0) -> bool:
    """The enclosure is at most a few ulps wider than the exact range ``[lo, hi]`` on each
    side (an enclosure ``[-inf, inf]`` encloses everything and is useless)."""
    slack = Fraction(2) ** -49 * max(abs(exact_lo), abs(exact_hi)) + Fraction(2) ** -1000
    lo, hi = Fraction(float(enc.lo[index])), Fraction(float(enc.hi[index]))
    return exact_lo - slack <= lo and hi <= exact_hi + slack


def _t(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


# ------------------------------------------------------------------ elementwise
@FAST
@given(finite, finite, finite, finite, unit, unit)
def test_elementwise_operations_enclose_exact_results(a, b, c, d, s, t):
    a, b = _interval(a, b)
    c, d = _interval(c, d)
    X = Interval.from_bounds(_t([a]), _t([b]))
    Y = Interval.from_bounds(_t([c]), _t([d]))
    x, y = Fraction(_inside(a, b, s)), Fraction(_inside(c, d, t))
    assert _encloses(X + Y, x + y, 0)
    assert _encloses(X - Y, x - y, 0)
    assert _encloses(X * Y, x * y, 0)
    assert _encloses(-X, -x, 0)
    assert _encloses(X * 0.1, x * Fraction(0.1), 0)
    assert _encloses(X * -3.7, x * Fraction(-3.7), 0)
    assert _encloses(X + _t([c]), x + Fraction(c), 0)
    assert _encloses(_t([c]) - X, Fraction(c) - x, 0)
    assert _encloses(X * _t([d]), x * Fraction(d), 0)
    # and tight: the exact ranges, from the end points in rational arithmetic
    A, B, C, D = (Fraction(v) for v in (a, b, c, d))
    corners = [A * C, A * D, B * C, B * D]
    assert _tight(X + Y, A + C, B + D)
    assert _tight(X - Y, A - D, B - C)
    assert _tight(X * Y, min(corners), max(corners))
    assert _tight(-X, -B, -A)
    assert _tight(X * -3.7, B * Fraction(-3.7), A * Fraction(-3.7))


@FAST
@given(wide, wide)
def test_addition_of_huge_and_tiny_numbers_is_enclosed(a, b):
    X, Y = Interval.point(_t([a])), Interval.point(_t([b * 1e-310 if abs(b) < 1 else b]))
    exact = Fraction(a) + Fraction(float(Y.lo[0]))
    assert _encloses(X + Y, exact, 0)


def test_rounding_steps_move_one_ulp():
    x = _t([1.0, -1.0, 0.0])
    assert (round_down(x) < x).all()
    assert (round_up(x) > x).all()
    assert float(round_up(_t([0.0]))[0]) == 2.0**-1074


# ------------------------------------------------------------------ set operations
def test_set_operations():
    X = Interval.from_bounds(_t([0.0, 1.0]), _t([2.0, 3.0]))
    Y = Interval.from_bounds(_t([1.0, 4.0]), _t([5.0, 6.0]))
    inter = X.intersect(Y)
    assert inter.is_empty().tolist() == [False, True]
    hull = X.hull(Y)
    assert hull.lo.tolist() == [0.0, 1.0]
    assert hull.hi.tolist() == [5.0, 6.0]
    assert X.contains(_t([1.0, 3.0])).tolist() == [True, True]
    assert X.contains(_t([2.5, 0.5])).tolist() == [False, False]
    assert hull.contains(X).all()
    assert not X.interior_contains(X).any()
    assert X.contains(X.mid).all()
    c, r = X.midrad()
    assert ((c - r) <= X.lo).all()
    assert ((c + r) >= X.hi).all()
    assert (X.width >= X.hi - X.lo).all()


def test_bad_bounds_raise():
    with pytest.raises(IntervalError, match="lo > hi"):
        Interval.from_bounds(1.0, 0.0)
    with pytest.raises(IntervalError, match="NaN"):
        Interval.from_bounds(float("nan"), 0.0)
    with pytest.raises(IntervalError, match="NaN"):
        Interval.point(float("nan"))
    with pytest.raises(IntervalError, match="broadcastable"):
        Interval.from_bounds(torch.zeros(2), torch.ones(3))


# ------------------------------------------------------------------ products
dims = st.integers(min_value=1, max_value=5)


@st.composite
def matrices(draw, rows, cols, elements=finite):
    return [[draw(elements) for _ in range(cols)] for _ in range(rows)]


@FAST
@given(st.data(), dims, dims, st.integers(min_value=1, max_value=3))
def test_point_matrix_times_interval_vectors(data, n, m, batch):
    W = data.draw(matrices(n, m))
    lo = data.draw(matrices(batch, m))
    width = data.draw(matrices(batch, m, st.floats(min_value=0.0, max_value=10.0)))
    ts = data.draw(matrices(batch, m, unit))
    X = Interval.from_bounds(_t(lo), _t(lo) + _t(width))
    enc = matvec(_t(W), X)
    assert enc.shape == (batch, n)
    for k in range(batch):
        x = [Fraction(_inside(float(X.lo[k, j]), float(X.hi[k, j]), ts[k][j])) for j in range(m)]
        for i in range(n):
            exact = sum((Fraction(W[i][j]) * x[j] for j in range(m)), Fraction(0))
            assert _encloses(enc, exact, (k, i))
    # the product with a point matrix is the exact hull up to rounding: not much wider. The
    # rounding scales with the terms |W| |x|, not with the result (750600 - 750600 = 0)
    exact_width = _t(width) @ _t(W).abs().T
    terms = X.mag() @ _t(W).abs().T
    assert (enc.hi - enc.lo <= exact_width * (1 + 1e-12) + 1e-12 * (1 + terms)).all()


@FAST
@given(st.data(), dims, dims, dims)
def test_interval_matrix_products(data, n, k, m):
    A_lo = _t(data.draw(matrices(n, k)))
    A = Interval.from_bounds(A_lo, A_lo + _t(data.draw(matrices(n, k, unit))))
    B_lo = _t(data.draw(matrices(k, m)))
    B = Interval.from_bounds(B_lo, B_lo + _t(data.draw(matrices(k, m, unit))))
    P = _t(data.draw(matrices(k, m)))
    sa = data.draw(matrices(n, k, unit))
    sb = data.draw(matrices(k, m, unit))
    a = [[Fraction(_inside(float(A.lo[i, j]), float(A.hi[i, j]), sa[i][j])) for j in range(k)]
         for i in range(n)]  # fmt: skip
    b = [[Fraction(_inside(float(B.lo[i, j]), float(B.hi[i, j]), sb[i][j])) for j in range(m)]
         for i in range(k)]  # fmt: skip
    AB, AP = A @ B, matmul(A, P)
    for i in range(n):
        for j in range(m):
            exact = sum((a[i][r] * b[r][j] for r in range(k)), Fraction(0))
            assert _encloses(AB, exact, (i, j))
            exact_p = sum((a[i][r] * Fraction(float(P[r, j])) for r in range(k)), Fraction(0))
            assert _encloses(AP, exact_p, (i, j))
    # interval matrix @ interval vector
    v = B[:, 0]
    Av = matvec(A, v)
    for i in range(n):
        exact = sum((a[i][r] * b[r][0] for r in range(k)), Fraction(0))
        assert _encloses(Av, exact, i)


def test_products_with_cancellation_and_underflow():
    W = _t([[1e16, 1.0, -1e16], [1e-300, 0.0, 0.0]])
    x = Interval.point(_t([1.0, 1.0, 1.0]))
    enc = matvec(W, x)
    assert _encloses(enc, Fraction(1), 0)  # float sums give 0 or 2
    y = Interval.point(_t([1e-300, 0.0, 0.0]))
    enc_y = matvec(W, y)
    exact = Fraction(1e-300) * Fraction(1e-300)  # underflows to 0 in float64
    assert _encloses(enc_y, exact, 1)
    assert float(enc_y.hi[1]) > 0
    # the tensor @ Interval operator dispatches to the rigorous product
    M = W @ Interval.point(torch.eye(3, dtype=torch.float64))
    assert isinstance(M, Interval)
    assert M.contains(W).all()


def test_batched_matrix_products_broadcast():
    gen = torch.Generator().manual_seed(0)
    W = torch.randn(4, 4, generator=gen, dtype=torch.float64)
    lo = torch.randn(7, 4, 4, generator=gen, dtype=torch.float64)
    M = Interval.from_bounds(lo, lo + 0.1)
    out = matmul(W, M)
    assert out.shape == (7, 4, 4)
    point = lo + 0.05
    assert out.contains(W @ point).all()


# ------------------------------------------------------------------ activations
def _mp_sigmoid(x: float) -> mpmath.mpf:
    return 1 / (1 + mpmath.exp(-mpmath.mpf(x)))


def _mp_dsigmoid(x: float) -> mpmath.mpf:
    e = mpmath.exp(-abs(mpmath.mpf(x)))  # s (1 - s) without cancellation
    return e / (1 + e) ** 2


def _mp_tanh(x: float) -> mpmath.mpf:
    return mpmath.tanh(mpmath.mpf(x))


def _mp_dtanh(x: float) -> mpmath.mpf:
    return mpmath.sech(mpmath.mpf(x)) ** 2  # 1 - tanh^2 without cancellation


def _mp_in(enc: Interval, value: mpmath.mpf, index: int | tuple = 0) -> bool:
    """``value`` in the enclosure, up to the reference's own rounding at 50 digits (a
    relative 1e-45: e.g. ``s (1 - s)`` at ``x = 1e-37`` computes as ``0.25 + 7e-52``,
    above its true maximum 0.25), far below float64's 1e-16."""
    slack = abs(value) * mpmath.mpf(10) ** -45
    lo, hi = mpmath.mpf(float(enc.lo[index])), mpmath.mpf(float(enc.hi[index]))
    return lo - slack <= value <= hi + slack


EXTREMES = [0.0, 1e-300, -1e-300, 1e-8, -0.5, 3.0, 20.0, -20.0, 37.0, -40.0, 709.0, -709.0,
            -745.0, 800.0, -800.0]  # fmt: skip


@pytest.mark.parametrize("x", EXTREMES)
def test_activations_enclose_extreme_points(x):
    X = Interval.point(_t([x]))
    assert _mp_in(sigmoid(X), _mp_sigmoid(x))
    assert _mp_in(tanh(X), _mp_tanh(x))
    assert _mp_in(sigmoid_derivative(X), _mp_dsigmoid(x))
    assert _mp_in(tanh_derivative(X), _mp_dtanh(x))


def test_activation_assumption_on_many_points():
    """The 4-ulp libm assumption: torch's sigmoid/tanh against 50-digit values."""
    gen = torch.Generator().manual_seed(1)
    xs = torch.cat(
        [
            torch.randn(300, generator=gen, dtype=torch.float64) * 5,
            (torch.rand(300, generator=gen, dtype=torch.float64) - 0.5) * 1600,
            torch.randn(100, generator=gen, dtype=torch.float64) * 1e-6,
        ]
    )
    S, T = sigmoid(Interval.point(xs)), tanh(Interval.point(xs))
    for i, x in enumerate(xs.tolist()):
        assert _mp_in(S, _mp_sigmoid(x), i)
        assert _mp_in(T, _mp_tanh(x), i)


@FAST
@given(
    st.floats(min_value=-60, max_value=60),
    st.floats(min_value=-60, max_value=60),
    unit,
)
@example(a=0.0, b=11.875, t=1.175494351e-38)  # sigmoid' at its maximum, x ~ 1e-37
def test_activation_enclosures_over_intervals(a, b, t):
    a, b = _interval(a, b)
    X = Interval.from_bounds(_t([a]), _t([b]))
    x = _inside(a, b, t)
    assert _mp_in(sigmoid(X), _mp_sigmoid(x))
    assert _mp_in(tanh(X), _mp_tanh(x))
    assert _mp_in(sigmoid_derivative(X), _mp_dsigmoid(x))
    assert _mp_in(tanh_derivative(X), _mp_dtanh(x))
    # tight: the end points' values widened by a few ulps (the 4-ulp libm assumption)
    for enclosure, function in ((sigmoid(X), _mp_sigmoid), (tanh(X), _mp_tanh)):
        low, high = function(a), function(b)
        slack = max(abs(low), abs(high)) * mpmath.mpf(2) ** -47 + mpmath.mpf(2) ** -999
        assert mpmath.mpf(float(enclosure.lo[0])) >= low - slack
        assert mpmath.mpf(float(enclosure.hi[0])) <= high + slack
    # float64 values from math are within the outward-widened bounds as well
    assert float(sigmoid(X).lo[0]) <= float(torch.sigmoid(_t([x]))[0]) <= float(sigmoid(X).hi[0])


def test_derivative_ranges_are_tight_on_both_sides_of_zero():
    X = Interval.from_bounds(_t([-1.0, 0.5, -3.0]), _t([2.0, 4.0, -1.0]))
    D = sigmoid_derivative(X)
    assert float(D.hi[0]) == 0.25  # the maximum at 0
    assert float(D.lo[0]) == pytest.approx(float(_mp_dsigmoid(2.0)), rel=1e-14)
    assert float(D.hi[1]) == pytest.approx(float(_mp_dsigmoid(0.5)), rel=1e-14)
    assert float(D.lo[1]) == pytest.approx(float(_mp_dsigmoid(4.0)), rel=1e-14)
    assert float(D.lo[2]) == pytest.approx(float(_mp_dsigmoid(-3.0)), rel=1e-14)
    assert float(D.hi[2]) == pytest.approx(float(_mp_dsigmoid(-1.0)), rel=1e-14)
    T = tanh_derivative(X)
    assert float(T.hi[0]) == 1.0


def test_overflowing_products_are_unbounded_never_nan():
    # 3 * [-1, 1.5e308] = [-3, 4.5e308]: the upper end overflows; the center and radius are
    # both infinite and their difference was NaN
    x = Interval(
        torch.tensor([[-1.0]], dtype=torch.float64), torch.tensor([[1.5e308]], dtype=torch.float64)
    )
    product = matvec(torch.tensor([[3.0]], dtype=torch.float64), x)
    assert not bool(torch.isnan(product.lo).any() or torch.isnan(product.hi).any())
    assert float(product.lo) <= -3.0
    assert float(product.hi) == math.inf
