"""The `chronicle` command, per the shared cli.md conventions.

Offline commands run in-process with click's CliRunner; commands that talk to a live
server run as real subprocesses (`python -m chronicle.cli`) against a `chronicle serve`
subprocess on loopback, sharing its data directory.
"""

from __future__ import annotations

import asyncio
import json
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import click
import pytest
from click.testing import CliRunner, Result

from chronicle import __version__
from chronicle.cli import main
from chronicle.cli.common import open_store as open_data_dir
from chronicle.config import KEY_FILE, write_secret_file
from chronicle.core.encoding import b64u_decode
from chronicle.core.sapient import SigningKey
from chronicle.store import SCHEMA_VERSION, Store, open_store
from tests import helpers
from tests.helpers import (
    Identity,
    ServerProcess,
    free_port,
    http_publish,
    http_request,
    init_data_dir,
    start_server,
    stop_process,
    verify_chain,
)

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_IO = 0, 1, 2, 3


# --- helpers ------------------------------------------------------------------------------

def cli(*args: str, input: bytes | str | None = None) -> Result:
    return CliRunner().invoke(main, list(args), input=input)


def assert_error_line(stderr: str) -> str:
    """cli.md: errors are one line on stderr, `error: …`, no traceback."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one error line, got: {stderr!r}"
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


def init_dir(path: Path, *extra: str) -> str:
    res = cli("init", "--data-dir", str(path), "--database", helpers.DATABASE["url"], *extra)
    assert res.exit_code == EXIT_OK, (res.stdout, res.stderr)
    return res.stdout.strip()


def stored_rows(data_dir: Path) -> list[Any]:
    async def go() -> list[Any]:
        from chronicle.config import DataDir

        store = open_store(DataDir(data_dir).settings().database, data_dir)
        await store.open()
        try:
            return await store.chain("").range(0, 1_000_000)
        finally:
            await store.close()

    return asyncio.run(go())


def _flatten(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [x for v in value.values() for x in _flatten(v)]
    if isinstance(value, list):
        return [x for v in value for x in _flatten(v)]
    return [value]


async def run_cli(*args: str, stdin: bytes | None = None) -> tuple[int, str, str]:
    """`python -m chronicle.cli ARGS` as a real process."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "chronicle.cli", *args,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(stdin), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


# --- offline commands ---------------------------------------------------------------------

def test_version() -> None:
    res = cli("--version")
    assert res.exit_code == EXIT_OK
    assert __version__ in res.stdout and "chronicle" in res.stdout


def test_keygen_json() -> None:
    res = cli("keygen", "--json")
    assert res.exit_code == EXIT_OK, res.stderr
    doc = json.loads(res.stdout)
    assert sorted(doc) == ["public-key", "secret-key"]
    key = SigningKey.from_text(doc["secret-key"])
    assert key.public_b64 == doc["public-key"]
    assert len(b64u_decode(doc["secret-key"], 64)) == 64


def test_keygen_out(tmp_path: Path) -> None:
    out = tmp_path / "client.key"
    res = cli("keygen", "--out", str(out))
    assert res.exit_code == EXIT_OK, res.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    key = SigningKey.from_text(out.read_text())
    assert res.stdout.strip() == key.public_b64

    before = out.read_text()
    res = cli("keygen", "--out", str(out))  # never overwrite a secret key
    assert res.exit_code != EXIT_OK
    assert_error_line(res.stderr)
    assert out.read_text() == before


def test_init(tmp_path: Path) -> None:
    data_dir = tmp_path / "ledger"
    public = init_dir(data_dir)
    key_file = data_dir / KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert SigningKey.from_text(key_file.read_text()).public_b64 == public
    assert (data_dir / "chronicle.toml").exists()
    assert stored_rows(data_dir) == []

    res = cli("init", "--data-dir", str(data_dir), "--database", helpers.DATABASE["url"])
    assert res.exit_code == EXIT_REFUSED
    assert_error_line(res.stderr)
    assert SigningKey.from_text(key_file.read_text()).public_b64 == public  # untouched


