// pml's dashboard: polls /api/state every second, keeps 15 minutes of samples, draws them as
// SVG, follows one app's logs over server-sent events, and sends the buttons' actions.
// Everything that comes from apps (names, log lines, reasons) goes into the page as text, never as HTML.
"use strict";

const token = new URLSearchParams(location.search).get("token") || "";
const COLORS = ["#58a6ff", "#3fb950", "#d29922", "#bc8cff", "#ff7b72", "#39c5cf", "#f778ba", "#a5d6ff"];
const KIND_COLOR = { crash: "#f85149", reload: "#58a6ff", scale: "#bc8cff", restart: "#d29922", stop: "#8b949e", action: "#39c5cf" };
const SVG = "http://www.w3.org/2000/svg";
const MAX_LOG_LINES = 500;

const state = {
  windowMs: 900000, now: Date.now(), lastT: 0, lastSeq: 0,
  // What the graphs show: the last 1, 5 or 15 minutes (#range=5 in the URL picks 5).
  viewMs: ([1, 5, 15].includes(Number(new URLSearchParams(location.hash.slice(1)).get("range")))
    ? Number(new URLSearchParams(location.hash.slice(1)).get("range")) : 15) * 60000,
  apps: [], appSeries: {}, workerSeries: {}, events: [],
  logApp: null, logSource: null, busy: {}, confirm: {}, failures: 0,
};

// ---- helpers

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) e.append(c instanceof Node ? c : String(c));
  return e;
}

function svg(tag, attrs) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  return e;
}

function fmtBytes(n) {
  if (!(n >= 1)) return "0 B";
  const u = ["B", "KB", "MB", "GB", "TB"];
  const i = Math.min(u.length - 1, Math.floor(Math.log(n) / Math.log(1024)));
  const v = n / Math.pow(1024, i);
  return (v >= 100 || i === 0 ? v.toFixed(0) : v.toFixed(1)) + " " + u[i];
}

function fmtDuration(ms) {
  if (ms === null || ms === undefined) return "–";
  const s = Math.floor(ms / 1000);
  if (s < 60) return s + "s";
  const m = Math.floor(s / 60);
  if (m < 60) return m + "m " + (s % 60) + "s";
  const h = Math.floor(m / 60);
  if (h < 24) return h + "h " + (m % 60) + "m";
  return Math.floor(h / 24) + "d " + (h % 24) + "h";
}

function fmtClock(t) {
  const d = new Date(t);
  return [d.getHours(), d.getMinutes(), d.getSeconds()].map((x) => String(x).padStart(2, "0")).join(":");
}

function fmtRate(v) { return v >= 100 ? v.toFixed(0) : v.toFixed(1); }

function pill(status) { return el("span", { class: "pill s-" + status }, status); }

function api(path) { return path + (path.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token); }

function toast(text, bad) {
  const t = document.getElementById("toast");
  t.textContent = text;
  t.className = "toast" + (bad ? " bad" : "");
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => t.classList.add("hidden"), bad ? 8000 : 3500);
}

// ---- data

function mergeSeries(store, key, incoming) {
  const s = store[key] || (store[key] = { app: incoming.app, instance: incoming.instance, t: [], cpu: [], mem: [], cps: [] });
  for (let i = 0; i < incoming.t.length; i++) {
    s.t.push(incoming.t[i]); s.cpu.push(incoming.cpu[i]); s.mem.push(incoming.mem[i]); s.cps.push(incoming.cps[i]);
  }
}

function trimSeries(store, cutoff) {
  for (const [key, s] of Object.entries(store)) {
    let drop = 0;
    while (drop < s.t.length && s.t[drop] < cutoff) drop++;
    if (drop) { s.t.splice(0, drop); s.cpu.splice(0, drop); s.mem.splice(0, drop); s.cps.splice(0, drop); }
    if (!s.t.length) delete store[key];
  }
}

