"""The one base class of every mistake a user can fix: entry points print its message as one line."""

from __future__ import annotations


class UserError(Exception):
    """A wrong config value, file or command: the message names the key or file, the value, and what to do.

    Entry points print it as one line (no traceback unless HYDRA_FULL_ERROR=1), once per job.
    """
