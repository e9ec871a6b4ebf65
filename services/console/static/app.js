// sentiflow console: plain JS, no dependencies. The server is the source of truth;
// this file renders what /api returns and what /api/stream announces.
"use strict";

const MAX_ROWS = 200;
const SETTLE_POLL_MS = 1000;
const SETTLE_GIVE_UP_MS = 10 * 60 * 1000;
const LABEL_ORDER = ["negative", "neutral", "positive"];

const state = {
  me: null,
  tab: "stream",
  filter: { entity: "", label: "", source: "" },
  source: null,
  entity: "",
  chartTimer: null,
  alerts: [],
  pending: new Map(), // doc id -> the settle text shown for it
  buffered: null, // documents streamed while the list reloads
};

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else if (k === "onclick") node.addEventListener("click", v);
    else node.setAttribute(k, v);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function toast(message, error) {
  const t = $("toast");
  t.textContent = message;
  t.className = error ? "show error" : "show";
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.className = ""; }, 4000);
}

class HttpError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path, options) {
  const opts = Object.assign({ credentials: "same-origin", headers: {} }, options || {});
  if (opts.body !== undefined && typeof opts.body !== "string") {
    opts.body = JSON.stringify(opts.body);
    opts.headers["Content-Type"] = "application/json";
  }
  const response = await fetch(path, opts);
  let data = {};
  try { data = await response.json(); } catch (_e) { data = {}; }
  if (response.status === 401 && path !== "/api/login") {
    showLogin();
    throw new HttpError(401, data.error || "log in first");
  }
  if (!response.ok) throw new HttpError(response.status, data.error || response.statusText);
  return data;
}

function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v) q.set(k, v);
  const s = q.toString();
  return s ? "?" + s : "";
}

function timeOf(seconds) {
  if (!seconds) return "";
  const d = new Date(seconds * 1000);
  return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

function pct(x) { return (100 * x).toFixed(0) + "%"; }

// -- login -------------------------------------------------------------------------

function showLogin() {
  if (state.source) { state.source.close(); state.source = null; }
  $("app").hidden = true;
  $("login").hidden = false;
  $("login-key").focus();
}

$("login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  $("login-error").textContent = "";
  try {
    await api("/api/login", { method: "POST", body: { key: $("login-key").value } });
    $("login-key").value = "";
    await start();
  } catch (e) {
    $("login-error").textContent = e.message;
  }
});

$("logout").addEventListener("click", async () => {
  await api("/api/logout", { method: "POST" }).catch(() => {});
  showLogin();
});

// -- tabs --------------------------------------------------------------------------

for (const button of document.querySelectorAll("#tabs button")) {
  button.addEventListener("click", () => selectTab(button.dataset.tab));
}

function selectTab(tab) {
  state.tab = tab;
  for (const b of document.querySelectorAll("#tabs button")) b.classList.toggle("active", b.dataset.tab === tab);
  for (const s of document.querySelectorAll(".tab")) s.classList.toggle("active", s.id === "tab-" + tab);
  if (tab === "entities") { loadEntities(); loadChart(); }
  if (tab === "models") loadModels();
  if (tab === "review") loadReview();
  if (tab === "alerts") renderAlerts();
}

// -- feedback buttons and settled labels -------------------------------------------------

function feedbackCell(doc) {
  const cell = el("td", { class: "feedback" });
  const labels = (doc.labels && doc.labels.length ? doc.labels : LABEL_ORDER);
  cell.append(el("button", {
    class: "confirm", "data-action": "confirm", title: "the label is right",
    onclick: () => sendFeedback(doc, "confirm", doc.label),
  }, "✓ confirm"));
  for (const label of labels) {
    if (label === doc.label) continue;
    cell.append(el("button", {
      class: "correct " + label, "data-action": "correct", "data-label": label,
      title: "correct to " + label,
      onclick: () => sendFeedback(doc, "correct", label),
    }, "→ " + label));
  }
  cell.append(el("span", { class: "settle", "data-doc-id": doc.id }));
  const pending = state.pending.get(doc.id);
  if (pending) setSettle(doc.id, pending.text, pending.cls);
  return cell;
}

function setSettle(docId, text, cls) {
  const entry = state.pending.get(docId) || {};
  entry.text = text; entry.cls = cls;
  state.pending.set(docId, entry);
  for (const span of document.querySelectorAll(".settle")) {
    if (span.dataset.docId !== docId) continue;
    span.textContent = text;
    span.className = "settle " + (cls || "");
  }
}

