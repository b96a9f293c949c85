"""Experiments: one module per paper (grid, run(cell), figures, claims), and the registry.

Registered experiments are listed in :data:`REGISTERED_MODULES` and found by name with
:func:`load_experiment`, which also loads a user's own experiment from ``FILE.py:OBJECT``.
"""

from losslab.experiments.protocol import Claim, Experiment, check_experiment
from losslab.experiments.registry import (
    REGISTERED_MODULES,
    LoadedExperiment,
    load_experiment,
    registered_experiments,
)

__all__ = [
    "REGISTERED_MODULES",
    "Claim",
    "Experiment",
    "LoadedExperiment",
    "check_experiment",
    "load_experiment",
    "registered_experiments",
]
