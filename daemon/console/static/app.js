// zsconf console: the few behaviours htmx does not cover. No inline script anywhere (the CSP
// forbids it); every value from the server reaches the page as text (textContent), never HTML.
"use strict";

const csrf = () => document.querySelector('meta[name="csrf-token"]').content;

async function getJSON(url) {
  const r = await fetch(url, { credentials: "same-origin" });
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
  return r.json();
}

function width(el) { return Math.max(280, el.clientWidth - 10); }

function chart(el, opts, data) {
  if (el._plot) { el._plot.setData(data); return el._plot; }
  el._plot = new uPlot({ width: width(el), height: 240, ...opts }, data, el);
  new ResizeObserver(() => el._plot.setSize({ width: width(el), height: 240 })).observe(el);
  return el._plot;
}

// Vertical lines at the checkpoints' steps, drawn on the plot's canvas.
function markers(steps) {
  return { hooks: { draw: [(u) => {
    const ctx = u.ctx; ctx.save(); ctx.strokeStyle = "#9a6700"; ctx.setLineDash([4, 4]);
    for (const s of steps) {
      const x = u.valToPos(s, "x", true);
      if (x < u.bbox.left || x > u.bbox.left + u.bbox.width) continue;
      ctx.beginPath(); ctx.moveTo(x, u.bbox.top); ctx.lineTo(x, u.bbox.top + u.bbox.height); ctx.stroke();
    }
    ctx.restore();
  }] } };
}

// -- training curves ---------------------------------------------------------------------------
async function trainingChart(el) {
  const m = await getJSON(el.dataset.metrics);
  el.dataset.points = String(m.step.length);
  el.dataset.checkpoints = String(m.checkpoints.length);
  const axes = [{ label: "step" }, { size: 70 }];
  if (el.dataset.kind === "tps") {
    chart(el, { scales: { x: { time: false } }, axes, series: [{ label: "step" }, { label: "tokens/s", stroke: "#2457c5" }] },
          [m.step, m.tokens_per_s_per_card]);
  } else {
    chart(el, { scales: { x: { time: false } }, axes, plugins: [markers(m.checkpoints)],
                series: [{ label: "step" }, { label: el.dataset.labelLoss || "loss", stroke: "#2457c5" },
                         { label: "validation_loss", stroke: "#c62828", spanGaps: true, points: { show: true } }] },
          [m.step, m.loss, m.validation_loss]);
  }
  if (!m.finished) setTimeout(() => trainingChart(el).catch(console.error), 3000);
}

// -- usage ---------------------------------------------------------------------------------------
async function usageCharts(root) {
  const u = await getJSON(root.dataset.usage);
  const s = u.series, d = root.dataset;
  root.dataset.calls = String(u.totals.calls);
  document.getElementById("total-calls").textContent = u.totals.calls.toLocaleString();
  document.getElementById("total-failed").textContent = u.totals.failed.toLocaleString();
  document.getElementById("total-images").textContent = u.totals.images.toLocaleString();
  for (const el of root.querySelectorAll(".chart")) {
    if (el.dataset.kind === "calls") {
      chart(el, { series: [{}, { label: d.labelCalls, stroke: "#2457c5" }, { label: d.labelFailed, stroke: "#c62828" }] }, [s.t, s.calls, s.failed]);
    } else if (el.dataset.kind === "tokens") {
      chart(el, { series: [{}, { label: d.labelIn, stroke: "#1a7f37" }, { label: d.labelOut, stroke: "#9a6700" }] }, [s.t, s.tokens_in, s.tokens_out]);
    } else {
      chart(el, { series: [{}, { label: "p50", stroke: "#2457c5", spanGaps: true, points: { show: true } }, { label: "p99", stroke: "#c62828", spanGaps: true, points: { show: true } }] }, [s.t, s.p50, s.p99]);
    }
    el.dataset.points = String(s.t.length);
  }
  setTimeout(() => usageCharts(root).catch(console.error), 5000);
}

// -- a run's log, followed ---------------------------------------------------------------------
async function followLog(pre) {
  let offset = Number(pre.dataset.offset || 0);
  pre.scrollTop = pre.scrollHeight;
  for (;;) {
    const r = await getJSON(`/api/runs/${encodeURIComponent(pre.dataset.logRun)}/log?offset=${offset}&wait=20`);
    if (r.data) {
      const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      pre.append(document.createTextNode(r.data));
      if (atEnd) pre.scrollTop = pre.scrollHeight;
    }
    offset = r.offset;
    if (r.finished) return;
  }
}

// -- events, live ----------------------------------------------------------------------------------
function streamEvents(tbody) {
  const source = new EventSource(tbody.dataset.stream);
  source.onmessage = (msg) => {
    const e = JSON.parse(msg.data);
    const tr = document.createElement("tr");
    for (const v of [e.id, e.when, e.address, e.event, e.message]) {
      const td = document.createElement("td"); td.textContent = String(v); tr.append(td);
    }
    tbody.prepend(tr);
  };
}

// -- playground: the gateway's stream, read as the SDK reads it --------------------------------
function playground(form) {
  const out = document.getElementById("answer"), usage = document.getElementById("answer-usage");
  const err = document.getElementById("answer-error");
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = new FormData(form);
    const body = Object.fromEntries(f.entries());
    for (const k of ["temperature", "max_tokens"]) body[k] = body[k] === "" ? null : Number(body[k]);
    out.textContent = ""; usage.textContent = ""; err.textContent = ""; out.dataset.done = "no";
    const r = await fetch("/console/playground/chat", { method: "POST", credentials: "same-origin",
      headers: { "content-type": "application/json", "x-csrf-token": csrf() }, body: JSON.stringify(body) });
    if (!r.ok) {
      const text = await r.text();
      let msg = text;
      try { const j = JSON.parse(text); msg = (j.error && (j.error.message || j.error)) || text; if (j.error && j.error.code) msg = `${j.error.code}: ${msg}`; } catch (_) { /* not JSON */ }
      err.textContent = `HTTP ${r.status} ${msg}`; out.dataset.done = "error"; return;
    }
    const reader = r.body.getReader(), dec = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      let i;
      while ((i = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, i); buf = buf.slice(i + 2);
        for (const line of block.split("\n")) {
          if (!line.startsWith("data:")) continue;
          const payload = line.slice(5).trim();
          if (payload === "[DONE]") continue;
          const chunk = JSON.parse(payload);
          if (chunk.error) { err.textContent = `${chunk.error.code || ""} ${chunk.error.message || ""}`; continue; }
          for (const c of chunk.choices || []) if (c.delta && c.delta.content) out.append(document.createTextNode(c.delta.content));
          if (chunk.usage) usage.textContent = `${usage.dataset.label}: prompt ${chunk.usage.prompt_tokens}, completion ${chunk.usage.completion_tokens}, total ${chunk.usage.total_tokens}`;
        }
      }
    }
    out.dataset.done = "yes";
  });
}

document.addEventListener("DOMContentLoaded", () => {
  for (const el of document.querySelectorAll(".chart[data-metrics]")) trainingChart(el).catch(console.error);
  const usage = document.getElementById("usage-live");
  if (usage) usageCharts(usage).catch(console.error);
  for (const pre of document.querySelectorAll("pre[data-log-run]")) followLog(pre).catch(console.error);
  const events = document.getElementById("event-rows");
  if (events) streamEvents(events);
  const form = document.getElementById("playground");
  if (form) playground(form);
});
