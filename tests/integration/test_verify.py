"""``chronicle verify``: the installer's client against real loopback ledgers, both backends.

The ledgers here are not gated (release-server is another branch): release messages are
built with chronicle.release and published with the ordinary client, so a ledger can hold
unauthorized messages, which is exactly the history-violation case. The enable entry is
published by a client registered with the server's own key (what ``release enable`` writes).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import subprocess
import sys
import zipfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from click.testing import CliRunner, Result

from chronicle.cli import main
from chronicle.client.http import ChronicleClient
from chronicle.core import protocol
from chronicle.core.blakechain import currhash
from chronicle.core.encoding import b64u_decode, b64u_encode, utcnow
from chronicle.core.note import Ed25519Signer
from chronicle.core.sapient import SIGNATURE_HEADER, SigningKey
from chronicle.release.messages import (
    AddKey,
    Metadata,
    RevokeKey,
    RevokeUpdate,
    Update,
    enable_contents,
    sign_message,
)
from chronicle.release.sources import digest_directory, digest_git, resolve_commit
from chronicle.server.keys import TLOG
from chronicle.treelog import enable
from chronicle.verify.db import ReleaseDB
from tests.helpers import (
    RunningServer,
    init_data_dir,
    separate_database,
    serving,
    start_server,
)
from tests.release_support import CORE, NOW, key, pk

CLEAN, HELD, UNKNOWN, REVOKED, UNTRUSTED, DIGEST, UNSIGNED = 0, 16, 10, 11, 12, 13, 14
SPLIT, STALE, QUORUM = 15, 17, 18


async def cli(*args: str) -> Result:
    """The CLI in a thread (its asyncio.run must not block the servers' loop)."""
    return await asyncio.to_thread(CliRunner().invoke, main, list(args))


def error_line(res: Result) -> str:
    lines = [x for x in res.stderr.splitlines() if x.startswith("error: ")]
    assert len(lines) == 1, res.stderr
    assert "Traceback" not in res.stderr
    return lines[0]


class Ledger:
    """A loopback ledger and a publisher that signs release messages."""

    def __init__(self, srv: RunningServer) -> None:
        self.srv = srv

    async def publish(self, contents: bytes, *, as_server: bool = False) -> str:
        if as_server:   # what `release enable` appends: an entry signed by the server key
            key_ = self.srv.key
            entry = await self.srv.ctx.ledger("").append(contents, key_.public,
                                                         key_.sign(contents))
            return b64u_encode(entry.currhash)
        ident = self.srv.identities["pub"]
        async with ChronicleClient(self.srv.url, self.srv.key.public, client_id=ident.client_id,
                                   key=ident.key) as client:
            return (await client.publish(contents)).currhash

    async def send(self, body: Any, signer: str) -> None:
        await self.publish(sign_message(body, key(signer)))


def tree(path: Path, text: str) -> Path:
    (path / "src").mkdir(parents=True)
    (path / "src" / "Lib.php").write_text(text)
    (path / "composer.json").write_text('{"name": "acme/lib"}\n')
    return path


def zip_of(src: Path, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(dest, "w") as zf:
        for f in sorted(src.rglob("*")):
            if f.is_file():
                zf.write(f, "acme-lib-abc/" + f.relative_to(src).as_posix())
    return dest


def lock_file(path: Path, packages: list[tuple[str, str]], dist_url: str = "") -> Path:
    doc = {"_readme": ["This file locks the dependencies of your project"],
           "content-hash": "0" * 32,
           "packages": [{"name": n, "version": v, "type": "library",
                         "source": {"type": "git", "url": f"https://example.test/{n}.git",
                                    "reference": "a" * 40},
                         "dist": {"type": "zip", "url": dist_url or
                                  f"https://example.test/{n}/{v}.zip",
                                  "reference": "a" * 40, "shasum": ""}}
                        for n, v in packages],
           "packages-dev": [], "aliases": [], "minimum-stability": "stable",
           "stability-flags": [], "prefer-stable": False, "prefer-lowest": False,
           "platform": {}, "platform-dev": [], "plugin-api-version": "2.6.0"}
    path.write_text(json.dumps(doc, indent=4))
    return path


def meta(tree_digest: str, n: int = 0) -> Metadata:
    return Metadata(repo="https://example.test/acme/lib.git",
                    commit=hashlib.sha1(f"c{n}".encode(), usedforsecurity=False).hexdigest(),
                    tree=tree_digest)


async def bootstrap(led: Ledger) -> None:
    await led.publish(enable_contents(NOW, CORE, pk("core")), as_server=True)
    await led.send(AddKey(vendor="acme", publickey=pk("acme1")), "core")


async def init_state(state: Path, srv: RunningServer, *extra: str) -> None:
    res = await cli("verify", "init", "--state", str(state), "--url", srv.url,
                    "--server-key", srv.key.public_b64, *extra)
    assert res.exit_code == CLEAN, res.stderr


async def test_sync_lock_and_every_fault_class(tmp_path: Path) -> None:
    async with serving(tmp_path / "ledger", "pub") as srv:
        led = Ledger(srv)
        good = tree(tmp_path / "src", "<?php // v1\n")
        digest = digest_directory(good)
        await bootstrap(led)
        await led.send(Update(vendor="acme", name="lib", version="1.0.0", metadata=meta(digest)),
                       "acme1")
        await led.send(Update(vendor="acme", name="lib", version="1.1.0",
                              metadata=meta(digest, 1)), "acme1")
        await led.send(RevokeUpdate(vendor="acme", name="lib", version="1.1.0",
                                    reason="CVE-2026-0001"), "acme1")
        state = tmp_path / "state"
        await init_state(state, srv, "--namespace-policy", "denied=deny")
        S = ["--state", str(state)]

        res = await cli("verify", "sync", *S, "--json")
        assert res.exit_code == CLEAN, res.stderr
        report = json.loads(res.stdout)
        assert (report["fetched"], report["verified"], report["judged"]) == (5, 5, 5)
        assert report["state"]["updates"] == 2

        # incremental: one new release -> exactly one entry fetched, verified and judged
        await led.send(Update(vendor="acme", name="lib", version="1.2.0",
                              metadata=meta(digest, 2)), "acme1")
        res = await cli("verify", "sync", *S, "--json")
        report = json.loads(res.stdout)
        assert (report["fetched"], report["verified"], report["judged"]) == (1, 1, 1)
        assert report["head"]["index"] == 5

        # lock: OK with the dist archive in Composer 2's cache layout; each fault class
        url = "https://example.test/acme/lib/1.0.0.zip"
        cache = tmp_path / "cache"
        zip_of(good, cache / "files" / "acme/lib" /
               f"{hashlib.sha1(url.encode(), usedforsecurity=False).hexdigest()}.zip")
        lock = lock_file(tmp_path / "composer.lock", [("acme/lib", "v1.0.0")], url)
        res = await cli("verify", "lock", str(lock), *S, "--dist-dir", str(cache))
        assert res.exit_code == CLEAN, res.stderr
        assert res.stdout.splitlines()[0].startswith("OK acme/lib v1.0.0: entry 2, key ")
        assert "tree digest verified" in res.stdout

        res = await cli("verify", "lock", str(lock_file(tmp_path / "l2.lock",
                                                        [("acme/lib", "9.9.9")])), *S)
        assert res.exit_code == UNKNOWN
        assert error_line(res) == ("error: 1 package(s) failed verification (unknown-release)"
                                   ": acme/lib 9.9.9: no release acme/lib 9.9.9 on the ledger "
                                   "(vendor acme has 3 release(s) of lib)")
        res = await cli("verify", "lock", str(lock_file(tmp_path / "l3.lock",
                                                        [("acme/lib", "1.1.0")])), *S, "--json")
        assert res.exit_code == REVOKED
        assert json.loads(res.stdout)["packages"][0]["message"] == \
            "revoked at entry 4: CVE-2026-0001"

        bad = tree(tmp_path / "bad", "<?php // v1 with a backdoor\n")
        tampered = zip_of(bad, tmp_path / "tampered.zip")
        res = await cli("verify", "archive", str(tampered), "--package", "acme/lib",
                        "--version", "1.0.0", *S)
        assert res.exit_code == DIGEST
        assert f"the release (entry 2) says {digest}" in error_line(res)

        res = await cli("verify", "lock", str(lock_file(tmp_path / "l4.lock", [
            ("denied/pkg", "1.0.0"), ("other/pkg", "2.0.0")])), *S)
        assert res.exit_code == UNSIGNED
        assert "WARN other/pkg 2.0.0: vendor other signs nothing on the ledger (unsigned " \
               "policy warn)" in res.stdout
        assert error_line(res).endswith("denied/pkg 1.0.0: vendor denied signs nothing on "
                                        "the ledger (unsigned policy deny)")

        # a history violation: a release signed by a key acme never had
        await led.send(Update(vendor="acme", name="lib", version="2.0.0",
                              metadata=meta(digest, 3)), "evil")
        res = await cli("verify", "sync", *S)
        assert res.exit_code == HELD
        assert error_line(res) == (
            f"error: 1 item(s) held for review, first #1: entry 6 breaks the release rules "
            f"(key-not-trusted): key {pk('evil')} is not a trusted key of vendor acme "
            "(decide with chronicle verify review)")
        res = await cli("verify", "lock", str(lock), *S, "--offline")
        assert res.exit_code == HELD
        res = await cli("verify", "review", *S, "--json")
        assert [i["id"] for i in json.loads(res.stdout)["items"]] == [1]
        res = await cli("verify", "review", *S, "--skip", "1")
        assert res.exit_code == CLEAN, res.stderr
        res = await cli("verify", "lock", str(lock_file(tmp_path / "l5.lock",
                                                        [("acme/lib", "2.0.0")])), *S)
        assert res.exit_code == UNTRUSTED
        assert error_line(res).endswith(
            f"acme/lib 2.0.0: the release at entry 6 was refused by the rules "
            f"(key-not-trusted): key {pk('evil')} is not a trusted key of vendor acme")

        # a revoked key signs a release: refused at sync (held), then untrusted at lock
        await led.send(AddKey(vendor="acme", publickey=pk("acme2"), name="ci"), "acme1")
        await led.send(RevokeKey(vendor="acme", publickey=pk("acme2")), "acme1")
        await led.send(Update(vendor="acme", name="lib", version="3.0.0",
                              metadata=meta(digest, 4)), "acme2")
        res = await cli("verify", "sync", *S)
        assert res.exit_code == HELD
        assert f"key {pk('acme2')} of vendor acme was revoked at entry 8" in error_line(res)
        assert (await cli("verify", "review", *S, "--accept", "2")).exit_code == CLEAN
        res = await cli("verify", "lock", str(lock_file(tmp_path / "l6.lock",
                                                        [("acme/lib", "3.0.0")])), *S)
        assert res.exit_code == UNTRUSTED
        assert "(key-revoked)" in error_line(res)

        # stale state offline: the last sync is older than --max-age
        with sqlite3.connect(state / "state.db") as db:
            doc = json.loads(db.execute("SELECT value FROM meta WHERE key = 'sync'")
                             .fetchone()[0])
            doc["synced-at"] = "2026-01-01T00:00:00+00:00"
            db.execute("UPDATE meta SET value = ? WHERE key = 'sync'", (json.dumps(doc),))
        db.close()
        res = await cli("verify", "lock", str(lock), *S, "--offline", "--max-age", "1h")
        assert res.exit_code == STALE
        assert error_line(res).startswith("error: --offline: the last sync was at "
                                          "2026-01-01T00:00:00+00:00, ")
        assert error_line(res).endswith("older than --max-age 3600 s")


async def test_core_vendor_policies(tmp_path: Path) -> None:
    async with serving(tmp_path / "ledger", "pub") as srv:
        led = Ledger(srv)
        await bootstrap(led)
        digest = digest_directory(tree(tmp_path / "src", "x"))
        # the core vendor releases for acme: an emergency action
        await led.send(Update(vendor="acme", name="lib", version="4.0.0",
                              metadata=meta(digest)), "core")
        lock = lock_file(tmp_path / "composer.lock", [("acme/lib", "4.0.0")])
        outcome = {}
        for policy in ("off", "review", "auto"):
            state = tmp_path / policy
            await init_state(state, srv, "--core-vendor", policy)
            sync = await cli("verify", "sync", "--state", str(state))
            check = await cli("verify", "lock", str(lock), "--state", str(state), "--offline")
            outcome[policy] = (sync.exit_code, check.exit_code)
            text = "entry 2: the core vendor's key acted for vendor acme (update)"
            if policy == "off":
                assert f"warning: {text}, an emergency action: ignored" in sync.stderr
                assert "an emergency action the core-vendor policy ignores" in \
                    error_line(check)
            if policy == "review":
                assert error_line(sync).startswith(f"error: 1 item(s) held for review, first "
                                                   f"#1: {text}, an emergency action")
                assert (await cli("verify", "review", "--state", str(state), "--accept",
                                  "1")).exit_code == CLEAN
                again = await cli("verify", "lock", str(lock), "--state", str(state))
                assert again.exit_code == CLEAN, again.stderr
            if policy == "auto":
                assert f"warning: {text}, an emergency action: applied" in sync.stderr
                assert "(core vendor, emergency action applied by policy)" in check.stdout
        assert outcome == {"off": (CLEAN, UNTRUSTED), "review": (HELD, HELD),
                           "auto": (CLEAN, CLEAN)}


async def lying_mirror(tmp: Path, honest: RunningServer, liar: SigningKey) -> web.AppRunner:
    """A mirror that answers lookups of our head with another entry (same summaryhash)."""

    async def lookup(request: web.Request) -> web.Response:
        async with ChronicleClient(honest.url, honest.key.public) as client:
            found = [e async for e in client.lookup(request.match_info["h"])]
        entry = found[0]
        author = SigningKey.generate()
        contents = b"another history"
        sig = author.sign(contents)
        cur = currhash(b64u_decode(entry.prevhash, 32) if entry.prevhash else None,
                       entry.created, author.public, sig, contents)
        row = {"contents": contents.decode(), "prevhash": entry.prevhash,
               "currhash": b64u_encode(cur), "summaryhash": entry.summaryhash,
               "created": entry.created, "publickey": author.public_b64,
               "signature": b64u_encode(sig)}
        return signed_by(liar, protocol.render(protocol.ok_envelope(utcnow(), [row])))

    return await mirror_answering(lookup)


def signed_by(key: SigningKey, body: bytes) -> web.Response:
    return web.Response(body=body, content_type="application/json",
                        headers={SIGNATURE_HEADER: key.sign_b64(body)})


async def mirror_answering(lookup: Callable[[web.Request], Awaitable[web.Response]]
                           ) -> web.AppRunner:
    """A mirror on loopback whose ``lookup`` is ``lookup``."""
    app = web.Application()
    app.router.add_get("/chronicle/lookup/{h}", lookup)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner


async def test_mirrors_split_view_behind_and_quorum(tmp_path: Path) -> None:
    async with serving(tmp_path / "ledger", "pub") as srv, \
            serving(tmp_path / "empty", database=separate_database("m")) as empty:
        await bootstrap(Ledger(srv))
        liar_key = SigningKey.generate()
        runner = await lying_mirror(tmp_path, srv, liar_key)
        try:
            port = runner.addresses[0][1]
            behind = f"{empty.url}#{empty.key.public_b64}"
            # a mirror that is behind: warned about; with --quorum 1 the sync fails
            state = tmp_path / "q"
            await init_state(state, srv, "--mirror", behind, "--quorum", "1")
            res = await cli("verify", "sync", "--state", str(state))
            assert res.exit_code == QUORUM
            assert f"warning: mirror {empty.url}: behind: does not have our head yet" \
                in res.stderr
            assert error_line(res) == ("error: only 0 of 1 mirrors confirm our head "
                                       "(quorum 1); nothing was saved")
            # a mirror with another currhash for our head: split view, evidence kept
            state = tmp_path / "split"
            await init_state(state, srv, "--mirror",
                             f"http://127.0.0.1:{port}#{liar_key.public_b64}")
            res = await cli("verify", "sync", "--state", str(state), "--json")
            assert res.exit_code == SPLIT
            err = json.loads(res.stdout)
            assert err["class"] == "split-view"
            evidence = json.loads(Path(err["evidence"]).read_text())
            assert evidence["mirrors"][0]["answer"]["signature"]
            assert error_line(res).startswith(f"error: split view: mirror http://127.0.0.1:"
                                              f"{port} answers currhash ")
            lock = lock_file(tmp_path / "composer.lock", [("acme/lib", "1.0.0")])
            res = await cli("verify", "lock", str(lock), "--state", str(state), "--offline")
            assert res.exit_code == STALE      # never synced: nothing to use offline
            assert error_line(res) == "error: --offline: this state was never synced"
            res = await cli("verify", "lock", str(lock), "--state", str(state))
            assert res.exit_code == SPLIT      # online: the sync finds the split view again
        finally:
            await runner.cleanup()


async def test_lock_of_200_packages(tmp_path: Path) -> None:
    async with serving(tmp_path / "ledger", "pub") as srv:
        led = Ledger(srv)
        await bootstrap(led)
        digest = digest_directory(tree(tmp_path / "src", "x"))
        packages = [(f"acme/pkg{i:03d}", f"1.{i}.0") for i in range(200)]
        for i, (name, version) in enumerate(packages):
            await led.send(Update(vendor="acme", name=name.split("/")[1], version=version,
                                  metadata=meta(digest, i)), "acme1")
        state = tmp_path / "state"
        await init_state(state, srv)
        lock = lock_file(tmp_path / "composer.lock", packages)
        res = await cli("verify", "lock", str(lock), "--state", str(state), "--json")
        assert res.exit_code == CLEAN, res.stderr
        doc = json.loads(res.stdout)
        assert doc["summary"] == {"packages": 200, "ok": 200, "warnings": 0, "failed": 0}
        res = await cli("verify", "lock", str(lock_file(tmp_path / "bad.lock",
                                                        [*packages, ("acme/pkg999", "1.0.0")])),
                        "--state", str(state), "--offline")
        assert res.exit_code == UNKNOWN
        assert len([x for x in res.stdout.splitlines() if x.startswith("OK ")]) == 200
        assert res.stdout.splitlines()[-1] == ("201 package(s): 200 OK, 0 warning(s), "
                                               "1 failed")


async def test_composer_script_hook_and_ci_example(tmp_path: Path) -> None:
    """config/composer: the script the hook runs, as Composer would run it (a shell in the
    project directory), against a composer.lock the test writes; no network but loopback."""
    repo = Path(__file__).resolve().parents[2]
    hook = json.loads((repo / "config/composer/composer.json").read_text())["scripts"]
    assert hook["pre-install-cmd"] == ["@verify-lock"]
    ci = (repo / "config/composer/verify-lock.yml").read_text()
    assert "chronicle verify lock composer.lock --state .chronicle-verify" in ci
    async with serving(tmp_path / "ledger", "pub") as srv:
        led = Ledger(srv)
        await bootstrap(led)
        digest = digest_directory(tree(tmp_path / "src", "x"))
        await led.send(Update(vendor="acme", name="lib", version="1.0.0", metadata=meta(digest)),
                       "acme1")
        project = tmp_path / "project"
        project.mkdir()
        await init_state(project / ".chronicle-verify", srv)
        command = hook["verify-lock"].replace("chronicle ", f"{sys.executable} -m chronicle ", 1)
        for packages, code in (([("acme/lib", "1.0.0")], CLEAN),
                               ([("acme/lib", "1.0.1")], UNKNOWN)):
            lock_file(project / "composer.lock", packages)
            proc = await asyncio.create_subprocess_shell(
                command, cwd=project, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE)
            out, err = await proc.communicate()
            assert proc.returncode == code, err.decode()
        assert out.decode().startswith("FAIL acme/lib 1.0.1: no release acme/lib 1.0.1")


async def test_sync_holds_the_entries_to_the_tree_checkpoint(tmp_path: Path) -> None:
    async with serving(tmp_path / "ledger", "pub") as srv:
        led = Ledger(srv)
        await bootstrap(led)
        report = await enable(srv.ctx.store, srv.ctx.ledger(""), srv.key,
                              srv.ctx.data_dir.tlog_key_path(srv.ctx.settings),
                              "verify.test/log", clock=utcnow)
        state = tmp_path / "state"
        await init_state(state, srv, "--tlog", report.vkey)
        res = await cli("verify", "sync", "--state", str(state), "--json")
        assert res.exit_code == CLEAN, res.stderr
        first = json.loads(res.stdout)["tlog"]
        assert first["status"] == "matches"
        # a new release and a newer checkpoint: consistent with the one held before
        digest = digest_directory(tree(tmp_path / "src", "x"))
        await led.send(Update(vendor="acme", name="lib", version="1.0.0", metadata=meta(digest)),
                       "acme1")
        treelog = srv.runner.app[TLOG]
        now = treelog.monotonic()
        treelog.monotonic = lambda: now + 5.0
        res = await cli("verify", "sync", "--state", str(state), "--json")
        assert res.exit_code == CLEAN, res.stderr
        doc = json.loads(res.stdout)
        assert doc["fetched"] == 1
        assert doc["tlog"]["tree-size"] == first["tree-size"] + 1
        # a checkpoint key that did not sign the ledger's checkpoints: refused
        other = Ed25519Signer.generate("verify.test/log").vkey()
        await init_state(tmp_path / "other", srv, "--tlog", other)
        res = await cli("verify", "sync", "--state", str(tmp_path / "other"))
        assert res.exit_code == 1
        assert error_line(res) == (f"error: the checkpoint is not signed by the checkpoint key "
                                   f"{other.split('+')[0]}+{other.split('+')[1]}; field "
                                   "checkpoint")


def git(repo: Path, *args: str) -> str:
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.test",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.test",
           "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1", "PATH": "/usr/bin:/bin"}
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True, env=env).stdout.strip()


