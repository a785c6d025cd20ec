"""Read a source tree from a directory, a zip / tar / tar.gz archive or a git commit.

Spec: release.md "Source tree digest", "Inputs". Each reader returns the tree's
:class:`~chronicle.release.treedigest.TreeEntry` list (content hashed while streaming, so a
large file is never held in memory); :func:`~chronicle.release.treedigest.tree_digest`
turns it into the digest. This is the only module of the release package that does I/O.
"""

from __future__ import annotations

import gzip
import os
import stat
import subprocess
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Final

from blake3 import blake3

from chronicle.release.treedigest import (
    MODE_FILE,
    MODE_SYMLINK,
    TreeDigestError,
    TreeEntry,
    check_path,
    content_hash,
    mode_from_unix,
    tree_digest,
)

CHUNK: Final = 1 << 20
_ZIP_UNIX: Final = 3          # ZipInfo.create_system for Unix (mode in external_attr >> 16)
_DOS_DIRECTORY: Final = 0x10
_GITLINK: Final = b"160000"
# Environment variables that would point git elsewhere than the repository we were given.
_GIT_LOCATION_ENV: Final = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_COMMON_DIR",
                            "GIT_OBJECT_DIRECTORY", "GIT_ALTERNATE_OBJECT_DIRECTORIES",
                            "GIT_NAMESPACE", "GIT_PREFIX")
# Machine settings that would change what `git archive` writes: line endings and the
# permission bits (a tar.umask hiding execute bits would change modes).
_GIT_CONFIG: Final = ("-c", "core.autocrlf=false", "-c", "core.eol=lf", "-c", "tar.umask=022")


class SpecialFileError(TreeDigestError):
    """A device, fifo, socket or other file that is neither regular nor a symlink."""


class HardLinkError(TreeDigestError):
    """A hard-link member in a tar archive (its content would depend on another member)."""


class ArchiveLayoutError(TreeDigestError):
    """An archive that does not hold exactly one top-level folder (and nothing beside it)."""


class ArchiveFormatError(TreeDigestError):
    """Not a zip, tar or tar.gz archive, or a damaged or encrypted one."""


class ExportSubstError(TreeDigestError):
    """A git commit with an ``export-subst`` file: its archived bytes depend on the archiver."""


class SubmoduleError(TreeDigestError):
    """A git commit with a submodule (gitlink): its content is not in the commit."""


class GitError(TreeDigestError):
    """git failed (no such repository or commit, or another error)."""


class SourceReadError(TreeDigestError):
    """The source could not be read (missing, unreadable)."""


def _hash_stream(stream: IO[bytes]) -> bytes:
    hasher = blake3()
    while chunk := stream.read(CHUNK):
        hasher.update(chunk)
    return hasher.digest()


# --- directory ------------------------------------------------------------------------------

def read_directory(root: str | os.PathLike[str]) -> list[TreeEntry]:
    """Every regular file and symlink below ``root``, paths relative to it.

    A top-level ``.git`` is skipped; no attributes are applied (this is how an unpacked
    archive is compared). Symlinks are not followed; anything else is refused.
    """
    base = os.fsencode(root)
    try:
        if not stat.S_ISDIR(os.stat(base).st_mode):
            raise SourceReadError(f"not a directory: {os.fsdecode(base)!r}")
        return list(_walk(base, b""))
    except OSError as exc:
        raise SourceReadError(f"cannot read {exc.filename!r}: {exc.strerror}") from None


def _walk(base: bytes, start: bytes) -> Iterator[TreeEntry]:
    """Depth-first, iteratively (no recursion limit on deep trees), symlinks not followed."""
    pending = [start]
    while pending:
        rel = pending.pop()
        with os.scandir(os.path.join(base, rel) if rel else base) as listing:
            children = sorted(listing, key=lambda e: e.name, reverse=True)
        for child in children:
            name = os.fsencode(child.name)
            if not rel and name == b".git":
                continue
            path = rel + b"/" + name if rel else name
            info = child.stat(follow_symlinks=False)
            if stat.S_ISDIR(info.st_mode):
                pending.append(path)
            elif stat.S_ISLNK(info.st_mode):
                yield TreeEntry(check_path(path), MODE_SYMLINK,
                                content_hash(os.readlink(os.path.join(base, path))))
            elif stat.S_ISREG(info.st_mode):
                yield _read_file(base, path)
            else:
                raise SpecialFileError(f"not a regular file or symlink: "
                                       f"{os.fsdecode(path)!r} (mode {info.st_mode:o})")