async function poll() {
  try {
    const r = await fetch(api("/api/state?since=" + state.lastT + "&events=" + state.lastSeq), { cache: "no-store" });
    if (!r.ok) throw new Error(r.status === 403 ? "403 forbidden: open the URL pml dashboard prints (it carries the token)" : "HTTP " + r.status);
    const s = await r.json();
    state.failures = 0;
    state.now = s.now;
    state.windowMs = s.window_ms;
    state.daemon = s.daemon;
    state.apps = s.apps;
    for (const a of s.apps) mergeSeries(state.appSeries, a.name, a.series);
    for (const [id, ws] of Object.entries(s.workers)) mergeSeries(state.workerSeries, id, ws);
    for (const a of s.apps) for (const t of a.series.t) state.lastT = Math.max(state.lastT, t);
    for (const ws of Object.values(s.workers)) for (const t of ws.t) state.lastT = Math.max(state.lastT, t);
    trimSeries(state.appSeries, s.now - s.window_ms);
    trimSeries(state.workerSeries, s.now - s.window_ms);
    for (const e of s.events) { state.events.push(e); state.lastSeq = Math.max(state.lastSeq, e.seq); }
    if (state.events.length > 500) state.events.splice(0, state.events.length - 500);
    state.updatedAt = Date.now();
    setBanner(null);
    render();
  } catch (e) {
    state.failures++;
    setBanner("Cannot reach the pml daemon: " + e.message + (state.failures > 1 ? " (retrying)" : ""));
    document.getElementById("live").classList.add("down");
    document.getElementById("live-text").textContent = "disconnected";
  } finally {
    setTimeout(poll, 1000);
  }
}

function setBanner(text) {
  const b = document.getElementById("banner");
  b.textContent = text || "";
  b.classList.toggle("hidden", !text);
}

// ---- actions

async function act(app, cmd, count) {
  const key = app + ":" + cmd + (count || "");
  if ((cmd === "stop" || cmd === "restart") && !state.confirm[key]) {
    // Two clicks for what interrupts service: the first arms the button for 3 s.
    state.confirm[key] = setTimeout(() => { delete state.confirm[key]; render(); }, 3000);
    return render();
  }
  clearTimeout(state.confirm[key]);
  delete state.confirm[key];
  state.busy[key] = true;
  render();
  try {
    const r = await fetch("/api/action", {
      method: "POST", cache: "no-store",
      headers: { "Content-Type": "application/json", "X-PML-Token": token },
      body: JSON.stringify(count ? { cmd, target: app, count } : { cmd, target: app }),
    });
    const text = await r.text();
    let body = {};
    try { body = JSON.parse(text); } catch (_) { body = { ok: false, error: text.trim() }; }
    if (body.ok) toast(body.message || cmd + " " + app + ": done");
    else toast(body.error || "failed", true);
  } catch (e) {
    toast(cmd + " " + app + ": " + e.message, true);
  } finally {
    delete state.busy[key];
    render();
  }
}

const buttons = new Map();

/** The same element on every render (a click is never lost to a redraw), brought up to date. */
function actionButton(app, cmd, label, count, cls) {
  const key = app + ":" + cmd + (count || "");
  let b = buttons.get(key);
  if (!b) {
    b = el("button", { "data-action": cmd + (count ? count : ""), "data-app": app, onclick: () => act(app, cmd, count) });
    buttons.set(key, b);
  }
  const armed = !!state.confirm[key];
  b.className = (cls || "") + (armed ? " confirm" : "");
  b.disabled = !!state.busy[key];
  b.title = armed ? "click again to confirm" : "";
  b.textContent = state.busy[key] ? label + "…" : armed ? "confirm " + label.toLowerCase() + "?" : label;
  return b;
}

// ---- charts