async def test_reproduce_from_git_archive_and_vendor_dir(tmp_path: Path) -> None:
    repo = tree(tmp_path / "repo", "<?php // 1.0\n")
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "1.0")
    git(repo, "tag", "v1.0.0")
    commit = resolve_commit(repo, "v1.0.0")
    async with serving(tmp_path / "ledger", "pub") as srv:
        led = Ledger(srv)
        await bootstrap(led)
        await led.send(Update(vendor="acme", name="lib", version="1.0.0", metadata=Metadata(
            repo="https://example.test/acme/lib.git", commit=commit,
            tree=digest_git(repo, "v1.0.0"))), "acme1")
        state = tmp_path / "state"
        await init_state(state, srv)
        S = ["--state", str(state)]
        (repo / "src" / "Lib.php").write_text("<?php // changed after the tag\n")
        git(repo, "commit", "-qam", "later")
        # default ref: the commit the release names
        res = await cli("verify", "reproduce", "--git", str(repo), "--package", "acme/lib",
                        "--version", "1.0.0", *S, "--json")
        assert res.exit_code == CLEAN, res.stderr
        doc = json.loads(res.stdout)
        assert doc["packages"][0]["digest"] == "verified"
        assert doc["packages"][0]["commit"] == commit
        res = await cli("verify", "reproduce", "--git", str(repo), "--ref", "HEAD",
                        "--package", "acme/lib", "--version", "1.0.0", *S, "--offline")
        assert res.exit_code == DIGEST
        assert error_line(res).startswith(f"error: 1 package(s) failed verification "
                                          f"(digest-mismatch): acme/lib 1.0.0: the tree "
                                          f"digest of {repo} at HEAD is b3t1:")
        # the archive of the tag and an installed vendor/ folder of it are OK
        git(repo, "archive", "--prefix=acme-lib/", "-o", str(tmp_path / "lib.zip"), "v1.0.0")
        res = await cli("verify", "archive", str(tmp_path / "lib.zip"), "--package",
                        "acme/lib", "--version", "v1.0", *S, "--offline")
        assert res.exit_code == CLEAN, res.stderr
        assert res.stdout.startswith("OK acme/lib v1.0: entry 2, key ")
        vendor = tmp_path / "vendor" / "acme" / "lib"
        with zipfile.ZipFile(tmp_path / "lib.zip") as zf:
            zf.extractall(tmp_path / "unpacked")
        vendor.parent.mkdir(parents=True)
        (tmp_path / "unpacked" / "acme-lib").rename(vendor)
        lock = lock_file(tmp_path / "composer.lock", [("acme/lib", "1.0.0")])
        res = await cli("verify", "lock", str(lock), *S, "--offline", "--vendor-dir",
                        str(tmp_path / "vendor"))
        assert res.exit_code == CLEAN, res.stderr
        assert "tree digest verified" in res.stdout
        (vendor / "src" / "Lib.php").write_text("<?php // patched in place\n")
        res = await cli("verify", "lock", str(lock), *S, "--offline", "--vendor-dir",
                        str(tmp_path / "vendor"), "--json")
        assert res.exit_code == DIGEST
        doc = json.loads(res.stdout)
        assert (doc["fault"], doc["exit-code"], doc["summary"]["failed"]) == \
            ("digest-mismatch", DIGEST, 1)


