"""The analyses' figures: matplotlib drawing to files only, PNGs written whole or not at all."""

from __future__ import annotations

from pathlib import Path

from drift.io import atomic_target


def pyplot():
    """matplotlib.pyplot on the Agg backend (never a window), or None when matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(figure, path: Path) -> None:
    """matplotlib writes the file itself: to drift.io's temp path, renamed over ``path`` once whole."""
    with atomic_target(path) as staging:
        figure.savefig(staging, format="png", dpi=110, bbox_inches="tight")
