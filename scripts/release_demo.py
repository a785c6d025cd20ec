#!/usr/bin/env python3
"""The release ledger end to end, on loopback: `python scripts/release_demo.py`.

A registry runs a release ledger (`chronicle init`, `release enable`, `serve`); two more
servers mirror it as replicas. The registry vouches for vendor acme, acme adds a limited CI
key, CI releases acme/widget 1.0.0 from a git repository this script creates, and a client
verifies a composer.lock against the ledger and both mirrors. Then the attacks, each one
line `attack NAME: refused — MESSAGE (exit N)`:

- revoked-key (-mirrors): acme's CI key leaks and is revoked; the honest gate refuses the
  thief's release, so the thief (holding the ledger's stolen server key too) serves it from
  a rogue copy of the ledger whose gate is off, behind a lying proxy at the ledger's
  address: a client pinning the ledger alone judges it (held: the key was revoked), a
  client with mirrors finds that they do not confirm the rogue head (quorum);
- tampered-archive: a dist archive in Composer's cache with a backdoor added;
- split-view: a compromised mirror answers the client's head with another history;
- core-vendor-override-off / -review: the registry adds a key to acme and releases with
  it (an emergency action); the client's policy `off` ignores it, `review` holds it, and
  `auto` applies it, visibly.

SQLite, temporary directories, loopback only; the CLI runs as `sys.executable -m chronicle`.
`--database postgresql://…` runs the servers on PostgreSQL instead (one schema each, named
after the given `schema=` parameter; the tests use it). Exits 1 if any attack gets through
(or a step fails), 0 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from chronicle.config import KEY_FILE  # noqa: E402
from chronicle.core import protocol  # noqa: E402
from chronicle.core.blakechain import currhash  # noqa: E402
from chronicle.core.encoding import b64u_decode, b64u_encode, utcnow  # noqa: E402
from chronicle.core.sapient import SIGNATURE_HEADER, SigningKey  # noqa: E402

PASSPHRASE = "demo passphrase, not a secret"
REPO_URL = "https://git.example.org/acme/widget"
ENV = {**os.environ, "GIT_AUTHOR_NAME": "Acme CI", "GIT_AUTHOR_EMAIL": "ci@acme.invalid",
       "GIT_COMMITTER_NAME": "Acme CI", "GIT_COMMITTER_EMAIL": "ci@acme.invalid",
       "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull,
       "CHRONICLE_KEY_PASSPHRASE": PASSPHRASE, "PYTHONUNBUFFERED": "1",
       "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH"))
                                     if p)}
for _name in ("CHRONICLE_DATA_DIR", "CHRONICLE_VENDOR_PROFILE"):
    ENV.pop(_name, None)
QUIET = {"replicate-interval": "", "cross-sign-interval": "", "scheduled-attestation": ""}


class DemoError(Exception):
    """A step of the honest story failed: the demo cannot go on."""


def say(text: str = "") -> None:
    print(text, flush=True)


class Result:
    """What one CLI run gave."""

    def __init__(self, args: tuple[str, ...], code: int, stdout: str, stderr: str) -> None:
        self.args, self.code, self.stdout, self.stderr = args, code, stdout, stderr

    @property
    def error(self) -> str:
        """The `error:` line without its prefix (the CLI prints exactly one)."""
        lines = [x for x in self.stderr.splitlines() if x.startswith("error: ")]
        return lines[-1].removeprefix("error: ") if lines else self.stderr.strip()

    @property
    def warnings(self) -> list[str]:
        return [x for x in self.stderr.splitlines() if x.startswith("warning: ")]

    def json(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self.stdout)
        return doc


async def chronicle(*args: str) -> Result:
    """One CLI command, as a user runs it (never through PATH)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "chronicle", *args, env=ENV, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return Result(args, proc.returncode, out.decode(), err.decode())


