"""The deployment files in config/ do what they say (config/README.md).

- ``chronicle.toml`` is exactly what ``chronicle init`` writes, every key documented.
- The systemd units pass ``systemd-analyze verify`` (and an offline security review), keep
  their sandboxing, and their command lines run as systemd would run them: ``serve``
  under the seccomp filter systemd installs for ``MemoryDenyWriteExecute=yes``, then the
  audit and the backup units against it, then the unit's stop signal.
- The container recipe installs what CI installs (one script), runs as a non-root user,
  checks /healthz; compose.yaml is valid and refers to what exists.
- Every ``chronicle`` command line in these files parses with the real CLI, and each flag
  appears in ``chronicle COMMAND --help``.

Files, not storage: one backend is enough (and ``chronicle backup`` is SQLite's).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import inspect
import json
import os
import platform
import re
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import parse_qs, urlsplit

import aiohttp
import click
import pytest
import yaml

from chronicle.cli import main as cli
from chronicle.config import KEY_FILE, KEY_FILE_ENV, TABLE, DataDir, Settings, with_defaults
from chronicle.core.sapient import SigningKey
from chronicle.server import runner
from tests.helpers import add_client_offline, free_port, http_publish, init_data_dir

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "config"
UNITS = CONFIG / "systemd"
# Where config/README.md installs chronicle, and the entry point of the venv under test.
INSTALLED = "/opt/chronicle/bin/chronicle"
CHRONICLE = str(Path(sys.executable).parent / "chronicle")
PORT = "8080"  # the port every file here uses
# How long `serve` may take to drain after SIGTERM: stop timeouts must allow it.
DRAIN_SECONDS = inspect.signature(runner.serve).parameters["shutdown_timeout"].default


@pytest.fixture
def backend() -> str:
    """Overrides the two-backend fixture: these tests check files, not storage."""
    return "sqlite"


# --- reading the files ---------------------------------------------------------------------

Unit = dict[str, list[tuple[str, str]]]


def read_unit(path: Path) -> Unit:
    """A unit file's sections, each a list of (key, value) in order (keys may repeat)."""
    unit: Unit = {}
    section: list[tuple[str, str]] | None = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], [])
            continue
        assert section is not None and "=" in line, f"{path.name}: not key=value: {raw!r}"
        assert not line.endswith("\\"), f"{path.name}: keep each setting on one line"
        key, _, value = line.partition("=")
        section.append((key.strip(), value.strip()))
    return unit


def values(unit: Unit, key: str, section: str = "Service") -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


def one(unit: Unit, key: str, section: str = "Service") -> str:
    found = values(unit, key, section)
    assert len(found) == 1, f"[{section}] {key}: expected one value, found {found}"
    return found[0]


def units() -> dict[str, Unit]:
    return {p.name: read_unit(p) for p in sorted(UNITS.iterdir())}


_EXPANDED = re.compile(r"%(.)|\$\$|\$\{(\w+)\}")


