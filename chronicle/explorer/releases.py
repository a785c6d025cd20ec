"""The release layer's pages (issue 12's release ledger, docs/release.md): HTML of what
:class:`chronicle.releaselog.ReleaseReads` answers under ``/chronicle/release/``, each row
linked to the entry that proves it. Every value is escaped like any other ledger value."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from chronicle.explorer.render import h, qs
from chronicle.store.browse import ReleaseLine

PACKAGES_PAGE = 100
RECENT_RELEASES = 50


def _at(position: dict[str, Any] | None, instance: str) -> str:
    """A chain position as a link to its entry page."""
    if position is None:
        return "—"
    href = "/explorer/entry/" + quote(position["currhash"], safe="") + qs(instance)
    return f'<a href="{h(href)}">entry {int(position["index"]):,}</a>'


def _seg(text: str) -> str:
    return quote(text, safe="")


def package_href(vendor: str, name: str, instance: str, version: str | None = None) -> str:
    path = f"/explorer/release/packages/{_seg(vendor)}/{_seg(name)}"
    return path + (f"/{_seg(version)}" if version is not None else "") + qs(instance)


def vendor_href(vendor: str, instance: str) -> str:
    return f"/explorer/release/vendors/{_seg(vendor)}" + qs(instance)


def _table(headers: list[str], rows: list[str], empty: str) -> str:
    if not rows:
        return f'<p class="note">{h(empty)}</p>'
    head = "".join(f"<th>{h(x)}</th>" for x in headers)
    return f'<table><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def summary(status: dict[str, Any], instance: str) -> str:
    """The overview's section on a release ledger."""
    counts = ", ".join(f"{status.get(k, 0):,} {k}" for k in
                       ("vendors", "keys", "updates", "attestations") if k in status)
    return (f'<section id="release"><h2>Release ledger</h2><p>Core vendor '
            f'<a href="{h(vendor_href(status["core-vendor"], instance))}">'
            f'{h(status["core-vendor"])}</a>; {h(counts)}. '
            f'<a href="/explorer/release{h(qs(instance))}">Vendors and releases</a></p>'
            "</section>")


def ledger_main(facts: dict[str, Any], vendors: dict[str, Any], recent: list[ReleaseLine],
                instance: str) -> str:
    parts = ["<h1>Release ledger</h1>", "<dl>",
             f'<dt>core vendor</dt><dd><a href="{h(vendor_href(facts["core-vendor"], instance))}"'
             f'>{h(facts["core-vendor"])}</a></dd>',
             f'<dt>core key</dt><dd><code class="hash">{h(facts["core-key"])}</code></dd>',
             f'<dt>enabled</dt><dd>{h(facts["now"])}, {_at(facts["at"], instance)}</dd>',
             "</dl>"]
    rows = [f'<tr class="{"bad" if r.revoked else ""}"><td><a href="'
            f'{h(package_href(r.vendor, r.name, instance, r.version))}">{h(r.vendor)}/'
            f"{h(r.name)} {h(r.version)}</a></td>"
            f'<td>{_at({"index": r.index, "currhash": r.currhash}, instance)}</td>'
            f'<td>{"revoked" if r.revoked else ""}</td></tr>' for r in recent]
    parts.append("<h2>Newest releases</h2>" + _table(["release", "entry", ""], rows,
                                                      "No releases yet."))
    rows = [f'<tr><td><a href="{h(vendor_href(v["vendor"], instance))}">{h(v["vendor"])}</a>'
            f'</td><td>{int(v["keys"]):,}</td><td>{int(v["trusted"]):,}</td>'
            f'<td>{int(v["since"]):,}</td></tr>' for v in vendors["vendors"]]
    parts.append("<h2>Vendors</h2>" + _table(["vendor", "keys", "not revoked",
                                              "first key at entry"],
                                             rows, "No vendors yet."))
    if vendors.get("next"):
        parts.append(f'<p class="pager"><a id="older" href="/explorer/release'
                     f'{h(qs(instance, after=vendors["next"]))}">More vendors →</a></p>')
    return "\n".join(parts)


