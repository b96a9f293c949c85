from __future__ import annotations

import statistics
from typing import Any

import pytest
import scipy.stats

from losslab.critical import classification_data, output_hessian_bounds
from losslab.engine import run_sweep
from losslab.experiments import load_experiment, registered_experiments
from losslab.experiments.milne import Milne
from losslab.nets import ReLUMLP
from losslab.store import ResultStore


class TinyMilne(Milne):
    """Four short trajectories on wine, small enough for the test suite."""

    def grid(self, preset: str) -> list[dict[str, Any]]:
        base = {"data": "wine", "width": 6, "weight_decay": 1e-2, "seed": 0, "n_train": 60,
                "epochs": 20, "batch_size": 16, "lr": 0.1, "momentum": 0.9, "checkpoints": 4,
                "newton_iter": 5}  # fmt: skip
        cells = [
            {**base, "depth": depth, "dropout": dropout}
            for depth in (1, 2)
            for dropout in (0.0, 0.3)
        ]
        cells[0]["slice"] = True
        return cells


def test_registered_and_grids_are_well_formed():
    assert "milne" in registered_experiments()
    experiment = load_experiment("milne").experiment
    quick, full = experiment.grid("quick"), experiment.grid("full")
    assert {c["data"] for c in quick} == {"digits", "wine"}
    assert {c["depth"] for c in quick} == {1, 2, 3, 4}
    assert {c["dropout"] for c in quick} == {0.0, 0.3}
    assert len(full) > len(quick)
    assert sum(bool(c.get("slice")) for c in quick) == 1


@pytest.fixture(scope="module")
def frame(tmp_path_factory):
    with ResultStore(tmp_path_factory.mktemp("milne") / "r.sqlite") as store:
        summary = run_sweep(TinyMilne(), store=store, workers=0, progress=False)
        assert summary.failed == 0
        return store.frame("milne", arrays=True)


def test_points_follow_the_derivation(frame):
    for _, cell in frame.iterrows():
        points = cell["points"]
        assert points[0]["step"] == 0
        assert len(points) >= 3
        for point in points:
            assert point["hessian_min_eigenvalue"] >= point["lower_bound"] - 1e-12
            assert point["strongly_convex"] == (point["hessian_min_eigenvalue"] > 0)
            assert point["below_threshold"] == (point["training_error"] < point["error_threshold"])
    # the threshold at initialisation, recomputed from the bound: lambda^2 / (2 mean B^2)
    cell = frame[(frame["depth"] == 2) & (frame["dropout"] == 0.0)].iloc[0]
    inputs, _ = classification_data("wine", 60, seed=0)
    model = ReLUMLP(inputs.shape[1], [6, 6], 3, seed=0)
    bounds = output_hessian_bounds(model, inputs)
    expected = 1e-4 / (2 * float((bounds**2).mean()))
    assert cell["points"][0]["error_threshold"] == pytest.approx(expected, rel=1e-10)


def test_claims_and_figures(frame):
    experiment = TinyMilne()
    claims = {c.statement: c for c in experiment.claims(frame)}
    assert len(claims) == 6
    bound = next(c for s, c in claims.items() if s.startswith("the derived curvature bound"))
    assert bound.passed, bound.measured
    depth = claims["the error threshold shrinks with depth"]
    medians = [
        statistics.median([p["error_threshold"] for pts in frame[frame["depth"] == d]["points"]
                           for p in pts])
        for d in (1, 2)
    ]  # fmt: skip
    assert depth.passed == (medians[1] < medians[0])
    # dropout: each run's share after step 0, paired by configuration; a sign test, here
    pairs: dict[tuple, dict[float, float]] = {}
    for _, row in frame.iterrows():
        decided = [p["strongly_convex"] for p in row["points"]
                   if p["step"] > 0 and p["strongly_convex"] is not None]  # fmt: skip
        if decided:
            key = (row["data"], row["depth"], row["width"], row["weight_decay"], row["seed"])
            pairs.setdefault(key, {})[row["dropout"]] = sum(decided) / len(decided)
    differences = [run[0.3] - run[0.0] for run in pairs.values() if len(run) == 2]
    ups, downs = sum(d > 0 for d in differences), sum(d < 0 for d in differences)
    p_value = (
        scipy.stats.binomtest(ups, ups + downs, alternative="greater").pvalue
        if ups + downs
        else 1.0
    )
    dropout = claims["dropout raises the share of points where the loss is strongly convex"]
    assert dropout.passed == (p_value < 0.05)
    assert f"over {len(differences)} pairs of runs" in dropout.measured
    assert f"raised the share in {ups}, lowered it in {downs}" in dropout.measured
    figures = experiment.figures(frame)
    assert len(figures) == 3
    arrays = frame[frame["arrays"].map(lambda a: isinstance(a, dict) and "losses" in a)]
    assert arrays.iloc[0]["arrays"]["losses"].shape == (21, 21)


def test_threshold_figure_has_one_panel_per_dataset(frame):
    figure = TinyMilne().figures(frame)[1]
    datasets = sorted(frame["data"].unique())
    assert [ax.get_title().split(" ")[0] for ax in figure.axes] == datasets
    assert all(ax.get_ylabel() and ax.get_xlabel() for ax in figure.axes)
