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
