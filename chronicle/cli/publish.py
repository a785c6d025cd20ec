"""The publisher's side: ``keygen`` makes a key pair, ``publish`` appends with it to a
server given by ``--url`` (no data directory: these run wherever the publisher is)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from chronicle.cli.common import (
    EXIT_IO,
    EXIT_USAGE,
    fail,
    handle_errors,
    instance_option,
    json_option,
    out,
    public_key,
    run,
)
from chronicle.client import ChronicleClient
from chronicle.config import write_secret_file
from chronicle.core.errors import ChronicleError, IntegrityError
from chronicle.core.sapient import SigningKey
from chronicle.core.verify import DocumentSignatureError


@click.command()
@json_option
@click.option("--out", "out_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the secret key file (mode 0600) and print the public key.")
@handle_errors
def keygen(as_json: bool, out_file: Path | None) -> None:
    """Create an Ed25519 key pair (secret key in PHP Chronicle's key-file format)."""
    key = SigningKey.generate()
    if out_file is not None:
        try:
            write_secret_file(out_file, key.to_text())
        except FileExistsError:
            fail(f"{out_file} already exists", EXIT_IO)
        out(as_json, {"public-key": key.public_b64}, key.public_b64)
        return
    out(as_json, {"secret-key": key.to_text(), "public-key": key.public_b64},
        f"secret-key: {key.to_text()}\npublic-key: {key.public_b64}")


@click.command()
@click.option("--url", required=True, help="Server base URL, without /chronicle.")
@click.option("--client-id", required=True, help="Our client id on that server.")
@click.option("--secret-key-file", required=True,
              type=click.Path(dir_okay=False, path_type=Path),
              help="Our Ed25519 secret key (as `chronicle keygen` writes it).")
@click.option("--server-key", required=True, help="Pinned server public key.")
@instance_option
@json_option
@click.argument("body", required=False)
@handle_errors
def publish(url: str, client_id: str, secret_key_file: Path, server_key: str, instance: str,
            as_json: bool, body: str | None) -> None:
    """Publish BODY (or stdin with `-`, as exact bytes) and print the verified receipt."""
    pinned = public_key(server_key, "--server-key")
    if body is None:
        raise click.UsageError("give BODY, or - to read stdin")
    data = sys.stdin.buffer.read() if body == "-" else body.encode("utf-8")
    try:
        key = SigningKey.from_text(secret_key_file.read_text())
    except ChronicleError as exc:
        fail(f"{secret_key_file}: {exc.message}", EXIT_USAGE)

    async def go() -> dict[str, str]:
        async with ChronicleClient(url, pinned, instance=instance, client_id=client_id,
                                   key=key) as api:
            return (await api.publish(data)).as_dict()

    try:
        receipt = run(go())
    except DocumentSignatureError as exc:
        # The request went out and was signed correctly: the server may well have stored
        # it. What failed is our check of its answer.
        fail("the receipt could not be verified with the pinned --server-key (the entry "
             f"may be on the chain; check the key, then look it up): {exc.diagnostics()}")
    except IntegrityError as exc:
        fail(f"verification failed: {exc.diagnostics()}")
    out(as_json, receipt, "\n".join(f"{k}: {v}" for k, v in receipt.items()))
