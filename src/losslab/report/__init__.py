"""Figures and the static HTML report."""

from losslab.report.figures import path_figure
from losslab.report.site import ExperimentSection, Report, write_report

__all__ = ["ExperimentSection", "Report", "path_figure", "write_report"]
