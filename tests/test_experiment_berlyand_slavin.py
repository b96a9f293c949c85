from __future__ import annotations

from typing import Any

import pytest

from losslab.engine import run_sweep
from losslab.experiments import load_experiment, registered_experiments
from losslab.experiments.berlyand_slavin import BerlyandSlavin
from losslab.store import ResultStore


class TinyBerlyandSlavin(BerlyandSlavin):
    """One cell of each part, small enough for the test suite."""

    def grid(self, preset: str) -> list[dict[str, Any]]:
        return [
            *[{"part": "gaussian", "N": 2, "L": L, "seed": 0, "starts": 1000} for L in (1, 2)],
            *[
                {"part": "heavy", "N": 3, "L": L, "seed": seed, "starts": 1000}
                for L in (1, 2, 3)
                for seed in (0, 1)
            ],
            {
                "part": "trained",
                "init": "gaussian",
                "L": 1,
                "seed": 0,
                "n_train": 5,
                "epochs": 300,
                "lr": 1e-2,
                "input_noise": 0.3,
                "starts": 50,
            },
            {
                "part": "spectra",
                "init": "gaussian",
                "N": 16,
                "L": 1,
                "nets": 2,
                "points": 4,
                "seed": 0,
            },
        ]


def test_registered_and_grids_are_well_formed():
    assert "berlyand-slavin" in registered_experiments()
    experiment = load_experiment("berlyand-slavin").experiment
    quick, full = experiment.grid("quick"), experiment.grid("full")
    assert {c["part"] for c in quick} == {"gaussian", "heavy", "trained", "spectra"}
    assert len(full) > len(quick)


@pytest.fixture(scope="module")
def frame(tmp_path_factory):
    with ResultStore(tmp_path_factory.mktemp("bs") / "r.sqlite") as store:
        summary = run_sweep(TinyBerlyandSlavin(), store=store, workers=0, progress=False)
        assert summary.failed == 0
        return store.frame("berlyand-slavin", arrays=True)


def test_counts_are_proved_and_agree_with_the_search(frame):
    counts = frame[frame["part"].isin(["gaussian", "heavy"])]
    assert bool((counts["certified"] == True).all())  # noqa: E712  (N = 2 proves fast)
    assert (counts["certified_count"] == counts["count"]).all()
    # complete sets: the indices of the proved counts' points sum to 1
    assert (counts["index_sum"] == 1).all()
    assert bool((counts["index_consistent"] == True).all())  # noqa: E712
    claims = {c.statement: c for c in TinyBerlyandSlavin().claims(frame)}
    agree = claims["the search finds exactly the proved number of fixed points (losslab's own "
                   "exactness)"]  # fmt: skip
    assert agree.passed, agree.measured
    assert f"sum to 1 (the index theorem's necessary condition) on {len(counts)} of" in (
        agree.measured
    )


def test_claims_and_figures(frame):
    experiment = TinyBerlyandSlavin()
    claims = {c.statement: c for c in experiment.claims(frame)}
    assert len(claims) == 6
    one = claims["untrained networks with Gaussian weights have exactly one fixed point"]
    assert one.passed, one.measured
    trained = frame[frame["part"] == "trained"].iloc[0]
    stored = trained["restoration"]["stored/mask"]
    assert stored["psnr_after"] > stored["psnr_before"]  # the stored digits come back
    assert len(experiment.figures(frame)) == 4
    spectra = frame[frame["part"] == "spectra"].iloc[0]["arrays"]
    assert len(spectra["squared_singular_values"]) == 2 * 4 * 16
    assert spectra["prediction_density"].shape == spectra["prediction_grid"].shape


def test_an_incomplete_proof_is_reported_and_withholds_the_exactness_claim():
    import pandas as pd

    rows = [
        {"part": "heavy", "N": 3, "L": L, "seed": seed, "count": count, "certified": certified,
         "certified_count": proved, "index_consistent": True}
        for L, seed, count, certified, proved in [
            (1, 0, 1, True, 1), (1, 1, 1, True, 1), (2, 0, 3, True, 3), (2, 1, 3, True, 3),
            (3, 0, 1, True, 1), (3, 1, 3, False, 2),  # budget spent: 2 proved, maybe more
        ]
    ]  # fmt: skip
    claims = {c.statement: c for c in BerlyandSlavin().claims(pd.DataFrame(rows))}
    exact = next(c for s, c in claims.items() if s.startswith("the search finds exactly"))
    assert exact.measured.startswith("5 of 5 proved counts equal the search's count; 1 proofs")
    assert not exact.passed  # every proved count agrees, but one net is not proved
    rows[-1].update(certified=True, certified_count=3)
    claims = {c.statement: c for c in BerlyandSlavin().claims(pd.DataFrame(rows))}
    exact = next(c for s, c in claims.items() if s.startswith("the search finds exactly"))
    assert exact.passed
    assert "incomplete" not in exact.measured
    # Q(3, L) = 1, 3, 2: rises, and falls halfway back to 1 only at the deepest L
    q = next(c for s, c in claims.items() if s.startswith("Q(N0, L)"))
    assert "L=1: 1.00, L=2: 3.00, L=3: 2.00" in q.measured
    assert q.passed


def test_figures_are_labelled(frame):
    _, spectra, restoration, examples = TinyBerlyandSlavin().figures(frame)
    assert all(ax.get_ylabel() for ax in spectra.axes if ax.axison)
    assert restoration.axes[0].get_ylabel().endswith("(dB)")
    assert restoration.legends  # which bar is which net, and the damaged level
    assert all(ax.get_title() for ax in restoration.axes)
    assert "SquareNet(64" in examples.get_suptitle()
