"""What every ``chronicle`` command shares (conventions: shared spec cli.md).

- The exit codes, all of them: 0 success; 1 verification failed or request refused;
  2 usage error; 3 transport or I/O error; 10-17 ``chronicle audit``'s fault classes.
- The one error handler (:func:`handle_errors`): our exceptions, by class, become one
  ``error: …`` line on stderr and the documented code; ``--debug`` re-raises them for a
  traceback.
- :func:`open_store`: a data directory's settings and store, always closed again;
  :func:`open_witness`: a witness directory's store, likewise.
- The shared options (``--data-dir``, ``--instance``, ``--json``, ``--format``), the
  parameter parsers and the output helper.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import wraps
from pathlib import Path
from typing import Any, NoReturn, TypeVar, overload
from urllib.parse import quote

import click

from chronicle.audit.runner import UsageProblem
from chronicle.client.errors import ServerRefused
from chronicle.client.http import api_base, split_instance
from chronicle.config import (
    ConfigError,
    DataDir,
    Settings,
    SettingsDir,
    WitnessDir,
    write_secret_file,
)
from chronicle.core.errors import ChronicleError, StorageError, TransportError
from chronicle.core.sapient import SigningKey, parse_public_key
from chronicle.core.verify import ChainFault
from chronicle.ledger import Ledger
from chronicle.store import Store
from chronicle.store import open_store as store_for_url
from chronicle.store.schema import SchemaStore
from chronicle.store.witness import WitnessStore, open_witness_store

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])
StoreT = TypeVar("StoreT", bound=SchemaStore)

# --- exit codes -------------------------------------------------------------------------------

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_IO = 3
#: Ctrl-C during ``chronicle audit`` (the shell's 128 + SIGINT).
EXIT_INTERRUPTED = 130


@dataclass(frozen=True)
class FaultClass:
    """A refinement of :data:`EXIT_REFUSED`: a :class:`ChainFault` ``kind`` and its code."""

    kind: str
    code: int
    meaning: str


#: ``chronicle audit``'s exit code per fault class (cli.md: refinements of 1 are >= 10).
FAULT_CLASSES = (
    FaultClass("document-signature", 10,
               "bad document/response signature (not signed by the pinned key)"),
    FaultClass("entry-signature", 11, "bad entry signature"),
    FaultClass("broken-link", 12, "broken link (prev is not the previous currhash)"),
    FaultClass("hash-mismatch", 13, "hash mismatch (currhash or summaryhash)"),
    FaultClass("anchor", 14, "truncated: the chain does not reach the anchor / signed head, "
               "or total is wrong"),
    FaultClass("malformed", 15, "malformed document or answer (not JSON, missing field, "
               "stale, off-request)"),
    FaultClass("history-rewritten", 16, "history rewritten (the head remembered in --state "
               "is no longer on the chain)"),
    FaultClass("split-view", 17, "split view (a peer disagrees, or fewer than --quorum peers "
               "confirm)"),
)
FAULT_EXIT_CODES: dict[str, int] = {fault.kind: fault.code for fault in FAULT_CLASSES}

#: Our exceptions by class, most specific first; anything else is a bug (a traceback).
EXIT_CODES: tuple[tuple[type[Exception], int], ...] = (
    (UsageProblem, EXIT_USAGE),
    (TransportError, EXIT_IO),
    (StorageError, EXIT_IO),
    (ConfigError, EXIT_IO),
    (OSError, EXIT_IO),
    (ChronicleError, EXIT_REFUSED),
)
#: The ``fault`` an error object (``--json``) names for each code.
_FAULT_NAMES = {EXIT_REFUSED: "refused", EXIT_USAGE: "usage", EXIT_IO: "transport"}


# --- errors -----------------------------------------------------------------------------------

class Failure(Exception):
    """A command's own refusal, with the exit code to leave with."""

    def __init__(self, message: str, code: int = EXIT_REFUSED) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def fail(message: str, code: int = EXIT_REFUSED) -> NoReturn:
    """Stop the command: ``error: message`` on stderr, exit ``code``."""
    raise Failure(message, code)


def exit_with_error(message: str, code: int) -> NoReturn:
    """Print the one ``error: …`` line and exit (output already printed stays)."""
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


@dataclass(frozen=True)
class ErrorReport:
    """How one exception leaves the command: the exit code, the line, and (for an error
    object on stdout) the details."""

    code: int
    line: str
    details: dict[str, Any]


def _os_error_line(exc: OSError) -> str:
    return f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": ")


def fault_line(exc: ChainFault) -> str:
    """``KIND at entry N (field F): expected …, found … - message``."""
    where = f" at entry {exc.index}" if exc.index is not None else ""
    field = f" (field {exc.field})" if exc.field else ""
    detail = ""
    if exc.expected is not None or exc.found is not None:
        detail = f": expected {exc.expected!r}, found {exc.found!r}"
    return f"{exc.kind}{where}{field}{detail} - {exc.message}"


def error_report(exc: BaseException, *, fault_codes: Mapping[str, int] | None = None
                 ) -> ErrorReport | None:
    """What ``exc`` means for the command line; None if it is not one of ours (a bug).

    ``fault_codes``: a command that documents the fault classes (``audit``) refines
    :data:`EXIT_REFUSED` by the :class:`ChainFault`'s kind.
    """
    if isinstance(exc, Failure):
        return ErrorReport(exc.code, exc.message,
                           {"fault": _FAULT_NAMES.get(exc.code, "refused"),
                            "message": exc.message})
    if fault_codes is not None and isinstance(exc, ChainFault):
        return ErrorReport(fault_codes.get(exc.kind, EXIT_REFUSED), fault_line(exc),
                           exc.as_dict())
    code = next((code for cls, code in EXIT_CODES if isinstance(exc, cls)), None)
    if code is None:
        return None
    if isinstance(exc, OSError):
        line = _os_error_line(exc)
        return ErrorReport(code, line, {"fault": _FAULT_NAMES[code], "message": line})
    assert isinstance(exc, ChronicleError)
    details: dict[str, Any] = {"fault": _FAULT_NAMES[code]}
    if isinstance(exc, ServerRefused):
        details["status"] = exc.status
    details["message"] = exc.message
    return ErrorReport(code, exc.diagnostics(), details)


_ERROR_OBJECT = "chronicle.error-object"


def report_errors_as_json(payload: dict[str, Any]) -> None:
    """From now on, the running command also reports an error as one JSON object on
    stdout: ``{"ok": false, "exit-code": N, **payload, **details}`` (``audit --json``)."""
    click.get_current_context().meta[_ERROR_OBJECT] = payload


@overload
def handle_errors(fn: F, /) -> F: ...


@overload
def handle_errors(*, fault_codes: Mapping[str, int] | None = None,
                  interrupt: bool = False) -> Callable[[F], F]: ...


def handle_errors(fn: F | None = None, /, *, fault_codes: Mapping[str, int] | None = None,
                  interrupt: bool = False) -> F | Callable[[F], F]:
    """The error handler of every command: ``@handle_errors``.

    Our exceptions (:func:`error_report`) become one ``error: …`` line and their code;
    ``--debug`` lets them through for a traceback. ``fault_codes`` refines code 1 by fault
    class; ``interrupt``: Ctrl-C ends with ``error: interrupted`` and code 130.
    """

    def decorate(command: F) -> F:
        @wraps(command)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            ctx = click.get_current_context()
            try:
                return command(*args, **kwargs)
            except KeyboardInterrupt:
                if not interrupt:
                    raise
                exit_with_error("interrupted", EXIT_INTERRUPTED)
            except Exception as exc:
                found = error_report(exc, fault_codes=fault_codes)
                if found is None or ctx.find_root().params.get("debug"):
                    raise
                payload = ctx.meta.get(_ERROR_OBJECT)
                if payload is not None:
                    click.echo(json.dumps({"ok": False, "exit-code": found.code, **payload,
                                           **found.details}))
                exit_with_error(found.line, found.code)

        return wrapper  # type: ignore[return-value]

    return decorate if fn is None else decorate(fn)


