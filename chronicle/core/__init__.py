"""Pure, sans-I/O domain core: encodings, the BLAKE2b chain, Sapient signatures, protocol bodies.

Nothing in this package performs I/O or imports aiohttp, aiosqlite or asyncpg; the server,
the storage drivers, the client and the tests all call the same functions.
"""
