"""Sweeps: expand an experiment's grid, skip finished cells, run the rest on Dask (or in
process), and commit each result to the store as it arrives."""

from losslab.engine.cell import run_cell
from losslab.engine.environment import machine_info, package_versions
from losslab.engine.keys import canonical_json, cell_key
from losslab.engine.sweep import (
    SINGLE_THREAD_ENV,
    PlannedCell,
    SweepSummary,
    default_workers,
    plan_cells,
    run_sweep,
)

__all__ = [
    "SINGLE_THREAD_ENV",
    "PlannedCell",
    "SweepSummary",
    "canonical_json",
    "cell_key",
    "default_workers",
    "machine_info",
    "package_versions",
    "plan_cells",
    "run_cell",
    "run_sweep",
]
