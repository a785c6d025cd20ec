"""The files a SQLite ledger writes are its owner's alone (issue 10, finding 7): the
database (its WAL and SHM follow its mode), settings, key, backups; and a backup goes only
into a directory of our own."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tests.integration.test_cli import cli, run_cli


@pytest.fixture
def backend() -> str:
    """These are SQLite's files: the suite's both-backends fixture is overridden."""
    return "sqlite"


async def test_files_are_their_owners_alone(tmp_path: Path) -> None:
    data = tmp_path / "ledger"
    code, _, err = await run_cli("init", "--data-dir", str(data))
    assert code == 0, err
    for name in ("chronicle.db", "chronicle.toml", "signing-secret.key"):
        assert stat.S_IMODE((data / name).stat().st_mode) == 0o600, name
    code, _, err = await run_cli("client", "add", "--data-dir", str(data), "--public-key",
                                 "Pl5RqC7kYCGeJ7CHbAhlI-wdyOWxxPqTTrJV_aKCJuE=")
    assert code == 0, err
    for suffix in ("-wal", "-shm"):
        wal = data / f"chronicle.db{suffix}"
        if wal.exists():
            assert stat.S_IMODE(wal.stat().st_mode) == 0o600, suffix
    out = tmp_path / "backup"
    code, _, err = await run_cli("backup", "--data-dir", str(data), str(out))
    assert code == 0, err
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    assert stat.S_IMODE((out / "chronicle.db").stat().st_mode) == 0o600


def test_a_world_readable_database_is_tightened_on_open(tmp_path: Path) -> None:
    data = tmp_path / "ledger"
    assert cli("init", "--data-dir", str(data)).exit_code == 0
    os.chmod(data / "chronicle.db", 0o644)
    assert cli("client", "list", "--data-dir", str(data)).exit_code == 0
    assert stat.S_IMODE((data / "chronicle.db").stat().st_mode) == 0o600


def test_a_backup_goes_only_into_a_directory_of_our_own(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "ledger"
    assert cli("init", "--data-dir", str(data)).exit_code == 0
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    real = os.getuid()
    monkeypatch.setattr(os, "getuid", lambda: real + 4242)  # as if another user owned it
    res = cli("backup", "--data-dir", str(data), str(theirs))
    assert res.exit_code == 1
    assert "belongs to another user" in res.stderr
    assert list(theirs.iterdir()) == []


def test_a_signing_key_others_can_read_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "ledger"
    assert cli("init", "--data-dir", str(data)).exit_code == 0
    os.chmod(data / "signing-secret.key", 0o644)
    res = cli("client", "add", "--data-dir", str(data), "--public-key",
              "Pl5RqC7kYCGeJ7CHbAhlI-wdyOWxxPqTTrJV_aKCJuE=")
    assert res.exit_code == 3
    assert "is readable by others (mode 0644); chmod 600 it" in res.stderr


def test_the_signing_key_may_come_from_a_file_an_environment_variable_names(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """systemd's LoadCredential or a container secret: the key outside the data dir."""
    data = tmp_path / "ledger"
    init = cli("init", "--data-dir", str(data), "--json")
    assert init.exit_code == 0
    secret = tmp_path / "credentials" / "signing-key"
    secret.parent.mkdir()
    (data / "signing-secret.key").rename(secret)
    monkeypatch.setenv("CHRONICLE_SIGNING_KEY_FILE", str(secret))
    res = cli("client", "add", "--data-dir", str(data), "--public-key",
              "Pl5RqC7kYCGeJ7CHbAhlI-wdyOWxxPqTTrJV_aKCJuE=")
    assert res.exit_code == 0, res.stderr
    monkeypatch.delenv("CHRONICLE_SIGNING_KEY_FILE")
    res = cli("client", "add", "--data-dir", str(data), "--public-key",
              "Pl5RqC7kYCGeJ7CHbAhlI-wdyOWxxPqTTrJV_aKCJuE=")
    assert res.exit_code == 3 and "cannot read signing key" in res.stderr