def test_init_json_and_existing_key(tmp_path: Path) -> None:
    res = cli("init", "--data-dir", str(tmp_path / "a"), "--database", helpers.DATABASE["url"],
              "--json")
    assert res.exit_code == EXIT_OK, res.stderr
    doc = json.loads(res.stdout)
    assert list(doc) == ["public-key"]
    assert SigningKey.from_text((tmp_path / "a" / KEY_FILE).read_text()).public_b64 == \
        doc["public-key"]

    key = SigningKey.generate()
    key_file = tmp_path / "php-signing-secret.key"
    key_file.write_text(key.to_text() + "\n")
    url = helpers.DATABASE["url"]
    if url.startswith("postgres"):
        url += "_b"  # a second, separate schema for the second ledger
    res = cli("init", "--data-dir", str(tmp_path / "b"), "--database", url,
              "--signing-key", str(key_file), "--json")
    assert res.exit_code == EXIT_OK, res.stderr
    assert json.loads(res.stdout) == {"public-key": key.public_b64}
    stored = tmp_path / "b" / KEY_FILE
    assert SigningKey.from_text(stored.read_text()).secret == key.secret
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600


def test_config_get_set(tmp_path: Path) -> None:
    data_dir = tmp_path / "ledger"
    init_dir(data_dir)
    dd = ["--data-dir", str(data_dir)]
    res = cli("config", "get", *dd, "paginate-export")
    assert res.exit_code == EXIT_OK and res.stdout.strip() == "0"

    res = cli("config", "set", *dd, "paginate-export", "5")
    assert res.exit_code == EXIT_OK, res.stderr
    res = cli("config", "get", *dd, "paginate-export")
    assert res.exit_code == EXIT_OK and res.stdout.strip() == "5"
    res = cli("config", "get", *dd, "paginate-export", "--json")
    assert json.loads(res.stdout) == {"paginate-export": 5}
    from chronicle.config import DataDir

    assert DataDir(data_dir).settings().paginate_export == 5

    res = cli("config", "set", *dd, "publish-new-clients", "false")
    assert res.exit_code == EXIT_OK
    assert DataDir(data_dir).settings().publish_new_clients is False

    for args in (("get", *dd, "no-such-setting"), ("set", *dd, "no-such-setting", "1"),
                 ("set", *dd, "paginate-export", "lots")):
        res = cli("config", *args)
        assert res.exit_code == EXIT_USAGE, (args, res.stdout, res.stderr)
        assert "Traceback" not in res.stderr
    assert DataDir(data_dir).settings().paginate_export == 5  # unchanged by the failures


def test_usage_errors_are_one_error_line(tmp_path: Path) -> None:
    data_dir = tmp_path / "ledger"
    init_dir(data_dir)
    res = cli("config", "get", "--data-dir", str(data_dir), "no-such-setting")
    assert res.exit_code == EXIT_USAGE
    assert_error_line(res.stderr)
    res = cli("client", "add", "--data-dir", str(data_dir), "--public-key", "garbage")
    assert res.exit_code == EXIT_USAGE
    assert_error_line(res.stderr)


