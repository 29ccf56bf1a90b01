"""The Watcher's HTML: the live dashboard at `/` and the per-listener pages.

Everything a page needs is inline (no external script, style sheet or font),
so the dashboard works on a host without internet access, and a
Content-Security-Policy allows exactly these inline blocks (by hash) and
requests to the Watcher itself. Listener names come from the kernel and may
be any unix socket path: the server escapes them with html.escape and the
script only ever sets them with textContent/setAttribute, never as markup.
"""

from __future__ import annotations

import base64
import hashlib
import html
from typing import Mapping, Sequence
from urllib.parse import quote

from raindrops.linux import ListenStats

CSS = """
:root { color-scheme: light; --active: #1a5fb4; --queued: #c01c28; --grid: #d8dde3; --ink: #1f2328; --muted: #59636e; }
* { box-sizing: border-box; }
body { margin: 0 auto; max-width: 110rem; padding: 1rem 1.5rem 2rem; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: var(--ink); background: #f6f8fa; }
header { display: flex; flex-wrap: wrap; align-items: baseline; gap: 0 1.5rem; }
h1 { font-size: 1.35rem; margin: 0.3rem 0; }
h3 { font-size: 0.95rem; font-weight: normal; color: var(--muted); margin: 0.3rem 0; }
.legend { display: flex; gap: 1rem; font-size: 0.9rem; }
.swatch { display: inline-block; width: 1.6rem; height: 0.25rem; vertical-align: middle; margin-right: 0.35rem; border-radius: 2px; }
.swatch.active { background: var(--active); }
.swatch.queued { background: var(--queued); }
#status { color: var(--queued); min-height: 1.2rem; margin: 0.2rem 0; font-size: 0.9rem; }
#charts { display: grid; grid-template-columns: repeat(auto-fit, minmax(26rem, 1fr)); gap: 1rem; margin: 0.5rem 0 1.5rem; }
figure.chart { margin: 0; padding: 0.6rem 0.8rem 0.5rem; background: #fff; border: 1px solid var(--grid); border-radius: 6px; }
figure.chart.gone { opacity: 0.55; }
figcaption { display: flex; justify-content: space-between; gap: 0.5rem; font-weight: 600; overflow-wrap: anywhere; }
figcaption a { color: var(--ink); text-decoration: none; }
figcaption a:hover { text-decoration: underline; }
.now { font-weight: normal; white-space: nowrap; font-variant-numeric: tabular-nums; }
.now .active { color: var(--active); }
.now .queued { color: var(--queued); }
.plot { display: grid; grid-template-columns: 2.5rem 1fr; gap: 0.3rem; margin-top: 0.3rem; }
.yaxis { display: flex; flex-direction: column; justify-content: space-between; text-align: right; font-size: 0.8rem; color: var(--muted); font-variant-numeric: tabular-nums; }
svg { width: 100%; height: 9.5rem; display: block; background: #fff; }
svg line { stroke: var(--grid); stroke-width: 1; vector-effect: non-scaling-stroke; }
svg polyline { fill: none; stroke-width: 2; vector-effect: non-scaling-stroke; stroke-linejoin: round; }
svg polyline.active { stroke: var(--active); }
svg polyline.queued { stroke: var(--queued); stroke-dasharray: 6 3; }
.xaxis { display: flex; justify-content: space-between; margin-left: 2.8rem; font-size: 0.8rem; color: var(--muted); }
table { border-collapse: collapse; background: #fff; border: 1px solid var(--grid); font-variant-numeric: tabular-nums; }
th, td { padding: 0.3rem 0.8rem; border-bottom: 1px solid var(--grid); text-align: right; }
th:first-child, td:first-child { text-align: left; overflow-wrap: anywhere; }
td form { margin: 0; }
footer { margin-top: 1.5rem; color: var(--muted); font-size: 0.85rem; }
pre { background: #fff; border: 1px solid var(--grid); padding: 0.6rem; overflow-x: auto; }
""".strip()

