"""``chronicle verify …``: the verifying client for people who install packages.

init (pin the ledger, mirrors and policy in a state directory), sync (incremental,
verified, judged by the gate's rules, quorum over mirrors), review (decide what a sync
held), lock (a composer.lock), archive and reproduce (one artifact). Exit codes: cli.md's
0/1/2/3 and the fault classes 10-18 of :mod:`chronicle.verify.faults` (docs/verify.md).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from datetime import timedelta
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click

from chronicle.cli.common import (
    EXIT_IO,
    EXIT_USAGE,
    exit_with_error,
    fail,
    format_options,
    handle_errors,
    json_option,
    out,
    report_errors_as_json,
)
from chronicle.core.encoding import atom, utcnow
from chronicle.verify.check import Checker, Result, Source, check_lock, read_lock
from chronicle.verify.db import BusyError
from chronicle.verify.faults import FAULT_CLASSES, FAULT_CODES, VerifyFault
from chronicle.verify.statedir import (
    CORE_VENDOR_POLICIES,
    DEFAULT_MAX_AGE,
    UNSIGNED_POLICIES,
    Config,
    Mirror,
    StateDir,
    StateFileError,
    SyncState,
    UsageError,
    parse_duration,
)
from chronicle.verify.sync import SyncReport, sync_state

F = TypeVar("F", bound=Callable[..., Any])

_CODES_HELP = "Exit codes: 0 verified; 1 refused; 2 usage; 3 transport/I/O; " + "; ".join(
    f"{f.code} {f.kind}" for f in sorted(FAULT_CLASSES, key=lambda f: f.code)) + "."


def verify_errors(command: F) -> F:
    """Our refusals with their exit codes: a fault class (10-18), a usage problem (2), a
    damaged state directory (3); with ``--json`` also one error object on stdout."""

    @wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except VerifyFault as exc:
            _json_error(kwargs, {"class": exc.kind, **exc.details})
            fail(exc.message, exc.code)
        except UsageError as exc:
            _json_error(kwargs, {})
            fail(exc.message, EXIT_USAGE)
        except (StateFileError, BusyError) as exc:
            _json_error(kwargs, {})
            fail(exc.message, EXIT_IO)
        except sqlite3.Error as exc:
            _json_error(kwargs, {})
            fail(f"{kwargs.get('state')}/state.db: {exc}", EXIT_IO)

    return handle_errors(wrapper)  # type: ignore[return-value]


def _json_error(kwargs: dict[str, Any], details: dict[str, Any]) -> None:
    if kwargs.get("as_json") or kwargs.get("fmt") == "json":
        report_errors_as_json({"command": click.get_current_context().command_path,
                               **details})


def state_option(fn: F) -> F:
    return click.option("--state", "state", required=True,
                        type=click.Path(file_okay=False, path_type=Path),
                        help="The verify state directory (made by chronicle verify init).")(fn)


def offline_options(fn: F) -> F:
    fn = click.option("--wait", type=click.FloatRange(0), default=0.0, show_default=True,
                      help="Seconds to wait for mirrors that are behind before warning.")(fn)
    fn = click.option("--max-age", default=None, metavar="DURATION",
                      help="With --offline: the oldest last sync accepted (e.g. 30m, 24h; "
                      "default: the state's max-age).")(fn)
    return click.option("--offline", is_flag=True,
                        help="Do not sync: use the last sync if younger than --max-age, else "
                        "refuse (exit 17).")(fn)


# --- init ---------------------------------------------------------------------------------

@click.group()
def verify() -> None:
    """Verify packages against a release ledger before installing them."""


@verify.command("init", epilog=_CODES_HELP)
@state_option
@click.option("--url", required=True, help="The release ledger's base URL (without "
              "/chronicle), or a replica path (…/chronicle/replica/ID).")
@click.option("--server-key", required=True, help="The ledger's public key (base64url), "
              "pinned: every answer must be signed by it.")
@click.option("--mirror", "mirrors", multiple=True, metavar="URL#PK",
              help="A mirror (Chronicle base URL or replica path) and its key; repeatable.")
@click.option("--quorum", type=click.IntRange(0), default=0, show_default=True,
              help="How many mirrors must confirm our head on every sync.")
@click.option("--core-vendor", type=click.Choice(CORE_VENDOR_POLICIES), default="review",
              show_default=True, help="The core vendor acting for another vendor: off "
              "ignores it, review holds it for verify review, auto applies it (and says so).")
@click.option("--unsigned", type=click.Choice(UNSIGNED_POLICIES), default="warn",
              show_default=True, help="Packages whose vendor signs nothing on the ledger.")
@click.option("--namespace-policy", "namespace_policy", multiple=True, metavar="VENDOR=POLICY",
              help="--unsigned for one vendor namespace (allow|warn|deny); repeatable.")
@click.option("--max-age", default=None, metavar="DURATION",
              help="How old the last sync may be for --offline checks (default 24h).")
@click.option("--tlog", default=None, metavar="VKEY",
              help="The ledger's checkpoint key (its Merkle tree): every sync holds the "
              "entries to its signed checkpoint and checks consistency with the last one.")
@json_option
@verify_errors
def init_cmd(state: Path, url: str, server_key: str, mirrors: tuple[str, ...], quorum: int,
             core_vendor: str, unsigned: str, namespace_policy: tuple[str, ...],
             max_age: str | None, tlog: str | None, as_json: bool) -> None:
    """Create a state directory pinning the ledger's key, mirrors and policy."""
    config = Config(url=url.strip(), server_key=server_key.strip(),
                    mirrors=tuple(Mirror.parse(m) for m in mirrors), quorum=quorum,
                    core_vendor=core_vendor, unsigned=unsigned,
                    namespace_policy=Config.parse_namespace_policy(namespace_policy),
                    max_age=DEFAULT_MAX_AGE if max_age is None else parse_duration(max_age),
                    tlog=None if tlog is None else tlog.strip())
    StateDir(state).create(config)
    out(as_json, {"state": str(state), **config.as_dict()},
        f"verify state in {state}: ledger {config.url}, {len(config.mirrors)} mirror(s), "
        f"quorum {config.quorum}, core-vendor {config.core_vendor}, unsigned "
        f"{config.unsigned}")


