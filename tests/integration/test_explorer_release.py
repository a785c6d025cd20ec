"""The explorer's release-layer pages (issue 15 on a release ledger, issue 12): vendors,
keys, packages, releases and attestations, each linked to the entry proving it; revoked
keys and releases in red; a chain that is no release ledger answers the API's signed 404.
On both backends, with the release gate's own fixtures."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

from chronicle.release import AttestUpdate, RevokeUpdate, sign_message
from chronicle.server.explorer import CSP
from tests.helpers import serving
from tests.integration.test_release_gate import (  # noqa: F401  (the fixture)
    ACME,
    BETA,
    CI,
    Ledger,
    ledger,
    release_of,
    vouched,
)


async def page(led: Ledger, path: str) -> str:
    res = await led.srv.request("GET", path)
    assert res.status == 200, res.body
    assert res.headers["Content-Security-Policy"] == CSP
    return res.body.decode()


async def test_release_pages(ledger: Ledger) -> None:  # noqa: F811
    led = ledger
    await vouched(led)
    first = await led.accept(sign_message(release_of("v1.0.0"), CI), "acme")
    await led.accept(sign_message(release_of("1.1.0"), ACME), "acme")
    await led.accept(sign_message(RevokeUpdate("acme", "widget", "1.1.0",
                                               "broken <b>build</b>"), ACME), "acme")
    attested = await led.accept(sign_message(AttestUpdate(
        "acme", "widget", "1.0", "beta", "reproduced", "rebuilt from the tag"), BETA), "beta")

    text = await page(led, "/")
    assert '<section id="release"><h2>Release ledger</h2>' in text
    assert 'href="/explorer/release/vendors/registry">registry</a>' in text
    text = await page(led, "/explorer/release")
    assert 'href="/explorer/release/packages/acme/widget/1.1.0">acme/widget 1.1.0</a>' in text
    assert '<tr class="bad"><td><a href="/explorer/release/packages/acme/widget/1.1.0"' in text
    assert 'href="/explorer/release/vendors/beta">beta</a>' in text
    text = await page(led, "/explorer/release/vendors/acme")
    assert ACME.public_b64 in text and CI.public_b64 in text and "limited" in text
    assert 'href="/explorer/release/packages/acme/widget">widget</a></td><td>2</td>' in text
    text = await page(led, "/explorer/release/packages/acme/widget")
    assert text.count("<tr") == 3 and "broken &lt;b&gt;build&lt;/b&gt;" in text
    href = f'/explorer/entry/{quote(first["currhash"], safe="")}'
    assert f'<a href="{href}">entry {first["index"]:,}</a>' in text
    text = await page(led, "/explorer/release/packages/acme/widget/1.0")
    assert "<h2>Attestations</h2>" in text and "rebuilt from the tag" in text
    assert f'entry {attested["index"]:,}</a>' in text
    assert "&quot;repo&quot;: &quot;https://github.com/acme/widget" in text
    for path, message in (
            ("/explorer/release/vendors/nobody", "unknown vendor nobody: it has no keys"),
            ("/explorer/release/packages/acme/none", "there are no updates of acme/none")):
        res = await led.srv.request("GET", path)
        assert (res.status, res.json["message"]) == (404, message)


async def test_not_a_release_ledger(tmp_path: Path) -> None:
    async with serving(tmp_path / "l", "alice") as srv:
        text = (await srv.request("GET", "/")).body.decode()
        assert 'id="release"' not in text
        for path in ("/explorer/release", "/explorer/release/vendors/acme",
                     "/explorer/release/packages/acme/widget"):
            res = await srv.request("GET", path)
            assert (res.status, res.json["message"]) == (404, "This chain is not a release "
                                                         "ledger")
