"""Matplotlib helpers (Agg backend, atomic PNG writes) shared by training curves, confusion
matrices and benchmark plots."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from toolkit.core.outputs import staged


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend: files only, never a window (no display is assumed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Save a matplotlib figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    try:
        with staged(path) as tmp:
            fig.tight_layout()
            fig.savefig(tmp, dpi=dpi, format="png")
    finally:
        plt.close(fig)
    return Path(path)
