"""Benchmark `chronicle audit --export` on a large, valid export file.

    python scripts/bench_audit.py                      # 1,000,000 entries (~690 MB)
    python scripts/bench_audit.py --entries 100000 --json

Generates (once, cached in --dir) an export document exactly as our server renders it:
real Ed25519 signatures by 16 publisher keys (signed in parallel with multiprocessing),
the BLAKE2b chain, PHP-pretty JSON, the document signed with the two-pass streaming
signer. Then runs the CLI on it as a subprocess and reports wall time, entries/s and peak
RSS — of the main process and of the whole process tree (signature workers included),
sampled from /proc every 50 ms.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from chronicle.core import protocol
from chronicle.core.blakechain import Entry
from chronicle.core.encoding import b64u_encode, utcnow
from chronicle.core.sapient import SigningKey, StreamingSigner

PUBLISHERS = 16
CHUNK = 1 << 20


def _key(name: str) -> SigningKey:
    return SigningKey.from_seed(hashlib.sha256(b"bench-audit " + name.encode()).digest())


def _contents(i: int) -> bytes:
    """A package-registry-like record (~200 bytes), as a publisher would sign it."""
    digest = hashlib.sha256(b"artifact %d" % i).hexdigest()
    return (f'{{"package": "pkg-{i % 50_000:05d}", "version": "{i // 50_000}.{i % 97}.{i % 13}",'
            f' "sha256": "{digest}", "url": "https:\\/\\/registry.example\\/p\\/{i}",'
            f' "now": "2026-01-01T00:00:00+00:00"}}').encode()


def _sign_range(bounds: tuple[int, int]) -> bytes:
    start, stop = bounds
    keys = [_key(f"publisher {k}") for k in range(PUBLISHERS)]
    return b"".join(keys[i % PUBLISHERS].sign(_contents(i)) for i in range(start, stop))


def generate(path: Path, entries: int) -> dict[str, str]:
    server = _key("server")
    keys = [_key(f"publisher {k}") for k in range(PUBLISHERS)]
    envelope = protocol.ok_envelope(utcnow(), None, total=entries)
    doc = protocol.StreamedDocument.for_envelope(envelope)
    signer = StreamingSigner(server)
    step = 20_000
    ranges = [(a, min(a + step, entries)) for a in range(0, entries, step)]
    prev: bytes | None = None
    summary = hashlib.blake2b(digest_size=32)
    created = "2026-01-01T00:00:00+00:00"
    last_summary = b""
    tmp = path.with_suffix(".tmp")
    started = time.monotonic()
    with multiprocessing.get_context("fork").Pool() as pool, tmp.open("wb") as out:
        def emit(text: str) -> None:
            data = text.encode("ascii")
            signer.first(data)
            out.write(data)

        first = True
        for (start, stop), sigs in zip(ranges, pool.imap(_sign_range, ranges), strict=True):
            parts = []
            for i in range(start, stop):
                contents = _contents(i)
                key = keys[i % PUBLISHERS]
                sig = sigs[(i - start) * 64:(i - start + 1) * 64]
                h = hashlib.blake2b(digest_size=32, key=prev or b"")
                for piece in (created.encode(), key.public, sig, contents):
                    h.update(piece)
                cur = h.digest()
                summary.update(cur)
                last_summary = summary.copy().digest()
                entry = Entry(i, contents, prev, cur, last_summary, b"", key.public, sig, created)
                parts.append(protocol.render_row_indented(entry, export=True))
                prev = cur
            emit((doc.head if first else ",\n") + ",\n".join(parts))
            first = False
            done = stop / entries
            print(f"\rgenerating: {stop:,}/{entries:,} ({done:.0%}, "
                  f"{time.monotonic() - started:.0f} s)", end="", file=sys.stderr, flush=True)
        emit(doc.empty if first else doc.tail)
    print(file=sys.stderr)
    with tmp.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            signer.second(chunk)
    os.replace(tmp, path)
    meta = {"entries": str(entries), "server-key": server.public_b64,
            "signature": b64u_encode(signer.signature()), "anchor": b64u_encode(last_summary)}
    path.with_suffix(".meta.json").write_text(json.dumps(meta, indent=2))
    return meta


class TreeSampler(threading.Thread):
    """Peak RSS of a process, and peak PSS summed over its whole tree, from /proc."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.peak_main = 0
        self.peak_tree = 0
        self.max_procs = 0
        self._stop_event = threading.Event()

    @staticmethod
    def _field_kb(path: str, name: str) -> int:
        try:
            with open(path) as fh:
                for line in fh:
                    if line.startswith(name):
                        return int(line.split()[1])
        except OSError:
            pass
        return 0

    def _rss_kb(self, pid: int) -> int:
        return self._field_kb(f"/proc/{pid}/status", "VmRSS:")

    def _pss_kb(self, pid: int) -> int:
        """Proportional set size: pages shared by forked workers counted once overall."""
        return self._field_kb(f"/proc/{pid}/smaps_rollup", "Pss:")

    def _tree(self) -> list[int]:
        children: dict[int, list[int]] = {}
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(name))
        tree, todo = [], [self.pid]
        while todo:
            pid = todo.pop()
            tree.append(pid)
            todo.extend(children.get(pid, []))
        return tree

    def run(self) -> None:
        while not self._stop_event.is_set():
            tree = self._tree()
            main = self._rss_kb(self.pid)
            self.peak_main = max(self.peak_main, main)
            self.peak_tree = max(self.peak_tree, sum(self._pss_kb(p) for p in tree))
            self.max_procs = max(self.max_procs, len(tree))
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def run_audit(path: Path, meta: dict[str, str], workers: int | None) -> dict[str, object]:
    cmd = [sys.executable, "-m", "chronicle.cli", "audit", "--export", str(path),
           "--server-key", meta["server-key"], "--signature", meta["signature"],
           "--anchor", meta["anchor"], "--json", "--no-progress"]
    if workers is not None:
        cmd += ["--workers", str(workers)]
    started = time.monotonic()
    cpu_before = os.times()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    sampler = TreeSampler(proc.pid)
    sampler.start()
    out, err = proc.communicate()
    wall = time.monotonic() - started
    sampler.stop()
    cpu_after = os.times()
    report = json.loads(out) if out.strip() else {}
    return {
        "command": " ".join(["chronicle", *cmd[3:]]),
        "exit_code": proc.returncode,
        "entries": report.get("entries"),
        "wall_seconds": round(wall, 2),
        "entries_per_second": round(int(meta["entries"]) / wall),
        "cpu_seconds_children": round((cpu_after.children_user - cpu_before.children_user)
                                      + (cpu_after.children_system
                                         - cpu_before.children_system), 2),
        "peak_rss_main_mb": round(sampler.peak_main / 1024, 1),
        "peak_pss_tree_mb": round(sampler.peak_tree / 1024, 1),
        "processes": sampler.max_procs,
        "file_mb": round(path.stat().st_size / 1e6, 1),
        "stderr": err.decode(errors="replace").strip()[-500:],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/chronicle-bench"))
    parser.add_argument("--regenerate", action="store_true")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    path = args.dir / f"export-{args.entries}.json"
    meta_path = path.with_suffix(".meta.json")
    if args.regenerate or not path.exists() or not meta_path.exists():
        t0 = time.monotonic()
        meta = generate(path, args.entries)
        print(f"generated {path} ({path.stat().st_size / 1e6:.0f} MB) in "
              f"{time.monotonic() - t0:.0f} s", file=sys.stderr)
    else:
        meta = json.loads(meta_path.read_text())
    # Warm the page cache so the run measures the auditor, not the disk.
    with path.open("rb") as fh:
        while fh.read(16 * CHUNK):
            pass
    results = [run_audit(path, meta, args.workers) for _ in range(args.runs)]
    for result in results:
        if args.json:
            print(json.dumps(result))
        else:
            print(f"audit of {result['entries']:,} entries ({result['file_mb']} MB): "
                  f"exit {result['exit_code']}, {result['wall_seconds']} s, "
                  f"{result['entries_per_second']:,} entries/s, peak RSS "
                  f"{result['peak_rss_main_mb']} MB (main process); all {result['processes']} "
                  f"processes together (PSS) {result['peak_pss_tree_mb']} MB")
            if result["exit_code"] != 0:
                print(result["stderr"], file=sys.stderr)
    return 0 if all(r["exit_code"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