def _commands(cmd: click.Command | None, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    if isinstance(cmd, click.Group):
        ctx = click.Context(cmd)
        return [p for name in cmd.list_commands(ctx)
                for p in _commands(cmd.get_command(ctx, name), (*path, name))]
    return [path]


def test_a_command_loads_only_its_own_module() -> None:
    """The CLI imports a command's module when that command runs: `chronicle verify` does
    not start by loading the server (a package user's verifier starts ~0.3 s sooner)."""
    probe = ("import sys\n"
             "from click.testing import CliRunner\n"
             "from chronicle.cli import main\n"
             "assert 'chronicle.server.app' not in sys.modules\n"
             "result = CliRunner().invoke(main, ['verify', '--help'])\n"
             "assert result.exit_code == 0, result.output\n"
             "assert 'chronicle.cli.verify' in sys.modules\n"
             "assert 'chronicle.server.app' not in sys.modules\n"
             "assert 'chronicle.cli.lifecycle' not in sys.modules\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr


def test_every_command_and_option_says_what_it_does() -> None:
    for path in _commands(main):
        res = cli(*path, "--help")
        assert res.exit_code == EXIT_OK, path
        cmd: click.Command | None = main
        for name in path:
            assert isinstance(cmd, click.Group)
            cmd = cmd.get_command(click.Context(cmd), name)
        assert cmd is not None
        assert (cmd.help or "").strip(), f"chronicle {' '.join(path)} has no help text"
        for param in cmd.params:
            if isinstance(param, click.Option) and param.name != "help":
                assert param.help, f"chronicle {' '.join(path)} {param.opts[0]} has no help"
        # Every command can answer for a script: one JSON object on stdout.
        assert "--json" in res.stdout, f"chronicle {' '.join(path)} has no --json"


def test_json_output_of_the_configuration_commands(tmp_path: Path) -> None:
    data_dir = tmp_path / "ledger"
    init_dir(data_dir)
    dd = ("--data-dir", str(data_dir))

    def as_json(*args: str) -> Any:
        res = cli(*args, *dd, "--json")
        assert res.exit_code == EXIT_OK, (args, res.stdout, res.stderr)
        return json.loads(res.stdout)

    assert as_json("config", "set", "max-batch", "64") == {"max-batch": 64}
    assert cli("config", "set", *dd, "max-batch", "32").stdout == "max-batch = 32\n"
    assert as_json("migrate") == {"schema-version": SCHEMA_VERSION, "was": SCHEMA_VERSION,
                                  "upgraded": False}
    peer = SigningKey.generate().public_b64
    assert as_json("mirror", "add", "--url", "https://m.example", "--public-key", peer) == \
        {"url": "https://m.example", "added": True}
    assert as_json("mirror", "remove", "--url", "https://m.example") == \
        {"url": "https://m.example", "removed": True}
    assert cli("mirror", "remove", *dd, "--url", "https://m.example").exit_code == \
        EXIT_REFUSED

    assert cli("config", "set", *dd, "instances", "b").exit_code == EXIT_OK
    for instance in ("", "b"):
        as_json("cross-sign", "add", "--url", "https://peer.example", "--server-key", peer,
                "--client-id", "us", "--push-after", "5", "--name", f"peer-{instance}",
                "--instance", instance)
    listed = as_json("cross-sign", "list", "--instance", "b")["targets"]
    assert [(t["name"], t["instance"]) for t in listed] == [("peer-b", "b")]
    assert len(as_json("cross-sign", "list")["targets"]) == 2
    assert as_json("cross-sign", "remove", "peer-b", "--instance", "b") == \
        {"name": "peer-b", "removed": True}

    as_json("replica", "add", "--url", "https://up.example", "--server-key", peer,
            "--name", "up")
    assert as_json("replica", "set-url", "up", "--url", "https://moved.example/chronicle") \
        == {"name": "up", "url": "https://moved.example/chronicle"}
    assert as_json("replica", "set-peers", "up", "--peer", f"https://r2.example#{peer}") == {
        "name": "up", "peers": [{"url": "https://r2.example/chronicle", "kind": "replica",
                                 "public-key": peer}]}


async def test_serve_json_says_where_it_listens(tmp_path: Path) -> None:
    data_dir = tmp_path / "ledger"
    public = await asyncio.to_thread(init_dir, data_dir)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "chronicle.cli", "serve", "--data-dir", str(data_dir),
        "--port", "0", "--json", stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        said = json.loads(await asyncio.wait_for(proc.stdout.readline(), timeout=30))
        assert said["workers"] == 1 and said["public-key"] == public
        async with aiohttp.ClientSession() as session:
            answer = await http_request(session, said["url"], b64u_decode(public, 32), "GET",
                                        "/chronicle/lasthash")
            assert answer.status == 200
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), timeout=30) == 0


