"""Shared plumbing for the benchmark scripts: subprocess servers, data dirs, /proc readings.

Everything runs on 127.0.0.1. Every wait here is bounded by a timeout.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import chronicle

CHRONICLE = [sys.executable, "-m", "chronicle.cli"]
SCRIPTS = Path(__file__).resolve().parent
# Subprocesses run from here, so ``python -m chronicle.cli`` imports the same chronicle as
# this process (e.g. a snapshot on PYTHONPATH while the working tree is being edited).
CHRONICLE_ROOT = Path(chronicle.__file__).resolve().parent.parent
_LISTEN_RE = re.compile(r"listening on (http://\S+)")
_KEY_RE = re.compile(r"server-public-key: (\S+)")


def chronicle_cli(*args: str, timeout: float = 120.0) -> str:
    """Run ``chronicle ARGS`` (this interpreter's), return stdout; raise on failure."""
    proc = subprocess.run([*CHRONICLE, *args], capture_output=True, text=True,
                          timeout=timeout, check=False, cwd=CHRONICLE_ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"chronicle {' '.join(args)} failed ({proc.returncode}): "
                           f"{proc.stderr.strip()}")
    return proc.stdout


def init_data_dir(data_dir: Path, settings: dict[str, str] | None = None, *,
                  database: str | None = None) -> str:
    """``chronicle init --json`` plus ``config set`` for each setting; returns the server key.

    ``database``: a ``postgresql://`` URL (an existing, empty database) instead of the
    default SQLite file in the data dir.
    """
    extra = ["--database", database] if database else []
    out = json.loads(chronicle_cli("init", "--data-dir", str(data_dir), *extra, "--json"))
    for key, value in (settings or {}).items():
        chronicle_cli("config", "set", "--data-dir", str(data_dir), key, value)
    return str(out["public-key"])


def add_client(data_dir: Path, public_key_b64: str) -> str:
    """``chronicle client add --json``; returns the new client id."""
    out = json.loads(chronicle_cli("client", "add", "--data-dir", str(data_dir),
                                   f"--public-key={public_key_b64}", "--json"))
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
                                     stderr=subprocess.PIPE, cwd=CHRONICLE_ROOT,
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


def chronicle_server(data_dir: Path, workers: int = 1) -> ServerProcess:
    """``chronicle serve --workers N`` (N > 1: a supervisor forking N workers on one socket)."""
    return ServerProcess([*CHRONICLE, "serve", "--data-dir", str(data_dir),
                          "--host", "127.0.0.1", "--port", "0", "--workers", str(workers)],
                         name="chronicle")


def ceiling_server(client_id: str, client_public_key: str, workers: int = 1,
                   durable: Path | None = None) -> ServerProcess:
    """scripts/ceiling_server.py; with ``durable`` (a directory) the durable floor."""
    extra = ["--durable", str(durable)] if durable is not None else []
    return ServerProcess([sys.executable, str(SCRIPTS / "ceiling_server.py"),
                          "--host", "127.0.0.1", "--port", "0", "--workers", str(workers),
                          "--client", f"{client_id}={client_public_key}", *extra],
                         name="floor" if durable is not None else "ceiling")


# --- PostgreSQL: a throwaway database per run ------------------------------------------------

PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def _pg_run(admin_url: str, *statements: str) -> None:
    import asyncio

    import asyncpg

    async def go() -> None:
        conn = await asyncpg.connect(admin_url, timeout=30)
        try:
            for sql in statements:
                await conn.execute(sql, timeout=120)
        finally:
            await conn.close()

    asyncio.run(go())


@dataclass
class PostgresDatabase:
    """A fresh database on the server of ``admin_url``, dropped (FORCE) by :meth:`drop`."""

    admin_url: str = PG_ADMIN_URL
    name: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            self.name = f"chronicle_bench_{os.urandom(4).hex()}"
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", self.name):
            raise ValueError(f"unsafe database name {self.name!r}")

    @property
    def url(self) -> str:
        base = self.admin_url.rsplit("/", 1)[0]
        return f"{base}/{self.name}"

    def create(self, settings: dict[str, str] | None = None) -> str:
        """CREATE DATABASE, plus ``ALTER DATABASE ... SET key = value`` for each setting
        (what an operator can configure without touching the code, e.g. plan_cache_mode)."""
        statements = [f'CREATE DATABASE "{self.name}"']
        for key, value in (settings or {}).items():
            if not re.fullmatch(r"[a-z_.]+", key) or not re.fullmatch(r"[A-Za-z0-9_.]+", value):
                raise ValueError(f"unsafe setting {key}={value}")
            statements.append(f'ALTER DATABASE "{self.name}" SET {key} = {value}')
        _pg_run(self.admin_url, *statements)
        return self.url

    def drop(self) -> None:
        _pg_run(self.admin_url, f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


def process_title(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return f"pid {pid} (gone)"


def postgres_pids(dbname: str) -> list[int]:
    """The PostgreSQL processes working for ``dbname``: its backends plus the shared ones.

    Backends are recognised by their process title (``postgres: USER DBNAME HOST ...``);
    the auxiliary processes (WAL writer, checkpointer, background writer, ...) serve every
    database, so their CPU during a run is counted as ours too. Backends of other
    databases (another session's tests) are not.
    """
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        title = process_title(int(entry))
        if not title.startswith("postgres: "):
            continue
        words = title.split()[1:]
        if words and words[0].endswith(":"):  # the cluster name: "postgres: 15/main: ..."
            words = words[1:]
        # a backend is "USER DBNAME HOST(PORT) STATE"; the rest are auxiliary processes
        is_backend = len(words) >= 3 and ("(" in words[2] or words[2] == "[local]")
        if not is_backend or words[1] == dbname:
            out.append(int(entry))
    return out


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


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (``serve --workers N`` forks its workers)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        parents.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(parents.get(p, []))
    return out


def cpu_by_pid(pids: list[int]) -> dict[int, float]:
    """CPU seconds so far of each of ``pids`` still alive."""
    out = {}
    for pid in pids:
        try:
            out[pid] = proc_cpu_seconds(pid)
        except (OSError, ValueError, IndexError):
            continue
    return out


def cpu_used(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU used between two :func:`cpu_by_pid` readings (processes born meanwhile count
    from zero; processes that died meanwhile are lost)."""
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


def tree_peak_rss_mb(pid: int) -> tuple[float, float]:
    """(largest, summed) VmHWM of ``pid``'s process tree, in MB (workers have their own)."""
    peaks = []
    for p in process_tree(pid):
        try:
            peaks.append(proc_status(p)["VmHWM"] / 1024)
        except (OSError, KeyError):
            continue
    return (round(max(peaks), 1), round(sum(peaks), 1)) if peaks else (0.0, 0.0)


def code_summary() -> str:
    """Which chronicle is measured: its directory and git commit (``COMMIT`` file of a
    ``git archive`` snapshot, else ``git rev-parse``, marked dirty when chronicle/ has
    uncommitted changes)."""
    root = CHRONICLE_ROOT
    stamp = root / "COMMIT"
    if stamp.exists():
        return f"chronicle {stamp.read_text().strip()} (snapshot in {root})"
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10, check=True)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "chronicle"],
                               capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return f"chronicle in {root}"
    mark = "+uncommitted changes" if dirty.stdout.strip() else ""
    return f"chronicle {head.stdout.strip()}{mark} ({root})"


def machine_summary() -> str:
    import sqlite3

    return (f"{os.cpu_count()} cores, Python {platform.python_version()}, "
            f"SQLite {sqlite3.sqlite_version}, {platform.system()} {platform.release()}; "
            f"{code_summary()}")


# --- building a chain without HTTP ---------------------------------------------------------

_PRINTABLE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) not in '{"\\')


