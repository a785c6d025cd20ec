"""Data directory layout and settings (``chronicle.toml``, Chronicle's key names).

A data directory holds ``chronicle.toml``, the server's signing key
(``signing-secret.key``, base64url of libsodium's 64-byte secret key, mode 0600, the same
format as PHP Chronicle's ``local/signing-secret.key``), once the Merkle tree is enabled
its checkpoint key (``tlog-secret.key``), by default ``chronicle.db``, and
``cache/`` (rebuildable) and ``evidence/`` (replication faults); :class:`DataDir` names
them all. Every setting's default is written once, in :data:`SETTINGS`.

A witness directory (``chronicle witness``, :class:`WitnessDir`) is laid out the same
way with its own names: ``witness.toml`` (:data:`WITNESS_TABLE`), ``witness-secret.key``
(its cosigning key, same file format) and ``witness.db``; both kinds may share a directory.
"""

from __future__ import annotations

import ipaddress
import json
import os
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import tomli_w

from chronicle.core.checkpoint import WitnessEndpoint, WitnessPolicy
from chronicle.core.encoding import parse_interval
from chronicle.core.errors import ChronicleError
from chronicle.core.note import is_valid_key_name
from chronicle.core.sapient import SigningKey

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

CONFIG_FILE = "chronicle.toml"
KEY_FILE = "signing-secret.key"
TLOG_KEY_FILE = "tlog-secret.key"
#: Names the signing key file instead of ``signing-key-file`` (systemd's LoadCredential,
#: container secrets): the key never has to sit in the data directory.
KEY_FILE_ENV = "CHRONICLE_SIGNING_KEY_FILE"
DEFAULT_DB = "sqlite:chronicle.db"
MIN_BODY = 1 << 20
DEFAULT_BODY = 8 << 20
WITNESS_CONFIG_FILE = "witness.toml"
WITNESS_KEY_FILE = "witness-secret.key"
#: The witness's own: never the ledger's variable (one environment may run both).
WITNESS_KEY_FILE_ENV = "CHRONICLE_WITNESS_KEY_FILE"
WITNESS_DEFAULT_DB = "sqlite:witness.db"
#: A checkpoint note may be 1 MiB (core/note.py); add-checkpoint adds a few proof lines.
MAX_WITNESS_BODY = (1 << 20) + (4 << 10)


class ConfigError(ChronicleError):
    """A setting is missing or malformed, or the data directory is not usable."""

    status = 500


# --- how a value in chronicle.toml becomes a typed setting ----------------------------------

def _text(key: str, value: Any) -> str:
    return str(value)


DATABASE_HELP = "sqlite:PATH (relative to the data dir) or postgresql://…"


def _database(key: str, value: Any) -> str:
    """``sqlite:PATH`` or ``postgresql://…``: the two backends there are."""
    url = str(value)
    if not url.startswith(("sqlite:", "postgresql://", "postgres://")) or url == "sqlite:":
        raise ConfigError(f"{key} must be sqlite:PATH or postgresql://…, not {url!r}")
    return url


def _flag(key: str, value: Any) -> bool:
    """A TOML boolean; a string such as "false" is an error, not a truthy value."""
    if not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false, not {value!r}")
    return value


def _count(minimum: int) -> Callable[[str, Any], int]:
    def parse(key: str, value: Any) -> int:
        number = int(value or 0)
        if number < minimum:
            raise ConfigError(f"{key} must be at least {minimum}")
        return number

    return parse


def _rate(key: str, value: Any) -> float:
    number = float(value or 0)
    if number < 0:
        raise ConfigError(f"{key} must be >= 0")
    return number


def _interval(key: str, value: Any) -> timedelta | None:
    """An interval (``"10 minutes"``); ``""`` (or 0) turns off what it governs."""
    text = str(value or "").strip()
    if not text or text == "0":
        return None
    interval = parse_interval(text)
    return interval if interval.total_seconds() > 0 else None


def _instances(key: str, value: Any) -> tuple[str, ...]:
    """The default chain ``""`` and the extra ones (Chronicle's ``{"name": "prefix"}`` form
    too), each a name ``[A-Za-z0-9_-]+``."""
    extra = list(value) if isinstance(value, dict | list | tuple) else []
    names = ("", *sorted({str(n) for n in extra if str(n)}))
    for name in names[1:]:
        if not name.replace("-", "").replace("_", "").isalnum() or name == "replication":
            raise ConfigError(f"invalid instance name {name!r} ([A-Za-z0-9_-]+)")
    return names


