"""The web explorer's routes (issue 15) on a real server, on both backends: status, signed
pages, the CSP, escaping of hostile bodies, keyset paging, searches and their bounds, the
redirect of Chronicle clients at ``/``, and the vendored libraries' provenance."""

from __future__ import annotations

import asyncio
import hashlib
import html
import re
from pathlib import Path
from urllib.parse import quote

import pytest

from chronicle.core.blakechain import ChainBuilder
from chronicle.core.checkpoint import Cosigner
from chronicle.core.encoding import b64u_encode, utcnow
from chronicle.core.errors import ChronicleError
from chronicle.core.sapient import CLIENT_HEADER, SigningKey
from chronicle.explorer import model
from chronicle.replication.witnessing import JobSizes
from chronicle.server.explorer import CSP
from chronicle.store import ReplicaSource, XsignTarget
from chronicle.treelog import enable
from tests.helpers import RunningServer, serving

HOSTILE = '<script>document.title="pwned"</script><img src=x onerror="alert(1)">&amp;'
VENDOR = Path(__file__).resolve().parents[2] / "chronicle" / "explorer" / "static" / "vendor"


def page_text(body: bytes) -> str:
    return body.decode("utf-8")


def check_page(res: object, status: int = 200) -> str:
    """A signed HTML page (the fixture's request checked the signature) with our CSP."""
    assert res.status == status  # type: ignore[attr-defined]
    headers = res.headers  # type: ignore[attr-defined]
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert headers["Content-Security-Policy"] == CSP
    assert headers["X-Content-Type-Options"] == "nosniff"
    return page_text(res.body)  # type: ignore[attr-defined]


async def append(srv: RunningServer, bodies: list[str]) -> list[dict[str, str]]:
    """Entries through the sequencer (one group commit), signed by a throwaway key."""
    key = SigningKey.generate()
    ledger = srv.ctx.ledger("")
    entries = await asyncio.gather(*(ledger.append(b.encode(), key.public, key.sign(b.encode()))
                                     for b in bodies))
    return [{"currhash": b64u_encode(e.currhash), "summaryhash": b64u_encode(e.summaryhash),
             "publickey": b64u_encode(e.publickey)} for e in entries]


def error(res: object, status: int, message: str) -> None:
    assert res.status == status, res.body  # type: ignore[attr-defined]
    doc = res.json  # type: ignore[attr-defined]
    assert (doc["status"], doc["message"]) == ("ERROR", message)


# --- / and the overview -------------------------------------------------------------------

async def test_root_is_the_overview_and_redirects_clients(server: RunningServer) -> None:
    text = check_page(await server.request("GET", "/"))
    assert "'unsafe-inline'" not in CSP and "script-src 'self';" in CSP
    assert 'id="chain-length">0<' in text and "The chain is empty" not in text
    assert server.key.public_b64 in text
    assert "<script>" not in text and re.search(r"<script(?! src=\"/explorer/static/)", text) \
        is None
    res = await server.request("GET", "/", headers={CLIENT_HEADER: "anything"})
    assert res.status == 302 and res.headers["Location"] == "/chronicle" and res.body == b""
    check_page(await server.request("GET", "/explorer/"))


async def test_overview_numbers_head_and_chart(server: RunningServer) -> None:
    await append(server, [f"entry {i}" for i in range(30)])
    await server.publish("alice", "by alice")
    head = (await server.request("GET", "/chronicle/lasthash")).json["results"][0]
    text = check_page(await server.request("GET", "/"))
    assert 'id="chain-length">31<' in text
    assert f'<dd id="head-currhash"><code class="hash">{head["currhash"]}</code>' in text
    assert head["summaryhash"] in text
    assert '<svg class="chart"' in text or "Not enough entries, or time" in text
    assert 'data-check="lasthash"' in text and f'data-currhash="{head["currhash"]}"' in text