function niceMax(v) {
  if (v <= 0) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

/** One chart: `lines` is [{color, t:[], v:[], fill}] over the last window; events become marks. */
const chartWidths = {};

function chart(title, now, lines, fmt, app, floor) {
  // The drawing's width is the chart's width on screen at the last render: text is never stretched.
  const W = chartWidths[app + "/" + title] || 400, H = 112, L = 44, R = 6, T = 10, B = 16;
  const span = state.viewMs, start = now - span;
  lines = lines.map((l) => {
    let i = 0;
    while (i < l.t.length && l.t[i] < start) i++;
    return i ? { ...l, t: l.t.slice(i), v: l.v.slice(i) } : l;
  });
  let max = 0;
  for (const l of lines) for (const v of l.v) max = Math.max(max, v);
  max = niceMax(Math.max(max * 1.1, floor || 0));
  const x = (t) => L + ((t - start) / span) * (W - L - R);
  const y = (v) => T + (1 - v / max) * (H - T - B);
  const s = svg("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img", "aria-label": title });
  for (const f of [0, 0.5, 1]) {
    s.append(svg("line", { class: "gridline", x1: L, x2: W - R, y1: y(max * f), y2: y(max * f) }));
    const label = svg("text", { class: "axis", x: L - 4, y: y(max * f) + 3, "text-anchor": "end" });
    label.textContent = fmt(max * f);
    s.append(label);
  }
  for (const f of [1, 2 / 3, 1 / 3, 0]) {
    const ago = span * f;
    const label = svg("text", { class: "axis", x: x(now - ago), y: H - 3, "text-anchor": f === 1 ? "start" : f === 0 ? "end" : "middle" });
    label.textContent = f === 0 ? "now" : ago >= 60000 ? "-" + Math.round(ago / 60000) + "m" : "-" + Math.round(ago / 1000) + "s";
    s.append(label);
  }
  for (const e of state.events) {
    if (e.app !== app || e.t < start || !["crash", "reload", "scale", "restart", "stop"].includes(e.kind)) continue;
    s.append(svg("line", { class: "mark", x1: x(e.t), x2: x(e.t), y1: T, y2: H - B, stroke: KIND_COLOR[e.kind] }));
    const dot = svg("circle", { cx: x(e.t), cy: T - 4, r: 3, fill: KIND_COLOR[e.kind] });
    const tip = svg("title", {});
    tip.textContent = fmtClock(e.t) + " " + e.kind + ": " + e.title;
    dot.append(tip);
    s.append(dot);
  }
  for (const l of lines) {
    if (!l.t.length) continue;
    const pts = l.t.map((t, i) => x(t).toFixed(1) + "," + y(l.v[i]).toFixed(1));
    if (l.fill) {
      s.append(svg("polygon", {
        class: "area", fill: l.color,
        points: x(l.t[0]).toFixed(1) + "," + y(0) + " " + pts.join(" ") + " " + x(l.t[l.t.length - 1]).toFixed(1) + "," + y(0),
      }));
    }
    s.append(svg("polyline", { class: "line", stroke: l.color, points: pts.join(" "), "data-points": l.t.length }));
  }
  const last = lines.find((l) => l.total) || lines[0];
  const current = last && last.v.length ? fmt(last.v[last.v.length - 1]) : "–";
  return el("div", { class: "chart", "data-chart": title.toLowerCase(), "data-key": app + "/" + title },
    el("div", { class: "chart-title" }, el("span", {}, title), el("span", { class: "now" }, current)), s);
}

function appCharts(app) {
  const total = state.appSeries[app.name] || { t: [], cpu: [], mem: [], cps: [] };
  const workers = Object.entries(state.workerSeries).filter(([, s]) => s.app === app.name)
    .sort((a, b) => Number(a[0]) - Number(b[0]));
  const perWorker = (field) => workers.map(([, s]) => ({ color: COLORS[s.instance % COLORS.length], t: s.t, v: s[field] }));
  const totalLine = (field) => ({ color: "#8b949e", t: total.t, v: total[field], fill: true, total: true });
  const charts = [
    chart("CPU %", state.now, [totalLine("cpu"), ...perWorker("cpu")], (v) => fmtRate(v) + "%", app.name),
    chart("Memory", state.now, [totalLine("mem"), ...perWorker("mem")], fmtBytes, app.name, 1 << 20),
  ];
  if (app.mode === "cluster" && app.listening.length) {
    charts.push(chart("Conns/s", state.now, [totalLine("cps"), ...perWorker("cps")], fmtRate, app.name));
  }
  return el("div", { class: "charts" }, charts);
}

// ---- rendering

function workerRate(id) {
  const s = state.workerSeries[id];
  return s && s.cps.length ? s.cps[s.cps.length - 1] : 0;
}

