"""The explorer's HTML, built from :mod:`~chronicle.explorer.model` data.

Every value that comes from the ledger (bodies above all: anyone registered can publish
anything) goes through :func:`h` before it reaches the page, and nothing is ever put into
a script: the pages carry no inline script at all (the Content-Security-Policy forbids it)
and hand data to ``check.js`` in ``data-`` attributes, escaped like any other text.
"""

from __future__ import annotations

import html
import json
from datetime import datetime
from functools import cache
from importlib import resources
from string import Template
from urllib.parse import quote, urlencode

from chronicle.core.encoding import b64u_encode
from chronicle.explorer.model import (
    BODY_SHOWN,
    EntryView,
    Listing,
    Overview,
    RatePoint,
)
from chronicle.store.browse import EntrySummary


def h(value: object) -> str:
    """``value`` as HTML text (quotes escaped too: safe in attributes)."""
    return html.escape(str(value), quote=True)


def b64(raw: bytes | None) -> str:
    return "" if raw is None else b64u_encode(raw)


def qs(instance: str, **params: object) -> str:
    """A query string keeping the instance (``""``: none)."""
    pairs = [("instance", instance)] if instance else []
    pairs += [(k, str(v)) for k, v in params.items() if v is not None]
    return "?" + urlencode(pairs) if pairs else ""


def entry_href(currhash: bytes, instance: str) -> str:
    return "/explorer/entry/" + quote(b64u_encode(currhash), safe="") + qs(instance)


@cache
def _layout() -> Template:
    text = resources.files("chronicle.explorer").joinpath("templates/layout.html").read_text(
        encoding="utf-8")
    return Template(text)


def page(*, title: str, kind: str, main: str, server_key: str, instance: str,
         query: str = "") -> bytes:
    """A whole page: ``main`` is HTML already built from escaped values."""
    field = (f'<input type="hidden" name="instance" value="{h(instance)}">'
             if instance else "")
    return _layout().substitute(
        title=h(title), page=h(kind), server_key=h(server_key), instance=h(instance),
        instance_query=h(qs(instance)), instance_field=field, query=h(query),
        main=main).encode("utf-8")


def _hash(raw: bytes | None, *, cls: str = "hash") -> str:
    return f'<code class="{cls}">{h(b64(raw))}</code>' if raw is not None else "—"


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 172800:
        return f"{seconds / 3600:.0f} h ago"
    return f"{seconds / 86400:.0f} days ago"


# --- overview -----------------------------------------------------------------------------

def rate_svg(points: list[RatePoint], width: int = 720, height: int = 160) -> str:
    """The publish rate as bars over time (inline SVG: no script, no remote request).
    Each bar spans its interval; its height is entries per hour."""
    if not points:
        return '<p class="note">Not enough entries, or time, for a publish-rate chart.</p>'
    t0 = points[0].start.timestamp()
    span = max(points[-1].end.timestamp() - t0, 1.0)
    rates = [p.entries / max((p.end - p.start).total_seconds(), 1.0) * 3600 for p in points]
    top = max(rates) or 1.0
    left, bottom, plot_h = 60, height - 24, height - 40
    plot_w = width - left - 10
    bars = []
    for p, r in zip(points, rates, strict=True):
        x = left + (p.start.timestamp() - t0) / span * plot_w
        w = max((p.end - p.start).total_seconds() / span * plot_w, 1.0)
        bar_h = r / top * plot_h
        bars.append(f'<rect class="bar" x="{x:.1f}" y="{bottom - bar_h:.1f}" '
                    f'width="{w:.1f}" height="{bar_h:.1f}"><title>{h(_stamp(p.start))} to '
                    f'{h(_stamp(p.end))}: {p.entries} entries ({r:.1f}/h)</title></rect>')
    return (f'<svg class="chart" role="img" viewBox="0 0 {width} {height}" '
            f'width="{width}" height="{height}" aria-label="Publish rate over time">'
            f'<line class="axis" x1="{left}" y1="{bottom}" x2="{width - 10}" y2="{bottom}"/>'
            f'<line class="axis" x1="{left}" y1="{bottom - plot_h}" x2="{left}" '
            f'y2="{bottom}"/>'
            f'<text x="{left - 4}" y="{bottom - plot_h + 10}" text-anchor="end">'
            f'{_rate(top)}/h</text>'
            f'<text x="{left - 4}" y="{bottom}" text-anchor="end">0</text>'
            f'<text x="{left}" y="{height - 6}">{h(_stamp(points[0].start))}</text>'
            f'<text x="{width - 10}" y="{height - 6}" text-anchor="end">'
            f'{h(_stamp(points[-1].end))}</text>'
            + "".join(bars) + "</svg>")


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M")