def test_client_add_list_revoke(tmp_path: Path) -> None:
    data_dir = tmp_path / "ledger"
    server_public = init_dir(data_dir)
    dd = ["--data-dir", str(data_dir)]
    key = SigningKey.generate()

    res = cli("client", "add", *dd, "--public-key", key.public_b64, "--comment", "ci", "--json")
    assert res.exit_code == EXIT_OK, res.stderr
    doc = json.loads(res.stdout)
    assert list(doc) == ["client-id"]
    cid = doc["client-id"]
    assert len(b64u_decode(cid, 24)) == 24

    admin_key = SigningKey.generate()
    res = cli("client", "add", *dd, "--public-key", admin_key.public_b64, "--admin",
              "--client-id", "my-admin-id")
    assert res.exit_code == EXIT_OK, res.stderr
    assert res.stdout.strip() == "my-admin-id"

    res = cli("client", "list", *dd, "--json")
    assert res.exit_code == EXIT_OK, res.stderr
    listed = json.loads(res.stdout)
    assert isinstance(listed, dict)
    values = _flatten(listed)
    assert {cid, key.public_b64, "my-admin-id", admin_key.public_b64} <= set(values)
    res = cli("client", "list", *dd)
    assert res.exit_code == EXIT_OK and cid in res.stdout and "my-admin-id" in res.stdout

    # publish-new-clients (default true): the chain records both registrations
    rows = stored_rows(data_dir)
    assert len(rows) == 2
    messages = [json.loads(e.contents) for e in rows]
    assert [m["server-action"] for m in messages] == ["New Client Registration"] * 2
    assert [m["clientid"] for m in messages] == [cid, "my-admin-id"]
    assert all(e.publickey == b64u_decode(server_public, 32) for e in rows)

    # the same id twice, a bad key, the server's own key
    res = cli("client", "add", *dd, "--public-key", key.public_b64, "--client-id", cid)
    assert res.exit_code == EXIT_REFUSED
    assert_error_line(res.stderr)
    for bad in ("not-a-key", key.to_text(), ""):
        res = cli("client", "add", *dd, "--public-key", bad)
        assert res.exit_code == EXIT_USAGE, (bad, res.stderr)
    res = cli("client", "add", *dd, "--public-key", server_public)
    assert res.exit_code == EXIT_REFUSED
    assert_error_line(res.stderr)

    res = cli("client", "revoke", *dd, "--client-id", cid, "--json")
    assert res.exit_code == EXIT_OK, res.stderr
    assert isinstance(json.loads(res.stdout), dict)
    res = cli("client", "list", *dd, "--json")
    assert cid not in _flatten(json.loads(res.stdout))
    rows = stored_rows(data_dir)
    assert json.loads(rows[-1].contents)["server-action"] == "Client Access Revocation"
    assert json.loads(rows[-1].contents)["clientid"] == cid

    res = cli("client", "revoke", *dd, "--client-id", cid)
    assert res.exit_code == EXIT_REFUSED
    assert_error_line(res.stderr)
    assert len(stored_rows(data_dir)) == 3


def test_a_frozen_ledger_takes_no_write_from_the_cli_either(tmp_path: Path) -> None:
    """read-only used to stop only the API: `client add` still appended its entry."""
    data_dir = tmp_path / "ledger"
    init_dir(data_dir)
    dd = ["--data-dir", str(data_dir)]
    assert cli("config", "set", *dd, "read-only", "true").exit_code == EXIT_OK
    key = SigningKey.generate()
    res = cli("client", "add", *dd, "--public-key", key.public_b64)
    assert res.exit_code == EXIT_REFUSED
    assert assert_error_line(res.stderr) == \
        "error: the ledger is read-only (read-only = true): nothing was written"
    assert stored_rows(data_dir) == []
    assert json.loads(cli("client", "list", *dd, "--json").stdout)["clients"] == []


