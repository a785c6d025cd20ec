"""A bounded schemathesis run against a live loopback server, on both backends.

Every operation of the served description gets requests generated from it, a fixed
number per operation and pass, derandomized: the run is the same every time and bounded
in time. Three passes:

- ``generated``: valid requests as the description allows them;
- ``negative``: requests that break it (operations with nothing to break are left out);
- ``real``: valid requests naming what exists (an entry's hash, the replicated source,
  leaf indexes), and writes signed by a registered client (publish) or an administrator
  (register, revoke) over the exact generated body, so they get past authentication.

Every answer must be no 5xx and carry exactly one ``Body-Signature-Ed25519`` that
verifies with the server's key over the exact body; answers to valid requests must also
conform to the description (status, content type, headers, body schema).

The server is the real ``chronicle serve`` in a subprocess (its connection gate and its
signed answers to requests aiohttp cannot parse included), on a ledger prepared first.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from chronicle.core.encoding import b64u_decode, utcnow
from chronicle.core.errors import EncodingError
from chronicle.core.sapient import CLIENT_HEADER, SIGNATURE_HEADER, verify
from chronicle.server import openapi
from chronicle.treelog import enable
from tests.helpers import REPO_ROOT, Identity, init_data_dir, start_server
from tests.integration.test_replication import QUIET, add_source, sync

#: Examples per operation and pass (29 operations, 3 passes): about a minute per backend.
EXAMPLES = 20
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance]
ADMIN_PATHS = ("/chronicle/register", "/chronicle/revoke")


@dataclass
class Live:
    """``chronicle serve`` on loopback, and what exists on its ledger."""

    url: str
    server_key: bytes
    client: Identity
    admin: Identity
    known: dict[str, str]
    """Path parameter values that name something that exists."""


async def _prepare(path: Path) -> tuple[bytes, Identity, Identity, dict[str, str]]:
    """A ledger with entries, clients, its Merkle tree, and a replica of itself: real
    data for the generated requests to find. Made by an in-process server, then closed."""
    srv = await start_server(await init_data_dir(path, paginate_export=3, **QUIET))
    try:
        client = await srv.add_client("alice")
        admin = await srv.add_client("admin", is_admin=True)
        receipts = [(await srv.publish("alice", f"entry {i}")).json["results"]
                    for i in range(5)]
        await enable(srv.ctx.store, srv.ctx.ledger(""), srv.key,
                     srv.ctx.data_dir.tlog_key_path(srv.ctx.settings), "example.org/t",
                     clock=utcnow)
        source = await add_source(srv.ctx.data_dir, srv.url, srv.key.public, "itself")
        assert (await sync(srv.ctx.data_dir)).code == 0
    finally:
        await srv.close()
    return srv.key.public, client, admin, {
        "hash": receipts[1]["currhash"], "source": source, "entry": "1", "old": "2",
        "new": "6", "page": "2", "tail": "0/000.p/6"}


@pytest.fixture
def live(tmp_path: Path) -> Iterator[Live]:
    """The real ``chronicle serve`` (its connection gate, its parser-error answers …)."""
    path = tmp_path / "ledger"
    server_key, client, admin, known = asyncio.run(_prepare(path))
    log = tmp_path / "serve.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "chronicle.cli", "serve", "--data-dir", str(path),
             "--port", "0"], stdout=subprocess.DEVNULL, stderr=err,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    try:
        deadline = time.monotonic() + 60
        while not (found := re.search(r"listening on (http://\S+)", log.read_text())):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "chronicle serve did not start"
            time.sleep(0.1)
        yield Live(found.group(1), server_key, client, admin, known)
    finally:
        proc.terminate()
        assert proc.wait(timeout=60) == 0, log.read_text()


class SigningSession(requests.Session):
    """Signs each write's exact body as the client a real caller would be."""

    def __init__(self, client: Identity, admin: Identity) -> None:
        super().__init__()
        self.client = client
        self.admin = admin

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        if request.method == "POST":
            who = self.admin if (request.path_url or "").startswith(ADMIN_PATHS) \
                else self.client
            body = request.body or b""
            body = body.encode() if isinstance(body, str) else body
            request.headers[CLIENT_HEADER] = who.client_id
            request.headers[SIGNATURE_HEADER] = who.key.sign_b64(body)
        return super().send(request, **kwargs)


