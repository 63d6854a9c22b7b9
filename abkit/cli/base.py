"""What every ``abkit`` command shares: the context, and the translation of errors at the edge.

Inner layers name the problem in abkit's terms; :func:`errors` prints it with the words of the
command line (the option the user typed, the command that fixes it) and exits with the code a
pipeline can branch on (:class:`ExitCode`).
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from enum import IntEnum
from typing import TYPE_CHECKING, Any, NoReturn

import click

from abkit.config import Settings
from abkit.errors import (
    AbkitError,
    ConflictError,
    NotFoundError,
    SchemaOutOfDateError,
    StatisticsMismatchError,
    StoreUnavailableError,
    ValidationError,
)

if TYPE_CHECKING:
    from abkit.runtime import Runtime


class ExitCode(IntEnum):
    """Every exit code of the ``abkit`` command, for pipelines to branch on (the table is in
    docs/cli.md). 0-6 are any command's; 10-13 are ``abkit wait``'s verdicts."""

    OK = 0
    """Success; for ``abkit wait``: the experiment promoted a treatment arm."""
    UNEXPECTED = 1
    INVALID_INPUT = 2
    NOT_FOUND = 3
    REFUSED = 4
    """Valid input the current state refuses (e.g. new arms for a running experiment)."""
    STORE_UNREACHABLE = 5
    """The store cannot be reached, or its schema is not migrated."""
    STATISTICS_MISMATCH = 6
    ROLLED_BACK = 10
    STOPPED_INCONCLUSIVE = 11
    HELD_TOO_LONG = 12
    """Paused, or every look holding, for longer than ``abkit wait --max-hold``."""
    TIMED_OUT = 13


EXIT_CODES: tuple[tuple[type[AbkitError], ExitCode], ...] = (
    (ValidationError, ExitCode.INVALID_INPUT),
    (NotFoundError, ExitCode.NOT_FOUND),
    (ConflictError, ExitCode.REFUSED),
    (StoreUnavailableError, ExitCode.STORE_UNREACHABLE),
    (StatisticsMismatchError, ExitCode.STATISTICS_MISMATCH),
)

log = logging.getLogger("abkit")


REMEDIES: tuple[tuple[type[AbkitError], str], ...] = (
    (SchemaOutOfDateError, "run `abkit db upgrade`"),
    (NotFoundError, "`abkit experiment list` shows the experiments"),
)
"""What to type about an error, added here: inner layers name the problem in abkit's terms, the
command line names the command."""


def fail(exc: AbkitError, flags: Mapping[str, str] | None = None, hint: str = "") -> NoReturn:
    """Print ``exc`` with the command's own words for it, and exit with its code.

    ``flags`` renames a :class:`ValidationError`'s field to the option the user typed
    (``older_than`` -> ``--older-than``); ``hint`` (or the general remedy for the error's kind)
    is appended.
    """
    message = str(exc)
    if isinstance(exc, ValidationError) and flags and exc.field in flags:
        message = f"{flags[exc.field]}: {exc.message}"
    remedy = hint or next((r for kind, r in REMEDIES if isinstance(exc, kind)), "")
    click.echo(f"error: {message}" + (f"; {remedy}" if remedy else ""), err=True)
    sys.exit(exit_code(exc))


def exit_code(exc: AbkitError) -> ExitCode:
    """The exit code of an error (:data:`EXIT_CODES`; anything else is unexpected)."""
    return next((c for kind, c in EXIT_CODES if isinstance(exc, kind)), ExitCode.UNEXPECTED)


@contextmanager
def errors(
    flags: Mapping[str, str] | None = None,
    hints: Mapping[type[AbkitError], str] | None = None,
) -> Iterator[None]:
    """Translate abkit's errors at the edge: message, remedy, exit code (see :func:`fail`)."""
    try:
        yield
    except AbkitError as exc:
        hint = next((h for kind, h in (hints or {}).items() if isinstance(exc, kind)), "")
        fail(exc, flags, hint)


class Context:
    """Lazily built pieces shared by the subcommands."""

    def __init__(self, settings: Settings, *, verbose: bool = False) -> None:
        self.settings = settings
        self.verbose = verbose

    def runtime(self) -> Any:
        """A runtime for a server command, which starts and closes it itself."""
        from abkit.runtime import Runtime

        return Runtime.from_settings(self.settings)

    def open_runtime(self) -> AbstractContextManager[Runtime]:
        """A runtime for one command, always closed when the command ends."""
        from abkit.runtime import open_runtime

        return open_runtime(self.settings)


pass_ctx = click.make_pass_decorator(Context)


def print_table(rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())


def wait_for_signal() -> None:
    stopping = threading.Event()

    def _on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %s: stopping gracefully", signum)
        stopping.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    stopping.wait()