async def test_usage_and_state_errors(tmp_path: Path) -> None:
    pk_ = pk("server")
    res = await cli("verify", "init", "--state", str(tmp_path / "s"), "--url", "http://x",
                    "--server-key", pk_, "--mirror", "http://m#nokey")
    assert res.exit_code == 2
    assert error_line(res) == ("error: mirror 'http://m#nokey': the key after '#' is not a "
                               "base64url Ed25519 public key")
    res = await cli("verify", "init", "--state", str(tmp_path / "s"), "--url", "http://x",
                    "--server-key", pk_, "--quorum", "2", "--json")
    assert res.exit_code == 2
    assert json.loads(res.stdout)["message"] == ("quorum 2: must be between 0 and the number "
                                                 "of mirrors (0)")
    res = await cli("verify", "sync", "--state", str(tmp_path / "none"))
    assert res.exit_code == 3
    assert "is not a verify state directory (no config.json" in error_line(res)
    await asyncio.to_thread(CliRunner().invoke, main, [
        "verify", "init", "--state", str(tmp_path / "s"), "--url", "http://127.0.0.1:9",
        "--server-key", pk_])
    res = await cli("verify", "sync", "--state", str(tmp_path / "s"))
    assert res.exit_code == 3          # the ledger cannot be reached
    res = await cli("verify", "review", "--state", str(tmp_path / "s"), "--skip", "7")
    assert res.exit_code == 2
    assert error_line(res) == "error: there is no review item 7"
    (tmp_path / "bad.lock").write_text('{"name": "not a lock"}')
    res = await cli("verify", "lock", str(tmp_path / "bad.lock"), "--state", str(tmp_path / "s"))
    assert res.exit_code == 2
    assert error_line(res) == f'error: {tmp_path / "bad.lock"}: not a composer.lock (no ' \
                              '"packages" list)'
    res = await cli("verify", "lock", str(tmp_path / "missing.lock"), "--state",
                    str(tmp_path / "s"))
    assert res.exit_code == 3


