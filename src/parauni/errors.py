"""The errors of bad input, which ``parauni`` reports as one ``error: ...`` line (exit status 2, no traceback).

Everything else that escapes a command is a bug and keeps its traceback.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A config value (file, ``key=value`` override or default) that cannot work; the message names the key,
    the value and what is allowed."""


class UnknownKeyError(ConfigError, KeyError):
    """A config key that no section has. Also a ``KeyError`` (what unknown keys raised before)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class UsageError(ValueError):
    """A bad command line: an option out of range, a missing or wrong kind of file, an unavailable device."""


class DivergedError(ConfigError, FloatingPointError):
    """A training run whose loss became non-finite (a learning rate too large, bad data); the message names the
    settings to change. Also a ``FloatingPointError`` (what it raised before)."""


class UnknownNameError(UsageError, KeyError):
    """A name no registry knows (a model, reward, data kind ...). Also a ``KeyError``, as a failed lookup is."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class WeightsMismatchError(UsageError, KeyError):
    """A weights file that does not fit its model: missing, unexpected or mis-shaped tensors (all named)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class TrainingStalledError(UsageError):
    """A run that cannot learn with its settings (every reward NaN or equal within groups, no optimizer step, for
    several epochs in a row); the message names the cause and the setting to change."""
