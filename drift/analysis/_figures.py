"""The analyses' figures: matplotlib drawing to files only, PNGs written whole or not at all."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


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
    """Through a temp file beside ``path`` and a rename, as drift.io writes text: drift.io has no
    binary writer, and matplotlib writes the file itself."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        figure.savefig(staging, format="png", dpi=110, bbox_inches="tight")
        os.replace(staging, path)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise
