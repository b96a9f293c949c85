r"""Spectra of input-output Jacobians and heavy tails of weights (Berlyand & Slavin, P5).

Three tools:

1. :func:`jacobian_spectrum` / :func:`ensemble_spectrum`: for a map ``f: R^N -> R^N``
   the Jacobians ``J(x) = df/dx`` at given points (``torch.func.vmap(jacrev(f))``),
   their eigenvalues (complex; the stability of a fixed point ``x* = f(x*)`` is set by
   the spectral radius of ``J(x*)``) and squared singular values (the eigenvalues of
   ``J J^T``, whose empirical spectral distribution, ESD, P5 studies).
2. :func:`free_probability_singular_density`: the large-``N`` limit of that ESD for a
   square net with Gaussian weights. Berlyand & Slavin derive an equation for the ESD
   of the Jacobian and solve it numerically; here the equation is the free-probability
   product law of Pennington, Schoenholz & Ganguli (2017, 2018), stated in the
   function's docstring and solved by Newton's method on the Stieltjes transform.
3. :func:`power_law_alpha`: the maximum-likelihood power-law exponent of a tail
   (Clauset, Shalizi & Newman 2009), as WeightWatcher fits the ESD of ``W^T W``. P5's
   claim that *trained weights become heavy-tailed* is measured with it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from losslab.errors import FixedPointError
from losslab.linalg.eigenvalues import general_eigenvalues

Map = Callable[[torch.Tensor], torch.Tensor]
Activation = Literal["sigmoid", "tanh"]

__all__ = [
    "JacobianSpectrum",
    "PowerLawFit",
    "SingularDensity",
    "ensemble_spectrum",
    "free_probability_singular_density",
    "gram_eigenvalues",
    "input_output_jacobian",
    "jacobian_moments",
    "jacobian_spectrum",
    "mean_field_variances",
    "power_law_alpha",
]


# --------------------------------------------------------------------------------------
# Jacobian spectra
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JacobianSpectrum:
    """Jacobians of ``f`` at ``P`` points and their spectra.

    Attributes:
        points: (P, N) the points ``x``.
        eigenvalues: (P, N) complex eigenvalues of ``J(x)``, sorted by decreasing modulus.
        singular_values_sq: (P, N) squared singular values of ``J(x)`` (the eigenvalues of
            ``J J^T``), decreasing.
        jacobians: (P, N, N) the Jacobians ``J[p, i, j] = d f_i / d x_j`` at ``points[p]``,
            or ``None`` when not kept.
        net_index: (P,) for an ensemble, the index of the net each point belongs to.
    """

    points: torch.Tensor
    eigenvalues: torch.Tensor
    singular_values_sq: torch.Tensor
    jacobians: torch.Tensor | None = None
    net_index: torch.Tensor | None = None

    @property
    def spectral_radius(self) -> torch.Tensor:
        """(P,) ``max |lambda(J(x))|``: a fixed point is a linearly stable attractor of
        the iteration ``x <- f(x)`` when this is below one."""
        return self.eigenvalues.abs().amax(dim=-1)

    @property
    def operator_norm(self) -> torch.Tensor:
        """(P,) the largest singular value ``||J(x)||_2`` (a local Lipschitz constant)."""
        return self.singular_values_sq[..., 0].sqrt()

    def to_dict(self) -> dict[str, Any]:
        """Summary numbers for the store (not the full spectra)."""
        sq = self.singular_values_sq
        return {
            "n_points": int(self.points.shape[0]),
            "N": int(self.points.shape[-1]),
            "mean_spectral_radius": float(self.spectral_radius.mean()),
            "max_spectral_radius": float(self.spectral_radius.max()),
            "mean_sq_singular_value": float(sq.mean()),
            "mean_sq_singular_value_sq": float((sq**2).mean()),
            "max_sq_singular_value": float(sq.max()),
        }


def _check_points(points: torch.Tensor) -> torch.Tensor:
    if not isinstance(points, torch.Tensor):
        raise FixedPointError(f"points must be a torch.Tensor; got {type(points).__name__}")
    if points.ndim == 1:
        points = points.unsqueeze(0)
    if points.ndim != 2 or points.shape[0] == 0 or points.shape[1] == 0:
        raise FixedPointError(
            f"points must have shape (P, N) with P, N >= 1; got {tuple(points.shape)}"
        )
    if not points.is_floating_point():
        raise FixedPointError(f"points must be floating point; got {points.dtype}")
    if not torch.isfinite(points).all():
        raise FixedPointError("points contain NaN or inf; pass finite points")
    return points


def input_output_jacobian(
    f: Map, points: torch.Tensor, *, chunk_size: int | None = None
) -> torch.Tensor:
    """Jacobians ``J[p] = df/dx (points[p])``, shape (P, N, N), by ``vmap(jacrev(f))``.

    ``f`` must map a single point of shape (N,) to shape (N,) (a :class:`SquareNet` does).
    ``chunk_size`` bounds how many points are differentiated at once (memory).

    Raises:
        FixedPointError: points not (P, N) or not finite, ``f`` changes the shape, NaN out.
    """
    points = _check_points(points)
    n = points.shape[1]
    with torch.no_grad():
        probe = f(points[:1])
    if probe.shape != (1, n):
        raise FixedPointError(
            f"f must map R^N -> R^N batched: input (1, {n}) gave {tuple(probe.shape)}"
        )
    # no_grad: the Jacobians need no graph through the net's own parameters (it grows with
    # depth, points and N^2); torch.func's jacrev ignores the outer no_grad
    with torch.no_grad():
        jac = torch.func.vmap(torch.func.jacrev(f), chunk_size=chunk_size)(points)
    if not torch.isfinite(jac).all():
        raise FixedPointError("the Jacobian has NaN or inf entries; check the map and the points")
    return jac


def jacobian_spectrum(
    net: Map,
    points: torch.Tensor,
    *,
    keep_jacobians: bool = True,
    chunk_size: int | None = None,
) -> JacobianSpectrum:
    """Eigenvalues and squared singular values of ``J(x) = df/dx`` at each point.

    ``J`` is computed exactly by reverse-mode autodiff (:func:`input_output_jacobian`);
    eigenvalues by :func:`losslab.linalg.general_eigenvalues` (general, complex), squared
    singular values by ``torch.linalg.svdvals(J) ** 2``, which equal the eigenvalues of
    ``J J^T`` (and of ``J^T J``) but are computed without squaring the condition number.
    For a square net ``J = D_L W_L ... D_1 W_1`` with ``D_l = diag(sigma'(h_l))``.

    Args:
        net: a map taking (..., N) to (..., N), e.g. :class:`~losslab.nets.square.SquareNet`.
        points: (P, N) or (N,) points; the result follows their dtype and device.
        keep_jacobians: store the (P, N, N) Jacobians in the result.
        chunk_size: points differentiated at once (``None``: all).

    Returns:
        :class:`JacobianSpectrum`.
    """
    points = _check_points(points)
    jac = input_output_jacobian(net, points, chunk_size=chunk_size)
    eig = general_eigenvalues(jac)
    order = eig.abs().argsort(dim=-1, descending=True)
    eig = torch.gather(eig, -1, order)
    sq = torch.linalg.svdvals(jac) ** 2
    return JacobianSpectrum(
        points=points.detach(),
        eigenvalues=eig,
        singular_values_sq=sq,
        jacobians=jac if keep_jacobians else None,
    )


def ensemble_spectrum(
    make_net: Callable[[int], Map],
    n_nets: int,
    n_points: int = 8,
    seed: int = 0,
    *,
    points: torch.Tensor | Callable[[Map], torch.Tensor] | None = None,
    box: tuple[float, float] | None = None,
    keep_jacobians: bool = False,
    chunk_size: int | None = None,
) -> JacobianSpectrum:
    """Jacobian spectra pooled over an ensemble of nets ``make_net(seed + i)``, i < n_nets.

    Points per net: ``n_points`` uniform draws in the output box (``net.output_box`` when
    the net has one, e.g. ``(0, 1)^N`` for a sigmoid :class:`SquareNet`, else ``box``,
    default ``(0, 1)``), from a generator seeded with ``seed + i``; or ``points`` itself
    (a fixed (P, N) tensor used for every net, or a callable ``net -> (P, N)``, e.g. the
    net's fixed points; a net whose callable gives no points, (0, N), adds no rows). Drawn
    points take the net's dtype and device (float64 on the CPU for a net without
    parameters).

    Returns:
        A :class:`JacobianSpectrum` whose rows are all (net, point) pairs, with
        ``net_index`` telling which net each row came from.
    """
    if isinstance(n_nets, bool) or not isinstance(n_nets, int) or n_nets < 1:
        raise FixedPointError(f"n_nets must be an integer >= 1; got {n_nets!r}")
    if points is None and (
        isinstance(n_points, bool) or not isinstance(n_points, int) or n_points < 1
    ):
        raise FixedPointError(f"n_points must be an integer >= 1; got {n_points!r}")
    parts: list[JacobianSpectrum] = []
    index: list[torch.Tensor] = []
    for i in range(n_nets):
        net = make_net(seed + i)
        if points is None:
            lo, hi = getattr(net, "output_box", None) or box or (0.0, 1.0)
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise FixedPointError(f"box must be finite with lo < hi; got {(lo, hi)}")
            n = _net_width(net)
            gen = torch.Generator().manual_seed(seed + i)
            pts = lo + (hi - lo) * torch.rand(n_points, n, generator=gen, dtype=torch.float64)
            pts = pts.to(*_net_device_and_dtype(net))
        elif callable(points):
            pts = points(net)
            if isinstance(pts, torch.Tensor) and pts.ndim == 2 and pts.shape[0] == 0:
                continue  # e.g. a search that found no fixed point of this net
        else:
            pts = points
        spec = jacobian_spectrum(net, pts, keep_jacobians=keep_jacobians, chunk_size=chunk_size)
        parts.append(spec)
        index.append(torch.full((spec.points.shape[0],), i, dtype=torch.long))
    if not parts:
        raise FixedPointError(f"points gave no points for any of the {n_nets} nets")
    return JacobianSpectrum(
        points=torch.cat([p.points for p in parts]),
        eigenvalues=torch.cat([p.eigenvalues for p in parts]),
        singular_values_sq=torch.cat([p.singular_values_sq for p in parts]),
        jacobians=torch.cat([p.jacobians for p in parts if p.jacobians is not None])
        if keep_jacobians
        else None,
        net_index=torch.cat(index),
    )


def _net_width(net: Map) -> int:
    n = getattr(net, "N", None)
    if isinstance(n, int):
        return n
    raise FixedPointError(
        "cannot tell the net's width N: give a net with an integer attribute N "
        "(e.g. SquareNet) or pass points explicitly"
    )


def _net_device_and_dtype(net: Map) -> tuple[torch.device, torch.dtype]:
    if isinstance(net, torch.nn.Module):
        for p in net.parameters():
            if p.is_floating_point():
                return p.device, p.dtype
    return torch.device("cpu"), torch.float64


# --------------------------------------------------------------------------------------
# Free probability: the limiting ESD of J J^T for Gaussian weights
# --------------------------------------------------------------------------------------


def _phi(activation: str, h: np.ndarray) -> np.ndarray:
    if activation == "sigmoid":
        return 0.5 * (1.0 + np.tanh(0.5 * h))
    return np.tanh(h)


def _dphi(activation: str, h: np.ndarray) -> np.ndarray:
    if activation == "sigmoid":
        s = 0.5 * (1.0 + np.tanh(0.5 * h))
        return s * (1.0 - s)
    return 1.0 - np.tanh(h) ** 2


def _check_free_args(
    L: int, activation: str, weight_scale: float, bias_scale: float, input_second_moment: float
) -> None:
    if isinstance(L, bool) or not isinstance(L, int) or L < 1:
        raise FixedPointError(f"L must be an integer >= 1; got {L!r}")
    if activation not in ("sigmoid", "tanh"):
        raise FixedPointError(f"activation must be 'sigmoid' or 'tanh'; got {activation!r}")
    if not (math.isfinite(weight_scale) and weight_scale > 0):
        raise FixedPointError(f"weight_scale must be a finite number > 0; got {weight_scale!r}")
    if not (math.isfinite(bias_scale) and bias_scale >= 0):
        raise FixedPointError(f"bias_scale must be a finite number >= 0; got {bias_scale!r}")
    if not (math.isfinite(input_second_moment) and input_second_moment >= 0):
        raise FixedPointError(
            f"input_second_moment must be a finite number >= 0; got {input_second_moment!r}"
        )


#: ``|h|`` beyond which ``phi'(h) < 1e-17`` (sigmoid: ``phi' ~ e^{-|h|}``; tanh:
#: ``phi' ~ 4 e^{-2|h|}``): there ``phi`` is its limit to double precision.
SATURATION = {"sigmoid": 40.0, "tanh": 20.0}


def _gaussian_rule(q: float, activation: str, n_quad: int) -> tuple[np.ndarray, np.ndarray, float]:
    r"""A rule for ``E[g(h)]``, ``h ~ N(0, q)``, that resolves the activation wherever ``q``:

    .. math::  E[g(h)] \approx \sum_i w_i \frac{g(h_i) + g(-h_i)}{2}
               + t\, \frac{g(+\infty) + g(-\infty)}{2},

    ``h_i`` the ``n_quad`` Gauss-Legendre nodes on ``[0, H]``, ``H = min(10 sqrt(q),
    SATURATION)``, ``w_i`` their weights times ``2 N(h_i; 0, q)`` (rescaled so that
    ``sum w_i + t = 1``) and ``t = P(|h| > H) = erfc(H / sqrt(2 q))``. In ``z = h / sqrt(q)``
    (Gauss-Hermite) a saturated net (``q >> 1``) puts ``phi'`` inside one node spacing and
    the moments come out wrong by orders of magnitude; in ``h`` the integrand is analytic in
    a strip of half-width ``pi / 2`` (tanh) or ``pi`` (sigmoid) around ``[0, H]``, so 100
    nodes reach about ``1e-12``. Returns ``(h, w, t)``; ``q = 0`` is one atom at ``h = 0``.
    """
    if isinstance(n_quad, bool) or not isinstance(n_quad, int) or n_quad < 8:
        raise FixedPointError(f"n_quad must be an integer >= 8; got {n_quad!r}")
    if q == 0.0:
        return np.zeros(1), np.ones(1), 0.0
    root_q = math.sqrt(q)
    half_width = min(10.0 * root_q, SATURATION[activation])
    nodes, weights = np.polynomial.legendre.leggauss(n_quad)
    h = 0.5 * half_width * (nodes + 1.0)
    w = (
        0.5
        * half_width
        * weights
        * 2.0
        * np.exp(-0.5 * (h / root_q) ** 2)
        / (root_q * math.sqrt(2.0 * math.pi))
    )
    tail = math.erfc(half_width / (root_q * math.sqrt(2.0)))
    return h, w * ((1.0 - tail) / w.sum()), tail


def mean_field_variances(
    L: int,
    activation: Activation = "sigmoid",
    weight_scale: float = 1.0,
    bias_scale: float = 1.0,
    *,
    input_second_moment: float = 1.0 / 3.0,
    n_quad: int = 100,
) -> np.ndarray:
    r"""Pre-activation variances ``q_1, ..., q_L`` of a wide Gaussian square net.

    With ``W_ij ~ N(0, sigma_w^2 / N)``, ``b_i ~ N(0, sigma_b^2)`` (``sigma_w =
    weight_scale``, ``sigma_b = bias_scale``, the :class:`SquareNet` Gaussian scaling),
    the pre-activations ``h_l = W_l x_{l-1} + b_l`` of one input are, over the units,
    ``N(0, q_l)`` with

        q_1 = sigma_w^2 E[x^2] + sigma_b^2,
        q_l = sigma_w^2 E_{z ~ N(0,1)}[phi(sqrt(q_{l-1}) z)^2] + sigma_b^2,

    the expectation by the rule of :func:`_gaussian_rule` (``n_quad`` Gauss-Legendre nodes in
    ``h``, exact to about ``1e-12`` however saturated the net). ``E[x^2] =
    input_second_moment``; the default 1/3 is an input uniform in the output box
    (``(0, 1)^N`` for sigmoid, ``(-1, 1)^N`` for tanh), where :func:`ensemble_spectrum`
    draws its points.
    """
    _check_free_args(L, activation, weight_scale, bias_scale, input_second_moment)
    limits = (_phi(activation, np.array([-np.inf, np.inf])) ** 2).mean()
    q = weight_scale**2 * input_second_moment + bias_scale**2
    out = np.empty(L)
    for layer in range(L):
        out[layer] = q
        h, w, tail = _gaussian_rule(q, activation, n_quad)
        square = 0.5 * (_phi(activation, h) ** 2 + _phi(activation, -h) ** 2)
        q = weight_scale**2 * (float(w @ square) + tail * limits) + bias_scale**2
    return out


def _derivative_laws(
    L: int,
    activation: str,
    weight_scale: float,
    bias_scale: float,
    input_second_moment: float,
    n_quad: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The law of ``D_l^2 = phi'(h_l)^2``, ``h_l ~ N(0, q_l)``, as atoms ``d[l, i]`` with
    weights ``w[l, i]`` (the rule of :func:`_gaussian_rule`, ``phi'`` even; the last atom is
    ``0`` with the saturated mass ``t``), and ``q``."""
    q = mean_field_variances(
        L,
        activation,  # type: ignore[arg-type]
        weight_scale,
        bias_scale,
        input_second_moment=input_second_moment,
        n_quad=n_quad,
    )
    atoms, weights = [], []
    for ql in q:
        h, w, tail = _gaussian_rule(float(ql), activation, n_quad)
        atoms.append(np.append(_dphi(activation, h) ** 2, 0.0))
        weights.append(np.append(w, tail))
    width = max(a.size for a in atoms)  # q = 0 gives one atom: pad with empty ones
    d = np.stack([np.pad(a, (0, width - a.size)) for a in atoms])
    return d, np.stack([np.pad(w, (0, width - w.size)) for w in weights]), q


def jacobian_moments(
    L: int,
    activation: Activation = "sigmoid",
    weight_scale: float = 1.0,
    bias_scale: float = 1.0,
    *,
    input_second_moment: float = 1.0 / 3.0,
    n_quad: int = 100,
) -> tuple[float, float]:
    r"""Limiting first two moments ``m_k = lim (1/N) E tr (J J^T)^k`` of a Gaussian net.

    From the S-transform product law (see :func:`free_probability_singular_density`):
    an S-transform expands as ``S(z) = (1/m1) (1 + (1 - m2/m1^2) z + O(z^2))``, and
    ``S_{JJ^T} = prod_l S_{W_l^T W_l} S_{D_l^2}``; with ``mu_k^{(l)} = E[phi'(h_l)^{2k}]``,
    ``h_l ~ N(0, q_l)``, and ``m2 / m1^2 = 2`` for ``W^T W`` (Marchenko-Pastur, ratio 1):

        m1 = prod_l sigma_w^2 mu_1^{(l)},
        m2 / m1^2 = 1 + sum_l mu_2^{(l)} / (mu_1^{(l)})^2.

    (Linear layers, ``phi' = 1``: ``m2 = L + 1``, the Fuss-Catalan value.)

    Returns:
        ``(m1, m2)``.
    """
    d, w, _ = _derivative_laws(L, activation, weight_scale, bias_scale, input_second_moment, n_quad)
    mu1 = (d * w).sum(axis=1)
    mu2 = (d**2 * w).sum(axis=1)
    m1 = float(np.prod(weight_scale**2 * mu1))
    m2 = m1**2 * (1.0 + float(np.sum(mu2 / mu1**2)))
    return m1, m2


@dataclass(frozen=True)
class SingularDensity:
    """Predicted density of the squared singular values of ``J`` (eigenvalues of ``J J^T``).

    Attributes:
        grid: (G,) increasing points ``x > 0`` (eigenvalue units of ``J J^T``).
        density: (G,) ``rho(x)``; integrates to one over ``(0, inf)``.
        m1, m2: exact limiting moments (:func:`jacobian_moments`).
        q: (L,) pre-activation variances (:func:`mean_field_variances`).
        edge: the estimated upper edge of the support (where the CDF of a coarse pass
            reaches ``1 - 1e-4``; NaN when ``grid`` was given).
        residual: (G,) final Newton residual at each grid point.
        converged: (G,) residual below ``1e-8``.
        L: depth.
    """

    grid: np.ndarray
    density: np.ndarray
    m1: float
    m2: float
    q: np.ndarray
    edge: float
    residual: np.ndarray
    converged: np.ndarray
    L: int
    params: dict[str, Any] = field(default_factory=dict)

    def cdf(self) -> np.ndarray:
        """(G,) ``F(x) = 1 - int_x^inf rho``, by the trapezoid rule from the top of the grid
        down (the grid must reach past the upper edge of the support, as the default grid
        does). Counting from the top keeps ``F`` right where the spectrum spreads over many
        decades below the first grid point (saturated nets)."""
        x, rho = self.grid, self.density
        steps = 0.5 * (rho[1:] + rho[:-1]) * np.diff(x)
        upper = np.concatenate([np.cumsum(steps[::-1])[::-1], [0.0]])
        return 1.0 - upper

    @property
    def mass(self) -> float:
        """``int rho`` over the grid plus the mass below its first point under the
        small-``x`` law ``rho ~ c x^(-L/(L+1))`` of a product of ``L`` Wishart factors
        (``(L + 1) x_0 rho(x_0)``): a check of the solve, close to one when the grid
        starts far enough below the bulk."""
        x, rho = self.grid, self.density
        steps = 0.5 * (rho[1:] + rho[:-1]) * np.diff(x)
        return float((self.L + 1) * x[0] * rho[0] + np.sum(steps))

    def moment(self, k: int) -> float:
        """``int x^k rho(x) dx`` by the trapezoid rule on the grid."""
        values = self.grid**k * self.density
        return float(np.sum(0.5 * (values[1:] + values[:-1]) * np.diff(self.grid)))

    def to_dict(self) -> dict[str, Any]:
        return {
            "L": self.L,
            "m1": self.m1,
            "m2": self.m2,
            "edge": self.edge,
            "mass": self.mass,
            "all_converged": bool(self.converged.all()),
            "q": [float(v) for v in self.q],
            **self.params,
        }


def _solve_stieltjes(
    x: np.ndarray,
    eta_final: np.ndarray,
    d: np.ndarray,
    w: np.ndarray,
    *,
    n_continuation: int,
    newton_iter: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Density and residual of the normalised (mean one) law at ``x`` (see the public
    docstring for the equations). ``d`` (L, Q) are normalised atoms with weights ``w``
    (L, Q) (``sum_i w[l, i] d[l, i] = 1``)."""
    L = d.shape[0]
    r2 = float(np.sum(d**2 * w))
    wl = w[:, None, :]  # (L, 1, Q): broadcast over the grid
    scale_top = max(float(x.max()), 1.0)
    eta0 = 10.0 * scale_top
    zeta = x + 1j * eta0
    z = 1.0 / zeta + (1.0 + r2) / zeta**2  # psi(1/zeta) to second order
    ws = np.repeat(z[None, :], L, axis=0)  # chi_l(z) ~= z for mean-one atoms
    residual = np.full(x.shape, np.inf)
    with np.errstate(all="ignore"):
        for k in range(n_continuation + 1):
            eta = eta0 * (eta_final / eta0) ** (k / n_continuation)
            zeta = x + 1j * eta
            iters = newton_iter if k < n_continuation else 4 * newton_iter
            for _ in range(iters):
                prod_w = np.prod(ws, axis=0)
                big_p = zeta * z ** (1 - L) * prod_w
                f0 = big_p - 1.0 - z
                a = zeta * (1 - L) * z ** (-L) * prod_w - 1.0
                u = ws[:, :, None] * d[:, None, :]  # (L, G, Q)
                den = 1.0 - u
                fl = np.sum(wl * u / den, axis=-1) - z  # psi_l(w_l) - z
                dpsi = np.sum(wl * d[:, None, :] / den**2, axis=-1)
                b = big_p[None, :] / ws
                dz = (-f0 + np.sum(b * fl / dpsi, axis=0)) / (a + np.sum(b / dpsi, axis=0))
                dws = (dz[None, :] - fl) / dpsi
                z = z + dz
                ws = ws + dws
                step = np.abs(dz) / np.maximum(np.abs(z), 1e-300)
                if k == n_continuation and np.all(step < 1e-14):
                    break
        prod_w = np.prod(ws, axis=0)
        f0 = zeta * z ** (1 - L) * prod_w - 1.0 - z
        u = ws[:, :, None] * d[:, None, :]
        fl = np.sum(wl * u / (1.0 - u), axis=-1) - z
        residual = np.maximum(np.abs(f0) / np.abs(1.0 + z), np.abs(fl).max(axis=0) / np.abs(z))
        green = (1.0 + z) / zeta
        density = -green.imag / math.pi
    residual = np.where(np.isfinite(residual), residual, np.inf)
    return density, residual


def free_probability_singular_density(
    L: int,
    activation: Activation = "sigmoid",
    weight_scale: float = 1.0,
    bias_scale: float = 1.0,
    *,
    input_second_moment: float = 1.0 / 3.0,
    grid: np.ndarray | None = None,
    n_grid: int = 600,
    n_quad: int = 100,
    eta: float = 1e-4,
    n_continuation: int = 30,
    newton_iter: int = 6,
) -> SingularDensity:
    r"""Limiting density of the eigenvalues of ``J J^T`` for a wide Gaussian square net.

    **Model.** ``f = phi o A_L o ... o phi o A_1``, ``A_l x = W_l x + b_l``, ``W_ij ~
    N(0, sigma_w^2 / N)``, ``b_i ~ N(0, sigma_b^2)`` (``sigma_w = weight_scale``,
    ``sigma_b = bias_scale``; the Gaussian :class:`SquareNet`), at an input with
    ``(1/N)|x|^2 -> input_second_moment`` (default 1/3: uniform in the output box).
    ``J = D_L W_L ... D_1 W_1`` with ``D_l = diag(phi'(h_l))``, ``h_l ~ N(0, q_l)``
    (:func:`mean_field_variances`).

    **Equation** (Pennington, Schoenholz & Ganguli 2017, 2018; asymptotic freeness of the
    ``W_l`` and ``D_l``). For a law ``mu`` let ``psi(w) = int w x / (1 - w x) dmu(x) =
    sum_k m_k w^k``, ``chi`` its inverse (``psi(chi(z)) = z``) and ``S(z) = chi(z) (1 + z)
    / z``. Then

        S_{JJ^T}(z) = prod_{l=1}^L S_{W_l^T W_l}(z) S_{D_l^2}(z),
        S_{W^T W}(z) = 1 / (sigma_w^2 (1 + z))   (Marchenko-Pastur, aspect ratio 1).

    Work with the mean-one law (divide ``J J^T`` by ``m1 = prod_l sigma_w^2 E[D_l^2]`` and
    each ``D_l^2`` by its mean). Writing ``w_l = chi_{D_l^2}(z)`` and ``w = 1/zeta``, the
    relation ``chi_{JJ^T}(z) = w`` becomes the ``L + 1`` equations in ``(z, w_1..w_L)``

        psi_{D_l^2}(w_l) = z   (l = 1..L),
        zeta z^{1-L} prod_l w_l = 1 + z,

    where ``psi_{D_l^2}(w) = E[w d / (1 - w d)]``, ``d = phi'(h_l)^2``, by ``n_quad``
    Gauss-Legendre nodes in ``h`` (:func:`mean_field_variances`: exact to about ``1e-12``
    however saturated the net). Then ``z = psi_{JJ^T}(1/zeta)``, the
    Stieltjes transform is ``G(zeta) = (1 + z) / zeta`` and ``rho(x) = -Im G(x + i eta x)
    / pi``. The system is solved at every grid point at once by Newton's method (the
    arrow-shaped Jacobian is eliminated exactly), continued in ``Im zeta`` from
    ``10 max(x, 1)`` down to ``eta * x`` in ``n_continuation`` geometric steps, which
    keeps the iterate on the physical branch (analytic in the upper half-plane).

    **Grid.** Given ``grid`` (eigenvalue units of ``J J^T``) it is used as is. Otherwise a
    coarse log-spaced pass locates the upper edge (where the CDF passes ``1 - 1e-4``), and
    the result is on the union of ``n_grid / 2`` log-spaced points on ``[1e-12 edge, 1.1
    edge]`` (the density grows like ``x^{-L/(L+1)}`` at zero, and saturated nets spread
    the spectrum over many decades) and ``n_grid / 2`` evenly spaced ones on ``(0, 1.1
    edge]``.

    Defaults: ``n_quad = 100``, ``eta = 1e-4`` (relative smoothing), 30 continuation
    steps of 6 Newton iterations (24 at the end). About a second for ``L <= 5`` on 2
    cores. Saturated nets (large ``weight_scale``) spread the spectrum over tens of decades:
    then much of the mass lies below the grid (``mass < 1``; the CDF, counted from the top,
    stays right) and the moments are carried by rare huge values, so compare ``m1, m2``,
    not the grid's moments, with finite-``N`` samples.

    Returns:
        :class:`SingularDensity` with the grid, the density, exact ``m1, m2``
        (:func:`jacobian_moments`), ``q`` and per-point residuals.
    """
    d, w, q = _derivative_laws(L, activation, weight_scale, bias_scale, input_second_moment, n_quad)
    if not (math.isfinite(eta) and 0 < eta < 1):
        raise FixedPointError(f"eta must be in (0, 1); got {eta!r}")
    for name, value in (("n_continuation", n_continuation), ("newton_iter", newton_iter)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise FixedPointError(f"{name} must be an integer >= 1; got {value!r}")
    mu1 = (d * w).sum(axis=1)
    if not np.all(mu1 > 0):
        raise FixedPointError("E[phi'(h)^2] underflowed to zero: the net is saturated")
    m1, m2 = jacobian_moments(
        L,
        activation,
        weight_scale,
        bias_scale,
        input_second_moment=input_second_moment,
        n_quad=n_quad,
    )
    dn = d / mu1[:, None]
    solve = {"n_continuation": n_continuation, "newton_iter": newton_iter}
    if grid is None:
        if isinstance(n_grid, bool) or not isinstance(n_grid, int) or n_grid < 10:
            raise FixedPointError(f"n_grid must be an integer >= 10; got {n_grid!r}")
        bound = (L + 1) ** (L + 1) / L**L * float(np.prod(dn.max(axis=1)))
        coarse = np.geomspace(bound * 1e-12, bound, 400)
        rho_c, _ = _solve_stieltjes(coarse, eta * coarse, dn, w, **solve)
        rho_c = np.nan_to_num(np.maximum(rho_c, 0.0))
        integrand = rho_c * coarse  # d(log x)
        cdf_c = np.concatenate(
            [[0.0], np.cumsum(0.5 * (integrand[1:] + integrand[:-1]) * np.diff(np.log(coarse)))]
        )
        above = np.nonzero(cdf_c >= (1.0 - 1e-4) * cdf_c[-1])[0]
        edge_n = float(coarse[above[0]]) if above.size else bound
        half = n_grid // 2
        x = np.union1d(
            np.geomspace(edge_n * 1e-12, 1.1 * edge_n, n_grid - half),
            np.linspace(0.0, 1.1 * edge_n, half + 1)[1:],
        )
    else:
        grid = np.asarray(grid, dtype=np.float64)
        if grid.ndim != 1 or grid.size == 0 or not np.all(np.isfinite(grid)) or np.any(grid <= 0):
            raise FixedPointError("grid must be a 1-D array of finite values > 0")
        if np.any(np.diff(grid) <= 0):
            raise FixedPointError("grid must be strictly increasing")
        x = grid / m1
        edge_n = float("nan")
    rho, residual = _solve_stieltjes(x, eta * x, dn, w, **solve)
    rho = np.maximum(np.nan_to_num(rho), 0.0)
    return SingularDensity(
        grid=x * m1,
        density=rho / m1,
        m1=m1,
        m2=m2,
        q=q,
        edge=edge_n * m1,
        residual=residual,
        converged=residual < 1e-8,
        L=L,
        params={
            "activation": activation,
            "weight_scale": weight_scale,
            "bias_scale": bias_scale,
            "input_second_moment": input_second_moment,
        },
    )


# --------------------------------------------------------------------------------------
# Power-law tails
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PowerLawFit:
    """Maximum-likelihood power-law tail ``p(x) ~ x^(-alpha)`` for ``x >= xmin``.

    Attributes:
        alpha: the exponent (density exponent; the survival function decays as
            ``x^(1 - alpha)``).
        xmin: the lower cut-off of the tail.
        ks: Kolmogorov-Smirnov distance between the tail's empirical CDF and the fit.
        n_tail: number of values ``>= xmin``.
        n: number of positive finite values considered.
        alpha_se: standard error ``(alpha - 1) / sqrt(n_tail)``.
    """

    alpha: float
    xmin: float
    ks: float
    n_tail: int
    n: int
    alpha_se: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "alpha": self.alpha,
            "xmin": self.xmin,
            "ks": self.ks,
            "n_tail": self.n_tail,
            "n": self.n,
            "alpha_se": self.alpha_se,
        }


def _fit_tail(tail: np.ndarray, xmin: float) -> tuple[float, float]:
    """MLE alpha and two-sided KS distance for sorted ``tail >= xmin``."""
    n = tail.size
    logs = float(np.sum(np.log(tail / xmin)))
    if logs <= 0:
        return math.inf, 1.0
    alpha = 1.0 + n / logs
    model = 1.0 - (tail / xmin) ** (1.0 - alpha)
    upper = np.arange(1, n + 1) / n
    ks = float(max(np.max(np.abs(upper - model)), np.max(np.abs(upper - 1.0 / n - model))))
    return alpha, ks


def power_law_alpha(
    values: torch.Tensor | np.ndarray,
    xmin: float | None = None,
    *,
    min_tail: int = 10,
    max_candidates: int = 500,
) -> PowerLawFit:
    r"""Power-law exponent of the upper tail of ``values`` (Clauset, Shalizi & Newman 2009).

    For ``x_1..x_n >= xmin`` the continuous maximum-likelihood (Hill) estimator is

        alpha = 1 + n / sum_i log(x_i / xmin),   se(alpha) = (alpha - 1) / sqrt(n).

    With ``xmin=None`` each candidate cut-off (the distinct values that leave at least
    ``min_tail`` points in the tail; at most ``max_candidates`` of them, evenly spaced in
    rank) is fitted and the one minimising the KS distance ``max_x |S(x) - P(x)|`` between
    the tail's empirical CDF ``S`` and ``P(x) = 1 - (x / xmin)^(1 - alpha)`` is kept.

    Use: P5's claim that trained weights become heavy-tailed is measured, as
    WeightWatcher does, on the ESD tail: the eigenvalues of ``W^T W``
    (:func:`gram_eigenvalues`); the entries ``|W_ij|`` can be fitted the same way.
    Small ``alpha`` (2 to 4) means a heavy tail, but a small matrix's Gaussian ESD fits
    one too: its Marchenko-Pastur edge looks like a short tail. At ``N = 64`` Gaussian
    ``W`` give ESD alphas of about 2 to 6 (tested; a review measured 2.3 to 5.8, median
    3.3, and 6.6 at ``N = 256``) and Student-t (3 degrees of freedom) ones about 3, so
    compare a trained net with untrained nets of its size (as the experiment does), not
    with a fixed band. Values that are not positive (e.g. zero eigenvalues) are dropped.

    Raises:
        FixedPointError: NaN/inf values, fewer than ``min_tail`` positive values, a
            ``xmin`` with fewer than two values above it or all of them equal to it,
            ``max_candidates < 1``.
    """
    x = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    x = np.asarray(x, dtype=np.float64).ravel()
    if not np.all(np.isfinite(x)):
        raise FixedPointError("values contain NaN or inf; pass finite values")
    if isinstance(min_tail, bool) or not isinstance(min_tail, int) or min_tail < 2:
        raise FixedPointError(f"min_tail must be an integer >= 2; got {min_tail!r}")
    if (
        isinstance(max_candidates, bool)
        or not isinstance(max_candidates, int)
        or max_candidates < 1
    ):
        raise FixedPointError(f"max_candidates must be an integer >= 1; got {max_candidates!r}")
    x = np.sort(x[x > 0])
    n = x.size
    if xmin is not None:
        if not (math.isfinite(xmin) and xmin > 0):
            raise FixedPointError(f"xmin must be a finite number > 0; got {xmin!r}")
        tail = x[x >= xmin]
        if tail.size < 2:
            raise FixedPointError(f"fewer than two values >= xmin={xmin}; lower xmin")
        alpha, ks = _fit_tail(tail, float(xmin))
        if not math.isfinite(alpha):
            raise FixedPointError(f"every value >= xmin={xmin} equals it: no tail to fit")
        return PowerLawFit(
            alpha, float(xmin), ks, int(tail.size), n, (alpha - 1) / math.sqrt(tail.size)
        )
    if n < min_tail:
        raise FixedPointError(f"need at least min_tail={min_tail} positive values; got {n}")
    candidates = np.unique(x[: n - min_tail + 1])
    if candidates.size > max_candidates:
        pick = np.linspace(0, candidates.size - 1, max_candidates).round().astype(int)
        candidates = candidates[np.unique(pick)]
    best: tuple[float, float, float, int] | None = None
    for c in candidates:
        start = int(np.searchsorted(x, c, side="left"))
        tail = x[start:]
        if tail.size < min_tail:
            continue
        alpha, ks = _fit_tail(tail, float(c))
        if math.isfinite(alpha) and (best is None or ks < best[1]):
            best = (alpha, ks, float(c), int(tail.size))
    if best is None:
        raise FixedPointError("no candidate xmin gave a finite fit (all tail values equal?)")
    alpha, ks, xm, nt = best
    return PowerLawFit(alpha, xm, ks, nt, n, (alpha - 1) / math.sqrt(nt))


def gram_eigenvalues(weight: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of ``W^T W`` (the squared singular values of ``W``), decreasing: the
    ESD whose tail WeightWatcher and :func:`power_law_alpha` fit."""
    if weight.ndim != 2:
        raise FixedPointError(f"weight must be a matrix; got shape {tuple(weight.shape)}")
    if not torch.isfinite(weight).all():
        raise FixedPointError("weight contains NaN or inf")
    return torch.linalg.svdvals(weight.detach()) ** 2