async function sendFeedback(doc, kind, label) {
  setSettle(doc.id, "sending…", "sending");
  try {
    const r = await api("/api/documents/" + encodeURIComponent(doc.id) + "/feedback", {
      method: "POST", body: { kind, label, model: doc.model },
    });
    setSettle(doc.id, (kind === "confirm" ? "confirmed " : "sent ") + label + " · waiting to settle", "sent");
    toast("feedback recorded (" + r.event_id.slice(0, 8) + ")");
    pollSettled(doc.id, doc.model, Date.now());
  } catch (e) {
    setSettle(doc.id, "✗ " + e.message, "failed");
    toast(e.status + ": " + e.message, true);
  }
}

async function pollSettled(docId, model, since) {
  try {
    const d = await api("/api/documents/" + encodeURIComponent(docId));
    const settled = d.settled && d.settled[model];
    if (settled) {
      setSettle(docId, "settled: " + settled.label, "settled settled-" + settled.label);
      return;
    }
    const n = (d.signals || []).length;
    setSettle(docId, "waiting to settle · " + n + " signal" + (n === 1 ? "" : "s"), "sent");
  } catch (e) {
    if (e.status !== 404 && e.status !== 503) { setSettle(docId, "✗ " + e.message, "failed"); return; }
  }
  if (Date.now() - since < SETTLE_GIVE_UP_MS) setTimeout(() => pollSettled(docId, model, since), SETTLE_POLL_MS);
}

// -- live stream -------------------------------------------------------------------

function docRow(doc) {
  return el("tr", { "data-doc-id": doc.id, class: "doc label-" + doc.label },
    el("td", { class: "time", text: timeOf(doc.scored_at) }),
    el("td", { class: "text" }, el("div", { text: doc.text }), el("small", { class: "muted", text: doc.source })),
    el("td", { class: "entities" }, ...doc.entities.map((e) => el("a", {
      href: "#", class: "entity", onclick: (ev) => { ev.preventDefault(); showEntity(e); },
    }, e))),
    el("td", {}, el("span", { class: "label " + doc.label, text: doc.label })),
    el("td", { class: "num", text: pct(doc.confidence) }),
    el("td", { class: "version", text: doc.version }),
    feedbackCell(doc));
}

function matches(doc) {
  const f = state.filter;
  return (!f.entity || doc.entities.includes(f.entity)) && (!f.label || doc.label === f.label)
    && (!f.source || doc.source === f.source);
}

function addDocument(doc, atTop) {
  const rows = $("stream-rows");
  const existing = rows.querySelector(`tr[data-doc-id="${CSS.escape(doc.id)}"]`);
  if (existing) existing.remove();
  const row = docRow(doc);
  if (atTop) rows.prepend(row); else rows.append(row);
  while (rows.children.length > MAX_ROWS) rows.lastElementChild.remove();
  $("stream-empty").hidden = rows.children.length > 0;
}

async function loadDocuments() {
  state.buffered = [];
  let d;
  try {
    d = await api("/api/documents" + query(Object.assign({ limit: MAX_ROWS }, state.filter)));
  } finally {
    const buffered = state.buffered;
    state.buffered = null;
    if (d) {
      $("stream-rows").replaceChildren();
      for (const doc of d.documents) addDocument(doc, false);
    }
    for (const doc of buffered) addDocument(doc, true);
  }
  $("stream-empty").hidden = d.documents.length > 0;
  const select = $("filter-source");
  const current = select.value;
  select.replaceChildren(el("option", { value: "" }, "any"), ...d.sources.map((s) => el("option", { value: s }, s)));
  select.value = current;
}

function connect() {
  if (state.source) state.source.close();
  const source = new EventSource("/api/stream" + query(state.filter));
  state.source = source;
  source.addEventListener("open", () => { $("live").textContent = "live"; $("live").className = "live on"; });
  source.addEventListener("error", () => {
    $("live").textContent = "reconnecting"; $("live").className = "live off";
    if (source.readyState === EventSource.CLOSED) setTimeout(() => { if (state.source === source) start(); }, 2000);
  });
  source.addEventListener("document", (ev) => {
    const doc = JSON.parse(ev.data);
    if (matches(doc)) {
      if (state.buffered) state.buffered.push(doc); else addDocument(doc, true);
    }
    if (state.tab === "entities" && (!state.entity || doc.entities.includes(state.entity))) scheduleChart();
  });
  source.addEventListener("alert", (ev) => {
    const alert = JSON.parse(ev.data);
    state.alerts = [alert, ...state.alerts.filter((a) => !(a.id === alert.id && a.kind === alert.kind))];
    renderAlerts();
    if (state.tab === "entities") scheduleChart();
  });
  source.addEventListener("model", () => { if (state.tab === "models") loadModels(); });
}

