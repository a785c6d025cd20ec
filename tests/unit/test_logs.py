"""Log lines: text or JSON, each with the request id of the request being handled."""

from __future__ import annotations

import json
import logging

import pytest

from chronicle.cli import logs
from chronicle.server.requestids import current as request_id


@pytest.fixture(autouse=True)
def _restore_root() -> object:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield None
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)


def test_json_lines_carry_the_request_id(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure(debug=False, fmt="json")
    log = logging.getLogger("chronicle.test")
    token = request_id.set("abc123")
    try:
        log.warning("publish from %s refused", "client-\"x\"\n")
    finally:
        request_id.reset(token)
    log.debug("not shown without --debug")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert len(lines) == 2
    first, second = lines
    assert first["level"] == "warning" and first["logger"] == "chronicle.test"
    assert first["request_id"] == "abc123"
    # A hostile value cannot break the line: it is a JSON string.
    assert first["message"] == 'publish from client-"x"\n refused'
    assert first["time"].endswith("Z") and "T" in first["time"]
    assert second["request_id"] == "-"
    assert "ValueError: boom" in second["traceback"]


def test_text_lines(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure(debug=True, fmt="text")
    token = request_id.set("r-1")
    try:
        logging.getLogger("chronicle.x").debug("hello")
    finally:
        request_id.reset(token)
    err = capsys.readouterr().err
    assert err.rstrip().endswith("DEBUG chronicle.x [r-1]: hello")
