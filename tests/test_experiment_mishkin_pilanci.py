"""The registered mishkin-pilanci experiment on a tiny grid: every part runs, the
figures draw, and the claims hold (they are computed facts checked inside each part
against the convex program's certificates)."""

from __future__ import annotations

from typing import Any

import pytest

from losslab.engine import run_sweep
from losslab.experiments import load_experiment, registered_experiments
from losslab.experiments.mishkin_pilanci import MishkinPilanci
from losslab.store import ResultStore


class TinyMishkinPilanci(MishkinPilanci):
    def grid(self, preset: str) -> list[dict[str, Any]]:
        teacher = {"data": "teacher", "n": 24}
        return [
            {"part": "optimum", **teacher, "lam": 0.05},
            *[
                {
                    "part": "train",
                    **teacher,
                    "optimizer": optimizer,
                    "width": 6,
                    "lam": 0.05,
                    "steps": 800,
                    "seed": 0,
                }
                for optimizer in ("adam", "sgd")
            ],
            {"part": "prune", **teacher, "lam": 0.05, "gates": 40},
            {
                "part": "optimal_set",
                "n_train": 10,
                "lam": 1e-3,
                "gates": 100,
                "vertices": 2,
                "seed": 7,
            },
            {"part": "path", **teacher, "n_lams": 5, "gates": 30},
        ]


def test_registered_and_quick_grid_is_well_formed():
    assert "mishkin-pilanci" in registered_experiments()
    experiment = load_experiment("mishkin-pilanci").experiment
    quick, full = experiment.grid("quick"), experiment.grid("full")
    assert {c["part"] for c in quick} == {"optimum", "train", "prune", "optimal_set", "path"}
    assert len(full) > len(quick)


@pytest.fixture(scope="module")
def frame(tmp_path_factory):
    with ResultStore(tmp_path_factory.mktemp("mp") / "r.sqlite") as store:
        summary = run_sweep(TinyMishkinPilanci(), store=store, workers=0, progress=False)
        assert summary.failed == 0
        return store.frame("mishkin-pilanci", arrays=True)


def test_claims_and_figures(frame):
    experiment = TinyMishkinPilanci()
    claims = {c.statement: c for c in experiment.claims(frame)}
    recovered = claims[
        "the ReLU network recovered from the convex solution has the convex objective"
    ]
    assert recovered.passed, recovered.measured
    pruned = claims["optimal pruning keeps the optimal objective with at most n neurons"]
    assert pruned.passed, pruned.measured
    bound = claims["no trained network beats the certified global optimum"]
    assert bound.passed, bound.measured
    spread = claims["the optimal set holds networks of different test accuracy"]
    assert spread.passed, spread.measured  # seed 7: an optimal set of dimension 1
    assert len(experiment.figures(frame)) == 4


def test_magnitude_pruning_never_beats_the_optimum(frame):
    prune = frame[frame["part"] == "prune"].iloc[0]
    curve = prune["arrays"]["magnitude_objective"]
    assert curve[0] == pytest.approx(prune["objective"], rel=1e-9)  # all neurons kept
    assert (curve >= prune["objective"] * (1 - 1e-12)).all()


def test_gap_figure_counts_whole_networks(frame):
    histogram, curves = TinyMishkinPilanci().figures(frame)[0].axes
    assert all(float(tick).is_integer() for tick in histogram.get_yticks())
    assert histogram.get_ylabel()
    assert curves.get_legend() is not None  # Adam and SGD named, not only coloured
