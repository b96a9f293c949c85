r"""From convex solutions to two-layer ReLU networks, and back to the non-convex objective.

A ReLU-form block ``z`` in its cone (``(2D - I) X z >= 0``) with sign ``s`` is the neuron
``w = z / sqrt(||z||)``, ``alpha = s sqrt(||z||)``: then ``(X w)_+ alpha = s D X z`` and
``lam/2 (||w||^2 + alpha^2) = lam ||z||``, so the network's non-convex objective

    ``1/(2n) ||sum_j (X w_j)_+ alpha_j - y||^2 + lam/2 sum_j (||w_j||^2 + alpha_j^2)``

equals the convex objective (P3). A gated block ``u`` is first split as ``u = v - w``
with ``v, w`` in the cone ``A z >= 0``, ``A = (2D - I) X``. The split reproduces the gated
fit exactly, and its objective is the ReLU form's at ``(v, w)``, at least the gated one;
the split that costs least, ``min ||v|| + ||w||``, is a second-order cone program per
block. We solve its l1 version, a linear program in ``(w, p, q)``:

    ``min 1^T p + 1^T q``  s.t.  ``|u + w| <= p``, ``|w| <= q``, ``A w >= max(0, -A u)``,

whose solution is within ``sqrt(d)`` of the best split (``||z||_2 <= ||z||_1 <=
sqrt(d) ||z||_2``) and, measured against Clarabel on the blocks of 12 small programs
(``n = 30``, ``d = 3`` or 4), within 4.2% (``tests/test_convex_solvers.py`` asserts 5%).
(An arbitrary interior point ``g`` and the least ``t`` with ``u + t g`` in the cone gave
splits 2 to 3 times costlier on a 40-point problem.) Rows the LP leaves infeasible by its
tolerance are repaired along an interior point of the cone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linprog
from torch import nn

from losslab.errors import ConvexProblemError


@dataclass(frozen=True)
class ReLUNetwork:
    """Neurons of a two-layer ReLU network: ``weights`` (m, d) (the bias last when the
    data carry a column of ones), ``alphas`` (m,)."""

    weights: torch.Tensor
    alphas: torch.Tensor

    @property
    def n_neurons(self) -> int:
        return int(self.weights.shape[0])

    def predict(self, X: torch.Tensor) -> torch.Tensor:
        """``sum_j (X w_j)_+ alpha_j`` for features ``X`` (n, d) (bias column included)."""
        return torch.relu(X @ self.weights.T) @ self.alphas

    def objective(self, X: torch.Tensor, y: torch.Tensor, lam: float) -> float:
        """The non-convex objective (module docstring)."""
        residual = self.predict(X) - y
        penalty = self.weights.square().sum() + self.alphas.square().sum()
        return float(residual.square().sum() / (2 * X.shape[0]) + lam / 2 * penalty)

    def to_torch(self, bias: bool) -> nn.Sequential:
        """``Sequential(Linear(d, m, bias), ReLU(), Linear(m, 1, bias=False))`` in float64."""
        d = self.weights.shape[1] - (1 if bias else 0)
        m = max(self.n_neurons, 1)
        first, second = (
            nn.Linear(d, m, bias=bias, dtype=torch.float64),
            nn.Linear(m, 1, bias=False, dtype=torch.float64),
        )
        with torch.no_grad():
            first.weight.zero_()
            second.weight.zero_()
            if self.n_neurons:
                first.weight.copy_(self.weights[:, :d])
                if bias:
                    first.bias.copy_(self.weights[:, d])
                second.weight.copy_(self.alphas[None, :])
            elif bias:
                first.bias.zero_()
        return nn.Sequential(first, nn.ReLU(), second)


def neurons_from_blocks(blocks: torch.Tensor, signs: torch.Tensor) -> ReLUNetwork:
    """One neuron per non-zero block (rows of ``blocks``) with output sign ``signs``."""
    norms = blocks.norm(dim=1)
    active = norms > 0
    roots = norms[active].sqrt()
    return ReLUNetwork(blocks[active] / roots[:, None], signs[active].to(blocks) * roots)


def interior_point(X: torch.Tensor, pattern: torch.Tensor) -> torch.Tensor:
    """A ``g`` with ``(2D - I) X g >= 1`` on every non-zero row: inside the pattern's cone.

    Raises :class:`ConvexProblemError` when the cone has no interior (a pattern that no
    open region of the arrangement realises).
    """
    signs = (pattern.to(X.dtype) * 2 - 1).cpu().numpy()
    X_np = X.detach().cpu().numpy().astype(np.float64)
    rows = np.linalg.norm(X_np, axis=1) > 0
    result = linprog(
        c=np.zeros(X_np.shape[1]),
        A_ub=-(signs[rows, None] * X_np[rows]),
        b_ub=-np.ones(int(rows.sum())),
        bounds=[(None, None)] * X_np.shape[1],
        method="highs",
    )
    if result.status != 0:
        raise ConvexProblemError("this activation pattern's cone has no interior point")
    return torch.as_tensor(result.x, dtype=X.dtype, device=X.device)


def split_gated_block(
    X: torch.Tensor, pattern: torch.Tensor, u: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(v, w)`` in the pattern's cone with ``v - w = u`` and small ``||v|| + ||w||``
    (the l1 linear program of the module docstring)."""
    signs = pattern.to(X.dtype) * 2 - 1
    along_u = signs * (X @ u)
    if bool((along_u >= 0).all()):  # u is in the cone already: one neuron
        return u, torch.zeros_like(u)
    if bool((along_u <= 0).all()):  # -u is: one neuron of negative sign
        return torch.zeros_like(u), -u
    A = (signs[:, None] * X).detach().cpu().numpy().astype(np.float64)
    A = A[np.linalg.norm(A, axis=1) > 0]
    u_np = u.detach().cpu().numpy().astype(np.float64)
    d = u_np.size
    identity, zeros = np.eye(d), np.zeros((d, d))
    no_slack = np.zeros((A.shape[0], d))
    result = linprog(
        c=np.concatenate([np.zeros(d), np.ones(2 * d)]),
        A_ub=np.block(
            [[identity, -identity, zeros], [-identity, -identity, zeros],
             [identity, zeros, -identity], [-identity, zeros, -identity],
             [-A, no_slack, no_slack]]
        ),
        b_ub=np.concatenate([-u_np, u_np, np.zeros(2 * d), -np.maximum(0.0, -(A @ u_np))]),
        bounds=[(None, None)] * d + [(0, None)] * (2 * d),
        method="highs",
    )  # fmt: skip
    w = torch.as_tensor(result.x[:d] if result.status == 0 else np.zeros(d)).to(u)
    v = u + w
    g: torch.Tensor | None = None
    eps = torch.finfo(X.dtype).eps
    for attempt in range(8):
        # The repair: move v and w together along an interior direction g of the cone
        # (v - w is kept) by twice the largest violation, and by at least a few rounding
        # units of v and w, so that the step is not itself lost to rounding (a violation
        # of 1e-17 on entries of size 3 is); four times further at each retry.
        along_v, along_w = signs * (X @ v), signs * (X @ w)
        if not bool((along_v < 0).any() or (along_w < 0).any()):
            return v, w
        g = interior_point(X, pattern) if g is None else g
        along_g = signs * (X @ g)
        rows = along_g > 0
        violation = float((torch.maximum(-along_v, -along_w)[rows] / along_g[rows]).max())
        size = float(torch.maximum(v.abs().max(), w.abs().max()))
        floor = 16 * eps * size / float(g.abs().max())
        t = max(2 * violation, floor) * 4**attempt
        v, w = v + t * g, w + t * g
    raise ConvexProblemError("cannot split a gated block into two members of its cone")
