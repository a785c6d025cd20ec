"""The one error handler every `chronicle` command uses (cli.md): our exceptions, by class,
become one `error: …` line and the documented exit code; `--debug` lets them through."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result

from chronicle.audit.runner import UsageProblem
from chronicle.cli.common import (
    EXIT_INTERRUPTED,
    EXIT_IO,
    EXIT_REFUSED,
    EXIT_USAGE,
    FAULT_CLASSES,
    FAULT_EXIT_CODES,
    Failure,
    handle_errors,
    report_errors_as_json,
)
from chronicle.client.errors import ClientRejected, StaleResponseError
from chronicle.config import ConfigError, DataDir
from chronicle.core.errors import (
    AuthError,
    ChronicleError,
    IntegrityError,
    OverloadedError,
    RequestError,
    SchemaMismatchError,
    StorageError,
    TransportError,
)
from chronicle.core.verify import (
    AnchorError,
    BrokenLinkError,
    ChainFault,
    DocumentSignatureError,
    EntrySignatureError,
    HashMismatchError,
    HistoryRewrittenError,
    MalformedError,
    SplitViewError,
)


def invoke(exc: BaseException, *args: str, fault_codes: Mapping[str, int] | None = None,
           interrupt: bool = False, before: Callable[[], None] | None = None) -> Result:
    """Run a one-command CLI (with `--debug`, like `chronicle`) whose command raises ``exc``."""

    @click.group()
    @click.option("--debug", is_flag=True)
    def root(debug: bool) -> None:
        pass

    @root.command()
    @handle_errors(fault_codes=fault_codes, interrupt=interrupt)
    def boom() -> None:
        if before is not None:
            before()
        raise exc

    return CliRunner().invoke(root, [*args, "boom"])


def one_error_line(result: Result) -> str:
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0][len("error: "):]


@pytest.mark.parametrize(("exc", "code", "line"), [
    (Failure("no such mirror"), EXIT_REFUSED, "no such mirror"),
    (Failure("already exists", EXIT_IO), EXIT_IO, "already exists"),
    (UsageProblem("give one of them"), EXIT_USAGE, "give one of them"),
    (ClientRejected("Client not found", status=403), EXIT_REFUSED,
     "server refused (HTTP 403): Client not found"),
    (RequestError("bad input"), EXIT_REFUSED, "bad input"),
    (AuthError("not an admin"), EXIT_REFUSED, "not an admin"),
    (IntegrityError("link broken", index=4, field="prevhash"), EXIT_REFUSED,
     "link broken; entry 4; field prevhash"),
    (OverloadedError(), EXIT_REFUSED, "Server overloaded, retry later"),
    (ChronicleError("something else of ours"), EXIT_REFUSED, "something else of ours"),
    (TransportError("connection refused"), EXIT_IO, "connection refused"),
    (StorageError("database is locked"), EXIT_IO, "database is locked"),
    (SchemaMismatchError("schema 3, expected 4"), EXIT_IO, "schema 3, expected 4"),
    (ConfigError("no chronicle.toml"), EXIT_IO, "no chronicle.toml"),
    (FileNotFoundError(2, "No such file or directory", "x.key"), EXIT_IO,
     "No such file or directory: x.key"),
    (PermissionError(13, "Permission denied"), EXIT_IO, "Permission denied"),
], ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else "")
def test_each_exception_class_has_its_exit_code(exc: Exception, code: int, line: str) -> None:
    result = invoke(exc)
    assert result.exit_code == code, result.stderr
    assert one_error_line(result) == line
    assert result.stdout == ""


@pytest.mark.parametrize("fault", [DocumentSignatureError, EntrySignatureError,
                                   BrokenLinkError, HashMismatchError, AnchorError,
                                   MalformedError, HistoryRewrittenError, SplitViewError])
def test_fault_classes_refine_exit_1_where_a_command_documents_them(
        fault: type[ChainFault]) -> None:
    exc = fault("it lies", index=7, field="summary", expected="a", found="b")
    refined = invoke(exc, fault_codes=FAULT_EXIT_CODES)
    assert refined.exit_code == FAULT_EXIT_CODES[fault.kind] >= 10
    assert one_error_line(refined) == \
        f"{fault.kind} at entry 7 (field summary): expected 'a', found 'b' - it lies"
    plain = invoke(exc)  # any other command: a verification failure is 1
    assert plain.exit_code == EXIT_REFUSED
    assert one_error_line(plain) == exc.diagnostics()


def test_fault_codes_table() -> None:
    assert [f.code for f in FAULT_CLASSES] == list(range(10, 18))
    # a subclass keeps its parent's kind, hence its code; an unlisted kind stays 1
    assert invoke(StaleResponseError("old"), fault_codes=FAULT_EXIT_CODES).exit_code == 15
    assert invoke(ChainFault("?"), fault_codes=FAULT_EXIT_CODES).exit_code == EXIT_REFUSED


def test_error_object_on_stdout_when_asked() -> None:
    exc = HashMismatchError("summaryhash does not match", index=3, field="summary")
    result = invoke(exc, fault_codes=FAULT_EXIT_CODES,
                    before=lambda: report_errors_as_json({"source": "x.json"}))
    assert result.exit_code == 13
    assert json.loads(result.stdout) == {
        "ok": False, "exit-code": 13, "source": "x.json", "fault": "hash-mismatch",
        "message": "summaryhash does not match", "index": 3, "field": "summary",
        "expected": None, "found": None}
    refused = invoke(ClientRejected("Client not found", status=403),
                     before=lambda: report_errors_as_json({"source": "u"}))
    assert json.loads(refused.stdout) == {"ok": False, "exit-code": 1, "source": "u",
                                          "fault": "refused", "status": 403,
                                          "message": "Client not found"}
    missing = invoke(FileNotFoundError(2, "No such file", "f"),
                     before=lambda: report_errors_as_json({"source": "f"}))
    assert json.loads(missing.stdout)["fault"] == "transport"


def test_debug_lets_the_exception_through() -> None:
    exc = StorageError("database is locked")
    result = invoke(exc, "--debug")
    assert result.exception is exc
    assert "error:" not in result.stderr


def test_not_ours_is_a_bug_with_a_traceback() -> None:
    exc = ValueError("a bug")
    result = invoke(exc)
    assert result.exception is exc


def test_interrupt() -> None:
    result = invoke(KeyboardInterrupt(), interrupt=True)
    assert result.exit_code == EXIT_INTERRUPTED
    assert one_error_line(result) == "interrupted"
    assert isinstance(invoke(KeyboardInterrupt()).exception, KeyboardInterrupt | SystemExit)


def test_commands_get_a_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from chronicle.cli.common import data_dir_option

    seen: list[Any] = []

    @click.command()
    @data_dir_option
    def show(data_dir: DataDir) -> None:
        seen.append(data_dir)

    monkeypatch.setenv("CHRONICLE_DATA_DIR", str(tmp_path))
    assert CliRunner().invoke(show, []).exit_code == 0
    assert isinstance(seen[0], DataDir) and seen[0].path == tmp_path