SCRIPT = r"""
"use strict";
(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const WIDTH = 600, HEIGHT = 150, PERIOD_MS = 1000;
  const windowSeconds = Number(document.body.dataset.window) || 300;
  const charts = document.getElementById("charts");
  const rows = document.querySelector("#listeners tbody");
  const updated = document.getElementById("updated");
  const status = document.getElementById("status");
  const listeners = new Map();
  let since = 0;

  function element(tag, attributes, text) {
    const node = document.createElement(tag);
    for (const name in attributes) node.setAttribute(name, attributes[name]);
    if (text !== undefined) node.textContent = text;
    return node;
  }
  function vector(tag, attributes) {
    const node = document.createElementNS(SVG, tag);
    for (const name in attributes) node.setAttribute(name, attributes[name]);
    return node;
  }
  function escaped(address) { return encodeURIComponent(address); }

  function chart(address) {
    let entry = listeners.get(address);
    if (entry) return entry;
    const figure = element("figure", {"class": "chart"});
    const caption = element("figcaption");
    const link = element("a", {"href": "tail/" + escaped(address) + ".txt", "title": "\"tail\" output in real time"}, address);
    const now = element("span", {"class": "now"});
    const activeNow = element("a", {"class": "active", "href": "active/" + escaped(address) + ".html"});
    const queuedNow = element("a", {"class": "queued", "href": "queued/" + escaped(address) + ".html"});
    now.append("active ", activeNow, " \u00b7 queued ", queuedNow);
    caption.append(link, now);
    const svg = vector("svg", {"viewBox": "0 0 " + WIDTH + " " + HEIGHT, "preserveAspectRatio": "none", "role": "img",
                               "aria-label": "active and queued connections of " + address, "data-listener": address,
                               "data-points": "0", "data-max-active": "0", "data-max-queued": "0"});
    for (let i = 0; i <= 4; i++) {
      const y = String(1 + i * (HEIGHT - 2) / 4);
      svg.append(vector("line", {"x1": "0", "x2": String(WIDTH), "y1": y, "y2": y}));
    }
    const queuedLine = vector("polyline", {"class": "queued", "points": ""});
    const activeLine = vector("polyline", {"class": "active", "points": ""});
    svg.append(queuedLine, activeLine);
    const top = element("span", {}, "1"), middle = element("span", {}, ""), bottom = element("span", {}, "0");
    const yaxis = element("div", {"class": "yaxis"});
    yaxis.append(top, middle, bottom);
    const plot = element("div", {"class": "plot"});
    plot.append(yaxis, svg);
    const xaxis = element("div", {"class": "xaxis"});
    const span = windowSeconds >= 120 ? Math.round(windowSeconds / 60) + " min" : Math.round(windowSeconds) + " s";
    xaxis.append(element("span", {}, "-" + span), element("span", {}, "now"));
    figure.append(caption, plot, xaxis);
    entry = {address, figure, svg, activeLine, queuedLine, activeNow, queuedNow, top, middle,
             times: [], active: [], queued: []};
    listeners.set(address, entry);
    const after = [...listeners.keys()].sort().find((other) => other > address);
    charts.insertBefore(figure, after === undefined ? null : listeners.get(after).figure);
    return entry;
  }

  function record(points) {
    for (const [time, values] of points) {
      for (const address in values) {
        const entry = chart(address);
        entry.times.push(time);
        entry.active.push(values[address][0]);
        entry.queued.push(values[address][1]);
      }
    }
  }

  function forget(oldest, current) {
    for (const [address, entry] of listeners) {
      let drop = 0;
      while (drop < entry.times.length && entry.times[drop] < oldest) drop++;
      entry.times.splice(0, drop); entry.active.splice(0, drop); entry.queued.splice(0, drop);
      entry.figure.classList.toggle("gone", !(address in current));
      if (entry.times.length === 0 && !(address in current)) {
        entry.figure.remove();
        listeners.delete(address);
      }
    }
  }

  function ceiling(value) {
    const steps = [1, 2, 4, 5, 10];
    let scale = 1;
    while (scale * 10 <= value) scale *= 10;
    for (const step of steps) if (step * scale >= value) return step * scale;
    return 10 * scale;
  }

  function draw(entry, latest, current) {
    const count = entry.times.length;
    const maxActive = count ? Math.max(...entry.active) : 0;
    const maxQueued = count ? Math.max(...entry.queued) : 0;
    const top = ceiling(Math.max(1, maxActive, maxQueued));
    const start = latest - windowSeconds;
    const x = (time) => ((time - start) / windowSeconds * WIDTH).toFixed(1);
    const y = (value) => (HEIGHT - 1 - value / top * (HEIGHT - 2)).toFixed(1);
    const line = (values) => entry.times.map((time, i) => x(time) + "," + y(values[i])).join(" ");
    entry.activeLine.setAttribute("points", line(entry.active));
    entry.queuedLine.setAttribute("points", line(entry.queued));
    entry.svg.setAttribute("data-points", String(count));
    entry.svg.setAttribute("data-max-active", String(maxActive));
    entry.svg.setAttribute("data-max-queued", String(maxQueued));
    entry.top.textContent = String(top);
    entry.middle.textContent = top % 2 === 0 ? String(top / 2) : "";
    const now = current[entry.address];
    entry.activeNow.textContent = now ? String(now.active) : "-";
    entry.queuedNow.textContent = now ? String(now.queued) : "-";
  }

  function cell(child) { const td = element("td"); td.append(child); return td; }

  function row(address, now) {
    const tr = element("tr");
    const form = element("form", {"action": "reset/" + escaped(address), "method": "post"});
    form.append(element("input", {"title": "reset statistics", "type": "submit", "name": "x", "value": "x"}));
    tr.append(
      cell(element("a", {"href": "tail/" + escaped(address) + ".txt", "title": "\"tail\" output in real time"}, address)),
      cell(element("a", {"href": "active/" + escaped(address) + ".html", "title": "show active connection stats"}, String(now.active))),
      cell(element("a", {"href": "queued/" + escaped(address) + ".html", "title": "show queued connection stats"}, String(now.queued))),
      cell(form));
    return tr;
  }

  function table(current) {
    const addresses = Object.keys(current).sort();
    const shown = [...rows.rows].map((tr) => tr.cells[0].textContent);
    if (shown.join("\n") !== addresses.join("\n")) {
      rows.replaceChildren(...addresses.map((address) => row(address, current[address])));
      return;
    }
    addresses.forEach((address, i) => {
      const cells = rows.rows[i].cells;
      cells[1].firstChild.textContent = String(current[address].active);
      cells[2].firstChild.textContent = String(current[address].queued);
    });
  }

  async function refresh() {
    try {
      const response = await fetch("series.json?since=" + since, {"cache": "no-store"});
      if (!response.ok) throw new Error("HTTP " + response.status);
      const data = await response.json();
      record(data.points);
      if (data.updated) since = data.updated;
      forget(since - windowSeconds, data.listeners);
      for (const entry of listeners.values()) draw(entry, since, data.listeners);
      table(data.listeners);
      if (data.updated) updated.textContent = new Date(data.updated * 1000).toISOString().replace(/\.\d+Z$/, "Z");
      status.textContent = "";
    } catch (error) {
      status.textContent = "No answer from the watcher (" + error.message + "); retrying every second.";
    }
    setTimeout(refresh, PERIOD_MS);
  }
  refresh();
})();
""".strip()