def _read_file(base: bytes, path: bytes) -> TreeEntry:
    """Open without following a symlink or blocking on a fifo (the file may have been
    swapped since it was listed), then take the mode from the open file itself."""
    checked = check_path(path)
    fd = os.open(os.path.join(base, path), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as stream:
        mode = os.fstat(stream.fileno()).st_mode
        if not stat.S_ISREG(mode):
            raise SpecialFileError(f"not a regular file or symlink: {os.fsdecode(path)!r} "
                                   f"(mode {mode:o})")
        return TreeEntry(checked, mode_from_unix(mode), _hash_stream(stream))


# --- archives -------------------------------------------------------------------------------

class _TopFolder:
    """Strip the single top-level folder shared by every member of an archive."""

    def __init__(self) -> None:
        self.top: str | None = None

    def inner(self, raw: bytes, *, is_dir: bool) -> str | None:
        """The path below the top folder, or None for the top folder itself."""
        full = check_path(raw.rstrip(b"/") if is_dir else raw)
        top, _, rest = full.partition("/")
        if self.top is None:
            self.top = top
        elif top != self.top:
            raise ArchiveLayoutError(f"archive has more than one top-level entry: "
                                     f"{self.top!r} and {top!r}")
        if not rest:
            if not is_dir:
                raise ArchiveLayoutError(f"archive has a file at top level: {full!r}")
            return None
        return rest

    def check_found(self) -> None:
        if self.top is None:
            raise ArchiveLayoutError("archive is empty: no top-level folder")


def read_archive(path: str | os.PathLike[str]) -> list[TreeEntry]:
    """A zip, tar or tar.gz archive (by content, not by name), top-level folder stripped."""
    try:
        with open(path, "rb") as stream:
            magic = stream.read(4)
    except OSError as exc:
        raise SourceReadError(f"cannot read {os.fspath(path)!r}: {exc.strerror}") from None
    if magic[:2] == b"PK":
        return read_zip(path)
    return read_tar(path)


def read_zip(path: str | os.PathLike[str]) -> list[TreeEntry]:
    """A zip archive. Modes come from the Unix mode in ``external_attr`` when the member
    was written on Unix (``git archive`` does so for executables and symlinks); other
    members are regular files (``100644``) or directories (by a trailing ``/`` or the DOS
    directory attribute)."""
    top = _TopFolder()
    entries: list[TreeEntry] = []
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                raw = info.filename.encode("utf-8" if info.flag_bits & 0x800 else "cp437")
                unix = info.external_attr >> 16 if info.create_system == _ZIP_UNIX else 0
                if unix and not stat.S_IFMT(unix):
                    # Permission bits without a file type (Python's zipfile writes these):
                    # a regular file, or a directory by its name.
                    unix |= stat.S_IFDIR if info.filename.endswith("/") else stat.S_IFREG
                is_dir = (info.filename.endswith("/") or stat.S_ISDIR(unix)
                          or (not unix and bool(info.external_attr & _DOS_DIRECTORY)))
                if info.flag_bits & 0x1:
                    raise ArchiveFormatError(f"zip member is encrypted: {info.filename!r}")
                if not is_dir and unix and not (stat.S_ISREG(unix) or stat.S_ISLNK(unix)):
                    raise SpecialFileError(f"not a regular file or symlink: "
                                           f"{info.filename!r} (mode {unix:o})")
                inner = top.inner(raw, is_dir=is_dir)
                if inner is None or is_dir:
                    continue
                mode = mode_from_unix(unix) if unix else MODE_FILE
                with archive.open(info) as member:
                    entries.append(TreeEntry(inner, mode, _hash_stream(member)))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError,
            zlib.error) as exc:
        raise ArchiveFormatError(f"not a readable zip archive: {exc}") from None
    except OSError as exc:
        raise SourceReadError(f"cannot read {os.fspath(path)!r}: {exc}") from None
    top.check_found()
    return entries


def _tar_members(archive: tarfile.TarFile, top: _TopFolder | None,
                 gitlinks: frozenset[bytes] = frozenset()) -> Iterator[TreeEntry]:
    """Members of an open tar. ``top`` strips the top-level folder (None: paths as they
    are, as ``git archive`` writes them); a directory at a ``gitlinks`` path is a submodule."""
    for member in archive:
        raw = member.name.encode("utf-8", "surrogateescape")
        if member.isdir():
            if raw.rstrip(b"/") in gitlinks:
                raise SubmoduleError(f"commit has a submodule: {member.name!r}")
            if top is not None:
                top.inner(raw, is_dir=True)
            continue
        if member.islnk():
            raise HardLinkError(f"tar member is a hard link: {member.name!r} -> "
                                f"{member.linkname!r}")
        if not (member.isreg() or member.issym()):
            raise SpecialFileError(f"not a regular file or symlink: {member.name!r} "
                                   f"(tar type {member.type!r})")
        path = top.inner(raw, is_dir=False) if top is not None else check_path(raw)
        assert path is not None
        if member.issym():
            yield TreeEntry(path, MODE_SYMLINK,
                            content_hash(member.linkname.encode("utf-8", "surrogateescape")))
            continue
        stream = archive.extractfile(member)
        if stream is None:
            raise ArchiveFormatError(f"tar member has no data: {member.name!r}")
        with stream:
            yield TreeEntry(path, mode_from_unix(stat.S_IFREG | member.mode),
                            _hash_stream(stream))