def _rate(value: float) -> str:
    return f"{value:,.0f}" if value >= 10 else f"{value:.1f}"


def _table(headers: list[str], rows: list[str], empty: str) -> str:
    if not rows:
        return f'<p class="note">{h(empty)}</p>'
    head = "".join(f"<th>{h(x)}</th>" for x in headers)
    return f'<table><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def overview_main(ov: Overview) -> str:
    inst = ov.instance
    head = ov.head
    head_hash = head.currhash if head else None
    parts = [f'<h1>{h(inst or "default")} chain</h1>',
             '<section class="facts" id="head">',
             '<dl>',
             f'<dt>Entries</dt><dd id="chain-length">{ov.length:,}</dd>',
             f'<dt>Head currhash</dt><dd id="head-currhash">{_hash(head_hash)}'
             "</dd>",
             f'<dt>Head summaryhash</dt><dd id="head-summaryhash">'
             f"{_hash(head.summaryhash if head else None)}</dd>",
             f'<dt>Last published</dt><dd>{h(head.created) if head else "—"}</dd>',
             f'<dt>Server public key</dt><dd><code id="server-key">{h(ov.public_key)}</code>'
             "</dd>",
             "<dt>Merkle tree</dt><dd>"
             + (f"{h(ov.tree_origin)}, {ov.tree_size:,} leaves (<a href=\"/chronicle/tlog/"
                f"checkpoint{h(qs(inst))}\">checkpoint</a>)"
                if ov.tree_size is not None else "not enabled") + "</dd>",
             "</dl>"]
    if head is not None:
        parts.append(f'<p><a href="{h(entry_href(head.currhash, inst))}">Newest entry</a> · '
                     f'<a href="/explorer/entries{h(qs(inst))}">All entries</a> · '
                     f'<a href="/chronicle/lasthash{h(qs(inst))}">lasthash (JSON)</a></p>')
    parts.append('<p class="check" id="check" data-check="lasthash" '
                 f'data-url="/chronicle/lasthash{h(qs(inst))}" '
                 f'data-currhash="{h(b64(head_hash))}">'
                 '<span class="status">not checked</span> '
                 '<span class="detail"></span></p></section>')
    parts.append('<section><h2>Publish rate</h2>' + rate_svg(ov.rate) + "</section>")
    rows = [f'<tr><td><a href="/{h(qs(name))}">{h(name or "default")}</a></td>'
            f"<td>{length:,}</td></tr>" for name, length in ov.instances]
    parts.append("<section><h2>Instances</h2>"
                 + _table(["instance", "entries"], rows, "No instances.") + "</section>")
    rows = []
    for r in ov.replicas:
        s = r.source
        cls = "bad" if s.status == "forked" else ("warn" if s.status != "active" else "")
        status = s.status + (f" ({s.fault}: {s.reason})" if s.fault else "")
        rows.append(
            f'<tr class="{cls}"><td><a href="/chronicle/replica/{h(quote(s.uniqueid, safe=""))}'
            f'{h(qs(inst))}">{h(s.name)}</a></td><td>{h(s.url)}</td>'
            f"<td>{r.copied:,}</td><td>{h(_age(r.lag_seconds))}</td>"
            f'<td class="status">{h(status)}</td>'
            f'<td>{h(s.last_error or "")}</td></tr>')
    parts.append("<section><h2>Replicas</h2>"
                 + _table(["source", "upstream", "entries copied", "last sync", "status",
                           "last error"], rows, "This ledger replicates no other.")
                 + "</section>")
    rows = [f'<tr class="{"warn" if x.last_error else ""}"><td>{h(x.name)}</td>'
            f"<td>{h(x.url)}</td>"
            f'<td>{"—" if x.last_index is None else x.last_index}</td>'
            f'<td>{"—" if x.behind is None else f"{x.behind:,}"}</td>'
            f'<td>{h(x.last_run or "never")}</td>'
            f'<td>{h(x.last_error or "ok")}'
            f'{f" ({x.failures} failures)" if x.failures else ""}</td></tr>'
            for x in ov.cross_signs]
    parts.append("<section><h2>Cross-sign targets</h2>"
                 + _table(["target", "url", "last cross-signed entry", "entries behind",
                           "last run", "last result"], rows, "No cross-sign targets.")
                 + "</section>")
    rows = [f'<tr class="{"warn" if w.last_error else ""}"><td>{h(w.name)}</td>'
            f"<td>{h(w.url)}</td>"
            f'<td>{"—" if w.cosigned_size is None else f"{w.cosigned_size:,}"}</td>'
            f'<td>{h(w.last_error or ("cosigned" if w.cosigned_size else "not yet"))}</td>'
            "</tr>" for w in ov.witnesses]
    parts.append("<section><h2>Witnesses</h2>"
                 + _table(["witness", "url", "last cosigned tree size", "last result"], rows,
                          "No witnesses configured.") + "</section>")
    rows = [f"<tr><td>{h(url)}</td><td>{h(comment)}</td></tr>" for url, comment in ov.mirrors]
    parts.append("<section><h2>Mirrors</h2>"
                 + _table(["url", "comment"], rows, "No mirrors listed.") + "</section>")
    return "\n".join(parts)


