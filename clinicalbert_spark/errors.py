"""Operator errors and the exit codes the jobs return for them.

Every error an operator can fix (a bad flag, a missing input, an output folder that cannot be
written, a model that is not there, another run holding the output root) derives from
:class:`OperatorError` and carries its exit code. ``jobs/*`` print such an error as one line,
never a trace. Messages name paths, columns and settings, never data values (note text is PHI).

=====  ==========================================================================
code   meaning
=====  ==========================================================================
0      success
1      unexpected failure (a bug or a cluster fault); the log has the error type
2      configuration or usage error (flag, config file, run id)
3      input error (input missing, unreadable, or lacking the configured columns)
4      output error (output root not a writable folder, unsafe change refused)
5      model error (model files missing, a pickle that would run code refused, no head)
75     another run holds the output root's lock; retry later (EX_TEMPFAIL)
=====  ==========================================================================
"""
from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2
EXIT_INPUT = 3
EXIT_OUTPUT = 4
EXIT_MODEL = 5
EXIT_LOCKED = 75


class OperatorError(ValueError):
    """An error the operator can fix; printed as one line, exit code :attr:`exit_code`."""

    exit_code = EXIT_FAILURE


class ConfigError(OperatorError):
    """A configuration file, flag or override is invalid."""

    exit_code = EXIT_CONFIG


class InputError(OperatorError):
    """The input path, format or columns are not usable."""

    exit_code = EXIT_INPUT


class OutputError(OperatorError):
    """The output root cannot be written, or a run would change it unsafely."""

    exit_code = EXIT_OUTPUT


class LockedError(OperatorError):
    """Another run is writing to the same output root."""

    exit_code = EXIT_LOCKED
