"""What every Hydra entry point shares: where the configs are, and how a user's mistake ends a job."""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import ContextDecorator, contextmanager

from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException, ValidationError

from delving.config import register_all, register_resolvers
from delving.config_files import config_dir, config_path
from delving.engine.signals import end_on_signal
from delving.errors import UserError, safe_message
from delving.run_identity import global_rank

__all__ = [
    "CONFIG_DIR",
    "CONFIG_PATH",
    "EXIT_USER_ERROR",
    "ends_quietly_on_ctrl_c",
    "register_all",
    "register_resolvers",
    "user_errors",
]

# @hydra.main(config_path=CONFIG_PATH): pkg://delving.configs, or $DELVING_CONFIG_DIR.
CONFIG_PATH = config_path()
# The same configs as a folder on disk (compose in tests and scripts, listing experiments).
CONFIG_DIR = str(config_dir())
EXIT_USER_ERROR = 2


def describe(error: BaseException) -> str:
    """One line for a user's mistake: the message without unsafe loading advice, or the config key at fault."""
    if isinstance(error, MissingMandatoryValue):
        key = error.full_key or "a required value"
        return f"{key} is not set: add {key}=<value> to the command"
    if isinstance(error, OmegaConfBaseException):
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return safe_message(f"{error.full_key}: {first}" if error.full_key else first)
    return safe_message(error)


def report_user_error(error: BaseException) -> None:
    """`error: <message>` on stderr and in the run's log files, on global rank 0 only (once per job)."""
    if global_rank() != 0:
        return
    message = describe(error)
    print(f"error: {message}", file=sys.stderr, flush=True)
    logger = logging.getLogger("delving")
    record = logger.makeRecord(logger.name, logging.ERROR, __file__, 0, "%s", (message,), None)
    for handler in logger.handlers:  # the log files (train.log): the terminal already has the line above
        if isinstance(handler, logging.FileHandler) and record.levelno >= handler.level:
            handler.handle(record)


class user_errors(ContextDecorator):  # a lower-case name: it reads as the function it used to be
    """Wrap an entry point's task (`@user_errors()` under `@hydra.main`): a UserError, or a config value
    OmegaConf refuses while the task reads it, ends the job with one line and exit code 2.

    HYDRA_FULL_ERROR=1 re-raises instead, with the traceback. Other exceptions are bugs and keep theirs.
    A class, not a @contextmanager: the submitit launcher pickles the wrapped task, and a generator-based
    decorator holds a generator, which cannot be pickled.
    """

    def __enter__(self) -> user_errors:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: object) -> bool:
        if not isinstance(error, UserError | MissingMandatoryValue | ValidationError):
            return False
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            return False
        report_user_error(error)
        raise SystemExit(EXIT_USER_ERROR) from None


@contextmanager
def ends_quietly_on_ctrl_c(command: str, kept: Callable[[], str]) -> Iterator[None]:
    """Around an entry point's work: a Ctrl-C (SIGINT) ends it with one line on stderr, `<command>: interrupted
    (Ctrl-C); <kept()>` (what was done and what was written), then on SIGINT itself, as delving-train ends: a
    shell sees 130 and a loop around the command stops. HYDRA_FULL_ERROR=1 keeps the traceback."""
    try:
        yield
    except KeyboardInterrupt:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        if global_rank() == 0:
            print(f"{command}: interrupted (Ctrl-C); {kept()}", file=sys.stderr, flush=True)
        end_on_signal(signal.SIGINT)
