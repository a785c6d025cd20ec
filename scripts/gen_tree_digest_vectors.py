"""Write the source tree digest vectors (tests/vectors/tree-digest/*.json).

Each vector is a small tree: its files (path, mode, content), the digest's lines and the
digest (release.md "Source tree digest"). Content is given as UTF-8 text (``content``) or,
when it is not text, as padded base64url (``content-b64u``); a symlink's content is its
target. Running this again must reproduce the committed files byte for byte:

    python -m scripts.gen_tree_digest_vectors [--out tests/vectors/tree-digest]

(run from the repository root, so this checkout's package is the one imported).
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import Any

from chronicle.core.encoding import b64u_encode
from chronicle.release.treedigest import (
    MODE_EXECUTABLE,
    MODE_FILE,
    MODE_SYMLINK,
    entry_for,
    tree_digest,
    tree_lines,
)

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "tests" / "vectors" / "tree-digest"


def _bytes(seed: str, size: int) -> bytes:
    """Deterministic binary content: SHA-256 in counter mode over a seed."""
    out = b""
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return out[:size]


TREES: dict[str, tuple[str, list[tuple[str, str, bytes]]]] = {
    "basic": (
        "A small package: a text file, an executable, a nested file and a symlink.",
        [
            ("README.md", MODE_FILE, b"# demo\n\nA package.\n"),
            ("bin/demo", MODE_EXECUTABLE, b"#!/usr/bin/env php\n<?php echo 'hi';\n"),
            ("src/Demo.php", MODE_FILE, b"<?php\nnamespace Acme;\nfinal class Demo {}\n"),
            ("src/Latest.php", MODE_SYMLINK, b"Demo.php"),
        ],
    ),
    "sorting": (
        "Paths whose byte order differs from case-insensitive or per-segment order: lines "
        "sort by the whole path's UTF-8 bytes ('-' 0x2d < '.' 0x2e < '/' 0x2f < 'B' < 'a').",
        [
            ("a/b", MODE_FILE, b"slash\n"),
            ("a.b", MODE_FILE, b"dot\n"),
            ("a-b", MODE_FILE, b"dash\n"),
            ("B", MODE_FILE, b"upper\n"),
            ("\u00e4", MODE_FILE, b"a-umlaut, two UTF-8 bytes 0xc3 0xa4\n"),
            ("a0", MODE_FILE, b"digit\n"),
        ],
    ),
    "binary-empty-unicode": (
        "An empty file, binary content, a non-ASCII path, a deep path and a symlink "
        "pointing outside the tree (kept as its target's bytes).",
        [
            ("empty", MODE_FILE, b""),
            ("data/blob.bin", MODE_FILE, _bytes("blob", 1000)),
            ("docs/caf\u00e9/\u65e5\u672c.txt", MODE_FILE, "ünïcödé\n".encode()),
            ("x/y/z/w/deep.txt", MODE_EXECUTABLE, b"deep\n"),
            ("etc-link", MODE_SYMLINK, b"../../etc/passwd"),
        ],
    ),
    "single-file": (
        "The smallest tree: one empty regular file.",
        [("LICENSE", MODE_FILE, b"")],
    ),
}


def _file_obj(path: str, mode: str, content: bytes) -> dict[str, Any]:
    obj: dict[str, Any] = {"path": path, "mode": mode}
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        obj["content-b64u"] = b64u_encode(content)
    else:
        obj["content"] = text
    return obj


def vector(name: str) -> dict[str, Any]:
    about, files = TREES[name]
    entries = [entry_for(path, mode, content) for path, mode, content in files]
    return {
        "name": name,
        "about": about,
        "files": [_file_obj(*f) for f in files],
        "lines": [line.decode("utf-8") for line in tree_lines(entries)],
        "digest": tree_digest(entries),
    }


def render(name: str) -> bytes:
    return (json.dumps(vector(name), indent=1, ensure_ascii=False) + "\n").encode("utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in TREES:
        (args.out / f"{name}.json").write_bytes(render(name))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