# --- sync ---------------------------------------------------------------------------------

def _open(state: Path) -> StateDir:
    """The state directory, its database closed when the command ends."""
    state_dir = StateDir(state)
    click.get_current_context().call_on_close(state_dir.close)
    return state_dir


def _stale_check(state_dir: StateDir, max_age: str | None, sync: SyncState
                 ) -> dict[str, Any]:
    """--offline: the last sync's age, or the stale fault if it is older than the limit."""
    config = state_dir.config()
    limit = config.max_age if max_age is None else parse_duration(max_age)
    age = sync.age(utcnow())
    if age is None:
        raise VerifyFault("stale", "--offline: this state was never synced")
    if age > timedelta(seconds=limit):
        raise VerifyFault("stale", f"--offline: the last sync was at {sync.synced_at}, "
                          f"{int(age.total_seconds())} s ago, older than --max-age {limit} s",
                          age=int(age.total_seconds()), max_age=limit)
    return {"synced-at": sync.synced_at, "age": int(age.total_seconds()), "max-age": limit}


def _run_sync(state_dir: StateDir, wait: float) -> SyncReport:
    return asyncio.run(sync_state(
        state_dir, wait=wait, on_warning=lambda text: click.echo(f"warning: {text}",
                                                                  err=True)))


def _sync_text(report: SyncReport) -> str:
    head = report.head
    lines = [f"fetched {report.fetched}, verified {report.verified}, judged {report.judged} "
             f"entries; head " + ("(empty chain)" if head is None else
                                  f"{head['index']} {head['summaryhash']}")]
    lines += [f"mirror {m.url}: {m.status}" + (f" ({m.detail})" if m.detail else "")
              for m in report.mirrors]
    if report.tlog is not None:
        lines.append(f"tlog: the entries match the signed checkpoint of "
                     f"{report.tlog['origin']} at size {report.tlog['tree-size']}")
    s = report.summary
    lines.append(f"{s.get('vendors', 0)} vendor(s), {s.get('updates', 0)} release(s), "
                 f"{s.get('violations', 0)} violation(s), "
                 f"{s.get('emergency-actions', 0)} emergency action(s)")
    lines += [f"held #{i.id}: {i.message}" for i in report.held()]
    return "\n".join(lines)