async def test_herd_vectors_through_sync_and_review(tmp_path: Path) -> None:
    """The 15 Herd vectors on a non-gated ledger: every entry Herd v0.1.0 refused stops the
    sync until reviewed; after the reviews the trusted keys and releases are Herd's."""
    vectors = json.loads((Path(__file__).parents[1] / "vectors" / "herd" /
                          "herd-v0.1.0-entries.json").read_text())
    async with serving(tmp_path / "ledger", "pub") as srv:
        led = Ledger(srv)
        await led.publish(enable_contents(NOW, "paragonie", vectors["keys"]["core1"]),
                          as_server=True)
        for row in vectors["entries"]:
            await led.publish(row["contents"].encode("utf-8"))
        state = tmp_path / "state"
        await init_state(state, srv, "--core-vendor", "auto")
        codes = []
        for _ in range(20):
            res = await cli("verify", "sync", "--state", str(state), "--json")
            if res.exit_code == CLEAN:
                break
            assert res.exit_code == HELD, res.stderr
            held = [i for i in json.loads(res.stdout)["review-items"] if i["decision"] is None]
            codes.append(held[0]["code"])
            assert (await cli("verify", "review", "--state", str(state), "--skip",
                              str(held[0]["id"]))).exit_code == CLEAN
        assert codes == ["key-exists", "malformed", "key-revoked", "self-revocation",
                         "key-not-trusted", "first-key-not-vouched", "bad-signature"]
        names = {value: name for name, value in vectors["keys"].items()}
        db = ReleaseDB(state / "state.db", srv.key.public_b64)
        saved = json.loads(db.to_state().to_json())
        db.close()
        trusted = {names[k["publickey"]] for v in saved["vendors"] for k in v["keys"]
                   if k["revoked"] is None}
        assert trusted == {"core1", "acme2", "acme3", "acme4"}
        final = vectors["herd_final_state"]
        updates: dict[str, list[str]] = {}
        for u in saved["updates"]:
            updates.setdefault(f"{u['vendor']}/{u['name']}", []).append(u["version"])
        assert updates == {p: [v.split(" ")[0] for v in versions]
                           for p, versions in final["updates"].items()}


