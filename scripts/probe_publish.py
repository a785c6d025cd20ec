"""Diagnose publish latency: the real server in this process, the load from another.

Runs ``chronicle.server`` exactly as ``chronicle serve`` does (uvloop, same app), but wraps
``Ledger._commit`` to record every group commit (wall time, batch size), and reports the
server's CPU time and context switches per publish. It also times the steps of each
group commit: on SQLite the synchronous batch (``_append_batch_sync``) and its durable
``COMMIT``; on PostgreSQL every awaited asyncpg call made inside a group commit (BEGIN,
the chain-head row lock, head, duplicate and client checks, COPY, COMMIT), which is where
a round trip to the database goes. ``--switch-interval`` changes ``sys.setswitchinterval``
(GIL hand-off). The wrappers live in this process only; nothing under chronicle/ changes.

The load comes from scripts/loadgen.py run as a subprocess (publish, pre-signed).

    python scripts/probe_publish.py -c 16 -n 10000
    python scripts/probe_publish.py -c 16 -n 10000 --backend postgres
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import functools
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import uvloop
from aiohttp import web
from benchutil import PG_ADMIN_URL, SCRIPTS, PostgresDatabase, add_client, init_data_dir

from chronicle.config import DataDir
from chronicle.core.sapient import SigningKey
from chronicle.ledger import AppendRequest, Ledger
from chronicle.server.app import build_app
from chronicle.server.runner import open_context

COMMITS: list[tuple[float, int]] = []  # (seconds, batch size)
STEPS: dict[str, list[float]] = defaultdict(list)  # step -> seconds, inside group commits
_IN_COMMIT: contextvars.ContextVar[bool] = contextvars.ContextVar("in_commit", default=False)
_IN_STEP: contextvars.ContextVar[bool] = contextvars.ContextVar("in_step", default=False)


def _step_name(method: str, args: tuple[Any, ...]) -> str:
    if method in ("execute", "fetch", "fetchrow", "fetchval") and args \
            and isinstance(args[0], str):
        sql = " ".join(args[0].split())
        for marker, name in (("FOR UPDATE", "lock chain head (SELECT ... FOR UPDATE)"),
                             ("ARRAY(SELECT", "head + duplicates + clients, one query"),
                             ("unnest(", "insert (INSERT ... unnest)"),
                             ("COMMIT", "COMMIT (durable)"),
                             ("ORDER BY idx DESC", "read head"),
                             ("signature = ANY", "duplicate check"),
                             ("FROM clients", "client check")):
            if marker in sql:
                return name
        return f"{method}: {sql[:40]}"
    return method


def _wrap_async(cls: Any, method: str, name: str | None = None) -> None:
    original = getattr(cls, method)

    @functools.wraps(original)
    async def timed(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not _IN_COMMIT.get() or _IN_STEP.get():  # only the outermost call is a step
            return await original(self, *args, **kwargs)
        token = _IN_STEP.set(True)
        t0 = time.perf_counter()
        try:
            return await original(self, *args, **kwargs)
        finally:
            STEPS[name or _step_name(method, args)].append(time.perf_counter() - t0)
            _IN_STEP.reset(token)

    setattr(cls, method, timed)


def _wrap_sync(cls: Any, method: str, name: str) -> None:
    original = getattr(cls, method)

    @functools.wraps(original)
    def timed(self: Any, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            STEPS[name].append(time.perf_counter() - t0)

    setattr(cls, method, timed)


# --- an experimental PostgreSQL group commit (this process only) ---------------------------

_PG_READ = """SELECT
  (SELECT row(idx, currhash, summaryhash, hashstate, created) FROM entries
    WHERE instance = $1 ORDER BY idx DESC LIMIT 1),
  ARRAY(SELECT row({entry_cols}) FROM entries
    WHERE instance = $1 AND signature = ANY($2::bytea[])),
  ARRAY(SELECT row({client_cols}) FROM clients
    WHERE instance = $1 AND revoked IS NULL AND publicid = ANY($3::text[]))"""
_PG_INSERT = """INSERT INTO entries (instance, idx, contents, prevhash, currhash, summaryhash,
  hashstate, publickey, signature, created)