def _source_hash(source: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(source.encode()).digest()).decode() + "'"


CONTENT_SECURITY_POLICY = (
    f"default-src 'none'; script-src {_source_hash(SCRIPT)}; style-src {_source_hash(CSS)}; "
    "connect-src 'self'; img-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
"""Only the inline blocks above may run, and only the Watcher itself may be fetched."""
PAGE_CONTENT_SECURITY_POLICY = (
    f"default-src 'none'; style-src {_source_hash(CSS)}; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
"""The per-listener pages: no script at all."""


def escape_path(address: str) -> str:
    """A listener name as one URL path segment ("/" and ":" escaped, as raindrops' links do)."""
    return quote(address, safe="", errors="surrogateescape")


def _row(address: str, stats: ListenStats) -> str:
    link = html.escape(escape_path(address))
    name = html.escape(address)
    return (
        f"<tr><td><a href='tail/{link}.txt' title='&quot;tail&quot; output in real time'>{name}</a></td>"
        f"<td><a href='active/{link}.html' title='show active connection stats'>{stats.active}</a></td>"
        f"<td><a href='queued/{link}.html' title='show queued connection stats'>{stats.queued}</a></td>"
        f"<td><form action='reset/{link}' method='post'>"
        "<input title='reset statistics' type='submit' name='x' value='x'></form></td></tr>"
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
        "<span><span class='swatch queued'></span>queued (in the accept queue)</span></div></header>"
        "<p id='status' role='status'></p>"
        "<section id='charts' aria-label='active and queued connections per listener over time'></section>"
        "<table id='listeners'><thead><tr><th>address</th><th>active</th><th>queued</th><th>reset</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
        "<footer><p>This is raindrops.Watcher. Per listener: <code>active/ADDR.txt</code>, <code>.html</code> and "
        "<code>.json</code> (and the same for <code>queued</code>) give a histogram with X-* headers; "
        "<code>tail/ADDR.txt?active_min=N&amp;queued_min=M</code> streams one line per sample; "
        "<code>series.json</code> feeds this page.</p></footer>"
        f"<script>{SCRIPT}</script></body></html>\n"
    )


def listener_page(host: str, address: str, kind: str, headers: Sequence[tuple[str, str]], histogram: str) -> str:
    """raindrops' per-listener page: the X-* headers as a table, the histogram, a reset button."""
    cells = "".join(
        f"<tr><td>{html.escape(name.removeprefix('X-'))}</td><td>{html.escape(value)}</td></tr>"
        for name, value in headers
        if name.startswith("X-")
    )
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(host)} - {html.escape(address)}</title><style>{CSS}</style></head>"
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
    "SCRIPT",
    "escape_path",
    "index_page",
    "listener_page",
]
