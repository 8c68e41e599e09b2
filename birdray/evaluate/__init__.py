"""Evaluation: test metrics, calibration (temperature) and their reports."""