SELECT $1, * FROM unnest($2::bigint[], $3::bytea[], $4::bytea[], $5::bytea[], $6::bytea[],
  $7::bytea[], $8::bytea[], $9::bytea[], $10::text[])"""


def install_pg_fewer_round_trips() -> None:
    """``PostgresStore.append_batch`` in 4 round trips on a dedicated connection.

    1. ``BEGIN; SELECT ... FOR UPDATE`` (one simple-protocol message: the chain-head lock);
    2. head, duplicate signatures and active clients in one statement, run after the lock
       so its snapshot sees the latest head;
    3. ``INSERT ... SELECT FROM unnest(...)``; 4. ``COMMIT``.
    The connection is the sequencer's own (no pool acquire/reset round trip) and plans
    every statement for its parameters (``plan_cache_mode=force_custom_plan``).
    Today's driver makes about 10: BEGIN, lock, head, duplicates, clients, COPY (two),
    COMMIT and the pool's reset on release.
    """
    import asyncpg

    from chronicle.core.blakechain import ChainHead
    from chronicle.store import BatchView
    from chronicle.store import postgres as pgmod

    read_sql = _PG_READ.format(entry_cols=pgmod._ENTRY_COLS, client_cols=pgmod._CLIENT_COLS)
    conns: dict[int, Any] = {}
    locks: dict[int, asyncio.Lock] = {}

    async def append_batch(self: Any, instance: str, signatures: Any, client_ids: Any,
                           plan: Any) -> Any:
        iid = int(await self._iid(instance))
        async with locks.setdefault(id(self), asyncio.Lock()):
            conn = conns.get(id(self))
            if conn is None or conn.is_closed():
                settings = {"lock_timeout": str(self._lock_timeout_ms),
                            "plan_cache_mode": "force_custom_plan"}
                if self._schema:
                    settings["search_path"] = self._schema
                conn = conns[id(self)] = await asyncpg.connect(self._dsn,
                                                               server_settings=settings)
            try:
                await conn.execute(f"BEGIN; SELECT id FROM instances WHERE id = {iid} "
                                   "FOR UPDATE")
                row = await conn.fetchrow(read_sql, iid, list(dict.fromkeys(signatures)),
                                          list(dict.fromkeys(client_ids)))
                h = row[0]
                head = (ChainHead(h[0], bytes(h[1]), bytes(h[2]), bytes(h[3]), h[4])
                        if h is not None else None)
                view = BatchView(head, {bytes(r[7]): pgmod._entry(r) for r in row[1]},
                                 {r[0]: pgmod._client(r) for r in row[2]})
                entries, result = plan(view)
                if entries:
                    await conn.execute(
                        _PG_INSERT, iid, [e.index for e in entries],
                        [e.contents for e in entries], [e.prevhash for e in entries],
                        [e.currhash for e in entries], [e.summaryhash for e in entries],
                        [e.hashstate for e in entries], [e.publickey for e in entries],
                        [e.signature for e in entries], [e.created for e in entries])
                await conn.execute("COMMIT")
            except BaseException:
                if not conn.is_closed():
                    try:
                        await conn.execute("ROLLBACK")
                    except Exception:
                        conn.terminate()
                raise
        return result

    pgmod.PostgresStore.append_batch = append_batch  # type: ignore[method-assign]


# --- an experimental SQLite group commit (this process only) -------------------------------

def install_sqlite_commit_off_loop() -> None:
    """``SqliteStore.append_batch`` as shipped, except that the durable ``COMMIT`` (the
    fsync) runs on the writer thread: one thread hop per batch, and the event loop keeps
    verifying, rendering and signing other requests while the disk syncs. The write lock
    stays held until the commit is done, so the next batch waits for it as before. (A real
    implementation must also shield the commit from cancellation.)
    """
    import sqlite3

    from chronicle.core.errors import StorageError
    from chronicle.store import BatchView
    from chronicle.store import sqlite as sq

    def prepare_sync(self: Any, iid: int, signatures: Any, client_ids: Any, plan: Any) -> Any:
        conn = self._writer
        try:
            existing = {bytes(r[7]): sq._entry(r)
                        for r in sq._in_chunks(conn, sq._FIND_SIGS, iid, signatures)}
            clients = ({r[0]: sq._client(r)
                        for r in sq._in_chunks(conn, sq._FIND_CLIENTS, iid, client_ids)}
                       if client_ids else {})
            entries, result = plan(BatchView(sq._head(conn, iid), existing, clients))
            if entries:
                sq._insert(conn, iid, entries)
        except BaseException:
            self._rollback()
            raise
        return result

    async def append_batch(self: Any, instance: str, signatures: Any, client_ids: Any,
                           plan: Any) -> Any:
        iid = self._iid(instance)
        async with self._write_lock:
            try:
                if self._try_begin():
                    result = prepare_sync(self, iid, signatures, client_ids, plan)
                    await self._on_writer(self._commit)
                else:
                    result = await self._on_writer(self._append_batch_sync, iid, signatures,
                                                   client_ids, plan)
            except sqlite3.Error as exc:
                raise StorageError(f"append failed: {exc}") from exc
            finally:
                self._maybe_checkpoint()
            return result

    sq.SqliteStore.append_batch = append_batch  # type: ignore[method-assign]


def install(backend: str) -> None:
    """Wrap Ledger._commit (each group commit) and the backend's steps inside it."""
    original = Ledger._commit

    async def timed(self: Ledger, batch: list[AppendRequest]) -> list[Any]:
        token = _IN_COMMIT.set(True)
        t0 = time.perf_counter()
        try:
            return await original(self, batch)
        finally:
            COMMITS.append((time.perf_counter() - t0, len(batch)))
            _IN_COMMIT.reset(token)

    Ledger._commit = timed  # type: ignore[method-assign]
    if backend == "postgres":
        import asyncpg
        from asyncpg.pool import Pool
        from asyncpg.transaction import Transaction

        for method in ("execute", "fetch", "fetchrow"):
            _wrap_async(asyncpg.Connection, method)
        _wrap_async(asyncpg.Connection, "copy_records_to_table", "insert (COPY)")
        _wrap_async(Transaction, "start", "BEGIN")
        _wrap_async(Transaction, "commit", "COMMIT (durable)")
        _wrap_async(Pool, "_acquire", "pool acquire")
        _wrap_async(Pool, "release", "pool release")
    else:
        from chronicle.store.sqlite import SqliteStore

        _wrap_sync(SqliteStore, "_append_batch_sync", "whole batch (lock to commit)")
        _wrap_sync(SqliteStore, "_commit", "COMMIT (durable)")
        _wrap_sync(SqliteStore, "_try_begin", "BEGIN IMMEDIATE (try)")


