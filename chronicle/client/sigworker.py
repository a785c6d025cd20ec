"""A signature-checking worker process: ``python -m chronicle.client.sigworker``.

Reads batches on stdin, answers on stdout, until stdin closes. The framing is plain bytes
(no pickle: nothing executable crosses the pipe):

- request: 8-byte big-endian length, then per item ``publickey(32) ‖ signature(64) ‖
  len(message) (4, big-endian) ‖ message``;
- answer: 4-byte count, then that many 4-byte positions whose signature fails.

A separate interpreter, started with the same ``sys.executable``, so it never shares the
GIL with the process that hashes and stores the chain, and never re-imports that
process's ``__main__`` (which ``multiprocessing``'s spawn/forkserver would do).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import IO

from chronicle.core.verify import verify_batch

Item = tuple[bytes, bytes, bytes]


def encode(items: Sequence[Item]) -> bytes:
    parts = []
    for publickey, signature, message in items:
        if len(publickey) != 32 or len(signature) != 64:
            # Malformed keys or signatures never verify; keep the framing fixed-size.
            publickey, signature = bytes(32), bytes(64)
        parts.append(publickey + signature + len(message).to_bytes(4, "big") + message)
    body = b"".join(parts)
    return len(body).to_bytes(8, "big") + body


def decode(body: bytes) -> list[Item]:
    items: list[Item] = []
    pos, end = 0, len(body)
    while pos < end:
        size = int.from_bytes(body[pos + 96:pos + 100], "big")
        items.append((body[pos:pos + 32], body[pos + 32:pos + 96],
                      body[pos + 100:pos + 100 + size]))
        pos += 100 + size
    return items


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
        stdout.write(encode_answer(verify_batch(decode(body))))
        stdout.flush()


if __name__ == "__main__":
    main()