def _networks(key: str, value: Any) -> tuple[IPNetwork, ...]:
    """Addresses or CIDR ranges (``10.0.0.0/8``, ``::1``)."""
    if not isinstance(value, list | tuple):
        raise ConfigError(f"{key} must be a list of addresses or CIDR ranges")
    try:
        return tuple(ipaddress.ip_network(str(item).strip(), strict=False) for item in value)
    except ValueError as exc:
        raise ConfigError(f"{key}: {exc}") from None


def _witnesses(key: str, value: Any) -> tuple[WitnessEndpoint, ...]:
    """The witnesses a log submits its checkpoints to: ``"URL VKEY"`` strings."""
    if not isinstance(value, list | tuple):
        raise ConfigError(f"{key} must be a list of \"URL VKEY\" strings")
    return tuple(WitnessEndpoint.parse(str(item)) for item in value)


def _key_name(key: str, value: Any) -> str:
    """A signed-note key name: no spaces, no ``+`` (e.g. ``witness.example.org/w1``)."""
    name = str(value)
    if not is_valid_key_name(name):
        raise ConfigError(f"{key} {name[:80]!r} is not a key name (no spaces or '+')")
    return name


@dataclass(frozen=True, slots=True)
class Setting:
    """One ``chronicle.toml`` key: its default (as written in the file), how it is read,
    what it means, and the :class:`Settings` attribute it becomes."""

    key: str
    default: Any
    parse: Callable[[str, Any], Any]
    help: str

    @property
    def attribute(self) -> str:
        return self.key.replace("-", "_")


#: What a stranger can make a server hold (server/admission.py): the same rows for the
#: ledger and the witness.
ADMISSION: tuple[Setting, ...] = (
    Setting("max-connections", 1024, _count(1),
            "open connections per server process; more get a signed 503 and are closed"),
    Setting("max-connections-per-ip", 128, _count(1),
            "open connections from one address per server process"),
    Setting("idle-timeout", "15 seconds", _interval,
            "a connection with no complete request for this long is closed"),
    Setting("body-timeout", "30 seconds", _interval,
            "a request body must arrive within this (else 408)"),
    Setting("body-memory", 64 << 20, _count(MIN_BODY),
            "bytes of request bodies read at once per process (bodies over 64 KiB may use "
            "half); over it: signed 503"),
    Setting("trusted-proxies", [], _networks,
            "addresses (or CIDR ranges) of reverse proxies in front of us: their "
            "X-Forwarded-For names the client for the per-address limits"),
)

