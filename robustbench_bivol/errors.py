"""User-facing errors: the CLI prints their message on one line and exits non-zero, no traceback."""
from __future__ import annotations


class BivolError(Exception):
    """A problem the user can fix (bad name, missing file, wrong checkpoint, ...)."""

    exit_code = 1


class UsageError(BivolError):
    """Invalid or conflicting command-line options."""

    exit_code = 2


class CheckpointError(BivolError):
    """A checkpoint that cannot be read, is unsafe, or does not fit the model."""


class DatasetError(BivolError):
    """A dataset that is missing, empty or unreadable."""
