r"""Accelerated proximal gradient (FISTA) for ``min_U h(L(U)) + lam sum_b ||u_b||``.

The smooth part ``h`` is a function of a linear image ``L(U)`` of the blocks (the fit
vector ``A U`` of the gated form), so one iteration costs one image (per backtracking
step) and one gradient: the momentum point's image is the same combination of the
iterates' images as the point is of the iterates (linearity). Step sizes by
backtracking (Beck & Teboulle 2009), momentum restarted whenever it points uphill
(O'Donoghue & Candes 2015). The proximal step of ``lam ||u||`` is the group
soft-threshold ``u * max(0, 1 - step lam / ||u||)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

#: ``image -> (h(image), dh/dU)`` and ``image -> h(image)``; ``U -> L(U)``.
SmoothFunction = Callable[[torch.Tensor], tuple[float, torch.Tensor]]
SmoothValue = Callable[[torch.Tensor], float]
LinearImage = Callable[[torch.Tensor], torch.Tensor]
#: ``(U, Z, iteration, gradient_mapping_norm) -> stop?``, asked after every step.
StopRule = Callable[[torch.Tensor, torch.Tensor, int, float], bool]


@dataclass(frozen=True)
class FistaResult:
    U: torch.Tensor
    Z: torch.Tensor
    iterations: int
    lipschitz: float
    stopped: bool


def group_soft_threshold(U: torch.Tensor, threshold: float) -> torch.Tensor:
    """Rows ``u`` to ``u * max(0, 1 - threshold / ||u||)``: the prox of ``threshold ||.||``."""
    norms = U.norm(dim=1, keepdim=True)
    return U * (1 - threshold / norms.clamp(min=1e-300)).clamp(min=0)


def fista(
    image: LinearImage,
    smooth: SmoothFunction,
    smooth_value: SmoothValue,
    lam: float,
    U0: torch.Tensor,
    *,
    lipschitz: float,
    max_iter: int,
    stop: StopRule,
) -> FistaResult:
    """Minimise ``h(image(U)) + lam sum_b ||u_b||`` from ``U0`` until ``stop`` or ``max_iter``."""
    U, Z = U0, image(U0)
    U_y, Z_y = U, Z
    t, L = 1.0, lipschitz
    # Rounding slack of the sufficient-decrease test: values carry relative errors of a
    # few eps of the dtype (about 1e-7 in float32), and the test must not fail on them.
    slack = max(1e-12, 16 * torch.finfo(U0.dtype).eps)
    value_y, gradient = smooth(Z_y)
    for iteration in range(1, max_iter + 1):
        L *= 0.9  # let the step grow back; backtracking shrinks it when needed
        while True:
            U_new = group_soft_threshold(U_y - gradient / L, lam / L)
            Z_new = image(U_new)
            step = U_new - U_y
            bound = value_y + float((gradient * step).sum()) + 0.5 * L * float(step.square().sum())
            if smooth_value(Z_new) <= bound + slack * abs(value_y) or 1e6 * lipschitz < L:
                break  # (an upper bound on L: only rounding makes the test fail there)
            L *= 2.0
        gradient_mapping = L * float(step.norm())
        if float(((U_y - U_new) * (U_new - U)).sum()) > 0:
            t = 1.0  # restart: the momentum pointed uphill
        t_next = (1 + math.sqrt(1 + 4 * t * t)) / 2
        beta = (t - 1) / t_next
        U_y, Z_y = U_new + beta * (U_new - U), Z_new + beta * (Z_new - Z)
        U, Z, t = U_new, Z_new, t_next
        if stop(U, Z, iteration, gradient_mapping):
            return FistaResult(U, Z, iteration, L, True)
        value_y, gradient = smooth(Z_y)
    return FistaResult(U, Z, max_iter, L, False)
