"""`scripts/release_demo.py` as a user runs it, on both backends: it exits 0, the honest
story verifies, and every attack is refused with verify's exact message and exit code."""

from __future__ import annotations

import re
import subprocess
import sys

from tests import helpers
from tests.helpers import REPO_ROOT

KEY = r"[A-Za-z0-9_-]{43}="
ATTACKS = {
    "tampered-archive": (13, r"1 package\(s\) failed verification \(digest-mismatch\): "
                         r"acme/widget 1\.0\.0: the tree digest of \S+/tampered-cache/files/"
                         rf"acme/widget/[0-9a-f]{{40}}\.zip is b3t1:{KEY}, the release "
                         rf"\(entry 6\) says b3t1:{KEY}"),
    "revoked-key": (16, r"1 item\(s\) held for review, first #1: entry 9 breaks the release "
                    rf"rules \(key-revoked\): key (?P<ci>{KEY}) of vendor acme was revoked at "
                    r"entry 7 \(decide with chronicle verify review\)"),
    "revoked-key-mirrors": (18, re.escape("only 0 of 2 mirrors confirm our head (quorum 2); "
                                          "nothing was saved")),
    "split-view": (15, r"split view: mirror http://127\.0\.0\.1:\d+/chronicle/replica/"
                   rf"[A-Za-z0-9_-]+ answers currhash {KEY} for our head, ours is {KEY}; "
                   r"evidence in \S+/evidence/split-view-\S+\.json"),
    "core-vendor-override-off": (12, r"1 package\(s\) failed verification \(untrusted-key\): "
                                 rf"acme/widget 2\.0\.0: key (?P<rescue>{KEY}) of vendor acme "
                                 "was added through a core-vendor emergency action the policy "
                                 "ignores"),
    "core-vendor-override-review": (16, re.escape(
        "1 item(s) held for review, first #1: entry 8: the core vendor's key acted for vendor "
        "acme (add-key), an emergency action (decide with chronicle verify review)")),
}


def test_the_demo_refuses_every_attack() -> None:
    run = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "release_demo.py"),
                          "--database", helpers.DATABASE["url"]],
                         capture_output=True, text=True, timeout=400, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    out = run.stdout
    lines = out.splitlines()
    # the honest story
    ci = re.search(rf"^acme: add-key ({KEY}) to acme \(limited\)$", out, re.M)
    assert ci is not None, out
    assert (f"the gate: the CI key adding a key -> exit 1: server refused (HTTP 403): key "
            f"{ci[1]} of vendor acme is limited: it may only sign update for acme") in lines
    assert f"  OK acme/widget 1.0.0: entry 6, key {ci[1]}; tree digest verified" in lines
    assert (f"the honest gate refuses the thief's release -> exit 1: server refused (HTTP "
            f"403): key {ci[1]} of vendor acme was revoked at entry 7") in lines
    # the attacks, each refused with its message and exit code, in this order
    found = [line for line in lines if line.startswith("attack ")]
    assert len(found) == len(ATTACKS), out
    for line, (name, (code, message)) in zip(found, ATTACKS.items(), strict=True):
        match = re.fullmatch(rf"attack {name}: refused — ({message}) \(exit {code}\)", line)
        assert match is not None, (name, line)
        if name == "revoked-key":
            assert match["ci"] == ci[1]
    rescue = re.search(rf"^registry override: add-key ({KEY}) to acme \(emergency: True\)$",
                       out, re.M)
    assert rescue is not None, out
    # the override under `auto`: applied, and said so
    assert ("  warning: entry 8: the core vendor's key acted for vendor acme (add-key), an "
            "emergency action: applied (core-vendor policy auto)") in lines
    assert (f"  OK acme/widget 2.0.0: entry 9, key {rescue[1]}; no sources at hand, digest "
            "not checked") in lines
    assert re.fullmatch(r"== 6 attack\(s\) refused, 0 got through \(\d+\.\d s\)", lines[-1])
