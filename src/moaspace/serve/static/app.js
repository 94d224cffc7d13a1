// moaspace query page: upload or paste signatures, show the calls, the map and the
// explanations. No external code; every value from a file is set as text, never as HTML.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const $ = (id) => document.getElementById(id);
const state = { map: null, classes: [], lastForm: null, calibrated: true };

function el(tag, attrs = {}, text = null) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== null) node.textContent = text;
  return node;
}

function svg(tag, attrs = {}) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

// a stable colour per MoA index (golden-angle hues)
function colour(i) {
  return `hsl(${(i * 137.508) % 360}, 62%, ${i % 2 ? 42 : 55}%)`;
}

function fmt(x, digits = 3) {
  return x === null || x === undefined ? "–" : Number(x).toFixed(digits);
}

async function getJSON(url) {
  const res = await fetch(url, { credentials: "same-origin" });
  if (!res.ok) throw new Error((await res.json().catch(() => ({}))).detail || res.statusText);
  return res.json();
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

function buildForm() {
  const form = new FormData();
  const file = $("file").files[0];
  const pasted = $("paste").value.trim();
  if (file) form.append("file", file, file.name);
  else if (pasted) form.append("file", new Blob([pasted + "\n"], { type: "text/plain" }), "pasted");
  else return null;
  return form;
}

function groupBy() {
  const level = document.querySelector("input[name=level]:checked").value;
  return level === "compound" ? $("group-by").value.trim() : "";
}

async function post(form, format) {
  const params = new URLSearchParams({ format });
  const group = groupBy();
  if (group) params.set("group_by", group);
  const res = await fetch(`api/predict?${params}`, {
    method: "POST", body: form, credentials: "same-origin",
  });
  if (!res.ok) {
    const body = await res.json().catch(() => ({}));
    throw new Error(`${res.status}: ${body.detail || res.statusText}`);
  }
  return res;
}

async function run(event) {
  event.preventDefault();
  showError("");
  const form = buildForm();
  if (!form) { showError("Choose a file or paste a matrix first."); return; }
  $("run").disabled = true;
  $("status").textContent = "predicting…";
  try {
    const res = await post(form, "json");
    const payload = await res.json();
    state.lastForm = form;
    render(payload);
    $("status").textContent = "";
  } catch (err) {
    $("status").textContent = "";
    showError(err.message);
  } finally {
    $("run").disabled = false;
  }
}

function render(payload) {
  const rows = payload.compounds || payload.signatures;
  state.calibrated = payload.calibrated;
  $("score-head").textContent = payload.compounds ? "mean score" :
    (payload.calibrated ? "probability" : "score (uncalibrated)");
  const unknown = rows.filter((r) => r.unknown).length;
  $("summary").textContent = `${payload.n_signatures} signatures` +
    (payload.compounds ? `, ${rows.length} groups of ${payload.group_by}` : "") +
    `; ${unknown} unknown; method ${payload.method}`;
  const body = document.querySelector("#results-table tbody");
  body.replaceChildren();
  for (const r of rows) body.appendChild(resultRow(r));
  $("results").hidden = false;
  drawQueries(rows);
  renderExplanations(payload.explanations);
}

function resultRow(r) {
  const tr = el("tr", { "data-id": r.id, "data-moa": r.moa_pred, "data-score": String(r.score) });
  if (r.unknown) tr.className = "unknown";
  tr.appendChild(el("td", { class: "id" }, r.id + (r.signatures ? ` (${r.signatures})` : "")));
  const call = el("td", { class: "call" });
  call.appendChild(swatch(state.classes.indexOf(r.moa_pred)));
  call.appendChild(document.createTextNode(r.moa_pred));
  if (r.unknown) call.appendChild(el("span", { class: "sub" }, ` (nearest: ${r.moa_pred_known})`));
  tr.appendChild(call);
  tr.appendChild(el("td", { class: "num score" }, fmt(r.score)));
  tr.appendChild(el("td", { class: "flag" }, r.unknown ? "yes" : "no"));
  tr.appendChild(el("td", { class: "top" },
    r.top.map((t) => t.score === null ? t.moa : `${t.moa} (${fmt(t.score, 2)})`).join("; ")));
  tr.appendChild(el("td", { class: "neighbors" },
    r.neighbors.map((n) => `${n.compound} (${n.moa || "?"}, ${fmt(n.similarity, 2)})`).join("; ")));
  return tr;
}

function swatch(i) {
  const s = el("span", { class: "swatch" });
  s.style.background = i >= 0 ? colour(i) : "#fff";
  return s;
}

// ---------------------------------------------------------------- the map
const W = 760, H = 520, PAD = 28;

function scales(points) {
  const xs = points.x, ys = points.y;
  const [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  const [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  const sx = (x) => PAD + ((x - x0) / (x1 - x0 || 1)) * (W - 2 * PAD);
  const sy = (y) => H - PAD - ((y - y0) / (y1 - y0 || 1)) * (H - 2 * PAD);
  return { sx, sy };
}

function drawMap(data) {
  state.map = data;
  state.classes = data.classes;
  state.scale = scales(data.points);
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, id: "map-svg", role: "img",
                            "aria-label": "map of the reference space" });
  root.appendChild(svg("rect", { x: 0, y: 0, width: W, height: H, class: "map-bg" }));
  const refs = svg("g", { class: "refs" });
  const p = data.points;
  for (let i = 0; i < p.x.length; i++) {
    const c = svg("circle", { cx: state.scale.sx(p.x[i]).toFixed(1),
                              cy: state.scale.sy(p.y[i]).toFixed(1), r: 2.2,
                              fill: colour(p.moa[i]) });
    const t = svg("title");
    t.textContent = `${p.compound[i]} · ${data.classes[p.moa[i]]}`;
    c.appendChild(t);
    refs.appendChild(c);
  }
  root.appendChild(refs);
  root.appendChild(svg("g", { id: "queries" }));
  $("map").replaceChildren(root);
  const legend = $("legend");
  legend.replaceChildren();
  data.classes.forEach((m, i) => {
    const item = el("span", { class: "legend-item" });
    item.appendChild(swatch(i));
    item.appendChild(document.createTextNode(m));
    legend.appendChild(item);
  });
}

function drawQueries(rows) {
  const layer = document.getElementById("queries");
  if (!layer || !state.scale) return;
  layer.replaceChildren();
  for (const r of rows) {
    if (r.map[0] === null) continue;
    const x = state.scale.sx(r.map[0]), y = state.scale.sy(r.map[1]);
    const d = `M${x},${y - 7} L${x + 7},${y} L${x},${y + 7} L${x - 7},${y} Z`;
    const i = state.classes.indexOf(r.moa_pred);
    const shape = svg("path", { d, class: "query", fill: i >= 0 ? colour(i) : "#fff" });
    const t = svg("title");
    t.textContent = `${r.id}: ${r.moa_pred} (${fmt(r.score)})`;
    shape.appendChild(t);
    layer.appendChild(shape);
  }
}

// ---------------------------------------------------------------- explanations
function renderExplanations(explanations) {
  const box = $("explain");
  box.replaceChildren();
  const moas = Object.keys(explanations || {});
  $("explain-section").hidden = moas.length === 0;
  for (const moa of moas) {
    const e = explanations[moa];
    const card = el("div", { class: "explain-card" });
    const head = el("h3");
    head.appendChild(swatch(state.classes.indexOf(moa)));
    head.appendChild(document.createTextNode(moa));
    card.appendChild(head);
    if (e.genes.length) {
      card.appendChild(el("p", { class: "sub" }, "top genes (attribution)"));
      card.appendChild(el("p", {}, e.genes.map((g) => `${g.symbol} (${fmt(g.attribution, 2)})`).join(", ")));
    }
    if (e.pathways.length) {
      card.appendChild(el("p", { class: "sub" }, "pathways (NES, FDR)"));
      const list = el("ul");
      for (const p of e.pathways) list.appendChild(el("li", {}, `${p.pathway} (${fmt(p.nes, 2)}, ${fmt(p.fdr, 3)})`));
      card.appendChild(list);
    }
    box.appendChild(card);
  }
}

// ---------------------------------------------------------------- downloads
async function download(format) {
  if (!state.lastForm) return;
  showError("");
  try {
    const res = await post(state.lastForm, format);
    const blob = await res.blob();
    const a = el("a", { href: URL.createObjectURL(blob), download: `moaspace_predictions.${format}` });
    document.body.appendChild(a);
    a.click();
    a.remove();
  } catch (err) {
    showError(err.message);
  }
}

async function start() {
  $("query-form").addEventListener("submit", run);
  $("dl-csv").addEventListener("click", () => download("csv"));
  $("dl-h5ad").addEventListener("click", () => download("h5ad"));
  try {
    const info = await getJSON("api/info");
    $("model-info").textContent = `model: ${info.moas} MoAs, ${info.compounds} ` +
      `reference compounds, ${info.genes} genes, ${info.calibrated ? "calibrated" : "uncalibrated"}` +
      (info.explanations ? ", with explanations" : "");
    drawMap(await getJSON("api/map"));
  } catch (err) {
    showError(`cannot load the model's data: ${err.message}`);
  }
}

start();
