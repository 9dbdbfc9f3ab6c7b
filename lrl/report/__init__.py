"""Layer 4: the error-analysis page (`lrl report`). Reads what evaluate, lm tune, train and data prepare
wrote (never runs a model) and renders one self-contained HTML file. Imports lrl.core, lrl.train (file
names), lrl.evaluate (file names)."""

from lrl.report.build import REPORT_FILE, ReportConfig, ReportResult, write_report

__all__ = ["REPORT_FILE", "ReportConfig", "ReportResult", "write_report"]
