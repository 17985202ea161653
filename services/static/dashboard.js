// online-gim live dashboard: plain JS and <canvas>, no build step, no external requests.
// Data: GET v1/history once, then one Server-Sent Event per processed window (v1/stream);
// v1/projection (PCA computed by the server) every few seconds. With a token in the page's
// URL (?token=...), every request carries it.
"use strict";

const TOKEN = new URLSearchParams(location.search).get("token");
const MAX_POINTS = 600;
const PALETTE = ["#4fb3ff", "#ffb74d", "#81c784", "#e57373", "#ba68c8", "#4dd0e1", "#fff176", "#a1887f",
                 "#f06292", "#90a4ae", "#aed581", "#7986cb"];

function withToken(path) {
  if (!TOKEN) return path;
  return path + (path.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(TOKEN);
}

async function getJSON(path) {
  const response = await fetch(withToken(path), { cache: "no-store" });
  if (!response.ok) throw new Error(path + ": HTTP " + response.status);
  return response.json();
}

const state = { points: [], modules: 0, events: 0 };

// ---- plotting ------------------------------------------------------------------------------

function setupCanvas(canvas) {
  const ratio = window.devicePixelRatio || 1;
  const width = Math.max(50, canvas.clientWidth), height = Math.max(50, canvas.clientHeight);
  if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  return { ctx, width, height };
}

function fmt(v) {
  const a = Math.abs(v);
  if (a === 0) return "0";
  if (a >= 1000 || a < 0.01) return v.toExponential(1);
  return v.toFixed(a >= 10 ? 0 : a >= 1 ? 2 : 3);
}

// series: [{name, color, data: [[x, y], ...], dashed}]; opts: {yMin, yMax, ref, xLabel}
function drawLines(canvas, series, opts = {}) {
  const { ctx, width, height } = setupCanvas(canvas);
  const pad = { l: 48, r: 8, t: 8, b: 20 };
  let xs = [], ys = [];
  for (const s of series) for (const [x, y] of s.data) if (y !== null && isFinite(y)) { xs.push(x); ys.push(y); }
  let drawn = 0;
  ctx.font = "11px system-ui, sans-serif";
  ctx.fillStyle = "#8a96a3";
  if (!xs.length) {
    ctx.fillText("waiting for data…", pad.l, height / 2);
    canvas.dataset.points = "0";
    return;
  }
  let x0 = Math.min(...xs), x1 = Math.max(...xs);
  let y0 = opts.yMin !== undefined ? opts.yMin : Math.min(...ys);
  let y1 = opts.yMax !== undefined ? opts.yMax : Math.max(...ys);
  if (opts.ref !== undefined) { y0 = Math.min(y0, opts.ref); y1 = Math.max(y1, opts.ref); }
  if (x1 === x0) x1 = x0 + 1;
  if (y1 === y0) { y1 = y0 + (Math.abs(y0) || 1) * 0.1; y0 = y0 - (Math.abs(y0) || 1) * 0.1; }
  const sx = (x) => pad.l + (x - x0) / (x1 - x0) * (width - pad.l - pad.r);
  const sy = (y) => height - pad.b - (y - y0) / (y1 - y0) * (height - pad.t - pad.b);
  // grid and labels
  ctx.strokeStyle = "#2a333d"; ctx.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const y = y0 + (y1 - y0) * i / 4, py = sy(y);
    ctx.beginPath(); ctx.moveTo(pad.l, py); ctx.lineTo(width - pad.r, py); ctx.stroke();
    ctx.fillText(fmt(y), 4, py + 4);
  }
  ctx.fillText(fmt(x0) + " s", pad.l, height - 5);
  const last = fmt(x1) + " s";
  ctx.fillText(last, width - pad.r - ctx.measureText(last).width, height - 5);
  if (opts.ref !== undefined) {
    ctx.strokeStyle = "#c62828"; ctx.setLineDash([4, 4]);
    ctx.beginPath(); ctx.moveTo(pad.l, sy(opts.ref)); ctx.lineTo(width - pad.r, sy(opts.ref)); ctx.stroke();
    ctx.setLineDash([]);
  }
  for (const s of series) {
    ctx.strokeStyle = s.color; ctx.lineWidth = 1.5;
    ctx.setLineDash(s.dashed ? [3, 3] : []);
    ctx.beginPath();
    let pen = false;
    for (const [x, y] of s.data) {
      if (y === null || !isFinite(y)) { pen = false; continue; }
      if (pen) ctx.lineTo(sx(x), sy(y)); else ctx.moveTo(sx(x), sy(y));
      pen = true; drawn++;
    }
    ctx.stroke();
  }
  ctx.setLineDash([]);
  canvas.dataset.points = String(drawn);
}

