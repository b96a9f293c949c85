from __future__ import annotations

from pathlib import Path

import pytest

from losslab.experiments import load_experiment

SAMPLES = Path(__file__).parent / "sample_experiments.py"


def sample_spec(name: str) -> str:
    """``FILE.py:OBJECT`` of an experiment in ``sample_experiments.py``."""
    return f"{SAMPLES}:{name}"


@pytest.fixture
def sample():
    """Load a sample experiment by object name, as a user's file is loaded."""

    def load(name: str):
        return load_experiment(sample_spec(name))

    return load


@pytest.fixture
def float64_default():
    """Make float64 torch's default dtype for one test, and restore the previous one."""
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)
