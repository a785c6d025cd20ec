"""``chronicle witness serve``: the witness's HTTP face (c2sp.org/tlog-witness).

- ``POST /add-checkpoint``: the request body as the spec gives it; the answer is 200 with
  the cosignature lines, 409 with ``text/x.tlog.size`` (the size the witness holds),
  404 unknown log, 403 no valid log signature, 422 bad consistency proof, 400 malformed.
  Refusals other than the 409 carry one line of plain text saying why.
- ``GET /``: who the witness is (name, cosignature vkey, the key signing its answers) and
  the logs it witnesses with the size each reached, as JSON.

Witness clients look at the status and (200, 409) the body only. Every answer is signed
anyway, as all of chronicle's are: ``Body-Signature-Ed25519`` by the witness's own
Ed25519 key, the key of its vkey. That key signs nothing else that could pass for a
cosignature: a cosignature/v1 message starts ``cosignature/v1\\n``, and no answer body
does (cosignature lines start with U+2014, the rest are digits, JSON or error text).

Admission is the ledger's (:mod:`~chronicle.server.admission`): the connection gate, body
limits, timeouts, and parser errors answered signed.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from aiohttp import web

from chronicle.config import WitnessDir, WitnessSettings
from chronicle.core.checkpoint import (
    TLOG_SIZE_CONTENT_TYPE,
    Conflict,
    Cosigner,
    Refusal,
    UnknownLog,
)
from chronicle.core.encoding import b64u_encode, utcnow
from chronicle.core.sapient import SigningKey
from chronicle.ledger import Clock
from chronicle.server.admission import BodyLimits, holding, read_body
from chronicle.server.responses import Responder, signed_errors
from chronicle.server.runner import Announce, announce_on_stderr, run_loop, run_site
from chronicle.store.witness import WitnessStore, open_witness_store
from chronicle.witness import Answer, Cosigned, Witness

TEXT = "text/plain; charset=utf-8"
SPEC = "https://c2sp.org/tlog-witness"
#: How much of an (unverified) origin an error line repeats.
ORIGIN_SHOWN = 200


class WitnessResponder(Responder):
    """Errors as one line of plain text, as witness clients expect (still signed)."""

    def error_body(self, message: str, details: Any = None) -> tuple[bytes, str]:
        return (message.replace("\n", " ") + "\n").encode("utf-8"), TEXT


WITNESS = web.AppKey("witness", Witness)
RESPONDER = web.AppKey("witness-responder", WitnessResponder)
LIMITS = web.AppKey("witness-body-limits", BodyLimits)


def answer(resp: Responder, result: Answer) -> web.Response:
    """The HTTP answer for a witness decision (tlog-witness "add-checkpoint")."""
    if isinstance(result, Cosigned):
        return resp.raw(200, result.body(), TEXT)
    if isinstance(result, Conflict):
        return resp.raw(409, result.body(), TLOG_SIZE_CONTENT_TYPE)
    if isinstance(result, UnknownLog):
        return resp.error(404, f"unknown log {result.origin[:ORIGIN_SHOWN]!r}")
    assert isinstance(result, Refusal)
    return resp.error(result.status, result.reason)


async def add_checkpoint(request: web.Request) -> web.StreamResponse:
    body = await read_body(request, request.app[LIMITS])
    result = await request.app[WITNESS].add_checkpoint(body)
    return answer(request.app[RESPONDER], result)


async def describe(request: web.Request) -> web.StreamResponse:
    """Who the witness is and what it witnesses (not part of the spec: for operators)."""
    witness = request.app[WITNESS]
    cosigner = witness.cosigner
    logs = [{"origin": log.origin, "size": log.state.size if log.state else 0}
            for log in await witness.store.logs()]
    description = {"name": cosigner.name, "vkey": cosigner.vkey(),
                   "public-key": b64u_encode(cosigner.key.public), "protocol": SPEC,
                   "add-checkpoint": "/add-checkpoint", "logs": logs}
    body = json.dumps(description, indent=2).encode("utf-8") + b"\n"
    return request.app[RESPONDER].raw(200, body, "application/json")


def build_witness_app(settings: WitnessSettings, key: SigningKey, store: WitnessStore, *,
                      clock: Clock = utcnow) -> web.Application:
    """The witness's aiohttp app, over an open ``store``."""
    responder = WitnessResponder(key, clock)
    app = web.Application(middlewares=[signed_errors(responder, settings.max_body_size),
                                       holding],
                          client_max_size=settings.max_body_size)
    app[WITNESS] = Witness(store, Cosigner(settings.name, key), clock=clock)
    app[RESPONDER] = responder
    app[LIMITS] = BodyLimits.of(settings.max_body_size, settings.body_timeout,
                                settings.body_memory)
    app.router.add_get("/", describe)
    app.router.add_post("/add-checkpoint", add_checkpoint)
    return app


async def serve_witness(witness_dir: WitnessDir, host: str, port: int, *,
                        clock: Clock = utcnow,
                        announce: Announce = announce_on_stderr) -> None:
    """Serve the witness until a stop signal, then drain (in-flight requests finish)."""
    settings = witness_dir.settings()
    key = witness_dir.signing_key(settings)
    store = open_witness_store(settings.database, witness_dir.path)
    await store.open()
    try:
        app = build_witness_app(settings, key, store, clock=clock)
        await run_site(app, app[RESPONDER], settings, host, port, announce=announce)
    finally:
        with contextlib.suppress(Exception):
            await store.close()


def run(witness_dir: WitnessDir, host: str, port: int, *,
        announce: Announce = announce_on_stderr) -> None:
    """Serve the witness until SIGTERM; ``announce(url, 1)`` once connections are accepted."""
    run_loop(serve_witness(witness_dir, host, port, announce=announce))
