"""Settings defaults come from one table; the data directory names every path in it."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from chronicle.config import (
    DEFAULTS,
    KEY_FILE,
    SETTINGS,
    ConfigError,
    DataDir,
    Settings,
    with_defaults,
)
from chronicle.ledger import Ledger
from chronicle.store import Store


def test_defaults_are_the_settings_table() -> None:
    assert Settings.from_mapping({}) == DEFAULTS
    assert (DEFAULTS.max_batch, DEFAULTS.max_queue) == \
        (SETTINGS["max-batch"][0], SETTINGS["max-queue"][0])
    assert DEFAULTS.request_timeout == timedelta(minutes=10)
    assert DEFAULTS.instances == ("",)
    assert list(with_defaults({"database": "x"})) == list(SETTINGS)
    assert with_defaults({"database": "x"})["database"] == "x"


def test_a_ledger_without_settings_gets_the_defaults() -> None:
    ledger = Ledger(Store.__new__(Store))
    assert (ledger.max_batch, ledger.max_queue) == (DEFAULTS.max_batch, DEFAULTS.max_queue)


@pytest.mark.parametrize(("database", "expected"), [
    ("sqlite:chronicle.db", "DIR/chronicle.db"),
    ("sqlite:sub/ledger.db", "DIR/sub/ledger.db"),
    ("sqlite:/abs/ledger.db", "/abs/ledger.db"),
    ("postgresql://u@h/db", None),
])
def test_sqlite_file(tmp_path: Path, database: str, expected: str | None) -> None:
    found = DataDir(tmp_path).sqlite_file(database)
    assert found == (None if expected is None else Path(expected.replace("DIR", str(tmp_path))))


def test_data_dir_paths(tmp_path: Path) -> None:
    dd = DataDir(tmp_path)
    assert dd.config_path == tmp_path / "chronicle.toml"
    assert dd.default_key_path == tmp_path / KEY_FILE
    assert dd.key_path(DEFAULTS) == dd.default_key_path
    assert dd.cache_dir == tmp_path / "cache"
    assert dd.replication_spool_dir == tmp_path / "cache" / "replication"
    assert dd.evidence_dir == tmp_path / "evidence"


def test_client_address_behind_trusted_proxies() -> None:
    from chronicle.server.admission import client_address

    proxies = Settings.from_mapping({"trusted-proxies": ["10.0.0.0/8", "::1"]}).trusted_proxies
    # Not from a proxy: the header is the caller's claim.
    assert client_address("203.0.113.1", "198.51.100.7", proxies) == "203.0.113.1"
    # From a proxy: the right-most address that is not a proxy.
    assert client_address("10.0.0.2", "198.51.100.7", proxies) == "198.51.100.7"
    assert client_address("10.0.0.2", "1.2.3.4, 198.51.100.7, 10.0.0.9", proxies) == \
        "198.51.100.7"
    assert client_address("::1", "2001:db8::5", proxies) == "2001:db8::5"
    # Only proxies named: the left-most of them; garbage where the client should be:
    # the nearest proxy.
    assert client_address("10.0.0.2", "10.1.1.1, 10.2.2.2", proxies) == "10.1.1.1"
    assert client_address("10.0.0.2", "not-an-ip", proxies) == "10.0.0.2"
    assert client_address("10.0.0.2", None, proxies) == "10.0.0.2"
    with pytest.raises(ConfigError, match="trusted-proxies"):
        Settings.from_mapping({"trusted-proxies": ["10.0.0.0/33"]})