# --- the data directory -----------------------------------------------------------------------

@dataclass(frozen=True)
class Opened:
    """An open data directory: its paths, settings and store."""

    data_dir: DataDir
    settings: Settings
    store: Store

    def signing_key(self) -> SigningKey:
        return self.data_dir.signing_key(self.settings)

    def require_instance(self, instance: str) -> None:
        """Refuse a chain name the settings do not list."""
        if instance not in self.settings.instances:
            fail(f"unknown instance {instance!r}")

    @asynccontextmanager
    async def ledger(self, instance: str) -> AsyncIterator[Ledger]:
        """The sequencer of one chain, with this directory's settings; stopped (its queue
        committed) on the way out. A read-only (frozen) ledger gets no chain write, not
        even from its operator's commands (a freeze must stop every write)."""
        if self.settings.read_only:
            fail("the ledger is read-only (read-only = true): nothing was written")
        ledger = Ledger(self.store, instance, max_batch=self.settings.max_batch,
                        max_queue=self.settings.max_queue)
        try:
            yield ledger
        finally:
            await ledger.stop()


@asynccontextmanager
async def closing(store: StoreT) -> AsyncIterator[StoreT]:
    """Close ``store`` (a ledger's or a witness's) on the way out, however the block ends."""
    try:
        yield store
    finally:
        await store.close()


@asynccontextmanager
async def open_store(data_dir: DataDir) -> AsyncIterator[Opened]:
    """Read ``data_dir``'s settings, open its store (schema version checked) and close it
    again on the way out. ``init`` and ``migrate`` connect theirs with :func:`closing`."""
    settings = data_dir.settings()
    store = store_for_url(settings.database, data_dir.path)
    await store.open()
    async with closing(store):
        yield Opened(data_dir, settings, store)


@asynccontextmanager
async def open_witness(witness_dir: WitnessDir) -> AsyncIterator[WitnessStore]:
    """The witness directory's store, open (schema version checked), closed on the way out."""
    settings = witness_dir.settings()
    store = open_witness_store(settings.database, witness_dir.path)
    await store.open()
    async with closing(store):
        yield store


def init_directory(directory: SettingsDir[Any], what: str, signing_key: Path | None,
                   raw: dict[str, Any], create: Callable[[], Awaitable[None]]) -> SigningKey:
    """``init`` of a directory (a ledger's, a witness's): write its settings ``raw``, its
    key (read from ``signing_key``, else new) and its database (``create()``); the key.

    Refused before anything is written: a directory that already holds ``what``, settings
    that do not parse (a database URL we could not use: a usage error), a key or SQLite
    file already there (an interrupted init is never overwritten). If writing fails,
    nothing is left behind, not even the directories made: a half-made directory would
    block the next init.
    """
    if directory.exists():
        fail(f"{directory.path} already holds a {what}")
    if signing_key is not None:
        try:
            key = SigningKey.from_text(signing_key.read_text())
        except ChronicleError as exc:
            fail(f"{signing_key}: {exc.message}")
    else:
        key = SigningKey.generate()
    try:
        directory.check(raw)
    except ConfigError as exc:
        raise click.BadParameter(exc.message, param_hint="--database") from None
    db_path = directory.sqlite_file(raw["database"])
    written = [directory.default_key_path, directory.config_path, *filter(None, [db_path])]
    for path in (directory.default_key_path, db_path):
        if path is not None and path.exists():
            fail(f"{path} already exists")
    made = [p for p in (directory.path, *directory.path.parents) if not p.exists()]
    directory.path.mkdir(parents=True, exist_ok=True)
    try:
        run(create())
        write_secret_file(directory.default_key_path, key.to_text())
        directory.write_raw(raw)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        for made_dir in made:  # deepest first
            with contextlib.suppress(OSError):
                made_dir.rmdir()
        raise
    return key


