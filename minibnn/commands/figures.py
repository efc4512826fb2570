"""Saving matplotlib figures the way every minibnn command does: a one-line error, no leak."""
from __future__ import annotations

from typing import Any

from minibnn.errors import MinibnnError, os_reason


def save_figure(fig: Any, path: str, dpi: int) -> None:
    """``fig.savefig(path)``, an OSError as a one-line ``MinibnnError``; the figure is closed."""
    import matplotlib.pyplot as plt

    try:
        fig.savefig(path, dpi=dpi)
    except OSError as exc:
        raise MinibnnError(f"cannot write plot {path}: {os_reason(exc)}") from None
    finally:
        plt.close(fig)
