"""Figures shared by the report and the command line."""

from __future__ import annotations

from typing import TYPE_CHECKING

from matplotlib.figure import Figure

if TYPE_CHECKING:
    from losslab.convex.path import RegularizationPath


def path_figure(path: RegularizationPath) -> Figure:
    """Objective, neurons and the fit's sensitivity against ``lam`` (log scale)."""
    figure = Figure(figsize=(9, 3))
    objective, neurons, sensitivity = figure.subplots(1, 3)
    lams = path.lams
    objective.loglog(lams, [p.result.objective for p in path.points], "o-", ms=3)
    objective.set_ylabel("optimal objective")
    neurons.semilogx(lams, [p.n_neurons for p in path.points], "o-", ms=3)
    neurons.set_ylabel("neurons")
    sensitivity.loglog(lams, [max(s, 1e-300) for s in path.sensitivity], "o-", ms=3)
    sensitivity.set_ylabel("||d fit / d lam||")
    for axes in (objective, neurons, sensitivity):
        axes.set_xlabel("lam")
        axes.axvline(path.lam_max, color="grey", lw=0.8, ls=":")
        for i in path.jumps:
            axes.axvspan(lams[i + 1], lams[i], color="orange", alpha=0.3)
    figure.tight_layout()
    return figure
