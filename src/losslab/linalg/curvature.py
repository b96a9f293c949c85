r"""Matrix-free curvature of any model's loss: the Hessian and the generalised Gauss-Newton.

For ``L(theta)`` the mean loss of a model on data (:class:`~losslab.linalg.model_loss.ModelLoss`)
at the model's current parameters ``theta``:

- :class:`HessianOperator`: ``v -> H v`` with ``H = nabla^2 L(theta)``, never forming ``H``
  (``dim x dim``): the gradient's graph is recorded once and each product is a backward
  pass through it (``v^T H``, reverse-over-reverse; about one gradient's cost), or, for
  data of many batches, forward-over-reverse differentiation
  ``H v = d/dt nabla L(theta + t v) |_{t=0}`` (:mod:`losslab.linalg.hvp`).
- :class:`GaussNewtonOperator`: ``v -> G v`` with the generalised Gauss-Newton matrix
  ``G = sum_b w_b J_b^T (nabla^2_f l_b) J_b`` (Schraudolph 2002), ``J_b`` the Jacobian of the
  batch's outputs in ``theta`` and ``nabla^2_f l_b`` the Hessian of the loss in the outputs
  (positive semidefinite for convex losses such as MSE and cross-entropy, and then so is
  ``G``). Computed as a JVP (``J v``), an output-space Hessian-vector product and a VJP.
  ``H = G + sum_b w_b sum_k (d l_b / d f_k) nabla^2 f_k``: the two agree where the model is
  linear in ``theta`` or the residuals vanish.

Both share the spectral tools of :mod:`losslab.linalg`: :meth:`~CurvatureOperator.eigenpairs`
(Lanczos with full reorthogonalisation and thick restarts),
:meth:`~CurvatureOperator.trace` (Hutch++), :meth:`~CurvatureOperator.density` (stochastic
Lanczos quadrature) and :meth:`~CurvatureOperator.dense` for small models. Products follow
the dtype and device of the model's parameters; run the model in float64 for analysis.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import Literal

import torch
from torch import nn
from torch.func import functional_call, grad, jvp, vjp
from torch.utils._pytree import TreeSpec, tree_flatten, tree_leaves, tree_unflatten

from losslab.errors import CurvatureError
from losslab.linalg.density import SpectralDensity, spectral_density
from losslab.linalg.hvp import (
    CachedHessianVectorProduct,
    HessianVectorProduct,
    dense_from_products,
)
from losslab.linalg.lanczos import (
    ASYMMETRY_TOL,
    Eigenpairs,
    Which,
    lanczos_eigenpairs,
    make_generator,
    normalize_signs,
)
from losslab.linalg.model_loss import (
    Data,
    LossFn,
    ModelLoss,
    evaluate_loss,
    preserved_buffers,
)
from losslab.linalg.trace import (
    TraceEstimate,
    hutch_plus_plus_trace,
    hutchinson_trace,
    rademacher,
)

#: Up to this many batches, :class:`HessianOperator` keeps each batch's gradient graph and
#: takes every product as one backward pass through it (2.1x faster on the benchmark's 26k
#: parameter MLP and 1,797 samples, ``BENCHMARKS.md``; 1.2x on a 320k one with 40,000,
#: measured once); with more, the graphs would hold the activations of every batch at once,
#: and products are recomputed. The graphs' memory grows with the samples (46 KB per sample
#: for the 320k MLP, measured once): choose with
#: ``HessianOperator(..., cache_graphs=False)`` for large data.
MAX_CACHED_BATCHES = 8

#: ``dense()`` refuses models with more parameters than this (a ``dim x dim`` matrix and
#: ``dim`` products); pass ``max_dim`` to override.
MAX_DENSE_DIM = 10_000


class CurvatureOperator:
    """A symmetric ``dim x dim`` curvature matrix of a model's loss, seen through products.

    Subclasses define :meth:`matvec`. ``theta`` is the point (flat, detached), ``dim``
    its length, ``loss`` the :class:`ModelLoss` it differentiates.
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, data: Data) -> None:
        self.loss = ModelLoss(model, loss_fn, data)
        self.loss.check_fixed_function()
        self.theta = self.loss.theta0
        self.dim = self.loss.dim
        with torch.no_grad(), preserved_buffers(model):  # (a hook may still write them)
            value = self.loss(self.theta)
        if not bool(torch.isfinite(value)):
            raise CurvatureError(
                f"the loss is {float(value)} at the model's parameters: curvature of a "
                "non-finite loss is meaningless; check the data and the model"
            )

    def matvec(self, vector: torch.Tensor) -> torch.Tensor:
        """The product of the matrix with a flat vector of length ``dim``."""
        raise NotImplementedError

    def _options(self) -> dict[str, object]:
        """The keyword options a copy of this operator is built with."""
        return {}

    def _check_vector(self, vector: torch.Tensor) -> torch.Tensor:
        self.loss.check_modes()  # cached products would still answer for the old mode
        if vector.shape != (self.dim,):
            raise CurvatureError(
                f"expected a vector of shape ({self.dim},), got {tuple(vector.shape)}"
            )
        return vector.to(dtype=self.theta.dtype, device=self.theta.device)

    def check_symmetric(self, seed: int = 0) -> None:
        """Raise :class:`CurvatureError` when the products are visibly not symmetric (a
        torch kernel with a wrong double-backward rule, e.g. ``weight_norm`` in torch 2.13).

        For random sign vectors ``u, v``, ``u^T A v - v^T A u = 2 u^T S v`` with ``S`` the
        skew part of ``A``: about ``2 ||S||_F`` in size, against ``||A v|| ~ ||A||_F``, and
        rounding for a symmetric ``A``. Two pairs (4 products) must differ by less than
        ``ASYMMETRY_TOL ||A v||``. Lanczos (:meth:`eigenpairs`) and :meth:`dense` check
        their own products as they go; :meth:`trace` and :meth:`density` call this first.
        """
        generator = make_generator(seed)
        for _ in range(2):
            u, v = (rademacher(self.dim, generator, self.theta.dtype, self.theta.device)
                    for _ in range(2))  # fmt: skip
            au, av = self.matvec(u), self.matvec(v)
            asymmetry = float((u @ av - v @ au).abs())
            scale = float(torch.maximum(au.norm(), av.norm()))
            if asymmetry > ASYMMETRY_TOL * scale:  # False with NaN: the estimates report it
                raise CurvatureError(
                    f"the products are not symmetric: u^T A v and v^T A u differ by "
                    f"{asymmetry:.3g} for ||A v|| ~ ||A||_F = {scale:.3g}. Some operation's "
                    "second derivative is wrong in this torch build (check the Hessian "
                    "against finite differences)"
                )

    def dense(self, *, max_dim: int = MAX_DENSE_DIM, chunk_size: int = 256) -> torch.Tensor:
        """The full ``dim x dim`` matrix, column by column (``dim`` products, vectorised in
        chunks), symmetrised as ``(A + A^T) / 2``. For small models only."""
        if self.dim > max_dim:
            raise CurvatureError(
                f"the model has {self.dim} parameters: a dense {self.dim} x {self.dim} matrix "
                f"is over max_dim={max_dim}; use eigenpairs(), trace() or density(), or "
                "raise max_dim"
            )
        matrix = dense_from_products(self.matvec, self.dim, dtype=self.theta.dtype,
                                     device=self.theta.device, chunk_size=chunk_size)  # fmt: skip
        if not bool(torch.isfinite(matrix).all()):
            raise CurvatureError(
                "the matrix has NaN or inf entries although the loss is finite: the loss is "
                "not twice differentiable at these parameters (e.g. sqrt or abs at 0)"
            )
        return matrix

    def eigenpairs(
        self,
        k: int = 1,
        *,
        which: Which = "largest",
        tol: float = 1e-6,
        max_matvecs: int | None = None,
        seed: int = 0,
        mixed_precision: bool = False,
    ) -> Eigenpairs:
        """``k`` extreme eigenpairs by Lanczos (:func:`~losslab.linalg.lanczos_eigenpairs`):
        each pair has relative residual ``||A v - lambda v|| <= tol max|lambda|``, or the
        result says ``converged=False`` and why.

        ``mixed_precision`` (float64 operators): Lanczos runs on a float32 copy of the
        model, where a product costs about half, and its Ritz vectors ``V`` are refined in
        float64 by one Rayleigh-Ritz step on their span: ``k`` float64 products ``W = A V``
        give ``V^T A V``, its eigenpairs ``(theta, y)``, and the float64 residuals
        ``||W y - theta V y||``. The float64 pairs are returned when every residual meets
        ``tol``; otherwise the float64 Lanczos runs as usual (its products counted too), and
        alone when the loss has no float32 copy (a function holding float64 tensors)."""
        if mixed_precision and self.theta.dtype == torch.float64:
            refined = self._mixed_precision_eigenpairs(k, which, tol, max_matvecs, seed)
            if refined is None:  # no float32 twin: the float64 Lanczos alone
                return self.eigenpairs(k, which=which, tol=tol, max_matvecs=max_matvecs,
                                       seed=seed)  # fmt: skip
            if refined.converged:
                return refined
            full = self.eigenpairs(k, which=which, tol=tol, max_matvecs=max_matvecs, seed=seed)
            return replace(full, matvecs=full.matvecs + refined.matvecs,
                           seconds=full.seconds + refined.seconds)  # fmt: skip
        return lanczos_eigenpairs(
            self.matvec,
            self.dim,
            k,
            which=which,
            tol=tol,
            max_matvecs=max_matvecs,
            seed=seed,
            dtype=self.theta.dtype,
            device=self.theta.device,
        )

    def _mixed_precision_eigenpairs(
        self, k: int, which: Which, tol: float, max_matvecs: int | None, seed: int
    ) -> Eigenpairs | None:
        """The float32 Lanczos refined in float64; ``None`` when the loss has no float32
        twin (a plain function holding float64 tensors): a loss module is copied and cast
        (class weights), anything else is used as it is."""
        start = time.perf_counter()
        single = copy.deepcopy(self.loss.model).to(torch.float32)
        loss_fn = self.loss.loss_fn
        if isinstance(loss_fn, nn.Module):
            loss_fn = copy.deepcopy(loss_fn).to(torch.float32)

        def single_precision(t: torch.Tensor) -> torch.Tensor:
            return t.to(torch.float32) if t.is_floating_point() else t

        batches = [(single_precision(x), single_precision(y)) for x, y in self.loss.batches]
        try:
            twin = type(self)(single, loss_fn, batches, **self._options())
            rough = lanczos_eigenpairs(twin.matvec, self.dim, k, which=which, tol=tol,
                                       max_matvecs=max_matvecs, seed=seed, dtype=torch.float32,
                                       device=self.theta.device)  # fmt: skip
        except CurvatureError:  # the float32 copy is refused (e.g. its loss overflows)
            return None
        except RuntimeError as error:  # float64 tensors inside loss_fn: a dtype mismatch
            if not any(word in str(error) for word in ("dtype", "Double", "Float", "scalar type")):
                raise
            return None
        basis = torch.linalg.qr(rough.vectors.to(self.theta.dtype)).Q
        products = torch.stack([self.matvec(basis[:, i]) for i in range(k)], dim=1)
        projected = basis.T @ products
        values, rotation = torch.linalg.eigh((projected + projected.T) / 2)  # ascending
        n_large = (k + 1) // 2 if which == "both" else k if which == "largest" else 0
        order = torch.cat(
            [torch.arange(k - 1, k - 1 - n_large, -1), torch.arange(0, k - n_large)]
        ).to(values.device)
        values, rotation = values[order], rotation[:, order]
        vectors = basis @ rotation
        residuals = torch.linalg.vector_norm(products @ rotation - vectors * values, dim=0)
        vectors = normalize_signs(vectors)
        scale = float(values.abs().max())
        converged = rough.converged and bool((residuals <= tol * scale).all())
        return Eigenpairs(
            values=values,
            vectors=vectors,
            residuals=residuals,
            converged=converged,
            reason="converged" if converged else f"float64 refinement: {rough.reason}",
            matvecs=rough.matvecs + k,
            iterations=rough.iterations,
            seconds=time.perf_counter() - start,
        )

    def trace(
        self,
        n_matvecs: int = 100,
        *,
        method: Literal["hutch++", "hutchinson"] = "hutch++",
        seed: int = 0,
    ) -> TraceEstimate:
        """``tr A`` from ``n_matvecs`` products with random sign vectors: Hutch++ (Meyer
        et al. 2021) by default, plain Hutchinson on request; exact when
        ``n_matvecs >= dim``. Four more products check symmetry (:meth:`check_symmetric`)."""
        estimators = {"hutch++": hutch_plus_plus_trace, "hutchinson": hutchinson_trace}
        if method not in estimators:
            raise CurvatureError(f"unknown trace method {method!r}: 'hutch++' or 'hutchinson'")
        estimate = estimators[method]
        self.check_symmetric(seed)
        return estimate(
            self.matvec,
            self.dim,
            n_matvecs,
            seed=seed,
            dtype=self.theta.dtype,
            device=self.theta.device,
        )

    def density(
        self,
        *,
        n_steps: int = 100,
        n_vectors: int = 1,
        sigma: float | None = None,
        grid_size: int | None = None,
        seed: int = 0,
    ) -> SpectralDensity:
        """The spectral density by stochastic Lanczos quadrature (Ghorbani et al. 2019):
        Ritz nodes and Gauss weights per probe, and a Gaussian-smoothed curve."""
        self.check_symmetric(seed)
        return spectral_density(
            self.matvec,
            self.dim,
            n_steps=n_steps,
            n_vectors=n_vectors,
            sigma=sigma,
            grid_size=grid_size,
            seed=seed,
            dtype=self.theta.dtype,
            device=self.theta.device,
        )


