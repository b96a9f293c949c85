r"""Experiment ``milne``: piecewise strong convexity along SGD trajectories (P4).

Each cell trains one ReLU MLP (:class:`losslab.nets.ReLUMLP`, ``depth`` hidden layers of
``width`` units, optional dropout after each ReLU) by minibatch SGD (momentum 0.9, step
size annealed by a cosine from 0.1, :func:`losslab.critical.train_squared_loss`) on the
weight-decayed
squared loss ``E + (lambda/2)||theta||^2`` (``E = (1/2n) sum ||f(x_i) - y_i||^2`` with
one-hot targets), on ``digits`` (8x8 images) or ``wine`` (13 chemical features), features
min-max scaled to ``[0, 1]``, ``n_train`` training samples drawn by the seed.

At ``checkpoints`` points along the trajectory (log-spaced in SGD steps, the start and the
end included; the network in ``eval()`` mode, so dropout is off) the full-batch
:func:`losslab.critical.strong_convexity` records the training error ``E``, the
threshold ``E*`` (derived in :mod:`losslab.critical.regions`), the smallest eigenvalue of
the in-region Hessian (dense, exact), the proven lower bound and the certified margin. From
the end point, :func:`losslab.critical.find_critical_point` (Newton-MR, full batch) looks
for a nearby critical point of the network's loss, which is then checked for being an
isolated minimum (zero gradient, positive definite in-region Hessian, strictly inside its
region: a point on a kink is not). One cell per
preset also stores a 2-D loss slice around the trained network along filter-normalised
directions.

Claims checked: below the threshold every sampled point is strongly convex in its region;
critical points found below it are isolated minima; the threshold shrinks with depth; the
regularised loss is almost always piecewise strongly convex along the trajectories (P4's
experiments); dropout raises the share of strongly convex points (P4's explanation of why
dropout helps; the report says which way it went).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from matplotlib.figure import Figure
from scipy.stats import binomtest

from losslab.experiments.protocol import Claim

if TYPE_CHECKING:
    import pandas as pd

#: Share of strongly convex points that counts as "almost always".
ALMOST_ALWAYS = 0.9
#: A one-sided sign test over paired runs at this level decides the dropout claim.
SIGNIFICANCE = 0.05


def _checkpoint_steps(total: int, count: int) -> set[int]:
    steps = np.unique(np.round(np.geomspace(1, total + 1, count)).astype(int) - 1)
    return {0, total, *steps.tolist()}


def _run(cell: dict[str, Any]) -> dict[str, Any]:
    from losslab.critical import (
        classification_data,
        slice_2d,
        squared_error,
        strong_convexity,
        train_squared_loss,
    )
    from losslab.nets import ReLUMLP

    inputs, targets = classification_data(cell["data"], cell["n_train"], seed=cell["seed"])
    decay = cell["weight_decay"]
    model = ReLUMLP(inputs.shape[1], [cell["width"]] * cell["depth"], targets.shape[1],
                    dropout=cell["dropout"], seed=cell["seed"])  # fmt: skip
    total = cell["epochs"] * math.ceil(len(inputs) / cell["batch_size"])
    record_at = _checkpoint_steps(total, cell["checkpoints"])
    points: list[dict[str, Any]] = []

    def record(step: int) -> None:
        if step in record_at:
            certificate = strong_convexity(model, (inputs, targets), decay,
                                           eigenvalue_method="dense")  # fmt: skip
            accuracy = float((model(inputs).argmax(1) == targets.argmax(1)).double().mean())
            points.append({"step": step, "accuracy": accuracy, **_point(certificate)})

    train_squared_loss(model, inputs, targets, weight_decay=decay, epochs=cell["epochs"],
                       batch_size=cell["batch_size"], lr=cell["lr"],
                       momentum=cell["momentum"], seed=cell["seed"], on_step=record)  # fmt: skip
    end = torch.nn.utils.parameters_to_vector(model.parameters()).detach().clone()
    critical, reason = _critical_point(model, inputs, targets, decay, cell["newton_iter"])
    row: dict[str, Any] = {"points": points, "critical_converged": critical is not None,
                           "critical_reason": reason}  # fmt: skip
    if critical is not None:
        torch.nn.utils.vector_to_parameters(critical, model.parameters())
        certificate = strong_convexity(model, (inputs, targets), decay, eigenvalue_method="dense")
        row["critical"] = _point(certificate)
    if cell.get("slice"):
        torch.nn.utils.vector_to_parameters(end, model.parameters())
        landscape = slice_2d(model, squared_error, (inputs, targets), n_points=21,
                             seed=cell["seed"])  # fmt: skip
        row["arrays"] = {"alphas": landscape.alphas.numpy(), "betas": landscape.betas.numpy(),
                         "losses": landscape.losses.numpy()}  # fmt: skip
    return row


def _critical_point(
    model: torch.nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    decay: float,
    max_iter: int,
) -> tuple[torch.Tensor | None, str]:
    """A critical point of the network's weight-decayed loss near the trained weights, by
    Newton-MR from them. Returns the flat point (or ``None``) and the search's reason.

    (Newton-MR on the end point's region polynomial, ``losslab.critical.region_objective``,
    converges more often but left its region every time in the quick preset, so its
    critical points were not the network's; it is not used here.)"""
    from losslab.critical import find_critical_point, squared_error
    from losslab.linalg import ModelLoss

    objective = ModelLoss(model, squared_error, (inputs, targets))
    search = find_critical_point(lambda t: objective(t) + decay / 2 * (t @ t),
                                 objective.theta0, max_iter=max_iter)  # fmt: skip
    if search.converged and isinstance(search.params, torch.Tensor):
        return search.params, search.reason
    return None, search.reason


def _point(certificate: Any) -> dict[str, Any]:
    keys = (
        "training_error", "error_threshold", "below_threshold", "hessian_min_eigenvalue",
        "strongly_convex", "lower_bound", "margin", "gradient_norm", "isolated_minimum",
        "eigenvalue_exact",
    )  # fmt: skip
    return {key: getattr(certificate, key) for key in keys}


class Milne:
    """Piecewise strong convexity of ReLU networks with weight decay (module docstring)."""

    name = "milne"
    paper = "Milne (2019), Piecewise Strong Convexity of Neural Networks"
    version = 3

    def grid(self, preset: str) -> list[dict[str, Any]]:
        full = preset == "full"
        cells = []
        for data in ("wine", "digits"):
            depths = (1, 2, 3, 4) if full or data == "wine" else (1, 2)
            decays = (
                (1e-4, 1e-3, 1e-2, 1e-1) if full else (1e-3, 1e-2) if data == "wine" else (1e-3,)
            )
            for depth in depths:
                for width in (16, 32) if full else (16,):
                    for decay in decays:
                        for dropout in (0.0, 0.3):
                            for seed in range(3 if full else 1):
                                cells.append({
                                    "data": data, "depth": depth, "width": width,
                                    "weight_decay": decay, "dropout": dropout, "seed": seed,
                                    "n_train": 178 if data == "wine" else 600 if full else 150,
                                    "epochs": 300 if full else 150, "batch_size": 32,
                                    "lr": 0.1, "momentum": 0.9,
                                    "checkpoints": 12 if full else 5,
                                    "newton_iter": 50 if full else 8,
                                })  # fmt: skip
        cells[2 if len(cells) > 2 else 0]["slice"] = True
        return cells

    def run(self, cell: dict[str, Any]) -> dict[str, Any]:
        return _run(cell)

    def figures(self, frame: pd.DataFrame) -> list[Figure]:
        points = _points(frame)
        figures = [_convexity_figure(points), _threshold_figure(points)]
        sliced = frame[frame["arrays"].map(lambda a: isinstance(a, dict) and "losses" in a)]
        if not sliced.empty:
            figures.append(_slice_figure(sliced.iloc[0]))
        return figures

    def claims(self, frame: pd.DataFrame) -> list[Claim]:
        points = _points(frame)
        exact = points[points["eigenvalue_exact"]]  # dense eigvalsh: the true smallest
        claims = []
        below = exact[exact["below_threshold"]]
        ratio = (points["training_error"] / points["error_threshold"]).min()
        tested = "" if len(below) else " (not tested: the threshold is never reached)"
        claims.append(Claim(
            "below the error threshold every point is strongly convex in its region",
            f"{len(below)} of {len(exact)} sampled points with an exact eigenvalue lie below "
            f"the threshold (smallest E / E* over all {len(points)} points = {ratio:.3g}); "
            f"{int(below['strongly_convex'].sum())} of them have a positive smallest "
            f"in-region Hessian eigenvalue{tested}",
            bool(len(below)) and bool(below["strongly_convex"].all()),
        ))  # fmt: skip
        held = exact["hessian_min_eigenvalue"] >= exact["lower_bound"] - 1e-12
        gap = float((exact["hessian_min_eigenvalue"] - exact["lower_bound"]).median())
        claims.append(Claim(
            "the derived curvature bound holds: smallest in-region eigenvalue >= "
            "lambda - (1/n) sum ||r_i|| B_i (losslab's own check of the derivation)",
            f"held at {int(held.sum())} of {len(exact)} points with an exact (dense) "
            f"eigenvalue ({len(points) - len(exact)} points above the dense limit left out); "
            f"median slack {gap:.3g}",
            bool(len(exact)) and bool(held.all()),
        ))  # fmt: skip
        critical = [row for row in frame.get("critical", []) if isinstance(row, dict)]
        critical_below = [c for c in critical if c["below_threshold"]]
        isolated = sum(c["isolated_minimum"] for c in critical)
        claims.append(Claim(
            "critical points below the threshold are isolated local minima",
            f"Newton-MR reached a critical point from {len(critical)} of {len(frame)} "
            "trajectory ends; "
            f"{len(critical_below)} critical points lie below the threshold, "
            f"{sum(c['isolated_minimum'] for c in critical_below)} of them isolated minima; "
            f"over all critical points found, {isolated} of {len(critical)} are isolated "
            "minima",
            bool(critical_below) and all(c["isolated_minimum"] for c in critical_below),
        ))  # fmt: skip
        at_start = points[points["step"] == 0].groupby(["data", "depth"])["error_threshold"]
        along = points.groupby(["data", "depth"])["error_threshold"].median()
        shrinks, texts = [], []
        for data, medians in at_start.median().groupby(level="data"):
            values = medians.droplevel("data").sort_index()
            shrinks.append(len(values) > 1 and bool((np.diff(values.to_numpy()) < 0).all()))
            trajectory = ", ".join(f"{v:.2g}" for v in along[data].sort_index())
            texts.append(f"{data}: " + ", ".join(f"{d}: {v:.2g}" for d, v in values.items())
                         + f" (median along the trajectories: {trajectory})")  # fmt: skip
        claims.append(Claim(
            "the error threshold shrinks with depth",
            "median threshold E* at initialisation by depth, " + "; ".join(texts)
            + " (expected from the bound's form: each hidden layer's bias-augmented norm is at "
            "least 1 and the depth factor grows like L - 1)",
            bool(shrinks) and all(shrinks),
        ))  # fmt: skip
        decided = _decided(points)
        share = float(decided["strongly_convex"].mean())
        by_depth = decided.groupby("depth")["strongly_convex"].mean()
        undecided = len(points) - len(decided)
        claims.append(Claim(
            "along SGD trajectories the regularised loss is almost always piecewise strongly "
            f"convex (at least {ALMOST_ALWAYS:.0%} of sampled points)",
            f"{share:.1%} of {len(decided)} points are strongly convex in their region; by "
            "depth: " + ", ".join(f"{d}: {v:.0%}" for d, v in by_depth.items())
            + (f"; {undecided} points undecided (a positive Lanczos value above the dense "
               "limit proves nothing)" if undecided else ""),
            share >= ALMOST_ALWAYS,
        ))  # fmt: skip
        # the unit is a run: points along one SGD trajectory are not independent, and at
        # step 0 the runs with and without dropout are one network. Each run's share of
        # strongly convex points after step 0, paired by everything but the dropout rate;
        # a one-sided sign test on the pairs that differ.
        later = decided[decided["step"] > 0]
        pairing = ["data", "depth", "width", "weight_decay", "seed"]
        shares = later.groupby([*pairing, "dropout"])["strongly_convex"].mean().unstack()
        shares = shares.dropna()
        if 0.0 in shares.columns and len(shares.columns) > 1:
            differences = shares.drop(columns=0.0).mean(axis=1) - shares[0.0]
            ups, downs = int((differences > 0).sum()), int((differences < 0).sum())
            p_value = float(binomtest(ups, ups + downs, alternative="greater").pvalue
                            ) if ups + downs else 1.0  # fmt: skip
            claims.append(Claim(
                "dropout raises the share of points where the loss is strongly convex",
                f"over {len(shares)} pairs of runs (same data, depth, width, decay and seed; "
                f"points after step 0), dropout raised the share in {ups}, lowered it in "
                f"{downs}, kept it in {len(shares) - ups - downs}; mean share "
                f"{float(shares[0.0].mean()):.1%} without, "
                f"{float(shares.drop(columns=0.0).mean(axis=1).mean()):.1%} with dropout; "
                f"one-sided sign test p = {p_value:.2g} (passes below {SIGNIFICANCE:g}: "
                + ("significant" if p_value < SIGNIFICANCE else "not significant, inconclusive")
                + ")",
                p_value < SIGNIFICANCE,
            ))  # fmt: skip
        return claims


def _points(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per sampled trajectory point, with its cell's configuration."""
    import pandas as pd

    config = ["data", "depth", "width", "weight_decay", "dropout", "seed"]
    rows = [
        {**{key: cell[key] for key in config}, **point}
        for _, cell in frame.iterrows()
        for point in cell["points"]
    ]
    return pd.DataFrame(rows)


def _decided(points: pd.DataFrame) -> pd.DataFrame:
    """The points whose strong convexity is decided (``strongly_convex`` not None), as bool."""
    decided = points[points["strongly_convex"].notna()].copy()
    decided["strongly_convex"] = decided["strongly_convex"].astype(bool)
    return decided


def _convexity_figure(points: pd.DataFrame) -> Figure:
    """Share of strongly convex points against the training error (log bins), per depth;
    and the smallest in-region eigenvalue against the proven lower bound."""
    figure = Figure(figsize=(10, 3.8))
    share, bound = figure.subplots(1, 2)
    points = _decided(points)
    errors = points["training_error"].to_numpy()
    edges = np.geomspace(max(errors.min(), 1e-12), errors.max() * 1.0001, 8)
    for depth, group in points.groupby("depth"):
        bins = np.digitize(group["training_error"], edges)
        centres, shares = [], []
        for index in sorted(set(bins)):
            inside = group[bins == index]
            centres.append(float(inside["training_error"].median()))
            shares.append(float(inside["strongly_convex"].mean()))
        share.plot(centres, shares, "o-", label=f"depth {depth}")
    share.set_xscale("log")
    share.set_xlabel("training error E")
    share.set_ylabel("share strongly convex in region")
    share.set_ylim(-0.05, 1.05)
    share.legend(fontsize=8)
    for convex, marker in ((True, "o"), (False, "x")):
        part = points[points["strongly_convex"] == convex]
        bound.scatter(part["lower_bound"], part["hessian_min_eigenvalue"], s=12, marker=marker,
                      label="strongly convex" if convex else "not")  # fmt: skip
    low = min(points["lower_bound"].min(), points["hessian_min_eigenvalue"].min())
    high = max(points["lower_bound"].max(), points["hessian_min_eigenvalue"].max())
    bound.plot([low, high], [low, high], "k--", lw=0.8, label="y = x")
    bound.axhline(0, color="grey", lw=0.6)
    bound.set_xlabel("proven lower bound lambda - (1/n) sum ||r_i|| B_i")
    bound.set_ylabel("smallest in-region Hessian eigenvalue")
    bound.legend(fontsize=8)
    figure.suptitle("Piecewise strong convexity along SGD trajectories")
    figure.tight_layout()
    return figure


def _threshold_figure(points: pd.DataFrame) -> Figure:
    """Per dataset (their thresholds differ by orders of magnitude), the threshold E* and
    the training error E of the sampled points by depth, and the median E* at
    initialisation (what the claim compares)."""
    datasets = sorted(points["data"].unique())
    figure = Figure(figsize=(0.5 + 4.5 * len(datasets), 4.2), layout="constrained")
    panels = np.atleast_1d(figure.subplots(1, len(datasets)))
    for axes, data in zip(panels, datasets, strict=True):
        subset = points[points["data"] == data]
        depths = sorted(int(d) for d in subset["depth"].unique())
        axes.boxplot([subset[subset["depth"] == d]["error_threshold"] for d in depths],
                     positions=depths, widths=0.3, patch_artist=True,
                     boxprops={"facecolor": "lightsteelblue"},
                     label="threshold E* along the trajectories (quartiles)")  # fmt: skip
        start = subset[subset["step"] == 0].groupby("depth")["error_threshold"].median()
        axes.plot(start.index, start.to_numpy(), "k^--", ms=5, lw=0.8,
                  label="median E* at initialisation")  # fmt: skip
        for depth in depths:
            errors = subset[subset["depth"] == depth]["training_error"]
            axes.scatter(np.full(len(errors), depth + 0.3), errors, s=6, color="C1", alpha=0.5,
                         label="training error E" if depth == depths[0] else None)  # fmt: skip
        axes.set_yscale("log")
        axes.set_xticks(depths, [str(d) for d in depths])
        axes.set_xlim(min(depths) - 0.5, max(depths) + 0.6)
        axes.set_xlabel("depth (hidden layers)")
        axes.set_ylabel("error E, threshold E* (squared loss)")
        axes.set_title(f"{data} ({len(subset)} sampled points)", fontsize=9)
    figure.legend(*panels[0].get_legend_handles_labels(), loc="outside lower center", ncols=3,
                  fontsize=8)  # fmt: skip
    figure.suptitle("Error threshold E* by depth (below it every point is strongly convex)")
    return figure


def _slice_figure(cell: pd.Series) -> Figure:
    from losslab.critical import Slice2D, plot_slice_2d

    arrays = cell["arrays"]
    alphas, betas = torch.as_tensor(arrays["alphas"]), torch.as_tensor(arrays["betas"])
    losses = torch.as_tensor(arrays["losses"])
    zero = torch.zeros(1)
    landscape = Slice2D(alphas, betas, losses, float(losses[len(betas) // 2, len(alphas) // 2]),
                        (zero, zero))  # fmt: skip
    figure = plot_slice_2d(landscape, kind="contour", log=True)
    figure.suptitle(f"Loss around a trained net ({cell['data']}, depth {int(cell['depth'])})")
    return figure


EXPERIMENT = Milne()