async def test_overview_rate_chart_from_created(server: RunningServer) -> None:
    """The chart's bars come from ``created`` of sampled entries: 10 entries a minute apart."""
    key = SigningKey.generate()
    async with server.ctx.store.write("") as tx:
        builder = ChainBuilder(await tx.head())
        await tx.insert_entries([
            builder.append(f"t{m}".encode(), key.public, key.sign(f"t{m}".encode()),
                           f"2026-01-01T00:{m:02d}:00+00:00") for m in range(10)])
    ov = await model.overview(server.ctx.store, "", instances=("",), witnesses=(),
                              witness_errors={}, public_key="k", now=utcnow())
    assert [p.entries for p in ov.rate] == [1] * 9
    text = check_page(await server.request("GET", "/"))
    assert text.count('<rect class="bar"') == 9
    assert "2026-01-01 00:00 to 2026-01-01 00:01: 1 entries (60.0/h)" in text


async def test_overview_replicas_cross_signs_witnesses(tmp_path: Path) -> None:
    cosigner = Cosigner("witness.test/w1", SigningKey.generate())
    async with serving(tmp_path / "l", "alice",
                       witnesses=[f"http://127.0.0.1:9/w {cosigner.vkey()}"]) as srv:
        store = srv.ctx.store
        now = "2026-01-01T00:00:00+00:00"
        ok = await store.replication.add_source(ReplicaSource(
            name="upstream-ok", url="http://127.0.0.1:9/chronicle", publickey=b"\1" * 32,
            uniqueid="u" * 44, created=now))
        forked = await store.replication.add_source(ReplicaSource(
            name="upstream-forked", url="http://127.0.0.1:9/other", publickey=b"\2" * 32,
            uniqueid="f" * 44, created=now))
        await store.replication.set_status(forked.id, "forked", fault="fork",
                                           reason="two heads <b>", when=now)
        await store.xsign.add_target(XsignTarget(
            name="peer", url="http://127.0.0.1:9/chronicle", publickey=b"\3" * 32,
            clientid="c", policy='{"push-after": 10}', created=now))
        await JobSizes(store.jobs, "").set("witness.test/w1", 7)
        text = check_page(await srv.request("GET", "/"))
        assert ok.uniqueid in text
        row = re.search(r'<tr class="bad"><td><a href="/chronicle/replica/f+">upstream-forked'
                        r".*?</tr>", text)
        assert row is not None and "forked (fork: two heads &lt;b&gt;)" in row.group(0)
        assert '<tr class=""><td><a href="/chronicle/replica/u' in text
        assert "<td>peer</td>" in text and "<td>witness.test/w1</td>" in text
        assert "<td>7</td><td>cosigned</td>" in text


async def test_unknown_instance_and_other_instance(tmp_path: Path) -> None:
    async with serving(tmp_path / "l", "alice", instances=["second"]) as srv:
        error(await srv.request("GET", "/?instance=nope"), 404, "Instance not found")
        error(await srv.request("GET", "/explorer/entries?instance=nope"), 404,
              "Instance not found")
        text = check_page(await srv.request("GET", "/?instance=second"))
        assert "<h1>second chain</h1>" in text and 'href="/?instance=second"' in text


# --- entries: paging and search -------------------------------------------------------------

def indexes(text: str) -> list[int]:
    return [int(x.replace(",", "")) for x in re.findall(r'<td class="num">([\d,]+)</td>', text)]


async def test_entry_list_keyset_paging(server: RunningServer) -> None:
    await append(server, [f"entry {i}" for i in range(120)])
    text = check_page(await server.request("GET", "/explorer/entries"))
    assert indexes(text) == list(range(119, 69, -1))
    assert 'id="older" href="/explorer/entries?before=70"' in text
    text = check_page(await server.request("GET", "/explorer/entries?before=70"))
    assert indexes(text) == list(range(69, 19, -1))
    text = check_page(await server.request("GET", "/explorer/entries?before=20"))
    assert indexes(text) == list(range(19, -1, -1)) and 'id="older"' not in text
    text = check_page(await server.request("GET", "/explorer/entries?before=999999"))
    assert indexes(text)[0] == 119
    error(await server.request("GET", "/explorer/entries?before=-1"), 400,
          "before must be an entry index (a non-negative integer)")
    error(await server.request("GET", "/explorer/entries?before=1&before=2"), 400,
          "Only one before parameter may be provided")
    error(await server.request("GET", "/explorer/entries?q=a&q=b"), 400,
          "Only one q parameter may be provided")