def sign_batch(secret: bytes, tag: str, start: int, count: int, size: int
               ) -> list[tuple[bytes, bytes]]:
    """``count`` unique printable bodies of ``size`` bytes and their Ed25519 signatures.

    A top-level function so a process pool can run it (signing is the costly part).
    """
    import random

    from chronicle.core.sapient import SigningKey

    key = SigningKey.from_secret(secret)
    rng = random.Random(f"{tag}-{start}")
    out = []
    for i in range(start, start + count):
        prefix = f"{tag}-{i:09d} "
        body = (prefix + "".join(rng.choices(_PRINTABLE, k=size - len(prefix)))).encode()
        out.append((body, key.sign(body)))
    return out


@dataclass
class ChainInfo:
    """What a benchmark needs to know about a chain it built."""

    count: int
    head_currhash: str
    sample_hashes: list[str]
    seconds: float


def fill_chain(data_dir: Path, secret: bytes, count: int, *, body_size: int = 256,
               batch: int = 20_000, workers: int = 2, sample: int = 0,
               progress: bool = True) -> ChainInfo:
    """Append ``count`` signed entries to the default chain straight through the store.

    Bodies are signed in a process pool (``workers``) while this process hashes the chain
    (ChainBuilder, re-reading the head inside each write transaction) and inserts each
    batch in one ``store.write`` transaction. No server may run on ``data_dir`` meanwhile
    (it would not see its cached head change). Up to ``sample`` currhash/summaryhash
    values are kept (base64url) for lookups.
    """
    import asyncio
    from concurrent.futures import ProcessPoolExecutor

    from chronicle.config import DataDir
    from chronicle.core.blakechain import ChainBuilder
    from chronicle.core.encoding import atom, b64u_encode, utcnow
    from chronicle.core.sapient import SigningKey
    from chronicle.store import open_store

    public = SigningKey.from_secret(secret).public
    tag = os.urandom(4).hex()
    t0 = time.perf_counter()
    hashes: list[str] = []
    head_hash = ""

    async def go() -> None:
        nonlocal head_hash
        dd = DataDir(data_dir)
        store = open_store(dd.settings().database, dd.path)
        await store.open()
        loop = asyncio.get_running_loop()
        try:
            with ProcessPoolExecutor(workers) as pool:
                starts = list(range(0, count, batch))
                pending: deque[asyncio.Future[list[tuple[bytes, bytes]]]] = deque()
                done = 0
                while starts or pending:
                    while starts and len(pending) < workers + 1:
                        s = starts.pop(0)
                        pending.append(loop.run_in_executor(
                            pool, sign_batch, secret, tag, s, min(batch, count - s), body_size))
                    signed = await pending.popleft()
                    created = atom(utcnow())
                    async with store.write("") as tx:
                        builder = ChainBuilder(await tx.head())
                        entries = [builder.append(body, public, sig, created)
                                   for body, sig in signed]
                        await tx.insert_entries(entries)
                    for e in entries:
                        if len(hashes) >= sample:
                            break
                        hashes.extend((b64u_encode(e.currhash), b64u_encode(e.summaryhash)))
                    head_hash = b64u_encode(entries[-1].currhash)
                    done += len(entries)
                    if progress:
                        rate = done / (time.perf_counter() - t0)
                        print(f"  filled {done}/{count} entries ({rate:,.0f}/s)",
                              file=sys.stderr, flush=True)
        finally:
            await store.close()

    asyncio.run(go())
    return ChainInfo(count=count, head_currhash=head_hash, sample_hashes=hashes[:sample],
                     seconds=round(time.perf_counter() - t0, 2))