function appCard(app) {
  const online = app.workers.filter((w) => w.status === "online").length;
  const restarts = app.workers.reduce((n, w) => n + w.restarts, 0);
  const cluster = app.mode === "cluster" && app.listening.length > 0;
  const down = online < Math.max(1, app.instances);
  const facts = el("div", { class: "facts" },
    el("span", {}, el("b", {}, online + "/" + app.instances), " online"),
    el("span", {}, app.mode),
    app.listening.length ? el("span", {}, "listening ", el("b", {}, app.listening.join(", "))) : null,
    el("span", {}, el("b", {}, restarts), " restarts"),
    el("span", {}, el("b", {}, app.reloads), " reloads"),
    app.autoscale ? el("span", { title: app.autoscale_decision || "" }, "autoscale ", el("b", {}, app.autoscale)) : null,
    app.reloading ? el("span", { class: "pill s-starting" }, "reloading") : null);
  const name = app.name;
  const head = el("div", { class: "app-head" },
    el("span", { class: "app-name" }, name), pill(app.status), facts,
    el("div", { class: "actions" },
      actionButton(name, "reload", "Reload", null, "primary"),
      actionButton(name, "restart", "Restart"),
      actionButton(name, "scale", "Scale −", "-1"),
      actionButton(name, "scale", "Scale +", "+1"),
      actionButton(name, "stop", "Stop", null, "danger")));
  const rows = app.workers.map((w) => el("tr", { "data-worker": w.id, "data-pid": w.pid || "" },
    el("td", {}, el("span", { class: "swatch", "data-color": COLORS[w.instance % COLORS.length] }), w.id),
    el("td", { class: "num" }, w.instance),
    el("td", { class: "num pid" }, w.pid || "–"),
    el("td", {}, pill(w.status)),
    el("td", { class: "num" }, fmtDuration(w.uptime_ms)),
    el("td", { class: "num" }, w.restarts),
    el("td", { class: "num" }, w.pid ? fmtRate(w.cpu) + "%" : "–"),
    el("td", { class: "num" }, w.pid ? fmtBytes(w.memory) : "–"),
    cluster ? el("td", { class: "num" }, w.pid ? fmtRate(workerRate(w.id)) : "–") : null,
    el("td", { class: "reason" }, w.status_text || (w.status !== "online" ? w.reason || "" : ""))));
  const table = el("table", { class: "workers" },
    el("thead", {}, el("tr", {},
      el("th", {}, "id"), el("th", { class: "num" }, "inst"), el("th", { class: "num" }, "pid"), el("th", {}, "status"),
      el("th", { class: "num" }, "uptime"), el("th", { class: "num" }, "restarts"), el("th", { class: "num" }, "cpu"),
      el("th", { class: "num" }, "mem"), cluster ? el("th", { class: "num" }, "conn/s") : null, el("th", {}, ""))),
    el("tbody", {}, rows));
  const card = el("article", { class: "app" + (down ? " down" : ""), "data-app": name }, head, appCharts(app), table);
  // Colours come from a fixed palette, set through the CSSOM (inline style attributes are not allowed by the page's CSP).
  for (const s of card.querySelectorAll(".swatch")) s.style.background = s.getAttribute("data-color");
  return card;
}

function renderTimeline() {
  const list = document.getElementById("timeline");
  const items = state.events.slice(-200).reverse().map((e) => el("li", { class: e.ok ? "" : "failed", "data-kind": e.kind, "data-app": e.app },
    el("span", { class: "when", title: new Date(e.t).toString() }, fmtClock(e.t)),
    el("span", { class: "kind k-" + e.kind }, e.kind),
    el("div", { class: "what" },
      el("div", {}, el("span", { class: "ev-app" }, e.app), el("span", { class: "title" }, e.title)),
      e.detail ? el("div", { class: "detail" }, e.detail) : null)));
  list.replaceChildren(...(items.length ? items : [el("li", { class: "empty-row" }, el("span"), el("span"), el("div", { class: "detail" }, "nothing has happened yet: crashes, restarts, reloads and scales show here"))]));
  document.getElementById("timeline-count").textContent = state.events.length ? String(state.events.length) : "";
}

