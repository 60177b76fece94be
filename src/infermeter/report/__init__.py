"""The HTML report of both papers' figures, and the figure functions it is made of.

from infermeter.report import ReportInputs, build_report
build_report(ReportInputs(stores=[Path("infermeter.sqlite")])).write("report.html")
"""

from infermeter.report.build import Report, ReportInputs, build_report

__all__ = ["Report", "ReportInputs", "build_report"]
