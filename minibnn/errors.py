"""User-facing errors.

Every problem a user can cause (bad shape, dtype, range, missing or corrupt file, no GPU) is
raised as a ``MinibnnError`` with a one-line message naming the problem.  The CLI prints the
message alone (no traceback) and exits with status 2.
"""


class MinibnnError(ValueError):
    """A problem with the user's input, reported in one line."""


class ShapeError(MinibnnError):
    """An array has the wrong number of dimensions or the wrong size."""


class DTypeError(MinibnnError):
    """An array has a dtype this operation does not accept."""


class DataFileError(MinibnnError):
    """A data or run file is missing, corrupt, or does not match what was expected."""


class DeviceError(MinibnnError):
    """The requested device (GPU) is not available."""


def closed_pipe_exit() -> int:
    """What a command returns when its reader went away (``minibnn show ... | head``).

    The rest of the output has nowhere to go: point stdout at /dev/null so the interpreter's
    final flush does not raise again, and exit 1 quietly, as Python's documentation advises
    for a ``BrokenPipeError`` (no traceback, no message: the reader asked for no more).
    """
    import os
    import sys

    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    finally:
        os.close(devnull)
    return 1


def os_reason(exc: BaseException) -> str:
    """One line saying why an OS-level operation failed: ``os.strerror(errno)`` ("No space
    left on device") where the error has an errno; else the error message HDF5 puts inside
    its multi-line text; else the first non-empty line of the message."""
    import os
    import re

    errno = getattr(exc, "errno", None)
    if isinstance(errno, int) and errno > 0:
        return os.strerror(errno)
    text = str(getattr(exc, "strerror", None) or exc)
    found = re.search(r"error message = '([^']+)'", text)
    if found:
        return found.group(1)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
