"""The source tree digest: one hash for a release's files, however they were packed.

Spec: release.md "Source tree digest". One line per regular file or symlink::

    <mode> <blake3-hex(content)>  <path>\\n

mode ``100644``, ``100755`` (any execute bit) or ``120000`` (symlink; content = the link
target's bytes); directories omitted; paths UTF-8 and ``/``-separated. Lines are sorted by
path bytes and the digest is ``b3t1:`` + padded base64url of the BLAKE3-256 of all lines
concatenated. This module is the pure part (paths, lines, digest); the readers that walk
directories, archives and git commits live in :mod:`chronicle.release.sources`.
"""

from __future__ import annotations

import stat
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from blake3 import blake3

from chronicle.core.encoding import b64u_decode, b64u_encode
from chronicle.core.errors import EncodingError, RequestError

MODE_FILE: Final = "100644"
MODE_EXECUTABLE: Final = "100755"
MODE_SYMLINK: Final = "120000"
MODES: Final = (MODE_FILE, MODE_EXECUTABLE, MODE_SYMLINK)
DIGEST_PREFIX: Final = "b3t1:"
HASH_BYTES: Final = 32


class TreeDigestError(RequestError):
    """A tree that has no digest (bad path, collision, unsupported file): the input's fault."""

    status = 400


class PathNotUtf8Error(TreeDigestError):
    """A path's bytes are not UTF-8."""


class PathNewlineError(TreeDigestError):
    """A path contains a newline (it would forge a line) or a NUL byte."""


class PathAbsoluteError(TreeDigestError):
    """A path starts with ``/``."""


class PathDotDotError(TreeDigestError):
    """A path has a ``..`` segment."""


class PathSegmentError(TreeDigestError):
    """A path is empty or has an empty or ``.`` segment (``a//b``, ``a/./b``, ``a/``)."""


class PathCollisionError(TreeDigestError):
    """Two paths are equal, equal when case-folded, or one is a file and a directory."""


class ModeError(TreeDigestError):
    """A mode that is not a regular file or a symlink (directory, device, fifo, socket)."""


class DigestFormatError(TreeDigestError):
    """A digest text that is not ``b3t1:`` + 44 characters of padded base64url."""


@dataclass(frozen=True, slots=True)
class TreeEntry:
    """One file of a tree: its checked path, normalised mode and BLAKE3-256 of its content."""

    path: str
    mode: str
    blake3: bytes

    def line(self) -> bytes:
        return f"{self.mode} {self.blake3.hex()}  {self.path}\n".encode()


def check_path(raw: bytes | str) -> str:
    """Validate a relative ``/``-separated path and return it as text."""
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise PathNotUtf8Error(f"path is not UTF-8: {raw!r}") from None
    else:
        text = raw
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise PathNotUtf8Error(f"path is not UTF-8: {raw!r}") from None
    if "\n" in text or "\x00" in text:
        raise PathNewlineError(f"path contains a newline or NUL byte: {text!r}")
    if text.startswith("/"):
        raise PathAbsoluteError(f"path is absolute: {text!r}")
    segments = text.split("/")
    if ".." in segments:
        raise PathDotDotError(f"path has a '..' segment: {text!r}")
    if any(s in ("", ".") for s in segments):
        raise PathSegmentError(f"path is empty or has an empty or '.' segment: {text!r}")
    return text


def mode_from_unix(st_mode: int) -> str:
    """Normalise a Unix ``st_mode`` (or a git/tar/zip mode) to one of :data:`MODES`."""
    if stat.S_ISLNK(st_mode):
        return MODE_SYMLINK
    if stat.S_ISREG(st_mode):
        return MODE_EXECUTABLE if st_mode & 0o111 else MODE_FILE
    raise ModeError(f"not a regular file or symlink (mode {st_mode:o})")


def content_hash(content: bytes) -> bytes:
    return blake3(content).digest()


def entry_for(path: bytes | str, mode: str, content: bytes) -> TreeEntry:
    """A :class:`TreeEntry` from in-memory content (for a symlink, the target's bytes)."""
    if mode not in MODES:
        raise ModeError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    return TreeEntry(path=check_path(path), mode=mode, blake3=content_hash(content))


def _check_collisions(entries: list[TreeEntry]) -> None:
    """Refuse duplicates, case-fold collisions and file/directory clashes, directories included.

    Every file path and every directory prefix is folded; two different spellings with one
    fold, or one spelling used both as a file and as a directory, cannot be unpacked
    faithfully on every file system.
    """
    seen: dict[str, tuple[str, bool]] = {}
    for entry in entries:
        segments = entry.path.split("/")
        names = [("/".join(segments[:i]), True) for i in range(1, len(segments))]
        names.append((entry.path, False))
        for name, is_dir in names:
            folded = name.casefold()
            known = seen.get(folded)
            if known is None:
                seen[folded] = (name, is_dir)
                continue
            if known[0] != name:
                raise PathCollisionError(f"paths collide when case-folded: {known[0]!r} and "
                                         f"{name!r}")
            if not (is_dir and known[1]):
                kind = "listed twice" if not is_dir and not known[1] else \
                    "both a file and a directory"
                raise PathCollisionError(f"path is {kind}: {name!r}")


def tree_lines(entries: Iterable[TreeEntry]) -> list[bytes]:
    """The digest's lines, collisions refused, sorted by path bytes."""
    listed = list(entries)
    _check_collisions(listed)
    listed.sort(key=lambda e: e.path.encode("utf-8"))
    return [e.line() for e in listed]


def digest_lines(lines: Iterable[bytes]) -> str:
    hasher = blake3()
    for line in lines:
        hasher.update(line)
    return DIGEST_PREFIX + b64u_encode(hasher.digest())


def tree_digest(entries: Iterable[TreeEntry]) -> str:
    """``b3t1:`` + base64url (padded) of BLAKE3-256 over the sorted lines."""
    return digest_lines(tree_lines(entries))


def parse_tree_digest(text: str) -> bytes:
    """The 32 raw bytes of a digest text; refuses any other spelling."""
    if not text.startswith(DIGEST_PREFIX):
        raise DigestFormatError(f"tree digest must start with {DIGEST_PREFIX!r}")
    try:
        return b64u_decode(text[len(DIGEST_PREFIX):], HASH_BYTES, what="tree digest")
    except EncodingError as exc:
        raise DigestFormatError(exc.message) from None
