"""The web explorer in a real browser (issue 15): Debian's headless Chromium driven by
Playwright (``.ci/run`` installs both; never ``playwright install``), against the real
server on loopback, on both backends.

What a reader sees: live numbers on the overview, a search by hash that finds the entry,
hostile bodies shown as text with no script running, and the in-browser check saying
"verified" for a real entry and "failed" when a proxy tampers with the signed answer.
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from urllib.parse import quote

import pytest
from aiohttp import web
from playwright.async_api import Browser, ConsoleMessage, Page, async_playwright

from chronicle.core.sapient import SigningKey
from tests.helpers import RunningServer

CHROMIUM = os.environ.get("CHRONICLE_TEST_CHROMIUM", "/usr/bin/chromium")
HOSTILE = ('<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'
           '<a href="javascript:window.__pwned=3">x</a>')

STATUS = "#check .status"
FINAL = re.compile(r"^(verified|failed|stale)$")


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=CHROMIUM)
        try:
            yield b
        finally:
            await b.close()


async def open_page(browser: Browser, errors: list[str]) -> Page:
    page = await browser.new_page(viewport={"width": 1280, "height": 900})

    def console(msg: ConsoleMessage) -> None:
        if msg.type == "error":
            errors.append(msg.text)

    page.on("console", console)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    return page


async def pin(page: Page, key: str) -> None:
    await page.fill("#pin-key", key)
    await page.click("#pin-form button")


async def check_result(page: Page) -> str:
    """The in-browser check's final status."""
    # A locator, not wait_for_function: that evaluates a string, which our CSP forbids.
    await page.locator(STATUS).filter(has_text=FINAL).wait_for()
    return str(await page.text_content(STATUS))


async def head_hash(server: RunningServer) -> str:
    return str((await server.request("GET", "/chronicle/lasthash")).json["results"][0]
               ["currhash"])


async def test_overview_shows_live_numbers(server: RunningServer, browser: Browser) -> None:
    for i in range(3):
        await server.publish("alice", f'{{"release": "pkg", "version": "1.0.{i}"}}')
    errors: list[str] = []
    page = await open_page(browser, errors)
    await page.goto(server.url + "/")
    assert await page.text_content("#chain-length") == "3"
    assert await page.text_content("#head-currhash") == await head_hash(server)
    assert await page.text_content("#server-key") == server.key.public_b64
    assert await page.text_content(STATUS) == "not checked"
    await pin(page, server.key.public_b64)
    assert await check_result(page) == "verified"
    await server.publish("alice", '{"release": "pkg", "version": "1.1.0"}')
    await pin(page, server.key.public_b64)  # checks again: the page shows an older head
    assert await check_result(page) == "stale"
    assert "The chain has grown since this page was made" in str(
        await page.text_content("#check .detail"))
    await page.reload()
    assert await page.text_content("#chain-length") == "4"
    assert await page.text_content("#head-currhash") == await head_hash(server)
    assert await check_result(page) == "verified"  # the pin survived the reload
    assert errors == []


async def test_search_by_hash_finds_the_entry(server: RunningServer, browser: Browser) -> None:
    await server.publish("alice", "first")
    await server.publish("alice", "the one we look for")
    await server.publish("alice", "third")
    rows = (await server.request("GET", "/chronicle/export")).json["results"]
    errors: list[str] = []
    page = await open_page(browser, errors)
    await page.goto(server.url + "/")
    await page.fill("form.search input[name=q]", rows[1]["summary"])
    await page.click("form.search button")
    await page.wait_for_url("**/explorer/entries?q=*")
    links = page.locator("a.hash")
    assert await links.count() == 1
    assert await links.first.text_content() == rows[1]["hash"]
    await links.first.click()
    await page.wait_for_url("**/explorer/entry/*")
    assert await page.text_content("#currhash") == rows[1]["hash"]
    assert await page.text_content("#body") == "the one we look for"
    await page.goto(server.url + "/explorer/entries")
    assert errors == []


