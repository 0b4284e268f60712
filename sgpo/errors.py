"""The one error type for anything a user can cause and fix (a bad setting, a missing or
unreadable file, a run folder that holds another run, a full disk). ``sgpo`` prints its
message as one line and exits with status 2, without a traceback; library callers catch it
like any ``ValueError``."""

from __future__ import annotations


class UserError(ValueError):
    """A problem with the user's input or environment. The message is one line that names
    the setting or the file."""


__all__ = ["UserError"]