async def test_a_rewritten_history_halts_every_check(tmp_path: Path) -> None:
    """The ledger at the pinned URL and key no longer holds the entry we verified last (a
    second ledger with the same key, another history): split view, evidence, halt."""
    async with serving(tmp_path / "a", "pub") as srv:
        await bootstrap(Ledger(srv))
        state = tmp_path / "state"
        await init_state(state, srv)
        assert (await cli("verify", "sync", "--state", str(state))).exit_code == CLEAN
        # the same pinned key, another history
        other = await start_server(await init_data_dir(tmp_path / "b", srv.key,
                                                       database=separate_database("b")))
        try:
            await other.add_client("pub")
            led = Ledger(other)
            await led.publish(b"a different first entry")
            config = json.loads((state / "config.json").read_text())
            config["url"] = other.url
            (state / "config.json").write_text(json.dumps(config))
            res = await cli("verify", "sync", "--state", str(state), "--json")
        finally:
            await other.close()
        assert res.exit_code == SPLIT, res.stderr
        assert error_line(res).startswith("error: the ledger no longer holds the entry we "
                                          "last verified (index 1, summaryhash ")
        evidence = json.loads(Path(json.loads(res.stdout)["evidence"]).read_text())
        assert evidence["message"].endswith("its history was rewritten")
        lock = lock_file(tmp_path / "composer.lock", [("acme/lib", "1.0.0")])
        res = await cli("verify", "lock", str(lock), "--state", str(state), "--offline")
        assert res.exit_code == SPLIT
        assert error_line(res).startswith("error: the last sync stopped on a split view: the "
                                          "ledger no longer holds the entry")