class Profiler:
    """``py-spy record`` attached to a running server (collapsed stacks, one per thread).

    Optional: does nothing but warn when py-spy is not installed (``pip install py-spy``).
    """

    def __init__(self, pid: int, out: Path, *, rate: int = 250, idle: bool = False,
                 subprocesses: bool = False) -> None:
        self.out = out
        self.proc: subprocess.Popen[bytes] | None = None
        exe = shutil.which("py-spy")
        if exe is None:
            print("py-spy not found: not profiling", file=sys.stderr)
            return
        argv = [exe, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw",
                "--threads", "--nonblocking", "-o", str(out)]
        if idle:
            argv.append("--idle")
        if subprocesses:  # serve --workers N: the supervisor's forked workers
            argv.append("--subprocesses")
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(0.5)  # let it attach before the load starts

    def stop(self, timeout: float = 60.0) -> Path | None:
        """SIGINT makes py-spy write its file; returns the path if it was written."""
        if self.proc is None:
            return None
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        return self.out if self.out.exists() else None


def top_frames(collapsed: Path, *, limit: int = 25, contains: str = "") -> list[tuple[str, int]]:
    """Self time per leaf frame (and inclusive per frame when ``contains`` filters stacks)."""
    from collections import Counter

    leaf: Counter[str] = Counter()
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if contains and contains not in stack:
            continue
        leaf[stack.split(";")[-1]] += int(count)
    return leaf.most_common(limit)


