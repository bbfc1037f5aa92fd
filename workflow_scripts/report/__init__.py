"""The training report: evaluation intervals, studies, summary sentences, tables and rendering."""