function legend(id, items) {
  const el = document.getElementById(id);
  el.innerHTML = "";
  for (const { name, color } of items) {
    const span = document.createElement("span");
    const swatch = document.createElement("i");
    swatch.style.background = color;
    span.appendChild(swatch);
    span.appendChild(document.createTextNode(name));
    el.appendChild(span);
  }
}

function moduleName(m) { return m === state.modules - 1 && state.modules > 1 ? "module " + m + " (top)" : "module " + m; }

function perModule(key) {
  const out = [];
  for (let m = 0; m < state.modules; m++) {
    out.push({ name: moduleName(m), color: PALETTE[m % PALETTE.length],
               data: state.points.map((p) => [p.t, p[key] && m < p[key].length ? p[key][m] : null]) });
  }
  return out;
}

function redraw() {
  const loss = perModule("loss");
  drawLines(document.getElementById("plot-loss"), loss);
  legend("legend-loss", loss);
  const drift = perModule("drift_mmd");
  drawLines(document.getElementById("plot-drift"), drift);
  legend("legend-drift", drift);
  const probes = [
    { name: "phone", color: PALETTE[0], data: state.points.map((p) => [p.t, p.phone_acc]) },
    { name: "speaker", color: PALETTE[1], data: state.points.map((p) => [p.t, p.speaker_acc]) },
  ];
  drawLines(document.getElementById("plot-probes"), probes, { yMin: 0, yMax: 1 });
  legend("legend-probes", probes);
  drawLines(document.getElementById("plot-rtf"),
            [{ name: "rtf", color: PALETTE[2], data: state.points.map((p) => [p.t, p.rtf]) }], { yMin: 0, ref: 1 });
}

// ---- live status -----------------------------------------------------------------------------

function text(id, value) { document.getElementById(id).textContent = value; }

function showEvent(e) {
  text("st-time", e.t.toFixed(1) + " s");
  text("st-step", String(e.updates));
  text("st-windows", String(e.seq));
  text("st-dropped", String(e.windows_dropped));
  text("st-rtf", e.rtf === null ? "–" : e.rtf.toFixed(3));
  if (e.phones) text("phones", e.phones.join(" "));
  else text("phones", "no probe readout (the learner has no probes yet)");
  if (e.speakers) {
    const box = document.getElementById("speakers");
    box.innerHTML = "";
    for (const [speaker, p] of e.speakers) {
      const row = document.createElement("div");
      row.className = "row";
      const name = document.createElement("span"); name.textContent = speaker;
      const track = document.createElement("div");
      const bar = document.createElement("div"); bar.className = "bar";
      bar.style.width = Math.round(100 * (p || 0)) + "%";
      track.appendChild(bar);
      const value = document.createElement("span"); value.textContent = ((p || 0) * 100).toFixed(0) + " %";
      row.append(name, track, value);
      box.appendChild(row);
    }
  }
  const note = [];
  if (e.input_level_db !== null && e.input_level_db !== undefined) note.push("input level " + e.input_level_db.toFixed(1) + " dBFS");
  if (e.drift_cos) {
    const top = e.drift_cos[e.drift_cos.length - 1];
    if (top !== null && top !== undefined) note.push("top-module cosine distance " + fmt(top));
  }
  text("drift-note", note.join(" · "));
}

