"""Ctrl-C and SIGTERM stop a command cleanly, even when Python would have lost the interrupt.

Python runs a signal handler in the main thread between two bytecodes, wherever they are. When
they are inside a weakref callback or a ``__del__`` (NumPy, h5py and tqdm all run some), the
``KeyboardInterrupt`` the handler raises is printed as "Exception ignored" and dropped, and the
command goes on as if no signal had come. So ``stop_on_signals`` makes the handler note the
signal as well as raise, and the long loops call ``raise_if_stopped()`` (after every training
step): a lost interrupt is raised again there, a step later.

    with stop_on_signals() as received:
        ...                                   # training calls raise_if_stopped()
    # received: the signals that came (SIGTERM in it: exit 143, as after the default action)
"""
from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager
from types import FrameType
from typing import Any, Iterator

#: the signals that stop a command: noted here while ``stop_on_signals`` is active
_received: list[int] = []


def raise_if_stopped() -> None:
    """Raise ``KeyboardInterrupt`` if a stop signal came and its own raise was lost."""
    if _received:
        raise KeyboardInterrupt


def _handle(signum: int, frame: FrameType | None) -> None:
    _received.append(signum)
    raise KeyboardInterrupt


def _unraisable_hook(previous: Any) -> Any:
    """A ``sys.unraisablehook`` that stays silent about a lost ``KeyboardInterrupt`` (the next
    ``raise_if_stopped`` raises it again) and passes everything else to ``previous``."""
    def hook(unraisable: Any) -> None:
        if _received and isinstance(unraisable.exc_value, KeyboardInterrupt):
            return
        previous(unraisable)
    return hook


@contextmanager
def stop_on_signals() -> Iterator[list[int]]:
    """Within the block SIGTERM, and Ctrl-C unless the process started with it ignored, raise
    ``KeyboardInterrupt`` and are noted in the list the block gets. Outside the main thread
    (where Python allows no handlers) nothing is installed and the list stays empty."""
    if threading.current_thread() is not threading.main_thread():
        yield []
        return
    _received.clear()
    previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, _handle)}
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        previous[signal.SIGINT] = signal.signal(signal.SIGINT, _handle)
    previous_hook = sys.unraisablehook
    sys.unraisablehook = _unraisable_hook(previous_hook)
    try:
        yield _received
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        sys.unraisablehook = previous_hook
        _received.clear()
