"""Ctrl-C and SIGTERM stop a command cleanly, even when Python would have lost the interrupt.

Python runs a signal handler in the main thread between two bytecodes, wherever they are. When
they are inside a weakref callback or a ``__del__`` (NumPy, h5py and tqdm all run some), the
``KeyboardInterrupt`` the handler raises is printed as "Exception ignored" and dropped, and the
command goes on as if no signal had come. So ``stop_on_signals`` makes the handler note the
signal as well as raise, and the long loops call ``raise_if_stopped()`` (after every training
step, and while a sweep waits for its workers): a lost interrupt is raised again there.

    with stop_on_signals() as received:
        try:
            ...                               # training calls raise_if_stopped()
        except KeyboardInterrupt:
            ...                               # received: the signals that came (SIGTERM in
                                              # it: exit 143, as after the default action)
"""
from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager
from types import FrameType
from typing import Any, Iterator

#: the stop signals noted by the innermost active ``stop_on_signals`` block (a fresh list per
#: block; an empty list outside every block)
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
    """Within the block SIGTERM, and Ctrl-C where its handler is Python's default one (not a
    process that started with it ignored, nor a caller's own handler), raise
    ``KeyboardInterrupt`` and are noted in the list the block gets, which keeps them after the
    block. Outside the main thread (where Python allows no handlers) nothing is installed and
    the list stays empty."""
    global _received
    if threading.current_thread() is not threading.main_thread():
        yield []
        return
    outer, received = _received, []
    previous_hook = sys.unraisablehook
    previous: dict[int, Any] = {}
    try:
        _received = received
        sys.unraisablehook = _unraisable_hook(previous_hook)
        previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, _handle)
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            previous[signal.SIGINT] = signal.signal(signal.SIGINT, _handle)
        yield received
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        sys.unraisablehook = previous_hook
        _received = outer
