"""Incremental parsing of Chronicle response documents whose ``results`` list may be huge.

Sans-I/O: bytes in (any chunking), parsed rows out, memory bounded by the largest single
row rather than the document. A full export of a million entries is ~700 MB of JSON; the
auditor, the follower and the client stream it through :class:`DocumentParser` while the
same bytes feed the streaming signature check.

It is a general JSON parser for the one shape Chronicle answers with — a top-level object
— not one tied to PHP's pretty-printing: the top-level keys are scanned here, every value
and every ``results`` element is decoded by the standard library's C scanner
(``json.JSONDecoder.raw_decode``), so any whitespace, key order or escaping is accepted
exactly as ``json.loads`` would accept it. Measured on the pretty-printed export it costs
~3.5 µs per entry, the same as a parser specialised to PHP's line layout, so there is no
special case and no third-party dependency.
"""

from __future__ import annotations

import codecs
import contextlib
import json
import re
from collections.abc import Callable
from typing import Any, NoReturn

from chronicle.core.verify import MalformedError

_WS = re.compile(r"[ \t\n\r]*")
_DEFAULT_MAX_ELEMENT = 64 << 20
_DEFAULT_MAX_MEMBERS = 64
#: A small answer (index, lasthash, lookup, a refusal) is never larger than this.
SMALL_DOCUMENT = 16 << 20

# Parser states.
_START, _KEY, _COLON, _VALUE, _AFTER_VALUE, _RESULTS_FIRST, _ELEMENT, _AFTER_ELEMENT, _END = \
    range(9)


class _NeedMore(Exception):
    """Internal: the buffer ends inside a token."""