async def test_a_replica_as_mirror(tmp_path: Path) -> None:
    """--mirror with a replica path (…/chronicle/replica/ID): it agrees once it has copied
    our head, and is behind (quorum not reached) until then."""
    quiet = {"replicate_interval": "", "cross_sign_interval": "", "scheduled_attestation": ""}
    async with serving(tmp_path / "ledger", "pub") as srv:
        led = Ledger(srv)
        await bootstrap(led)
        replica = await init_data_dir(tmp_path / "replica", database=separate_database("r"),
                                      **quiet)
        served = await start_server(replica)
        try:
            res = await cli("replica", "add", "--data-dir", str(replica.path), "--url",
                            srv.url, "--server-key", srv.key.public_b64, "--name", "up",
                            "--json")
            assert res.exit_code == CLEAN, res.stderr
            mirror = (f"{served.url}/chronicle/replica/{json.loads(res.stdout)['id']}"
                      f"#{served.key.public_b64}")
            sync_replica = ("replica", "sync", "--data-dir", str(replica.path))
            assert (await cli(*sync_replica)).exit_code == CLEAN
            state = tmp_path / "state"
            await init_state(state, srv, "--mirror", mirror, "--quorum", "1")
            res = await cli("verify", "sync", "--state", str(state), "--json")
            assert res.exit_code == CLEAN, res.stderr
            assert [m["status"] for m in json.loads(res.stdout)["mirrors"]] == ["agree"]
            await led.send(Update(vendor="acme", name="lib", version="1.0.0",
                                  metadata=meta(digest_directory(tree(tmp_path / "s", "x")))),
                           "acme1")
            res = await cli("verify", "sync", "--state", str(state))
            assert res.exit_code == QUORUM
            assert (await cli(*sync_replica)).exit_code == CLEAN
            res = await cli("verify", "sync", "--state", str(state), "--json")
            assert res.exit_code == CLEAN, res.stderr
            assert json.loads(res.stdout)["fetched"] == 1
        finally:
            await served.close()