def test_config_get_prints_what_config_set_reads_back(tmp_path: Path) -> None:
    data_dir = tmp_path / "ledger"
    init_dir(data_dir)
    dd = ["--data-dir", str(data_dir)]
    assert cli("config", "set", *dd, "instances", "pkgs, docs").exit_code == EXIT_OK
    printed = cli("config", "get", *dd, "instances").stdout.strip()
    assert printed == '["pkgs", "docs"]'
    assert cli("config", "set", *dd, "instances", printed).exit_code == EXIT_OK
    assert cli("config", "get", *dd, "instances").stdout.strip() == printed
    res = cli("config", "set", *dd, "instances", "[1, 2]")
    assert res.exit_code == EXIT_USAGE


def test_a_database_setting_must_name_a_backend_and_an_existing_file(tmp_path: Path) -> None:
    data_dir = tmp_path / "ledger"
    init_dir(data_dir)
    dd = ["--data-dir", str(data_dir)]
    res = cli("config", "set", *dd, "database", "mysql://root@db/chronicle")
    assert res.exit_code == EXIT_USAGE
    assert "database must be sqlite:PATH or postgresql://…, not 'mysql://root@db/chronicle'" \
        in assert_error_line(res.stderr)
    assert cli("config", "set", *dd, "database", "sqlite:elsewhere.db").exit_code == EXIT_OK
    res = cli("client", "list", *dd)
    assert res.exit_code == EXIT_IO
    assert "elsewhere.db does not exist (run `chronicle init`" in assert_error_line(res.stderr)
    assert not (data_dir / "elsewhere.db").exists()  # opening never makes an empty one


def test_missing_data_dir_is_io_error(tmp_path: Path) -> None:
    res = cli("client", "list", "--data-dir", str(tmp_path / "nothing-here"))
    assert res.exit_code == EXIT_IO
    assert_error_line(res.stderr)


# --- against a live `chronicle serve` -----------------------------------------------------------

async def _live(tmp_path: Path) -> tuple[Path, SigningKey, ServerProcess]:
    data_dir = tmp_path / "ledger"
    server_key = SigningKey.generate()
    await init_data_dir(data_dir, server_key)
    sp = ServerProcess(data_dir)
    await sp.start()
    return data_dir, server_key, sp


async def test_client_add_and_revoke_while_serving(tmp_path: Path) -> None:
    data_dir, server_key, sp = await _live(tmp_path)
    try:
        async with aiohttp.ClientSession() as session:
            key = SigningKey.generate()
            ident = Identity("new", key, "cli-added-client")
            res = await http_publish(session, sp.url, server_key.public, ident, "too early")
            assert res.status == 403
            assert res.json["message"] == "Client not found"

            code, out, err = await run_cli("client", "add", "--data-dir", str(data_dir),
                                           "--public-key", key.public_b64, "--json",
                                           "--client-id", ident.client_id)
            assert code == EXIT_OK, err
            assert json.loads(out) == {"client-id": ident.client_id}

            res = await http_publish(session, sp.url, server_key.public, ident, "hi, I am new")
            assert res.status == 200, res.body
            receipt = res.json["results"]

            code, out, err = await run_cli("client", "revoke", "--data-dir", str(data_dir),
                                           "--client-id", ident.client_id)
            assert code == EXIT_OK, err
            res = await http_publish(session, sp.url, server_key.public, ident, "refused now")
            assert res.status == 403
            assert res.json["message"] == "Client not found"

            doc = (await http_request(session, sp.url, server_key.public, "GET",
                                      "/chronicle/export")).json
            rows = doc["results"]
            verify_chain(rows)
            actions = [json.loads(r["contents"]).get("server-action")
                       if r["publickey"] == server_key.public_b64 else r["contents"]
                       for r in rows]
            assert actions == ["New Client Registration", "hi, I am new",
                               "Client Access Revocation"]
            assert rows[1]["hash"] == receipt["currhash"]
        assert await stop_process(sp, graceful=True) == 0
    finally:
        await stop_process(sp)


