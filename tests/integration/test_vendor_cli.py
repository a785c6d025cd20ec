"""The vendor and registry CLI against a real `chronicle serve` on loopback, both backends.

The registry vouches for two vendors; acme adds a limited CI key, its CI profile releases
from a git tag (a mirror checked), acme releases from an archive and revokes it, beta
attests, acme signs offline and submits later; `monitor` passes while every action under
acme is its profiles' own, catches a release made with a stolen key (directly, not through
the profile) and an emergency override by the registry. On a plain ledger and on a
release ledger (`chronicle release enable` naming the registry's key): the chain holds
exactly the messages made; on the release ledger the gate refuses the limited CI key adding
a key and a signed file submitted twice (a replay), and, replayed with the rules, every
action was authorised and the override is recorded as an emergency.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from chronicle.cli import main
from chronicle.cli.release_profile import describe
from chronicle.client import ChronicleClient
from chronicle.config import write_secret_file
from chronicle.core.sapient import SigningKey
from chronicle.release.keystore import unseal
from chronicle.release.messages import (
    Metadata,
    ReleaseMessage,
    Update,
    classify,
    sign_message,
)
from chronicle.release.state import ChainEntry, ReleaseState
from tests.helpers import (
    ServerProcess,
    add_client_offline,
    free_port,
    init_data_dir,
    stop_process,
)
from tests.release_support import (
    EXIT_IO,
    EXIT_OK,
    EXIT_REFUSED,
    error_line,
    git,
    vendor_env,
)

PASS = "correct horse battery"
REPO_URL = "https://git.example.org/acme/widget"


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    vendor_env(monkeypatch, PASS)


async def cli(*args: str) -> Result:
    """The CLI in-process, in a thread (it runs its own event loop)."""
    return await asyncio.to_thread(CliRunner().invoke, main, list(args))


async def ok(*args: str) -> dict[str, Any]:
    res = await cli(*args, "--json")
    assert res.exit_code == EXIT_OK, (args, res.stderr)
    out: dict[str, Any] = json.loads(res.stdout)
    return out



def make_repo(root: Path) -> Path:
    (root / "src").mkdir(parents=True)
    (root / "src" / "Widget.php").write_text("<?php final class Widget {}\n")
    (root / "composer.json").write_text('{"name": "acme/widget"}\n')
    git(root, "-c", "init.defaultBranch=main", "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "1.0.0")
    git(root, "tag", "v1.0.0")
    (root / "src" / "Widget.php").write_text("<?php final class Widget { /* 1.1 */ }\n")
    git(root, "commit", "-qam", "1.1.0")
    git(root, "tag", "v1.1.0")
    return root


@pytest.mark.parametrize("mode", ["plain", "release"])
async def test_vendor_and_registry_workflow(tmp_path: Path, mode: str) -> None:
    server_key = SigningKey.generate()
    data_dir = await init_data_dir(tmp_path / "ledger", server_key)
    clients = {}
    for name in ("registry", "acme", "ci", "beta", "thief"):
        ident = await add_client_offline(data_dir, name)
        key_file = tmp_path / f"{name}-client.key"
        write_secret_file(key_file, ident.key.to_text())
        clients[name] = (ident.client_id, key_file)

    async def init_profile(name: str, vendor: str, url: str, *extra: str) -> Path:
        path = tmp_path / f"{name}.toml"
        await ok("vendor", "init", "--profile", str(path), "--url", url, "--server-key",
           server_key.public_b64, "--client-id", clients[name][0], "--client-key-file",
           str(clients[name][1]), "--vendor", vendor, *extra)
        return path

    async def keygen(profile: Path, *extra: str) -> str:
        return str((await ok("vendor", "keygen", "--profile", str(profile), "--kdf-strength",
                      "interactive", *extra))["public-key"])

    sp = ServerProcess(data_dir.path)
    # Profiles and keys first (offline), then the bootstrap naming the registry's key.
    url = "http://127.0.0.1:0"
    profiles = {name: await init_profile(name, vendor, url) for name, vendor in
                (("registry", "registry"), ("acme", "acme"), ("beta", "beta"))}
    core_pk = await keygen(profiles["registry"])
    acme_pk = await keygen(profiles["acme"])
    beta_pk = await keygen(profiles["beta"])
    ci_key_file = tmp_path / "ci.key"
    ci_pk = await keygen(profiles["acme"], "--out", str(ci_key_file))
    if mode == "release":
        done = await ok("release", "enable", "--data-dir", str(data_dir.path), "--core-vendor",
                        "registry", "--core-key", core_pk)
        assert (done["core-vendor"], done["core-key"]) == ("registry", core_pk)
    try:
        url = await sp.start()
        for path in profiles.values():   # the server's port is known now
            path.write_text(path.read_text().replace("http://127.0.0.1:0", url))
        ci = await init_profile("ci", "acme", url, "--key-file", str(ci_key_file), "--mirror",
                          f"{url}#{server_key.public_b64}")
        acme, beta, registry = profiles["acme"], profiles["beta"], profiles["registry"]
        repo = make_repo(tmp_path / "widget")

        # the registry vouches for acme and beta (their first keys)
        done = await ok("registry", "vouch", "--profile", str(registry), "--vendor", "acme",
                  "--public-key", acme_pk, "--name", "acme main")
        assert done["op"] == "add-key" and done["signer"] == core_pk
        assert done["message"] == f"add-key {acme_pk} to acme"
        assert set(done["receipt"]) == {"currhash", "summaryhash", "created"}
        await ok("registry", "vouch", "--profile", str(registry), "--vendor", "beta",
           "--public-key", beta_pk)

        # acme adds a limited CI key; CI releases 1.0.0 from the git tag, mirror agreeing
        done = await ok("vendor", "key", "add", "--profile", str(acme), "--public-key", ci_pk,
                  "--name", "ci", "--limited")
        assert done["message"] == f"add-key {ci_pk} to acme (limited)"
        done = await ok("vendor", "release", "--profile", str(ci), "widget", "1.0.0", "--git",
                  str(repo), "--ref", "v1.0.0", "--repo", REPO_URL)
        digest = await ok("digest", str(repo), "--ref", "v1.0.0")
        assert done["tree"] == digest["digest"] and done["commit"] == digest["commit"]
        assert done["signer"] == ci_pk
        assert done["mirrors"] == [{"url": url, "status": "agrees"}]
        if mode == "release":
            # the gate: a limited key may only release; the same signed file is a replay
            res = await cli("vendor", "key", "add", "--profile", str(ci), "--public-key",
                            beta_pk, "--name", "sneaky")
            assert res.exit_code == EXIT_REFUSED
            assert error_line(res) == (
                f"error: server refused (HTTP 403): key {ci_pk} of vendor acme is limited: "
                "it may only sign update for acme")

        # acme releases 1.1.0 from an archive, then revokes it
        archive = tmp_path / "widget-1.1.0.zip"
        git(repo, "archive", "--format=zip", "--prefix=widget-1.1.0/", "-o", str(archive),
            "v1.1.0")
        commit = git(repo, "rev-parse", "v1.1.0").strip()
        done = await ok("vendor", "release", "--profile", str(acme), "acme/widget", "1.1.0",
                  "--archive", str(archive), "--commit", commit, "--repo", REPO_URL)
        assert done["tree"] == (await ok("digest", str(repo), "--ref", "v1.1.0"))["digest"]
        res = await cli("vendor", "revoke-release", "--profile", str(acme), "widget", "1.1.0",
                  "--reason", "built from the wrong branch")
        assert res.exit_code == EXIT_OK, res.stderr
        assert res.stdout.startswith("revoke-update acme/widget 1.1.0: on the ledger\n")

        # beta attests acme's 1.0.0
        done = await ok("vendor", "attest", "--profile", str(beta), "acme/widget", "1.0.0",
                  "--kind", "reproduced", "--details", "rebuilt from v1.0.0")
        assert done["message"] == "attest-update acme/widget 1.0.0 (reproduced by beta)"

        if mode == "release":
            # what the vendors published verifies with the package users' client
            state_dir = tmp_path / "verify-state"
            await ok("verify", "init", "--state", str(state_dir), "--url", url,
                     "--server-key", server_key.public_b64)
            await ok("verify", "reproduce", "--state", str(state_dir), "--git", str(repo),
                     "--package", "acme/widget", "--version", "1.0.0")
            res = await cli("verify", "archive", str(archive), "--state", str(state_dir),
                            "--package", "acme/widget", "--version", "1.1.0")
            assert res.exit_code == 11, res.stderr   # revoked-release

        # offline sign, submit later (exact bytes)
        signed = tmp_path / "widget-1.0.1.json"
        git(repo, "tag", "v1.0.1", "v1.0.0")
        offline = await ok("vendor", "sign", "release", "--profile", str(acme), "widget", "1.0.1",
                     "--git", str(repo), "--ref", "v1.0.1", "--repo", REPO_URL,
                     "--out", str(signed))
        done = await ok("vendor", "submit", "--profile", str(acme), str(signed))
        assert done["op-sig"] == offline["op-sig"]
        assert done["message"] == "update acme/widget 1.0.1"
        if mode == "release":
            # the same signed bytes from another client: a replay, refused
            res = await cli("vendor", "submit", "--profile", str(beta), str(signed))
            assert res.exit_code == EXIT_REFUSED
            # entry 8: enable, two vouches, CI key, 1.0.0, 1.1.0, its revocation, attestation
            assert error_line(res) == ("error: server refused (HTTP 409): op-sig was already "
                                       "used at entry 8: the message is a replay")

        # monitor: every action under acme is acme's or its CI profile's own
        ci_record = str(tmp_path / "ci.signed.jsonl")
        watch = ("vendor", "monitor", "--profile", str(acme), "--record", ci_record)
        done = await ok(*watch)
        assert done["ok"] is True and done["findings"] == []
        # without the CI record, CI's release is not this profile's
        res = await cli("vendor", "monitor", "--profile", str(beta))
        assert res.exit_code == EXIT_OK, res.stderr

        # a release made with a stolen key, directly, not through the profile
        stolen = unseal((tmp_path / "acme.key").read_bytes(), PASS.encode())
        body = Update(vendor="acme", name="widget", version="6.6.6", metadata=Metadata(
            repo="https://evil.example/widget", commit="f" * 40,
            tree=digest["digest"]))
        thief_id, thief_key_file = clients["thief"]
        async with ChronicleClient(url, server_key.public, client_id=thief_id,
                                   key=SigningKey.from_text(thief_key_file.read_text())) as api:
            receipt = await api.publish(sign_message(body, stolen))
        res = await cli(*watch)
        assert res.exit_code == EXIT_REFUSED
        finding = (f"signed by {acme_pk} was not made by this profile")
        lines = res.stdout.splitlines()
        assert len(lines) == 1 and lines[0].endswith(f"update acme/widget 6.6.6 {finding}")
        assert error_line(res) == \
            "error: 1 action(s) under vendor acme were not made by this profile"
        res = await cli(*watch, "--json")   # still open: reported again
        assert res.exit_code == EXIT_REFUSED
        report = json.loads(res.stdout)
        assert report["ok"] is False and report["checked"] == 0
        assert [f["currhash"] for f in report["findings"]] == [receipt.currhash]
        acked = await ok("vendor", "monitor", "--profile", str(acme), "--acknowledge")
        assert acked["acknowledged"] == report["findings"]
        assert (await ok(*watch))["ok"] is True

        # a mirror that cannot vouch for the entry fails the command (after publishing)
        other = SigningKey.generate().public_b64
        ci_text = ci.read_text()
        ci.write_text(ci_text.replace(f"#{server_key.public_b64}", f"#{other}"))
        res = await cli("vendor", "release", "--profile", str(ci), "widget", "1.0.2", "--git",
                  str(repo), "--ref", "v1.0.0", "--repo", REPO_URL)
        assert res.exit_code == EXIT_REFUSED
        assert error_line(res).startswith(f"error: mirror {url} error: ")
        assert "is on the ledger)" in res.stderr

        # an emergency override by the registry: revoke the CI key
        done = await ok("registry", "override", "revoke-key", "--profile", str(registry),
                  "--vendor", "acme", "--public-key", ci_pk)
        assert done["emergency"] is True
        res = await cli(*watch)
        assert res.exit_code == EXIT_REFUSED
        assert res.stdout.strip().endswith(
            f"revoke-key {ci_pk} of acme signed by {core_pk} was not made by this profile")

        # unreachable ledger: transport error, exit 3
        acme.write_text(acme.read_text().replace(url, f"http://127.0.0.1:{free_port()}"))
        res = await cli("vendor", "revoke-release", "--profile", str(acme), "widget", "1.0.0",
                  "--reason", "x")
        assert res.exit_code == EXIT_IO
        error_line(res)

        # the chain holds exactly these release messages, in this order
        async with ChronicleClient(url, server_key.public) as api:
            entries = [ChainEntry(index=e.index or 0, currhash=e.currhash, created=e.created,
                                  publickey=e.publickey, contents=e.contents)
                       async for e in api.export()]
        messages = [m for m in map(classify, (e.contents for e in entries))
                    if isinstance(m, ReleaseMessage)]
        assert [(describe(m.body), m.op_public_key) for m in messages] == [
            (f"add-key {acme_pk} to acme", core_pk), (f"add-key {beta_pk} to beta", core_pk),
            (f"add-key {ci_pk} to acme (limited)", acme_pk),
            ("update acme/widget 1.0.0", ci_pk), ("update acme/widget 1.1.0", acme_pk),
            ("revoke-update acme/widget 1.1.0", acme_pk),
            ("attest-update acme/widget 1.0.0 (reproduced by beta)", beta_pk),
            ("update acme/widget 1.0.1", acme_pk), ("update acme/widget 6.6.6", acme_pk),
            ("update acme/widget 1.0.2", ci_pk), (f"revoke-key {ci_pk} of acme", core_pk)]
        if mode == "plain":
            return
        # replayed with the release rules: all authorised, the override an emergency
        state = ReleaseState(server_key=server_key.public_b64)
        for entry in entries:
            state.ingest(entry)
        assert state.rejected() == []
        assert state.vendors() == ["acme", "beta", "registry"]
        keys = {k.publickey: k for k in state._keys["acme"]}
        assert keys[ci_pk].limited and keys[ci_pk].revoked_emergency
        assert [k.publickey for k in state.trusted_keys("acme")] == [acme_pk]
        updates = {u.version: u for u in state.updates()}
        assert sorted(updates) == ["1.0.0", "1.0.1", "1.0.2", "1.1.0", "6.6.6"]
        assert updates["1.0.0"].signer == ci_pk
        assert updates["1.1.0"].revoke_reason == "built from the wrong branch"
        assert [(a.attestor, a.attestation) for a in state.attestations()] == \
            [("beta", "reproduced")]
        assert [(e.op, e.vendor, e.signer) for e in state.emergency_actions()] == \
            [("revoke-key", "acme", core_pk)]
    finally:
        await stop_process(sp)