class DocumentParser:
    """Push parser: :meth:`feed` chunks, get the ``results`` rows parsed so far.

    Top-level members other than a ``results`` list end up in :attr:`header` (in document
    order); a ``results`` value that is not a list (an error has none; a replica's
    ``lasthash`` has an object) is stored there too. Call :meth:`close` at the end of the
    input: it returns the last rows and raises :class:`MalformedError` if the document is
    incomplete or is not a JSON object. Duplicate top-level keys are refused (two
    ``results`` would let two readers see two different chains).
    """

    def __init__(self, *, max_element: int = _DEFAULT_MAX_ELEMENT,
                 max_members: int = _DEFAULT_MAX_MEMBERS) -> None:
        self.header: dict[str, Any] = {}
        self.results_is_list = False
        self.rows_seen = 0
        self.bytes_seen = 0
        self._decoder = json.JSONDecoder()
        self._utf8 = codecs.getincrementaldecoder("utf-8")("strict")
        self._buf = ""
        self._pos = 0
        self._state = _START
        self._key: str | None = None
        self._key_required = False
        self._retry_at = 0
        self._max_element = max_element
        self._max_members = max_members
        self._final = False

    @property
    def done(self) -> bool:
        return self._state == _END

    def feed(self, data: bytes) -> list[Any]:
        self.bytes_seen += len(data)
        try:
            text = self._utf8.decode(data)
        except UnicodeDecodeError as exc:
            raise MalformedError(f"document is not UTF-8 (near byte {self.bytes_seen})",
                                 field="document") from exc
        if self._pos:
            self._buf = self._buf[self._pos:] + text
            self._pos = 0
        else:
            self._buf += text
        if len(self._buf) < self._retry_at:
            return []
        return self._run()

    def close(self) -> list[Any]:
        """End of input: parse what is left and insist the document is complete."""
        try:
            tail = self._utf8.decode(b"", final=True)
        except UnicodeDecodeError as exc:
            raise MalformedError("document ends inside a UTF-8 sequence",
                                 field="document") from exc
        self._buf = self._buf[self._pos:] + tail
        self._pos = 0
        self._final = True
        rows = self._run()
        if self._state != _END:
            raise MalformedError("document is truncated (it ends before its closing brace)",
                                 field="document", expected="}", found="end of data")
        return rows

    # --- internals ------------------------------------------------------------------------

    def _char(self) -> str:
        """Skip whitespace; return the next character without consuming it."""
        pos = _WS.match(self._buf, self._pos).end()  # type: ignore[union-attr]
        self._pos = pos
        if pos >= len(self._buf):
            raise _NeedMore
        return self._buf[pos]

    def _bad(self, what: str) -> MalformedError:
        found = self._buf[self._pos:self._pos + 20]
        return MalformedError(f"document is not valid Chronicle JSON: expected {what}",
                              field="document", expected=what, found=found or "end of data")

    def _decode(self) -> Any:
        """One JSON value at the cursor, or :class:`_NeedMore` if it may continue."""
        start = self._pos
        try:
            value, end = self._decoder.raw_decode(self._buf, start)
        except RecursionError:
            raise MalformedError("document is nested too deeply", field="document") from None
        except json.JSONDecodeError as exc:
            if self._final:
                raise MalformedError(f"document is not valid JSON: {exc.msg}",
                                     field="document") from None
            near_end = exc.pos >= len(self._buf) - 16
            if not near_end and not exc.msg.startswith("Unterminated string"):
                raise MalformedError(f"document is not valid JSON: {exc.msg}",
                                     field="document") from None
            self._wait(start)
        except ValueError as exc:
            # Python's own limits, e.g. an integer of more than 4,300 digits: longer data
            # cannot make it valid.
            raise MalformedError(f"document is not valid JSON: {exc}",
                                 field="document") from None
        if end >= len(self._buf) and not self._final:
            # A number or literal cut by the chunk boundary would decode as a shorter one.
            self._wait(start)
        self._pos = end
        return value

    def _wait(self, start: int) -> NoReturn:
        pending = len(self._buf) - start
        if pending > self._max_element:
            raise MalformedError(f"a document element exceeds {self._max_element} bytes",
                                 field="document")
        # Retry only once the pending element has doubled (or grown by 64 KiB): linear,
        # not quadratic, on huge rows. The next feed compacts the buffer to start there.
        self._retry_at = pending + max(pending, 1 << 16)
        self._pos = start
        raise _NeedMore

    def _run(self) -> list[Any]:
        rows: list[Any] = []
        self._retry_at = 0
        with contextlib.suppress(_NeedMore):
            self._step(rows)
        self.rows_seen += len(rows)
        return rows

    def _step(self, rows: list[Any]) -> None:
        """Run the state machine until it needs more input (:class:`_NeedMore`)."""
        steps = self._steps
        while True:
            steps[self._state](rows)

    @property
    def _steps(self) -> tuple[Callable[[list[Any]], None], ...]:
        # Indexed by state number (_START .. _END).
        return (self._start, self._member_name, self._colon, self._value, self._after_value,
                self._results_first, self._element, self._after_element, self._end)

    def _element(self, rows: list[Any]) -> None:
        self._char()
        rows.append(self._decode())
        self._state = _AFTER_ELEMENT

    def _after_element(self, rows: list[Any]) -> None:
        ch = self._char()
        if ch == ",":
            self._state = _ELEMENT
        elif ch == "]":
            self._state = _AFTER_VALUE
        else:
            raise self._bad("',' or ']' after a results entry")
        self._pos += 1

    def _start(self, rows: list[Any]) -> None:
        if self._char() != "{":
            raise self._bad("a JSON object")
        self._pos += 1
        self._state = _KEY

    def _member_name(self, rows: list[Any]) -> None:
        ch = self._char()
        if ch == "}" and not self._key_required:
            self._pos += 1
            self._state = _END
            return
        if ch != '"':
            raise self._bad("a member name")
        key = self._decode()
        if key in self.header or (key == "results" and self.results_is_list):
            raise MalformedError(f"document has the member {key!r} twice", field=str(key))
        if len(self.header) + self.results_is_list >= self._max_members:
            raise MalformedError(f"document has more than {self._max_members} members",
                                 field="document")
        self._key = key
        self._state = _COLON

    def _colon(self, rows: list[Any]) -> None:
        if self._char() != ":":
            raise self._bad("':'")
        self._pos += 1
        self._state = _VALUE

    def _value(self, rows: list[Any]) -> None:
        ch = self._char()
        if self._key == "results" and ch == "[":
            self._pos += 1
            self.results_is_list = True
            self._state = _RESULTS_FIRST
        else:
            assert self._key is not None
            self.header[self._key] = self._decode()
            self._state = _AFTER_VALUE

    def _results_first(self, rows: list[Any]) -> None:
        if self._char() == "]":
            self._pos += 1
            self._state = _AFTER_VALUE
        else:
            self._state = _ELEMENT

    def _after_value(self, rows: list[Any]) -> None:
        ch = self._char()
        if ch == ",":
            self._key_required = True
            self._state = _KEY
        elif ch == "}":
            self._state = _END
        else:
            raise self._bad("',' or '}' after a member")
        self._pos += 1

    def _end(self, rows: list[Any]) -> None:
        """Only whitespace may follow the closing brace."""
        if self._char():
            raise self._bad("nothing after the closing brace")


def load_object(data: bytes, *, what: str, limit: int = SMALL_DOCUMENT) -> dict[str, Any]:
    """A small JSON object from untrusted bytes: bounded in size and nesting, and every
    failure a :class:`MalformedError` (never a ``ValueError`` or ``RecursionError``)."""
    if len(data) > limit:
        raise MalformedError(f"{what} is too large ({len(data)} bytes, at most {limit})",
                             field="document")
    try:
        parsed = json.loads(data)
    except (ValueError, RecursionError):
        raise MalformedError(f"{what} is not JSON (or nested too deeply)",
                             field="document") from None
    if not isinstance(parsed, dict):
        raise MalformedError(f"{what} is not a JSON object", field="document")
    return parsed
