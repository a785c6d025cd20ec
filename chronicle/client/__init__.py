"""Python client for Chronicle 1.3 servers (ours or PHP's): sign, send, verify every answer."""

from chronicle.client.http import ChronicleClient, Receipt

__all__ = ["ChronicleClient", "Receipt"]