async def ok(*args: str) -> Result:
    """A step that must succeed."""
    res = await chronicle(*args)
    if res.code != 0:
        raise DemoError(f"`chronicle {' '.join(args)}` failed (exit {res.code}): {res.error}")
    return res


async def ok_json(*args: str) -> dict[str, Any]:
    return (await ok(*args, "--json")).json()


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True, env=ENV).stdout


class Server:
    """`chronicle serve` on a free loopback port."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.proc: asyncio.subprocess.Process | None = None
        self.url = ""
        self._drain: asyncio.Task[None] | None = None

    async def start(self) -> str:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "chronicle", "serve", "--data-dir", str(self.data_dir),
            "--port", "0", env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        assert self.proc.stderr is not None
        while line := await asyncio.wait_for(self.proc.stderr.readline(), 60):
            match = re.search(rb"listening on (http://\S+)", line)
            if match:
                self.url = match.group(1).decode()
                self._drain = asyncio.create_task(self._read_rest())
                return self.url
        raise DemoError(f"`chronicle serve --data-dir {self.data_dir}` did not start")

    async def _read_rest(self) -> None:
        assert self.proc is not None
        assert self.proc.stderr is not None
        while await self.proc.stderr.readline():
            pass

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 30)
            except TimeoutError:      # a server that does not drain: do not hang the demo
                self.proc.kill()
                await self.proc.wait()
        if self._drain is not None:
            await self._drain


class Proxy:
    """An HTTP proxy on loopback in front of ``target`` (a base URL); ``lie`` rewrites a
    request instead of forwarding it when set."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.lie: Callable[[web.Request], Awaitable[web.Response | None]] | None = None
        self.session: aiohttp.ClientSession | None = None
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> str:
        self.session = aiohttp.ClientSession()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"
        return self.url

    async def forward(self, request: web.Request) -> tuple[int, bytes, dict[str, str]]:
        assert self.session is not None
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() not in ("host", "content-length", "transfer-encoding")}
        async with self.session.request(request.method, self.target + request.path_qs,
                                        headers=headers, data=await request.read()) as up:
            keep = {k: v for k, v in up.headers.items()
                    if k.lower() in ("content-type", SIGNATURE_HEADER.lower())}
            return up.status, await up.read(), keep

    async def handle(self, request: web.Request) -> web.Response:
        if self.lie is not None:
            lied = await self.lie(request)
            if lied is not None:
                return lied
        status, body, headers = await self.forward(request)
        return web.Response(status=status, body=body, headers=headers)

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
        if self.session is not None:
            await self.session.close()


