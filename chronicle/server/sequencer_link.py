"""One sequencer for all ``serve --workers N`` processes: the others forward publishes to it.

Why: with a sequencer in every process, each group commit held only that process's
publishes, so two SQLite processes made 60% more commits for the same entries, and each
held the write lock while its own event loop came round to the statements: two processes
published at 0.77 of one. Forwarded to one sequencer, the batches are whole again
(measured in docs/benchmarks.md).

How: the supervisor makes a private directory (mode 0700) before forking. Worker 0 listens
on a Unix socket there and appends what the others forward through its own
:class:`~chronicle.ledger.Ledger`. The others authenticate a publish exactly as before
(client, signature, limits), then send ``(instance, client id, public key, signature,
body)`` and answer with the receipt worker 0 sends back once the entry is durably
committed, or with the error it sends.

Trust: only the server's own user can reach the socket (the directory's mode), and that
user can write to the database anyway. Worker 0's sequencer still checks, inside the
write transaction, that the client is active with that key.

Failure: a publish whose link fails (worker 0 restarting, stopping, gone) is appended by
the forwarding worker's own ledger. Appends are idempotent by signature, so if worker 0
did commit it, the stored entry is answered: nothing acknowledged is lost, nothing is
stored twice.

Frames (big-endian): a request is ``u32 length ‖ u64 id ‖ u16 len(instance) ‖ u16
len(client id) ‖ instance ‖ client id ‖ public key (32) ‖ signature (64) ‖ body``; an
answer ``u32 length ‖ u64 id ‖ u8 kind ‖ payload``, the payload of an entry ``u64 index ‖
currhash (32) ‖ summaryhash (32) ‖ created``, of an error JSON ``{status, message,
headers}``. ``length`` counts the bytes after itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from chronicle.core.blakechain import HASH_BYTES, PUBLICKEY_BYTES, SIGNATURE_BYTES, Entry
from chronicle.core.errors import ChronicleError

log = logging.getLogger(__name__)

_REQUEST = struct.Struct("!IQHH")
_ANSWER = struct.Struct("!IQB")
_INDEX = struct.Struct("!Q")
ENTRY, ERROR = 0, 1
#: Answers are receipts or error messages: never near this.
MAX_ANSWER = 64 << 10
#: Seconds between attempts to reach a sequencer that could not be reached.
RECONNECT_S = 0.5
#: Seconds to connect to the sequencer, and to wait for one answer: a worker 0 that is
#: alive but wedged must not stall every worker's publishes (they fall back instead).
CONNECT_TIMEOUT_S = 2.0
ANSWER_TIMEOUT_S = 60.0
#: For this long after a forwarding worker starts, and until it first reaches worker 0,
#: a missing or refusing socket means worker 0 is still starting: keep trying (within
#: CONNECT_TIMEOUT_S) instead of appending locally (the workers start together).
STARTUP_S = 10.0
#: Seconds :meth:`LinkServer.close` waits for the forwarded publishes it already took.
CLOSE_TIMEOUT_S = 30.0

Append = Callable[[str, bytes, bytes, bytes, str], Awaitable[Entry]]


class FrameError(ValueError):
    """A frame that does not parse: the connection carrying it is closed."""


class LinkDown(Exception):
    """The sequencer could not be asked: nothing was sent to it."""


class LinkLost(LinkDown):
    """The link broke (or the sequencer did not answer in time) after the publish was
    sent: worker 0 may have stored it, or may still."""


@dataclass(frozen=True, slots=True)
class Forwarded:
    """One publish as forwarded: already authenticated by the sending worker."""

    instance: str
    client_id: str
    publickey: bytes
    signature: bytes
    contents: bytes


def encode_request(rid: int, req: Forwarded) -> bytes:
    instance, client = req.instance.encode(), req.client_id.encode()
    if len(req.publickey) != PUBLICKEY_BYTES or len(req.signature) != SIGNATURE_BYTES:
        raise FrameError("a forwarded publish needs a 32-byte key and a 64-byte signature")
    size = _REQUEST.size - 4 + len(instance) + len(client) + PUBLICKEY_BYTES \
        + SIGNATURE_BYTES + len(req.contents)
    return b"".join((_REQUEST.pack(size, rid, len(instance), len(client)), instance, client,
                     req.publickey, req.signature, req.contents))


def decode_request(frame: bytes) -> tuple[int, Forwarded]:
    """``frame`` is everything after the length field."""
    head = _REQUEST.size - 4
    if len(frame) < head:
        raise FrameError("request frame shorter than its header")
    rid, ilen, clen = struct.unpack_from("!QHH", frame)
    pos = head + ilen + clen
    if len(frame) < pos + PUBLICKEY_BYTES + SIGNATURE_BYTES:
        raise FrameError("request frame truncated")
    try:
        instance = frame[head:head + ilen].decode()
        client = frame[head + ilen:pos].decode()
    except UnicodeDecodeError:
        raise FrameError("request frame names are not UTF-8") from None
    key = frame[pos:pos + PUBLICKEY_BYTES]
    sig = frame[pos + PUBLICKEY_BYTES:pos + PUBLICKEY_BYTES + SIGNATURE_BYTES]
    return rid, Forwarded(instance, client, key, sig,
                          frame[pos + PUBLICKEY_BYTES + SIGNATURE_BYTES:])


def encode_entry(rid: int, entry: Entry) -> bytes:
    payload = b"".join((_INDEX.pack(entry.index), entry.currhash, entry.summaryhash,
                        entry.created.encode("ascii")))
    return _ANSWER.pack(_ANSWER.size - 4 + len(payload), rid, ENTRY) + payload


def encode_error(rid: int, exc: ChronicleError) -> bytes:
    payload = json.dumps({"status": exc.status, "message": exc.message,
                          "headers": exc.headers}).encode()
    return _ANSWER.pack(_ANSWER.size - 4 + len(payload), rid, ERROR) + payload


def decode_answer(frame: bytes, sent: Forwarded) -> Entry | ChronicleError:
    """The entry (its fields completed from what was sent) or the sequencer's refusal."""
    kind = frame[8] if len(frame) >= 9 else -1
    payload = frame[9:]
    if kind == ENTRY:
        fixed = _INDEX.size + 2 * HASH_BYTES
        if len(payload) <= fixed:
            raise FrameError("entry answer truncated")
        (index,) = _INDEX.unpack_from(payload)
        currhash = payload[_INDEX.size:_INDEX.size + HASH_BYTES]
        summary = payload[_INDEX.size + HASH_BYTES:fixed]
        try:
            created = payload[fixed:].decode("ascii")
        except UnicodeDecodeError:
            raise FrameError("entry answer's created is not ASCII") from None
        # The receipt is all a publish answers; the link does not carry the rest.
        return Entry(index, sent.contents, None, currhash, summary, b"", sent.publickey,
                     sent.signature, created)
    if kind == ERROR:
        try:
            doc = json.loads(payload)
            return ChronicleError(str(doc["message"]), status=int(doc["status"]),
                                  headers={str(k): str(v) for k, v in doc["headers"].items()})
        except (ValueError, KeyError, TypeError, AttributeError):
            raise FrameError("error answer is not the expected JSON") from None
    raise FrameError(f"unknown answer kind {kind}")


