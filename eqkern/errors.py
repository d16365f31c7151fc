"""The errors eqkern raises on purpose: bad arguments, bad files, refused runs.

Every one is an :class:`EqkernError`, so the command line can print it as one line (exit code 2)
and treat anything else as a bug (a traceback). Each also derives from the built-in exception a
caller would expect (``ValueError``, ``TypeError``, ``FileNotFoundError``, ``RuntimeError``), so
``except ValueError`` keeps working.
"""

from __future__ import annotations

__all__ = ["EqkernError", "ArgumentError", "ArgumentTypeError", "MissingFileError",
           "DataFileError", "CheckpointError", "RunFolderError", "DivergenceError", "first_line"]


class EqkernError(Exception):
    """Base of every error eqkern raises deliberately (a user-facing message, not a bug)."""


class ArgumentError(EqkernError, ValueError):
    """An argument or config field has a value out of its range, choices or shape."""


class ArgumentTypeError(EqkernError, TypeError):
    """An argument has the wrong type or dtype."""


class MissingFileError(EqkernError, FileNotFoundError):
    """A file eqkern was asked to read (data, checkpoint, teacher) is not there."""


class DataFileError(EqkernError, ValueError):
    """A data file (``.npz``, torchvision folder) is truncated, corrupt or holds wrong arrays."""


class CheckpointError(EqkernError, RuntimeError):
    """A checkpoint or teacher file cannot be read, or does not describe a valid network."""


class RunFolderError(EqkernError, RuntimeError):
    """An output folder holds another run, is locked by a running process, or is not writable."""


class DivergenceError(EqkernError, FloatingPointError):
    """Training produced NaN/inf (the message names the layer); the last checkpoint is kept."""


def first_line(exc: BaseException) -> str:
    """``"Type: first line"`` of an exception from a library (torch's often end in a paragraph
    and a documentation link), to quote inside a one-line message of ours."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
