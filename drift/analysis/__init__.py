"""Analyses of a run's training: exploration coverage (coverage.py), training dynamics
(dynamics.py) and the gradient-weight check (gradient_check.py). Each is a launch/analyze.py
command (drift/commands.py)."""
