r"""The linear map of the convex ReLU programs, matrix-free.

Blocks ``U`` (B, d) act through ``Z = X U^T`` (n, B), the pre-activations of every
block at every sample. Block ``b`` has a pattern (a column of ``masks``) and a sign
``s_b`` (+1 for the ``v`` blocks of the ReLU form and for gated blocks, -1 for ``w``):

- fit: ``A(U) = sum_b s_b D_b X u_b = (Z * masks * s).sum(1) = rowdot((masks * s) U, X)``,
- cone constraints of the ReLU form: ``(2 D_b - I) X u_b = Z[:, b] * cone_signs[:, b] >= 0``,
- adjoint: ``A^T r = (masks * s)^T (r * X)``.

Each costs O(n d B); the (n, d, B) tensor of all ``D_b X`` is never formed.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch


@dataclass(frozen=True)
class PatternOperator:
    """``X`` (n, d), boolean ``patterns`` (n, P); ``signed=True`` doubles the blocks into
    ``[v_1..v_P, w_1..w_P]`` with signs ``+1, -1`` (the ReLU form)."""

    X: torch.Tensor
    patterns: torch.Tensor
    signed: bool = False

    @property
    def n_blocks(self) -> int:
        return self.patterns.shape[1] * (2 if self.signed else 1)

    @cached_property
    def weights(self) -> torch.Tensor:
        """``masks * s`` (n, B): the factor of each pre-activation in the fit."""
        masks = self.patterns.to(self.X.dtype)
        return torch.cat([masks, -masks], dim=1) if self.signed else masks

    @cached_property
    def cone_signs(self) -> torch.Tensor:
        """``2 D_b - I`` (n, B): the rows' signs in the cone constraints."""
        signs = self.patterns.to(self.X.dtype) * 2 - 1
        return torch.cat([signs, signs], dim=1) if self.signed else signs

    def preactivations(self, U: torch.Tensor) -> torch.Tensor:
        """``Z = X U^T`` (n, B)."""
        return self.X @ U.T

    @cached_property
    def weights_transposed(self) -> torch.Tensor:
        """``weights^T`` (B, n), contiguous: :meth:`fit` reads it in its stored order."""
        return self.weights.T.contiguous()

    def fit(self, U: torch.Tensor) -> torch.Tensor:
        """``A(U) = rowdot(weights @ U, X)`` (n,): one (d, B) x (B, n) product (about twice as
        fast as the (n, B) x (B, d) one on a CPU), no (n, B) intermediate."""
        return ((U.T @ self.weights_transposed).T * self.X).sum(dim=1)

    def adjoint_of_weights(self, G: torch.Tensor) -> torch.Tensor:
        """``G^T X`` (B, d) for a matrix ``G`` (n, B) of per-block sample weights."""
        return G.T @ self.X

    def adjoint(self, r: torch.Tensor) -> torch.Tensor:
        """``A^T r = weights^T (r * X)`` (B, d), computed as ``((r * X)^T weights)^T``: the
        (d, n) x (n, B) product reads ``weights`` in its stored order (no strided copy)."""
        return ((r[:, None] * self.X).T @ self.weights).T

    @cached_property
    def sample_gram(self) -> torch.Tensor:
        """``X X^T`` (n, n), for the (n, n) Newton systems (built once, when first asked)."""
        return self.X @ self.X.T

    @cached_property
    def sample_gram_float32(self) -> torch.Tensor:
        """``X X^T`` in float32, for the single-precision preconditioners."""
        return self.sample_gram.float()

    @cached_property
    def fit_gram(self) -> torch.Tensor:
        """``A A^T = sum_b A_b A_b^T = (X X^T) * (weights weights^T)`` (n, n): the matrix of
        the ridge solves of :func:`losslab.convex.admm.admm` (built once, when first asked;
        one (n, B) x (B, n) product of the 0/+-1 weights, in float32: its entries are counts
        below 2^24, exact in float32, and the product is about twice as fast)."""
        weights = self.weights.float()
        return self.sample_gram * (weights @ weights.T).to(self.X.dtype)

    def weighted_gram(
        self,
        alpha: torch.Tensor,
        beta: torch.Tensor,
        directions: torch.Tensor,
        dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """``sum_b A_b (alpha_b I + beta_b d_b d_b^T) A_b^T`` (n, n) over the blocks ``b`` with
        ``alpha_b`` or ``beta_b`` non-zero, ``A_b = s_b D_b X``, unit ``directions`` (B, d):
        ``(X X^T) * (weights diag(alpha) weights^T) + Y diag(beta) Y^T`` with
        ``Y[:, b] = weights[:, b] * (X d_b)``. Costs two (n, B') x (B', n) products, in
        ``dtype`` (float32 for a preconditioner: about 3 times faster) or ``X``'s dtype."""
        dtype = self.X.dtype if dtype is None else dtype
        used = torch.nonzero((alpha != 0) | (beta != 0)).flatten()
        weights = self.weights[:, used].to(dtype)
        images = weights * (self.X @ directions[used].T).to(dtype)
        masks = (weights * alpha[used].to(dtype)) @ weights.T
        gram = self.sample_gram_float32 if dtype == torch.float32 else self.sample_gram.to(dtype)
        return gram * masks + (images * beta[used].to(dtype)) @ images.T

    def weighted_normal(
        self, r: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor, directions: torch.Tensor
    ) -> torch.Tensor:
        """``sum_b A_b (alpha_b I + beta_b d_b d_b^T) A_b^T r`` (n,), matrix-free: the product
        of :meth:`weighted_gram`'s matrix with ``r`` for one adjoint and one fit."""
        image = self.adjoint(r)
        along = (image * directions).sum(dim=1, keepdim=True)
        return self.fit(alpha[:, None] * image + beta[:, None] * along * directions)

    def squared_norm(self, n_iter: int = 30, seed: int = 0) -> float:
        """An estimate (power iteration, from above after a 5% margin) of ``||A||^2``."""
        generator = torch.Generator().manual_seed(seed)
        U = torch.randn(self.n_blocks, self.X.shape[1], generator=generator, dtype=self.X.dtype)
        U = U.to(self.X.device)
        value = 1.0
        for _ in range(n_iter):
            U = self.adjoint(self.fit(U / U.norm()))
            value = float(U.norm())
            if value == 0:
                return 1.0
        return 1.05 * value