def expand(word: str, specifiers: Mapping[str, str], env: Mapping[str, str]) -> str:
    """systemd's expansion of one word of an Exec*= or Environment= line: ``%x``
    specifiers, ``${VAR}``, and ``$$`` for a literal ``$`` (only what these units use)."""
    def one_match(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        if m.group(2):
            return env[m.group(2)]
        return "%" if m.group(1) == "%" else specifiers[m.group(1)]

    return _EXPANDED.sub(one_match, word)


def dockerfile() -> list[tuple[str, str]]:
    """config/Dockerfile as (INSTRUCTION, arguments), continuation lines joined."""
    text = re.sub(r"\\\n", " ", (CONFIG / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def docker_args(text: str) -> list[str]:
    """An exec-form (JSON array) instruction argument; the shell form is not used here."""
    assert text.startswith("["), f"use the exec form (a JSON array): {text}"
    parsed = json.loads(text)
    assert isinstance(parsed, list)
    return [str(p) for p in parsed]


def docker_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in dockerfile():
        if word == "ENV":
            for setting in shlex.split(rest):
                key, _, value = setting.partition("=")
                env[key] = value
    return env


def compose() -> dict[str, Any]:
    data = yaml.safe_load((CONFIG / "compose.yaml").read_text())
    assert isinstance(data, dict)
    return data


def install_line(text: str, where: str) -> list[str]:
    """The one call of scripts/install.sh in a script; nothing else may run pip install."""
    calls = [line for line in text.splitlines()
             if "scripts/install.sh" in line and not line.lstrip().startswith("#")]
    assert len(calls) == 1, f"{where}: expected one scripts/install.sh call, found {calls}"
    assert "pip install" not in text, f"{where}: installs outside scripts/install.sh"
    words = shlex.split(calls[0])
    return words[next(i for i, w in enumerate(words) if w.endswith("scripts/install.sh")):]


# --- chronicle command lines -----------------------------------------------------------------

def chronicle_calls(argv: list[str]) -> list[list[str]]:
    """The chronicle invocations in an argv: itself, or each line of a ``sh -c`` script."""
    if Path(argv[0]).name == "chronicle":
        return [argv[1:]]
    assert Path(argv[0]).name == "sh" and argv[1].startswith("-") and "c" in argv[1], argv
    script = argv[2]
    check = subprocess.run(["sh", "-n", "-c", script], capture_output=True, text=True)
    assert check.returncode == 0, f"shell syntax: {check.stderr}\n{script}"
    calls = []
    for line in script.splitlines():
        words = shlex.split(line, comments=True)
        words = words[1:] if words[:1] == ["exec"] else words
        if words and Path(words[0]).name == "chronicle":
            calls.append(words[1:])
    assert calls, f"no chronicle command in {script!r}"
    return calls


def parse_command_line(args: list[str], env: Mapping[str, str]) -> list[tuple[tuple[str, ...],
                                                                               list[str]]]:
    """Parse ``chronicle ARGS`` with the real CLI (options, arguments, types, required
    ones, the environment it reads) without running it; a bad line raises UsageError.
    Returns each command level's path with the words given to it."""
    levels: list[tuple[tuple[str, ...], list[str]]] = []
    command: click.Command = cli
    ctx: click.Context | None = None
    path: tuple[str, ...] = ()
    ours = {k: v for k, v in os.environ.items() if not k.startswith("CHRONICLE_")}
    with mock.patch.dict(os.environ, {**ours, **env}, clear=True):
        while isinstance(command, click.Group):
            names = command.list_commands(click.Context(command))
            at = next((i for i, word in enumerate(args) if word in names), None)
            if at is None:
                raise click.UsageError(f"no command in {args}")
            # Given its subcommand's name too, a group parses only its own options.
            ctx = command.make_context(path[-1] if path else "chronicle", args[:at + 1],
                                       parent=ctx)
            levels.append((path, args[:at]))
            sub = command.get_command(ctx, args[at])
            assert sub is not None
            command, path, args = sub, (*path, args[at]), args[at + 1:]
        command.make_context(path[-1], list(args), parent=ctx)
    levels.append((path, args))
    return levels


def command_lines() -> list[tuple[str, list[str], dict[str, str]]]:
    """Every chronicle command line in config/: (where, args, environment it runs with)."""
    found: list[tuple[str, list[str], dict[str, str]]] = []
    creds = {"d": "/run/credentials/unit"}
    for name, unit in units().items():
        env = {"AUDIT_URL": "http://127.0.0.1:8080", "AUDIT_SERVER_KEY": "PK"}
        for setting in values(unit, "Environment"):
            key, _, value = expand(setting, creds, env).partition("=")
            env[key] = value
        for key in ("ExecStart", "ExecStartPost"):
            for line in values(unit, key):
                argv = [expand(w, creds, env) for w in shlex.split(line)]
                if Path(argv[0]).name in ("chronicle", "sh"):
                    found += [(f"{name} {key}", call, env) for call in chronicle_calls(argv)]
    image_env = docker_env()
    entry = cmd = []
    for word, rest in dockerfile():
        entry = docker_args(rest) if word == "ENTRYPOINT" else entry
        cmd = docker_args(rest) if word == "CMD" else cmd
    found += [("Dockerfile", call, image_env) for call in chronicle_calls(entry + cmd)]
    for name, service in compose()["services"].items():
        if service.get("image") != "chronicle:local":
            continue
        argv = [*service.get("entrypoint", entry), *service.get("command", cmd)]
        env = {**image_env, **service.get("environment", {})}
        found += [(f"compose {name}", call, env) for call in chronicle_calls(argv)]
    return found


def test_every_command_line_parses_and_its_flags_exist(tmp_path: Path) -> None:
    used: dict[tuple[str, ...], set[str]] = {}
    services = compose()["services"]
    for n, (where, args, env) in enumerate(command_lines()):
        # A file an option requires must exist where the line runs: in a compose
        # container, its secrets (under a temporary root here).
        root = tmp_path / str(n)
        if where.startswith("compose "):
            for secret in services[where.split()[1]].get("secrets", []):
                (root / "run" / "secrets").mkdir(parents=True, exist_ok=True)
                (root / "run" / "secrets" / secret).write_text("")
        here = [f"{root}{w}" if w.startswith("/run/secrets/") else w for w in args]
        try:
            levels = parse_command_line(here, env)
        except click.UsageError as exc:
            pytest.fail(f"{where}: chronicle {shlex.join(args)}: {exc.format_message()}")
        for path, words in levels:
            used.setdefault(path, set()).update(
                w.split("=")[0] for w in words if w.startswith("--"))
    assert {p for p in used if p} >= {("serve",), ("audit",), ("backup",), ("init",),
                                      ("migrate",)}
    # The installed entry point knows each command and flag (its --help lists them).
    helps = {path: subprocess.Popen([CHRONICLE, *path, "--help"], stdout=subprocess.PIPE,
                                    text=True) for path in used}
    for path, proc in helps.items():
        text, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, f"chronicle {' '.join(path)} --help failed"
        missing = sorted(f for f in used[path] if not re.search(rf"{f}\b", text))
        assert not missing, f"chronicle {' '.join(path)}: no such flag(s) {missing}"


def test_a_wrong_flag_is_caught() -> None:
    """The check above can fail: an unknown option or a missing required one is refused."""
    with pytest.raises(click.UsageError):
        parse_command_line(["serve", "--data-dir", "/d", "--listen", "x"], {})
    with pytest.raises(click.UsageError):
        parse_command_line(["serve", "--host", "0.0.0.0"], {})
    parse_command_line(["serve", "--host", "0.0.0.0"], {"CHRONICLE_DATA_DIR": "/d"})


# --- the example settings ------------------------------------------------------------------

def test_example_settings_are_what_init_writes(tmp_path: Path) -> None:
    example = CONFIG / "chronicle.toml"
    data = tmp_path / "ledger"
    made = subprocess.run([CHRONICLE, "init", "--data-dir", str(data)], capture_output=True,
                          text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    written = tomllib.loads((data / "chronicle.toml").read_text())
    documented = tomllib.loads(example.read_text())
    assert list(documented) == [s.key for s in TABLE] == list(written)
    assert documented == written == with_defaults({})
    # Every key has its own comment right above it.
    lines = example.read_text().splitlines()
    for key in documented:
        at = next(i for i, line in enumerate(lines) if line.startswith(f"{key} = "))
        assert lines[at - 1].startswith("# ") and len(lines[at - 1]) > 10, \
            f"{key}: no comment above it"
    # Our loader reads it, and so does `chronicle config get` in a data directory.
    shutil.copy(example, data / "chronicle.toml")
    assert DataDir(data).settings() == Settings.from_mapping({})
    got = subprocess.run([CHRONICLE, "config", "get", "--data-dir", str(data), "--json"],
                         capture_output=True, text=True, timeout=60)
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout) == with_defaults({})


# --- systemd -------------------------------------------------------------------------------

HARDENING = {
    "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
    "PrivateTmp": "yes", "PrivateDevices": "yes", "CapabilityBoundingSet": "",
    "MemoryDenyWriteExecute": "yes", "UMask": "0077", "RestrictNamespaces": "yes",
    "LockPersonality": "yes", "SystemCallArchitectures": "native",
}


def test_units_keep_their_sandbox_and_their_contract() -> None:
    found = units()
    services = {n.removesuffix(".service") for n in found if n.endswith(".service")}
    timers = {n.removesuffix(".timer") for n in found if n.endswith(".timer")}
    assert services == {"chronicle", "chronicle-backup", "chronicle-audit"}
    assert timers == services - {"chronicle"}
    for name in services:
        unit = found[f"{name}.service"]
        for key, want in HARDENING.items():
            assert one(unit, key) == want, f"{name}.service: {key}"
        assert "@system-service" in values(unit, "SystemCallFilter"), name
        assert values(unit, "RestrictAddressFamilies"), name
        assert values(unit, "User") == ["chronicle"] or one(unit, "DynamicUser") == "yes"
    for name in timers:
        timer = found[f"{name}.timer"]
        assert one(timer, "OnCalendar", "Timer") and one(timer, "Persistent", "Timer") == "yes"
        assert one(timer, "WantedBy", "Install") == "timers.target"

    serve = found["chronicle.service"]
    args = shlex.split(one(serve, "ExecStart"))
    assert args[0] == INSTALLED and "serve" in args
    assert args[1:3] == ["--log-format", "json"]
    assert one(serve, "ReadWritePaths") == args[args.index("--data-dir") + 1] \
        == "/var/lib/" + one(serve, "StateDirectory")
    assert (one(serve, "Restart"), one(serve, "KillSignal")) == ("on-failure", "SIGTERM")
    assert int(one(serve, "TimeoutStopSec")) > DRAIN_SECONDS
    # The key arrives as a credential, named in the variable the server reads.
    for name in ("chronicle.service", "chronicle-backup.service"):
        credential, _, source = one(found[name], "LoadCredential").partition(":")
        assert source.startswith("/etc/credstore/")
        assert one(found[name], "Environment") == f"{KEY_FILE_ENV}=%d/{credential}"


def installed_here(tmp_path: Path) -> list[Path]:
    """The unit files with the chronicle of this test run in place of the installed one."""
    out = tmp_path / "units"
    out.mkdir()
    for path in sorted(UNITS.iterdir()):
        (out / path.name).write_text(path.read_text().replace(INSTALLED, CHRONICLE))
    return sorted(out.iterdir())


def test_units_verify(tmp_path: Path) -> None:
    paths = installed_here(tmp_path)
    assert len(paths) == 5
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        # No systemd here: at least every unit parses and names a chronicle that exists.
        for path in paths:
            unit = read_unit(path)
            for line in values(unit, "ExecStart"):
                assert Path(shlex.split(line)[0]).exists(), line
        return
    verify = subprocess.run([analyze, "verify", "--man=no", *map(str, paths)],
                            capture_output=True, text=True, timeout=60)
    # Warnings (an unknown key, a bad specifier) are on stderr even when the exit is 0.
    assert (verify.returncode, verify.stderr) == (0, ""), verify.stderr
    for path in paths:
        if path.suffix == ".service":
            review = subprocess.run([analyze, "security", "--offline=true", "--threshold=20",
                                     str(path)], capture_output=True, text=True, timeout=60)
            score = re.search(r"Overall exposure level for \S+: ([\d.]+)", review.stdout)
            assert review.returncode == 0 and score, review.stdout + review.stderr
            assert float(score.group(1)) <= 2.0, f"{path.name}: exposure {score.group(1)}"


# The seccomp filter systemd (252, Debian 12) installs for MemoryDenyWriteExecute=yes:
# EPERM for mmap with PROT_WRITE|PROT_EXEC, for mprotect/pkey_mprotect adding PROT_EXEC,
# and for shmat with SHM_EXEC.
_SYSCALLS = {  # audit arch, mmap, mprotect, pkey_mprotect, shmat
    "x86_64": (0xC000003E, 9, 10, 329, 30),
    "aarch64": (0xC00000B7, 222, 226, 288, 196),
}


def _mdwe_program() -> bytes:
    arch, mmap_nr, mprotect_nr, pkey_nr, shmat_nr = _SYSCALLS[platform.machine()]
    ld, and_, jeq, jset, ret = 0x20, 0x54, 0x15, 0x45, 0x06
    allow, eperm, wx, exec_, shm_exec = 0x7FFF0000, 0x00050001, 0x6, 0x4, 0o100000
    nr, arch_at, prot_at = 0, 4, 16 + 8 * 2  # seccomp_data: args[2], low word
    program = [  # (label, code, k, jump if true, jump if false); BPF jumps go forward only
        ("", ld, arch_at, "", ""), ("", jeq, arch, "", "allow"),
        ("", ld, nr, "", ""),
        ("", jeq, mmap_nr, "mmap", ""), ("", jeq, mprotect_nr, "prot", ""),
        ("", jeq, pkey_nr, "prot", ""), ("", jeq, shmat_nr, "shm", ""),
        ("", ret, allow, "", ""),
        ("mmap", ld, prot_at, "", ""), ("", and_, wx, "", ""), ("", jeq, wx, "deny", "allow"),
        ("prot", ld, prot_at, "", ""), ("", jset, exec_, "deny", "allow"),
        ("shm", ld, prot_at, "", ""), ("", jset, shm_exec, "deny", "allow"),
        ("deny", ret, eperm, "", ""), ("allow", ret, allow, "", ""),
    ]
    at = {label: i for i, (label, *_) in enumerate(program) if label}
    return b"".join(struct.pack("HBBI", code, at[t] - i - 1 if t else 0,
                                at[f] - i - 1 if f else 0, k)
                    for i, (_, code, k, t, f) in enumerate(program))


def mdwe_preexec() -> Callable[[], None]:
    """A preexec_fn putting the child (and what it execs) under that filter."""
    assert platform.machine() in _SYSCALLS, "add this architecture's syscall numbers"
    code = _mdwe_program()
    buffer = ctypes.create_string_buffer(code, len(code))
    prog = struct.pack("HxxxxxxP", len(code) // 8, ctypes.addressof(buffer))
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_no_new_privs, pr_set_seccomp, seccomp_mode_filter = 38, 22, 2

    def install() -> None:
        assert buffer.raw == code  # the closure keeps the program alive in the child
        if libc.prctl(pr_set_no_new_privs, 1, 0, 0, 0) != 0 or \
                libc.prctl(pr_set_seccomp, seccomp_mode_filter, prog, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "seccomp")

    return install


def test_the_memory_filter_is_real() -> None:
    """The emulation refuses what systemd refuses (so passing under it means something)."""
    probe = ("import mmap; mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE)\n"
             "mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)")
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         preexec_fn=mdwe_preexec(), timeout=60)
    assert run.returncode == 1 and "PermissionError" in run.stderr, run.stderr


class Host:
    """Runs the units' Exec lines as systemd would, with the file system rooted in a
    temporary directory and the port moved to a free one."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = str(free_port())
        self.units = units()

    def path(self, absolute: str) -> str:
        return str(self.root) + absolute

    def rewrite(self, word: str) -> str:
        word = word.replace(INSTALLED, CHRONICLE).replace(PORT, self.port)
        return word.replace("/var/lib/", self.path("/var/lib/"))

    def prepare(self, name: str) -> tuple[Unit, dict[str, str], dict[str, str]]:
        """What systemd does before ExecStart: state directories, credentials (copied,
        mode 0400), environment."""
        unit = self.units[name]
        for state in " ".join(values(unit, "StateDirectory")).split():
            Path(self.path(f"/var/lib/{state}")).mkdir(mode=0o700, parents=True,
                                                       exist_ok=True)
        creds = self.root / "run" / "credentials" / name
        for line in values(unit, "LoadCredential"):
            credential, _, source = line.partition(":")
            creds.mkdir(parents=True, exist_ok=True)
            (creds / credential).write_bytes(Path(self.path(source)).read_bytes())
            (creds / credential).chmod(0o400)
        # This run's environment too (PYTHONPATH: the checkout under test).
        env = {k: v for k, v in os.environ.items() if k != KEY_FILE_ENV}
        for setting in values(unit, "Environment"):
            key, _, value = expand(setting, {"d": str(creds)}, env).partition("=")
            env[key] = self.rewrite(value)
        return unit, {"d": str(creds)}, env

    def argv(self, name: str, key: str, extra: Mapping[str, str] | None = None,
             ) -> tuple[list[str], dict[str, str], Callable[[], None] | None]:
        """An Exec line's argv, environment (``extra`` stands for EnvironmentFile=) and
        sandbox."""
        unit, specifiers, env = self.prepare(name)
        env.update(extra or {})
        argv = [self.rewrite(expand(w, specifiers, env)) for w in shlex.split(one(unit, key))]
        sandbox = mdwe_preexec() if one(unit, "MemoryDenyWriteExecute") == "yes" else None
        return argv, env, sandbox

    def run(self, name: str, key: str = "ExecStart",
            extra: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        argv, env, sandbox = self.argv(name, key, extra)
        done = subprocess.run(argv, env=env, preexec_fn=sandbox, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, f"{name} {key}: {shlex.join(argv)}\n{done.stderr}"
        return done

    @contextlib.contextmanager
    def started(self, name: str) -> Iterator[subprocess.Popen[bytes]]:
        """ExecStart= in the background, its stderr in a file (the journal)."""
        argv, env, sandbox = self.argv(name, "ExecStart")
        with (self.root / f"{name}.log").open("wb") as journal:
            proc = subprocess.Popen(argv, env=env, preexec_fn=sandbox,
                                    stdout=subprocess.DEVNULL, stderr=journal)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()

    async def listening(self, name: str, proc: subprocess.Popen[bytes]) -> None:
        journal = self.root / f"{name}.log"
        deadline = time.monotonic() + 30
        while b"listening on" not in journal.read_bytes():
            assert proc.poll() is None, f"{name} exited: {journal.read_text()}"
            assert time.monotonic() < deadline, f"{name} did not start: {journal.read_text()}"
            await asyncio.sleep(0.05)


async def test_units_run_as_systemd_would_run_them(tmp_path: Path) -> None:
    host = Host(tmp_path)
    # config/README.md: `chronicle init`, then the key moves to the credential store.
    data = Path(host.path("/var/lib/chronicle"))
    ledger = await init_data_dir(data)
    credstore = Path(host.path("/etc/credstore"))
    credstore.mkdir(parents=True)
    (data / KEY_FILE).rename(credstore / "chronicle-signing-key")
    server_key = SigningKey.from_text((credstore / "chronicle-signing-key").read_text())
    alice = await add_client_offline(ledger, "alice")

    with host.started("chronicle.service") as serve:
        await host.listening("chronicle.service", serve)
        assert "Seccomp:\t2" in Path(f"/proc/{serve.pid}/status").read_text()  # filtered
        url = f"http://127.0.0.1:{host.port}"
        async with aiohttp.ClientSession() as session:
            for n in range(3):
                answer = await http_publish(session, url, server_key.public, alice, f"e{n}")
                assert answer.status == 200, answer.body
        # The container's HEALTHCHECK command answers for a live server.
        check = [host.rewrite(w) for w in docker_args(
            next(r for w, r in dockerfile() if w == "HEALTHCHECK").split(" CMD ", 1)[1])]
        assert check[0] == "python"
        assert subprocess.run([sys.executable, *check[1:]], timeout=30).returncode == 0

        audit_key = {"AUDIT_SERVER_KEY": server_key.public_b64}
        first = host.run("chronicle-audit.service", extra=audit_key)
        assert Path(host.path("/var/lib/chronicle-audit/audit.state")).is_file(), first.stdout
        host.run("chronicle-audit.service", extra=audit_key)  # incremental, from the state

        backups = Path(host.path("/var/lib/chronicle-backup"))
        old = backups / "20000101T000000Z"
        old.mkdir(parents=True)
        month_ago = time.time() - 30 * 86400
        os.utime(old, (month_ago, month_ago))
        host.run("chronicle-backup.service")
        host.run("chronicle-backup.service", "ExecStartPost")
        [made] = list(backups.iterdir())  # the old one rotated away
        assert re.fullmatch(r"\d{8}T\d{6}Z", made.name)
        assert DataDir(made).signing_key(DataDir(made).settings()).public == \
            server_key.public
        assert (made / KEY_FILE).stat().st_mode & 0o777 == 0o600

        unit = host.units["chronicle.service"]
        serve.send_signal(signal.Signals[one(unit, "KillSignal")])
        code = await asyncio.to_thread(serve.wait, int(one(unit, "TimeoutStopSec")))
        assert code == 0


# --- the container recipe ------------------------------------------------------------------

def test_image_installs_what_ci_installs() -> None:
    steps = dockerfile()
    runs = "\n".join(rest for word, rest in steps if word == "RUN")
    image = install_line(runs, "config/Dockerfile")
    ci = install_line((REPO / ".ci" / "run").read_text(), ".ci/run")
    assert image[0] == ci[0] == "scripts/install.sh"
    # Same script; CI's extras include the image's (CI tests what the image holds).
    assert set(image[2].split(",")) <= set(ci[2].split(","))
    assert (REPO / "scripts" / "install.sh").stat().st_mode & 0o111
    # Everything COPY'd from the context exists and is not excluded from it.
    ignore = (CONFIG / "Dockerfile.dockerignore").read_text().splitlines()
    for word, rest in steps:
        if word == "COPY" and not rest.startswith("--from"):
            for source in shlex.split(rest)[:-1]:
                assert (REPO / source).exists(), source
                assert f"!{source}" in ignore or f"!{source}/" in ignore, source
    assert all(rest.startswith("python:3.11-slim") for word, rest in steps if word == "FROM")


def test_image_runs_unprivileged_and_checks_health() -> None:
    steps = dict(dockerfile())  # the last of each instruction: the final stage's
    uid, _, gid = steps["USER"].partition(":")
    assert uid.isdigit() and int(uid) > 0 and gid.isdigit() and int(gid) > 0
    assert f"--uid {uid}" in "\n".join(r for w, r in dockerfile() if w == "RUN")
    env = docker_env()
    assert docker_args(steps["VOLUME"]) == [env["CHRONICLE_DATA_DIR"]]
    assert steps["EXPOSE"] == PORT
    health = steps["HEALTHCHECK"]
    assert f"http://127.0.0.1:{PORT}/healthz" in health and "--timeout=" in health
    assert docker_args(steps["ENTRYPOINT"]) == ["chronicle"]
    cmd = docker_args(steps["CMD"])
    assert cmd[:3] == ["serve", "--host", "0.0.0.0"] and cmd[cmd.index("--port") + 1] == PORT
    assert steps["STOPSIGNAL"] == "SIGTERM"


def test_compose_file() -> None:
    spec = compose()
    services, secrets = spec["services"], spec["secrets"]
    assert set(services) == {"postgres", "chronicle-init", "chronicle"}
    ignored = (CONFIG / ".gitignore").read_text().splitlines()
    for name, secret in secrets.items():
        assert secret["file"] == f"./secrets/{name}", name
    assert "/secrets/" in ignored
    guide = (CONFIG / "README.md").read_text()
    assert all(f"secrets/{name}" in guide for name in secrets)

    db = services["postgres"]
    assert "pg_isready" in db["healthcheck"]["test"]
    assert db["environment"]["POSTGRES_PASSWORD_FILE"] == \
        f"/run/secrets/{db['secrets'][0]}"
    data_dir = docker_env()["CHRONICLE_DATA_DIR"]
    for name in ("chronicle-init", "chronicle"):
        service = services[name]
        assert (CONFIG / service["build"]["context"] / service["build"]["dockerfile"]) \
            .resolve() == CONFIG / "Dockerfile"
        assert set(service["secrets"]) <= set(secrets)
        assert service["environment"][KEY_FILE_ENV] in \
            {f"/run/secrets/{s}" for s in service["secrets"]}
        assert [v.split(":")[1] for v in service["volumes"]] == [data_dir]
        assert {v.split(":")[0] for v in service["volumes"]} <= set(spec["volumes"])
        assert service["read_only"] is True and service["cap_drop"] == ["ALL"]
    server = services["chronicle"]
    assert server["depends_on"] == {"postgres": {"condition": "service_healthy"},
                                    "chronicle-init": {"condition":
                                                       "service_completed_successfully"}}
    assert int(server["stop_grace_period"].removesuffix("s")) > DRAIN_SECONDS
    # init's database URL is one our settings accept, and its files are its secrets.
    [init] = [args for where, args, _ in command_lines()
              if where == "compose chronicle-init" and args[0] == "init"]
    url = init[init.index("--database") + 1]
    Settings.from_mapping({"database": url})
    mounted = {f"/run/secrets/{s}" for s in services["chronicle-init"]["secrets"]}
    [passfile] = parse_qs(urlsplit(url).query)["passfile"]
    assert passfile in mounted
    assert init[init.index("--signing-key") + 1] in mounted


def test_docs_point_to_config() -> None:
    guide = (CONFIG / "README.md").read_text()
    for path in sorted(CONFIG.rglob("*")):
        name = str(path.relative_to(CONFIG))
        if path.is_file() and name != "README.md":
            assert name in guide, f"config/README.md does not explain {name}"
    assert "## Deployment" in (REPO / "docs" / "operations.md").read_text()
    assert "(../config/" in (REPO / "docs" / "operations.md").read_text()
    assert "(config/" in (REPO / "README.md").read_text()