def read_tar(path: str | os.PathLike[str]) -> list[TreeEntry]:
    """A tar or gzip-compressed tar archive, top-level folder stripped."""
    try:
        with open(path, "rb") as raw:
            gzipped = raw.read(2) == b"\x1f\x8b"
        top = _TopFolder()
        with tarfile.open(path, "r:gz" if gzipped else "r:", encoding="utf-8",
                          errors="surrogateescape") as archive:
            entries = list(_tar_members(archive, top))
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise ArchiveFormatError(f"not a readable tar or tar.gz archive: {exc}") from None
    except OSError as exc:
        raise SourceReadError(f"cannot read {os.fspath(path)!r}: {exc}") from None
    top.check_found()
    return entries


# --- git ------------------------------------------------------------------------------------

def _git_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _GIT_LOCATION_ENV}
    env.update(extra)
    return env


def _git(repo: Path, *args: str, stdin: bytes | None = None,
         env: dict[str, str] | None = None) -> bytes:
    result = subprocess.run(["git", "-C", str(repo), *_GIT_CONFIG, *args], input=stdin,
                            capture_output=True, env=env or _git_env(), check=False)
    if result.returncode != 0:
        detail = result.stderr.decode("utf-8", "replace").strip()
        raise GitError(f"git {args[0]} failed: {detail}")
    return result.stdout


def resolve_commit(repo: str | os.PathLike[str], ref: str = "HEAD") -> str:
    """The full commit id ``ref`` names in ``repo``."""
    out = _git(Path(repo), "rev-parse", "--verify", "--end-of-options", f"{ref}^{{commit}}")
    return out.decode("ascii").strip()


def _gitlinks(repo: Path, commit: str) -> set[bytes]:
    out = _git(repo, "ls-tree", "-r", "-z", "--full-tree", commit)
    links = set()
    for record in out.split(b"\0"):
        meta, _, path = record.partition(b"\t")
        if meta.split(b" ")[0] == _GITLINK:
            links.add(path)
    return links


def _export_subst(repo: Path, commit: str, paths: list[bytes]) -> list[bytes]:
    """Paths whose ``export-subst`` attribute is set, read from the commit's own attributes.

    ``git check-attr`` reads ``.gitattributes`` from the index with ``--cached``; a
    throw-away index holding the commit's tree makes that the commit's attributes (as
    ``git archive`` uses them) on every git version.
    """
    if not paths:
        return []
    with tempfile.TemporaryDirectory(prefix="chronicle-attr-") as tmp:
        env = _git_env(GIT_INDEX_FILE=os.path.join(tmp, "index"))
        _git(repo, "read-tree", commit, env=env)
        out = _git(repo, "check-attr", "--cached", "-z", "--stdin", "export-subst",
                   stdin=b"".join(p + b"\0" for p in paths), env=env)
    fields = out.split(b"\0")
    return [fields[i] for i in range(0, len(fields) - 2, 3) if fields[i + 2] == b"set"]


def read_git(repo: str | os.PathLike[str], ref: str = "HEAD") -> list[TreeEntry]:
    """The files of commit ``ref`` as ``git archive`` lists them, paths from the root.

    ``export-ignore`` applies (through ``git archive`` itself); a file with
    ``export-subst`` set and any submodule in the archive are refused. Machine settings
    that would alter the output (line-ending conversion, ``tar.umask``) are overridden;
    the repository's own ``.gitattributes`` apply, as on any host.
    """
    where = Path(repo)
    commit = resolve_commit(where, ref)
    links = frozenset(_gitlinks(where, commit))
    with tempfile.TemporaryFile() as errors, subprocess.Popen(
            ["git", "-C", str(where), *_GIT_CONFIG, "archive", "--format=tar", commit],
            stdout=subprocess.PIPE, stderr=errors, env=_git_env()) as proc:
        assert proc.stdout is not None
        failure: str | None = None
        try:
            with tarfile.open(fileobj=proc.stdout, mode="r|", encoding="utf-8",
                              errors="surrogateescape") as archive:
                entries = list(_tar_members(archive, None, links))
        except tarfile.TarError as exc:
            failure = str(exc)
        finally:
            proc.stdout.close()
            proc.wait()
        if proc.returncode != 0 or failure is not None:
            errors.seek(0)
            detail = errors.read().decode("utf-8", "replace").strip()
            raise GitError(f"git archive failed: {detail or failure}")
    substituted = _export_subst(where, commit, [e.path.encode("utf-8") for e in entries])
    if substituted:
        raise ExportSubstError("export-subst is set on "
                               f"{substituted[0].decode('utf-8', 'replace')!r}: its archived "
                               "content would depend on the archiver")
    return entries


# --- conveniences ---------------------------------------------------------------------------

def digest_directory(root: str | os.PathLike[str]) -> str:
    return tree_digest(read_directory(root))


def digest_archive(path: str | os.PathLike[str]) -> str:
    return tree_digest(read_archive(path))


def digest_git(repo: str | os.PathLike[str], ref: str = "HEAD") -> str:
    return tree_digest(read_git(repo, ref))
