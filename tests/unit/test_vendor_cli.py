"""`chronicle digest`, `vendor` and `registry` without a server: sealed keys on disk,
offline signing, and every usage error as one `error:` line with cli.md's exit code."""

from __future__ import annotations

import json
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from chronicle.cli import main, release_profile
from chronicle.config import write_secret_file
from chronicle.core.sapient import SigningKey
from chronicle.release.keystore import unseal
from chronicle.release.messages import ReleaseMessage, Update, classify
from tests.release_support import (
    EXIT_IO,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_USAGE,
    error_line,
    git,
    vendor_env,
)

PASS = "hunter2 hunter2"


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    vendor_env(monkeypatch, PASS)


def cli(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(main, list(args), input=input)



def make_repo(root: Path) -> Path:
    """A repository with a plain file, an executable, a symlink, a nested file and an
    export-ignored one; tag v1.0.0."""
    (root / "src" / "deep").mkdir(parents=True)
    (root / "README.md").write_text("# demo\n")
    (root / "src" / "deep" / "lib.php").write_text("<?php return 1;\n")
    (root / "bin").mkdir()
    (root / "bin" / "run").write_text("#!/bin/sh\necho run\n")
    (root / "bin" / "run").chmod(0o755)
    (root / "link").symlink_to("README.md")
    (root / "tests.txt").write_text("not shipped\n")
    (root / ".gitattributes").write_text("tests.txt export-ignore\n")
    git(root, "-c", "init.defaultBranch=main", "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "release")
    git(root, "tag", "v1.0.0")
    return root


def profile(tmp_path: Path, vendor: str = "acme", *, keygen: bool = True) -> Path:
    client = tmp_path / f"{vendor}-client.key"
    write_secret_file(client, SigningKey.generate().to_text())
    path = tmp_path / f"{vendor}.toml"
    res = cli("vendor", "init", "--profile", str(path), "--url", "http://127.0.0.1:9",
              "--server-key", SigningKey.generate().public_b64, "--client-id", "cid",
              "--client-key-file", str(client), "--vendor", vendor, "--json")
    assert res.exit_code == EXIT_OK, res.stderr
    if keygen:
        res = cli("vendor", "keygen", "--profile", str(path), "--kdf-strength",
                  "interactive", "--json")
        assert res.exit_code == EXIT_OK, res.stderr
    return path


# --- digest ------------------------------------------------------------------------------------

def test_digest_is_one_for_git_tag_zip_tar_gz_and_directory(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    zip_file, tgz = tmp_path / "demo.zip", tmp_path / "demo.tar.gz"
    git(repo, "archive", "--format=zip", "--prefix=demo-1.0.0/", "-o", str(zip_file), "v1.0.0")
    git(repo, "archive", "--format=tar.gz", "--prefix=demo-1.0.0/", "-o", str(tgz), "v1.0.0")
    unpacked = tmp_path / "unpacked"
    with tarfile.open(tgz) as archive:
        archive.extractall(unpacked, filter="tar")
    res = cli("digest", str(repo), "--ref", "v1.0.0", "--json", "--lines")
    assert res.exit_code == EXIT_OK, res.stderr
    by_git = json.loads(res.stdout)
    assert by_git["source"] == "git" and by_git["files"] == 5
    assert by_git["commit"] == git(repo, "rev-parse", "v1.0.0^{commit}").strip()
    assert [line.split("  ")[1] for line in by_git["lines"]] == \
        [".gitattributes", "README.md", "bin/run", "link", "src/deep/lib.php"]
    assert by_git["lines"][2].startswith("100755 ") and by_git["lines"][3].startswith("120000 ")
    for target in (zip_file, tgz, unpacked / "demo-1.0.0"):
        res = cli("digest", str(target))
        assert res.exit_code == EXIT_OK, res.stderr
        assert res.stdout.strip() == by_git["digest"], target
    # the working tree still holds the export-ignored file: another digest
    res = cli("digest", str(repo), "--format", "json")
    assert json.loads(res.stdout)["source"] == "directory"
    assert json.loads(res.stdout)["digest"] != by_git["digest"]


def test_digest_refusals_are_one_precise_line(tmp_path: Path) -> None:
    two_tops = tmp_path / "two.zip"
    with zipfile.ZipFile(two_tops, "w") as archive:
        archive.writestr("a/x", b"1")
        archive.writestr("b/y", b"2")
    res = cli("digest", str(two_tops))
    assert res.exit_code == EXIT_REFUSED
    assert error_line(res) == \
        f"error: {two_tops}: archive has more than one top-level entry: 'a' and 'b'"

    not_archive = tmp_path / "notes.txt"
    not_archive.write_text("hello")
    res = cli("digest", str(not_archive))
    assert res.exit_code == EXIT_REFUSED
    assert error_line(res).startswith(f"error: {not_archive}: not a readable tar or tar.gz "
                                      "archive: ")

    repo = make_repo(tmp_path / "repo")
    (repo / ".gitattributes").write_text("README.md export-subst\n")
    git(repo, "commit", "-qam", "subst")
    res = cli("digest", str(repo), "--ref", "HEAD")
    assert res.exit_code == EXIT_REFUSED
    assert error_line(res) == (f"error: {repo}: export-subst is set on 'README.md': its "
                               "archived content would depend on the archiver")

    res = cli("digest", str(repo), "--ref", "v9")
    assert res.exit_code == EXIT_REFUSED
    assert error_line(res).startswith(f"error: {repo}: cannot read commit 'v9' (git ")

    res = cli("digest", str(tmp_path / "missing"))
    assert res.exit_code == EXIT_IO
    assert error_line(res) == f"error: {tmp_path / 'missing'}: no such file or directory"

    res = cli("digest", str(not_archive), "--ref", "v1")
    assert res.exit_code == EXIT_USAGE
    assert "--ref needs PATH to be a git repository" in error_line(res)


# --- keys and profiles -------------------------------------------------------------------------

def test_keygen_seals_the_key_mode_0600_and_adopts_the_first(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = profile(tmp_path, keygen=False)
    res = cli("vendor", "keygen", "--profile", str(path), "--kdf-strength", "interactive",
              "--json")
    assert res.exit_code == EXIT_OK, res.stderr
    made = json.loads(res.stdout)
    key_file = Path(made["key-file"])
    assert made["profile-key"] is True and key_file == tmp_path / "acme.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(key_file.read_text())["public-key"] == made["public-key"]
    # a second key (for CI) is written, not adopted; prompted passphrase, asked twice
    monkeypatch.setattr(release_profile, "interactive", lambda: True)
    ci = tmp_path / "ci.key"
    res = CliRunner(env={"CHRONICLE_KEY_PASSPHRASE": None}).invoke(
        main, ["vendor", "keygen", "--profile", str(path), "--out", str(ci),
               "--kdf-strength", "interactive"], input="ci pass\nci pass\n")
    assert res.exit_code == EXIT_OK, res.stderr
    assert "(the profile's signing key now)" not in res.stdout
    assert unseal(ci.read_bytes(), b"ci pass").public_b64 in res.stdout
    assert f"key-file = \"{key_file}\"" in path.read_text()
    res = cli("vendor", "keygen", "--profile", str(path), "--out", str(ci))
    assert res.exit_code == EXIT_IO
    assert error_line(res) == f"error: {ci} already exists"


def test_offline_sign_writes_a_verifiable_message(tmp_path: Path) -> None:
    path = profile(tmp_path)
    repo = make_repo(tmp_path / "repo")
    out_file = tmp_path / "release.json"
    res = cli("vendor", "sign", "release", "--profile", str(path), "widget", "1.0.0",
              "--git", str(repo), "--ref", "v1.0.0", "--repo", "https://example.org/widget",
              "--out", str(out_file), "--json")
    assert res.exit_code == EXIT_OK, res.stderr
    done = json.loads(res.stdout)
    assert stat.S_IMODE(out_file.stat().st_mode) == 0o600
    message = classify(out_file.read_bytes().rstrip(b"\n"))
    assert isinstance(message, ReleaseMessage) and message.signature_valid()
    assert isinstance(message.body, Update)
    assert message.body.metadata.tree == done["tree"]
    assert message.body.metadata.commit == git(repo, "rev-parse", "v1.0.0").strip()
    assert message.op_public_key == json.loads((tmp_path / "acme.key").read_text())["public-key"]
    records = [json.loads(line) for line in
               (tmp_path / "acme.signed.jsonl").read_text().splitlines()]
    assert [r["op-sig"] for r in records] == [message.op_sig]
    assert records[0]["what"] == "update acme/widget 1.0.0"


def test_wrong_passphrase_is_one_precise_line(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    path = profile(tmp_path)
    monkeypatch.setenv("CHRONICLE_KEY_PASSPHRASE", "not it")
    res = cli("vendor", "sign", "key-add", "--profile", str(path), "--public-key",
              SigningKey.generate().public_b64, "--out", str(tmp_path / "m.json"))
    assert res.exit_code == EXIT_REFUSED
    assert error_line(res) == (f"error: {tmp_path / 'acme.key'}: wrong passphrase (or the "
                               "key file's ciphertext was altered)")
    assert not (tmp_path / "m.json").exists()
    assert not (tmp_path / "acme.signed.jsonl").exists()


@pytest.mark.parametrize(("args", "code", "message"), [
    (["vendor", "release", "widget", "1.0.0", "--repo", "https://x"], EXIT_USAGE,
     "error: give exactly one of --git DIR (with --ref) and --archive FILE"),
    (["vendor", "release", "other/widget", "1.0.0", "--repo", "https://x", "--archive", "a"],
     EXIT_USAGE, "error: Invalid value for PACKAGE: 'other/widget' is not a package of "
                 "vendor 'acme' (this profile's vendor)"),
    (["vendor", "release", "widget", "1.0.0", "--repo", "https://x", "--archive", "a"],
     EXIT_USAGE, "error: --archive needs --commit (the commit it was made from)"),
    (["vendor", "release", "widget", "nope", "--repo", "https://x", "--archive", "a",
      "--commit", "0" * 40], EXIT_IO, "error: a: cannot read 'a': No such file or directory"),
    (["vendor", "attest", "widget", "1.0.0", "--kind", "reproduced"], EXIT_USAGE,
     "error: Invalid value for PACKAGE: 'widget' must be VENDOR/NAME"),
    (["vendor", "attest", "beta/lib", "1.0.0", "--kind", "liked"], EXIT_USAGE,
     "error: Invalid value for '--kind': 'liked' is not one of 'reproduced', 'spot-check', "
     "'code-review', 'sec-audit', 'vote-against'."),
    (["vendor", "revoke-release", "widget", "1.x", "--reason", "bad"], EXIT_USAGE,
     'error: op-body of revoke-update: field "version" is not a Composer release version: '
     '"1.x"'),
    (["vendor", "key", "add", "--public-key", "garbage"], EXIT_USAGE,
     "error: Invalid value for --public-key: Invalid public key: not base64url"),
    (["registry", "vouch", "--vendor", "acme", "--public-key", SigningKey.generate().public_b64],
     EXIT_USAGE, "error: Invalid value for --vendor: 'acme' is the registry's own vendor"),
    (["registry", "override", "revoke-key", "--vendor", "Bad!", "--public-key",
      SigningKey.generate().public_b64], EXIT_USAGE,
     "error: Invalid value for --vendor: 'Bad!' is not a Composer vendor name"),
])
def test_usage_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str],
                      code: int, message: str) -> None:
    path = profile(tmp_path)
    monkeypatch.chdir(tmp_path)
    res = cli(*args, "--profile", str(path))
    assert res.exit_code == code, res.stderr
    assert error_line(res).startswith(message)


def test_submit_refuses_what_is_not_a_signed_release_message(tmp_path: Path) -> None:
    path = profile(tmp_path)
    note = tmp_path / "note.json"
    note.write_text('{"hello": "world"}')
    res = cli("vendor", "submit", "--profile", str(path), str(note))
    assert res.exit_code == EXIT_REFUSED
    assert error_line(res) == f"error: {note}: not a release message"
    signed = tmp_path / "signed.json"
    res = cli("vendor", "sign", "key-add", "--profile", str(path), "--public-key",
              SigningKey.generate().public_b64, "--out", str(signed))
    assert res.exit_code == EXIT_OK, res.stderr
    doc = json.loads(signed.read_text())
    doc["op-body"] = doc["op-body"].replace('"acme"', '"evil"')
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(doc))
    res = cli("vendor", "submit", "--profile", str(path), str(forged))
    assert res.exit_code == EXIT_REFUSED
    assert error_line(res) == (f"error: {forged}: op-sig does not verify over op-body with "
                               f"op-public-key {doc['op-public-key']}")
    doc["op-body"] = "{"
    forged.write_text(json.dumps(doc))
    res = cli("vendor", "submit", "--profile", str(path), str(forged))
    assert res.exit_code == EXIT_REFUSED
    assert error_line(res) == (f"error: {forged}: malformed release message: op-body of "
                               "add-key is not valid JSON")
    res = cli("vendor", "submit", "--profile", str(path), str(tmp_path / "gone.json"))
    assert res.exit_code == EXIT_IO
    error_line(res)


def test_a_key_cannot_revoke_itself(tmp_path: Path) -> None:
    path = profile(tmp_path)
    own = json.loads((tmp_path / "acme.key").read_text())["public-key"]
    res = cli("vendor", "key", "revoke", "--profile", str(path), "--public-key", own)
    assert res.exit_code == EXIT_USAGE
    assert error_line(res) == ("error: Invalid value for --public-key: that is this "
                               "profile's own signing key: a key cannot revoke itself (use "
                               "another full key of the vendor)")


def test_profile_errors(tmp_path: Path) -> None:
    res = cli("vendor", "monitor", "--profile", str(tmp_path / "none.toml"))
    assert res.exit_code == EXIT_IO
    assert error_line(res) == (f"error: profile {tmp_path / 'none.toml'} does not exist "
                               "(create it with `chronicle vendor init`)")
    bad = tmp_path / "bad.toml"
    bad.write_text('url = "x"\ncolour = "red"\n')
    res = cli("vendor", "monitor", "--profile", str(bad))
    assert res.exit_code == EXIT_USAGE
    assert error_line(res) == f"error: profile {bad}: unknown setting 'colour'"
    path = profile(tmp_path, keygen=False)
    res = cli("vendor", "key", "revoke", "--profile", str(path), "--public-key",
              SigningKey.generate().public_b64)
    assert res.exit_code == EXIT_USAGE
    assert error_line(res) == (f"error: profile {path} has no signing key yet: run "
                               "`chronicle vendor keygen`")
    res = cli("vendor", "init", "--profile", str(path), "--url", "http://x", "--server-key",
              SigningKey.generate().public_b64, "--client-id", "c", "--client-key-file",
              str(tmp_path / "acme-client.key"), "--vendor", "acme")
    assert res.exit_code == EXIT_IO
    assert error_line(res) == f"error: {path} already exists"
    res = cli("vendor", "init", "--profile", str(tmp_path / "p.toml"), "--url", "http://x",
              "--server-key", SigningKey.generate().public_b64, "--client-id", "c",
              "--client-key-file", str(tmp_path / "acme-client.key"), "--vendor", "acme",
              "--mirror", "http://m")
    assert res.exit_code == EXIT_USAGE
    assert error_line(res) == ("error: Invalid value for --mirror: mirror 'http://m' is not "
                               "URL#PUBLIC-KEY")


def test_no_passphrase_without_a_terminal(tmp_path: Path) -> None:
    path = profile(tmp_path)
    res = CliRunner(env={"CHRONICLE_KEY_PASSPHRASE": None}).invoke(
        main, ["vendor", "sign", "key-revoke", "--profile", str(path), "--public-key",
               SigningKey.generate().public_b64, "--out", str(tmp_path / "m.json")], input="")
    assert res.exit_code == EXIT_USAGE
    assert error_line(res) == ("error: no passphrase given (set $CHRONICLE_KEY_PASSPHRASE, "
                               "or run in a terminal)")


def test_monitor_refuses_the_state_of_another_ledger(tmp_path: Path) -> None:
    path = profile(tmp_path)
    state = tmp_path / "acme.monitor.json"
    state.write_text(json.dumps({"url": "http://elsewhere", "instance": "", "server-key": "x",
                                 "index": 3, "currhash": "y", "findings": []}))
    res = cli("vendor", "monitor", "--profile", str(path))
    assert res.exit_code == EXIT_USAGE
    assert error_line(res) == (f"error: {state} belongs to another ledger than the "
                               "profile's (remove it to start over)")
    (tmp_path / "acme.signed.jsonl").write_text("not a record\n")
    res = cli("vendor", "monitor", "--profile", str(path))
    assert res.exit_code == EXIT_USAGE
    assert error_line(res) == f"error: {tmp_path / 'acme.signed.jsonl'}: line 1 is not a record"


def test_an_added_key_is_named_so_its_revocation_signs_differently(tmp_path: Path) -> None:
    """`op` is not signed: an unnamed add-key would carry the op-sig of the key's
    revoke-key by the same signer, and the ledger's replay rule would refuse the revoke."""
    path = profile(tmp_path)
    pk = SigningKey.generate().public_b64
    sigs = []
    for action in ("key-add", "key-revoke"):
        out_file = tmp_path / f"{action}.json"
        res = cli("vendor", "sign", action, "--profile", str(path), "--public-key", pk,
                  "--out", str(out_file))
        assert res.exit_code == EXIT_OK, res.stderr
        message = classify(out_file.read_bytes().rstrip(b"\n"))
        assert isinstance(message, ReleaseMessage) and message.signature_valid()
        sigs.append(message.op_sig)
        if action == "key-add":
            assert json.loads(message.body_text)["name"] == f"key {pk[:8]}"
    assert sigs[0] != sigs[1]
