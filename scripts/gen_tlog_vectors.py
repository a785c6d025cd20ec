"""Regenerate tests/vectors/tlog-leaf/leaves.json from a recorded PHP Chronicle export.

    python scripts/gen_tlog_vectors.py          # rewrite the vector file
    python scripts/gen_tlog_vectors.py --check  # exit 1 if the committed file differs

Takes the first entries of tests/vectors/chronicle-1.3/exports/A-final-export.body.json
(recorded from PHP Chronicle 1.3.1), checks each one's currhash against the BLAKE2b chain,
and writes for each: its fields as exported, SHA-256(contents), the leaf record bytes and
the RFC 6962 leaf hash; then the Merkle root of every prefix of them. Output is
deterministic: running it again must produce no diff (tests/unit/test_tlog_leaf.py checks).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Use this checkout's package, not whichever `chronicle` the environment has installed.
sys.path.insert(0, str(ROOT))

from chronicle.core.blakechain import currhash  # noqa: E402
from chronicle.core.encoding import b64u_decode  # noqa: E402
from chronicle.core.leaf import LeafRecord  # noqa: E402
from chronicle.core.merkle import MemoryHashes  # noqa: E402

SOURCE = Path("tests/vectors/chronicle-1.3/exports/A-final-export.body.json")
TARGET = Path("tests/vectors/tlog-leaf/leaves.json")
COUNT = 9  # eight plus one: a perfect subtree and a ragged edge, incl. an empty body


def build(root: Path = ROOT) -> str:
    """The vector file's exact text."""
    export = json.loads((root / SOURCE).read_text())
    entries: list[dict[str, Any]] = []
    tree = MemoryHashes()
    prev: bytes | None = None
    for index, row in enumerate(export["results"][:COUNT]):
        contents = row["contents"].encode("utf-8")
        publickey = b64u_decode(row["publickey"], 32)
        signature = b64u_decode(row["signature"], 64)
        chained = currhash(prev, row["created"], publickey, signature, contents)
        if chained != b64u_decode(row["hash"], 32):
            raise SystemExit(f"entry {index}: currhash does not recompute; wrong source file?")
        prev = chained
        record = LeafRecord.build(row["created"], publickey, signature, contents, chained)
        leaf = record.to_bytes()
        tree.append(record.leaf_hash())
        entries.append({
            "index": index,
            "created": row["created"],
            "publickey": row["publickey"],
            "signature": row["signature"],
            "contents": row["contents"],
            "currhash": row["hash"],
            "contents_sha256": hashlib.sha256(contents).hexdigest(),
            "leaf": leaf.hex(),
            "leaf_hash": record.leaf_hash().hex(),
        })
    document = {
        "description": "Chronicle tlog leaf records (docs/tlog-leaf.md) for the first entries "
                       "of a recorded PHP Chronicle 1.3.1 export; hashes are lowercase hex, "
                       "publickey/signature/currhash are base64url as in the export.",
        "source": f"{SOURCE.as_posix()} (results 0..{COUNT - 1})",
        "layout": "0x01 || uint16be(len(created)) || created || publickey(32) || "
                  "signature(64) || sha256(contents)(32) || currhash(32)",
        "leaf_hash": "SHA-256(0x00 || leaf)",
        "entries": entries,
        "roots": [{"size": n, "root": tree.root(n).hex()} for n in range(1, COUNT + 1)],
    }
    return json.dumps(document, indent=2, ensure_ascii=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    args = parser.parse_args(argv)
    text = build()
    target = ROOT / TARGET
    if args.check:
        if not target.exists() or target.read_text() != text:
            print(f"{TARGET} is out of date: run scripts/gen_tlog_vectors.py", file=sys.stderr)
            return 1
        return 0
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
