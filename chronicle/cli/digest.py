"""``chronicle digest PATH [--ref REF]``: the source tree digest (release.md,
docs/release-format.md §7) of a git commit, a directory, or a zip / tar / tar.gz archive."""

from __future__ import annotations

import os
from pathlib import Path

import click

from chronicle.cli.common import EXIT_IO, fail, format_options, handle_errors, out
from chronicle.release.sources import (
    GitError,
    SourceReadError,
    read_archive,
    read_directory,
    read_git,
    resolve_commit,
)
from chronicle.release.treedigest import TreeDigestError, TreeEntry, tree_digest, tree_lines


@click.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--ref", help="Read commit REF of the git repository PATH (as `git archive` "
                            "lists it) instead of the directory's files.")
@click.option("--lines", "show_lines", is_flag=True,
              help="Also print the sorted file lines the digest is computed over.")
@format_options
@handle_errors
def digest(path: Path, ref: str | None, show_lines: bool, fmt: str, as_json: bool) -> None:
    """Print the b3t1 source tree digest of PATH: a directory (a top-level .git skipped),
    a zip / tar / tar.gz archive (its single top folder stripped), or with --ref a git
    commit. Every refusal of the spec is one precise error line (exit 1; 3: unreadable)."""
    if not os.path.lexists(path):
        fail(f"{path}: no such file or directory", EXIT_IO)
    commit: str | None = None
    entries: list[TreeEntry]
    try:
        if ref is not None:
            if not path.is_dir():
                raise click.BadParameter("--ref needs PATH to be a git repository",
                                         param_hint="--ref")
            source = "git"
            try:
                commit = resolve_commit(path, ref)
            except GitError as exc:
                fail(f"{path}: cannot read commit {ref!r} ({exc.message})")
            entries = read_git(path, commit)
        elif path.is_dir():
            source, entries = "directory", read_directory(path)
        else:
            source, entries = "archive", read_archive(path)
        value = tree_digest(entries)
    except TreeDigestError as exc:
        fail(f"{path}: {exc.message}", EXIT_IO if isinstance(exc, SourceReadError) else 1)
    lines = [line.decode("utf-8").rstrip("\n") for line in tree_lines(entries)]
    payload: dict[str, object] = {"digest": value, "source": source, "files": len(entries)}
    if commit is not None:
        payload["commit"] = commit
    if show_lines:
        payload["lines"] = lines
    out(as_json or fmt == "json", payload, value + ("\n" + "\n".join(lines)
                                                    if show_lines and lines else ""))
