"""Checking what is installed against the synced state: a package version, an archive, a
git checkout, a whole ``composer.lock``.

For one package and version: a release exists and is not revoked; it was signed by a key
that was valid (added, not revoked) when the release entry was appended, and trusted under
the core-vendor policy (an emergency action the policy ignores does not make a key
trusted, nor a revocation count); when the sources are at hand, their recomputed tree
digest (and the dist archive's SHA-256 when the release names one) equals the release's.
A package whose vendor signs nothing on the ledger follows the unsigned policy of its
namespace. Each result is OK, a warning, or one fault class (:mod:`chronicle.verify.faults`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from chronicle.release.messages import normalize_version
from chronicle.release.sources import digest_archive, digest_directory, digest_git, resolve_commit
from chronicle.release.state import KeyRecord, UpdateKey, UpdateRecord
from chronicle.release.treedigest import TreeDigestError
from chronicle.verify.db import ReleaseDB
from chronicle.verify.faults import VerifyFault, worst
from chronicle.verify.statedir import Config, SyncState, UsageError
from chronicle.verify.sync import held_fault

_KEY_CODES = ("key-not-trusted", "key-revoked", "first-key-not-vouched", "limited-key-op",
              "unknown-vendor", "bad-signature")


@dataclass(frozen=True, slots=True)
class Source:
    """Where a release's sources are at hand: an archive file, a directory, or git."""

    kind: str          # "archive" | "directory" | "git"
    path: Path
    ref: str | None = None

    def digest(self) -> str:
        if self.kind == "git":
            return digest_git(self.path, self.ref or "HEAD")
        if self.kind == "directory":
            return digest_directory(self.path)
        return digest_archive(self.path)

    def describe(self) -> str:
        return f"{self.path}" + (f" at {self.ref}" if self.ref else "")


@dataclass
class Result:
    """One package's verdict: ``status`` is ``ok``, ``warn`` or a fault kind."""

    package: str
    version: str
    status: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return self.status not in ("ok", "warn")

    def line(self) -> str:
        label = {"ok": "OK", "warn": "WARN"}.get(self.status, "FAIL")
        return f"{label} {self.package} {self.version}: {self.message}"

    def as_dict(self) -> dict[str, Any]:
        return {"package": self.package, "version": self.version, "status": self.status,
                "message": self.message, **self.details}


