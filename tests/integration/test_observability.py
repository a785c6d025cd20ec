"""What an operator's tooling asks: /healthz, /readyz, /metrics, request ids.

Readiness is tested against a real refusal by each database (SQLite made query-only,
PostgreSQL refusing inserts with ``insufficient_privilege``): publishes get a signed 503
with ``Retry-After``, /readyz names the failing check, and both recover when the database
accepts writes again. Metrics are checked for real counts, also summed across the worker
processes of ``serve --workers 2``.
"""

from __future__ import annotations

import re
from pathlib import Path

import aiohttp

from chronicle.core.encoding import b64u_decode
from chronicle.core.sapient import SIGNATURE_HEADER, verify
from chronicle.store import schema
from tests.helpers import (
    RunningServer,
    ServerProcess,
    add_client_offline,
    http_publish,
    init_data_dir,
    serving,
    stop_process,
)


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        sample, _, rest = key.partition("{")
        got = ",".join(sorted(rest.rstrip("}").split(","))) if rest else ""
        if sample == name and got == want:
            return float(value)
    return 0.0


async def test_healthz_and_request_ids(tmp_path: Path) -> None:
    async with serving(tmp_path / "l") as srv:
        made = await srv.request("GET", "/healthz")
        assert made.status == 200 and made.json["results"] == {"status": "alive"}
        assert re.fullmatch(r"[0-9a-f]{16}", made.headers["X-Request-Id"])
        kept = await srv.request("GET", "/healthz", headers={"X-Request-Id": "lb-42.a_b"})
        assert kept.headers["X-Request-Id"] == "lb-42.a_b"
        # A proxy's id that could smuggle anything into a log line is replaced.
        odd = await srv.request("GET", "/healthz", headers={"X-Request-Id":
                                                              'a b;x="y"' + "z" * 80})
        assert re.fullmatch(r"[0-9a-f]{16}", odd.headers["X-Request-Id"])
        # Errors carry one too.
        missing = await srv.request("GET", "/chronicle/nowhere")
        assert missing.status == 404 and missing.headers["X-Request-Id"]
        # Ours are never repeated.
        ids = {(await srv.request("GET", "/healthz")).headers["X-Request-Id"]
               for _ in range(5)}
        assert len(ids | {made.headers["X-Request-Id"], odd.headers["X-Request-Id"]}) == 7


async def deny_writes(srv: RunningServer, backend: str, deny: bool) -> None:
    """Make the database itself refuse (or accept again) appends to the chain."""
    db = srv.ctx.store.db
    if backend == "sqlite":
        flag = "ON" if deny else "OFF"
        writer = db._writer  # type: ignore[attr-defined]
        await db.on_writer(writer.execute, f"PRAGMA query_only={flag}")  # type: ignore[attr-defined]
        return
    async with db.transaction() as s:
        if deny:
            await s.script(
                "CREATE FUNCTION deny() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                "RAISE EXCEPTION 'permission denied for table entries' "
                "USING ERRCODE = 'insufficient_privilege'; END $$;"
                "CREATE TRIGGER deny BEFORE INSERT ON entries "
                "FOR EACH ROW EXECUTE FUNCTION deny();")
        else:
            await s.script("DROP TRIGGER deny ON entries; DROP FUNCTION deny();")


async def test_readyz_reports_a_database_that_refuses_writes(tmp_path: Path,
                                                             backend: str) -> None:
    async with serving(tmp_path / "l", "alice") as srv:
        ready = await srv.request("GET", "/readyz")
        assert ready.status == 200, ready.body
        assert ready.json["results"] == {"ready": True, "checks": {
            "database": "ok", "schema": "ok", "signing-key": "ok",
            "sequencer (default)": "ok"}}
        assert (await srv.publish("alice", "before")).status == 200

        await deny_writes(srv, backend, True)
        refused = await srv.publish("alice", "while denied")
        assert refused.status == 503, refused.body
        assert refused.headers["Retry-After"] == "60"
        assert "nothing was stored" in refused.json["message"]
        not_ready = await srv.request("GET", "/readyz")
        assert not_ready.status == 503
        assert not_ready.json["status"] == "ERROR"
        failing = not_ready.json["results"]["checks"]
        assert failing["database"] == "ok"
        assert "writes (default)" in failing and failing["writes (default)"] != "ok"
        assert "writes (default)" in not_ready.json["message"]

        await deny_writes(srv, backend, False)
        again = await srv.publish("alice", "while denied")
        assert again.status == 200
        assert (await srv.request("GET", "/readyz")).status == 200
        rows = (await srv.request("GET", "/chronicle/export")).json["results"]
        assert [r["contents"] for r in rows] == ["before", "while denied"]


