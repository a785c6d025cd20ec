"""Plumbing shared by every ``chronicle`` command group (conventions: shared spec cli.md).

Exit codes: 0 success; 1 verification failed or request refused; 2 usage error;
3 transport or I/O error. Errors are one ``error: …`` line on stderr (``--debug`` for a
traceback); ``--json`` prints exactly one JSON object on stdout.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from functools import wraps
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from chronicle.config import ConfigError
from chronicle.core.errors import ChronicleError, StorageError, TransportError
from chronicle.core.sapient import parse_public_key

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_IO = 0, 1, 2, 3

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


class Failure(Exception):
    """A command's own refusal, with the exit code to leave with."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def fail(message: str, code: int = EXIT_REFUSED) -> NoReturn:
    raise Failure(message, code)


def exit_code(exc: ChronicleError) -> int:
    if isinstance(exc, TransportError | StorageError | ConfigError):
        return EXIT_IO
    return EXIT_REFUSED


def handle_errors(fn: F) -> F:
    """Map our exceptions to one stderr line and the documented exit code."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        debug = bool(click.get_current_context().find_root().params.get("debug"))
        try:
            return fn(*args, **kwargs)
        except Failure as exc:
            if debug:
                raise
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.code)
        except ChronicleError as exc:
            if debug:
                raise
            click.echo(f"error: {exc.diagnostics()}", err=True)
            sys.exit(exit_code(exc))
        except OSError as exc:
            if debug:
                raise
            click.echo(f"error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "),
                       err=True)
            sys.exit(EXIT_IO)

    return wrapper  # type: ignore[return-value]


def run(coro: Awaitable[T]) -> T:
    return asyncio.run(coro)  # type: ignore[arg-type]


def out(as_json: bool, payload: dict[str, Any], text: str) -> None:
    click.echo(json.dumps(payload) if as_json else text)


def data_dir_option(fn: F) -> F:
    return click.option("--data-dir", envvar="CHRONICLE_DATA_DIR", required=True,
                        type=click.Path(file_okay=False, path_type=Path),
                        help="Ledger data directory (default: $CHRONICLE_DATA_DIR).")(fn)


def instance_option(fn: F) -> F:
    return click.option("--instance", default="",
                        help="Chain name (default chain if omitted).")(fn)


def public_key(text: str, hint: str = "--public-key") -> bytes:
    try:
        return parse_public_key(text.strip())
    except ChronicleError as exc:
        raise click.BadParameter(exc.message, param_hint=hint) from None