async def test_lock_checks_the_cached_archive_and_the_installed_folder(tmp_path: Path) -> None:
    good = tree(tmp_path / "good", "<?php // 1.0\n")
    digest = digest_directory(good)
    async with serving(tmp_path / "ledger", "pub") as srv:
        led = Ledger(srv)
        await bootstrap(led)
        await led.send(Update(vendor="acme", name="lib", version="1.0.0",
                              metadata=meta(digest)), "acme1")
        state = tmp_path / "state"
        await init_state(state, srv)
        S = ["--state", str(state), "--offline"]
        assert (await cli("verify", "sync", "--state", str(state))).exit_code == CLEAN
        url = "https://example.test/acme/lib/1.0.0.zip"
        cache = tmp_path / "cache"
        zip_of(good, cache / "files" / "acme/lib" /
               f"{hashlib.sha1(url.encode(), usedforsecurity=False).hexdigest()}.zip")
        installed = tree(tmp_path / "vendor" / "acme" / "lib", "<?php // patched in place\n")
        lock = lock_file(tmp_path / "composer.lock", [("acme/lib", "1.0.0")], url)
        both = ["--dist-dir", str(cache), "--vendor-dir", str(tmp_path / "vendor")]
        # a genuine cached archive does not vouch for the code that runs
        res = await cli("verify", "lock", str(lock), *S, *both)
        assert res.exit_code == DIGEST, res.stdout
        assert error_line(res).startswith(
            "error: 1 package(s) failed verification (digest-mismatch): acme/lib 1.0.0: the "
            f"tree digest of {installed} is b3t1:")
        (installed / "src" / "Lib.php").write_text("<?php // 1.0\n")
        res = await cli("verify", "lock", str(lock), *S, *both)
        assert res.exit_code == CLEAN, res.stderr
        assert res.stdout.splitlines()[0].endswith(
            "tree digest verified; the archive and the installed folder both checked")