#: Every setting, once; the order is the order ``chronicle init`` writes them in.
TABLE: tuple[Setting, ...] = (
    Setting("database", DEFAULT_DB, _database, DATABASE_HELP),
    Setting("signing-key-file", KEY_FILE, _text,
            "server signing key file (relative to the data dir)"),
    Setting("paginate-export", 0, _count(0),
            "page size for export/since; 0 = unpaginated (PHP: null)"),
    Setting("request-timeout", "10 minutes", _interval,
            "window for signed timestamps; \"\" disables"),
    Setting("publish-new-clients", True, _flag,
            "append a server message when a client is registered"),
    Setting("publish-revoked-clients", True, _flag,
            "append a server message when a client is revoked"),
    Setting("instances", [], _instances, "extra chain names selectable with ?instance=NAME"),
    Setting("max-body-size", DEFAULT_BODY, _count(MIN_BODY),
            "largest request body in bytes (at least 1 MiB)"),
    Setting("max-batch", 512, _count(1), "most entries committed in one transaction"),
    Setting("max-queue", 8192, _count(1), "pending publishes before answering 503"),
    Setting("export-cache", True, _flag,
            "keep the signed unpaginated export (1,000 entries or more) until the chain grows"),
    Setting("rate-limit", 0, _rate,
            "publishes per second per client (a burst of one second's worth); 0 = unlimited"),
    Setting("read-only", False, _flag,
            "refuse every write with 503 + Retry-After (maintenance, freeze)"),
    Setting("replicate-interval", "1 minute", _interval,
            "how often `serve` pulls each replication source (backs off on errors); "
            "\"\" disables the follower"),
    Setting("scheduled-attestation", "7 days", _interval,
            "how often replicated heads are attested on our own chain; \"\" disables"),
    Setting("cross-sign-interval", "1 minute", _interval,
            "how often `serve` checks cross-sign policies; \"\" disables cross-signing"),
    *ADMISSION,
    Setting("rate-limit-ip", 0, _rate,
            "writes per second from one address, before any check (0 = unlimited)"),
    Setting("auth-failures-per-ip", 50, _rate,
            "refused writes (unknown client, bad signature) per second from one address "
            "before its writes get 429 unchecked (0 = unlimited)"),
    Setting("document-builds", 2, _count(1),
            "unpaginated export/since documents (and pages) rendered at once, per process"),
    Setting("document-queue", 16, _count(0),
            "requests waiting for a document build before a signed 503 + Retry-After"),
    Setting("document-page-bytes", 48 << 20, _count(1 << 20),
            "most bytes one range read of a document may become once JSON-escaped "
            "(memory per build; at least 1 MiB)"),
    Setting("spool-max-bytes", 4 << 30, _count(1 << 20),
            "disk for spooled documents per process, files still being read included; "
            "a build past it gets a signed 507 (alone) or 503 (space in use)"),
    Setting("document-send-timeout", "1 minute", _interval,
            "a reader that takes no 1 MiB of a document (or of any answer over 1 MiB) in "
            "this time is disconnected; \"\" disables"),
    Setting("tlog-key-file", TLOG_KEY_FILE, _text,
            "checkpoint signing key of the Merkle tree, made by `chronicle tlog enable` "
            "(relative to the data dir)"),
    Setting("witnesses", [], _witnesses,
            "witnesses our checkpoints are submitted to, each \"URL VKEY\" (docs/witness.md)"),
    Setting("witness-quorum", 0, _count(0),
            "cosignatures (K of the N witnesses) a checkpoint needs before it is published; "
            "0 = publish at once"),
    Setting("witness-republish", "5 minutes", _interval,
            "an unchanged checkpoint is submitted again this often (fresh cosignatures); "
            "\"\" never"),
)

#: key -> (default, description), in :data:`TABLE` order.
SETTINGS: dict[str, tuple[Any, str]] = {s.key: (s.default, s.help) for s in TABLE}


def parse_table(table: tuple[Setting, ...], data: dict[str, Any]) -> dict[str, Any]:
    """Each setting of ``table`` parsed and typed, by attribute: the value in ``data``,
    else its default. A key ``table`` does not know is refused."""
    unknown = sorted(set(data) - {s.key for s in table})
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(unknown)}")
    values: dict[str, Any] = {}
    for setting in table:
        try:
            values[setting.attribute] = setting.parse(setting.key,
                                                      data.get(setting.key, setting.default))
        except ConfigError:
            raise
        except (TypeError, ValueError, ChronicleError) as exc:
            raise ConfigError(f"invalid setting {setting.key}: {exc}") from exc
    return values


@dataclass(frozen=True)
class Settings:
    """Settings parsed and typed, one attribute per :data:`TABLE` row (build with
    :meth:`from_mapping`)."""

    database: str
    signing_key_file: str
    paginate_export: int
    request_timeout: timedelta | None
    publish_new_clients: bool
    publish_revoked_clients: bool
    instances: tuple[str, ...]
    max_body_size: int
    max_batch: int
    max_queue: int
    export_cache: bool
    rate_limit: float
    read_only: bool
    replicate_interval: timedelta | None
    scheduled_attestation: timedelta | None
    cross_sign_interval: timedelta | None
    max_connections: int
    max_connections_per_ip: int
    idle_timeout: timedelta | None
    body_timeout: timedelta | None
    body_memory: int
    trusted_proxies: tuple[IPNetwork, ...]
    rate_limit_ip: float
    auth_failures_per_ip: float
    document_builds: int
    document_queue: int
    document_page_bytes: int
    spool_max_bytes: int
    document_send_timeout: timedelta | None
    tlog_key_file: str
    witnesses: tuple[WitnessEndpoint, ...]
    witness_quorum: int
    witness_republish: timedelta | None
    raw: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> Settings:
        settings = cls(**parse_table(TABLE, data), raw=dict(data))
        try:
            settings.witness_policy()
        except ChronicleError as exc:
            raise ConfigError(f"invalid setting witnesses / witness-quorum: {exc.message}") \
                from exc
        return settings

    def witness_policy(self) -> WitnessPolicy:
        """K of N (``witness-quorum`` of ``witnesses``): when a checkpoint is published."""
        return WitnessPolicy(tuple(w.verifier for w in self.witnesses), self.witness_quorum)