async def test_publish_command(tmp_path: Path) -> None:
    data_dir, server_key, sp = await _live(tmp_path)
    try:
        key = SigningKey.generate()
        key_file = tmp_path / "client.key"
        write_secret_file(key_file, key.to_text())
        code, out, err = await run_cli("client", "add", "--data-dir", str(data_dir),
                                       "--public-key", key.public_b64, "--json")
        assert code == EXIT_OK, err
        cid = json.loads(out)["client-id"]
        common = ["--url", sp.url, "--client-id", cid, "--secret-key-file", str(key_file)]
        pinned = ["--server-key", server_key.public_b64]

        code, out, err = await run_cli("publish", *common, *pinned, "--json", "hello / world")
        assert code == EXIT_OK, err
        receipt = json.loads(out)
        assert list(receipt) == ["currhash", "summaryhash", "created"]

        raw = b"  exact\r\nbytes \xc3\xa9 \xf0\x9f\x9a\x80\n\n"
        code, out, err = await run_cli("publish", *common, *pinned, "-", stdin=raw)
        assert code == EXIT_OK, err
        human = out

        async with aiohttp.ClientSession() as session:
            doc = (await http_request(session, sp.url, server_key.public, "GET",
                                      f"/chronicle/lookup/{receipt['currhash']}")).json
            row = doc["results"][0]
            assert row["contents"] == "hello / world"
            assert (row["summaryhash"], row["created"]) == \
                (receipt["summaryhash"], receipt["created"])
            last = (await http_request(session, sp.url, server_key.public, "GET",
                                       "/chronicle/lasthash")).json["results"][0]
            assert last["contents"].encode("utf-8") == raw
            assert last["prevhash"] == receipt["currhash"]
            assert last["currhash"] in human and last["summaryhash"] in human

        # a wrong pinned key: the receipt cannot be verified, exit 1, nothing on stdout;
        # the error says the entry may well be on the chain (the server stored it)
        other = SigningKey.generate().public_b64
        code, out, err = await run_cli("publish", *common, "--server-key", other, "x")
        assert code == EXIT_REFUSED
        assert out == ""
        assert assert_error_line(err).startswith(
            "error: the receipt could not be verified with the pinned --server-key (the "
            "entry may be on the chain; check the key, then look it up)")

        # unreachable server: transport error, exit 3
        code, out, err = await run_cli("publish", "--url", f"http://127.0.0.1:{free_port()}",
                                       "--client-id", cid, "--secret-key-file", str(key_file),
                                       *pinned, "y")
        assert code == EXIT_IO
        assert_error_line(err)

        # a missing key file: I/O error, exit 3
        code, out, err = await run_cli("publish", "--url", sp.url, "--client-id", cid,
                                       "--secret-key-file", str(tmp_path / "missing.key"),
                                       *pinned, "z")
        assert code == EXIT_IO
        assert_error_line(err)

        # refused by the server (unknown client): exit 1 with the server's message
        code, out, err = await run_cli("publish", "--url", sp.url, "--client-id", "nobody",
                                       "--secret-key-file", str(key_file), *pinned, "w")
        assert code == EXIT_REFUSED
        assert "Client not found" in assert_error_line(err)
        assert await stop_process(sp, graceful=True) == 0
    finally:
        await stop_process(sp)


def test_data_dir_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data_dir = tmp_path / "ledger"
    init_dir(data_dir)
    monkeypatch.setenv("CHRONICLE_DATA_DIR", str(data_dir))
    res = cli("config", "get", "request-timeout")
    assert res.exit_code == EXIT_OK, res.stderr
    assert res.stdout.strip() == "10 minutes"


