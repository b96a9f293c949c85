r"""Training square nets as autoencoders, and the heavy tails of their weights (P5).

Berlyand & Slavin train a square net ``f: R^N -> R^N`` to reproduce its inputs and
observe (i) the trained weight matrices become heavy-tailed, (ii) the trained map has
stable fixed points (attractors) near the training images, whose basins are used to
restore damaged images (:mod:`losslab.fixedpoints.restore`). :func:`train_autoencoder`
trains and records, per epoch, the reconstruction loss and tail statistics of each
layer's weights, so (i) can be watched as it happens.

Data helpers give images as (n, N) float64 tensors in ``[0, 1]``: :func:`digits_unit`
(scikit-learn digits, 8x8, ``N = 64``) and :func:`faces_unit` (scikit-image LFW subset,
25x25, block-averaged to ``side x side``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from losslab.errors import FixedPointError
from losslab.fixedpoints.spectra import PowerLawFit, gram_eigenvalues, power_law_alpha

__all__ = [
    "LayerTail",
    "TrainingResult",
    "digits_unit",
    "faces_unit",
    "layer_tails",
    "train_autoencoder",
]


@dataclass(frozen=True)
class LayerTail:
    """Tail statistics of one weight matrix ``W`` (N x N).

    Attributes:
        esd: power-law fit of the eigenvalues of ``W^T W`` (the WeightWatcher ESD tail;
            P5's heavy-tail measure used by the experiments).
        entries: power-law fit of ``|W_ij|``.
        kurtosis: excess kurtosis of the entries, ``E[(w - m)^4] / Var(w)^2 - 3`` (0 for
            Gaussian entries, large for heavy tails).
        max_abs: ``max |W_ij|``.
        max_abs_over_std: ``max |W_ij| / std(W)`` (about ``sqrt(2 log N^2)`` ~ 4 for
            Gaussian ``64 x 64``).
    """

    esd: PowerLawFit
    entries: PowerLawFit
    kurtosis: float
    max_abs: float
    max_abs_over_std: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "esd_alpha": self.esd.alpha,
            "esd_alpha_se": self.esd.alpha_se,
            "esd_xmin": self.esd.xmin,
            "esd_ks": self.esd.ks,
            "entries_alpha": self.entries.alpha,
            "entries_alpha_se": self.entries.alpha_se,
            "kurtosis": self.kurtosis,
            "max_abs": self.max_abs,
            "max_abs_over_std": self.max_abs_over_std,
        }


def _tail_fit(values: torch.Tensor) -> PowerLawFit:
    """:func:`power_law_alpha` of ``values``, or an all-NaN fit when fewer than its
    ``min_tail = 10`` are positive (a net narrower than 10, or a rank-deficient ``W``)."""
    positive = int((values > 0).sum())
    if positive < 10:
        return PowerLawFit(math.nan, math.nan, math.nan, 0, positive, math.nan)
    return power_law_alpha(values)


def layer_tails(net: nn.Module) -> list[LayerTail]:
    """:class:`LayerTail` of every ``nn.Linear`` weight of ``net``, in order; a fit of
    fewer than 10 positive values (a net narrower than 10) is all NaN."""
    tails = []
    for module in net.modules():
        if isinstance(module, nn.Linear):
            w = module.weight.detach().to(torch.float64)
            flat = w.flatten()
            centred = flat - flat.mean()
            var = float((centred**2).mean())
            kurt = float((centred**4).mean()) / var**2 - 3.0 if var > 0 else math.nan
            max_abs = float(flat.abs().max())
            tails.append(
                LayerTail(
                    esd=_tail_fit(gram_eigenvalues(w)),
                    entries=_tail_fit(flat.abs()),
                    kurtosis=kurt,
                    max_abs=max_abs,
                    max_abs_over_std=max_abs / math.sqrt(var) if var > 0 else math.nan,
                )
            )
    return tails


@dataclass(frozen=True)
class TrainingResult:
    """What :func:`train_autoencoder` measured.

    Attributes:
        loss: (epochs + 1) full-data MSE ``mean_{i,j} (f(x_i)_j - x_ij)^2``, before
            training (index 0) and after each epoch.
        tails: (epochs + 1) lists of :class:`LayerTail`, one per layer, at the same times.
        seconds: wall time of the training loop (tail statistics included).
        settings: the arguments (epochs, lr, batch_size, seed, weight_decay).
    """

    loss: list[float]
    tails: list[list[LayerTail]]
    seconds: float
    settings: dict[str, Any] = field(default_factory=dict)

    def esd_alpha(self) -> list[list[float]]:
        """``[epoch][layer]`` ESD tail exponents."""
        return [[t.esd.alpha for t in row] for row in self.tails]

    def to_dict(self) -> dict[str, Any]:
        return {
            "loss": list(self.loss),
            "final_loss": self.loss[-1],
            "tails_before": [t.to_dict() for t in self.tails[0]],
            "tails_after": [t.to_dict() for t in self.tails[-1]],
            "seconds": self.seconds,
            **self.settings,
        }


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise FixedPointError(f"{name} must be an integer >= 1; got {value!r}")
    return value


def train_autoencoder(
    net: nn.Module,
    X: torch.Tensor,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    weight_decay: float = 0.0,
    input_noise: float = 0.0,
    record_tails: bool = True,
    callback: Callable[[int, float], None] | None = None,
) -> TrainingResult:
    r"""Train ``net`` in place to reproduce its inputs: minimise ``mean (f(x) - x)^2``.

    Adam (``lr``, ``weight_decay`` as L2 added to the gradient, torch's ``Adam``) on
    minibatches of ``batch_size`` rows in an order reshuffled each epoch by a generator
    seeded with ``seed``: the same net, data and seed give the same result. After each
    epoch the full-data loss and (``record_tails``) each layer's weight tail statistics
    (:func:`layer_tails`: power-law exponent of the ``W^T W`` eigenvalues, the P5
    heavy-tail measure; of ``|W_ij|``; kurtosis; max ``|W_ij|``) are recorded.
    ``callback(epoch, loss)`` is called after each epoch (progress bars); nothing is
    printed.

    ``input_noise = s > 0`` trains a denoising autoencoder (Vincent et al. 2008): the input
    of each minibatch is ``clip(x + s Z, 0, 1)``, ``Z ~ N(0, 1)`` from the same seeded
    generator, the target the clean ``x``. This makes ``f`` contract towards the data, so
    training images sit nearer to attractors; the recorded loss is always the clean
    reconstruction loss. Default 0 (the plain autoencoder of P5).

    Args:
        net: a module mapping (m, N) to (m, N), e.g. :class:`SquareNet`; trained in place.
        X: (n, N) data with values in ``[0, 1]``, converted to the net's dtype.

    Raises:
        FixedPointError: X not (n, N), not finite or outside ``[0, 1]``; width mismatch;
            non-positive settings; the loss became NaN.
    """
    epochs = _positive_int("epochs", epochs)
    batch_size = _positive_int("batch_size", batch_size)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise FixedPointError(f"seed must be an integer; got {seed!r}")
    if not (math.isfinite(lr) and lr > 0):
        raise FixedPointError(f"lr must be a finite number > 0; got {lr!r}")
    if not (math.isfinite(weight_decay) and weight_decay >= 0):
        raise FixedPointError(f"weight_decay must be a finite number >= 0; got {weight_decay!r}")
    if not (math.isfinite(input_noise) and input_noise >= 0):
        raise FixedPointError(f"input_noise must be a finite number >= 0; got {input_noise!r}")
    if not isinstance(X, torch.Tensor) or X.ndim != 2 or X.shape[0] == 0:
        raise FixedPointError("X must be a non-empty (n, N) tensor, one example per row")
    params = list(net.parameters())
    if not params:
        raise FixedPointError("net has no parameters to train")
    X = X.detach().to(dtype=params[0].dtype, device=params[0].device)
    if not torch.isfinite(X).all():
        raise FixedPointError("X contains NaN or inf")
    if X.min() < 0 or X.max() > 1:
        raise FixedPointError("X must have values in [0, 1]; rescale it (e.g. digits_unit)")
    with torch.no_grad():
        out = net(X[:1])
    if out.shape != X[:1].shape:
        raise FixedPointError(
            f"net must map (m, {X.shape[1]}) to the same shape; got {tuple(out.shape)}"
        )

    def full_loss() -> float:
        with torch.no_grad():
            return float(((net(X) - X) ** 2).mean())

    start = time.perf_counter()
    optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    losses = [full_loss()]
    tails = [layer_tails(net) if record_tails else []]
    n = X.shape[0]
    for epoch in range(1, epochs + 1):
        # the weights at the start of the epoch, put back if it diverges
        last_finite = {k: v.detach().clone() for k, v in net.state_dict().items()}
        order = torch.randperm(n, generator=gen).to(X.device)
        for begin in range(0, n, batch_size):
            batch = X[order[begin : begin + batch_size]]
            inputs = batch
            if input_noise > 0:
                noise = torch.randn(batch.shape, generator=gen, dtype=torch.float64)
                noise = noise.to(dtype=batch.dtype, device=batch.device)
                inputs = (batch + input_noise * noise).clamp(0.0, 1.0)
            optimizer.zero_grad(set_to_none=True)
            loss = ((net(inputs) - batch) ** 2).mean()
            loss.backward()
            optimizer.step()
        value = full_loss()
        if not math.isfinite(value):
            net.load_state_dict(last_finite)
            raise FixedPointError(
                f"the loss became {value} at epoch {epoch}; lower lr (the net's weights are "
                f"back at the end of epoch {epoch - 1}, loss {losses[-1]:.6g})"
            )
        losses.append(value)
        tails.append(layer_tails(net) if record_tails else [])
        if callback is not None:
            callback(epoch, value)
    return TrainingResult(
        loss=losses,
        tails=tails,
        seconds=time.perf_counter() - start,
        settings={
            "epochs": epochs,
            "lr": lr,
            "batch_size": batch_size,
            "seed": seed,
            "weight_decay": weight_decay,
            "input_noise": input_noise,
        },
    )


def digits_unit(n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn digits scaled to ``[0, 1]``: ``(X / 16, y)``, X (n, 64) float64, the
    first ``n`` images (all 1797 when ``None``), y the labels 0..9 (long)."""
    from losslab.data import load

    data = load("digits")
    X, y = data.X / 16.0, data.y.long()
    if n is not None:
        n = _positive_int("n", n)
        X, y = X[:n], y[:n]
    return X.contiguous(), y


def faces_unit(side: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """The scikit-image LFW subset (200 grey 25x25 images in ``[0, 1]``, first 100 faces)
    downsampled to ``side x side`` by area averaging (``adaptive_avg_pool2d``: each output
    pixel is the mean of the input pixels its window covers; exact block averaging when
    ``side`` divides 25, e.g. 5). Returns ``(X, y)``, X (200, side**2) float64 in
    ``[0, 1]``, y = 1 for faces. Default ``side = 8`` (``N = 64``, as digits)."""
    from losslab.data import load

    side = _positive_int("side", side)
    data = load("lfw_faces")
    h, w = (int(v) for v in data.meta.get("image_shape", [25, 25]))
    if side > min(h, w):
        raise FixedPointError(f"side must be at most {min(h, w)}; got {side}")
    images = data.X.reshape(-1, 1, h, w)
    small = torch.nn.functional.adaptive_avg_pool2d(images, side)
    X = small.reshape(images.shape[0], side * side).clamp(0.0, 1.0)
    return X.contiguous(), data.y.long()
