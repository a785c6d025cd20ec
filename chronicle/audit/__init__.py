"""The auditor: replay a whole Chronicle chain and prove it (docs/audit.md).

``chronicle audit`` (``chronicle/cli/audit.py``) drives :func:`audit_export` /
:func:`audit_server` (``runner.py``, the I/O), which feed :class:`ChainAuditor`
(``engine.py``, no I/O), which checks hashes sequentially with
:class:`~chronicle.core.verify.ChainVerifier` and entry signatures in parallel
(:mod:`chronicle.client.sigpool`).
"""

from chronicle.audit.engine import AuditReport, ChainAuditor
from chronicle.audit.runner import AuditOptions, PeerSpec, audit_export, audit_server

__all__ = ["AuditOptions", "AuditReport", "ChainAuditor", "PeerSpec", "audit_export",
           "audit_server"]
