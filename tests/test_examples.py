from __future__ import annotations

from pathlib import Path

from losslab.engine import run_sweep
from losslab.experiments import load_experiment
from losslab.store import ResultStore

EXAMPLES = Path(__file__).parent.parent / "examples"


def test_ridge_example_reaches_the_closed_form_optimum(tmp_path):
    loaded = load_experiment(f"{EXAMPLES / 'ridge_experiment.py'}:EXPERIMENT")
    with ResultStore(tmp_path / "r.sqlite") as store:
        summary = run_sweep(loaded.experiment, store=store, workers=0, progress=False)
        frame = store.frame("ridge-gd", arrays=True)
    assert (summary.done, summary.failed) == (8, 0)
    (claim,) = loaded.experiment.claims(frame)
    assert claim.passed, claim.measured
    assert len(loaded.experiment.figures(frame)) == 1