async def _read_frame(reader: asyncio.StreamReader, limit: int) -> bytes:
    (size,) = struct.unpack("!I", await reader.readexactly(4))
    if size > limit:
        raise FrameError(f"frame of {size} bytes is over the limit of {limit}")
    return await reader.readexactly(size)


class LinkServer:
    """Worker 0's end: appends forwarded publishes through ``append`` and answers each."""

    def __init__(self, append: Append, max_body: int) -> None:
        self._append = append
        self._limit = max_body + 4096
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._closing = False

    async def start(self, path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # left by a worker 0 that died
        self._server = await asyncio.start_unix_server(self._serve, str(path))
        os.chmod(path, 0o600)  # the directory (0700) already keeps everyone else out

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        mine: set[asyncio.Task[None]] = set()
        try:
            while not self._closing:
                rid, req = decode_request(await _read_frame(reader, self._limit))
                if self._closing:
                    break  # unanswered: the sending worker appends it itself
                task = asyncio.get_running_loop().create_task(self._one(writer, rid, req))
                for tasks in (mine, self._tasks):
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
        except FrameError as exc:
            log.error("sequencer link: %s; closing that worker's connection", exc)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            if mine:  # answer what this connection already handed over
                await asyncio.wait(set(mine))
            self._writers.discard(writer)
            writer.close()

    async def _one(self, writer: asyncio.StreamWriter, rid: int, req: Forwarded) -> None:
        try:
            entry = await self._append(req.instance, req.contents, req.publickey,
                                       req.signature, req.client_id)
            frame = encode_entry(rid, entry)
        except ChronicleError as exc:
            frame = encode_error(rid, exc)
        except Exception:
            log.exception("sequencer link: a forwarded publish failed")
            frame = encode_error(rid, ChronicleError("Internal server error", status=500))
        if not writer.is_closing():
            writer.write(frame)

    async def close(self) -> None:
        """Stop listening, answer what was taken, then close the connections (a worker
        whose request is not answered by then appends it itself)."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=CLOSE_TIMEOUT_S)
        for writer in list(self._writers):
            writer.close()
        self._server = None


class LinkClient:
    """A forwarding worker's end: one connection, many publishes in flight on it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._waiting: dict[int, tuple[asyncio.Future[bytes], Forwarded, float]] = {}
        self._next = 0
        self._connecting = asyncio.Lock()
        self._failed_at = -RECONNECT_S
        self._patient_until = time.monotonic() + STARTUP_S
        #: Worker 0's last refusal for its own trouble (5xx), until it next stores one:
        #: what /readyz of a forwarding worker reports.
        self.write_error: str | None = None

    async def _connection(self) -> asyncio.StreamWriter:
        if self._writer is not None and not self._writer.is_closing():
            return self._writer
        async with self._connecting:
            if self._writer is not None and not self._writer.is_closing():
                return self._writer
            if time.monotonic() - self._failed_at < RECONNECT_S:
                raise LinkDown("the sequencer was unreachable moments ago")
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT_S):
                    reader, writer = await self._open()
            except (OSError, TimeoutError) as exc:
                self._failed_at = time.monotonic()
                raise LinkDown(f"cannot reach the sequencer: {exc!r}") from None
            self._patient_until = 0.0  # reached once: from now on, a refusal means down
            self._writer = writer
            self._reader_task = asyncio.get_running_loop().create_task(
                self._read(reader, writer))
            return writer

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        while True:
            try:
                return await asyncio.open_unix_connection(str(self.path))
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() >= self._patient_until:
                    raise
                await asyncio.sleep(0.02)  # worker 0 is still starting

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                frame = await _read_frame(reader, MAX_ANSWER)
                if len(frame) < 8:
                    raise FrameError("answer frame shorter than its id")
                (rid,) = _INDEX.unpack_from(frame)
                waiting = self._waiting.pop(rid, None)
                if waiting is not None and not waiting[0].done():
                    waiting[0].set_result(frame)
        except FrameError as exc:
            log.error("sequencer link: %s; dropping the connection", exc)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._drop(writer)

    def _drop(self, writer: asyncio.StreamWriter | None) -> None:
        """Close ``writer``'s connection and fail what waits on it; nothing if a newer
        connection replaced it (a late reader must not close the next one)."""
        if writer is None or writer is not self._writer:
            return
        writer.close()
        self._writer = None
        waiting, self._waiting = self._waiting, {}
        for future, _, _ in waiting.values():
            if not future.done():
                future.set_exception(LinkLost("the link to the sequencer broke"))

    def oldest_waiting(self) -> float:
        """Seconds the oldest publish sent to worker 0 has waited (0: none waits)."""
        now = time.monotonic()
        return max((now - sent for _, _, sent in self._waiting.values()), default=0.0)

    async def append(self, req: Forwarded) -> Entry:
        """The entry once worker 0 committed it; :class:`ChronicleError` as it refused;
        :class:`LinkDown` when it could not be asked or did not answer."""
        writer = await self._connection()
        self._next += 1
        rid = self._next
        frame = encode_request(rid, req)
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = (future, req, time.monotonic())
        try:
            writer.write(frame)
        except (ConnectionError, RuntimeError) as exc:
            self._waiting.pop(rid, None)
            self._drop(writer)
            raise LinkLost(f"cannot send to the sequencer: {exc}") from None
        try:
            async with asyncio.timeout(ANSWER_TIMEOUT_S):
                answer_frame = await future
        except TimeoutError:
            # Wedged: give up on this connection, and go local for a moment.
            self._failed_at = time.monotonic()
            self._drop(writer)
            raise LinkLost(f"the sequencer did not answer in {ANSWER_TIMEOUT_S:.0f} s") \
                from None
        finally:
            self._waiting.pop(rid, None)
        try:
            answer = decode_answer(answer_frame, req)
        except FrameError as exc:
            self._drop(writer)
            raise LinkLost(f"unreadable answer from the sequencer: {exc}") from None
        if isinstance(answer, ChronicleError):
            if answer.status >= 500:
                self.write_error = answer.message
            raise answer
        self.write_error = None
        return answer

    async def close(self) -> None:
        self._drop(self._writer)
        if self._reader_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader_task
            self._reader_task = None