@verify.command("sync", epilog=_CODES_HELP)
@state_option
@offline_options
@json_option
@verify_errors
def sync_cmd(state: Path, offline: bool, max_age: str | None, wait: float,
             as_json: bool) -> None:
    """Fetch and verify the new entries, rebuild the release state, ask the mirrors."""
    state_dir = _open(state)
    if offline:
        info = _stale_check(state_dir, max_age, state_dir.load_sync(
            state_dir.config().server_key))
        out(as_json, {"ok": True, "offline": True, **info},
            f"offline: last sync at {info['synced-at']} ({info['age']} s ago)")
        return
    report = _run_sync(state_dir, wait)
    held = report.held()
    out(as_json, {"ok": not held, **report.as_dict()}, _sync_text(report))
    if held:
        exit_with_error(f"{len(held)} item(s) held for review, first #{held[0].id}: "
                        f"{held[0].message} (decide with chronicle verify review)",
                        FAULT_CODES["held-for-review"])


# --- review -------------------------------------------------------------------------------

@verify.command("review", epilog=_CODES_HELP)
@state_option
@click.option("--accept", "accept", multiple=True, type=int, metavar="ID",
              help="Accept item ID: an emergency action is applied; a violation is "
              "acknowledged (the entry stays refused) and the sync goes on. Repeatable.")
@click.option("--skip", "skip", multiple=True, type=int, metavar="ID",
              help="Skip item ID: an emergency action is ignored; a violation is passed over "
              "(the entry stays refused). Repeatable.")
@click.option("--all", "show_all", is_flag=True, help="List decided items too.")
@json_option
@verify_errors
def review_cmd(state: Path, accept: tuple[int, ...], skip: tuple[int, ...], show_all: bool,
               as_json: bool) -> None:
    """List the items a sync held for review, or decide them."""
    state_dir = _open(state)
    config = state_dir.config()
    sync = state_dir.load_sync(config.server_key)
    both = set(accept) & set(skip)
    if both:
        raise UsageError(f"item {min(both)} cannot be both accepted and skipped")
    items = {i.id: i for i in sync.reviews}
    now = atom(utcnow())
    for ident, decision in [(a, "accept") for a in accept] + [(s, "skip") for s in skip]:
        item = items.get(ident)
        if item is None:
            raise UsageError(f"there is no review item {ident}")
        if item.decision is not None:
            raise UsageError(f"item {ident} was already decided: {item.decision} "
                             f"(by {item.by})")
        item.decision, item.by, item.decided_at = decision, "review", now
    if accept or skip:
        state_dir.save_sync(sync, config.server_key)
    shown = [i for i in sync.reviews if show_all or i.decision is None or i.id in
             set(accept) | set(skip)]
    text = "\n".join(f"#{i.id} [{i.kind}] {i.decision or 'HELD'}: {i.message}"
                     for i in shown) or "nothing held for review"
    out(as_json, {"held": len(sync.held()), "items": [i.as_dict() for i in shown]}, text)


# --- checks -------------------------------------------------------------------------------

def _checker(state: Path, offline: bool, max_age: str | None, wait: float) -> Checker:
    state_dir = _open(state)
    config = state_dir.config()
    if offline:
        _stale_check(state_dir, max_age, state_dir.load_sync(config.server_key))
    else:
        _run_sync(state_dir, wait)
    return Checker(config, state_dir.load_sync(config.server_key),
                   state_dir.db(config.server_key))