def with_defaults(data: dict[str, Any]) -> dict[str, Any]:
    """Every setting, in ``SETTINGS`` order: the value in ``data``, else the default."""
    return {key: data.get(key, default) for key, (default, _) in SETTINGS.items()}


#: The typed defaults (what an empty ``chronicle.toml`` means).
DEFAULTS = Settings.from_mapping({})


#: A witness's settings (``witness.toml``), in the order ``chronicle witness init`` writes.
WITNESS_TABLE: tuple[Setting, ...] = (
    Setting("name", "", _key_name,
            "the witness's key name, on every cosignature (e.g. witness.example.org/w1)"),
    Setting("database", WITNESS_DEFAULT_DB, _database, DATABASE_HELP),
    Setting("signing-key-file", WITNESS_KEY_FILE, _text,
            "the cosigning key file (relative to the data dir); it signs answers too"),
    Setting("max-body-size", MAX_WITNESS_BODY, _count(64 << 10),
            "largest add-checkpoint body in bytes (at least 64 KiB)"),
    *ADMISSION,
)


@dataclass(frozen=True)
class WitnessSettings:
    """A witness's settings, one attribute per :data:`WITNESS_TABLE` row."""

    name: str
    database: str
    signing_key_file: str
    max_body_size: int
    max_connections: int
    max_connections_per_ip: int
    idle_timeout: timedelta | None
    body_timeout: timedelta | None
    body_memory: int
    trusted_proxies: tuple[IPNetwork, ...]
    raw: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> WitnessSettings:
        return cls(**parse_table(WITNESS_TABLE, data), raw=dict(data))

    @staticmethod
    def with_defaults(data: dict[str, Any]) -> dict[str, Any]:
        """Every witness setting, in table order: the value in ``data``, else the default."""
        return {s.key: data.get(s.key, s.default) for s in WITNESS_TABLE}


def parse_value(key: str, text: str) -> Any:
    """Turn a CLI string into the value ``chronicle.toml`` holds (``config set``)."""
    if key not in SETTINGS:
        raise ConfigError(f"unknown setting: {key}")
    default = SETTINGS[key][0]
    if isinstance(default, bool):
        lowered = text.strip().lower()
        if lowered in ("true", "1", "yes", "on"):
            return True
        if lowered in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{key} takes true or false")
    if isinstance(default, int):
        if text.strip().lower() in ("", "null", "none"):
            return 0
        try:
            return int(text)
        except ValueError:
            if key == "rate-limit":
                try:
                    return float(text)
                except ValueError:
                    pass
            raise ConfigError(f"{key} takes a number") from None
    if isinstance(default, list):
        if text.strip().startswith("["):  # what `config get` prints (JSON)
            try:
                parsed = json.loads(text)
            except ValueError:
                raise ConfigError(f"{key}: not a JSON list: {text!r}") from None
            if not isinstance(parsed, list) or not all(isinstance(p, str) for p in parsed):
                raise ConfigError(f"{key} takes names: a JSON list of strings or a,b,c")
            return [p.strip() for p in parsed if p.strip()]
        return [part.strip() for part in text.split(",") if part.strip()]
    return text


class _KeyedSettings(Protocol):
    """What a directory needs of its settings: where its key is."""

    @property
    def signing_key_file(self) -> str: ...


S = TypeVar("S", bound=_KeyedSettings)


