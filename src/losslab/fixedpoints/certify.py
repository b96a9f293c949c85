r"""Certified counts of the fixed points of square sigmoid / tanh networks (P5).

For ``f = sigma o A_L o ... o sigma o A_1`` (:class:`~losslab.nets.square.SquareNet`)
:func:`certify_fixed_points` returns the number of solutions of ``F(x) = f(x) - x = 0`` in
a box, *with proof*: every reported root comes with a box in which interval arithmetic
with outward rounding (:mod:`losslab.linalg.interval`) proves that exactly one root
exists, the roots are proven pairwise distinct, and every other part of the box is
proven root-free. When the budget runs out the count is only a lower bound and the
result says so (``status == "incomplete"``) with the boxes left undecided.

**Method: branch and bound with the Krawczyk operator.** A stack of boxes starts with
the search box (by default the closure of the output box, ``[0, 1]^N`` for sigmoid and
``[-1, 1]^N`` for tanh: every fixed point ``x = f(x)`` lies in the image of ``f``).
Boxes are processed many at a time, as batched torch tensors. For a box ``X``:

1. *Exclusion and contraction.* Every fixed point in ``X`` lies in ``f(X)``; the interval
   enclosure ``f(X)`` is computed layer by layer (``Z_l = W_l A_{l-1} + b_l``,
   ``A_l = sigma(Z_l)``) and ``X`` is replaced by ``X' = X ∩ f(X)``. Empty: no root.
2. *Krawczyk test* (Krawczyk 1969; Moore 1977; Neumaier 1990, Thm 5.1.8). With
   ``m = mid(X')``, a point matrix ``Y`` (the float inverse of the midpoint of the
   interval Jacobian ``J_F(X)``; any ``Y`` is valid) and
   ``J_F(X) = J_f(X) - I ⊇ {F'(x) : x ∈ X}``, where
   ``J_f(X) = diag(sigma'(Z_L)) W_L ... diag(sigma'(Z_1)) W_1``,
   ``K(X') = m - Y F(m) + (I - Y J_F(X)) (X' - m)`` (``F(m)`` itself an enclosure).
   Every zero of ``F`` in ``X'`` lies in ``K(X')``. **Theorem:** if
   ``K(X') ⊂ int X'`` then ``F`` has exactly one zero in ``X'`` (and it lies in
   ``K(X')``). If ``K(X') ∩ X' = ∅`` there is none. Otherwise ``X'' = K(X') ∩ X'`` is
   kept whole if its volume is below half of ``X``'s, else bisected along the coordinate
   ``j`` of largest smear ``w_j max_i |J_F(X)_ij|``.
3. *epsilon-inflation.* A root on (or within rounding of) a face between two boxes can
   never satisfy ``K ⊂ int X`` in either box. Once a box is small (width below
   ``2^-10`` of the search box) and undecided, the test is repeated on
   ``E = hull(X'', x~) + [-rho, rho]`` (``x~`` the Newton point ``m - Y mid F(m)``,
   ``rho`` half the width of ``X''`` plus ``2^-33 (1 + |x~|)``). If ``K(E) ⊂ int E``,
   ``E ⊇ X''`` holds one root, which is recorded, and ``X''`` is discarded (its only
   possible root is that one).

**De-duplication rule.** Each certified root ``i`` is a pair (``V_i``: box with exactly
one root, ``T_i ⊆ V_i``: tight enclosure, shrunk by Krawczyk steps ``T <- K(T) ∩ T`` until
they stall, quadratically fast). Roots ``i, j`` are distinct when ``T_i ∩ T_j = ∅``; the same when
``T_i ⊆ V_j`` or ``T_j ⊆ V_i`` (uniqueness in ``V``); otherwise the same if the Krawczyk
test succeeds on the inflated hull of ``T_i ∪ T_j``; otherwise the pair is *ambiguous*
(merged for the lower bound, and the status is "incomplete"). Boxes of the bisection
have disjoint interiors and a root certified in ``V`` lies in ``int V``, so roots found
without inflation are always distinct. A root found by inflation counts only when its
enclosure lies inside the search box (a root straddling the boundary of a user box makes
the result incomplete).

**Rigour.** All enclosures use outward rounding (see :mod:`losslab.linalg.interval` for
the model: IEEE binary64, classical matmul, torch ``sigmoid``/``tanh`` within 4 ulps).

**Cost.** One box costs ``O(L N^3)`` flops (interval Jacobian, ``N x N`` inverse), done in
batches of up to ``batch_size`` boxes, so a step costs a few hundred small tensor
operations. The number of boxes grows with the number of roots, the conditioning of
``F'`` at the roots and, exponentially, with ``N``: roots near-singular (``det F' ≈ 0``)
need many tiny boxes and exhaust the budget.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from losslab.errors import FixedPointError
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
from losslab.nets.square import SquareNet

__all__ = ["CertifiedCount", "certify_fixed_points"]

Status = Literal["certified", "incomplete"]


def _inverse_sigmoid(a: Interval) -> Interval:
    """Enclosure of ``logit`` over ``a ∩ [0, 1]`` (``-inf`` at 0, ``+inf`` at 1)."""
    return _widened_inverse(torch.logit(a.lo.clamp(0.0, 1.0)), torch.logit(a.hi.clamp(0.0, 1.0)))


def _inverse_tanh(a: Interval) -> Interval:
    """Enclosure of ``atanh`` over ``a ∩ [-1, 1]`` (infinite at -1 and 1)."""
    return _widened_inverse(torch.atanh(a.lo.clamp(-1.0, 1.0)), torch.atanh(a.hi.clamp(-1.0, 1.0)))


def _widened_inverse(lo: Tensor, hi: Tensor) -> Interval:
    """End points of ``logit`` / ``atanh`` widened by ``2^-50 (1 + |y|)``: the argument
    ``x / (1 - x)`` (or ``(1 + x) / (1 - x)``) carries at most 2 roundings (relative
    ``2u``, so absolute ``2u`` after the logarithm), the logarithm at most 4 ulps of its
    result; ``2^-50 = 8u`` covers both. NaN cannot occur on clamped arguments."""
    lo_err = round_up(lo.abs() * INVERSE_ERROR + INVERSE_ERROR)
    hi_err = round_up(hi.abs() * INVERSE_ERROR + INVERSE_ERROR)
    lo = torch.where(torch.isfinite(lo), round_down(lo - lo_err), lo)
    hi = torch.where(torch.isfinite(hi), round_up(hi + hi_err), hi)
    return Interval(lo, hi)


INVERSE_ERROR = 2.0**-50
_INVERSE_ACTIVATIONS = {"sigmoid": _inverse_sigmoid, "tanh": _inverse_tanh}

_ACTIVATIONS = {
    "sigmoid": (sigmoid, sigmoid_derivative, (0.0, 1.0)),
    "tanh": (tanh, tanh_derivative, (-1.0, 1.0)),
}
_INFLATE_FRACTION = 2.0**-10  # try epsilon-inflation on boxes this small (relative)
_PROGRESS_RATIO = 0.5  # keep a contracted box whole if its volume fell below this ratio
_INFLATE_FLOOR = 2.0**-33  # ~1e-10: smallest inflation radius, far above rounding
_TIGHTEN_STEPS = 12  # at most; stops when K(T) ∩ T no longer halves T
_CONTRACT_STEPS = 2  # at most this many X <- X ∩ f(X) (and backward) passes per box and step


@dataclass(frozen=True)
class CertifiedCount:
    """The fixed points of a map in a box, counted with proof.

    Attributes:
        count: the number of fixed points proven to exist in the box and to be pairwise
            distinct. Exact when ``status == "certified"``; a **lower bound** otherwise.
        status: ``"certified"`` (the whole box was decided: exactly ``count`` fixed
            points) or ``"incomplete"`` (budget exhausted or unresolved cases; see
            ``reason``).
        enclosures: (count, N, 2) float64; ``enclosures[k, :, 0]`` / ``[..., 1]`` are the
            lower / upper corners of a box holding the k-th fixed point (and no other).
        unresolved_lo, unresolved_hi: (u, N) corners of the boxes left undecided.
        unresolved_volume: their total volume; ``unresolved_fraction`` as a fraction of
            the box volume.
        box_lo, box_hi: (N,) the search box.
        boxes_processed: boxes evaluated by the branch and bound.
        seconds: wall-clock time.
        reason: why the status is what it is, in words.
        ambiguous_pairs: pairs of root boxes that could be neither merged nor separated.
        boundary_roots: roots whose enclosures straddle the boundary of the search box.
    """

    count: int
    status: Status
    enclosures: Tensor
    unresolved_lo: Tensor
    unresolved_hi: Tensor
    unresolved_volume: float
    unresolved_fraction: float
    box_lo: Tensor
    box_hi: Tensor
    boxes_processed: int
    seconds: float
    reason: str
    ambiguous_pairs: int = 0
    boundary_roots: int = 0

    @property
    def certified(self) -> bool:
        """True when ``count`` is the exact number of fixed points in the box."""
        return self.status == "certified"

    @property
    def is_lower_bound(self) -> bool:
        """True when ``count`` is only a lower bound (``status == "incomplete"``)."""
        return self.status != "certified"

    @property
    def roots(self) -> Tensor:
        """(count, N) midpoints of the enclosures (each within its enclosure's width of a
        fixed point)."""
        return 0.5 * (self.enclosures[..., 0] + self.enclosures[..., 1])

    def to_dict(self) -> dict[str, Any]:
        """Plain Python numbers and lists, for the results store."""
        widths = (self.enclosures[..., 1] - self.enclosures[..., 0]).amax(dim=-1)
        return {
            "count": self.count,
            "status": self.status,
            "count_is_lower_bound": self.is_lower_bound,
            "roots": self.roots.tolist(),
            "enclosure_max_width": float(widths.max()) if widths.numel() else 0.0,
            "unresolved_boxes": int(self.unresolved_lo.shape[0]),
            "unresolved_volume": self.unresolved_volume,
            "unresolved_fraction": self.unresolved_fraction,
            "box_lo": self.box_lo.tolist(),
            "box_hi": self.box_hi.tolist(),
            "boxes_processed": self.boxes_processed,
            "seconds": self.seconds,
            "reason": self.reason,
            "ambiguous_pairs": self.ambiguous_pairs,
            "boundary_roots": self.boundary_roots,
        }


@dataclass
class _Krawczyk:
    K: Interval  # enclosure of K(X)
    ok: Tensor  # (B,) Y finite and invertible
    m: Tensor  # (B, N) the centre
    newton: Tensor  # (B, N) the Newton point m - Y mid F(m)
    JF: Interval  # (B, N, N) interval Jacobian of F over the box


class _IntervalMap:
    """Interval evaluations of ``f``, its Jacobian and the Krawczyk operator, batched."""

    def __init__(self, weights: list[tuple[Tensor, Tensor]], activation: str) -> None:
        self.weights = weights
        self.act, self.dact, _ = _ACTIVATIONS[activation]
        self.inverse = _INVERSE_ACTIVATIONS[activation]
        self.N = weights[0][0].shape[0]
        self.eye = torch.eye(self.N, dtype=torch.float64, device=weights[0][0].device)
        # backward contraction: any M gives a = M (z - b) + (I - M W) a exactly when
        # z = W a + b; M = float inverse of W makes the enclosure tight
        self.inverses: list[Tensor | None] = []
        self.residual_maps: list[Interval | None] = []
        for W, _ in weights:
            M, info = torch.linalg.inv_ex(W)
            usable = int(info) == 0 and bool(torch.isfinite(M).all())
            self.inverses.append(M if usable else None)
            self.residual_maps.append(
                Interval(self.eye, self.eye) - matmul(M, W) if usable else None
            )

    def forward(self, X: Interval) -> tuple[Interval, list[Interval]]:
        """``f(X)`` and the pre-activation enclosures ``Z_l``."""
        Zs = []
        A = X
        for W, b in self.weights:
            Z = matvec(W, A) + b
            Zs.append(Z)
            A = self.act(Z)
        return A, Zs

    def contract_backward(self, X: Interval, Zs: list[Interval]) -> Interval:
        """Shrink ``X`` (which holds every fixed point in it) from the output back.

        A fixed point ``x`` in ``X`` has ``z_l = W_l a_{l-1} + b_l`` in ``Z_l``,
        ``a_l = sigma(z_l)`` (``a_0 = x``) and ``a_L = x``. So ``z_L`` lies in
        ``Z_L ∩ sigma^-1(X)``; from ``z_l`` back to ``a_{l-1}`` the identity
        ``a = M (z - b) + (I - M W) a`` (any matrix ``M``; here the float inverse of ``W``)
        gives ``A_{l-1} ∩ (M (Z_l - b_l) + (I - M W_l) A_{l-1})``; and so on down to
        ``a_0 = x``. The result encloses every fixed point of ``X`` (it may be empty)."""
        A_out = X
        dead = torch.zeros(X.shape[0], dtype=torch.bool, device=X.lo.device)
        for layer in range(len(self.weights) - 1, -1, -1):
            A_in = X if layer == 0 else self.act(Zs[layer - 1])
            M, C = self.inverses[layer], self.residual_maps[layer]
            if M is None or C is None:
                return X
            Z = Zs[layer].intersect(self.inverse(A_out))
            back = matvec(M, Z - self.weights[layer][1]) + matvec(C, A_in)
            # unbounded or NaN end points (an infinite Z) carry no information
            lo = torch.where(torch.isnan(back.lo), torch.full_like(back.lo, -math.inf), back.lo)
            hi = torch.where(torch.isnan(back.hi), torch.full_like(back.hi, math.inf), back.hi)
            A_out = A_in.intersect(Interval(lo, hi))
            # empty only when an end point crossed the other: NaN says nothing (an overflow)
            dead |= (A_out.lo > A_out.hi).any(dim=-1)
        # a box found empty at any layer holds no fixed point: mark it empty for good
        lo = torch.where(dead[:, None], torch.full_like(A_out.lo, math.inf), A_out.lo)
        hi = torch.where(dead[:, None], torch.full_like(A_out.hi, -math.inf), A_out.hi)
        return Interval(lo, hi)

    def jacobian(self, Zs: list[Interval]) -> Interval:
        """``J_f = diag(sigma'(Z_L)) W_L ... diag(sigma'(Z_1)) W_1``, (B, N, N)."""
        M: Interval | None = None
        for (W, _), Z in zip(self.weights, Zs, strict=True):
            D = self.dact(Z).unsqueeze(-1)  # (B, N, 1), rows scaled
            M = D * W if M is None else D * matmul(W, M)
        assert M is not None
        return M

    def krawczyk(self, X: Interval, Jf: Interval) -> _Krawczyk:
        """``K(X) = m - Y F(m) + (I - Y J_F) (X - m)`` with ``Y = mid(J_F)^-1``."""
        JF = Jf - self.eye
        Y, info = torch.linalg.inv_ex(JF.mid)
        ok = (info == 0) & torch.isfinite(Y).all(dim=-1).all(dim=-1)
        Y = torch.where(ok[:, None, None], Y, torch.zeros_like(Y))
        m = X.mid
        fm, _ = self.forward(Interval(m, m))
        Fm = fm - m
        C = self.eye - matmul(Y, JF)
        K = (m - matvec(Y, Fm)) + matvec(C, X - m)
        newton = m - (Y @ Fm.mid.unsqueeze(-1)).squeeze(-1)
        return _Krawczyk(K, ok, m, newton, JF)

    def verify(self, E: Interval) -> tuple[Tensor, Interval]:
        """Krawczyk test on boxes ``E``: (unique-root mask, ``K(E) ∩ E``)."""
        _, Zs = self.forward(E)
        kr = self.krawczyk(E, self.jacobian(Zs))
        unique = kr.ok & E.interior_contains(kr.K).all(dim=-1)
        return unique, kr.K.intersect(E)


def _extract(net: Any) -> tuple[list[tuple[Tensor, Tensor]], str, int]:
    """Validated float64 weights, activation name and width of a SquareNet-like map (an
    ``nn.Sequential`` of square ``Linear`` layers and ``Sigmoid`` or ``Tanh`` is converted by
    :meth:`SquareNet.from_sequential`)."""
    if isinstance(net, nn.Sequential):
        net = SquareNet.from_sequential(net)
    has_api = callable(getattr(net, "weights", None)) and hasattr(net, "activation")
    if not has_api or not hasattr(net, "N"):
        kind = "an nn.Module that is not a SquareNet" if isinstance(net, nn.Module) else "it"
        raise FixedPointError(
            f"certify_fixed_points needs a SquareNet (or an object with weights(), "
            f"activation and N); got {type(net).__name__} ({kind}). Build the map with "
            "losslab.nets.square.SquareNet."
        )
    activation = net.activation
    if activation not in _ACTIVATIONS:
        raise FixedPointError(f"activation must be 'sigmoid' or 'tanh'; got {activation!r}")
    N = net.N
    if isinstance(N, bool) or not isinstance(N, int) or N < 1:
        raise FixedPointError(f"N must be an integer >= 1; got {N!r}")
    try:
        pairs = list(net.weights())
    except (TypeError, ValueError, AttributeError) as error:
        raise FixedPointError(f"net.weights() failed: {error}") from None
    if not pairs:
        raise FixedPointError("the network has no layers; it needs at least one (W, b)")
    weights = []
    for index, (W, b) in enumerate(pairs, start=1):
        W = torch.as_tensor(W).detach().to(torch.float64)
        b = torch.as_tensor(b).detach().to(torch.float64)
        if W.shape != (N, N) or b.shape != (N,):
            raise FixedPointError(
                f"layer {index}: expected W of shape ({N}, {N}) and b of shape ({N},); got "
                f"{tuple(W.shape)} and {tuple(b.shape)}"
            )
        if not (torch.isfinite(W).all() and torch.isfinite(b).all()):
            raise FixedPointError(
                f"layer {index} has NaN or infinite weights; certify a network with finite "
                "parameters"
            )
        weights.append((W.contiguous(), b.contiguous()))
    if callable(net) and not (isinstance(net, SquareNet) and net.computes_its_layers):
        _check_layers_describe(net, weights, activation, N)  # e.g. a subclass's own forward
    return weights, activation, N


def _check_layers_describe(
    net: Any, weights: list[tuple[Tensor, Tensor]], activation: str, N: int
) -> None:
    """A map that lists its layers must compute them: compare ``net(x)`` with the
    composition of the layers at the corners of the activation's output box (where every
    fixed point lies; ``2^min(N, 6)`` of them) and 16 points inside it (a ReLU net claiming
    ``activation="sigmoid"`` would otherwise be certified as another map)."""
    sigma = torch.sigmoid if activation == "sigmoid" else torch.tanh
    device = weights[0][0].device
    # where the fixed points lie: the activation's output box, its corners and inside
    out_low, out_high = _ACTIVATIONS[activation][2]
    n_corners = 2 ** min(N, 6)
    bits = (torch.arange(n_corners)[:, None] >> torch.arange(N)[None, :]) & 1
    uniform = torch.rand(16, N, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = out_low + (out_high - out_low) * torch.cat([bits.to(torch.float64), uniform])
    x = x.to(device)
    expected = x
    for W, b in weights:
        expected = sigma(expected @ W.T + b)
    parameter = next(iter(net.parameters()), None) if isinstance(net, nn.Module) else None
    dtype = torch.float64 if parameter is None else parameter.dtype  # the map's own dtype
    try:
        with torch.no_grad():
            computed = torch.as_tensor(net(x.to(dtype))).to(torch.float64)
    except Exception as error:  # the user's map, whatever it raises
        raise FixedPointError(f"net(x) failed on {tuple(x.shape)} inputs: {error}") from None
    tolerance = 1e-6 if dtype == torch.float64 else 1e-3
    if computed.shape != expected.shape or not bool(
        ((computed - expected).abs() <= tolerance).all()
    ):
        raise FixedPointError(
            f"net(x) is not the composition of the layers net.weights() lists with "
            f"activation={activation!r}: the proof would be about another map"
        )


def _search_box(
    box: tuple[Tensor | float, Tensor | float] | None, activation: str, N: int, device: Any
) -> tuple[Tensor, Tensor]:
    if box is None:
        low, high = _ACTIVATIONS[activation][2]
        return (
            torch.full((N,), low, dtype=torch.float64, device=device),
            torch.full((N,), high, dtype=torch.float64, device=device),
        )
    try:
        low_raw, high_raw = box
    except (TypeError, ValueError) as exc:
        raise FixedPointError("box must be a pair (low, high) of scalars or (N,) tensors") from exc
    corners = []
    for name, value in (("low", low_raw), ("high", high_raw)):
        t = torch.as_tensor(value, dtype=torch.float64).to(device)
        if t.ndim == 0:
            t = t.expand(N)
        if t.shape != (N,):
            raise FixedPointError(f"box {name} must be a scalar or have shape ({N},)")
        if not torch.isfinite(t).all():
            raise FixedPointError(f"box {name} has NaN or infinite entries; pass finite bounds")
        corners.append(t.clone())
    lo, hi = corners
    if (lo > hi).any():
        raise FixedPointError("box is inverted (low > high somewhere); pass low < high")
    if (lo == hi).any():
        raise FixedPointError(
            "box is empty of interior (low == high somewhere); give every side a positive width"
        )
    return lo, hi


def _log_volume_ratio(new: Interval, old: Interval) -> Tensor:
    tiny = 1e-300
    w_new = (new.hi - new.lo).clamp_min(0) + tiny
    w_old = (old.hi - old.lo).clamp_min(0) + tiny
    return torch.log(w_new / w_old).sum(dim=-1)


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        ri, rj = self.find(i), self.find(j)
        if ri != rj:
            self.parent[max(ri, rj)] = min(ri, rj)


def certify_fixed_points(
    net: Any,
    box: tuple[Tensor | float, Tensor | float] | None = None,
    *,
    max_boxes: int = 2_000_000,
    time_limit: float = 60.0,
    min_width: float = 1e-14,
    batch_size: int = 4096,
) -> CertifiedCount:
    r"""Count, with proof, the fixed points ``x = f(x)`` of a square network in a box.

    Branch and bound with interval arithmetic and the Krawczyk operator (module
    docstring): every box is either proven root-free, proven to hold exactly one root, or
    split; roots found in overlapping boxes are merged or separated rigorously.

    Args:
        net: a :class:`~losslab.nets.square.SquareNet` (or any object with ``weights()``
            returning ``[(W_l, b_l)]`` of shapes (N, N), (N,), ``activation`` in
            {"sigmoid", "tanh"} and ``N``).
        box: ``(low, high)``, scalars or (N,) tensors, ``low < high``. Default: the closure
            of the output box, which holds every fixed point.
        max_boxes: stop after evaluating this many boxes.
        time_limit: stop after this many seconds (checked between batches).
        min_width: boxes whose widest side is at most ``min_width * max(1, |x|)`` (``|x|``
            the box's largest coordinate in magnitude) that are still undecided are given up
            as unresolved: about 45 rounding units of their coordinates by default (at
            1e-12, roots 3e-8 from a corner of a saturated tanh net were given up).
        batch_size: boxes evaluated together in one batched step.

    Returns:
        A :class:`CertifiedCount`. ``status == "certified"`` means ``count`` is exact;
        otherwise it is a lower bound and the unresolved boxes are reported.

    Raises:
        FixedPointError: ``net`` is not SquareNet-like, has NaN/inf weights, the box is
            inverted, empty or not finite, or a budget is not positive.
    """
    start = time.perf_counter()
    weights, activation, N = _extract(net)
    if isinstance(max_boxes, bool) or not isinstance(max_boxes, int) or max_boxes < 1:
        raise FixedPointError(f"max_boxes must be an integer >= 1; got {max_boxes!r}")
    if not (isinstance(time_limit, int | float) and time_limit > 0):
        raise FixedPointError(f"time_limit must be a number > 0; got {time_limit!r}")
    if not (isinstance(min_width, int | float) and math.isfinite(min_width) and min_width >= 0):
        raise FixedPointError(f"min_width must be a finite number >= 0; got {min_width!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise FixedPointError(f"batch_size must be an integer >= 1; got {batch_size!r}")
    device = weights[0][0].device
    box_lo, box_hi = _search_box(box, activation, N, device)
    fmap = _IntervalMap(weights, activation)
    inflate_width = _INFLATE_FRACTION * float((box_hi - box_lo).max())

    with torch.no_grad():
        stack_lo, stack_hi = box_lo[None].clone(), box_hi[None].clone()
        rec_V: list[Interval] = []
        rec_T: list[Interval] = []
        given_up: list[Interval] = []
        processed = 0
        stop_reason = ""
        while stack_lo.shape[0] > 0:
            if processed >= max_boxes:
                stop_reason = f"max_boxes={max_boxes} boxes processed"
                break
            if time.perf_counter() - start > time_limit:
                stop_reason = f"time_limit={time_limit} s reached"
                break
            take = min(batch_size, max_boxes - processed, stack_lo.shape[0])
            X = Interval(stack_lo[-take:], stack_hi[-take:])
            stack_lo, stack_hi = stack_lo[:-take], stack_hi[:-take]
            processed += take
            new_lo, new_hi = _step(fmap, X, rec_V, rec_T, given_up, inflate_width, min_width)
            if new_lo.shape[0]:
                stack_lo = torch.cat([stack_lo, new_lo])
                stack_hi = torch.cat([stack_hi, new_hi])

        image_lo, image_hi = _search_box(None, activation, N, device)
        count, enclosures, ambiguous, boundary = _deduplicate(
            fmap, rec_V, rec_T, Interval(box_lo, box_hi), Interval(image_lo, image_hi)
        )
    unresolved = [Interval(stack_lo, stack_hi), *given_up]
    un_lo = torch.cat([u.lo for u in unresolved]).reshape(-1, N)
    un_hi = torch.cat([u.hi for u in unresolved]).reshape(-1, N)
    un_volume = float((un_hi - un_lo).clamp_min(0).prod(dim=-1).sum()) if un_lo.numel() else 0.0
    box_volume = float((box_hi - box_lo).prod())
    problems = []
    if stop_reason:
        problems.append(f"stopped early: {stop_reason} with {stack_lo.shape[0]} boxes left")
    if given_up:
        n_small = sum(u.lo.shape[0] for u in given_up)
        problems.append(f"{n_small} boxes narrower than min_width={min_width} stayed undecided")
    if ambiguous:
        problems.append(f"{ambiguous} pairs of root enclosures could not be told apart")
    if boundary:
        problems.append(f"{boundary} roots lie within rounding of the box boundary")
    if problems:
        status: Status = "incomplete"
        reason = "; ".join(problems) + f". The count {count} is a lower bound."
    else:
        status = "certified"
        reason = (
            f"every box decided: exactly {count} fixed points, each in a box where the "
            "Krawczyk test proves a unique root"
        )
    return CertifiedCount(
        count=count,
        status=status,
        enclosures=enclosures,
        unresolved_lo=un_lo,
        unresolved_hi=un_hi,
        unresolved_volume=un_volume,
        unresolved_fraction=un_volume / box_volume if box_volume > 0 else 0.0,
        box_lo=box_lo,
        box_hi=box_hi,
        boxes_processed=processed,
        seconds=time.perf_counter() - start,
        reason=reason,
        ambiguous_pairs=ambiguous,
        boundary_roots=boundary,
    )


def _step(
    fmap: _IntervalMap,
    X: Interval,
    rec_V: list[Interval],
    rec_T: list[Interval],
    given_up: list[Interval],
    inflate_width: float,
    min_width: float,
) -> tuple[Tensor, Tensor]:
    """Process a batch of boxes; return the boxes to push back on the stack."""
    X1 = X
    for _ in range(_CONTRACT_STEPS):  # X <- X ∩ f(X) keeps every fixed point of X
        fX, Zs = fmap.forward(X1)
        X_next = fmap.contract_backward(X1.intersect(fX), Zs)
        alive = ~X_next.is_empty().any(dim=-1)
        if not bool(alive.all()):
            X, X1, X_next = X[alive], X1[alive], X_next[alive]
            Zs = [Z[alive] for Z in Zs]
        if X_next.shape[0] == 0:
            return X_next.lo, X_next.hi
        shrunk = bool((_log_volume_ratio(X_next, X1) < math.log(0.9)).any())
        X1 = X_next  # the Zs enclose the pre-activations over the previous X1 ⊇ X_next
        if not shrunk:
            break
    kr = fmap.krawczyk(X1, fmap.jacobian(Zs))
    ok = kr.ok
    unique = ok & X1.interior_contains(kr.K).all(dim=-1)
    if bool(unique.any()):
        rec_V.append(X1[unique])
        rec_T.append(kr.K.intersect(X1)[unique])
    KX = kr.K.intersect(X1)
    X2 = Interval(torch.where(ok[:, None], KX.lo, X1.lo), torch.where(ok[:, None], KX.hi, X1.hi))
    keep = ~unique & ~X2.is_empty().any(dim=-1)
    if not bool(keep.any()):
        return X2.lo[:0], X2.hi[:0]
    X, X2 = X[keep], X2[keep]
    newton, ok, JF = kr.newton[keep], ok[keep], kr.JF[keep]
    width = (X2.hi - X2.lo).amax(dim=-1)

    # epsilon-inflation on small undecided boxes
    small = ok & (width <= inflate_width) & torch.isfinite(newton).all(dim=-1)
    if bool(small.any()):
        Xs = X2[small]
        nt = newton[small]
        # rho: half the width, plus a floor well above rounding (the test needs room)
        rho = 0.5 * width[small, None] + _INFLATE_FLOOR * (1.0 + nt.abs())
        # E ⊇ X2 holds every root of X2: when E holds exactly one, X2 is decided (a root
        # of E outside X2 is another box's root too, merged by _deduplicate)
        E = Interval(torch.minimum(Xs.lo, nt) - rho, torch.maximum(Xs.hi, nt) + rho)
        E_unique, E_T = fmap.verify(E)
        if bool(E_unique.any()):
            rec_V.append(E[E_unique])
            rec_T.append(E_T[E_unique])
            drop = torch.zeros_like(small)
            drop[small] = E_unique
            X, X2, JF, width = X[~drop], X2[~drop], JF[~drop], width[~drop]

    magnitude = torch.maximum(X2.lo.abs(), X2.hi.abs()).amax(dim=-1).clamp(min=1.0)
    tiny = width <= min_width * magnitude
    if bool(tiny.any()):
        given_up.append(X2[tiny])
        X, X2, JF, width = X[~tiny], X2[~tiny], JF[~tiny], width[~tiny]
    if X2.shape[0] == 0:
        return X2.lo, X2.hi

    progressed = _log_volume_ratio(X2, X) < math.log(_PROGRESS_RATIO)
    whole = X2[progressed]
    split, JFs = X2[~progressed], JF[~progressed]
    # bisect along the coordinate of largest smear w_j max_i |J_F(X)_ij|
    w = split.hi - split.lo
    smear = w * JFs.mag().amax(dim=-2)
    smear = torch.where(w > 0, smear, torch.zeros_like(smear))
    dim = smear.argmax(dim=-1)
    rows = torch.arange(split.shape[0], device=w.device)
    cut = split.mid[rows, dim]
    left_hi = split.hi.clone()
    left_hi[rows, dim] = cut
    right_lo = split.lo.clone()
    right_lo[rows, dim] = cut
    new_lo = torch.cat([whole.lo, split.lo, right_lo])
    new_hi = torch.cat([whole.hi, left_hi, split.hi])
    return new_lo, new_hi


def _deduplicate(
    fmap: _IntervalMap,
    rec_V: list[Interval],
    rec_T: list[Interval],
    box: Interval,
    image: Interval,
) -> tuple[int, Tensor, int, int]:
    """Tighten, merge and count the certified roots (module docstring: de-duplication).

    ``image`` is the closed output box of ``f``: every fixed point lies in it, so root
    enclosures are intersected with it (this settles roots within rounding of 0 or 1).

    Returns ``(count, enclosures (count, N, 2), ambiguous pairs, boundary roots)``.
    """
    N = box.shape[-1]
    empty = torch.empty((0, N, 2), dtype=torch.float64, device=box.lo.device)
    if not rec_V:
        return 0, empty, 0, 0
    V = Interval(torch.cat([v.lo for v in rec_V]), torch.cat([v.hi for v in rec_V]))
    T = Interval(torch.cat([t.lo for t in rec_T]), torch.cat([t.hi for t in rec_T]))
    for _ in range(_TIGHTEN_STEPS):  # T <- K(T) ∩ T keeps the root
        _, KT = fmap.verify(T)
        good = ~KT.is_empty().any(dim=-1)
        T_next = Interval(
            torch.where(good[:, None], KT.lo, T.lo), torch.where(good[:, None], KT.hi, T.hi)
        )
        progress = bool((_log_volume_ratio(T_next, T) < math.log(0.5)).any())
        T = T_next
        if not progress:
            break
    T = T.intersect(Interval(image.lo.expand_as(T.lo), image.hi.expand_as(T.hi)))
    k = V.shape[0]
    uf = _UnionFind(k)
    ambiguous_pairs: set[tuple[int, int]] = set()
    meet = ((T.lo[:, None, :] <= T.hi[None, :, :]) & (T.lo[None, :, :] <= T.hi[:, None, :])).all(
        dim=-1
    )
    in_V = ((V.lo[None, :, :] <= T.lo[:, None, :]) & (T.hi[:, None, :] <= V.hi[None, :, :])).all(
        dim=-1
    )  # in_V[i, j]: T_i ⊆ V_j
    same = meet & (in_V | in_V.T)
    pairs = torch.nonzero(torch.triu(meet, diagonal=1), as_tuple=False).tolist()
    unclear = [(i, j) for i, j in pairs if not bool(same[i, j])]
    for i, j in pairs:
        if bool(same[i, j]):
            uf.union(i, j)
    if unclear:
        idx_i = torch.tensor([p[0] for p in unclear], device=V.lo.device)
        idx_j = torch.tensor([p[1] for p in unclear], device=V.lo.device)
        H = T[idx_i].hull(T[idx_j])
        pad = (H.hi - H.lo).amax(dim=-1, keepdim=True) + 1e-15 * (1 + H.mag())
        E = Interval(H.lo - pad, H.hi + pad)
        hull_unique, _ = fmap.verify(E)
        for (i, j), proved in zip(unclear, hull_unique.tolist(), strict=True):
            uf.union(i, j)  # merged either way: same root, or ambiguous (lower bound)
            if not proved:
                ambiguous_pairs.add((i, j))
    groups: dict[int, list[int]] = {}
    for i in range(k):
        groups.setdefault(uf.find(i), []).append(i)
    ambiguous_roots = {uf.find(i) for i, _ in ambiguous_pairs}
    count, boundary, boxes = 0, 0, []
    for root, members in groups.items():
        idx = torch.tensor(members, device=V.lo.device)
        if root in ambiguous_roots:
            enc = Interval(T.lo[idx].amin(dim=0), T.hi[idx].amax(dim=0))
        else:
            enc = Interval(T.lo[idx].amax(dim=0), T.hi[idx].amin(dim=0))
        if bool(box.contains(enc).all()):
            count += 1
            boxes.append(torch.stack([enc.lo, enc.hi], dim=-1))
        elif not bool(enc.intersect(box).is_empty().any()):
            boundary += 1
    enclosures = torch.stack(boxes) if boxes else empty
    order = torch.argsort(enclosures[:, 0, 0]) if boxes else torch.arange(0)
    return count, enclosures[order], len(ambiguous_pairs), boundary