def _finish(results: list[Result], worst_kind: str | None, as_json: bool) -> None:
    counts = {s: sum(1 for r in results if r.status == s) for s in ("ok", "warn")}
    failed = [r for r in results if r.failed]
    summary = {"packages": len(results), "ok": counts["ok"], "warnings": counts["warn"],
               "failed": len(failed)}
    code = 0 if worst_kind is None else FAULT_CODES[worst_kind]
    if as_json:
        out(True, {"ok": not failed, "exit-code": code, "fault": worst_kind,
                   "summary": summary, "packages": [r.as_dict() for r in results]}, "")
    else:
        for r in results:
            click.echo(r.line())
        click.echo(f"{summary['packages']} package(s): {summary['ok']} OK, "
                   f"{summary['warnings']} warning(s), {summary['failed']} failed")
    if worst_kind is not None:
        first = next(r for r in failed if r.status == worst_kind)
        exit_with_error(f"{len(failed)} package(s) failed verification ({worst_kind}): "
                        f"{first.package} {first.version}: {first.message}", code)


@verify.command("lock", epilog=_CODES_HELP)
@click.argument("lockfile", type=click.Path(dir_okay=False, path_type=Path))
@state_option
@click.option("--dist-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Composer's cache (or its files/ folder): dist archives are checked "
              "against the release's tree digest.")
@click.option("--vendor-dir", type=click.Path(file_okay=False, path_type=Path),
              help="An installed vendor/ directory: each package's folder is checked "
              "against the release's tree digest.")
@offline_options
@format_options
@verify_errors
def lock_cmd(lockfile: Path, state: Path, dist_dir: Path | None, vendor_dir: Path | None,
             offline: bool, max_age: str | None, wait: float, fmt: str,
             as_json: bool) -> None:
    """Check every package of a composer.lock: OK or the precise reason, one line each."""
    packages = read_lock(lockfile)
    checker = _checker(state, offline, max_age, wait)
    results, worst_kind = check_lock(checker, packages, dist_dir=dist_dir,
                                     vendor_dir=vendor_dir)
    _finish(results, worst_kind, as_json or fmt == "json")


def _package_options(fn: F) -> F:
    fn = click.option("--version", "version", required=True,
                      help="The Composer version (e.g. 1.2.0 or v1.2.0).")(fn)
    return click.option("--package", required=True, help="The package, vendor/name.")(fn)


@verify.command("archive", epilog=_CODES_HELP)
@click.argument("file", type=click.Path(exists=True, path_type=Path))
@_package_options
@state_option
@offline_options
@json_option
@verify_errors
def archive_cmd(file: Path, package: str, version: str, state: Path, offline: bool,
                max_age: str | None, wait: float, as_json: bool) -> None:
    """Check one dist archive (zip, tar, tar.gz) or unpacked directory against its release."""
    checker = _checker(state, offline, max_age, wait)
    source = Source("directory" if file.is_dir() else "archive", file)
    result = checker.check(package.lower(), version, source,
                           None if file.is_dir() else file)
    _finish([result], result.status if result.failed else None, as_json)


@verify.command("reproduce", epilog=_CODES_HELP)
@click.option("--git", "git_dir", required=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A git checkout of the package's repository.")
@click.option("--ref", default=None, help="The tag or commit to digest (default: the commit "
              "the release names, else HEAD).")
@_package_options
@state_option
@offline_options
@json_option
@verify_errors
def reproduce_cmd(git_dir: Path, ref: str | None, package: str, version: str, state: Path,
                  offline: bool, max_age: str | None, wait: float, as_json: bool) -> None:
    """Rebuild a release's tree digest from git, as git archive would list the commit."""
    checker = _checker(state, offline, max_age, wait)
    if ref is None:
        ref = checker.commit_of(package.lower(), version) or "HEAD"
    result = checker.check(package.lower(), version, Source("git", git_dir, ref))
    _finish([result], result.status if result.failed else None, as_json)
