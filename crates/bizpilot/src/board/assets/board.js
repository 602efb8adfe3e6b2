// bizpilot business board: live updates over server-sent events, money per currency with Intl.NumberFormat
// (from the server's exact decimal strings, never re-added here), and plain SVG charts of the last hour.
"use strict";
(function () {
  var $ = function (id) { return document.getElementById(id); };
  var points = [];        // [t, et, revenue, at_risk, recovered, failed, operations, failed_per_min, revenue_per_min]
  var currency = "USD";
  var last = {};          // section id -> last HTML swapped in
  var fmts = {};
  var MAX = 3600;

  function moneyFormat(c) {
    if (!fmts[c]) {
      try { fmts[c] = new Intl.NumberFormat(undefined, { style: "currency", currency: c }); }
      catch (e) { fmts[c] = null; }
    }
    return fmts[c];
  }
  // Money: the exact decimal string goes to Intl as a string (exact decimal formatting, no float re-adding).
  function formatMoney(root) {
    var els = root.querySelectorAll(".money[data-amount]");
    for (var i = 0; i < els.length; i++) {
      var f = moneyFormat(els[i].getAttribute("data-currency"));
      if (f) { els[i].textContent = f.format(els[i].getAttribute("data-amount")); }
    }
  }
  var timeFmt = new Intl.DateTimeFormat(undefined, { month: "short", day: "numeric", hour: "2-digit",
    minute: "2-digit", second: "2-digit", hourCycle: "h23", timeZone: "UTC" });
  function formatTimes(root) {
    var els = root.querySelectorAll("time[datetime]");
    for (var i = 0; i < els.length; i++) {
      var d = new Date(els[i].getAttribute("datetime"));
      if (!isNaN(d)) { els[i].textContent = timeFmt.format(d) + " UTC"; }
    }
  }

  // Tier filter over the customer table (client side: the table holds the top customers by cart value).
  function applyTier() {
    var sel = $("tier"), body = $("customers-body");
    if (!sel || !body) { return; }
    var rows = body.querySelectorAll("tbody tr[data-tier]"), seen = {};
    for (var i = 0; i < rows.length; i++) {
      var t = rows[i].getAttribute("data-tier");
      seen[t] = true;
      rows[i].hidden = !!sel.value && t !== sel.value;
    }
    var have = {};
    for (var j = 0; j < sel.options.length; j++) { have[sel.options[j].value] = true; }
    Object.keys(seen).sort().forEach(function (t) {
      if (!have[t]) { var o = document.createElement("option"); o.value = t; o.textContent = t; sel.appendChild(o); }
    });
    $("csv").setAttribute("href", "/board/customers.csv" + (sel.value ? "?tier=" + encodeURIComponent(sel.value) : ""));
  }

  function swap(sections) {
    Object.keys(sections).forEach(function (id) {
      var el = $(id);
      if (!el || last[id] === sections[id]) { return; }
      last[id] = sections[id];
      el.innerHTML = sections[id];
      formatMoney(el);
      formatTimes(el);
      if (id === "customers-body") { applyTier(); }
    });
  }

  // ---- charts (plain SVG) ----
  var NS = "http://www.w3.org/2000/svg";
  function el(name, attrs, text) {
    var e = document.createElementNS(NS, name);
    Object.keys(attrs).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    if (text !== undefined) { e.textContent = text; }
    return e;
  }
  function short(v) {
    var a = Math.abs(v);
    if (a >= 1e6) { return (v / 1e6).toFixed(a >= 1e7 ? 0 : 1) + "M"; }
    if (a >= 1e3) { return (v / 1e3).toFixed(a >= 1e4 ? 0 : 1) + "k"; }
    return a >= 10 || v === 0 ? v.toFixed(0) : v.toFixed(1);
  }
  function hhmm(ms) { var d = new Date(ms); return d.toISOString().substr(11, 5); }
  function draw(target, series, opts) {
    var box = $(target);
    if (!box) { return; }
    var w = box.clientWidth || 400, h = box.clientHeight || 160, l = 44, r = 8, t = 8, b = 20;
    var svg = el("svg", { viewBox: "0 0 " + w + " " + h, preserveAspectRatio: "none" });
    var xs = [], ymax = opts.min || 0;
    series.forEach(function (s) { s.data.forEach(function (p) { xs.push(p[0]); if (p[1] > ymax) { ymax = p[1]; } }); });
    if (opts.goal && opts.goal > ymax) { ymax = opts.goal; }
    if (ymax <= 0) { ymax = 1; }
    ymax *= 1.1;
    var x0 = Math.min.apply(null, xs.length ? xs : [0]), x1 = Math.max.apply(null, xs.length ? xs : [1]);
    if (x1 <= x0) { x1 = x0 + 60000; }
    var X = function (x) { return l + (x - x0) / (x1 - x0) * (w - l - r); };
    var Y = function (y) { return t + (1 - y / ymax) * (h - t - b); };
    for (var i = 0; i <= 3; i++) {
      var yv = ymax / 1.1 * i / 3, yy = Y(yv);
      svg.appendChild(el("line", { x1: l, x2: w - r, y1: yy, y2: yy, "class": "axis" }));
      svg.appendChild(el("text", { x: l - 4, y: yy + 4, "text-anchor": "end" }, short(yv)));
    }
    if (xs.length) {
      svg.appendChild(el("text", { x: l, y: h - 4 }, hhmm(x0)));
      svg.appendChild(el("text", { x: w - r, y: h - 4, "text-anchor": "end" }, hhmm(x1) + " UTC"));
    } else {
      svg.appendChild(el("text", { x: w / 2, y: h / 2, "text-anchor": "middle" }, "no data in this range"));
    }
    if (opts.goal) {
      svg.appendChild(el("line", { x1: l, x2: w - r, y1: Y(opts.goal), y2: Y(opts.goal), "class": "l-goal" }));
      svg.appendChild(el("text", { x: w - r, y: Y(opts.goal) - 4, "text-anchor": "end" }, "goal pace"));
    }
    series.forEach(function (s) {
      if (!s.data.length) { return; }
      var d = s.data.map(function (p, k) { return (k ? "L" : "M") + X(p[0]).toFixed(1) + " " + Y(p[1]).toFixed(1); }).join("");
      if (s.area) {
        svg.appendChild(el("path", { d: d + "L" + X(s.data[s.data.length - 1][0]).toFixed(1) + " " + Y(0) + "L" + X(s.data[0][0]).toFixed(1) + " " + Y(0) + "Z", "class": s.area }));
      }
      svg.appendChild(el("path", { d: d, "class": s.cls }));
    });
    box.replaceChildren(svg);
  }

  var goalPerMin = 0;
  function range() {
    var sel = $("range").value;
    var withEt = points.filter(function (p) { return p[1] > 0; });
    if (!withEt.length) { return []; }
    if (sel === "custom") {
      var f = Date.parse($("from").value + "Z"), to = Date.parse($("to").value + "Z");
      return withEt.filter(function (p) { return (isNaN(f) || p[1] >= f) && (isNaN(to) || p[1] <= to); });
    }
    var end = withEt[withEt.length - 1][1], span = Number(sel) * 1000;
    return withEt.filter(function (p) { return p[1] >= end - span; });
  }
  function charts() {
    var ps = range();
    var col = function (k) { return ps.map(function (p) { return [p[1], p[k]]; }); };
    $("rev-unit").textContent = "(" + currency + ", event time)";
    draw("chart-revenue", [{ data: col(8), cls: "l-rev" }], { goal: goalPerMin });
    draw("chart-failed", [{ data: col(7), cls: "l-failed", area: "a-failed" }], {});
    draw("chart-risk", [{ data: col(3), cls: "l-risk" }, { data: col(4), cls: "l-rec" }], {});
  }
  function goalFromPage() {
    var g = document.querySelector('[data-testid="goal"]');
    goalPerMin = g ? Number(g.getAttribute("data-goal-per-min")) || 0 : 0;
  }

  function setLive(on, text) {
    var live = $("live");
    live.className = "live " + (on ? "on" : "off");
    $("live-text").textContent = text;
  }

  var pending = false;
  function redraw() {
    if (pending) { return; }
    pending = true;
    requestAnimationFrame(function () { pending = false; goalFromPage(); charts(); });
  }

  function connect() {
    if (!window.EventSource) { setLive(false, "no live updates in this browser"); return; }
    var es = new EventSource("/board/events");
    es.addEventListener("history", function (e) {
      var h = JSON.parse(e.data);
      points = h.points || [];
      if (h.currency) { currency = h.currency; }
      redraw();
    });
    es.addEventListener("tick", function (e) {
      var m = JSON.parse(e.data);
      swap(m.sections);
      var cap = !!m.capacity;
      $("capacity").hidden = !cap;
      $("nav-capacity").hidden = !cap;
      currency = m.currency || currency;
      points.push(m.point);
      if (points.length > MAX) { points.shift(); }
      setLive(true, "live · updated " + new Date().toLocaleTimeString());
      document.body.setAttribute("data-seq", String(m.seq));
      redraw();
    });
    es.onopen = function () { setLive(true, "live"); };
    es.onerror = function () { setLive(false, "reconnecting…"); };
  }

  function init() {
    formatMoney(document);
    formatTimes(document);
    applyTier();
    $("tier").addEventListener("change", applyTier);
    $("range").addEventListener("change", function () {
      $("custom").hidden = $("range").value !== "custom";
      redraw();
    });
    $("from").addEventListener("change", redraw);
    $("to").addEventListener("change", redraw);
    window.addEventListener("resize", redraw);
    redraw();
    connect();
  }
  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", init); } else { init(); }
})();
