"""Tree readers: one tree as a directory, zip, tar, tar.gz and git commit has one digest."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import pytest

from chronicle.release.sources import (
    ArchiveFormatError,
    ArchiveLayoutError,
    ExportSubstError,
    GitError,
    HardLinkError,
    SourceReadError,
    SpecialFileError,
    SubmoduleError,
    digest_archive,
    digest_directory,
    digest_git,
    read_archive,
    read_directory,
    read_git,
    resolve_commit,
)
from chronicle.release.treedigest import (
    MODE_EXECUTABLE,
    MODE_SYMLINK,
    PathAbsoluteError,
    PathCollisionError,
    PathDotDotError,
    PathNewlineError,
    PathNotUtf8Error,
    TreeDigestError,
    tree_digest,
)

VECTOR_DIR = Path(__file__).resolve().parent.parent / "vectors" / "tree-digest"
GIT_ENV = {"GIT_AUTHOR_NAME": "chronicle", "GIT_AUTHOR_EMAIL": "dev@chronicle.invalid",
           "GIT_COMMITTER_NAME": "chronicle", "GIT_COMMITTER_EMAIL": "dev@chronicle.invalid",
           "GIT_CONFIG_NOSYSTEM": "1"}


@pytest.fixture(autouse=True)
def _git_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in GIT_ENV.items():
        monkeypatch.setenv(name, value)


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((VECTOR_DIR / f"{name}.json").read_text("utf-8"))
    return data


def files_of(vector: dict[str, Any]) -> list[tuple[str, str, bytes]]:
    return [(f["path"], f["mode"], f["content"].encode() if "content" in f
             else base64.urlsafe_b64decode(f["content-b64u"])) for f in vector["files"]]


def materialize(vector: dict[str, Any], root: Path) -> Path:
    """Write a vector's tree as real files, modes and symlinks."""
    root.mkdir(parents=True, exist_ok=True)
    for path, mode, content in files_of(vector):
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if mode == MODE_SYMLINK:
            os.symlink(content, target)
        else:
            target.write_bytes(content)
            target.chmod(0o755 if mode == MODE_EXECUTABLE else 0o644)
    return root


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True).stdout