class Checker:
    """Checks against one synced state and one policy."""

    def __init__(self, config: Config, sync: SyncState, release: ReleaseDB) -> None:
        if sync.halt is not None:
            raise VerifyFault("split-view", f"the last sync stopped on a split view: "
                              f"{sync.halt.get('message')}", evidence=sync.halt.get("evidence"))
        if sync.held():
            raise held_fault(sync)
        waiting = sum(1 for _ in release.pending())
        if waiting:
            # Verified after an item held for review, not judged yet: one of them may be a
            # revocation. A sync applies them (an --offline check cannot).
            one = waiting == 1
            raise VerifyFault("stale", f"{waiting} verified entr{'y' if one else 'ies'} after "
                              f"a reviewed item {'is' if one else 'are'} not applied yet: run "
                              "chronicle verify sync", unjudged=waiting)
        self.config, self.sync, self.release = config, sync, release
        self.ignored = {i for i, d in sync.decisions("emergency").items() if d == "skip"}
        self._tainted: dict[str, set[str]] = {}

    def tainted(self, vendor: str) -> set[str]:
        """Keys of ``vendor`` trusted only through an emergency action the policy ignores
        (added by it, or added by such a key)."""
        if vendor not in self._tainted:
            bad: set[str] = set()
            for k in self.release.vendor_keys(vendor):
                if (k.added_emergency and k.added.index in self.ignored) or k.added_by in bad:
                    bad.add(k.publickey)
            self._tainted[vendor] = bad
        return self._tainted[vendor]

    def check(self, package: str, version: str, source: Source | None = None,
              dist_sha256_of: Path | None = None) -> Result:
        vendor, _, name = package.partition("/")
        fail = _Fail(package, version)
        if not vendor or not name:
            return fail("unknown-release", f"{package!r} is not a Composer package name "
                        "(vendor/name)")
        signed_vendor = bool(self.release.vendor_keys(vendor))
        try:
            version_key = normalize_version(version)
        except ValueError:
            version_key = None
        update = (None if version_key is None
                  else self.release.update(UpdateKey(vendor, name, version_key)))
        if update is None:
            refused = (None if version_key is None else
                       self.sync.refused_releases.get(f"{package} {version_key}"))
            if refused is not None:
                kind = "untrusted-key" if refused["code"] in _KEY_CODES else "unknown-release"
                return fail(kind, f"the release at entry {refused['index']} was refused by "
                            f"the rules ({refused['code']}): {refused['message']}",
                            index=refused["index"])
            if not signed_vendor:
                return self._unsigned(package, version, vendor)
            if version_key is None:
                return fail("unknown-release", f"{version} is not a release version: vendor "
                            f"{vendor} signs releases, and there is none for it")
            return fail("unknown-release", f"no release {package} {version} on the ledger "
                        f"(vendor {vendor} has {self._count(vendor, name)} release(s) of "
                        f"{name})")
        problem = self._authority(update, fail)
        if problem is not None:
            return problem
        return self._sources(update, source, dist_sha256_of, fail)

    def commit_of(self, package: str, version: str) -> str | None:
        """The commit the release names, if there is such a release."""
        vendor, _, name = package.partition("/")
        try:
            update = self.release.update(UpdateKey(vendor, name, normalize_version(version)))
        except ValueError:
            return None
        return None if update is None else update.metadata.commit

    def _count(self, vendor: str, name: str) -> int:
        return self.release.releases_of(vendor, name)

    def _unsigned(self, package: str, version: str, vendor: str) -> Result:
        policy = self.config.unsigned_policy(vendor)
        text = f"vendor {vendor} signs nothing on the ledger (unsigned policy {policy})"
        if policy == "deny":
            return _Fail(package, version)("unsigned-denied", text)
        return Result(package, version, "ok" if policy == "allow" else "warn", text,
                      {"signed": False})

    def _authority(self, update: UpdateRecord, fail: _Fail) -> Result | None:
        at = update.at.index
        if update.revoked is not None and not (update.revoked_emergency
                                               and update.revoked.index in self.ignored):
            return fail("revoked-release", f"revoked at entry {update.revoked.index}: "
                        f"{update.revoke_reason}", index=at, revoked=update.revoked.index)
        if update.emergency and at in self.ignored:
            return fail("untrusted-key", f"released at entry {at} by the core vendor's key "
                        f"{update.signer} for vendor {update.vendor}, an emergency action the "
                        f"core-vendor policy ignores", index=at, key=update.signer)
        ledger = self.release.ledger()
        owner = ledger.core_vendor if update.emergency and ledger else update.vendor
        record = _find(self.release.vendor_keys(owner), update.signer)
        if record is None:
            return fail("untrusted-key", f"key {update.signer} of the release at entry {at} "
                        f"is not a key of vendor {owner}", index=at, key=update.signer)
        if record.added.index >= at:
            return fail("untrusted-key", f"key {update.signer} was added at entry "
                        f"{record.added.index}, after the release at entry {at}: it was not "
                        "valid when the release was appended", index=at, key=update.signer)
        if (record.revoked is not None and record.revoked.index < at
                and not (record.revoked_emergency and record.revoked.index in self.ignored)):
            return fail("untrusted-key", f"key {update.signer} was revoked at entry "
                        f"{record.revoked.index}, before the release at entry {at}",
                        index=at, key=update.signer)
        if update.signer in self.tainted(owner):
            return fail("untrusted-key", f"key {update.signer} of vendor {owner} was added "
                        "through a core-vendor emergency action the policy ignores",
                        index=at, key=update.signer)
        return None

    def _sources(self, update: UpdateRecord, source: Source | None,
                 dist_file: Path | None, fail: _Fail) -> Result:
        meta = update.metadata
        info: dict[str, Any] = {"index": update.at.index, "key": update.signer,
                                "tree": meta.tree, "signed": True}
        where = f"entry {update.at.index}, key {update.signer}"
        if update.emergency:
            where += " (core vendor, emergency action applied by policy)"
        if source is None:
            return Result(fail.package, fail.version, "ok",
                          f"{where}; no sources at hand, digest not checked",
                          {**info, "digest": "not-checked"})
        if meta.tree is None:
            if dist_file is not None and meta.dist_sha256 is not None:
                mismatch = _dist_mismatch(dist_file, meta.dist_sha256, fail, info)
                if mismatch is not None:
                    return mismatch
                return Result(fail.package, fail.version, "ok",
                              f"{where}; the archive's SHA-256 verified (the release "
                              "carries no tree digest)", {**info, "digest": "dist-sha256"})
            return Result(fail.package, fail.version, "warn",
                          f"{where}; the release carries no tree digest (Herd-style "
                          "metadata): sources not checked", {**info, "digest": "none"})
        try:
            found = source.digest()
        except TreeDigestError as exc:
            return fail("digest-mismatch", f"cannot compute the tree digest of "
                        f"{source.describe()}: {exc.message}", **info)
        if found != meta.tree:
            return fail("digest-mismatch", f"the tree digest of {source.describe()} is "
                        f"{found}, the release (entry {update.at.index}) says {meta.tree}",
                        found=found, **info)
        if dist_file is not None and meta.dist_sha256 is not None:
            mismatch = _dist_mismatch(dist_file, meta.dist_sha256, fail, info)
            if mismatch is not None:
                return mismatch
        extra = ""
        if source.kind == "git" and meta.commit is not None:
            commit = resolve_commit(source.path, source.ref or "HEAD")
            info["commit"] = commit
            if commit != meta.commit:
                extra = f" (from commit {commit}, the release names {meta.commit})"
        return Result(fail.package, fail.version, "ok",
                      f"{where}; tree digest verified{extra}", {**info, "digest": "verified"})


