"""Shared plumbing for the benchmark scripts: subprocess servers, data dirs, /proc readings.

Everything runs on 127.0.0.1. Every wait here is bounded by a timeout.
"""

from __future__ import annotations

import json
import os
import platform
import re
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

CHRONICLE = [sys.executable, "-m", "chronicle.cli"]
SCRIPTS = Path(__file__).resolve().parent
_LISTEN_RE = re.compile(r"listening on (http://\S+)")
_KEY_RE = re.compile(r"server-public-key: (\S+)")


def chronicle_cli(*args: str, timeout: float = 120.0) -> str:
    """Run ``chronicle ARGS`` (this interpreter's), return stdout; raise on failure."""
    proc = subprocess.run([*CHRONICLE, *args], capture_output=True, text=True,
                          timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"chronicle {' '.join(args)} failed ({proc.returncode}): "
                           f"{proc.stderr.strip()}")
    return proc.stdout


def init_data_dir(data_dir: Path, settings: dict[str, str] | None = None) -> str:
    """``chronicle init --json`` plus ``config set`` for each setting; returns the server key."""
    out = json.loads(chronicle_cli("init", "--data-dir", str(data_dir), "--json"))
    for key, value in (settings or {}).items():
        chronicle_cli("config", "set", "--data-dir", str(data_dir), key, value)
    return str(out["public-key"])


def add_client(data_dir: Path, public_key_b64: str) -> str:
    """``chronicle client add --json``; returns the new client id."""
    out = json.loads(chronicle_cli("client", "add", "--data-dir", str(data_dir),
                                   "--public-key", public_key_b64, "--json"))
    return str(out["client-id"])


@dataclass
class ServerProcess:
    """A server subprocess that announces ``listening on http://HOST:PORT`` on stderr."""

    argv: list[str]
    name: str = "server"
    proc: subprocess.Popen[bytes] | None = None
    url: str = ""
    server_key: str = ""
    log_tail: deque[str] = field(default_factory=lambda: deque(maxlen=50))

    def start(self, timeout: float = 30.0) -> str:
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        assert self.proc.stderr is not None
        found = threading.Event()

        stream = self.proc.stderr

        def reader() -> None:
            for raw in iter(stream.readline, b""):
                line = raw.decode(errors="replace").rstrip()
                self.log_tail.append(line)
                if m := _KEY_RE.search(line):
                    self.server_key = m.group(1)
                if not found.is_set() and (m := _LISTEN_RE.search(line)):
                    self.url = m.group(1)
                    found.set()

        threading.Thread(target=reader, daemon=True, name=f"{self.name}-stderr").start()
        deadline = time.monotonic() + timeout
        while not found.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = "\n".join(self.log_tail)
                raise RuntimeError(f"{self.name} did not start:\n{tail}")
        return self.url

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, wait (bounded), SIGKILL if needed; return the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def chronicle_server(data_dir: Path) -> ServerProcess:
    return ServerProcess([*CHRONICLE, "serve", "--data-dir", str(data_dir),
                          "--host", "127.0.0.1", "--port", "0"], name="chronicle")


def ceiling_server(client_id: str, client_public_key: str) -> ServerProcess:
    return ServerProcess([sys.executable, str(SCRIPTS / "ceiling_server.py"),
                          "--host", "127.0.0.1", "--port", "0",
                          "--client", f"{client_id}={client_public_key}"], name="ceiling")


def proc_status(pid: int) -> dict[str, int]:
    """Memory lines of /proc/PID/status in kB (VmHWM = peak RSS, VmRSS = current)."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            if key in ("VmHWM", "VmRSS", "VmPeak", "VmSize", "Threads"):
                out[key] = int(rest.split()[0])
    return out


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by process PID (all threads)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def machine_summary() -> str:
    return (f"{os.cpu_count()} cores, Python {platform.python_version()}, "
            f"{platform.system()} {platform.release()}")