function applyFilter() {
  state.filter = {
    entity: $("filter-entity").value.trim(),
    label: $("filter-label").value,
    source: $("filter-source").value,
  };
  loadDocuments().catch((e) => toast(e.message, true));
  connect();
}

$("filter-entity").addEventListener("change", applyFilter);
$("filter-label").addEventListener("change", applyFilter);
$("filter-source").addEventListener("change", applyFilter);
$("filters").addEventListener("submit", (ev) => { ev.preventDefault(); applyFilter(); });
$("filters").addEventListener("reset", () => setTimeout(applyFilter, 0));

// -- entities and the chart ----------------------------------------------------------

async function loadEntities() {
  const d = await api("/api/entities?limit=100");
  const list = $("entity-list");
  const all = el("li", { class: state.entity === "" ? "active" : "" },
    el("a", { href: "#", onclick: (ev) => { ev.preventDefault(); showEntity(""); } }, "all documents"));
  list.replaceChildren(all, ...d.entities.map((e) => el("li", {
    class: state.entity === e.entity ? "active" : "", "data-entity": e.entity,
  }, el("a", { href: "#", onclick: (ev) => { ev.preventDefault(); showEntity(e.entity); } }, e.entity),
  el("span", { class: "count", text: e.documents }))));
  $("entity-options").replaceChildren(...d.entities.map((e) => el("option", { value: e.entity })));
}

function showEntity(entity) {
  state.entity = entity;
  if (state.tab !== "entities") selectTab("entities"); else { loadEntities(); loadChart(); }
}

function scheduleChart() {
  if (state.chartTimer) return;
  state.chartTimer = setTimeout(() => { state.chartTimer = null; loadChart(); loadEntities(); }, 1000);
}

