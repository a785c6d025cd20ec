"""Pure, sans-I/O domain core: encodings, the BLAKE2b chain, Sapient signatures, protocol
bodies, chain verification, the Merkle tree, signed notes and checkpoints, and the
agreement rules of split-view detection.

Nothing in this package performs I/O (tests/unit/test_core_purity.py holds it to an
allow-list of imports); the server, the storage drivers, the client, the auditor, the
replica follower and the tests all call the same functions. The names below are the
public API; everything else is reachable through its module.
"""

from chronicle.core.agreement import PeerReport, PeerStatus, split_view
from chronicle.core.blakechain import ChainBuilder, ChainHead, Entry, SummaryState, currhash
from chronicle.core.checkpoint import Checkpoint, CosignatureVerifier, Cosigner
from chronicle.core.document import DocumentParser
from chronicle.core.encoding import (
    atom,
    b64u_decode,
    b64u_encode,
    decode_b64_field,
    parse_timestamp,
    php_json,
    utcnow,
)
from chronicle.core.errors import (
    AuthError,
    ChronicleError,
    EncodingError,
    IntegrityError,
    NotFoundError,
    OverloadedError,
    RequestError,
    StorageError,
    TransportError,
)
from chronicle.core.leaf import LeafRecord
from chronicle.core.merkle import TreeState, leaf_hash, verify_consistency, verify_inclusion
from chronicle.core.note import Ed25519Signer, Ed25519Verifier, open_note, sign_note
from chronicle.core.sapient import CLIENT_HEADER, SIGNATURE_HEADER, SigningKey, verify
from chronicle.core.verify import (
    AnchorError,
    BrokenLinkError,
    ChainFault,
    ChainState,
    ChainVerifier,
    DocumentSignatureError,
    EntrySignatureError,
    HashMismatchError,
    HistoryRewrittenError,
    MalformedError,
    SplitViewError,
    verify_row,
)

__all__ = [
    "CLIENT_HEADER",
    "SIGNATURE_HEADER",
    "AnchorError",
    "AuthError",
    "BrokenLinkError",
    "ChainBuilder",
    "ChainFault",
    "ChainHead",
    "ChainState",
    "ChainVerifier",
    "Checkpoint",
    "ChronicleError",
    "CosignatureVerifier",
    "Cosigner",
    "DocumentParser",
    "DocumentSignatureError",
    "Ed25519Signer",
    "Ed25519Verifier",
    "EncodingError",
    "Entry",
    "EntrySignatureError",
    "HashMismatchError",
    "HistoryRewrittenError",
    "IntegrityError",
    "LeafRecord",
    "MalformedError",
    "NotFoundError",
    "OverloadedError",
    "PeerReport",
    "PeerStatus",
    "RequestError",
    "SigningKey",
    "SplitViewError",
    "StorageError",
    "SummaryState",
    "TransportError",
    "TreeState",
    "atom",
    "b64u_decode",
    "b64u_encode",
    "currhash",
    "decode_b64_field",
    "leaf_hash",
    "open_note",
    "parse_timestamp",
    "php_json",
    "sign_note",
    "split_view",
    "utcnow",
    "verify",
    "verify_consistency",
    "verify_inclusion",
    "verify_row",
]
