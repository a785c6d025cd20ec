"""The HTTP server: thin aiohttp handlers over the ledger, the store and the core."""
