"""Take the screenshots of the web explorer that docs/explorer/ and the README show.

Builds a small demonstration ledger (release announcements published over two weeks, a
Merkle tree, two replicated upstreams one of which forked, a cross-sign target, a witness;
every remote is a closed port on 127.0.0.1, so the jobs' attempts stay on this machine),
serves it with ``chronicle serve`` and photographs its pages in Debian's headless Chromium
(Playwright, given ``--chromium``; it never downloads a browser).

    python scripts/explorer_screenshots.py --out docs/explorer
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

from benchutil import add_client, chronicle_cli, chronicle_server, init_data_dir
from playwright.async_api import async_playwright

from chronicle.config import DataDir
from chronicle.core.blakechain import ChainBuilder
from chronicle.core.checkpoint import Cosigner
from chronicle.core.encoding import atom, b64u_encode
from chronicle.core.sapient import SigningKey
from chronicle.replication.witnessing import JobSizes
from chronicle.store import ReplicaSource, XsignTarget, open_store

PACKAGES = ["left-pad", "requests-mini", "tinyjson", "fastcsv", "blake-tools", "ed-keys"]


async def populate(data_dir: Path, publisher: SigningKey, entries: int) -> None:
    dd = DataDir(data_dir)
    store = open_store(dd.settings().database, dd.path)
    await store.open()
    rng = random.Random(15)
    moment = datetime(2026, 11, 16, 8, 0, tzinfo=UTC)
    try:
        async with store.write("") as tx:
            builder = ChainBuilder(await tx.head())
            rows = []
            for i in range(entries):
                moment += timedelta(minutes=rng.expovariate(1 / (40 if i % 50 < 35 else 8)))
                name = rng.choice(PACKAGES)
                body = json.dumps({"package": name, "version": f"1.{i // 10}.{i % 10}",
                                   "sha256": rng.randbytes(32).hex(),
                                   "published-by": "release-bot"}).encode()
                rows.append(builder.append(body, publisher.public, publisher.sign(body),
                                           atom(moment)))
            hostile = b'<script>alert("owned")</script> release notes: <b>bold</b>'
            rows.append(builder.append(hostile, publisher.public, publisher.sign(hostile),
                                       atom(moment + timedelta(minutes=3))))
            await tx.insert_entries(rows)
        when = atom(moment)
        await store.replication.add_source(ReplicaSource(
            name="pypi-mirror", url="http://127.0.0.1:9/mirror/chronicle",
            publickey=SigningKey.generate().public, uniqueid=b64u_encode(rng.randbytes(33)),
            created=when))
        forked = await store.replication.add_source(ReplicaSource(
            name="old-registry", url="http://127.0.0.1:9/old/chronicle",
            publickey=SigningKey.generate().public, uniqueid=b64u_encode(rng.randbytes(33)),
            created=when))
        await store.replication.set_status(
            forked.id, "forked", fault="fork", when=when,
            reason="entry 812 differs from the copy we hold")
        await store.xsign.add_target(XsignTarget(
            name="peer-ledger", url="http://127.0.0.1:9/peer/chronicle",
            publickey=SigningKey.generate().public, clientid="ourid", created=when,
            policy='{"push-after": 100}'))
        await JobSizes(store.jobs, "").set("witness.example/w1", entries + 1)
    finally:
        await store.close()


async def photograph(url: str, chromium: str, out: Path, server_key: str) -> None:
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium)
        page = await browser.new_page(viewport={"width": 1280, "height": 900})
        await page.goto(url + "/")
        await page.fill("#pin-key", server_key)
        await page.click("#pin-form button")
        await page.locator("#check.verified").wait_for()
        await page.screenshot(path=str(out / "overview.png"), full_page=True)
        await page.goto(url + "/explorer/entries")
        await page.screenshot(path=str(out / "entries.png"))
        # The newest entry is the tree's announcement (tlog enable), then the hostile one.
        newest = await page.locator("a.hash").first.get_attribute("href")
        hostile = await page.locator("a.hash").nth(1).get_attribute("href")
        await page.goto(url + str(newest))
        await page.locator("#check.verified").wait_for()
        await page.screenshot(path=str(out / "entry.png"), full_page=True)
        await page.goto(url + str(hostile))
        await page.locator("#check.verified").wait_for()
        await page.screenshot(path=str(out / "entry-hostile.png"), full_page=True)
        await page.goto(url + "/explorer/entries?q=" + quote("blake-tools"))
        await page.screenshot(path=str(out / "search.png"))
        await browser.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/explorer"))
    parser.add_argument("--entries", type=int, default=600)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="chronicle-explorer-shots-", dir="/tmp"))
    data_dir = base / "data"
    try:
        witness = Cosigner("witness.example/w1", SigningKey.generate())
        server_key = init_data_dir(data_dir, {
            "publish-new-clients": "false",
            "witnesses": json.dumps([f"http://127.0.0.1:9/w {witness.vkey()}"])})
        publisher = SigningKey.generate()
        add_client(data_dir, publisher.public_b64)
        asyncio.run(populate(data_dir, publisher, args.entries))
        chronicle_cli("tlog", "enable", "--data-dir", str(data_dir), "--origin",
                      "ledger.example/releases")
        server = chronicle_server(data_dir)
        server.start()
        try:
            asyncio.run(photograph(server.url, args.chromium, args.out, server_key))
        finally:
            server.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(f"screenshots in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