function render() {
  const apps = state.apps;
  const workers = apps.flatMap((a) => a.workers);
  const online = workers.filter((w) => w.status === "online").length;
  const errored = workers.filter((w) => w.status === "errored").length;
  const notReady = apps.filter((a) => !a.ready).length;
  document.getElementById("summary").replaceChildren(...[
    el("span", {}, apps.length + " app" + (apps.length === 1 ? "" : "s")),
    el("span", { class: online === workers.length ? "ok" : "warn" }, online + "/" + workers.length + " workers online"),
    errored ? el("span", { class: "bad" }, errored + " errored") : null,
    el("span", { class: notReady ? "warn" : "ok" }, notReady ? notReady + " not ready" : "ready"),
  ].filter(Boolean));
  if (state.daemon) {
    const d = state.daemon;
    document.getElementById("daemon").textContent = `pml ${d.version} · daemon pid ${d.pid} · up ${fmtDuration(d.uptime_ms)} · ${d.home}`;
  }
  document.title = `pml · ${online}/${workers.length} online`;
  document.getElementById("range").replaceChildren(...[1, 5, 15].map((m) => el("button", {
    class: state.viewMs === m * 60000 ? "on" : "", "data-range": m,
    onclick: () => { state.viewMs = m * 60000; history.replaceState(null, "", location.pathname + location.search + "#range=" + m); render(); },
  }, m + "m")));
  const live = document.getElementById("live");
  live.classList.remove("down");
  document.getElementById("live-text").textContent = "live · " + fmtClock(state.now);

  const container = document.getElementById("apps");
  const scroll = window.scrollY;
  container.replaceChildren(...(apps.length ? apps.map(appCard)
    : [el("div", { class: "panel empty" }, "No apps yet. Start one with ", el("code", {}, "pml start app.lua"), ".")]));
  window.scrollTo(0, scroll);
  let resized = false;
  for (const c of container.querySelectorAll(".chart")) {
    const svgEl = c.querySelector("svg");
    const w = Math.round(svgEl.getBoundingClientRect().width);
    if (w && chartWidths[c.dataset.key] !== w) { chartWidths[c.dataset.key] = w; resized = true; }
  }
  if (resized && !render.again) { render.again = true; render(); render.again = false; }
  renderTimeline();
  renderLogTabs();
}

// ---- logs

function renderLogTabs() {
  const names = state.apps.map((a) => a.name);
  if (!state.logApp || !names.includes(state.logApp)) {
    if (names.length) followLogs(names[0]);
  }
  const tabs = document.getElementById("log-tabs");
  const current = [...tabs.children].map((b) => b.textContent).join("\n");
  if (current === names.join("\n") && tabs.querySelector(".on")?.textContent === state.logApp) return;
  tabs.replaceChildren(...names.map((n) => el("button", { class: n === state.logApp ? "on" : "", "data-log-app": n, onclick: () => followLogs(n) }, n)));
}

function followLogs(app) {
  if (state.logSource) state.logSource.close();
  state.logApp = app;
  const box = document.getElementById("logs");
  box.replaceChildren(el("div", { class: "note" }, "following " + app + "'s logs…"));
  const source = new EventSource(api("/api/logs?app=" + encodeURIComponent(app)));
  state.logSource = source;
  const add = (stream) => (ev) => {
    box.append(el("div", { class: "l " + stream }, ev.data));
    while (box.childElementCount > MAX_LOG_LINES) box.firstElementChild.remove();
    if (document.getElementById("follow").checked) box.scrollTop = box.scrollHeight;
  };
  // Each (re)connection starts with the files' last lines: start the view afresh so none is shown twice.
  source.onopen = () => box.replaceChildren(el("div", { class: "note" }, "following " + app + "'s logs"));
  source.addEventListener("out", add("out"));
  source.addEventListener("err", add("err"));
  source.addEventListener("note", add("note"));
  source.onerror = () => {
    if (source.readyState === EventSource.CLOSED) box.append(el("div", { class: "note" }, "log stream closed"));
  };
  renderLogTabs();
}

poll();