# --- entry list ---------------------------------------------------------------------------

def _preview(e: EntrySummary) -> str:
    if e.preview is None:
        return f'<span class="note">({e.size:,} bytes)</span>'
    text = e.preview.decode("utf-8", errors="replace")
    more = "…" if e.size > len(e.preview) else ""
    return f'<span class="preview">{h(text)}{more}</span>'


def entries_main(listing: Listing, instance: str) -> str:
    if listing.searched is not None:
        title = f"Search: {listing.searched}"
    else:
        title = f"Entries of the {instance or 'default'} chain ({listing.length:,})"
    parts = [f"<h1>{h(title)}</h1>"]
    window = listing.window
    if window is not None:
        parts.append(f'<p class="note" id="searched">Searched entries {window.low:,} to '
                     f"{max(window.high - 1, 0):,} (at most a window of entries per request);"
                     f" {len(listing.entries)} match(es).</p>")
    rows = [f'<tr><td class="num">{e.index:,}</td>'
            f'<td><a class="hash" href="{h(entry_href(e.currhash, instance))}">'
            f"{h(b64(e.currhash))}</a></td>"
            f"<td>{h(e.created)}</td><td><code>{h(b64(e.publickey))}</code></td>"
            f"<td>{_preview(e)}</td></tr>" for e in listing.entries]
    parts.append(_table(["#", "currhash", "created", "publisher key", "body"], rows,
                        "No entries found." if listing.searched else "The chain is empty."))
    links = []
    if listing.older is not None:
        params: dict[str, object] = {"before": listing.older}
        if window is not None and listing.searched is not None:
            params = {"q": listing.query, "before": listing.older}
        more = "Search older entries" if window is not None else "Older entries"
        links.append(f'<a id="older" href="/explorer/entries{h(qs(instance, **params))}">'
                     f"{more} →</a>")
    if listing.searched is not None or listing.older is None:
        links.insert(0, f'<a href="/explorer/entries{h(qs(instance))}">Newest entries</a>')
    parts.append('<p class="pager">' + " · ".join(links) + "</p>")
    return "\n".join(parts)


# --- one entry ----------------------------------------------------------------------------

