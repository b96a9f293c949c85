r"""Experiment ``mishkin-pilanci``: optimal sets, pruning and paths of ReLU networks (P3).

Four parts, each a kind of cell:

- ``optimum``: the global optimum of the training problem, every pattern enumerated (a
  proof: the dual objective is a lower bound on every network's objective);
- ``train``: a two-layer ReLU network trained by Adam or SGD on the non-convex objective
  ``1/(2n) ||f(X) - y||^2 + lam/2 sum_j (||w_j||^2 + alpha_j^2)``, with its gap to the
  optimum of the convex program over its own patterns along training.
- ``prune``: the convex optimum as a network, its optimal pruning, and magnitude pruning
  (drop the neuron of smallest ``|alpha_j| ||w_j||``, no refit) at every width.
- ``optimal_set``: members of the optimal set of the gated program (minimum norm,
  sparsest vertex, best on a validation split, random vertices) and their test accuracy.
  This part uses the gated form. With the ReLU form instead, on the quick grid's 10
  seeds, the optimal sets have dimension 0 to 3 but their members' test predictions
  differ by at most 3e-8, so no accuracy spread shows.
- ``path``: the regularization path (objective, neurons, fit) over a log grid of ``lam``.

Data: a seeded ReLU teacher in 2-D (``teacher``; its patterns are few enough to
enumerate, so global optimality is proved) and scikit-learn's ``diabetes`` (standardised,
sampled patterns). Binary classification for the optimal-set part: ``iris`` versicolor
vs virginica (labels -1/+1, four features), 10 training flowers: optimal sets are
non-trivial (dimension > 0) only when the active neurons' fits are linearly dependent,
which small training sets make likely.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from losslab.convex import (
    ConvexReLU,
    ConvexReLUProgram,
    ReLUNetwork,
    enumerate_patterns,
    network_parameters,
    own_pattern_gap,
    regularization_path,
    solve,
)
from losslab.data import load
from losslab.experiments.protocol import Claim

if TYPE_CHECKING:
    import pandas as pd

#: Relative tolerance under which two objectives count as equal in the claims.
EQUAL = 1e-9
#: Gradient norm under which a trained network counts as (nearly) stationary, and the
#: relative gap to its own program's optimum such a network must then be within.
STATIONARY = 1e-3


def _regression_data(cell: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Features and target of ``cell["n"]`` rows: the 2-D teacher, or standardised rows of
    a scikit-learn regression dataset with a standardised target."""
    if cell["data"] == "teacher":
        data = load("teacher_relu", n=cell["n"], d=2, width=3, noise=0.1, seed=0)
        return data.X, data.y
    data = load(cell["data"], standardize=True)
    rows = torch.randperm(data.X.shape[0], generator=torch.Generator().manual_seed(0))[: cell["n"]]
    y = data.y[rows]
    return data.X[rows], (y - y.mean()) / y.std()


def _objective(net: nn.Sequential, X: torch.Tensor, y: torch.Tensor, lam: float) -> torch.Tensor:
    residual = net(X)[:, 0] - y
    penalty = sum(p.square().sum() for p in net.parameters())
    return residual.square().sum() / (2 * X.shape[0]) + lam / 2 * penalty


