"""Stage rules/report.smk: metric tables with intervals, studies, plots, summary and the
rendered report."""