async function loadChart() {
  const d = await api("/api/chart" + query({ entity: state.entity }));
  $("chart-title").textContent = state.entity ? state.entity : "All documents";
  $("chart-window").textContent = "· " + d.window_s + " s windows";
  drawChart($("entity-chart"), d);
  const alerts = d.alerts;
  $("chart-alerts").replaceChildren(...alerts.slice(0, 20).map(alertItem));
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

// Top: volume per window as bars stacked by label. Bottom: each label's share of the
// window (100% stacked). Alerts: a red band over the windows they cover and a marker.
function drawChart(root, data) {
  const W = 900, H = 380, left = 48, right = 16, top = 26, volH = 196, gap = 40, shareH = 96;
  root.replaceChildren();
  const windows = data.windows;
  if (!windows.length) {
    root.append(svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty" }, "no documents in the kept windows"));
    return;
  }
  const step = data.window_s;
  const t0 = windows[0].start;
  const t1 = Math.max(windows[windows.length - 1].end, t0 + step * 10);
  const slots = Math.round((t1 - t0) / step);
  const slotW = (W - left - right) / slots;
  const x = (t) => left + ((t - t0) / step) * slotW;
  const maxVol = Math.max(1, ...windows.map((w) => w.total));
  const yVol = (v) => top + volH - (v / maxVol) * volH;
  const shareTop = top + volH + gap;

  // axes and grid
  root.append(svg("line", { x1: left, y1: top + volH, x2: W - right, y2: top + volH, class: "axis" }));
  root.append(svg("line", { x1: left, y1: shareTop + shareH, x2: W - right, y2: shareTop + shareH, class: "axis" }));
  for (const v of [0, Math.round(maxVol / 2), maxVol]) {
    root.append(svg("text", { x: left - 6, y: yVol(v) + 4, "text-anchor": "end", class: "tick" }, String(v)));
    root.append(svg("line", { x1: left, y1: yVol(v), x2: W - right, y2: yVol(v), class: "grid" }));
  }
  root.append(svg("text", { x: left, y: top - 12, class: "tick title" }, "documents per window"));
  root.append(svg("text", { x: left, y: shareTop - 8, class: "tick title" }, "share of the window"));
  for (const s of [0, 0.5, 1]) {
    const y = shareTop + shareH - s * shareH;
    root.append(svg("text", { x: left - 6, y: y + 4, "text-anchor": "end", class: "tick" }, pct(s)));
  }

  // alerts under the bars
  for (const a of data.alerts) {
    if (a.kind !== "raised" || a.window_end < t0 || a.window_start > t1) continue;
    const ax = x(Math.max(a.window_start, t0));
    const aw = Math.max(3, x(Math.min(a.window_end, t1)) - ax);
    const band = svg("rect", { x: ax, y: top, width: aw, height: volH + gap + shareH, class: "alert-band" });
    band.append(svg("title", {}, `alert ${a.entity}: ${pct(a.negative_share)} negative vs ${pct(a.baseline_share)} baseline, z ${a.z}`));
    root.append(band);
  }

  const labels = [...new Set(windows.flatMap((w) => Object.keys(w.counts)))]
    .sort((a, b) => (LABEL_ORDER.indexOf(a) + 99 * (LABEL_ORDER.indexOf(a) < 0)) - (LABEL_ORDER.indexOf(b) + 99 * (LABEL_ORDER.indexOf(b) < 0)));
  const barW = Math.max(1, slotW * 0.8);
  for (const w of windows) {
    const bx = x(w.start) + (slotW - barW) / 2;
    let acc = 0, shareAcc = 0;
    const title = `${timeOf(w.start)}: ${w.total} docs, ` + labels.map((l) => `${l} ${w.counts[l] || 0}`).join(", ");
    for (const label of labels) {
      const n = w.counts[label] || 0;
      if (!n) continue;
      const y0 = yVol(acc), y1 = yVol(acc + n);
      const bar = svg("rect", { x: bx, y: y1, width: barW, height: Math.max(0.5, y0 - y1), class: "bar " + label, "data-window": w.start });
      bar.append(svg("title", {}, title));
      root.append(bar);
      acc += n;
      const share = n / w.total;
      const sy = shareTop + shareH - (shareAcc + share) * shareH;
      root.append(svg("rect", { x: bx, y: sy, width: barW, height: share * shareH, class: "share " + label }));
      shareAcc += share;
    }
  }

  // time labels
  const every = Math.max(1, Math.ceil(slots / 8));
  for (let i = 0; i <= slots; i += every) {
    const t = t0 + i * step;
    if (x(t) > W - right - 16) break;
    root.append(svg("text", { x: x(t), y: top + volH + 16, "text-anchor": "middle", class: "tick" }, timeOf(t).slice(0, 5)));
  }

  // alert markers on top
  for (const a of data.alerts) {
    if (a.window_end < t0 || a.window_start > t1) continue;
    const mx = x(Math.min(Math.max(a.window_end, t0), t1));
    const cls = a.kind === "raised" ? "alert-mark" : "alert-mark resolved";
    const mark = svg("path", { d: `M ${mx - 6} ${top - 2} L ${mx + 6} ${top - 2} L ${mx} ${top + 9} Z`, class: cls });
    mark.append(svg("title", {}, `${a.kind} ${a.severity}: ${pct(a.negative_share)} negative`));
    root.append(mark);
  }
}

// -- alerts ------------------------------------------------------------------------

function alertItem(a) {
  return el("li", { class: "alert " + a.kind + " " + a.severity, "data-alert-id": a.id },
    el("div", { class: "head" },
      el("strong", {}, el("a", { href: "#", onclick: (ev) => { ev.preventDefault(); showEntity(a.entity); } }, a.entity)),
      el("span", { class: "badge " + a.kind, text: a.kind }),
      el("span", { class: "badge " + a.severity, text: a.severity }),
      el("span", { text: `${pct(a.negative_share)} negative (baseline ${pct(a.baseline_share)}), ${a.negative_count}/${a.volume} docs, z ${a.z}` }),
      el("span", { class: "muted", text: `${timeOf(a.window_start)}–${timeOf(a.window_end)}${a.source ? " · " + a.source : ""}` })),
    a.examples.length ? el("ul", { class: "examples" }, ...a.examples.map((e) => el("li", { "data-doc-id": e.doc_id, text: e.text }))) : null);
}

async function loadAlerts() {
  const d = await api("/api/alerts?limit=200");
  state.alerts = d.alerts;
  renderAlerts();
}

function renderAlerts() {
  const raised = state.alerts.filter((a) => a.kind === "raised").length;
  $("alert-count").textContent = raised ? String(raised) : "";
  if (state.tab !== "alerts") return;
  $("alert-list").replaceChildren(...state.alerts.map(alertItem));
  $("alerts-empty").hidden = state.alerts.length > 0;
}

// -- models ------------------------------------------------------------------------

function metricText(metrics) {
  const keys = Object.keys(metrics).filter((k) => /accuracy|f1/.test(k)).slice(0, 4);
  return keys.map((k) => `${k} ${metrics[k].toFixed(3)}`).join(" · ") || "–";
}

async function modelAction(path, body, what) {
  if (!confirm(what + "?")) return;
  try {
    const r = await api(path, { method: "POST", body: body || {} });
    $("model-msg").textContent = `${r.model} ${r.version} is production`;
    loadModels();
  } catch (e) {
    $("model-msg").textContent = "✗ " + e.message;
  }
}

async function loadModels() {
  const d = await api("/api/models");
  const operator = state.me && state.me.operator;
  $("models-note").textContent = d.live_error ? "live accuracy unavailable: " + d.live_error : "";
  $("model-rows").replaceChildren(...d.versions.map((v) => el("tr", { "data-version": v.version, class: "stage-" + v.stage },
    el("td", { text: v.model }),
    el("td", { text: v.version }),
    el("td", {}, el("span", { class: "badge " + v.stage, text: v.stage })),
    el("td", {}, v.serving ? el("span", { class: "badge " + v.serving, text: v.serving }) : "–"),
    el("td", { text: v.parent || "–" }),
    el("td", { text: metricText(v.metrics) }),
    el("td", { text: v.live ? `accuracy ${v.live.accuracy.toFixed(3)} · F1 ${v.live.macro_f1.toFixed(3)} on ${v.live.settled}` : "–" }),
    el("td", { class: "reason", text: v.reason || "" }),
    el("td", {}, operator && v.stage !== "production"
      ? el("button", { class: "operator promote", onclick: () => modelAction(`/api/models/${encodeURIComponent(v.model)}/${encodeURIComponent(v.version)}/promote`, {}, `Promote ${v.model} ${v.version} to production`) }, "promote")
      : null))));
  $("rollback").hidden = !operator || !d.versions.length;
}

$("rollback").addEventListener("click", () => {
  const model = (state.me && state.me.model) || "sentiment";
  modelAction(`/api/models/${encodeURIComponent(model)}/rollback`, {}, `Roll ${model} back to the previous production version`);
});

// -- review queue --------------------------------------------------------------------

async function loadReview() {
  try {
    const d = await api("/api/review?limit=50");
    $("review-rows").replaceChildren(...d.documents.map((doc) => el("tr", { "data-doc-id": doc.id },
      el("td", { class: "num", text: doc.margin.toFixed(3) }),
      el("td", { class: "text", text: doc.text }),
      el("td", { text: doc.entities.join(", ") }),
      el("td", {}, el("span", { class: "label " + doc.label, text: doc.label })),
      el("td", { class: "scores", text: Object.entries(doc.scores).map(([l, s]) => `${l} ${pct(s)}`).join(" · ") }),
      el("td", { class: "version", text: doc.version }),
      feedbackCell(Object.assign({ labels: Object.keys(doc.scores) }, doc)))));
    $("review-empty").hidden = d.documents.length > 0;
  } catch (e) {
    $("review-empty").hidden = false;
    $("review-empty").textContent = e.message;
  }
}
$("review-refresh").addEventListener("click", loadReview);

// -- start ---------------------------------------------------------------------------

async function start() {
  try {
    state.me = await api("/api/me");
  } catch (_e) {
    return; // showLogin already ran for a 401
  }
  $("login").hidden = true;
  $("app").hidden = false;
  $("user").textContent = state.me.open ? "open console" : state.me.name + (state.me.operator ? " (operator)" : "");
  $("logout").hidden = state.me.open;
  document.body.classList.toggle("is-operator", !!state.me.operator);
  connect();
  await Promise.all([loadDocuments(), loadAlerts(), loadEntities()]).catch((e) => toast(e.message, true));
  selectTab(state.tab);
  document.body.dataset.ready = "true";
}

start();
