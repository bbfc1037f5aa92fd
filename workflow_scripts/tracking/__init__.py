"""Experiment tracking: one MLflow and/or SwanLab run per experiment, logged from the files."""
