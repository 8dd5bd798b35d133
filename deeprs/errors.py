"""The one exception type a user sees as a single clear sentence (no traceback)."""

from __future__ import annotations


class DeeprsError(Exception):
    """A problem with the user's input or config.

    The message is one sentence naming the file or config key and what to do about it;
    the CLI prints it and exits with status 2.
    """


class ConfigError(DeeprsError):
    """The config does not match the schema or points at something that does not exist."""


class DataError(DeeprsError):
    """An input image, label or case list cannot be used as it is."""


class WriteError(DeeprsError):
    """An output could not be written whole (a full disk, a read-only folder); nothing was kept."""
