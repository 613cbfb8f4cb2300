"""Evaluation utilities: classification reports, metrics and plots."""
