"""Interleaved A/B runs of ``bench_publish.py``: two chronicle trees, the same load.

    git archive main chronicle | tar -x -C /tmp/base
    python scripts/bench_ab.py --base /tmp/base --runs 5 -- -n 5000 --levels 16 --tlog \\
        --backend sqlite postgres

``--base`` is a directory holding a ``chronicle`` package (a snapshot, "A"); "B" is
``--other`` or else the chronicle this interpreter imports (the working tree). Each pair
runs A and B back to back, in alternating order (A B, B A, …), so a drift of the shared
machine hits both alike. It prints every run's figures and then, per target, the medians
of req/s, of p99, of the share of the ceiling measured in the same run, of PostgreSQL
over SQLite in the same run, and of B/A pair by pair. Any error or stored-chain mismatch in a run is
reported and makes the exit status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

Key = tuple[str, str, int, int]  # label, backend, workers, concurrency


def _run(side: str, base: Path | None, passthrough: list[str], out: Path) -> dict[str, Any]:
    env = dict(os.environ)
    if base is not None:
        env["PYTHONPATH"] = f"{base}{os.pathsep}{env.get('PYTHONPATH', '')}".rstrip(os.pathsep)
    argv = [sys.executable, str(HERE / "bench_publish.py"), *passthrough, "--json-out", str(out)]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if not out.exists():
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"{side}: bench_publish failed ({proc.returncode})")
    return dict(json.loads(out.read_text()))


def _figures(doc: dict[str, Any]) -> dict[Key, dict[str, Any]]:
    return {(r["label"], r["backend"], r["workers"], r["concurrency"]): r for r in doc["rows"]}


def _share(figs: dict[Key, dict[str, Any]], key: Key) -> float | None:
    ceiling = figs.get(("ceiling", "-", key[2], key[3]))
    return figs[key]["rps"] / ceiling["rps"] if ceiling and key[0] != "ceiling" else None


def _pg_share(figs: dict[Key, dict[str, Any]], key: Key) -> float | None:
    sqlite = figs.get(("chronicle", "sqlite", key[2], key[3]))
    return figs[key]["rps"] / sqlite["rps"] if sqlite and key[1] == "postgres" else None


def _cpu_ms(doc_warmup: int, r: dict[str, Any]) -> float:
    """Server (and database) CPU per request, in ms, warm-up included as measured."""
    return 1000 * (r["server_cpu_s"] + r.get("db_cpu_s", 0.0)) / (r["requests"] + doc_warmup)


def _med(values: list[float | None], digits: int = 2) -> str:
    got = [v for v in values if v is not None]
    return f"{statistics.median(got):.{digits}f}" if got else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--summarize", type=Path, metavar="DIR",
                        help="only print the summary of the runs saved in DIR (--out of an "
                             "earlier call)")
    parser.add_argument("--base", type=Path,
                        help="directory holding the chronicle package of side A")
    parser.add_argument("--other", type=Path,
                        help="directory holding the chronicle package of side B (default: "
                             "the chronicle this interpreter imports)")
    parser.add_argument("--runs", type=int, default=5, help="pairs of runs")
    parser.add_argument("--out", type=Path, help="directory for each run's JSON")
    parser.add_argument("passthrough", nargs=argparse.REMAINDER,
                        help="-- then the arguments of bench_publish.py")
    args = parser.parse_args(argv)
    if args.summarize is not None:
        runs = {side: [_figures(json.loads((args.summarize / f"{side}{n}.json").read_text()))
                       for n in range(100)
                       if (args.summarize / f"{side}{n}.json").exists()] for side in "AB"}
        doc = json.loads(next(args.summarize.glob("A*.json")).read_text())
        _summary(runs, int(doc["args"]["warmup"]), args.summarize)
        return 0
    if args.base is None:
        parser.error("--base is required")
    for opt, where in (("--base", args.base), ("--other", args.other)):
        if where is not None and not (where / "chronicle" / "__init__.py").is_file():
            parser.error(f"{opt} {where}: no chronicle package there")
    passthrough = [a for a in args.passthrough if a != "--"]
    warmup = int(passthrough[passthrough.index("--warmup") + 1]) \
        if "--warmup" in passthrough else 200
    out = args.out or Path(tempfile.mkdtemp(prefix="chronicle-bench-ab-"))
    out.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict[Key, dict[str, Any]]]] = {"A": [], "B": []}
    failed = False
    for pair in range(args.runs):
        order = ("A", "B") if pair % 2 == 0 else ("B", "A")
        for side in order:
            doc = _run(side, args.base if side == "A" else args.other, passthrough,
                       out / f"{side}{pair}.json")
            figs = _figures(doc)
            runs[side].append(figs)
            for key, r in sorted(figs.items()):
                bad = r["errors"] or r.get("stored_problems")
                failed = failed or bool(bad)
                share = _share(figs, key)
                print(f"pair {pair} {side} {doc['started'][11:19]} {key[0]:9} {key[1]:8} "
                      f"w{key[2]} c{key[3]}: {r['rps']:7.0f} req/s p99 {r['p99_ms']:6.1f} ms"
                      + (f" {share:.0%} of ceiling" if share else "")
                      + f" others {r['other_share']:.0%}"
                      + (f" ERRORS/MISMATCH {r['errors']} {r.get('stored_problems')}"
                         if bad else ""), flush=True)
    _summary(runs, warmup, out)
    return 1 if failed else 0


def _summary(runs: dict[str, list[dict[Key, dict[str, Any]]]], warmup: int, out: Path) -> None:
    print()
    print("| target | backend | processes | c | A req/s | B req/s | B/A (paired) | A p99 ms "
          "| B p99 ms | A / ceiling | B / ceiling | A pg/sqlite | B pg/sqlite "
          "| A CPU ms/req | B CPU ms/req |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for key in sorted(runs["A"][0]):
        a = [f[key] for f in runs["A"] if key in f]
        b = [f[key] for f in runs["B"] if key in f]
        paired = [fb[key]["rps"] / fa[key]["rps"] for fa, fb in zip(runs["A"], runs["B"],
                                                                   strict=False)
                  if key in fa and key in fb]
        print(f"| {key[0]} | {key[1]} | {key[2]} | {key[3]} "
              f"| {_med([r['rps'] for r in a])} | {_med([r['rps'] for r in b])} "
              f"| {_med(list(paired))} | {_med([r['p99_ms'] for r in a])} "
              f"| {_med([r['p99_ms'] for r in b])} "
              f"| {_med([_share(f, key) for f in runs['A'] if key in f])} "
              f"| {_med([_share(f, key) for f in runs['B'] if key in f])} "
              f"| {_med([_pg_share(f, key) for f in runs['A'] if key in f])} "
              f"| {_med([_pg_share(f, key) for f in runs['B'] if key in f])} "
              f"| {_med([_cpu_ms(warmup, r) for r in a], 3)} "
              f"| {_med([_cpu_ms(warmup, r) for r in b], 3)} |")
    others = [r["other_share"] for side in runs.values() for f in side for r in f.values()]
    print(f"\nothers' share of the machine during the runs: median {_med(list(others))}, "
          f"max {max(others):.2f}; JSON under {out}")


if __name__ == "__main__":
    sys.exit(main())
