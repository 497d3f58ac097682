"""Matplotlib helpers (Agg backend, atomic PNG writes) shared by training curves, confusion
matrices and benchmark plots."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Save a matplotlib figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    from toolkit.files import staged

    try:
        with staged(path) as tmp:
            fig.tight_layout()
            fig.savefig(tmp, dpi=dpi, format="png")
    finally:
        plt.close(fig)
    return Path(path)