def signature_problem(response: schemathesis.Response, server_key: bytes) -> str | None:
    """Why the answer's signature is not the server's over the exact body (None: it is)."""
    if response.content_size != len(response.content):
        return "body not kept whole"
    sigs = response.headers.get(SIGNATURE_HEADER.lower(), [])
    if len(sigs) != 1:
        return f"{len(sigs)} signature headers"
    try:
        raw = b64u_decode(sigs[0], 64)
    except EncodingError:
        return f"malformed signature {sigs[0]!r}"
    return None if verify(server_key, response.content, raw) else "signature does not verify"


def exercise(operation: schemathesis.APIOperation, mode: schemathesis.GenerationMode,
             session: requests.Session, fixed: dict[str, str] | None,
             query: dict[str, str] | None, live: Live, statuses: dict[int, int]) -> None:
    """``EXAMPLES`` requests generated for ``operation``, each answer checked."""

    @hypothesis.given(case=operation.as_strategy(generation_mode=mode,
                                                 path_parameters=fixed or None,
                                                 query=query or None))
    @hypothesis.settings(max_examples=EXAMPLES, derandomize=True, deadline=None,
                         database=None, phases=[Phase.explicit, Phase.generate],
                         suppress_health_check=list(HealthCheck), print_blob=False)
    def run(case: schemathesis.Case) -> None:
        response = case.call(base_url=live.url, session=session, timeout=60)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        problem = signature_problem(response, live.server_key)
        assert problem is None, f"{case.method} {case.formatted_path}: {problem}"
        case.validate_response(response, checks=CHECKS if mode.is_positive
                               else [not_a_server_error])

    run()


def test_schemathesis_finds_no_server_error_and_no_unsigned_answer(live: Live) -> None:
    schema = schemathesis.openapi.from_dict(openapi.load())
    plain = requests.Session()
    signing = SigningSession(live.client, live.admin)
    statuses: dict[int, int] = {}
    ran: dict[str, set[str]] = {"generated": set(), "negative": set(), "real": set()}
    operations = [result.ok() for result in schema.get_all_operations()]
    for operation in operations:
        names = {p.name for p in operation.path_parameters}
        # The real pass asks the default chain (a generated instance name is unknown: 404).
        chain = {"instance": ""} if any(p.name == "instance" for p in operation.query) \
            else None
        passes = [("generated", schemathesis.GenerationMode.POSITIVE, plain, None, None),
                  ("negative", schemathesis.GenerationMode.NEGATIVE, plain, None, None),
                  ("real", schemathesis.GenerationMode.POSITIVE, signing,
                   {k: v for k, v in live.known.items() if k in names}, chain)]
        for name, mode, session, fixed, query in passes:
            try:
                exercise(operation, mode, session, fixed, query, live, statuses)
            except hypothesis.errors.Unsatisfiable:
                # Nothing in this operation can be made invalid (no parameter or body
                # with a constraint to break): only valid requests exist for it.
                assert name == "negative", (operation.label, name)
                continue
            ran[name].add(operation.label)
    assert not [s for s in statuses if s >= 500], statuses
    assert len(ran["generated"]) == len(ran["real"]) == len(operations)
    assert len(ran["negative"]) >= 20, ran["negative"]
    assert statuses.get(200, 0) >= 100, statuses  # the real pass found real things
    # Signed writes went through: the chain grew past the 6 entries it started with.
    after = plain.get(f"{live.url}/chronicle/since/{live.known['hash']}", timeout=60).json()
    assert after["total"] > 4, after
