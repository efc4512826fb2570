"""Saving matplotlib figures the way every minibnn command does: the path checked before any work,
a one-line error, no leak."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
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


def supported_plot_formats() -> dict[str, str]:
    """Extensions matplotlib can save (``{ext: description}``), from its own canvas."""
    from matplotlib.figure import Figure

    return dict(Figure().canvas.get_supported_filetypes())


def check_plot_path(path: str | Path, only: tuple[str, ...] | None = None) -> Path:
    """Refuse, before any work, a plot path matplotlib cannot write: empty, an unknown or
    missing extension (``only``: the formats this plot is drawn in; default every format
    matplotlib saves), a folder, a missing or read-only folder, pgf without its TeX program."""
    if str(path) == "":
        raise MinibnnError(f"--plot is empty; give an image file name, e.g. "
                           f"out.{(only or ('png',))[0]}")
    p = Path(path)
    formats = supported_plot_formats()
    if only is not None:
        formats = {ext: formats[ext] for ext in only}
    listed = ", ".join(sorted(formats))
    ext = p.suffix[1:].lower()
    if not ext:
        raise MinibnnError(f"--plot {path} has no extension to pick the image format from: "
                           f"add one of {listed}")
    if ext not in formats:
        raise MinibnnError(f"--plot {path}: unknown image format .{ext}; supported: {listed}")
    if p.is_dir():
        raise MinibnnError(f"--plot {path} is a folder: give a file name, e.g. "
                           f"{p / ('plot.' + ext)}")
    folder = p.parent
    if not folder.exists():
        raise MinibnnError(f"--plot {path}: the folder {folder} does not exist")
    if not folder.is_dir():
        raise MinibnnError(f"--plot {path}: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise MinibnnError(f"--plot {path}: the folder {folder} is not writable")
    if ext == "pgf":
        import matplotlib

        tex = matplotlib.rcParams["pgf.texsystem"]
        if shutil.which(tex) is None:
            raise MinibnnError(f"--plot {path}: .pgf needs {tex} (LaTeX), which is not "
                               "installed; pick another format, e.g. .pdf or .svg")
    return p