class SettingsDir(Generic[S]):
    """A directory with a settings file, a secret key and (by default) a SQLite file: it
    names every path in it, so nothing else joins them. Subclasses say which files."""

    config_file: str
    default_key_file: str
    key_file_env: str
    """The environment variable that may name the key file instead of the settings."""
    kind: str
    """What the directory is called in errors."""
    init_command: str

    _parse: Callable[[dict[str, Any]], S]
    """Settings from the file's mapping (the settings class's ``from_mapping``)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @property
    def config_path(self) -> Path:
        return self.path / self.config_file

    def exists(self) -> bool:
        return self.config_path.exists()

    def read_raw(self) -> dict[str, Any]:
        try:
            with self.config_path.open("rb") as fh:
                return tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"{self.path} is not a {self.kind} (no {self.config_file}; "
                              f"run `{self.init_command}`)") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{self.config_path}: {exc}") from exc

    def write_raw(self, data: dict[str, Any]) -> None:
        self.check(data)  # never write a file we could not read back
        tmp = self.config_path.with_suffix(".toml.tmp")
        # 0600: the database URL may carry a password.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(tomli_w.dumps(data))
        os.replace(tmp, self.config_path)

    def settings(self) -> S:
        return self._parse(self.read_raw())

    def check(self, data: dict[str, Any]) -> None:
        """Refuse settings that do not parse (:class:`ConfigError`), writing nothing."""
        self._parse(data)

    def key_path(self, settings: S) -> Path:
        named = os.environ.get(self.key_file_env)
        path = Path(named) if named else Path(settings.signing_key_file)
        return path if path.is_absolute() else self.path / path

    def signing_key(self, settings: S) -> SigningKey:
        """The key, from the file ``$<key_file_env>`` names when set (systemd credentials,
        container secrets), else ``signing-key-file``. A key file others can read is
        refused: whoever reads it can sign as this server."""
        path = self.key_path(settings)
        try:
            mode = path.stat().st_mode
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read signing key {path}: {exc.strerror}") from exc
        if mode & 0o077:
            raise ConfigError(f"signing key {path} is readable by others (mode "
                              f"{mode & 0o777:04o}); chmod 600 it, or use a copy that is")
        try:
            return SigningKey.from_text(text)
        except ChronicleError as exc:
            raise ConfigError(f"signing key {path}: {exc.message}") from exc

    @property
    def default_key_path(self) -> Path:
        """Where ``init`` (and ``backup``) put the key (``signing-key-file``'s default)."""
        return self.path / self.default_key_file

    def sqlite_file(self, database: str) -> Path | None:
        """The file a ``sqlite:PATH`` database URL names (relative to this directory), or
        None for a database server."""
        if not database.startswith("sqlite:"):
            return None
        path = Path(database[len("sqlite:"):])
        return path if path.is_absolute() else self.path / path


class DataDir(SettingsDir[Settings]):
    """One ledger's data directory."""

    config_file, default_key_file, key_file_env = CONFIG_FILE, KEY_FILE, KEY_FILE_ENV
    kind, init_command = "chronicle data directory", "chronicle init"
    _parse = Settings.from_mapping

    @property
    def cache_dir(self) -> Path:
        """Files that can be rebuilt: spooled documents, replication downloads."""
        return self.path / "cache"

    @property
    def replication_spool_dir(self) -> Path:
        """Where the replica follower spools pages it is still verifying."""
        return self.cache_dir / "replication"

    @property
    def evidence_dir(self) -> Path:
        """Signed answers kept as evidence of a replication source's faults (not a cache)."""
        return self.path / "evidence"

    def tlog_key_path(self, settings: Settings) -> Path:
        """The Merkle tree's checkpoint key (a signed-note signer key, never the server's
        Sapient key)."""
        path = Path(settings.tlog_key_file)
        return path if path.is_absolute() else self.path / path


class WitnessDir(SettingsDir[WitnessSettings]):
    """A witness's directory (``chronicle witness``): ``witness.toml``, its cosigning key,
    by default ``witness.db``."""

    config_file, default_key_file = WITNESS_CONFIG_FILE, WITNESS_KEY_FILE
    key_file_env = WITNESS_KEY_FILE_ENV
    kind, init_command = "chronicle witness directory", "chronicle witness init"
    _parse = WitnessSettings.from_mapping


def write_secret_file(path: Path, text: str) -> None:
    """Create a file readable by its owner only (mode 0600), refusing to overwrite."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text + "\n")