def make_repo(root: Path) -> Path:
    """acme/widget with tags v1.0.0 and v2.0.0."""
    (root / "src").mkdir(parents=True)
    (root / "src" / "Widget.php").write_text("<?php\nfinal class Widget {}\n")
    (root / "composer.json").write_text('{"name": "acme/widget", "type": "library"}\n')
    git(root, "-c", "init.defaultBranch=main", "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "Widget 1.0.0")
    git(root, "tag", "v1.0.0")
    (root / "src" / "Widget.php").write_text("<?php\nfinal class Widget { /* 2.0 */ }\n")
    git(root, "commit", "-qam", "Widget 2.0.0")
    git(root, "tag", "v2.0.0")
    return root


def lock_file(path: Path, versions: list[str], commit: str) -> Path:
    """A composer.lock with acme/widget at ``versions`` (Composer 2's shape)."""
    packages = [{"name": "acme/widget", "version": v, "type": "library",
                 "source": {"type": "git", "url": REPO_URL + ".git", "reference": commit},
                 "dist": {"type": "zip", "url": dist_url(v), "reference": commit,
                          "shasum": ""}} for v in versions]
    path.write_text(json.dumps({
        "_readme": ["This file locks the dependencies of your project to a known state"],
        "content-hash": "0" * 32, "packages": packages, "packages-dev": [], "aliases": [],
        "minimum-stability": "stable", "stability-flags": {}, "prefer-stable": False,
        "prefer-lowest": False, "platform": {}, "platform-dev": {},
        "plugin-api-version": "2.6.0"}, indent=4))
    return path


def dist_url(version: str) -> str:
    return f"https://dist.example.org/acme/widget/{version}.zip"


def cache_path(cache: Path, version: str) -> Path:
    """Where Composer 2 keeps a dist archive: files/NAME/sha1(dist url).zip."""
    name = hashlib.sha1(dist_url(version).encode(), usedforsecurity=False).hexdigest()
    return cache / "files" / "acme" / "widget" / f"{name}.zip"


def tamper(archive: Path, out: Path) -> None:
    """The same archive with a backdoor added to src/Widget.php."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("src/Widget.php"):
                data += b"eval($_GET['x']);\n"
            dst.writestr(info, data)


class Story:
    """The demo's state: directories, servers, proxies, keys, and the attacks' outcome."""

    def __init__(self, root: Path, database: str) -> None:
        self.root = root
        self.database = database
        self.servers: list[Server] = []
        self.proxies: list[Proxy] = []
        self.through: list[str] = []
        self.refused: list[str] = []

    async def server(self, name: str) -> tuple[Path, Server, str]:
        data = self.root / name
        pk = (await ok_json("init", "--data-dir", str(data), "--database",
                            self.database_for(name)))["public-key"]
        for key, value in QUIET.items():
            await ok("config", "set", "--data-dir", str(data), key, value)
        srv = Server(data)
        self.servers.append(srv)
        await srv.start()
        return data, srv, str(pk)

    def database_for(self, name: str) -> str:
        """SQLite files live in each data directory; on PostgreSQL one schema per server."""
        if self.database.startswith("sqlite:"):
            return self.database
        if "schema=" not in self.database:
            sep = "&" if "?" in self.database else "?"
            return f"{self.database}{sep}schema=demo_{name}"
        return re.sub(r"schema=([^&]+)", lambda m: f"schema={m.group(1)}_{name}",
                      self.database)

    async def proxy(self, target: str) -> Proxy:
        proxy = Proxy(target)
        self.proxies.append(proxy)
        await proxy.start()
        return proxy

    async def client_key(self, name: str, *data_dirs: Path) -> tuple[str, Path]:
        """A publishing client registered on ``data_dirs`` (one id everywhere)."""
        key_file = self.root / "keys" / f"{name}-client.key"
        key_file.parent.mkdir(exist_ok=True)
        pk = (await ok_json("keygen", "--out", str(key_file)))["public-key"]
        client_id = ""
        for data in data_dirs:
            extra = ("--client-id", client_id) if client_id else ()
            client_id = (await ok_json("client", "add", "--data-dir", str(data),
                                       "--public-key", pk, "--comment", name,
                                       *extra))["client-id"]
        return client_id, key_file

    def attack(self, name: str, res: Result, expected: int) -> None:
        """One attack's outcome line; an attack that is not refused as expected counts as
        got through."""
        if res.code == expected:
            say(f"attack {name}: refused — {res.error} (exit {res.code})")
            self.refused.append(name)
        else:
            say(f"attack {name}: GOT THROUGH — exit {res.code}, expected {expected}: "
                f"{res.error or res.stdout.strip()}")
            self.through.append(name)

    async def close(self) -> None:
        for proxy in self.proxies:
            await proxy.stop()
        for srv in reversed(self.servers):
            await srv.stop()


async def replica(data: Path, srv: Server, ledger_url: str, ledger_pk: str, pk: str) -> str:
    """Make ``data`` a replica of the ledger; the mirror spec URL#PK for verify."""
    rid = (await ok_json("replica", "add", "--data-dir", str(data), "--url", ledger_url,
                         "--server-key", ledger_pk, "--name", "registry"))["id"]
    return f"{srv.url}/chronicle/replica/{rid}#{pk}"


async def run(story: Story) -> None:
    root = story.root
    say("== the registry's release ledger")
    ledger_dir, ledger, ledger_pk = await story.server("ledger")
    say(f"ledger serving at {ledger.url} (server key {ledger_pk})")
    # The client reaches the ledger through this address (honest until attack revoked-key).
    front = await story.proxy(ledger.url)

    profiles: dict[str, Path] = {}
    clients = {name: await story.client_key(name, ledger_dir)
               for name in ("registry", "acme", "ci")}

    async def profile(name: str, vendor: str, client: str, *extra: str,
                      url: str = ledger.url) -> Path:
        path = root / "profiles" / f"{name}.toml"
        path.parent.mkdir(exist_ok=True)
        await ok("vendor", "init", "--profile", str(path), "--url", url, "--server-key",
                 ledger_pk, "--client-id", clients[client][0], "--client-key-file",
                 str(clients[client][1]), "--vendor", vendor, *extra)
        profiles[name] = path
        return path

    async def keygen(prof: Path, out: Path) -> str:
        return str((await ok_json("vendor", "keygen", "--profile", str(prof), "--out",
                                  str(out), "--kdf-strength", "interactive"))["public-key"])

    keys = root / "keys"
    registry = await profile("registry", "registry", "registry")
    core_pk = await keygen(registry, keys / "registry.key")
    enabled = await ok_json("release", "enable", "--data-dir", str(ledger_dir),
                            "--core-vendor", "registry", "--core-key", core_pk)
    say(f"release enable: core vendor registry, key {core_pk}, enable entry "
        f"{enabled['index']}")

    say("== two mirrors (replicas of the ledger)")
    mirrors: list[str] = []
    for name in ("mirror1", "mirror2"):
        data, srv, pk = await story.server(name)
        mirrors.append(await replica(data, srv, ledger.url, ledger_pk, pk))
        say(f"{name} serving at {srv.url}, replicating the ledger")
    # mirror2 is reached through a proxy (honest until attack split-view)
    m2_url = story.servers[-1].url
    m2_front = await story.proxy(m2_url)
    client_mirrors = [mirrors[0], mirrors[1].replace(m2_url, m2_front.url)]

    async def sync_mirrors() -> None:
        for name in ("mirror1", "mirror2"):
            await ok("replica", "sync", "--data-dir", str(root / name))

    say("== vendor acme registers; its CI key; a release from git")
    acme = await profile("acme", "acme", "acme")
    acme_pk = await keygen(acme, keys / "acme.key")
    done = await ok_json("registry", "vouch", "--profile", str(registry), "--vendor", "acme",
                         "--public-key", acme_pk, "--name", "acme main")
    say(f"registry vouch: {done['message']}")
    ci_pk = await keygen(acme, keys / "ci.key")
    done = await ok_json("vendor", "key", "add", "--profile", str(acme), "--public-key", ci_pk,
                         "--name", "ci", "--limited")
    say(f"acme: {done['message']}")
    ci = await profile("ci", "acme", "ci", "--key-file", str(keys / "ci.key"))
    repo = make_repo(root / "widget")
    done = await ok_json("vendor", "release", "--profile", str(ci), "widget", "1.0.0",
                         "--git", str(repo), "--ref", "v1.0.0", "--repo", REPO_URL)
    say(f"CI: {done['message']} (tree {done['tree']}, signed by the CI key)")
    refused = await chronicle("vendor", "key", "add", "--profile", str(ci), "--public-key",
                              core_pk, "--name", "sneaky")
    say(f"the gate: the CI key adding a key -> exit {refused.code}: {refused.error}")
    await sync_mirrors()

    say("== a client verifies its composer.lock (ledger + both mirrors, quorum 2)")
    commit = git(repo, "rev-parse", "v1.0.0").strip()
    cache = root / "composer-cache"
    archive = cache_path(cache, "1.0.0")
    archive.parent.mkdir(parents=True)
    git(repo, "archive", "--format=zip", f"--prefix=acme-widget-{commit[:7]}/", "-o",
        str(archive), "v1.0.0")
    (root / "app").mkdir()
    lock = lock_file(root / "app" / "composer.lock", ["1.0.0"], commit)
    state = root / "app" / ".chronicle-verify"

    async def init_state(path: Path, *extra: str) -> None:
        await ok("verify", "init", "--state", str(path), "--url", front.url, "--server-key",
                 ledger_pk, *(x for m in client_mirrors for x in ("--mirror", m)),
                 "--quorum", "2", *extra)

    await init_state(state)
    res = await ok("verify", "lock", str(lock), "--state", str(state), "--dist-dir",
                   str(cache))
    for line in res.stdout.splitlines():
        say(f"  {line}")

    say("== attack tampered-archive: a backdoor in the dist archive in Composer's cache")
    bad_cache = root / "tampered-cache"
    tamper(archive, cache_path(bad_cache, "1.0.0"))
    story.attack("tampered-archive", await chronicle(
        "verify", "lock", str(lock), "--state", str(state), "--dist-dir", str(bad_cache)), 13)

    say("== attack revoked-key: a release signed by a leaked, revoked CI key")
    done = await ok_json("vendor", "key", "revoke", "--profile", str(acme), "--public-key",
                         ci_pk)
    say(f"acme: {done['message']} (the CI key leaked)")
    await sync_mirrors()
    await ok("verify", "sync", "--state", str(state))
    forged = root / "thief" / "widget-6.6.6.json"
    forged.parent.mkdir()
    await ok("vendor", "sign", "release", "--profile", str(ci), "widget", "6.6.6", "--git",
             str(repo), "--ref", "v2.0.0", "--repo", REPO_URL, "--out", str(forged))
    honest = await chronicle("vendor", "submit", "--profile", str(ci), str(forged))
    say(f"the honest gate refuses the thief's release -> exit {honest.code}: {honest.error}")
    # The thief also holds the ledger's server key: a rogue copy of the ledger (same key,
    # same history, never `release enable`d: no gate) takes the forged release, and a proxy
    # at the ledger's address serves the rogue copy from now on.
    export = root / "thief" / "export.json"
    async with aiohttp.ClientSession() as session, \
            session.get(ledger.url + "/chronicle/export") as answer:
        export.write_bytes(await answer.read())
    rogue_dir = root / "rogue"
    await ok("init", "--data-dir", str(rogue_dir), "--database", story.database_for("rogue"),
             "--signing-key", str(ledger_dir / KEY_FILE))
    await ok("import", "--data-dir", str(rogue_dir), str(export))
    pk = (await ok_json("keygen", "--out", str(root / "thief" / "client.key")))["public-key"]
    thief_id = (await ok_json("client", "add", "--data-dir", str(rogue_dir), "--public-key",
                              pk))["client-id"]
    rogue = Server(rogue_dir)
    story.servers.append(rogue)
    await rogue.start()
    clients["thief"] = (thief_id, root / "thief" / "client.key")
    thief = await profile("thief", "acme", "thief", "--key-file", str(keys / "ci.key"),
                          url=rogue.url)
    done = await ok_json("vendor", "submit", "--profile", str(thief), str(forged))
    say(f"the rogue ledger (gate off) took it: {done['message']}")
    front.target = rogue.url
    forged_lock = lock_file(root / "app" / "forged.lock", ["6.6.6"], commit)
    # a client that pins the ledger alone judges the forged entry itself
    alone = root / "app" / "state-no-mirrors"
    await ok("verify", "init", "--state", str(alone), "--url", front.url, "--server-key",
             ledger_pk)
    story.attack("revoked-key", await chronicle(
        "verify", "lock", str(forged_lock), "--state", str(alone)), 16)
    # the client with two mirrors: they never saw the rogue history, nothing is saved
    story.attack("revoked-key-mirrors", await chronicle(
        "verify", "lock", str(forged_lock), "--state", str(state)), 18)
    front.target = ledger.url

    say("== attack split-view: mirror2 answers our head with another history")

    async def other_history(request: web.Request) -> web.Response | None:
        if "/lookup/" not in request.path:
            return None
        status, body, _ = await m2_front.forward(request)
        if status != 200:
            return None
        row = json.loads(body)["results"][0]
        author = SigningKey.generate()
        contents = b'{"note": "the history mirror2 shows to everyone else"}'
        sig = author.sign(contents)
        prev = b64u_decode(row["prevhash"], 32) if row["prevhash"] else None
        fake = {**row, "contents": contents.decode(), "publickey": author.public_b64,
                "signature": b64u_encode(sig),
                "currhash": b64u_encode(currhash(prev, row["created"], author.public, sig,
                                                 contents))}
        out = protocol.render(protocol.ok_envelope(utcnow(), [fake]))
        return web.Response(body=out, content_type="application/json",
                            headers={SIGNATURE_HEADER: mirror2_key.sign_b64(out)})

    # the mirror's operator signs its answers with its own key: it is the liar here
    mirror2_key = SigningKey.from_text(
        (root / "mirror2" / KEY_FILE).read_text())
    m2_front.lie = other_history
    story.attack("split-view", await chronicle(
        "verify", "lock", str(lock), "--state", str(state)), 15)
    m2_front.lie = None
    shutil.rmtree(state)          # the halted state: start over, as the user would
    await init_state(state)
    await ok("verify", "sync", "--state", str(state))

    say("== attack core-vendor-override: the registry takes over acme's releases")
    rescue_pk = await keygen(registry, keys / "rescue.key")
    done = await ok_json("registry", "override", "add-key", "--profile", str(registry),
                         "--vendor", "acme", "--public-key", rescue_pk, "--name", "rescue")
    say(f"registry override: {done['message']} (emergency: {done['emergency']})")
    rescue = await profile("rescue", "acme", "registry", "--key-file", str(keys / "rescue.key"))
    done = await ok_json("vendor", "release", "--profile", str(rescue), "widget", "2.0.0",
                         "--git", str(repo), "--ref", "v2.0.0", "--repo", REPO_URL)
    say(f"with that key: {done['message']}")
    await sync_mirrors()
    lock2 = lock_file(root / "app" / "composer-2.lock", ["2.0.0"],
                      git(repo, "rev-parse", "v2.0.0").strip())
    for policy, expected in (("off", 12), ("review", 16)):
        path = root / "app" / f"state-{policy}"
        await init_state(path, "--core-vendor", policy)
        res = await chronicle("verify", "lock", str(lock2), "--state", str(path))
        for warning in res.warnings:
            say(f"  {warning}")
        story.attack(f"core-vendor-override-{policy}", res, expected)
    path = root / "app" / "state-auto"
    await init_state(path, "--core-vendor", "auto")
    res = await chronicle("verify", "lock", str(lock2), "--state", str(path))
    if res.code != 0:
        raise DemoError(f"core-vendor policy auto: exit {res.code}: {res.error}")
    say("core-vendor policy auto: applied, visibly:")
    for line in res.warnings + res.stdout.splitlines():
        say(f"  {line}")


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database", default="sqlite:chronicle.db",
                        help="database URL for the servers (default: SQLite in each data dir)")
    args = parser.parse_args()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="chronicle-demo-") as tmp:
        story = Story(Path(tmp), args.database)
        try:
            await run(story)
        except DemoError as exc:
            say(f"demo failed: {exc}")
            return 1
        finally:
            await story.close()
    say(f"== {len(story.refused)} attack(s) refused, {len(story.through)} got through "
        f"({time.monotonic() - started:.1f} s)")
    return 1 if story.through else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
