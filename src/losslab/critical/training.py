r"""Training ReLU MLPs by SGD on the weight-decayed squared loss (the setting of P4).

The objective is ``E(theta) + (lambda/2) ||theta||^2`` with the training error
``E = (1/2n) sum_i ||f(x_i) - y_i||^2`` (:func:`squared_error`) on one-hot targets;
minibatch SGD estimates ``E`` on each batch. :func:`classification_data` prepares a
built-in classification dataset in that form.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from losslab.errors import CurvatureError


def squared_error(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``(1/2n) sum_i ||outputs_i - targets_i||^2``, the training error ``E`` of P4."""
    return ((outputs - targets) ** 2).sum() / (2 * len(targets))


def classification_data(
    name: str, n_train: int | None = None, *, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """A built-in classification dataset (``losslab data list``) as float64 features
    min-max scaled to ``[0, 1]`` (constant columns to 0) and one-hot targets, ``n_train``
    samples drawn without replacement by ``seed`` (all of them when ``None``)."""
    from losslab.data import load

    dataset = load(name)
    if dataset.task != "classification":
        raise CurvatureError(f"{name} is a {dataset.task} dataset; give a classification one")
    count = len(dataset.y) if n_train is None else n_train
    if not 1 <= count <= len(dataset.y):
        raise CurvatureError(f"n_train must lie in [1, {len(dataset.y)}] for {name}, got {count}")
    order = torch.as_tensor(np.random.default_rng(seed).permutation(len(dataset.y))[:count])
    features = dataset.X[order]
    low, high = features.min(0).values, features.max(0).values
    features = (features - low) / torch.where(high > low, high - low, torch.ones_like(high))
    labels = dataset.y[order].long()
    n_classes = int(dataset.y.max()) + 1
    return features, nn.functional.one_hot(labels, n_classes).to(torch.float64)


def train_squared_loss(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    weight_decay: float,
    epochs: int,
    batch_size: int = 32,
    lr: float = 0.1,
    momentum: float = 0.0,
    anneal: bool = True,
    seed: int = 0,
    on_step: Callable[[int], None] | None = None,
) -> list[float]:
    """Minibatch SGD on ``E + (lambda/2) ||theta||^2``; returns the objective per epoch
    (full batch, model in ``eval()`` mode). With ``anneal`` the step size follows a cosine
    from ``lr`` down to ``lr / 1000`` over the run, so that the end point lies near a
    critical point rather than in SGD's noise ball. Batches and dropout masks are drawn
    from ``seed`` alone (torch's global generator is restored afterwards).
    ``on_step(step)`` is called before every SGD step (``step = 0, 1, ...``) and once after
    the last one, with the model in ``eval()`` mode, e.g. to record points along the
    trajectory; the model is left in ``eval()``."""
    if epochs < 0 or batch_size < 1 or not lr > 0 or not weight_decay >= 0:
        raise CurvatureError(
            "need epochs >= 0, batch_size >= 1, lr > 0 and weight_decay >= 0, got "
            f"{epochs}, {batch_size}, {lr}, {weight_decay}"
        )
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    n = len(inputs)
    total = epochs * math.ceil(n / batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=max(total, 1), eta_min=lr / 1000 if anneal else lr
    )
    history: list[float] = []

    def objective() -> torch.Tensor:
        flat = torch.cat([p.reshape(-1) for p in model.parameters()])
        return weight_decay / 2 * (flat @ flat)

    def notify(step: int) -> None:
        if on_step is not None:
            model.eval()
            on_step(step)
        model.train()

    # dropout draws from torch's global generators: seed them here, restore them after
    cuda = sorted({p.device.index or 0 for p in model.parameters() if p.is_cuda})
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        step = 0
        model.train()
        for _ in range(epochs):
            for batch in torch.randperm(n, generator=generator).split(batch_size):
                notify(step)
                optimizer.zero_grad()
                loss = squared_error(model(inputs[batch]), targets[batch]) + objective()
                loss.backward()
                optimizer.step()
                schedule.step()
                step += 1
            model.eval()
            with torch.no_grad():
                value = float(squared_error(model(inputs), targets) + objective())
            if not math.isfinite(value):
                raise CurvatureError(f"SGD diverged (objective {value}); lower lr (now {lr})")
            history.append(value)
    notify(step)
    model.eval()
    return history
