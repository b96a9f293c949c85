r"""Restoring damaged images by iterating a map to its attractors (Berlyand & Slavin, P5).

P5's application: a square net ``f: [0, 1]^N -> (0, 1)^N`` trained as an autoencoder has
fixed points ``x* = f(x*)`` that are stable attractors; their basins partition the input
space, so a damaged image placed in the basin of the clean image's attractor flows back
to it under ``x <- f(x)``. This module provides the damage (:func:`mask_block`,
:func:`salt_and_pepper`, :func:`gaussian_noise`), the iteration (:func:`restore`), the
score (:func:`psnr`), a downstream check (:func:`restoration_accuracy`) and a figure
(:func:`restoration_figure`).

Images are rows of an (n, N) tensor with values in ``[0, 1]`` (pixel intensities; peak
1.0), ``N = height * width`` in row-major order.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from losslab.errors import FixedPointError

Map = Callable[[torch.Tensor], torch.Tensor]

__all__ = [
    "Restoration",
    "gaussian_noise",
    "mask_block",
    "psnr",
    "restoration_accuracy",
    "restoration_figure",
    "restore",
    "salt_and_pepper",
]


def _check_images(images: torch.Tensor, name: str = "images") -> torch.Tensor:
    if not isinstance(images, torch.Tensor):
        raise FixedPointError(f"{name} must be a torch.Tensor; got {type(images).__name__}")
    if images.ndim != 2 or images.shape[0] == 0 or images.shape[1] == 0:
        raise FixedPointError(
            f"{name} must have shape (n, N) with n, N >= 1 (one flattened image per row); "
            f"got {tuple(images.shape)}"
        )
    if not images.is_floating_point():
        raise FixedPointError(f"{name} must be floating point; got {images.dtype}")
    if not torch.isfinite(images).all():
        raise FixedPointError(f"{name} contain NaN or inf; pass finite pixel values")
    return images


def _check_unit(images: torch.Tensor) -> None:
    if images.min() < 0 or images.max() > 1:
        raise FixedPointError(
            "images must have values in [0, 1]; rescale them (e.g. digits: X / 16)"
        )


def _generator(seed: int) -> torch.Generator:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise FixedPointError(f"seed must be an integer; got {seed!r}")
    return torch.Generator().manual_seed(seed)


def _image_shape(n_pixels: int, shape: tuple[int, int] | None) -> tuple[int, int]:
    if shape is None:
        side = math.isqrt(n_pixels)
        if side * side != n_pixels:
            raise FixedPointError(
                f"images have {n_pixels} pixels, not a square number: pass shape=(h, w)"
            )
        return side, side
    h, w = shape
    if h * w != n_pixels:
        raise FixedPointError(f"shape {shape} has {h * w} pixels but images have {n_pixels}")
    return h, w


def mask_block(
    images: torch.Tensor,
    size: int,
    seed: int = 0,
    *,
    shape: tuple[int, int] | None = None,
    value: float = 0.0,
) -> torch.Tensor:
    """Occlude one ``size x size`` block per image, at a uniform random position.

    Each image (a row, reshaped to ``shape``, default square) gets an independent top-left
    corner uniform over the ``(h - size + 1) (w - size + 1)`` positions that keep the block
    inside; its ``size**2`` pixels are set to ``value`` (default 0, black). Returns a copy.

    Raises:
        FixedPointError: bad images, ``size`` not in ``1..min(h, w)``, ``value`` outside
            ``[0, 1]``.
    """
    images = _check_images(images)
    h, w = _image_shape(images.shape[1], shape)
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= min(h, w):
        raise FixedPointError(f"size must be an integer in 1..{min(h, w)}; got {size!r}")
    if not (math.isfinite(value) and 0 <= value <= 1):
        raise FixedPointError(f"value must be in [0, 1]; got {value!r}")
    gen = _generator(seed)
    n = images.shape[0]
    rows = torch.randint(0, h - size + 1, (n,), generator=gen)
    cols = torch.randint(0, w - size + 1, (n,), generator=gen)
    r = torch.arange(h)[None, :]
    c = torch.arange(w)[None, :]
    in_rows = (r >= rows[:, None]) & (r < rows[:, None] + size)  # (n, h)
    in_cols = (c >= cols[:, None]) & (c < cols[:, None] + size)  # (n, w)
    mask = (in_rows[:, :, None] & in_cols[:, None, :]).reshape(n, h * w).to(images.device)
    out = images.clone()
    out[mask] = value
    return out


def salt_and_pepper(images: torch.Tensor, fraction: float, seed: int = 0) -> torch.Tensor:
    """Set exactly ``round(fraction * N)`` pixels of each image to 0 or 1 (probability 1/2
    each), the pixels drawn uniformly without replacement, independently per image.
    Returns a copy.

    Raises:
        FixedPointError: bad images, ``fraction`` outside ``[0, 1]``.
    """
    images = _check_images(images)
    if not (math.isfinite(fraction) and 0 <= fraction <= 1):
        raise FixedPointError(f"fraction must be in [0, 1]; got {fraction!r}")
    gen = _generator(seed)
    n, n_pixels = images.shape
    k = round(fraction * n_pixels)
    order = torch.rand(n, n_pixels, generator=gen).argsort(dim=1)[:, :k]
    salt = (torch.rand(n, k, generator=gen) < 0.5).to(images.dtype)
    out = images.clone()
    out.scatter_(1, order.to(images.device), salt.to(images.device))
    return out


def gaussian_noise(
    images: torch.Tensor, sigma: float, seed: int = 0, *, clip: bool = True
) -> torch.Tensor:
    """Add i.i.d. ``N(0, sigma^2)`` noise to every pixel, then (``clip=True``, default)
    clip to ``[0, 1]`` so the result is again an image. Returns a new tensor.

    Raises:
        FixedPointError: bad images, ``sigma < 0``.
    """
    images = _check_images(images)
    if not (math.isfinite(sigma) and sigma >= 0):
        raise FixedPointError(f"sigma must be a finite number >= 0; got {sigma!r}")
    gen = _generator(seed)
    noise = torch.randn(images.shape, generator=gen, dtype=torch.float64)
    out = images + sigma * noise.to(dtype=images.dtype, device=images.device)
    return out.clamp(0.0, 1.0) if clip else out


def standard_corruptions(seed: int = 0) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """The damage used by the experiment and the command line, by name: ``"mask"`` (a 4x4
    block set to 0), ``"salt_pepper"`` (20% of the pixels set to 0 or 1), ``"noise"``
    (Gaussian, sigma 0.2, clipped to [0, 1]); each seeded by ``seed``."""
    return {
        "mask": lambda x: mask_block(x, 4, seed=seed),
        "salt_pepper": lambda x: salt_and_pepper(x, 0.2, seed=seed),
        "noise": lambda x: gaussian_noise(x, 0.2, seed=seed),
    }


@dataclass(frozen=True)
class Restoration:
    """The result of iterating ``x <- f(x)`` from each damaged image.

    Attributes:
        images: (n, N) the last iterate of each image (its fixed point when converged).
        iterations: (n,) number of applications of ``f`` made to each image.
        converged: (n,) whether ``||x_{k+1} - x_k||_inf <= tol`` was reached.
        residual: (n,) the last step ``||x_{k+1} - x_k||_inf``.
        max_iter, tol: the settings.
    """

    images: torch.Tensor
    iterations: torch.Tensor
    converged: torch.Tensor
    residual: torch.Tensor
    max_iter: int
    tol: float

    @property
    def reason(self) -> str:
        """Why the iteration stopped."""
        if bool(self.converged.all()):
            return "all images converged"
        missing = int((~self.converged).sum())
        return f"{missing} of {self.converged.numel()} images hit max_iter={self.max_iter}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": int(self.images.shape[0]),
            "converged_fraction": float(self.converged.double().mean()),
            "mean_iterations": float(self.iterations.double().mean()),
            "max_iterations": int(self.iterations.max()),
            "max_residual": float(self.residual.max()),
            "max_iter": self.max_iter,
            "tol": self.tol,
        }


def restore(f: Map, corrupted: torch.Tensor, max_iter: int = 200, tol: float = 1e-8) -> Restoration:
    """Iterate ``x_{k+1} = f(x_k)`` from each damaged image (P5's restoration).

    Batched: all images that have not converged are advanced together; an image stops
    (and is no longer passed to ``f``) once ``||x_{k+1} - x_k||_inf <= tol``, so
    ``iterations`` counts its own applications of ``f``. After ``max_iter`` applications
    the last iterate is returned with ``converged=False`` (a cycle or slow contraction).
    Runs without gradient tracking.

    Defaults: ``max_iter = 200``, ``tol = 1e-8`` (pixel units; peak 1.0). When ``f`` is an
    ``nn.Module`` with parameters, the images are cast to their dtype and device first.

    Raises:
        FixedPointError: images not (n, N) or not finite, ``max_iter < 1``, ``tol < 0``,
            ``f`` changes the shape or returns NaN/inf.
    """
    x = _check_images(corrupted, "corrupted")
    parameter = next(f.parameters(), None) if isinstance(f, torch.nn.Module) else None
    if parameter is not None:
        x = x.to(dtype=parameter.dtype, device=parameter.device)
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise FixedPointError(f"max_iter must be an integer >= 1; got {max_iter!r}")
    if not (math.isfinite(tol) and tol >= 0):
        raise FixedPointError(f"tol must be a finite number >= 0; got {tol!r}")
    n = x.shape[0]
    x = x.clone()
    iterations = torch.zeros(n, dtype=torch.long, device=x.device)
    converged = torch.zeros(n, dtype=torch.bool, device=x.device)
    residual = torch.full((n,), math.inf, dtype=x.dtype, device=x.device)
    active = torch.arange(n, device=x.device)
    with torch.no_grad():
        for _ in range(max_iter):
            current = x[active]
            new = f(current)
            if new.shape != current.shape:
                raise FixedPointError(
                    f"f must map (m, N) to (m, N); input {tuple(current.shape)} gave "
                    f"{tuple(new.shape)}"
                )
            if not torch.isfinite(new).all():
                raise FixedPointError("f returned NaN or inf during the iteration")
            step = (new - current).abs().amax(dim=1)
            x[active] = new.to(x.dtype)
            iterations[active] += 1
            residual[active] = step.to(x.dtype)
            done = step <= tol
            converged[active[done]] = True
            active = active[~done]
            if active.numel() == 0:
                break
    return Restoration(x, iterations, converged, residual, max_iter, float(tol))


def psnr(clean: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio per image, in dB, with peak value 1.0:

        PSNR = 10 log10(1 / MSE),   MSE = mean_j (clean_j - other_j)^2,

    the mean over the ``N`` pixels of each image. Rows of (n, N) inputs give an (n,)
    tensor; (N,) inputs give a scalar tensor. Identical images give ``+inf``. Average
    per-image PSNRs (or pool MSEs) as the experiment states. The peak is 1: scale images
    to ``[0, 1]`` first (digits' pixels run 0..16: divide by 16); no range is checked.

    Raises:
        FixedPointError: shape mismatch, empty, integer or non-finite inputs.
    """
    if not isinstance(clean, torch.Tensor) or not isinstance(other, torch.Tensor):
        raise FixedPointError("clean and other must be torch tensors")
    if not (clean.is_floating_point() and other.is_floating_point()):
        raise FixedPointError(
            f"images must be floating point with peak 1; got {clean.dtype} and {other.dtype}: "
            "divide integer images by their peak value (255 for 8-bit)"
        )
    if clean.shape != other.shape:
        raise FixedPointError(
            f"clean and other must have the same shape; got {tuple(clean.shape)} and "
            f"{tuple(other.shape)}"
        )
    if clean.ndim not in (1, 2) or clean.numel() == 0:
        raise FixedPointError(f"images must be (N,) or (n, N), non-empty; got {tuple(clean.shape)}")
    if not (torch.isfinite(clean).all() and torch.isfinite(other).all()):
        raise FixedPointError("images contain NaN or inf")
    mse = ((clean - other.to(clean.dtype)) ** 2).mean(dim=-1)
    return 10.0 * torch.log10(1.0 / mse)


def mean_psnr(clean: torch.Tensor, other: torch.Tensor) -> float:
    """The mean of :func:`psnr` over the images that differ (finite PSNR): an image the
    damage left unchanged (a mask on blank pixels) has ``+inf`` and would make any mean
    infinite. ``+inf`` only when every image is unchanged."""
    values = psnr(clean, other).reshape(-1)
    finite = values[torch.isfinite(values)]
    return float(finite.mean()) if finite.numel() else math.inf


def restoration_accuracy(
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    C: float = 1.0,
    max_iter: int = 2000,
    **test_sets: torch.Tensor,
) -> dict[str, float]:
    """Accuracy of one classifier on several versions of a test set.

    Fits scikit-learn ``LogisticRegression(C=C, max_iter=max_iter)`` (multinomial, lbfgs)
    on ``train_images`` (clean), then scores each keyword test set, e.g.
    ``restoration_accuracy(Xtr, ytr, yte, clean=Xte, corrupted=Xc, restored=R.images)``
    gives ``{"clean": ..., "corrupted": ..., "restored": ...}``: restoration helps when
    ``restored`` beats ``corrupted``.

    Raises:
        FixedPointError: no test sets, bad shapes, label count mismatch.
    """
    from sklearn.linear_model import LogisticRegression

    train = _check_images(train_images, "train_images")
    if not test_sets:
        raise FixedPointError("give at least one test set, e.g. corrupted=..., restored=...")
    ytr = np.asarray(
        train_labels.detach().cpu().numpy()
        if isinstance(train_labels, torch.Tensor)
        else train_labels
    )
    yte = np.asarray(
        test_labels.detach().cpu().numpy() if isinstance(test_labels, torch.Tensor) else test_labels
    )
    if ytr.shape != (train.shape[0],):
        raise FixedPointError(f"train_labels must have shape ({train.shape[0]},); got {ytr.shape}")
    model = LogisticRegression(C=C, max_iter=max_iter)
    model.fit(train.detach().cpu().numpy(), ytr)
    scores: dict[str, float] = {}
    for name, images in test_sets.items():
        images = _check_images(images, name)
        if images.shape[1] != train.shape[1] or yte.shape != (images.shape[0],):
            raise FixedPointError(
                f"test set {name!r} has shape {tuple(images.shape)}; need "
                f"({yte.shape[0]}, {train.shape[1]}) to match test_labels and the training data"
            )
        scores[name] = float(model.score(images.detach().cpu().numpy(), yte))
    return scores


def restoration_figure(
    clean: torch.Tensor,
    corrupted: torch.Tensor,
    restored: torch.Tensor,
    shape: tuple[int, int] = (8, 8),
    *,
    n_show: int = 8,
) -> Figure:
    """A 3-row grid: clean, corrupted and restored versions of the first ``n_show``
    images, grey scale on ``[0, 1]``, the per-image PSNR (dB, peak 1) under each image."""
    clean = _check_images(clean, "clean")
    corrupted = _check_images(corrupted, "corrupted")
    restored = _check_images(restored, "restored")
    if not (clean.shape == corrupted.shape == restored.shape):
        raise FixedPointError("clean, corrupted and restored must have the same shape")
    h, w = _image_shape(clean.shape[1], shape)
    k = max(1, min(n_show, clean.shape[0]))
    p_bad = psnr(clean[:k], corrupted[:k])
    p_good = psnr(clean[:k], restored[:k])
    figure = Figure(figsize=(1.3 * k, 4.2), layout="constrained")
    axes = figure.subplots(3, k, squeeze=False)
    rows = [("clean", clean, None), ("corrupted", corrupted, p_bad), ("restored", restored, p_good)]
    for r, (label, images, scores) in enumerate(rows):
        for j in range(k):
            ax = axes[r][j]
            ax.imshow(images[j].detach().cpu().reshape(h, w).numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if scores is not None:
                ax.set_xlabel(f"{float(scores[j]):.1f} dB", fontsize=7, labelpad=1)
            if j == 0:
                ax.set_ylabel(label, fontsize=8)
    return figure
