"""Errors exitflow reports to its users.

Everything a user can cause (a malformed file, an unknown board, an illegal value, data of the
wrong shape) raises an :class:`ExitflowError`. The command line prints its message as one line
on stderr and exits with code 2; ``--debug`` adds the traceback. Any other exception is a bug in
exitflow and is reported as such.
"""

from __future__ import annotations

import threading

#: Set by the command line's Ctrl-C handler. Some library code catches every exception (a bare
#: ``except``) and goes on, swallowing the KeyboardInterrupt; long loops call
#: :func:`check_interrupt` between their steps, so the work still stops at the next step.
INTERRUPTED = threading.Event()


def check_interrupt() -> None:
    """Raise KeyboardInterrupt if Ctrl-C was pressed (see :data:`INTERRUPTED`)."""
    if INTERRUPTED.is_set():
        raise KeyboardInterrupt


class ExitflowError(Exception):
    """A problem with the user's input, explained in one line that says how to fix it."""

    exit_code = 2


class ConfigError(ExitflowError):
    """A configuration, design or board file is malformed or holds an illegal value."""


class BoardError(ConfigError):
    """An unknown board name, or a malformed board file."""


class RunFolderBusy(ConfigError):
    """Another exitflow process is writing the same run folder."""


class DataError(ExitflowError):
    """A data set file is missing, malformed, or holds data of the wrong shape or range."""


class NotAvailableError(ExitflowError):
    """A feature that needs a tool (Vivado, Vitis HLS, a board) or a later exitflow version that
    is not here. Exit code 3, so scripts can tell it from bad input."""

    exit_code = 3


class MismatchError(ExitflowError):
    """The cosimulation found samples on which the hardware differs from the model. Exit code 4,
    so scripts can tell a failed check from bad input (2)."""

    exit_code = 4