def vendor_main(vendor: str, keys: dict[str, Any] | None,
                packages: tuple[list[tuple[str, int, int]], str | None], instance: str) -> str:
    parts = [f"<h1>Vendor {h(vendor)}</h1>"]
    rows = []
    for k in keys["keys"] if keys else []:
        revoked = k["revoked"] is not None
        flags = ", ".join(x for x in ("limited" if k["limited"] else "",
                                      "emergency" if k["added-emergency"] else "") if x)
        rows.append(
            f'<tr class="{"bad" if revoked else ""}"><td><code class="hash">'
            f'{h(k["publickey"])}</code></td><td>{h(k["name"] or "")}</td>'
            f"<td>{h(flags)}</td><td>{_at(k['added'], instance)}</td>"
            f"<td>{_at(k['revoked'], instance) if revoked else 'trusted'}</td></tr>")
    parts.append("<h2>Keys</h2>" + _table(["public key", "name", "", "added", "revoked"], rows,
                                          "This vendor has no keys."))
    page, following = packages
    rows = [f'<tr><td><a href="{h(package_href(vendor, name, instance))}">{h(name)}</a></td>'
            f"<td>{count:,}</td><td>{newest:,}</td></tr>" for name, count, newest in page]
    parts.append("<h2>Packages</h2>" + _table(["package", "releases", "newest at entry"], rows,
                                              "No releases yet."))
    if following is not None:
        parts.append(f'<p class="pager"><a id="older" href="'
                     f'{h(vendor_href(vendor, instance))}{"&amp;" if instance else "?"}'
                     f'after={h(quote(following, safe=""))}">More packages →</a></p>')
    return "\n".join(parts)


def _update_row(u: dict[str, Any], instance: str) -> str:
    revoked = u["revoked"] is not None
    state = (f'revoked at {_at(u["revoked"], instance)}: {h(u["revoke-reason"] or "")}'
             if revoked else "")
    return (f'<tr class="{"bad" if revoked else ""}"><td><a href="'
            f'{h(package_href(u["vendor"], u["name"], instance, u["version"]))}">'
            f'{h(u["version"])}</a></td><td>{_at(u["at"], instance)}</td>'
            f'<td><code class="hash">{h(u["signer"])}</code></td>'
            f'<td>{"emergency" if u["emergency"] else ""}</td><td>{state}</td></tr>')


def package_main(updates: dict[str, Any], instance: str, vendor: str, name: str) -> str:
    rows = [_update_row(u, instance) for u in updates["updates"]]
    parts = [f'<h1>Package {h(updates["package"])}</h1>',
             f'<p>Vendor <a href="{h(vendor_href(vendor, instance))}">{h(vendor)}</a></p>',
             _table(["version", "entry", "signed by", "", "revoked"], rows, "No releases.")]
    if updates.get("next") is not None:
        href = package_href(vendor, name, instance)
        parts.append(f'<p class="pager"><a id="older" href="{h(href)}'
                     f'{"&amp;" if instance else "?"}after={int(updates["next"])}">'
                     "More releases →</a></p>")
    return "\n".join(parts)


def update_main(found: dict[str, Any], instance: str) -> str:
    u = found["update"]
    parts = [f'<h1>{h(u["vendor"])}/{h(u["name"])} {h(u["version"])}</h1>',
             "<table><tbody>", _update_row(u, instance), "</tbody></table>",
             "<h2>Metadata</h2>",
             f'<pre class="body">{h(json.dumps(u["metadata"], indent=2, ensure_ascii=False))}'
             "</pre>"]
    rows = [f'<tr><td>{_at(a["at"], instance)}</td><td>{h(a["attestor"])}</td>'
            f'<td>{h(a["attestation"])}</td><td>{h(a["details"] or "")}</td>'
            f'<td><code class="hash">{h(a["signer"])}</code></td></tr>'
            for a in found["attestations"]]
    parts.append("<h2>Attestations</h2>" + _table(
        ["entry", "attestor", "attestation", "details", "signed by"], rows,
        "No attestations."))
    return "\n".join(parts)
