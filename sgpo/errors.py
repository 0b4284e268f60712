"""The one error type for anything a user can cause and fix (a bad setting, a missing or
unreadable file, a run folder that holds another run, a full disk). ``sgpo`` prints its
message as one line and exits with status 2, without a traceback; library callers catch it
like any ``ValueError``."""

from __future__ import annotations


class UserError(ValueError):
    """A problem with the user's input or environment. The message is one line that names
    the setting or the file."""


class Interrupted(Exception):
    """A run stopped on a signal (SIGTERM from a scheduler, SIGINT from Ctrl-C) after saving
    what it had; ``sgpo`` prints the message (which says where it saved) and exits with
    ``128 + signal number`` (143, 130), as a process killed by the signal would."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum


_NOTED: set[str] = set()


def note_once(message: str) -> None:
    """Say once per process (on stderr) that sgpo chose something on the user's behalf: a
    dtype, a prompt format, a pad token. Nothing is chosen silently."""
    if message not in _NOTED:
        import sys

        _NOTED.add(message)
        print(f"sgpo: note: {message}", file=sys.stderr, flush=True)


__all__ = ["UserError", "Interrupted", "note_once"]
