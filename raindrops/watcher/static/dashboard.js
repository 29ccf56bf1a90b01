"use strict";
(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const WIDTH = 600, HEIGHT = 150, PERIOD_MS = 1000;
  const windowSeconds = Number(document.body.dataset.window) || 300;
  const charts = document.getElementById("charts");
  const rows = document.querySelector("#listeners tbody");
  const rowTemplate = document.getElementById("listener-row");
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
    const link = element("a", {"href": "tail/" + escaped(address) + ".txt",
                               "title": "\"tail\" output in real time"}, address);
    const now = element("span", {"class": "now"});
    const activeNow = element("a", {"class": "active",
                                    "href": "active/" + escaped(address) + ".html"});
    const queuedNow = element("a", {"class": "queued",
                                    "href": "queued/" + escaped(address) + ".html"});
    now.append("active ", activeNow, " \u00b7 queued ", queuedNow);
    caption.append(link, now);
    const svg = vector("svg", {"viewBox": "0 0 " + WIDTH + " " + HEIGHT,
                               "preserveAspectRatio": "none", "role": "img",
                               "aria-label": "active and queued connections of " + address,
                               "data-listener": address, "data-points": "0",
                               "data-max-active": "0", "data-max-queued": "0"});
    for (let i = 0; i <= 4; i++) {
      const y = String(1 + i * (HEIGHT - 2) / 4);
      svg.append(vector("line", {"x1": "0", "x2": String(WIDTH), "y1": y, "y2": y}));
    }
    const queuedLine = vector("polyline", {"class": "queued", "points": ""});
    const activeLine = vector("polyline", {"class": "active", "points": ""});
    svg.append(queuedLine, activeLine);
    const top = element("span", {}, "1"), middle = element("span", {}, "");
    const bottom = element("span", {}, "0");
    const yaxis = element("div", {"class": "yaxis"});
    yaxis.append(top, middle, bottom);
    const plot = element("div", {"class": "plot"});
    plot.append(yaxis, svg);
    const xaxis = element("div", {"class": "xaxis"});
    const span = windowSeconds >= 120 ? Math.round(windowSeconds / 60) + " min"
                                      : Math.round(windowSeconds) + " s";
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

  // A copy of the page's one row template (the server renders its rows from the same markup):
  // its links get the escaped name in place of {link}, its cells the texts, never markup.
  function row(address, now) {
    const tr = rowTemplate.content.firstElementChild.cloneNode(true);
    for (const node of tr.querySelectorAll("[href], [action]")) {
      const name = node.hasAttribute("href") ? "href" : "action";
      node.setAttribute(name, node.getAttribute(name).replace("{link}", () => escaped(address)));
    }
    tr.cells[0].firstChild.textContent = address;
    tr.cells[1].firstChild.textContent = String(now.active);
    tr.cells[2].firstChild.textContent = String(now.queued);
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
      if (data.updated) {
        updated.textContent = new Date(data.updated * 1000).toISOString().replace(/\.\d+Z$/, "Z");
      }
      status.textContent = "";
    } catch (error) {
      status.textContent =
        "No answer from the watcher (" + error.message + "); retrying every second.";
    }
    setTimeout(refresh, PERIOD_MS);
  }
  refresh();
})();
