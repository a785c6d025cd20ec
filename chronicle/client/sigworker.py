"""A signature-checking worker process: ``python -m chronicle.client.sigworker``.

Reads batches on stdin, answers on stdout, until stdin closes. The framing is plain bytes
(no pickle: nothing executable crosses the pipe):

- request: 8-byte big-endian length, then per item ``publickey(32) ‖ len(message) (4,
  big-endian) ‖ signature(64) ‖ message``: signature and message are adjacent, as
  libsodium's ``crypto_sign_open`` takes them, so the worker checks each item in place in
  the request buffer (:func:`verify_frames`), without copying or slicing it;
- answer: 4-byte count, then that many 4-byte positions whose signature fails.

A separate interpreter, started with the same ``sys.executable``, so it never shares the
GIL with the process that hashes and stores the chain, and never re-imports that
process's ``__main__`` (which ``multiprocessing``'s spawn/forkserver would do).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import IO

from nacl._sodium import ffi, lib

Item = tuple[bytes, bytes, bytes]

_NO_KEY, _NO_SIGNATURE = bytes(32), bytes(64)


def encode(items: Sequence[Item]) -> bytes:
    """One request: its 8-byte length, then each item framed as the module docstring says."""
    parts: list[bytes] = [b""]
    add = parts.extend
    for publickey, signature, message in items:
        if len(publickey) != 32 or len(signature) != 64:
            # Malformed keys or signatures never verify (an all-zero key is small-order,
            # which libsodium refuses); keep the framing fixed-size.
            publickey, signature = _NO_KEY, _NO_SIGNATURE
        add((publickey, len(message).to_bytes(4, "big"), signature, message))
    size = sum(map(len, parts))
    parts[0] = size.to_bytes(8, "big")
    return b"".join(parts)


def decode(body: bytes) -> list[Item]:
    """The items of a request body (the inverse of :func:`encode` after its length)."""
    items: list[Item] = []
    pos, end = 0, len(body)
    while pos < end:
        size = int.from_bytes(body[pos + 32:pos + 36], "big")
        items.append((body[pos:pos + 32], body[pos + 36:pos + 100],
                      body[pos + 100:pos + 100 + size]))
        pos += 100 + size
    return items


def verify_frames(body: bytes) -> list[int]:
    """Positions of the items in a request body whose signature fails, checked in place:
    libsodium's ``crypto_sign_open`` (what :func:`~chronicle.core.verify.verify_batch`
    calls) on pointers into ``body``. A body that does not end on an item boundary is
    refused (ValueError) rather than read past its end."""
    end = len(body)
    buf = ffi.from_buffer(body)
    open_, null, from_bytes = lib.crypto_sign_open, ffi.NULL, int.from_bytes
    bad: list[int] = []
    pos = position = 0
    while pos < end:
        if pos + 100 > end:
            raise ValueError("truncated signature request")
        size = from_bytes(body[pos + 32:pos + 36], "big")
        if pos + 100 + size > end:
            raise ValueError("truncated signature request")
        if open_(null, null, buf + pos + 36, 64 + size, buf + pos) != 0:
            bad.append(position)
        pos += 100 + size
        position += 1
    return bad


def encode_answer(bad: Sequence[int]) -> bytes:
    return len(bad).to_bytes(4, "big") + b"".join(i.to_bytes(4, "big") for i in bad)


def decode_answer(head: bytes, stream: IO[bytes]) -> list[int]:
    """The positions of an answer whose 4-byte count ``head`` was read from ``stream``."""
    count = int.from_bytes(head, "big")
    raw = stream.read(4 * count)
    if raw is None or len(raw) != 4 * count:
        raise EOFError("short answer from a signature worker")
    return [int.from_bytes(raw[i:i + 4], "big") for i in range(0, len(raw), 4)]


def main() -> None:
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while True:
        head = stdin.read(8)
        if len(head) < 8:
            return
        body = stdin.read(int.from_bytes(head, "big"))
        stdout.write(encode_answer(verify_frames(body)))
        stdout.flush()


if __name__ == "__main__":
    main()
