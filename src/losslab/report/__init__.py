"""Figures and the static HTML report."""

from losslab.report.site import ExperimentSection, Report, write_report

__all__ = ["ExperimentSection", "Report", "write_report"]