async def test_an_offline_check_waits_for_the_entries_after_a_reviewed_item(
        tmp_path: Path) -> None:
    digest = digest_directory(tree(tmp_path / "src", "<?php // 1.0\n"))
    async with serving(tmp_path / "ledger", "pub") as srv:
        led = Ledger(srv)
        await bootstrap(led)
        await led.send(Update(vendor="acme", name="lib", version="1.0.0",
                              metadata=meta(digest)), "acme1")
        await led.send(AddKey(vendor="acme", publickey=pk("acme2")), "core")  # held
        await led.send(RevokeUpdate(vendor="acme", name="lib", version="1.0.0",
                                    reason="malware"), "acme1")
        state = tmp_path / "state"
        await init_state(state, srv, "--core-vendor", "review")
        S = ["--state", str(state)]
        lock = lock_file(tmp_path / "composer.lock", [("acme/lib", "1.0.0")])
        assert (await cli("verify", "sync", *S)).exit_code == HELD
        assert (await cli("verify", "review", *S, "--accept", "1")).exit_code == CLEAN
        # the revocation after the held item is verified but not applied: no verdict yet
        res = await cli("verify", "lock", str(lock), *S, "--offline")
        assert res.exit_code == STALE, res.stdout
        assert error_line(res) == ("error: 1 verified entry after a reviewed item is not "
                                   "applied yet: run chronicle verify sync")
        res = await cli("verify", "lock", str(lock), *S)   # online: the sync applies it
        assert res.exit_code == REVOKED, res.stderr
        assert error_line(res).endswith("acme/lib 1.0.0: revoked at entry 4: malware")


async def test_a_mirror_answering_a_number_too_long_for_python(tmp_path: Path) -> None:
    liar = SigningKey.generate()

    async def lookup(_: web.Request) -> web.Response:
        return signed_by(liar, b'{"status": "OK", "n": ' + b"1" * 5000 + b', "results": []}')

    runner = await mirror_answering(lookup)
    try:
        async with serving(tmp_path / "ledger", "pub") as srv:
            await bootstrap(Ledger(srv))
            state = tmp_path / "state"
            mirror = f"http://127.0.0.1:{runner.addresses[0][1]}#{liar.public_b64}"
            await init_state(state, srv, "--mirror", mirror, "--quorum", "1")
            res = await cli("verify", "sync", "--state", str(state))
            # counted against the quorum like any refusal, not a crash of the whole sync
            assert res.exit_code == QUORUM, res.stderr
            assert "Exceeds the limit (4300 digits)" in res.stderr
            assert error_line(res) == ("error: only 0 of 1 mirrors confirm our head "
                                       "(quorum 1); nothing was saved")
    finally:
        await runner.cleanup()


async def test_an_archive_checked_by_its_sha256_alone(tmp_path: Path) -> None:
    archive = zip_of(tree(tmp_path / "src", "<?php // 1.0\n"), tmp_path / "lib.zip")
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    async with serving(tmp_path / "ledger", "pub") as srv:
        led = Ledger(srv)
        await bootstrap(led)
        await led.send(Update(vendor="acme", name="lib", version="1.0.0",
                              metadata=Metadata(dist_sha256=sha)), "acme1")
        state = tmp_path / "state"
        await init_state(state, srv)
        S = ["--package", "acme/lib", "--version", "1.0.0", "--state", str(state)]
        res = await cli("verify", "archive", str(archive), *S)
        assert res.exit_code == CLEAN, res.stderr
        assert "the archive's SHA-256 verified (the release carries no tree digest)" \
            in res.stdout
        other = tmp_path / "other.zip"
        other.write_bytes(b"not the archive the vendor signed")
        res = await cli("verify", "archive", str(other), *S, "--offline")
        assert res.exit_code == DIGEST, res.stdout
        assert error_line(res).endswith(f"the SHA-256 of {other} is "
                                        f"{hashlib.sha256(other.read_bytes()).hexdigest()}, "
                                        f"the release says {sha}")
