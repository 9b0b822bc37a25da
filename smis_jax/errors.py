"""Errors a user causes: a flag, a configuration value, a file or folder given on the command line.

Every such error derives from :class:`UserError`. The command-line entry points catch ``UserError`` only and print
``error: <message>`` (one line naming the file/key/value and what was expected) with exit status 2; any other
exception is a bug and keeps its traceback.

The concrete classes keep the builtin base they had (``ValueError``, ``FileNotFoundError``, ...) as a second base, so
library callers that catch ``ValueError`` or ``OSError`` keep working and ``pytest.raises(ValueError)`` still checks
the raise site.
"""

from __future__ import annotations

__all__ = ["UserError", "ConfigError", "InvalidValueError", "MissingFileError", "OutputExistsError", "ConversionError"]


class UserError(Exception):
    """An error the user caused and can fix; its message is one line naming what was wrong and what was expected."""


class ConfigError(UserError, ValueError):
    """A configuration value is invalid; the message names the field and the allowed values."""


class InvalidValueError(UserError, ValueError):
    """A value given by the user (a flag, an argument of the public API) is out of range; the message names it."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the user named (or that a named folder must hold) does not exist."""


class OutputExistsError(UserError, FileExistsError):
    """An output folder the user named already holds files."""


class ConversionError(UserError, ValueError):
    """A checkpoint does not match the architecture; the message names the key and both shapes."""
