"""The explorer's HTML helpers: escaping, bodies, query strings, the rate chart."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from chronicle.explorer import render
from chronicle.explorer.model import BODY_SHOWN, RatePoint


def test_escape_covers_attributes() -> None:
    assert render.h('<a href="x" onclick=\'y\'>&') == \
        "&lt;a href=&quot;x&quot; onclick=&#x27;y&#x27;&gt;&amp;"


def test_body_json_text_and_cut() -> None:
    shown, how = render._body(b'{"a": "<b>", "n": [1]}')
    assert how == "JSON, pretty-printed"
    assert shown == '{\n  &quot;a&quot;: &quot;&lt;b&gt;&quot;,\n  &quot;n&quot;: [\n    1\n  ]\n}'
    assert render._body(b"42") == ("42", "text")  # a JSON scalar is shown as it is
    assert render._body(b"\xff<i>") == ("\ufffd&lt;i&gt;", "text")
    big = b"[" + b"1," * BODY_SHOWN + b"1]"
    shown, how = render._body(big)
    assert how == f"first {BODY_SHOWN:,} of {len(big):,} bytes" and len(shown) == BODY_SHOWN


def test_query_strings_keep_the_instance() -> None:
    assert render.qs("") == ""
    assert render.qs("", before=3) == "?before=3"
    assert render.qs("a b", q="x&y", before=None) == "?instance=a+b&q=x%26y"
    assert render.entry_href(b"\xff" * 32, "") == \
        "/explorer/entry/__________________________________________8%3D"


def test_rate_chart_bars_span_their_intervals() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    points = [RatePoint(t0, t0 + timedelta(hours=1), 10),
              RatePoint(t0 + timedelta(hours=1), t0 + timedelta(hours=3), 10)]
    svg = render.rate_svg(points, width=220, height=140)
    assert svg.count('<rect class="bar"') == 2
    # 150 px of plot for 3 hours: 50 px, then 100 px; heights 10/h (full) and 5/h (half).
    assert 'x="60.0" y="16.0" width="50.0" height="100.0"' in svg
    assert 'x="110.0" y="66.0" width="100.0" height="50.0"' in svg
    assert "2026-01-01 00:00 to 2026-01-01 01:00: 10 entries (10.0/h)" in svg
    assert "Not enough entries" in render.rate_svg([])