async def test_readyz_reports_a_schema_this_code_does_not_know(tmp_path: Path) -> None:
    async with serving(tmp_path / "l") as srv:
        async with srv.ctx.store.db.transaction() as s:
            await s.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'",
                            str(schema.SCHEMA_VERSION + 1))
        answer = await srv.request("GET", "/readyz")
        assert answer.status == 503
        assert answer.json["results"]["checks"]["schema"] == (
            f"version {schema.SCHEMA_VERSION + 1}, this chronicle needs "
            f"{schema.SCHEMA_VERSION}")


async def test_metrics_count_requests_and_appends(tmp_path: Path) -> None:
    async with serving(tmp_path / "l", "alice") as srv:
        for n in range(3):
            assert (await srv.publish("alice", f"m{n}")).status == 200
        assert (await srv.request("GET", "/chronicle/lookup/nothere")).status == 400
        scrape = await srv.request("GET", "/metrics")
        assert scrape.status == 200
        assert scrape.headers["Content-Type"].startswith("text/plain")
        text = scrape.body.decode()
        assert metric(text, "chronicle_entries_appended_total", instance="") == 3
        assert metric(text, "chronicle_chain_entries", instance="(default)") == 3
        assert metric(text, "chronicle_request_seconds_count", method="POST",
                      route="/chronicle/publish", status="200") == 3
        # Labels are route patterns, not raw paths: a scan cannot blow up the series.
        assert metric(text, "chronicle_request_seconds_count", method="GET",
                      route="/chronicle/lookup/{hash}", status="400") == 1
        assert "nothere" not in text
        assert metric(text, "chronicle_batch_entries_count", instance="") >= 1


async def test_metrics_count_invented_methods_as_one(tmp_path: Path) -> None:
    """Any method name is a label value to Prometheus: strangers inventing them would add
    a series each. All but GET, HEAD, POST and OPTIONS are counted as ``other``."""
    async with serving(tmp_path / "l") as srv:
        for method in ("PROPFIND", "MKCOL", "PATCH"):
            answer = await srv.request(method, "/chronicle/lasthash")
            assert answer.status == 405
        text = (await srv.request("GET", "/metrics")).body.decode()
        assert metric(text, "chronicle_request_seconds_count", method="other",
                      route="unmatched", status="405") == 3
        assert "PROPFIND" not in text and "MKCOL" not in text


async def test_metrics_are_summed_across_workers(tmp_path: Path) -> None:
    data_dir = await init_data_dir(tmp_path / "l")
    alice = await add_client_offline(data_dir, "alice")
    sp = ServerProcess(data_dir.path, "--workers", "2")
    url = await sp.start()
    public = data_dir.signing_key(data_dir.settings()).public
    try:
        async with aiohttp.ClientSession() as session:
            # Each publish opens a new connection: the two workers share them out.
            for n in range(20):
                async with aiohttp.ClientSession() as one:
                    answer = await http_publish(one, url, public, alice, f"w{n}")
                    assert answer.status == 200
            totals = set()
            for _ in range(6):
                async with session.get(url + "/metrics",
                                       headers={"Connection": "close"}) as resp:
                    body = await resp.read()
                    sig = b64u_decode(resp.headers[SIGNATURE_HEADER], 64)
                    assert verify(public, body, sig)
                    totals.add(metric(body.decode(), "chronicle_entries_appended_total",
                                      instance=""))
            assert totals == {20.0}
    finally:
        await stop_process(sp, graceful=True)
    assert not list((data_dir.cache_dir).glob("metrics-*"))
