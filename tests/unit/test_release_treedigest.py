"""The source tree digest, pure part: vectors, path checks, collisions, sensitivity."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from blake3 import blake3

from chronicle.release.treedigest import (
    MODE_EXECUTABLE,
    MODE_FILE,
    MODE_SYMLINK,
    DigestFormatError,
    ModeError,
    PathAbsoluteError,
    PathCollisionError,
    PathDotDotError,
    PathNewlineError,
    PathNotUtf8Error,
    PathSegmentError,
    TreeDigestError,
    TreeEntry,
    check_path,
    entry_for,
    mode_from_unix,
    parse_tree_digest,
    tree_digest,
    tree_lines,
)

VECTOR_DIR = Path(__file__).resolve().parent.parent / "vectors" / "tree-digest"
VECTORS = sorted(VECTOR_DIR.glob("*.json"))


def vector_files(vector: dict[str, Any]) -> list[tuple[str, str, bytes]]:
    out = []
    for f in vector["files"]:
        content = f["content"].encode() if "content" in f else \
            base64.urlsafe_b64decode(f["content-b64u"])
        out.append((f["path"], f["mode"], content))
    return out


def test_there_are_vectors() -> None:
    assert {p.stem for p in VECTORS} >= {"basic", "sorting", "binary-empty-unicode"}


@pytest.mark.parametrize("path", VECTORS, ids=lambda p: p.stem)
def test_vector(path: Path) -> None:
    vector = json.loads(path.read_text("utf-8"))
    files = vector_files(vector)
    entries = [entry_for(*f) for f in files]
    assert [line.decode() for line in tree_lines(entries)] == vector["lines"]
    assert tree_digest(entries) == vector["digest"]
    # Independently, straight from release.md's definition:
    lines = sorted((f"{mode} {blake3(content).hexdigest()}  {p}\n".encode()
                    for p, mode, content in files), key=lambda line: line.split(b"  ", 1)[1])
    assert [line.decode() for line in lines] == vector["lines"]
    raw = blake3(b"".join(lines)).digest()
    assert vector["digest"] == "b3t1:" + base64.urlsafe_b64encode(raw).decode()
    assert len(vector["digest"]) == 5 + 44 and vector["digest"].endswith("=")
    assert parse_tree_digest(vector["digest"]) == raw


BASE = [("a.txt", MODE_FILE, b"hello\n"), ("bin/x", MODE_EXECUTABLE, b"#!\n"),
        ("link", MODE_SYMLINK, b"a.txt")]


def digest(files: list[tuple[str, str, bytes]]) -> str:
    return tree_digest(entry_for(*f) for f in files)


@pytest.mark.parametrize("changed", [
    [("a.txt", MODE_FILE, b"hellO\n"), *BASE[1:]],
    [("a.txt", MODE_EXECUTABLE, b"hello\n"), *BASE[1:]],
    [("a.txt", MODE_SYMLINK, b"hello\n"), *BASE[1:]],
    [("b.txt", MODE_FILE, b"hello\n"), *BASE[1:]],
    [("A.txt", MODE_FILE, b"hello\n"), *BASE[1:]],
    [*BASE, ("empty", MODE_FILE, b"")],
    BASE[:2],
    [*BASE[:2], ("link", MODE_SYMLINK, b"./a.txt")],
], ids=["byte", "mode-exec", "mode-link", "path", "path-case", "added", "removed", "target"])
def test_any_change_changes_the_digest(changed: list[tuple[str, str, bytes]]) -> None:
    assert digest(changed) != digest(BASE)


def test_order_of_input_does_not_matter() -> None:
    assert digest(list(reversed(BASE))) == digest(BASE)


@pytest.mark.parametrize(("path", "error", "message"), [
    (b"\xff.txt", PathNotUtf8Error, "path is not UTF-8: b'\\xff.txt'"),
    ("\udcff.txt", PathNotUtf8Error, "path is not UTF-8: '\\udcff.txt'"),
    ("a\nb", PathNewlineError, "path contains a newline or NUL byte: 'a\\nb'"),
    ("a\x00b", PathNewlineError, "path contains a newline or NUL byte: 'a\\x00b'"),
    ("/etc/passwd", PathAbsoluteError, "path is absolute: '/etc/passwd'"),
    ("a/../b", PathDotDotError, "path has a '..' segment: 'a/../b'"),
    ("..", PathDotDotError, "path has a '..' segment: '..'"),
    ("", PathSegmentError, "path is empty or has an empty or '.' segment: ''"),
    ("a//b", PathSegmentError, "path is empty or has an empty or '.' segment: 'a//b'"),
    ("a/./b", PathSegmentError, "path is empty or has an empty or '.' segment: 'a/./b'"),
    ("a/", PathSegmentError, "path is empty or has an empty or '.' segment: 'a/'"),
])
def test_bad_paths(path: bytes | str, error: type[TreeDigestError], message: str) -> None:
    with pytest.raises(error) as caught:
        check_path(path)
    assert caught.value.message == message
    assert caught.value.status == 400


def test_good_paths() -> None:
    for path in ("a", "a/b/c.txt", ".hidden", "a/..b", "...", "sp ace", "caf\u00e9",
                 "back\\slash"):
        assert check_path(path) == path
    assert check_path("caf\u00e9".encode()) == "caf\u00e9"


@pytest.mark.parametrize(("paths", "message"), [
    (["README", "readme"], "paths collide when case-folded: 'README' and 'readme'"),
    (["Src/a", "src/b"], "paths collide when case-folded: 'Src' and 'src'"),
    (["stra\u00dfe", "STRASSE"], "paths collide when case-folded: 'stra\u00dfe' and 'STRASSE'"),
    (["a", "a/b"], "path is both a file and a directory: 'a'"),
    (["a/b", "a"], "path is both a file and a directory: 'a'"),
    (["a", "a"], "path is listed twice: 'a'"),
])
def test_collisions(paths: list[str], message: str) -> None:
    with pytest.raises(PathCollisionError) as caught:
        tree_lines(entry_for(p, MODE_FILE, b"") for p in paths)
    assert caught.value.message == message


@pytest.mark.parametrize(("st_mode", "mode"), [
    (0o100644, MODE_FILE), (0o100600, MODE_FILE), (0o100000, MODE_FILE),
    (0o100755, MODE_EXECUTABLE), (0o100700, MODE_EXECUTABLE), (0o100001, MODE_EXECUTABLE),
    (0o120777, MODE_SYMLINK), (0o120000, MODE_SYMLINK),
])
def test_modes(st_mode: int, mode: str) -> None:
    assert mode_from_unix(st_mode) == mode


@pytest.mark.parametrize("st_mode", [0o040755, 0o020644, 0o060644, 0o010644, 0o140755, 0])
def test_other_file_types_have_no_mode(st_mode: int) -> None:
    with pytest.raises(ModeError, match="not a regular file or symlink"):
        mode_from_unix(st_mode)


def test_entry_for_refuses_unknown_modes() -> None:
    with pytest.raises(ModeError, match="mode must be one of 100644, 100755, 120000"):
        entry_for("a", "100664", b"")


def test_line_format() -> None:
    entry = TreeEntry("dir/f", MODE_FILE, bytes(range(32)))
    assert entry.line() == (b"100644 " + bytes(range(32)).hex().encode() + b"  dir/f\n")


@pytest.mark.parametrize(("text", "message"), [
    ("b3t2:" + "A" * 43 + "=", "tree digest must start with 'b3t1:'"),
    ("b3t1:AAAA", "Invalid tree digest: expected 32 bytes, got 3"),
    ("b3t1:" + "A" * 43, "Invalid tree digest: not base64url"),
    ("b3t1:" + "A" * 42 + "B=", "Invalid tree digest: non-canonical base64url"),
    ("b3t1:" + "+" * 43 + "=", "Invalid tree digest: not base64url"),
])
def test_parse_tree_digest_is_strict(text: str, message: str) -> None:
    with pytest.raises(DigestFormatError) as caught:
        parse_tree_digest(text)
    assert caught.value.message == message
