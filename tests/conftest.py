from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hypothesis import settings

from losslab.experiments import load_experiment

# Property tests draw the same examples on every run (CI failures reproduce);
# HYPOTHESIS_PROFILE=explore draws fresh ones, for a search for new counterexamples.
settings.register_profile("repeatable", derandomize=True, print_blob=True)
settings.register_profile("explore", print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))

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


@pytest.fixture(autouse=True)
def seeded_global_generators():
    """Seed torch's global generator before every test, so that a test that
    draws from it gets the same numbers whatever ran before it (or alone, with -k)."""
    torch.manual_seed(0)


@pytest.fixture
def float64_default():
    """Make float64 torch's default dtype for one test, and restore the previous one."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)