async def test_search_by_hashes_publisher_and_text(server: RunningServer) -> None:
    made = await append(server, [f"plain {i}" for i in range(5)])
    await server.publish("alice", "needle in a haystack")
    alice = b64u_encode(server.identities["alice"].key.public)
    for q in (made[2]["currhash"], made[2]["summaryhash"]):
        text = check_page(await server.request("GET", f"/explorer/entries?q={q}"))
        assert indexes(text) == [2] and f"Search: hash {q}" in text
        assert f'value="{q}"' in text  # the search box keeps the query
    text = check_page(await server.request("GET", f"/explorer/entries?q={alice}"))
    assert indexes(text) == [5] and "Searched entries 0 to 5" in text
    text = check_page(await server.request("GET", "/explorer/entries?q=needle"))
    assert indexes(text) == [5]
    text = check_page(await server.request("GET", "/explorer/entries?q=nowhere+to+be+found"))
    assert indexes(text) == [] and "No entries found." in text
    error(await server.request("GET", "/explorer/entries?q=x"), 400,
          "Search text too short (at least 2 characters)")
    error(await server.request("GET", "/explorer/entries?q=" + "a" * 201), 400,
          "Search text too long (at most 200 characters)")


async def test_text_search_is_bounded_to_a_window(server: RunningServer,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A search examines at most SEARCH_WINDOW entries per request, then offers to go on
    below them; at most SEARCH_LIMIT matches per page."""
    await append(server, [f"{'hit' if i % 7 == 0 else 'miss'} {i}" for i in range(30)])
    monkeypatch.setattr(model, "SEARCH_WINDOW", 10)
    monkeypatch.setattr(model, "SEARCH_LIMIT", 2)
    pages = [("", [28, 21], "21 to 29", 21),  # the limit reached: stops at the last match
             ("&before=21", [14], "11 to 20", 11),  # the window searched through
             ("&before=11", [7], "1 to 10", 1),
             ("&before=1", [0], "0 to 0", None)]
    for params, found, searched, older in pages:
        text = check_page(await server.request("GET", "/explorer/entries?q=hit" + params))
        assert indexes(text) == found and f"Searched entries {searched} " in text, params
        if older is None:
            assert 'id="older"' not in text
        else:
            assert f'id="older" href="/explorer/entries?q=hit&amp;before={older}"' in text


async def test_search_gate_deadline_and_one_at_a_time() -> None:
    gate = model.SearchGate(deadline=0.05)
    release = asyncio.Event()

    async def slow() -> int:
        await release.wait()
        return 1

    with pytest.raises(ChronicleError) as caught:
        await gate.run(slow)
    assert (caught.value.status, caught.value.message) == (
        503, "Search took longer than 0.05 s; search a narrower text")
    with pytest.raises(ChronicleError) as caught:
        await gate.run(slow)
    assert (caught.value.status, caught.value.message, caught.value.headers) == (
        503, "Another search is running; retry in a moment", {"Retry-After": "1"})
    release.set()
    for _ in range(100):
        await asyncio.sleep(0)
    assert await gate.run(slow) == 1


# --- one entry ----------------------------------------------------------------------------

async def test_entry_page_escapes_hostile_bodies(server: RunningServer) -> None:
    await server.publish("alice", HOSTILE)
    await server.publish("alice", '{"html": "</pre><script>x()</script>", "n": [1, 2]}')
    rows = (await server.request("GET", "/chronicle/export")).json["results"]
    text = check_page(await server.request("GET", f"/explorer/entry/{rows[0]['hash']}"))
    assert html.escape(HOSTILE, quote=True) in text
    assert "<img" not in text and "<script>document" not in text
    assert "(text, " in text and "valid (checked by the server)" in text
    assert "recomputed by the server: matches" in text
    assert f'id="next" href="/explorer/entry/{quote(rows[1]["hash"], safe="")}"' in text
    text = check_page(await server.request("GET", f"/explorer/entry/{rows[1]['hash']}"))
    assert "(JSON, pretty-printed" in text and "&lt;/pre&gt;&lt;script&gt;x()" in text
    assert '\n  &quot;n&quot;: [\n    1,' in text
    assert f'id="prev" href="/explorer/entry/{quote(rows[0]["hash"], safe="")}"' in text
    text = check_page(await server.request("GET", "/explorer/entries"))
    assert "&lt;script&gt;document.title" in text and "<script>document" not in text


async def test_entry_not_found_and_malformed(server: RunningServer) -> None:
    made = await append(server, ["one"])
    error(await server.request("GET", "/explorer/entry/" + b64u_encode(b"\0" * 32)), 404,
          "No entry with this hash")
    error(await server.request("GET", "/explorer/entry/not-a-hash"), 404,
          "No entry with this hash")
    # The summaryhash is a search, not an entry's address.
    error(await server.request("GET", "/explorer/entry/" + made[0]["summaryhash"]), 404,
          "No entry with this hash")
    error(await server.request("POST", "/explorer/entry/" + made[0]["currhash"]), 405,
          "Method not allowed. Must be one of: GET, HEAD")


async def test_entry_inclusion_proof_when_tree_enabled(server: RunningServer) -> None:
    made = await append(server, [f"e {i}" for i in range(5)])
    text = check_page(await server.request("GET", f"/explorer/entry/{made[1]['currhash']}"))
    assert "This chain has no Merkle tree" in text
    path = server.ctx.data_dir.tlog_key_path(server.ctx.settings)
    await enable(server.ctx.store, server.ctx.ledger(""), server.key, path, "explorer.test/log",
                 clock=utcnow)
    text = check_page(await server.request("GET", f"/explorer/entry/{made[1]['currhash']}"))
    proof = (await server.request(
        "GET", "/chronicle/tlog/proof/inclusion/1")).json["results"]
    assert '<dl id="inclusion">' in text and proof["root"] in text
    assert all(h in text for h in proof["proof"])


# --- static files -------------------------------------------------------------------------

async def test_static_files_and_nothing_else(server: RunningServer) -> None:
    for name, kind in (("check.js", "text/javascript"), ("explorer.css", "text/css"),
                       ("vendor/nacl-fast.js", "text/javascript"),
                       ("vendor/blake2b.js", "text/javascript")):
        res = await server.request("GET", f"/explorer/static/{name}")
        assert res.status == 200 and res.headers["Content-Type"].startswith(kind)
        assert res.headers["Content-Security-Policy"] == CSP
    for name in ("vendor/README.md", "../model.py", "%2e%2e/model.py", "nope.js",
                 "vendor/LICENSE.blakejs"):
        error(await server.request("GET", f"/explorer/static/{name}"), 404, "Not found")


def test_vendored_libraries_match_their_published_files() -> None:
    """The checksums in vendor/README.md are the npm packages' files; blake2b.js wraps
    blakejs's two files unchanged."""
    readme = (VENDOR / "README.md").read_text()
    wrapped = (VENDOR / "blake2b.js").read_text()
    util = wrapped.split("// ----- BEGIN util.js -----\n")[1].split("// ----- END util.js")[0]
    blake = wrapped.split("// ----- BEGIN blake2b.js -----\n")[1].split(
        "// ----- END blake2b.js")[0]
    for text in (util, blake, (VENDOR / "nacl-fast.js").read_text()):
        assert hashlib.sha256(text.encode()).hexdigest() in readme
    assert (VENDOR / "LICENSE.blakejs").read_text().startswith("Copyright (c) 2022 Blakejs")
    assert "unlicense" in (VENDOR / "LICENSE.tweetnacl").read_text().lower()