def _dist_mismatch(dist_file: Path, want: str, fail: _Fail, info: dict[str, Any]
                   ) -> Result | None:
    """The digest-mismatch result if the archive's SHA-256 is not the release's."""
    sha = hashlib.sha256(dist_file.read_bytes()).hexdigest()
    if sha != want:
        return fail("digest-mismatch", f"the SHA-256 of {dist_file} is {sha}, the release "
                    f"says {want}", **info)
    return None


class _Fail:
    def __init__(self, package: str, version: str) -> None:
        self.package, self.version = package, version

    def __call__(self, kind: str, message: str, **details: Any) -> Result:
        return Result(self.package, self.version, kind, message, details)


def _find(keys: Iterable[KeyRecord], publickey: str) -> KeyRecord | None:
    return next((k for k in keys if k.publickey == publickey), None)


# --- composer.lock --------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Locked:
    """One package of a lock file."""

    name: str
    version: str
    dist: dict[str, Any]
    dev: bool


def read_lock(path: Path) -> list[Locked]:
    """The packages (and dev packages) of a ``composer.lock``; a usage error if it is not one."""
    try:
        doc = json.loads(path.read_bytes())
    except ValueError as exc:
        raise UsageError(f"{path}: not JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("packages"), list):
        raise UsageError(f"{path}: not a composer.lock (no \"packages\" list)")
    out: list[Locked] = []
    for section, dev in (("packages", False), ("packages-dev", True)):
        for i, pkg in enumerate(doc.get(section) or []):
            if (not isinstance(pkg, dict) or not isinstance(pkg.get("name"), str)
                    or not isinstance(pkg.get("version"), str)):
                raise UsageError(f"{path}: {section}[{i}] has no name and version")
            raw = pkg.get("dist")
            dist: dict[str, Any] = raw if isinstance(raw, dict) else {}
            out.append(Locked(pkg["name"].lower(), pkg["version"], dist, dev))
    return out


def dist_candidates(cache: Path, pkg: Locked) -> list[Path]:
    """Where Composer's cache keeps the package's dist archive: ``files/NAME/`` +
    ``sha1(dist url).TYPE`` (Composer 2) or ``REFERENCE.TYPE`` (Composer 1); ``cache`` may
    be the cache root or its ``files`` folder."""
    kind = str(pkg.dist.get("type") or "zip")
    names = []
    url = pkg.dist.get("url")
    if isinstance(url, str) and url:
        names.append(hashlib.sha1(url.encode(), usedforsecurity=False).hexdigest())
    ref = pkg.dist.get("reference")
    if isinstance(ref, str) and ref and "/" not in ref and ".." not in ref:
        names.append(ref)
    return [base / pkg.name / f"{n}.{kind}" for base in (cache / "files", cache)
            for n in names]


def check_lock(checker: Checker, packages: list[Locked], *, dist_dir: Path | None,
               vendor_dir: Path | None) -> tuple[list[Result], str | None]:
    """Every package checked; the results and the fault kind that decides the exit code."""
    results = []
    for pkg in packages:
        # Both copies when both are at hand: the cached archive and the installed code that
        # actually runs; the first that does not check out is the package's result.
        sources: list[tuple[Source, Path | None]] = []
        if dist_dir is not None:
            dist_file = next((p for p in dist_candidates(dist_dir, pkg) if p.is_file()), None)
            if dist_file is not None:
                sources.append((Source("archive", dist_file), dist_file))
        if vendor_dir is not None and (vendor_dir / pkg.name).is_dir():
            sources.append((Source("directory", vendor_dir / pkg.name), None))
        result = checker.check(pkg.name, pkg.version, None, None) if not sources else None
        for source, dist_file in sources:
            result = checker.check(pkg.name, pkg.version, source, dist_file)
            if result.status != "ok":
                break
        assert result is not None
        if len(sources) == 2 and result.status == "ok":
            result = replace(result, message=result.message + "; the archive "
                                         "and the installed folder both checked")
        results.append(result)
    return results, worst([r.status for r in results if r.failed])
