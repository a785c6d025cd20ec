"""chronicle: an append-only transparency ledger compatible with paragonie/chronicle 1.3."""

__version__ = "0.1.0"
