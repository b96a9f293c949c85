"""An experiment of your own, in one file: does gradient descent reach the ridge optimum?

Run it with ``losslab reproduce examples/ridge_experiment.py:EXPERIMENT --preset quick``.
Ridge regression ``min_w 1/(2n) ||X w - y||^2 + lam/2 ||w||^2`` is strongly convex, so
gradient descent with step ``1/L`` (``L`` the largest Hessian eigenvalue) converges
linearly to the closed-form optimum ``w* = (X^T X / n + lam I)^{-1} X^T y / n``; this
experiment measures how close it gets and how fast.
"""

from __future__ import annotations

import torch
from matplotlib.figure import Figure

from losslab.data import load
from losslab.experiments import Claim


class RidgeGradientDescent:
    name = "ridge-gd"
    paper = "Example: gradient descent on ridge regression"
    version = 1

    def grid(self, preset: str) -> list[dict]:
        lams = [1e-3, 1e-2, 1e-1, 1.0] if preset == "quick" else [10.0**k for k in range(-4, 2)]
        data = ["diabetes", "wine"] if preset == "quick" else ["diabetes", "wine", "digits"]
        return [{"data": d, "lam": lam, "steps": 10_000} for d in data for lam in lams]

    def run(self, cell: dict) -> dict:
        dataset = load(cell["data"], standardize=True)
        X, y, lam = dataset.X, dataset.y, cell["lam"]
        n, d = X.shape
        hessian = X.T @ X / n + lam * torch.eye(d, dtype=X.dtype)
        w_star = torch.linalg.solve(hessian, X.T @ y / n)

        def objective(w: torch.Tensor) -> float:
            return float((X @ w - y).square().sum() / (2 * n) + lam / 2 * w.square().sum())

        step = 1.0 / float(torch.linalg.eigvalsh(hessian).max())
        w = torch.zeros(d, dtype=X.dtype)
        gaps = []
        for k in range(cell["steps"]):
            w = w - step * (hessian @ w - X.T @ y / n)
            if k % 100 == 0:
                gaps.append(objective(w) - objective(w_star))
        best = objective(w_star)
        return {
            "optimum": best,
            "relative_gap": (objective(w) - best) / abs(best),
            "arrays": {"gap_every_100_steps": torch.tensor(gaps)},
        }

    def figures(self, frame) -> list[Figure]:
        figure = Figure(figsize=(6, 3.5))
        axes = figure.subplots()
        for _, row in frame.sort_values(["data", "lam"]).iterrows():
            relative = row["arrays"]["gap_every_100_steps"] / abs(row["optimum"])
            label = f"{row['data']}, lam={row['lam']:g}"
            axes.semilogy(100 * torch.arange(len(relative)), relative.clip(min=1e-17), label=label)
        axes.set_xlabel("gradient steps")
        axes.set_ylabel("(objective - optimum) / optimum")
        axes.legend(fontsize=6, ncol=2)
        return [figure]

    def claims(self, frame) -> list[Claim]:
        worst = float(frame["relative_gap"].max())
        return [
            Claim(
                "gradient descent reaches the ridge optimum (relative gap < 1e-9)",
                f"largest relative gap {worst:.2e} over {len(frame)} cells",
                worst < 1e-9,
            )
        ]


EXPERIMENT = RidgeGradientDescent()