class HessianOperator(CurvatureOperator):
    """The Hessian ``nabla^2 L(theta)`` of ``loss_fn`` on ``data`` at ``model``'s parameters.

    Example::

        hessian = HessianOperator(model, torch.nn.CrossEntropyLoss(), (X, y))
        top = hessian.eigenpairs(5)          # top.values, top.vectors, top.residuals
        hessian.trace().value, hessian.density().curve

    ``cache_graphs``: keep each batch's gradient graph and take every product as one
    backward pass through it (faster; memory grows with the samples, the activations of
    every batch held at once), or recompute each product by forward-over-reverse
    differentiation (memory of one batch). Default (``None``): cache up to
    :data:`MAX_CACHED_BATCHES` batches.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        data: Data,
        *,
        cache_graphs: bool | None = None,
    ) -> None:
        if cache_graphs is not None and not isinstance(cache_graphs, bool):
            raise CurvatureError(f"cache_graphs must be True, False or None; got {cache_graphs!r}")
        super().__init__(model, loss_fn, data)
        if cache_graphs is None:
            cache_graphs = len(self.loss.batches) <= MAX_CACHED_BATCHES
        self.cache_graphs = cache_graphs
        self._products: list[Callable[[torch.Tensor], torch.Tensor]] = []
        for index in range(len(self.loss.batches)):
            function = partial(self.loss.batch_loss, index=index)
            if cache_graphs:
                self._products.append(CachedHessianVectorProduct(function, self.theta))
            else:
                product = HessianVectorProduct(function)
                self._products.append(partial(product, self.theta))

    def _options(self) -> dict[str, object]:
        return {"cache_graphs": self.cache_graphs}

    def gradient(self) -> torch.Tensor:
        """``nabla L(theta)``, flat."""
        total = torch.zeros_like(self.theta)
        for index, weight in enumerate(self.loss.weights):
            total = total + weight * grad(self.loss.batch_loss)(self.theta, index)
        return total

    def matvec(self, vector: torch.Tensor) -> torch.Tensor:
        """``H v``, batch by batch: one backward pass through each batch's recorded
        gradient graph (``cache_graphs``), else forward-over-reverse
        differentiation (reverse-over-reverse where torch lacks a forward-mode rule)."""
        vector = self._check_vector(vector)
        total = torch.zeros_like(self.theta)
        for product, weight in zip(self._products, self.loss.weights, strict=True):
            total = total + weight * product(vector)
        return total


class GaussNewtonOperator(CurvatureOperator):
    """The generalised Gauss-Newton matrix ``sum_b w_b J_b^T (nabla^2_f l_b) J_b`` of
    ``loss_fn`` on ``data`` at ``model``'s parameters (positive semidefinite for a convex
    loss)."""

    def __init__(self, model: nn.Module, loss_fn: LossFn, data: Data) -> None:
        super().__init__(model, loss_fn, data)
        loss = self.loss
        self._outputs_of: list[Callable[[torch.Tensor], tuple[torch.Tensor, ...]]] = []
        self._output_products: list[HessianVectorProduct] = []
        for index, (inputs, targets) in enumerate(loss.batches):
            # only floating outputs have derivatives; the others (an argmax, a count) are
            # constants at theta, kept as computed there
            with torch.no_grad():
                leaves, structure = tree_flatten(loss.batch_outputs(self.theta, index))
            floating = [
                i
                for i, leaf in enumerate(leaves)
                if isinstance(leaf, torch.Tensor) and leaf.is_floating_point()
            ]

            def outputs_of(
                theta: torch.Tensor, inputs: torch.Tensor = inputs, floating: list[int] = floating
            ) -> tuple[torch.Tensor, ...]:
                named = loss.layout.unflatten(theta)
                outputs = tree_leaves(
                    functional_call(loss.model, (named, loss._buffers), (inputs,))
                )
                return tuple(outputs[i] for i in floating)

            def loss_of(
                differentiable: tuple[torch.Tensor, ...],
                targets: torch.Tensor = targets,
                leaves: list[object] = leaves,
                structure: TreeSpec = structure,
                floating: list[int] = floating,
            ) -> torch.Tensor:
                outputs = list(leaves)
                for i, leaf in zip(floating, differentiable, strict=True):
                    outputs[i] = leaf
                return evaluate_loss(loss.loss_fn, tree_unflatten(outputs, structure), targets)

            self._outputs_of.append(outputs_of)
            # built once: it remembers which differentiation mode the loss supports
            self._output_products.append(HessianVectorProduct(loss_of))  # type: ignore[arg-type]  # (of a tuple: torch.func takes pytrees)

    def matvec(self, vector: torch.Tensor) -> torch.Tensor:
        """``G v = J^T (nabla^2_f l) (J v)``: a JVP, an output-space HVP and a VJP per batch."""
        vector = self._check_vector(vector)
        total = torch.zeros_like(self.theta)
        for outputs_of, output_product, weight in zip(
            self._outputs_of, self._output_products, self.loss.weights, strict=True
        ):
            forward = jvp(outputs_of, (self.theta,), (vector,))
            outputs, jacobian_vector = forward[0], forward[1]
            curvature_vector = output_product(outputs, jacobian_vector)
            pullback = vjp(outputs_of, self.theta)[1]
            total = total + weight * pullback(curvature_vector)[0]
        return total
