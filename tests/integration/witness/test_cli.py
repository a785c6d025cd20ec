"""``chronicle witness init|add-log|list-log|remove-log``, in-process (cli.md conventions:
one JSON object with --json, one ``error: …`` line, exit 1 refused / 2 usage / 3 I/O);
and the witness database kept apart from a ledger's (both backends)."""

from __future__ import annotations

import asyncio
import json
import stat
import sys
from pathlib import Path

import aiohttp
import pytest
from click.testing import CliRunner, Result

from chronicle.cli import main
from chronicle.cli.common import open_witness
from chronicle.config import WITNESS_KEY_FILE, ConfigError, WitnessDir
from chronicle.core.checkpoint import CosignatureVerifier, Cosigner
from chronicle.core.encoding import b64u_decode
from chronicle.core.errors import SchemaMismatchError, StorageError
from chronicle.core.note import Ed25519Signer, b64encode
from chronicle.core.sapient import SigningKey
from chronicle.store import open_store
from chronicle.store.witness import open_witness_store
from chronicle.witness import Witness
from tests import helpers
from tests.helpers import http_request
from tests.witness_support import ORIGIN, TestLog, witness_database

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_IO = 0, 1, 2, 3
LOG = Ed25519Signer.from_seed(ORIGIN, bytes(32))