function addPoint(e) {
  state.modules = Math.max(state.modules, e.loss ? e.loss.length : 0);
  const last = state.points[state.points.length - 1];
  if (last && e.seq <= last.seq) return;
  state.points.push(e);
  if (state.points.length > MAX_POINTS) state.points.splice(0, state.points.length - MAX_POINTS);
}

async function refreshStatus() {
  try {
    const s = await getJSON("v1/status");
    text("st-source", s.source + (s.source_id && s.source_id !== s.source ? " (" + s.source_id + ")" : ""));
    const pill = document.getElementById("pill-ready");
    pill.textContent = s.ready ? "learning" : "not ready";
    pill.className = "pill " + (s.ready ? "ok" : "bad");
  } catch (err) {
    const pill = document.getElementById("pill-ready");
    pill.textContent = "offline"; pill.className = "pill bad";
  }
}

// ---- PCA scatter -----------------------------------------------------------------------------

async function refreshProjection() {
  const canvas = document.getElementById("plot-pca");
  let proj;
  try { proj = await getJSON("v1/projection?points=480"); } catch (err) { return; }
  const { ctx, width, height } = setupCanvas(canvas);
  const pts = proj.points;
  canvas.dataset.points = String(pts.length);
  ctx.font = "11px system-ui, sans-serif"; ctx.fillStyle = "#8a96a3";
  if (!pts.length) { ctx.fillText("waiting for data…", 10, height / 2); return; }
  const colour = {};
  proj.speakers.forEach((s, i) => { colour[s] = PALETTE[i % PALETTE.length]; });
  let xMax = 1e-9, yMax = 1e-9;
  for (const p of pts) { xMax = Math.max(xMax, Math.abs(p.x)); yMax = Math.max(yMax, Math.abs(p.y)); }
  const sx = (x) => width / 2 + x / xMax * (width / 2 - 10);
  const sy = (y) => height / 2 - y / yMax * (height / 2 - 10);
  ctx.strokeStyle = "#2a333d";
  ctx.beginPath(); ctx.moveTo(0, height / 2); ctx.lineTo(width, height / 2);
  ctx.moveTo(width / 2, 0); ctx.lineTo(width / 2, height); ctx.stroke();
  pts.forEach((p, i) => {
    ctx.globalAlpha = 0.35 + 0.65 * (i + 1) / pts.length; // newer points are brighter
    ctx.fillStyle = p.speaker !== null && colour[p.speaker] ? colour[p.speaker] : "#8a96a3";
    ctx.beginPath(); ctx.arc(sx(p.x), sy(p.y), 2.5, 0, 2 * Math.PI); ctx.fill();
  });
  ctx.globalAlpha = 1;
  const ev = proj.explained_variance.map((v) => (100 * v).toFixed(0) + " %").join(", ");
  text("pca-caption", "(PCA of module " + proj.module + ", explained " + ev + ")");
  legend("legend-pca", proj.speakers.map((s) => ({ name: s, color: colour[s] })));
}

// ---- start -----------------------------------------------------------------------------------

let dirty = false;
function scheduleRedraw() {
  if (dirty) return;
  dirty = true;
  requestAnimationFrame(() => { dirty = false; redraw(); });
}

async function start() {
  document.getElementById("docs-link").href = withToken("docs");
  document.getElementById("metrics-link").href = withToken("metrics");
  try {
    const history = await getJSON("v1/history");
    state.modules = history.modules;
    for (const p of history.points) addPoint(p);
  } catch (err) { /* the stream fills in */ }
  scheduleRedraw();
  refreshStatus();
  refreshProjection();
  const source = new EventSource(withToken("v1/stream"));
  source.addEventListener("step", (msg) => {
    const e = JSON.parse(msg.data);
    state.events++;
    document.body.dataset.events = String(state.events);
    text("event-count", String(state.events));
    addPoint(e);
    showEvent(e);
    scheduleRedraw();
  });
  source.onerror = () => { refreshStatus(); };
  setInterval(refreshStatus, 5000);
  setInterval(refreshProjection, 3000);
  window.addEventListener("resize", () => { scheduleRedraw(); refreshProjection(); });
}

start();
