"""Python client for Chronicle 1.3 servers (ours or PHP's): sign, send, verify every answer.

Async (:class:`ChronicleClient`) with a small blocking facade (:class:`SyncChronicleClient`).
See README "Client library" for examples.
"""

from chronicle.client.errors import (
    ClientRejected,
    RateLimited,
    RecordNotFound,
    RequestExpired,
    ResponseSignatureError,
    ServerRefused,
    ServerUnavailable,
    StaleResponseError,
    UnexpectedResponseError,
)
from chronicle.client.http import ChronicleClient, Head, Receipt, VerifiedEntry, api_base
from chronicle.client.sync import SyncChronicleClient

__all__ = [
    "ChronicleClient",
    "ClientRejected",
    "Head",
    "RateLimited",
    "Receipt",
    "RecordNotFound",
    "RequestExpired",
    "ResponseSignatureError",
    "ServerRefused",
    "ServerUnavailable",
    "StaleResponseError",
    "SyncChronicleClient",
    "UnexpectedResponseError",
    "VerifiedEntry",
    "api_base",
]