def commit_tree(root: Path) -> Path:
    git(root, "-c", "init.defaultBranch=main", "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "release")
    return root


def make_zip(root: Path, out: Path, top: str) -> Path:
    """A zip as a packer on Unix writes it: modes in external_attr, a top folder entry."""
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(zipfile.ZipInfo(top + "/"), b"")
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(root).as_posix()
            info = zipfile.ZipInfo(f"{top}/{rel}" + ("/" if path.is_dir() and
                                                     not path.is_symlink() else ""))
            info.create_system = 3
            st = path.lstat()
            info.external_attr = st.st_mode << 16
            if path.is_symlink():
                archive.writestr(info, os.readlink(path))
            elif path.is_dir():
                archive.writestr(info, b"")
            else:
                archive.writestr(info, path.read_bytes())
    return out


def make_tar(root: Path, out: Path, top: str, mode: str = "w") -> Path:
    with tarfile.open(out, mode) as archive:
        archive.add(root, arcname=top)
    return out


# --- one tree, one digest -------------------------------------------------------------------

@pytest.mark.parametrize("name", ["basic", "binary-empty-unicode", "sorting"])
def test_every_form_of_a_tree_has_the_vector_digest(tmp_path: Path, name: str) -> None:
    vector = load(name)
    root = materialize(vector, tmp_path / "tree")
    expected = vector["digest"]
    assert digest_directory(root) == expected
    assert digest_archive(make_zip(root, tmp_path / "a.zip", "pkg-1.0")) == expected
    assert digest_archive(make_tar(root, tmp_path / "a.tar", "pkg-1.0")) == expected
    assert digest_archive(make_tar(root, tmp_path / "a.tgz", "pkg", "w:gz")) == expected
    commit_tree(root)
    assert digest_git(root) == expected
    assert digest_git(root, resolve_commit(root)) == expected
    assert digest_directory(root) == expected  # the top-level .git is skipped
    for fmt in ("zip", "tar", "tar.gz"):
        out = tmp_path / f"git.{fmt}"
        git(root, "archive", f"--format={fmt}", "--prefix=acme-demo-1234/", "-o", str(out),
            "HEAD")
        assert digest_archive(out) == expected, fmt


def test_readers_report_modes_and_paths(tmp_path: Path) -> None:
    root = materialize(load("basic"), tmp_path / "tree")
    entries = {e.path: e.mode for e in read_directory(root)}
    assert entries == {"README.md": "100644", "bin/demo": "100755", "src/Demo.php": "100644",
                       "src/Latest.php": "120000"}


def test_a_changed_mode_or_byte_changes_the_directory_digest(tmp_path: Path) -> None:
    root = materialize(load("basic"), tmp_path / "tree")
    before = digest_directory(root)
    (root / "README.md").chmod(0o744)
    assert digest_directory(root) != before
    (root / "README.md").chmod(0o644)
    assert digest_directory(root) == before
    (root / "README.md").write_bytes(b"# demo\n\nA package!\n")
    assert digest_directory(root) != before


def test_empty_directories_are_omitted_nested_git_is_not(tmp_path: Path) -> None:
    root = materialize(load("basic"), tmp_path / "tree")
    before = digest_directory(root)
    (root / "empty" / "deeper").mkdir(parents=True)
    assert digest_directory(root) == before
    (root / "vendor" / ".git").mkdir(parents=True)
    (root / "vendor" / ".git" / "HEAD").write_bytes(b"x")
    assert digest_directory(root) != before


# --- directory refusals -------------------------------------------------------------------------

def test_directory_with_a_fifo(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(SpecialFileError, match="not a regular file or symlink: 'pipe'"):
        read_directory(tmp_path)


def test_directory_with_non_utf8_name(tmp_path: Path) -> None:
    with open(os.path.join(os.fsencode(tmp_path), b"bad\xff"), "wb"):
        pass
    with pytest.raises(PathNotUtf8Error, match="path is not UTF-8"):
        read_directory(tmp_path)


def test_directory_with_newline_in_name(tmp_path: Path) -> None:
    (tmp_path / "a\nb").write_bytes(b"")
    with pytest.raises(PathNewlineError):
        read_directory(tmp_path)


def test_not_a_directory(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(SourceReadError, match="not a directory"):
        read_directory(tmp_path / "f")
    with pytest.raises(SourceReadError, match="No such file or directory"):
        read_directory(tmp_path / "missing")


# --- archive refusals -------------------------------------------------------------------------

def tar_with(tmp_path: Path, *members: tuple[tarfile.TarInfo, bytes]) -> Path:
    out = tmp_path / "t.tar"
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT, encoding="utf-8",
                      errors="surrogateescape") as archive:
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            archive.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return out


def member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = 0o644
    info.linkname = linkname
    return info


@pytest.mark.parametrize(("members", "error", "message"), [
    ([member("top/a"), member("other/b")], ArchiveLayoutError,
     "archive has more than one top-level entry: 'top' and 'other'"),
    ([member("top/a"), member("README")], ArchiveLayoutError,
     "archive has more than one top-level entry: 'top' and 'README'"),
    ([member("README")], ArchiveLayoutError, "archive has a file at top level: 'README'"),
    ([], ArchiveLayoutError, "archive is empty: no top-level folder"),
    ([member("top/a"), member("top/b", tarfile.LNKTYPE, "top/a")], HardLinkError,
     "tar member is a hard link: 'top/b' -> 'top/a'"),
    ([member("top/dev", tarfile.CHRTYPE)], SpecialFileError,
     "not a regular file or symlink: 'top/dev' (tar type b'3')"),
    ([member("top/fifo", tarfile.FIFOTYPE)], SpecialFileError,
     "not a regular file or symlink: 'top/fifo' (tar type b'6')"),
    ([member("/top/a")], PathAbsoluteError, "path is absolute: '/top/a'"),
    ([member("top/../a")], PathDotDotError, "path has a '..' segment: 'top/../a'"),
    ([member("top/a\nb")], PathNewlineError, "path contains a newline or NUL byte: 'top/a\\nb'"),
    ([member("top/\udcff")], PathNotUtf8Error, "path is not UTF-8: b'top/\\xff'"),
    ([member("top/README"), member("top/readme")], PathCollisionError,
     "paths collide when case-folded: 'README' and 'readme'"),
])
def test_tar_refusals(tmp_path: Path, members: list[tarfile.TarInfo],
                      error: type[TreeDigestError], message: str) -> None:
    archive = tar_with(tmp_path, *[(m, b"x") for m in members])
    with pytest.raises(error) as caught:
        tree_digest(read_archive(archive))
    assert caught.value.message == message


def test_tar_top_folder_entry_is_allowed_and_stripped(tmp_path: Path) -> None:
    archive = tar_with(tmp_path, (member("top", tarfile.DIRTYPE), b""), (member("top/a"), b"x"))
    assert [e.path for e in read_archive(archive)] == ["a"]


def zip_with(tmp_path: Path, names: list[str], *, unix_mode: int | None = None) -> Path:
    out = tmp_path / "z.zip"
    with zipfile.ZipFile(out, "w") as archive:
        for name in names:
            info = zipfile.ZipInfo(name)
            if unix_mode is not None:
                info.create_system = 3
                info.external_attr = unix_mode << 16
            archive.writestr(info, b"x")
    return out


@pytest.mark.parametrize(("names", "error", "message"), [
    (["a/x", "b/y"], ArchiveLayoutError,
     "archive has more than one top-level entry: 'a' and 'b'"),
    (["x"], ArchiveLayoutError, "archive has a file at top level: 'x'"),
    (["/abs/x"], PathAbsoluteError, "path is absolute: '/abs/x'"),
    (["top/../x"], PathDotDotError, "path has a '..' segment: 'top/../x'"),
    (["top/A", "top/a"], PathCollisionError, "paths collide when case-folded: 'A' and 'a'"),
])
def test_zip_refusals(tmp_path: Path, names: list[str], error: type[TreeDigestError],
                      message: str) -> None:
    with pytest.raises(error) as caught:
        tree_digest(read_archive(zip_with(tmp_path, names)))
    assert caught.value.message == message


def test_zip_special_file_from_unix_mode(tmp_path: Path) -> None:
    with pytest.raises(SpecialFileError, match="not a regular file or symlink: 'top/x' "
                                               "\\(mode 10644\\)"):
        read_archive(zip_with(tmp_path, ["top/x"], unix_mode=0o010644))


def test_zip_modes_from_external_attr(tmp_path: Path) -> None:
    entries = read_archive(zip_with(tmp_path, ["top/x"], unix_mode=0o100775))
    assert [(e.path, e.mode) for e in entries] == [("x", "100755")]
    entries = read_archive(zip_with(tmp_path, ["top/x"]))
    assert [(e.path, e.mode) for e in entries] == [("x", "100644")]


def test_empty_zip(tmp_path: Path) -> None:
    with pytest.raises(ArchiveLayoutError, match="archive is empty"):
        read_archive(zip_with(tmp_path, []))


def test_encrypted_zip(tmp_path: Path) -> None:
    path = zip_with(tmp_path, ["top/x"])
    raw = bytearray(path.read_bytes())
    central = raw.index(b"PK\x01\x02")
    raw[central + 8] |= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(ArchiveFormatError, match="zip member is encrypted: 'top/x'"):
        read_archive(path)


@pytest.mark.parametrize("data", [b"", b"hello, not an archive", b"\x1f\x8bgarbage",
                                  b"PK\x03\x04garbage"])
def test_not_an_archive(tmp_path: Path, data: bytes) -> None:
    (tmp_path / "f").write_bytes(data)
    with pytest.raises(ArchiveFormatError, match="not a readable"):
        read_archive(tmp_path / "f")


def test_truncated_tar_gz(tmp_path: Path) -> None:
    root = materialize(load("binary-empty-unicode"), tmp_path / "tree")
    whole = make_tar(root, tmp_path / "a.tgz", "pkg", "w:gz").read_bytes()
    (tmp_path / "cut.tgz").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ArchiveFormatError, match="not a readable tar"):
        read_archive(tmp_path / "cut.tgz")


def test_missing_archive(tmp_path: Path) -> None:
    with pytest.raises(SourceReadError, match="cannot read"):
        read_archive(tmp_path / "missing.zip")


# --- git --------------------------------------------------------------------------------------

@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return commit_tree(materialize(load("basic"), tmp_path / "repo"))


def test_git_export_ignore_is_applied(repo: Path, tmp_path: Path) -> None:
    expected = digest_git(repo)
    (repo / "tests").mkdir()
    (repo / "tests" / "t.php").write_bytes(b"<?php\n")
    (repo / "notes.txt").write_bytes(b"x\n")
    (repo / ".gitattributes").write_bytes(b"/tests export-ignore\nnotes.txt export-ignore\n"
                                          b".gitattributes export-ignore\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "ignore")
    assert digest_git(repo) == expected
    assert digest_git(repo, "HEAD~1") == expected
    assert digest_directory(repo) != expected  # a directory applies no attributes


def test_git_reads_the_commit_not_the_worktree(repo: Path) -> None:
    expected = digest_git(repo)
    (repo / "README.md").write_bytes(b"changed, not committed\n")
    (repo / ".gitattributes").write_bytes(b"README.md export-subst\n")
    assert digest_git(repo) == expected


def test_git_export_subst_is_refused(repo: Path) -> None:
    (repo / "VERSION").write_bytes(b"$Format:%H$\n")
    (repo / ".gitattributes").write_bytes(b"VERSION export-subst\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "subst")
    with pytest.raises(ExportSubstError) as caught:
        read_git(repo)
    assert caught.value.message == ("export-subst is set on 'VERSION': its archived content "
                                    "would depend on the archiver")


def test_git_export_subst_on_an_export_ignored_file_is_fine(repo: Path) -> None:
    expected = digest_git(repo)
    (repo / "VERSION").write_bytes(b"$Format:%H$\n")
    (repo / ".gitattributes").write_bytes(b"VERSION export-subst export-ignore\n"
                                          b".gitattributes export-ignore\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "ignored subst")
    assert digest_git(repo) == expected


def _add_submodule(repo: Path, tmp_path: Path) -> None:
    sub = commit_tree(materialize(load("single-file"), tmp_path / "sub"))
    git(repo, "-c", "protocol.file.allow=always", "submodule", "add", "-q", str(sub), "lib")


def test_git_submodule_is_refused(repo: Path, tmp_path: Path) -> None:
    _add_submodule(repo, tmp_path)
    git(repo, "commit", "-q", "-m", "submodule")
    with pytest.raises(SubmoduleError) as caught:
        read_git(repo)
    assert caught.value.message == "commit has a submodule: 'lib'"


def test_git_export_ignored_submodule_is_fine(repo: Path, tmp_path: Path) -> None:
    expected = digest_git(repo)
    _add_submodule(repo, tmp_path)
    (repo / ".gitattributes").write_bytes(b"/lib export-ignore\n/.gitmodules export-ignore\n"
                                          b"/.gitattributes export-ignore\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "ignored submodule")
    assert digest_git(repo) == expected


def test_git_machine_settings_do_not_change_the_digest(repo: Path) -> None:
    expected = digest_git(repo)
    git(repo, "config", "tar.umask", "0777")
    git(repo, "config", "core.autocrlf", "true")
    assert digest_git(repo) == expected


def test_git_environment_cannot_redirect_the_repository(repo: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    other = commit_tree(materialize(load("single-file"), tmp_path / "other"))
    monkeypatch.setenv("GIT_DIR", str(other / ".git"))
    assert digest_git(repo) == load("basic")["digest"]


def test_git_errors(repo: Path, tmp_path: Path) -> None:
    with pytest.raises(GitError, match="git rev-parse failed"):
        read_git(repo, "no-such-ref")
    with pytest.raises(GitError, match="git rev-parse failed"):
        read_git(repo, "--help")
    (tmp_path / "plain").mkdir()
    with pytest.raises(GitError, match="git rev-parse failed"):
        read_git(tmp_path / "plain")


def test_deep_directory_tree(tmp_path: Path) -> None:
    """Deeper than Python's recursion limit. Built and removed by hand: pathlib's mkdir and
    shutil.rmtree (pytest's tmp_path clean-up) recurse and would fail on it."""
    levels = [tmp_path]
    for _ in range(1200):
        levels.append(levels[-1] / "d")
        os.mkdir(levels[-1])
    (levels[-1] / "f").write_bytes(b"x")
    try:
        [entry] = read_directory(tmp_path)
        assert entry.path == "d/" * 1200 + "f"
    finally:
        (levels[-1] / "f").unlink()
        for level in reversed(levels[1:]):
            os.rmdir(level)