def machine_cpu_seconds() -> float:
    """CPU seconds used so far by everything on the machine (all cores, /proc/stat)."""
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    busy = sum(fields[:3]) + sum(fields[5:8])  # user nice system + irq softirq steal
    return busy / os.sysconf("SC_CLK_TCK")


def wait_quiet(max_wait: float = 120.0, window: float = 2.0, threshold: float = 0.15) -> bool:
    """Wait until the machine is nearly idle (< ``threshold`` cores busy over ``window`` s).

    Other work on this shared machine (a test suite) skews throughput figures badly.
    Bounded by ``max_wait`` seconds; returns False if it never got quiet.
    """
    deadline = time.monotonic() + max_wait
    while True:
        before = machine_cpu_seconds()
        time.sleep(window)
        if (machine_cpu_seconds() - before) / window < threshold:
            return True
        if time.monotonic() > deadline:
            print(f"  (machine still busy after {max_wait:.0f}s; measuring anyway)",
                  file=sys.stderr, flush=True)
            return False


def measured(prepare: Callable[[], Any], run: Callable[[Any], Any], server_pid: int, *,
             db_pids: Callable[[], list[int]] | None = None,
             quiet_wait: float = 120.0, retries: int = 2, max_other: float = 0.10
             ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run one load measurement, retrying (bounded) when other processes disturbed it.

    ``prepare()`` builds the requests (untimed, e.g. pre-signing); ``run(prepared)``
    returns a ``loadgen.LoadResult``. Each attempt records the CPU seconds of the server
    (its whole process tree: ``serve --workers N`` forks), of this process (the
    generator), of the database processes ``db_pids()`` names (PostgreSQL), and what
    everything else on the machine used meanwhile (``other_share``: fraction of all
    cores). An attempt with ``other_share > max_other`` is repeated, at most ``retries``
    times; the least disturbed attempt is returned, with the list of all attempts.
    """
    attempts: list[dict[str, Any]] = []
    cores = os.cpu_count() or 1
    for n in range(retries + 1):
        prepared = prepare()
        quiet = wait_quiet(quiet_wait) if quiet_wait > 0 else True
        srv0 = cpu_by_pid(process_tree(server_pid))
        db0 = cpu_by_pid(db_pids()) if db_pids else {}
        own0, all0 = time.process_time(), machine_cpu_seconds()
        t0 = time.monotonic()
        result = run(prepared)
        wall = time.monotonic() - t0
        row = result.as_dict()
        row["server_cpu_s"] = round(cpu_used(srv0, cpu_by_pid(process_tree(server_pid))), 2)
        row["client_cpu_s"] = round(time.process_time() - own0, 2)
        row["db_cpu_s"] = 0.0
        if db_pids:
            db1 = cpu_by_pid(db_pids())
            row["db_cpu_s"] = round(cpu_used(db0, db1), 2)
            per = sorted(((cpu - db0.get(pid, 0.0), pid) for pid, cpu in db1.items()),
                         reverse=True)
            row["db_cpu_by_process"] = [(round(cpu, 2), process_title(pid))
                                        for cpu, pid in per[:6] if cpu > 0]
        other = (machine_cpu_seconds() - all0 - row["server_cpu_s"] - row["client_cpu_s"]
                 - row["db_cpu_s"])
        row["other_cpu_s"] = max(0.0, round(other, 2))
        row["other_share"] = round(row["other_cpu_s"] / (wall * cores), 3)
        row["quiet_start"] = quiet
        row["attempt"] = n + 1
        db = f", database cpu {row['db_cpu_s']}s" if db_pids else ""
        print("  " + result.line() + f"  server cpu {row['server_cpu_s']}s, generator cpu "
              f"{row['client_cpu_s']}s{db}, others {row['other_share']:.0%} of the machine",
              flush=True)
        attempts.append(row)
        if row["other_share"] <= max_other:
            break
        if n < retries:
            print("  (disturbed by other processes: measuring again)", flush=True)
    best = dict(min(attempts, key=lambda r: r["other_share"]))
    best["attempts"] = len(attempts)
    return best, attempts