def cli(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def error_line(res: Result, code: int) -> str:
    assert res.exit_code == code, (res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    [line] = [line for line in res.stderr.splitlines() if line.strip()]
    return line


def init(path: Path, *extra: str) -> dict[str, str]:
    res = cli("witness", "init", "--data-dir", str(path), "--name", "w.example/one",
              "--database", witness_database(path.name), "--json", *extra)
    assert res.exit_code == EXIT_OK, res.stderr
    doc: dict[str, str] = json.loads(res.stdout)
    return doc


def witness(path: Path, command: str, *args: str) -> Result:
    return cli("witness", command, "--data-dir", str(path), *args)


def test_init_makes_a_witness_directory(tmp_path: Path) -> None:
    path = tmp_path / "w"
    doc = init(path)
    key = SigningKey.from_text((path / WITNESS_KEY_FILE).read_text())
    assert stat.S_IMODE((path / WITNESS_KEY_FILE).stat().st_mode) == 0o600
    cosigner = Cosigner("w.example/one", key)
    assert doc == {"name": "w.example/one", "vkey": cosigner.vkey(),
                   "public-key": key.public_b64}
    assert CosignatureVerifier.from_vkey(doc["vkey"]) == cosigner.verifier()
    assert WitnessDir(path).settings().name == "w.example/one"
    # Text output is the vkey alone; a second init is refused.
    line = error_line(witness(path, "init"), EXIT_REFUSED)
    assert line == f"error: {path} already holds a witness"


def test_init_takes_a_key_and_refuses_bad_names(tmp_path: Path) -> None:
    key = SigningKey.generate()
    key_file = tmp_path / "k"
    key_file.write_text(key.to_text())
    doc = init(tmp_path / "w", "--signing-key", str(key_file))
    assert doc["public-key"] == key.public_b64
    line = error_line(cli("witness", "init", "--data-dir", str(tmp_path / "x"), "--name",
                          "bad name"), EXIT_USAGE)
    assert line == "error: Invalid value for --name: 'bad name' is not a key name (no " \
                   "spaces or '+')"
    key_file.write_text("nonsense")
    line = error_line(witness(tmp_path / "y", "init", "--signing-key", str(key_file)),
                      EXIT_REFUSED)
    assert line == f"error: {key_file}: Invalid secret key: expected 64 bytes, got 6"


@pytest.mark.parametrize("leftover", [WITNESS_KEY_FILE, "witness.db"])
def test_init_never_overwrites_what_an_interrupted_init_left(tmp_path: Path,
                                                             leftover: str) -> None:
    (tmp_path / leftover).write_text("kept")
    res = witness(tmp_path, "init", "--database", "sqlite:witness.db")
    assert error_line(res, EXIT_REFUSED) == f"error: {tmp_path / leftover} already exists"
    assert (tmp_path / leftover).read_text() == "kept"


def test_add_list_remove_logs(tmp_path: Path) -> None:
    path = tmp_path / "w"
    init(path)
    res = witness(path, "add-log", "--origin", ORIGIN, "--vkey", LOG.vkey(), "--json")
    assert res.exit_code == EXIT_OK, res.stderr
    added = json.loads(res.stdout)
    assert added == {"origin": ORIGIN, "vkeys": [LOG.vkey()], "active": True, "size": None,
                     "root": None, "cosigned": None, "created": added["created"],
                     "evidence": 0, "added": [LOG.vkey()]}
    # Adding the same key again changes nothing; a second key is added.
    again = witness(path, "add-log", "--origin", ORIGIN, "--vkey", LOG.vkey())
    assert again.stdout == f"witnessing {ORIGIN}  nothing cosigned yet  (1 key(s)) (no new " \
                           "key)\n"
    rotated = Ed25519Signer.generate(ORIGIN)
    assert witness(path, "add-log", "--origin", ORIGIN, "--vkey", rotated.vkey()).exit_code == 0
    listed = json.loads(witness(path, "list-log", "--json").stdout)
    assert [log["vkeys"] for log in listed["logs"]] == [[LOG.vkey(), rotated.vkey()]]
    assert witness(path, "list-log").stdout == \
        f"{ORIGIN}  nothing cosigned yet  (2 key(s))\n"
    # Remove one key, then the log: it is listed only with --all.
    one = witness(path, "remove-log", "--origin", ORIGIN, "--vkey", rotated.vkey())
    assert one.stdout == f"{ORIGIN}: 1 key(s) removed\n"
    gone = witness(path, "remove-log", "--origin", ORIGIN, "--json")
    assert json.loads(gone.stdout)["removed"] == 1
    assert witness(path, "list-log").stdout == "(no logs)\n"
    assert [log["active"] for log in json.loads(
        witness(path, "list-log", "--all", "--json").stdout)["logs"]] == [False]


@pytest.mark.parametrize(("args", "code", "message"), [
    (("add-log", "--origin", ORIGIN, "--vkey", "nonsense"), EXIT_USAGE,
     "error: Invalid value for --vkey: verifier key must be <name>+<key id>+<base64 key>"),
    (("add-log", "--origin", "other.example/log", "--vkey", LOG.vkey()), EXIT_USAGE,
     f"error: Invalid value for --vkey: key name {ORIGIN!r} is not the origin "
     "'other.example/log' (a log names its key after its origin; --any-key-name accepts "
     "another)"),
    (("add-log", "--origin", ORIGIN, "--vkey", Cosigner(ORIGIN, LOG.key).vkey()), EXIT_USAGE,
     f"error: Invalid value for --vkey: verifier key {ORIGIN} has signature type 0x04, not "
     "Ed25519 (0x01)"),
    (("add-log", "--origin", "", "--vkey", LOG.vkey()), EXIT_USAGE,
     "error: Invalid value for --origin: checkpoint origin must not be empty"),
    (("remove-log", "--origin", "nobody.example"), EXIT_REFUSED,
     "error: no log 'nobody.example'"),
])
def test_bad_commands_say_why(tmp_path: Path, args: tuple[str, ...], code: int,
                              message: str) -> None:
    path = tmp_path / "w"
    init(path)
    assert error_line(witness(path, *args), code) == message


def test_keys_named_otherwise_need_a_flag(tmp_path: Path) -> None:
    path = tmp_path / "w"
    init(path)
    sumdb = Ed25519Signer.generate("sum.golang.org")
    res = witness(path, "add-log", "--origin", "go.sum database tree", "--vkey", sumdb.vkey(),
                  "--any-key-name")
    assert res.exit_code == EXIT_OK, res.stderr
    assert error_line(witness(path, "remove-log", "--origin", "go.sum database tree",
                              "--vkey", LOG.vkey()), EXIT_REFUSED) == \
        "error: 'go.sum database tree' has no such key"
    assert witness(path, "remove-log", "--origin", "go.sum database tree").exit_code == 0
    assert error_line(witness(path, "remove-log", "--origin", "go.sum database tree"),
                      EXIT_REFUSED) == "error: 'go.sum database tree' is not witnessed"


def test_evidence_shows_refused_requests_the_log_signed(tmp_path: Path) -> None:
    path = tmp_path / "w"
    init(path)
    log = TestLog(signer=LOG).grow(12)
    fork = TestLog(signer=LOG, tag="fork ").grow(12)
    assert witness(path, "add-log", "--origin", ORIGIN, "--vkey", LOG.vkey()).exit_code == 0

    async def submit() -> list[int]:
        witness_dir = WitnessDir(path)
        cosigner = Cosigner("w.example/one", witness_dir.signing_key(witness_dir.settings()))
        async with open_witness(witness_dir) as store:
            service = Witness(store, cosigner)
            return [(await service.add_checkpoint(body)).status
                    for body in (log.request(0), fork.request(12))]

    assert asyncio.run(submit()) == [200, 409]
    res = witness(path, "evidence", "--origin", ORIGIN, "--json")
    assert res.exit_code == EXIT_OK, res.stderr
    [kept] = json.loads(res.stdout)["evidence"]
    assert kept == {"recorded": kept["recorded"], "status": 409,
                    "reason": "size 12 was cosigned with another root hash",
                    "known-size": 12, "known-root": b64encode(log.tree.root()),
                    "request": b64encode(fork.request(12))}
    assert witness(path, "evidence", "--origin", ORIGIN).stdout == (
        f"{kept['recorded']}  HTTP 409: size 12 was cosigned with another root hash (the "
        "witness held size 12)\n")
    assert error_line(witness(path, "evidence", "--origin", "nobody"), EXIT_REFUSED) == \
        "error: no log 'nobody'"


def test_init_refuses_a_database_it_cannot_use_and_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "new" / "w"
    bad = cli("witness", "init", "--data-dir", str(path), "--name", "w", "--database", "x")
    assert error_line(bad, EXIT_USAGE) == ("error: Invalid value for --database: database "
                                           "must be sqlite:PATH or postgresql://…, not 'x'")
    unreachable = cli("witness", "init", "--data-dir", str(path), "--name", "w",
                      "--database", "postgresql://nobody@127.0.0.1:1/none")
    assert error_line(unreachable, EXIT_IO).startswith("error: cannot connect to PostgreSQL")
    assert not (tmp_path / "new").exists()


def test_a_missing_database_is_never_made_by_opening_it(tmp_path: Path) -> None:
    path = tmp_path / "w"
    res = cli("witness", "init", "--data-dir", str(path), "--name", "w")
    assert res.exit_code == EXIT_OK, res.stderr
    (path / "witness.db").unlink()
    assert error_line(witness(path, "list-log"), EXIT_IO) == (
        f"error: {path / 'witness.db'} does not exist (run `chronicle witness init`, or "
        "check the database setting)")
    assert not (path / "witness.db").exists()


def test_the_key_may_come_from_its_own_variable(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """``$CHRONICLE_WITNESS_KEY_FILE`` names the witness's key; the ledger's variable never
    does (one environment may run both); a key others can read is refused."""
    path = tmp_path / "w"
    init(path)
    elsewhere = tmp_path / "secret.key"
    key = SigningKey.generate()
    elsewhere.write_text(key.to_text())
    elsewhere.chmod(0o600)
    witness_dir = WitnessDir(path)
    monkeypatch.setenv("CHRONICLE_SIGNING_KEY_FILE", str(elsewhere))
    assert witness_dir.signing_key(witness_dir.settings()).public != key.public
    monkeypatch.setenv("CHRONICLE_WITNESS_KEY_FILE", str(elsewhere))
    assert witness_dir.signing_key(witness_dir.settings()).public == key.public
    elsewhere.chmod(0o644)
    with pytest.raises(ConfigError) as caught:
        witness_dir.signing_key(witness_dir.settings())
    assert caught.value.message == (f"signing key {elsewhere} is readable by others (mode "
                                    "0644); chmod 600 it, or use a copy that is")


async def test_serve_json_says_where_it_listens_and_who_it_is(tmp_path: Path) -> None:
    path = tmp_path / "w"
    doc = await asyncio.to_thread(init, path)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "chronicle.cli", "witness", "serve", "--data-dir", str(path),
        "--port", "0", "--json", stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        said = json.loads(await asyncio.wait_for(proc.stdout.readline(), timeout=30))
        assert {k: said[k] for k in ("name", "vkey", "public-key")} == doc
        async with aiohttp.ClientSession() as session:
            described = await http_request(session, said["url"],
                                           b64u_decode(doc["public-key"], 32), "GET", "/")
        assert described.json["vkey"] == doc["vkey"]
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), timeout=30) == 0


def test_commands_on_a_directory_that_is_no_witness(tmp_path: Path) -> None:
    line = error_line(witness(tmp_path, "list-log"), EXIT_IO)
    assert line == (f"error: {tmp_path} is not a chronicle witness directory (no "
                    "witness.toml; run `chronicle witness init`)")
    assert error_line(witness(tmp_path, "serve"), EXIT_IO) == line


def test_witness_and_ledger_databases_stay_apart(tmp_path: Path) -> None:
    """One database may hold both (each its own tables and version row); neither store
    opens the other's database."""
    url = helpers.DATABASE["url"]

    async def go() -> None:
        ledger = open_store(url, tmp_path)
        await ledger.create_schema()
        await ledger.close()
        witness_store = open_witness_store(url, tmp_path)
        with pytest.raises(SchemaMismatchError) as caught:
            await witness_store.open()
        assert caught.value.message == (f"{witness_store.where} holds no chronicle witness "
                                        "database (run `chronicle witness init`)")
        await witness_store.create_schema()
        with pytest.raises(StorageError) as again:
            await witness_store.create_schema()
        assert again.value.message == (f"{witness_store.where} already holds a chronicle "
                                       "witness database")
        await witness_store.close()
        await ledger.open()
        await ledger.close()
        await witness_store.open()
        await witness_store.close()
        other = tmp_path / "other"
        other.mkdir()
        bare = open_witness_store(helpers.separate_database("bare"), other)
        await bare.create_schema()
        await bare.close()
        lonely = open_store(helpers.separate_database("bare"), other)
        with pytest.raises(SchemaMismatchError) as refused:
            await lonely.open()
        assert refused.value.message == (f"{lonely.where} holds no chronicle database (run "
                                         "`chronicle init`)")

    asyncio.run(go())