async def test_hostile_body_is_text_and_no_script_runs(server: RunningServer,
                                                       browser: Browser) -> None:
    await server.publish("alice", HOSTILE)
    errors: list[str] = []
    page = await open_page(browser, errors)
    for path in (f"/explorer/entry/{quote(await head_hash(server), safe='')}",
                 "/explorer/entries", "/explorer/entries?q=__pwned"):
        await page.goto(server.url + path)
        assert await page.evaluate("window.__pwned") is None
        assert await page.locator("main img, main script").count() == 0
    await page.goto(server.url + f"/explorer/entry/{quote(await head_hash(server), safe='')}")
    assert await page.text_content("#body") == HOSTILE
    assert await page.locator("#body a").count() == 0


async def test_in_browser_check_verifies_a_real_entry(server: RunningServer,
                                                      browser: Browser) -> None:
    await server.publish("alice", '{"name": "pkg", "sha256": "00ff"}')
    await server.publish("alice", "second, not JSON: <b>ü</b> €")
    path = f"/explorer/entry/{quote(await head_hash(server), safe='')}"
    errors: list[str] = []
    page = await open_page(browser, errors)
    await page.goto(server.url + path)
    assert await page.text_content(STATUS) == "not checked"
    await pin(page, server.key.public_b64)
    assert await check_result(page) == "verified"
    assert "Ed25519 by WebCrypto" in str(await page.text_content("#check .detail"))
    # A browser whose WebCrypto has no Ed25519: the vendored TweetNaCl decides.
    fallback = await open_page(browser, errors)
    await fallback.add_init_script(
        "crypto.subtle.importKey = () => Promise.reject(new Error('no Ed25519 here'))")
    await fallback.goto(server.url + "/")
    await pin(fallback, server.key.public_b64)
    assert await check_result(fallback) == "verified"
    await fallback.goto(server.url + path)
    assert await check_result(fallback) == "verified"
    assert "Ed25519 by TweetNaCl" in str(await fallback.text_content("#check .detail"))
    assert errors == []


async def test_pinned_key_change_is_warned_and_fails(server: RunningServer,
                                                     browser: Browser) -> None:
    await server.publish("alice", "an entry")
    errors: list[str] = []
    page = await open_page(browser, errors)
    await page.goto(server.url + "/")
    await pin(page, SigningKey.generate().public_b64)
    assert await check_result(page) == "failed"
    assert "Warning: the server now presents the key" in str(await page.text_content("#pin"))
    await pin(page, "garbage!")
    assert "Not a key" in str(await page.text_content("#pin-status"))
    await pin(page, server.key.public_b64)
    assert await check_result(page) == "verified"
    assert "Pinned key replaced (was " in str(await page.text_content("#pin-status"))


async def tampering_proxy(server: RunningServer) -> web.AppRunner:
    """A reverse proxy that passes everything through, except that it changes the body
    of ``/chronicle/lookup/…`` answers (keeping the server's signature header)."""

    async def forward(request: web.Request) -> web.StreamResponse:
        async with server.session.get(server.url + request.path_qs) as upstream:
            body = await upstream.read()
            headers = {k: v for k, v in upstream.headers.items()
                       if k.lower() not in ("content-length", "transfer-encoding",
                                            "content-encoding", "connection", "date",
                                            "server")}
            if request.path.startswith("/chronicle/lookup/"):
                body = body.replace(b"genuine", b"forged!")
            return web.Response(status=upstream.status, body=body, headers=headers)

    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", forward)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner


async def test_in_browser_check_fails_on_a_tampered_answer(server: RunningServer,
                                                           browser: Browser) -> None:
    await server.publish("alice", "a genuine release note")
    runner = await tampering_proxy(server)
    try:
        proxy = f"http://127.0.0.1:{runner.addresses[0][1]}"
        errors: list[str] = []
        page = await open_page(browser, errors)
        await page.goto(proxy + f"/explorer/entry/{quote(await head_hash(server), safe='')}")
        await pin(page, server.key.public_b64)
        assert await check_result(page) == "failed"
        detail = str(await page.text_content("#check .detail"))
        assert "signature does not verify with the pinned key" in detail
        # The same page straight from the server verifies.
        await page.goto(server.url + f"/explorer/entry/{quote(await head_hash(server), safe='')}")
        await pin(page, server.key.public_b64)
        assert await check_result(page) == "verified"
    finally:
        await runner.cleanup()