def run(coro: Awaitable[T]) -> T:
    """Run one command's async body."""
    return asyncio.run(coro)  # type: ignore[arg-type]


# --- options and parameters -------------------------------------------------------------------

def _to_data_dir(ctx: click.Context, param: click.Parameter, value: Path) -> DataDir:
    return DataDir(value)


def data_dir_option(fn: F) -> F:
    """``--data-dir DIR`` (default ``$CHRONICLE_DATA_DIR``), passed as a :class:`DataDir`."""
    return click.option("--data-dir", envvar="CHRONICLE_DATA_DIR", required=True,
                        type=click.Path(file_okay=False, path_type=Path),
                        callback=_to_data_dir,
                        help="Ledger data directory (default: $CHRONICLE_DATA_DIR).")(fn)


def instance_option(fn: F) -> F:
    """``--instance NAME``: one of the ledger's chains."""
    return click.option("--instance", default="",
                        help="Chain name (default chain if omitted).")(fn)


def json_option(fn: F) -> F:
    """``--json``: print exactly one JSON object (``as_json``)."""
    return click.option("--json", "as_json", is_flag=True,
                        help="Print one JSON object.")(fn)


def listen_options(port: int) -> Callable[[F], F]:
    """``--host`` and ``--port`` of a serving command; ``port`` is its default."""

    def decorate(fn: F) -> F:
        fn = click.option("--port", default=port, show_default=True,
                          type=click.IntRange(0, 65535),
                          help="TCP port (0: any free port, printed when listening).")(fn)
        return click.option("--host", default="127.0.0.1", show_default=True,
                            help="Address to listen on (0.0.0.0: every interface).")(fn)

    return decorate


def format_options(fn: F) -> F:
    """``--format text|json`` (``fmt``) and ``--json`` (``as_json``), its short form."""
    fn = click.option("--json", "as_json", is_flag=True, help="Same as --format json.")(fn)
    return click.option("--format", "fmt", type=click.Choice(["text", "json"]),
                        default="text", show_default=True, help="Output format.")(fn)


def public_key(text: str, hint: str = "--public-key") -> bytes:
    """A base64url Ed25519 public key, or a usage error naming ``hint``."""
    try:
        return parse_public_key(text.strip())
    except ChronicleError as exc:
        raise click.BadParameter(exc.message, param_hint=hint) from None


def base_url(text: str, hint: str = "--url") -> str:
    """A Chronicle's API base URL (``…/chronicle`` optional), or a usage error."""
    try:
        return api_base(text)
    except ChronicleError as exc:
        raise click.BadParameter(exc.message, param_hint=hint) from None


def chain_url(text: str, instance: str | None, hint: str = "--url") -> str:
    """A Chronicle's API base URL naming one of its chains: ``…/chronicle?instance=NAME``
    when ``instance`` (or the URL itself) names one, else just the base."""
    try:
        named = split_instance(text.strip())[1]
    except ChronicleError as exc:
        raise click.BadParameter(exc.message, param_hint=hint) from None
    if named is not None and instance and named != instance:
        raise click.BadParameter(f"the URL names instance {named!r}, --upstream-instance "
                                 f"{instance!r}", param_hint=hint)
    name = instance or named
    base = base_url(text, hint)
    return base + (f"?instance={quote(name, safe='')}" if name else "")


# --- output -----------------------------------------------------------------------------------

def out(as_json: bool, payload: dict[str, Any], text: str) -> None:
    """The command's result on stdout: ``payload`` as one JSON object, or ``text``."""
    click.echo(json.dumps(payload) if as_json else text)

