"""Analyses of runs: one module per `python launch/analyze.py <command>`, each with main(overrides)."""