def _train(cell: dict[str, Any]) -> dict[str, Any]:
    """Train by Adam or SGD (full batch, step size decayed 100-fold), and record at
    checkpoints the objective and the relative gap to the optimum of the convex program
    over the network's own patterns (the sub-sampled program of P3)."""
    X, y = _regression_data(cell)
    torch.manual_seed(cell["seed"])
    net = nn.Sequential(
        nn.Linear(X.shape[1], cell["width"], bias=False, dtype=torch.float64),
        nn.ReLU(),
        nn.Linear(cell["width"], 1, bias=False, dtype=torch.float64),
    )
    lam, steps = cell["lam"], cell["steps"]
    if cell["optimizer"] == "adam":
        optimizer: torch.optim.Optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    else:
        optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: 1e-2 ** (k / steps))
    checkpoints = {steps // 8, steps // 4, steps // 2, steps}
    objectives, own_gaps, gradient_norms = [], [], []
    for step in range(1, steps + 1):
        optimizer.zero_grad()
        _objective(net, X, y, lam).backward()
        optimizer.step()
        schedule.step()
        if step in checkpoints:
            own = own_pattern_gap(net, X, y, lam, tol=1e-7)
            objectives.append(own.objective)
            own_gaps.append(own.own_gap)
            gradient_norms.append(own.gradient_norm)
    return {
        "objective": objectives[-1],
        "own_gap": own_gaps[-1],
        "gradient_norm": gradient_norms[-1],
        "n": int(X.shape[0]),
        "arrays": {
            "steps": np.array(sorted(checkpoints)),
            "objective": np.array(objectives),
            "own_gap": np.array(own_gaps),
            "gradient_norm": np.array(gradient_norms),
        },
    }


def _optimum(cell: dict[str, Any]) -> dict[str, Any]:
    """The global optimum of the training problem (all patterns of the data enumerated):
    what the trained networks are measured against."""
    X, y = _regression_data(cell)
    patterns = enumerate_patterns(X)
    result = solve(ConvexReLUProgram(X, y, patterns, cell["lam"], "relu"), tol=1e-7)
    return {
        "optimum": result.objective,
        "lower_bound": result.dual_objective,
        "converged": result.converged,
        "n_patterns": int(patterns.shape[1]),
        "n_neurons": int((result.blocks.norm(dim=1) > 0).sum()),
    }


def _prune(cell: dict[str, Any]) -> dict[str, Any]:
    X, y = _regression_data(cell)
    model = ConvexReLU(lam=cell["lam"], n_gates=cell["gates"], tol=1e-7, check_global=False)
    model.fit(X.numpy(), y.numpy())
    net = model.to_torch()
    recovered = float(_objective(net, X, y, cell["lam"]).detach())
    pruned = model.prune()
    pruned_net = pruned.to_torch()
    magnitude_neurons, magnitude_objective = _magnitude_curve(net, X, y, cell["lam"])
    _, pruned_magnitude = _magnitude_curve(pruned_net, X, y, cell["lam"])
    return {
        "objective": model.objective_,
        "converged": model.solution_.converged,
        "relative_gap": model.solution_.relative_gap,
        "recovered_objective": recovered,
        "n_neurons": model.n_neurons_,
        "pruned_objective": pruned.objective_,
        "pruned_neurons": pruned.n_neurons_,
        "pruned_nonconvex_objective": float(_objective(pruned_net, X, y, cell["lam"]).detach()),
        "n": int(X.shape[0]),
        "arrays": {
            "magnitude_neurons": magnitude_neurons,
            "magnitude_objective": magnitude_objective,
            "pruned_then_magnitude": pruned_magnitude,
        },
    }


def _magnitude_curve(
    net: nn.Sequential, X: torch.Tensor, y: torch.Tensor, lam: float
) -> tuple[np.ndarray, np.ndarray]:
    """Objective after keeping the ``k`` neurons of largest ``|alpha_j| ||w_j||``, for
    every ``k`` from all of them down to 0 (no refit)."""
    W, alpha, _ = network_parameters(net)
    order = torch.argsort(W.norm(dim=1) * alpha.abs(), descending=True)
    neurons = np.arange(len(order), -1, -1)
    values = [ReLUNetwork(W[order[:k]], alpha[order[:k]]).objective(X, y, lam) for k in neurons]
    return neurons, np.array(values)


def _optimal_set(cell: dict[str, Any]) -> dict[str, Any]:
    data = load("iris", standardize=True)
    keep = data.y > 0
    X, labels = data.X[keep].numpy(), np.where(data.y[keep].numpy() == 2, 1.0, -1.0)
    order = np.random.default_rng(cell["seed"]).permutation(len(labels))
    n_train, n_val = cell["n_train"], cell["n_train"] // 2
    train, val, test = np.split(order, [n_train, n_train + n_val])
    model = ConvexReLU(
        lam=cell["lam"],
        formulation="gated",
        n_gates=cell["gates"],
        bias=True,
        tol=1e-8,
        seed=cell["seed"],
        check_global=False,
    ).fit(X[train], labels[train])
    optimum = model.optimal_set()
    members = {
        "solver": model,
        "min_norm": model.optimal_member("min_norm"),
        "sparsest": model.optimal_member("sparsest"),
        "validation": model.optimal_member("validation", X[val], labels[val]),
    }
    for i in range(cell["vertices"]):
        members[f"vertex_{i}"] = model.optimal_member("vertex", seed=1000 * cell["seed"] + i)
    predictions = np.array([m.predict(X[test]) for m in members.values()])
    accuracy = dict(zip(members, (np.sign(predictions) == labels[test]).mean(axis=1).tolist(),
                        strict=True))  # fmt: skip
    objectives = np.array([m.objective_ for m in members.values()])
    return {
        "objective": model.objective_,
        "converged": model.solution_.converged,
        "dimension": optimum.dimension,
        "n_active": int(optimum.active.numel()),
        "n_uncertain": int(optimum.uncertain.numel()),
        "objective_spread": float((objectives.max() - objectives.min()) / objectives.min()),
        "neurons": {k: m.n_neurons_ for k, m in members.items()},
        "test_accuracy": accuracy,
        "accuracy_spread": max(accuracy.values()) - min(accuracy.values()),
        "prediction_spread": float(np.ptp(predictions, axis=0).max()),
        "n": int(n_train),
    }


def _path(cell: dict[str, Any]) -> dict[str, Any]:
    X, y = _regression_data(cell)
    path = regularization_path(X, y, n_lams=cell["n_lams"], n_gates=cell["gates"], tol=1e-7,
                               max_iter=20_000)  # fmt: skip
    points = path.points
    return {
        "lam_max": path.lam_max,
        "converged": sum(p.result.converged for p in points),
        "n_lams": len(points),
        "jumps": len(path.jumps),
        "arrays": {
            "lam": np.array(path.lams),
            "objective": np.array([p.result.objective for p in points]),
            "neurons": np.array([p.n_neurons for p in points]),
            "fit_norm": np.array([float(p.fit.norm()) for p in points]),
            "sensitivity": np.array(path.sensitivity),
        },
    }


RUNNERS = {
    "optimum": _optimum,
    "train": _train,
    "prune": _prune,
    "optimal_set": _optimal_set,
    "path": _path,
}


class MishkinPilanci:
    """Optimal sets, optimal pruning, trained nets and paths (module docstring)."""

    name = "mishkin-pilanci"
    paper = "Mishkin & Pilanci (2023), Optimal Sets and Solution Paths of ReLU Networks"
    version = 2

    def grid(self, preset: str) -> list[dict[str, Any]]:
        full = preset == "full"
        seeds = range(20 if full else 3)
        teacher = {"data": "teacher", "n": 80}
        cells: list[dict[str, Any]] = [{"part": "optimum", **teacher, "lam": 1e-2}]
        cells += [
            {"part": "train", **teacher, "optimizer": optimizer, "width": width,
             "lam": 1e-2, "steps": 8000 if full else 2000, "seed": seed}
            for optimizer in ("adam", "sgd")
            for width in ((5, 20, 50) if full else (10,))
            for seed in seeds
        ]  # fmt: skip
        datasets = (teacher, {"data": "diabetes", "n": 150 if full else 60})
        lams = (1e-3, 1e-2, 1e-1) if full else (1e-2,)
        cells += [{"part": "prune", **data, "lam": lam, "gates": 200 if full else 50}
                  for data in datasets for lam in lams]  # fmt: skip
        cells += [{"part": "optimal_set", "n_train": 10, "lam": lam, "gates": 100,
                   "vertices": 8, "seed": seed}
                  for lam in ((1e-3, 1e-2) if full else (1e-3,))
                  for seed in range(50 if full else 10)]  # fmt: skip
        cells += [{"part": "path", **data, "n_lams": 50 if full else 15, "gates": 200}
                  for data in datasets]  # fmt: skip
        return cells

    def run(self, cell: dict[str, Any]) -> dict[str, Any]:
        return RUNNERS[cell["part"]](cell)

    def figures(self, frame: pd.DataFrame) -> list[Figure]:
        return [
            draw(part)
            for name, draw in (
                ("train", lambda train: _gap_figure(train, frame[frame["part"] == "optimum"])),
                ("prune", _pruning_figure),
                ("optimal_set", _optimal_set_figure),
                ("path", _path_figure),
            )
            if not (part := frame[frame["part"] == name]).empty
        ]

    def claims(self, frame: pd.DataFrame) -> list[Claim]:
        claims = []
        prune = frame[frame["part"] == "prune"]
        if not prune.empty:
            recovery = (prune["recovered_objective"] - prune["objective"]).abs() / prune[
                "objective"
            ]
            claims.append(Claim(
                "the ReLU network recovered from the convex solution has the convex objective",
                f"largest relative difference {recovery.max():.1e} over {len(prune)} problems",
                bool(recovery.max() <= EQUAL),
            ))  # fmt: skip
            change = (prune["pruned_objective"] - prune["objective"]).abs() / prune["objective"]
            bounded = bool((prune["pruned_neurons"] <= prune["n"]).all())
            claims.append(Claim(
                "optimal pruning keeps the optimal objective with at most n neurons",
                f"neurons {_pairs(prune['n_neurons'], prune['pruned_neurons'])} (n = "
                f"{', '.join(str(v) for v in prune['n'])}); largest relative objective change "
                f"{change.max():.1e}",
                bool(change.max() <= EQUAL) and bounded,
            ))  # fmt: skip
        train, optimum = frame[frame["part"] == "train"], frame[frame["part"] == "optimum"]
        if not train.empty:
            # Every checkpoint of every net: how far above its own program's optimum it is,
            # against how stationary it is.
            own_gaps = np.concatenate([row["own_gap"] for row in train["arrays"]])
            norms = np.concatenate([row["gradient_norm"] for row in train["arrays"]])
            near = norms <= STATIONARY
            worst = float(own_gaps[near].max()) if near.any() else float("nan")
            correlation = float(
                np.corrcoef(np.log(norms), np.log(np.clip(own_gaps, 1e-16, None)))[0, 1]
            )
            claims.append(Claim(
                "trained networks that converged are optimal for their own sub-sampled program",
                f"{int(near.sum())} of {len(own_gaps)} checkpoints of {len(train)} nets have "
                f"gradient norm <= {STATIONARY:g}; their largest relative gap to the "
                f"own-pattern optimum is {worst:.1e}; correlation of log gap with log "
                f"gradient norm over all checkpoints {correlation:.2f}",
                bool(near.any()) and worst <= STATIONARY,
            ))  # fmt: skip
        if not train.empty and not optimum.empty:
            bound = float(optimum["lower_bound"].iloc[0])
            gaps = (train["objective"] - bound) / bound
            claims.append(Claim(
                "no trained network beats the certified global optimum",
                f"{int((gaps < -EQUAL).sum())} of {len(train)} below the proved lower bound "
                f"{bound:.6g}; gaps after Adam/SGD: median {gaps.median():.1e}, "
                f"max {gaps.max():.1e}",
                bool((gaps >= -EQUAL).all()),
            ))  # fmt: skip
        optimal = frame[frame["part"] == "optimal_set"]
        if not optimal.empty:
            spread = optimal["accuracy_spread"]
            nontrivial = optimal[optimal["dimension"] > 0]
            claims.append(Claim(
                "the optimal set holds networks of different test accuracy",
                f"{len(nontrivial)} of {len(optimal)} optimal sets are not a single point "
                f"(dimensions {sorted(int(v) for v in nontrivial['dimension'])}); "
                f"test-accuracy spread among optimal networks: max {spread.max():.3f}, "
                f"in {int((spread > 0).sum())} sets; test predictions differ by up to "
                f"{optimal['prediction_spread'].max():.3f}; objectives equal to "
                f"{optimal['objective_spread'].max():.1e}",
                bool(spread.max() > 0) and bool(optimal["objective_spread"].max() <= EQUAL),
            ))  # fmt: skip
        return claims


def _pairs(before: Any, after: Any) -> str:
    return ", ".join(f"{int(a)} -> {int(b)}" for a, b in zip(before, after, strict=True))


def _gap_figure(train: pd.DataFrame, optimum: pd.DataFrame) -> Figure:
    """Relative gaps of the trained networks: to the certified global optimum at the end
    (histogram, shared bins) and to the optimum over each network's own activation
    patterns along training."""
    from matplotlib.ticker import MaxNLocator, NullFormatter

    names = {"adam": "Adam", "sgd": "SGD"}
    colors = {name: f"C{i}" for i, name in enumerate(sorted(train["optimizer"].unique()))}
    figure = Figure(figsize=(10, 3.8), layout="constrained")
    histogram, curves = figure.subplots(1, 2)
    if not optimum.empty:
        bound = float(optimum["lower_bound"].iloc[0])
        gaps = np.log10(((train["objective"] - bound) / bound).clip(lower=1e-16))
        bins = np.histogram_bin_edges(gaps, bins=20)
        for optimizer, rows in gaps.groupby(train["optimizer"]):
            histogram.hist(rows, bins=bins, alpha=0.6, color=colors[optimizer],
                           label=names.get(str(optimizer), str(optimizer)))  # fmt: skip
        histogram.set_xlabel("log10 of (objective - global optimum) / global optimum")
        histogram.set_ylabel("trained networks")
        histogram.yaxis.set_major_locator(MaxNLocator(integer=True))
        histogram.set_title("At the end of training, to the certified optimum", fontsize=9)
        histogram.legend(fontsize=8)
    for optimizer, rows in train.groupby("optimizer"):
        label = names.get(str(optimizer), str(optimizer))
        for i, arrays in enumerate(rows["arrays"]):
            curves.loglog(arrays["steps"], np.clip(arrays["own_gap"], 1e-16, None), ".-",
                          c=colors[optimizer], alpha=0.6, label=None if i else label)  # fmt: skip
    steps = sorted({int(s) for arrays in train["arrays"] for s in arrays["steps"]})
    curves.set_xticks(steps, [str(s) for s in steps])
    curves.xaxis.set_minor_formatter(NullFormatter())
    curves.set_xlabel("training step")
    curves.set_ylabel("relative gap to own-pattern optimum")
    curves.set_title("Along training, to the optimum over the net's own patterns", fontsize=9)
    curves.legend(fontsize=8)
    widths = ", ".join(str(int(w)) for w in sorted(train["width"].unique()))
    figure.suptitle(f"Two-layer ReLU networks (width {widths}) trained on the "
                    f"{train['data'].iloc[0]} data, lam = {train['lam'].iloc[0]:g}")  # fmt: skip
    return figure


def _pruning_figure(prune: pd.DataFrame) -> Figure:
    figure = Figure(figsize=(4 * len(prune), 3.5))
    for axes, (_, row) in zip(np.atleast_1d(figure.subplots(1, len(prune))), prune.iterrows(),
                              strict=True):  # fmt: skip
        arrays = row["arrays"]
        axes.semilogy(arrays["magnitude_neurons"], arrays["magnitude_objective"], ".-",
                      label="magnitude pruning")  # fmt: skip
        neurons = np.arange(len(arrays["pruned_then_magnitude"]))[::-1]
        axes.semilogy(neurons, arrays["pruned_then_magnitude"], ".-",
                      label="optimal pruning, then magnitude")  # fmt: skip
        axes.plot([row["pruned_neurons"]], [row["pruned_objective"]], "k*", ms=10,
                  label="optimally pruned")  # fmt: skip
        axes.set_xlabel("neurons")
        axes.set_ylabel("objective")
        axes.set_title(f"{row['data']}, lam={row['lam']:g}")
        axes.legend(fontsize=7)
    figure.tight_layout()
    return figure


def _optimal_set_figure(optimal: pd.DataFrame) -> Figure:
    """Test accuracy of the members of each optimal set (one column per problem)."""
    figure = Figure(figsize=(max(6.0, 0.7 * len(optimal) + 2), 3.8), layout="constrained")
    axes = figure.subplots()
    labels = []
    for i, (_, row) in enumerate(optimal.iterrows()):
        accuracy = row["test_accuracy"]
        axes.plot(
            [i] * len(accuracy),
            list(accuracy.values()),
            "o",
            color="C0",
            alpha=0.6,
            label="a member (min-norm, sparsest, vertex, validation)" if i == 0 else None,
        )
        labels.append(f"{row.get('data', '')}\nseed {row['seed']}\nlam {row['lam']:g}")
    axes.set_xticks(range(len(labels)), labels, fontsize=7)
    axes.set_ylabel("test accuracy")
    axes.set_title("Equally optimal networks (one optimal set per column): test accuracy")
    axes.legend(fontsize=7)
    return figure


def _path_figure(path: pd.DataFrame) -> Figure:
    figure = Figure(figsize=(10, 3.4), layout="constrained")
    objective, neurons, fit = figure.subplots(1, 3)
    for _, row in path.iterrows():
        arrays = row["arrays"]
        objective.loglog(arrays["lam"], arrays["objective"], ".-", label=row["data"])
        neurons.semilogx(arrays["lam"], arrays["neurons"], ".-")
        fit.semilogx(arrays["lam"], arrays["fit_norm"], ".-")
    for axes, label in ((objective, "optimal objective"), (neurons, "neurons of the optimum"),
                        (fit, "||fit|| on the training data")):  # fmt: skip
        axes.set_xlabel("lam (weight decay)")
        axes.set_ylabel(label)
    objective.legend(title="data")
    figure.suptitle("Regularization path of the convex program (certified optimum per lam)")
    return figure


EXPERIMENT = MishkinPilanci()