async def test_config_set_applies_at_next_start(tmp_path: Path) -> None:
    key = SigningKey.generate()
    data_dir = await init_data_dir(tmp_path / "ledger", key)
    code, _, err = await run_cli("config", "set", "--data-dir", str(data_dir.path),
                                   "paginate-export", "2")
    assert code == EXIT_OK, err
    srv = await start_server(data_dir)
    try:
        alice = await srv.add_client("alice")
        for i in range(3):
            assert (await srv.publish(alice, f"entry {i}")).status == 200
        doc = (await srv.request("GET", "/chronicle/export")).json
        assert doc["paginated"] is True and doc["next"] == "/export/2"
        assert [r["contents"] for r in doc["results"]] == ["entry 0", "entry 1"]
    finally:
        await srv.close()


def test_init_refuses_a_leftover_database_and_config_flags_are_typed(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from chronicle.cli import main

    runner = CliRunner()
    data = tmp_path / "half"
    data.mkdir()
    (data / "chronicle.db").write_bytes(b"")
    result = runner.invoke(main, ["init", "--data-dir", str(data)])
    assert result.exit_code == 1 and "already exists" in result.stderr
    good = tmp_path / "good"
    assert runner.invoke(main, ["init", "--data-dir", str(good)]).exit_code == 0
    assert (good / "chronicle.toml").stat().st_mode & 0o077 == 0
    assert runner.invoke(main, ["config", "set", "--data-dir", str(good), "rate-limit",
                                "0.5"]).exit_code == 0
    text = (good / "chronicle.toml").read_text()
    (good / "chronicle.toml").write_text(text.replace("read-only = false",
                                                      'read-only = "false"'))
    result = runner.invoke(main, ["client", "list", "--data-dir", str(good)])
    assert result.exit_code == 3
    assert "read-only must be true or false" in result.stderr


# --- the command's plumbing ------------------------------------------------------------------

def test_python_m_chronicle() -> None:
    for module in ("chronicle", "chronicle.cli"):
        proc = subprocess.run([sys.executable, "-m", module, "--version"],
                              capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == EXIT_OK, proc.stderr
        assert proc.stdout.strip() == f"chronicle, version {__version__}"


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    args = ["client", "list", "--data-dir", str(tmp_path / "nothing-here")]
    plain = subprocess.run([sys.executable, "-m", "chronicle", *args],
                           capture_output=True, text=True, timeout=60, check=False)
    assert plain.returncode == EXIT_IO
    assert "not a chronicle data directory" in assert_error_line(plain.stderr)
    debug = subprocess.run([sys.executable, "-m", "chronicle", "--debug", *args],
                           capture_output=True, text=True, timeout=60, check=False)
    assert debug.returncode != EXIT_OK
    assert "Traceback (most recent call last)" in debug.stderr
    assert debug.stderr.rstrip().splitlines()[-1].startswith("chronicle.config.ConfigError: ")


async def test_open_store_always_closes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                        ) -> None:
    data_dir = await init_data_dir(tmp_path / "ledger")
    closed: list[Store] = []
    close = Store.close

    async def spy(self: Store) -> None:
        closed.append(self)
        await close(self)

    monkeypatch.setattr(Store, "close", spy)
    async with open_data_dir(data_dir) as opened:
        assert opened.settings == data_dir.settings()
        assert await opened.store.chain("").head() is None
    assert closed == [opened.store]
    with pytest.raises(RuntimeError):
        async with open_data_dir(data_dir) as again:
            raise RuntimeError("the command failed")
    assert closed == [opened.store, again.store]


async def test_cli_ledgers_use_the_data_directory_settings(tmp_path: Path) -> None:
    data_dir = await init_data_dir(tmp_path / "ledger", max_batch=7, max_queue=9)
    async with open_data_dir(data_dir) as opened, opened.ledger("") as ledger:
        assert (ledger.max_batch, ledger.max_queue) == (7, 9)
