// GoLlama's dashboard: polls /dashboard/data once a second and redraws tiles, table and charts.
"use strict";

const POLL_MS = 1000;
const byId = (id) => document.getElementById(id);

const number = new Intl.NumberFormat("en");
function duration(seconds) {
  const s = Math.floor(seconds);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

const clock = (seconds) =>
  new Date(seconds * 1000).toLocaleTimeString("en-GB", { hour12: false });

// A time chart whose y axis starts at 0 and reaches at least `minTop`.
function makeChart(elementId, minTop, series) {
  const element = byId(elementId);
  const options = {
    width: Math.max(element.clientWidth, 300),
    height: 180,
    scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(max || 0, minTop) * 1.1] } },
    series: [{}, ...series.map(([label, stroke]) => ({ label, stroke, width: 2, spanGaps: false }))],
    axes: [{ space: 90, values: (u, ticks) => ticks.map(clock) }, { size: 60 }],
    legend: { live: false },
  };
  const chart = new uPlot(options, [[], ...series.map(() => [])], element);
  window.addEventListener("resize", () =>
    chart.setSize({ width: Math.max(element.clientWidth, 300), height: 180 }));
  return chart;
}

const charts = {
  requests: makeChart("chart-requests", 1, [["requests/s", "#2e90fa"]]),
  tokens: makeChart("chart-tokens", 1, [["tokens/s", "#12805c"]]),
  ttft: makeChart("chart-ttft", 0.01, [["time to first token (s)", "#b54708"]]),
  queue: makeChart("chart-queue", 1, [["queue", "#b42318"], ["in flight", "#7a5af8"]]),
};

function cell(row, text, className) {
  const td = row.insertCell();
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function renderWorkers(workers) {
  const body = byId("workers").tBodies[0];
  body.replaceChildren();
  byId("no-workers").hidden = workers.length > 0;
  for (const w of workers) {
    const row = body.insertRow();
    row.dataset.worker = w.id;
    row.dataset.testid = "worker-row";
    cell(row, w.id);
    const state = document.createElement("span");
    state.className = `state ${w.state}`;
    state.textContent = w.state;
    state.title = w.reason || "";
    row.insertCell().append(state);
    cell(row, w.model || "", "model").title = (w.models || []).join(", ");
    const slots = row.insertCell();
    const bar = document.createElement("span");
    bar.className = "bar";
    const fill = document.createElement("span");
    fill.style.width = `${w.slots ? Math.min(100, (100 * w.in_flight) / w.slots) : 0}%`;
    bar.append(fill);
    slots.append(bar, `${w.in_flight} / ${w.slots}`);
    slots.className = "slots";
    cell(row, number.format(w.jobs_completed), "jobs-done");
    cell(row, number.format(w.jobs_failed), "jobs-failed");
    cell(row, number.format(w.tokens_generated), "tokens");
    cell(row, duration(w.uptime_s));
  }
}

// Router-mode workers: one row per model, one column per worker, each cell its state there
// (with slots busy / slots while it serves); empty where the worker does not have the model.
function renderModels(workers) {
  const routers = workers.filter((w) => w.router);
  byId("models-section").hidden = routers.length === 0;
  const table = byId("models");
  const head = table.tHead.rows[0];
  head.replaceChildren();
  const corner = document.createElement("th");
  corner.textContent = "model";
  head.append(corner);
  for (const w of routers) {
    const th = document.createElement("th");
    th.textContent = `${w.id} (≤ ${w.router.max_models || "∞"})`;
    head.append(th);
  }
  const names = [...new Set(routers.flatMap((w) => Object.keys(w.router.models)))].sort();
  const body = table.tBodies[0];
  body.replaceChildren();
  for (const name of names) {
    const row = body.insertRow();
    row.dataset.testid = "model-row";
    row.dataset.model = name;
    cell(row, name);
    for (const w of routers) {
      const m = w.router.models[name];
      if (!m) {
        cell(row, "");
        continue;
      }
      const serving = m.state === "loaded" || m.state === "sleeping";
      const text = serving ? `${m.state} ${m.in_flight}/${m.slots}` : m.state;
      const td = cell(row, "");
      const badge = document.createElement("span");
      badge.className = `model-state ${m.state}`;
      badge.textContent = text;
      badge.title = m.load_s === null ? "" : `last load ${m.load_s.toFixed(2)} s`;
      td.dataset.worker = w.id;
      td.append(badge);
    }
  }
}

function renderTenants(tenants) {
  const body = byId("tenants").tBodies[0];
  body.replaceChildren();
  const names = Object.keys(tenants)
    .filter((name) => tenants[name].queued > 0 || tenants[name].service_share > 0)
    .sort();
  byId("no-tenants").hidden = names.length > 0;
  for (const name of names) {
    const t = tenants[name];
    const row = body.insertRow();
    row.dataset.testid = "tenant-row";
    cell(row, name || "(no key)");
    cell(row, number.format(t.weight));
    cell(row, number.format(t.queued), "tenant-queued");
    cell(row, t.mean_wait_s === null ? "–" : `${t.mean_wait_s.toFixed(2)} s`);
    cell(row, t.service_share === null ? "–" : `${Math.round(100 * t.service_share)}%`);
  }
}

function render(data) {
  const healthy = data.workers.filter((w) => w.state === "healthy").length;
  byId("workers-healthy").textContent = `${healthy} / ${data.workers.length}`;
  byId("queue").textContent = `${number.format(data.queue)} / ${number.format(data.queue_size)}`;
  byId("in-flight").textContent = number.format(data.in_flight);
  byId("requests-total").textContent = number.format(data.requests.requests);
  byId("requests-completed").textContent = number.format(data.requests.completed);
  byId("requests-failed").textContent = number.format(data.requests.failed);
  byId("requests-rejected").textContent = number.format(data.requests.rejected);
  byId("tokens-generated").textContent = number.format(data.tokens.generated);
  const prompt = data.tokens.prompt_computed + data.tokens.prompt_cached;
  byId("cache-share").textContent =
    prompt ? `${((100 * data.tokens.prompt_cached) / prompt).toFixed(1)} %` : "–";
  byId("summary").textContent =
    `policy ${data.policy} · up ${duration(data.uptime_s)}`;
  renderWorkers(data.workers);
  renderModels(data.workers);
  renderTenants(data.tenants || {});

  const h = data.history;
  charts.requests.setData([h.time, h.requests_per_s]);
  charts.tokens.setData([h.time, h.tokens_per_s]);
  charts.ttft.setData([h.time, h.first_token_s]);
  charts.queue.setData([h.time, h.queue, h.in_flight]);
}

function setLink(state) {
  const link = byId("link");
  link.dataset.state = state;
  link.textContent = state === "live" ? "live" : "hub unreachable, retrying";
}

async function poll() {
  try {
    const response = await fetch("/dashboard/data", { cache: "no-store" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    render(await response.json());
    setLink("live");
  } catch (error) {
    setLink("lost");
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

poll();