def _body(contents: bytes) -> tuple[str, str]:
    """The body as shown (escaped) and how ("JSON", "text", "cut")."""
    shown = contents[:BODY_SHOWN]
    text = shown.decode("utf-8", errors="replace")
    if len(contents) > BODY_SHOWN:
        return h(text), f"first {BODY_SHOWN:,} of {len(contents):,} bytes"
    try:
        parsed = json.loads(text)
    except ValueError:
        return h(text), "text"
    if not isinstance(parsed, dict | list):
        return h(text), "text"
    return h(json.dumps(parsed, indent=2, ensure_ascii=False)), "JSON, pretty-printed"


def _ok(flag: bool, good: str, bad: str) -> str:
    return (f'<span class="ok">{h(good)}</span>' if flag
            else f'<span class="bad">{h(bad)}</span>')


def entry_main(view: EntryView, instance: str) -> str:
    e = view.entry
    body, how = _body(e.contents)
    lookup = "/chronicle/lookup/" + quote(b64u_encode(e.currhash), safe="") + qs(instance)
    prev_link = (f'<a id="prev" href="{h(entry_href(e.prevhash, instance))}">← previous</a>'
                 if e.prevhash is not None else '<span class="note">first entry</span>')
    next_link = (f'<a id="next" href="{h(entry_href(view.next_hash, instance))}">next →</a>'
                 if view.next_hash is not None else '<span class="note">newest entry</span>')
    parts = [f"<h1>Entry {e.index:,}</h1>",
             f'<p class="pager">{prev_link} · {next_link}</p>',
             "<dl>",
             f'<dt>currhash</dt><dd id="currhash">{_hash(e.currhash)}</dd>',
             f"<dt>summaryhash</dt><dd>{_hash(e.summaryhash)}</dd>",
             f"<dt>prevhash</dt><dd>{_hash(e.prevhash)}</dd>",
             f"<dt>created</dt><dd>{h(e.created)}</dd>",
             f'<dt>publisher key</dt><dd><a href="/explorer/entries'
             f'{h(qs(instance, q=b64u_encode(e.publickey)))}">{_hash(e.publickey)}</a></dd>',
             f"<dt>signature</dt><dd>{_hash(e.signature)}<br>"
             + _ok(view.signature_ok, "valid (checked by the server)",
                   "INVALID (checked by the server)") + "</dd>",
             "<dt>currhash check</dt><dd>"
             + _ok(view.hash_ok, "recomputed by the server: matches",
                   "recomputed by the server: DOES NOT MATCH") + "</dd>",
             "</dl>",
             '<p class="check" id="check" data-check="entry" '
             f'data-url="{h(lookup)}" data-currhash="{h(b64(e.currhash))}">'
             '<span class="status">not checked</span> <span class="detail"></span></p>',
             f'<h2>Body <span class="note">({h(how)}, {len(e.contents):,} bytes; '
             f'<a href="{h(lookup)}">signed JSON</a>)</span></h2>',
             f'<pre class="body" id="body">{body}</pre>']
    parts.append("<h2>Inclusion proof</h2>")
    if view.inclusion is not None:
        p = view.inclusion
        proof = "".join(f"<li>{_hash_text(x)}</li>" for x in p["proof"])
        parts.append(
            f'<dl id="inclusion"><dt>origin</dt><dd>{h(p["origin"])}</dd>'
            f'<dt>tree size</dt><dd>{p["tree-size"]:,}</dd>'
            f'<dt>root</dt><dd>{_hash_text(p["root"])}</dd>'
            f'<dt>leaf hash</dt><dd>{_hash_text(p["leaf-hash"])}</dd>'
            f"<dt>proof ({len(p['proof'])} hashes)</dt><dd><ol>{proof}</ol></dd></dl>"
            f'<p><a href="/chronicle/tlog/proof/inclusion/{e.index}{h(qs(instance))}">'
            "proof (signed JSON)</a></p>")
        if p.get("checkpoint"):
            parts.append(f'<pre class="note-text">{h(p["checkpoint"])}</pre>')
    elif view.inclusion_error is not None:
        parts.append(f'<p class="warn">{h(view.inclusion_error)}</p>')
    else:
        parts.append('<p class="note">This chain has no Merkle tree (chronicle tlog '
                     "enable).</p>")
    return "\n".join(parts)


def _hash_text(text: str) -> str:
    return f'<code class="hash">{h(text)}</code>'