def thread_cpu() -> dict[str, float]:
    """CPU seconds of each thread of this process, by thread name (main = the event loop)."""
    import os
    import threading

    ticks = os.sysconf("SC_CLK_TCK")
    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[str, float] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        name = names.get(int(tid), f"native thread {tid}")
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / ticks
    return out


async def serve_and_load(data_dir: Path, client_id: str, key_file: Path, server_key: str,
                         args: argparse.Namespace) -> dict[str, Any]:
    ctx = await open_context(DataDir(data_dir))
    runner = web.AppRunner(build_app(ctx), handle_signals=False, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        argv = [sys.executable, str(SCRIPTS / "loadgen.py"), "publish", "--url", url,
                f"--server-key={server_key}", f"--client-id={client_id}",
                "--secret-key-file", str(key_file), "-n", str(args.requests),
                "-c", str(args.concurrency), "--warmup", str(args.warmup), "--json"]
        proc = await asyncio.create_subprocess_exec(*argv, stdout=subprocess.PIPE)
        # The generator pre-signs before it connects; only its timed part overlaps COMMITS.
        th0 = thread_cpu()
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=600)
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        th1 = thread_cpu()
        result = dict(json.loads(out))
        n = args.requests + args.warmup
        result["server_user_ms_per_req"] = round((ru1.ru_utime - ru0.ru_utime) * 1000 / n, 3)
        result["server_sys_ms_per_req"] = round((ru1.ru_stime - ru0.ru_stime) * 1000 / n, 3)
        result["thread_cpu_ms_per_req"] = {
            name: round((cpu - th0.get(name, 0.0)) * 1000 / n, 3)
            for name, cpu in sorted(th1.items(), key=lambda kv: -kv[1])
            if cpu - th0.get(name, 0.0) > 0}
        result["ctx_switches_per_req"] = round(
            (ru1.ru_nvcsw - ru0.ru_nvcsw + ru1.ru_nivcsw - ru0.ru_nivcsw) / n, 1)
        return result
    finally:
        await runner.cleanup()
        await ctx.store.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-c", "--concurrency", type=int, default=16)
    parser.add_argument("-n", "--requests", type=int, default=10_000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--variant", choices=["shipped", "pg-4rt", "sqlite-commit-off-loop"],
                        default="shipped",
                        help="experimental group commits, monkeypatched into this process: "
                             "pg-4rt (install_pg_fewer_round_trips), sqlite-commit-off-loop "
                             "(install_sqlite_commit_off_loop)")
    parser.add_argument("--pg-admin-url", default=PG_ADMIN_URL)
    parser.add_argument("--pg-setting", action="append", default=[], metavar="KEY=VALUE",
                        help="ALTER DATABASE ... SET KEY = VALUE on the fresh database")
    parser.add_argument("--switch-interval", type=float, default=None,
                        help="sys.setswitchinterval seconds (default: leave 0.005)")
    args = parser.parse_args(argv)
    if args.switch_interval:
        sys.setswitchinterval(args.switch_interval)
    install(args.backend)
    if args.variant == "pg-4rt":
        if args.backend != "postgres":
            parser.error("--variant pg-4rt needs --backend postgres")
        install_pg_fewer_round_trips()
    elif args.variant == "sqlite-commit-off-loop":
        if args.backend != "sqlite":
            parser.error("--variant sqlite-commit-off-loop needs --backend sqlite")
        install_sqlite_commit_off_loop()
    base = Path(tempfile.mkdtemp(prefix="chronicle-probe-", dir="/tmp"))
    pg = PostgresDatabase(args.pg_admin_url) if args.backend == "postgres" else None
    try:
        data_dir = base / "data"
        database = pg.create(dict(kv.split("=", 1) for kv in args.pg_setting)) \
            if pg is not None else None
        server_key = init_data_dir(data_dir, {"publish-new-clients": "false"},
                                   database=database)
        key = SigningKey.generate()
        key_file = base / "client.key"
        key_file.write_text(key.to_text())
        client_id = add_client(data_dir, key.public_b64)
        result = uvloop.run(serve_and_load(data_dir, client_id, key_file, server_key, args))
    finally:
        shutil.rmtree(base, ignore_errors=True)
        if pg is not None:
            pg.drop()
    times = sorted(t * 1000 for t, _ in COMMITS)
    sizes = [n for _, n in COMMITS]
    print(f"{args.backend} {args.variant} switch={sys.getswitchinterval()} "
          f"c={args.concurrency}: "
          f"{result['rps']} req/s, p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, "
          f"errors {result['errors']}; server cpu/req user "
          f"{result['server_user_ms_per_req']} ms + sys {result['server_sys_ms_per_req']} ms, "
          f"{result['ctx_switches_per_req']} context switches/req")
    print("  server CPU per publish by thread (ms): " + ", ".join(
        f"{k} {v}" for k, v in result["thread_cpu_ms_per_req"].items()))
    print(f"  {len(COMMITS)} group commits: batch mean {statistics.fmean(sizes):.1f} "
          f"max {max(sizes)}; commit wall mean {statistics.fmean(times):.2f} ms, "
          f"p50 {times[len(times) // 2]:.2f} ms, p90 {times[int(len(times) * 0.9)]:.2f} ms, "
          f"max {times[-1]:.2f} ms")
    print("  steps inside group commits (per commit: calls, mean ms, share of commit wall):")
    total = sum(times)
    for name, values in sorted(STEPS.items(), key=lambda kv: -sum(kv[1])):
        ms = [v * 1000 for v in values]
        print(f"    {name:<42} {len(ms) / len(COMMITS):5.2f} calls, "
              f"mean {statistics.fmean(ms):6.3f} ms, p50 {sorted(ms)[len(ms) // 2]:6.3f} ms, "
              f"{100 * sum(ms) / total:5.1f}%")
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
