"""Evidence: the signed answers that show a source forked or lied, kept as received.

A small answer is stored in the database itself; a very large one (a whole export that
carries the conflicting entry) is moved from the spool directory into
``{data dir}/evidence/`` and the database records its path and SHA-256. The signature
header is kept with the bytes: anyone can check later that the upstream really said it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chronicle.client.http import FetchedDocument
from chronicle.core.encoding import b64u_encode, decode_b64_field
from chronicle.core.verify import StreamingVerifier
from chronicle.store import EvidenceDocument

#: Answers up to this size are kept in the database; larger ones as files.
INLINE_LIMIT = 16 << 20
#: Larger answers than this are not kept at all (their hash and signature are).
FILE_LIMIT = 1 << 30


@dataclass
class EvidenceKeeper:
    """Turns fetched answers into :class:`EvidenceDocument` rows (moving big ones)."""

    directory: Path
    inline_limit: int = INLINE_LIMIT
    file_limit: int = FILE_LIMIT

    def keep(self, role: str, doc: FetchedDocument, signer: bytes | None) -> EvidenceDocument:
        """The document as evidence. Its bytes are kept only when ``signer`` signed them:
        an unsigned (or forged) answer proves nothing against anyone, so of it only the
        size, SHA-256 and signature header are recorded (a gzip bomb once left 600 MB)."""
        digest = hashlib.sha256()
        verifier = _verifier(signer, doc.signature)
        for chunk in doc.chunks():
            digest.update(chunk)
            if verifier is not None:
                verifier.update(chunk)
        signed = verifier is not None and verifier.verify()
        body: bytes | None = None
        file: str | None = None
        if signed and doc.size <= self.inline_limit:
            body = doc.read()
            doc.discard()
        elif signed and doc.size <= self.file_limit:
            self.directory.mkdir(parents=True, exist_ok=True)
            target = self.directory / f"{digest.hexdigest()[:32]}.json"
            if doc.file is not None:
                shutil.move(doc.file, target)
                doc.file = None
            else:
                target.write_bytes(doc.read())
            os.chmod(target, 0o600)
            file = str(target)
        else:
            doc.discard()
        return EvidenceDocument(role=role, method=doc.method, url=doc.url, status=doc.status,
                                signature=doc.signature, signer=signer if signed else None,
                                body=body, file=file, size=doc.size, sha256=digest.hexdigest())


def _verifier(signer: bytes | None, header: str | None) -> StreamingVerifier | None:
    signature = decode_b64_field((header or "").strip(), 64)
    if signer is None or signature is None:
        return None
    return StreamingVerifier(signer, signature)


def describe(doc: EvidenceDocument, *, with_body: bool = True) -> dict[str, Any]:
    """One evidence document as JSON (``replica evidence --json``)."""
    out: dict[str, Any] = {
        "role": doc.role, "request": f"{doc.method} {doc.url}", "status": doc.status,
        "signature": doc.signature,
        "signed-by": None if doc.signer is None else b64u_encode(doc.signer),
        "size": doc.size, "sha256": doc.sha256, "file": doc.file,
    }
    if with_body and doc.body is not None:
        out["body"] = doc.body.decode("utf-8", "replace")
    return out
