"""The Watcher's HTML: the live dashboard at `/` and the per-listener pages.

Everything a page needs is inline (no external script, style sheet or font),
so the dashboard works on a host without internet access, and a
Content-Security-Policy allows exactly these inline blocks (by hash) and
requests to the Watcher itself. The script and the style sheet are real files
in static/, read once at import; the hashes are computed from what is read.
Listener names come from the kernel and may be any unix socket path: the
server escapes them with html.escape and the script only ever sets them with
textContent/setAttribute, never as markup.
"""

from __future__ import annotations

import base64
import hashlib
import html
from collections.abc import Mapping, Sequence
from importlib.resources import files
from urllib.parse import quote

from raindrops.linux import ListenStats


def _static(name: str) -> str:
    """A file of static/ as the page inlines it: stripped, so a final newline is not part of it."""
    assert __package__, "pages.py is a module of the raindrops.watcher package"
    return (files(__package__) / "static" / name).read_text(encoding="utf-8").strip()


CSS = _static("dashboard.css")
SCRIPT = _static("dashboard.js")


def _source_hash(source: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(source.encode()).digest()).decode() + "'"


CONTENT_SECURITY_POLICY = (
    f"default-src 'none'; script-src {_source_hash(SCRIPT)}; style-src {_source_hash(CSS)}; "
    "connect-src 'self'; img-src 'self'; form-action 'self'; base-uri 'none'; "
    "frame-ancestors 'none'"
)
"""Only the inline blocks above may run, and only the Watcher itself may be fetched."""
PAGE_CONTENT_SECURITY_POLICY = (
    f"default-src 'none'; style-src {_source_hash(CSS)}; form-action 'self'; base-uri 'none'; "
    "frame-ancestors 'none'"
)
"""The per-listener pages: no script at all."""

_ROW = (
    "<tr><td><a href='tail/{link}.txt' title='&quot;tail&quot; output in real time'>"
    "{name}</a></td>"
    "<td><a href='active/{link}.html' title='show active connection stats'>{active}</a></td>"
    "<td><a href='queued/{link}.html' title='show queued connection stats'>{queued}</a></td>"
    "<td><form action='reset/{link}' method='post'>"
    "<input title='reset statistics' type='submit' name='x' value='x'></form></td></tr>"
)
"""The listener table's row, its one markup: the server fills it in for the first page, and the
script fills in copies of the page's <template id='listener-row'>, which keeps {link} for it."""
ROW_TEMPLATE = (
    "<template id='listener-row'>"
    + _ROW.format(link="{link}", name="", active="", queued="")
    + "</template>"
)


def escape_path(address: str) -> str:
    """A listener name as one URL path segment ("/" and ":" escaped, as raindrops' links do)."""
    return quote(address, safe="", errors="surrogateescape")


def _row(address: str, stats: ListenStats) -> str:
    link = html.escape(escape_path(address))
    return _ROW.format(
        link=link, name=html.escape(address), active=stats.active, queued=stats.queued
    )


def index_page(host: str, updated: str, window: float, listeners: Mapping[str, ListenStats]) -> str:
    """The dashboard: charts drawn by the script, and raindrops' table (which works without it)."""
    rows = "".join(_row(address, listeners[address]) for address in sorted(listeners))
    host_text = html.escape(host)
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{host_text} - all interfaces</title><style>{CSS}</style></head>"
        f"<body data-window='{window:g}'><header><h1>{host_text}</h1>"
        f"<h3>Updated at <time id='updated'>{html.escape(updated)}</time></h3>"
        "<div class='legend'><span><span class='swatch active'></span>active (accepted)</span>"
        "<span><span class='swatch queued'></span>queued (in the accept queue)</span></div>"
        "</header><p id='status' role='status'></p>"
        "<section id='charts' aria-label='active and queued connections per listener over time'>"
        "</section><table id='listeners'><thead><tr><th>address</th><th>active</th>"
        "<th>queued</th><th>reset</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>{ROW_TEMPLATE}"
        "<footer><p>This is raindrops.Watcher. Per listener: <code>active/ADDR.txt</code>, "
        "<code>.html</code> and <code>.json</code> (and the same for <code>queued</code>) give "
        "a histogram with X-* headers; <code>tail/ADDR.txt?active_min=N&amp;queued_min=M</code> "
        "streams one line per sample; <code>series.json</code> feeds this page.</p></footer>"
        f"<script>{SCRIPT}</script></body></html>\n"
    )


def listener_page(
    host: str, address: str, kind: str, headers: Sequence[tuple[str, str]], histogram: str
) -> str:
    """raindrops' per-listener page: the X-* headers as a table, the histogram, a reset button."""
    cells = "".join(
        f"<tr><td>{html.escape(name.removeprefix('X-'))}</td><td>{html.escape(value)}</td></tr>"
        for name, value in headers
        if name.startswith("X-")
    )
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(host)} - {html.escape(address)}</title>"
        f"<style>{CSS}</style></head>"
        f"<body><h1>{html.escape(address)}: {html.escape(kind)} connections</h1>"
        "<p><a href='../'>all listeners</a></p>"
        f"<table>{cells}</table><pre>{html.escape(histogram)}</pre>"
        f"<form action='../reset/{html.escape(escape_path(address))}' method='post'>"
        "<input type='submit' name='x' value='reset'></form></body></html>\n"
    )


__all__ = [
    "CONTENT_SECURITY_POLICY",
    "CSS",
    "PAGE_CONTENT_SECURITY_POLICY",
    "ROW_TEMPLATE",
    "SCRIPT",
    "escape_path",
    "index_page",
    "listener_page",
]
