// The AdaLoRA Service console: plain JavaScript over the public HTTP API, no framework and no
// build step. The API key lives in this tab's sessionStorage only and is sent as a bearer token.
"use strict";

const KEY_NAME = "adalora.apiKey";
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const COLORS = ["#3757d6", "#1b8a5a", "#c05621", "#8e44ad", "#b7791f", "#2c7a7b"];
const view = () => document.getElementById("view");
let leaving = []; // cleanups of the current page (open streams, timers)

// ---------------------------------------------------------------- API access and errors
class ApiError extends Error {
  constructor(status, code, message, field, retryAfter) {
    super(message);
    this.status = status;
    this.code = code;
    this.field = field;
    this.retryAfter = retryAfter;
  }
}

function apiKey() {
  return sessionStorage.getItem(KEY_NAME);
}

async function errorFrom(response) {
  let code = "error";
  let message = response.statusText;
  let field = null;
  try {
    const body = await response.json();
    const error = body.error || {};
    code = error.code || code;
    message = error.message || message;
    field = error.field || null;
  } catch (_) {
    // not JSON: keep the status text
  }
  return new ApiError(response.status, code, message, field, response.headers.get("Retry-After"));
}

async function api(method, path, options = {}) {
  const headers = { Authorization: `Bearer ${apiKey()}`, ...(options.headers || {}) };
  let body = options.body;
  if (options.json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(options.json);
  }
  let response;
  try {
    response = await fetch(path, { method, headers, body, signal: options.signal });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, "unreachable", "The service cannot be reached.");
  }
  if (!response.ok) throw await errorFrom(response);
  if (options.raw) return response;
  return response.status === 204 ? null : response.json();
}

function describe(error) {
  if (!(error instanceof ApiError)) return `Unexpected problem: ${error.message || error}`;
  const where = error.field ? ` (${error.field})` : "";
  switch (error.status) {
    case 401:
      return "Your API key was refused (401). Check the key and sign in again.";
    case 403:
      return `This key's scope does not allow that (403): ${error.message}`;
    case 404:
      return `Not found (404): ${error.message}`;
    case 409:
      return `Conflict (409): ${error.message}`;
    case 413:
      return `Too large (413): ${error.message}`;
    case 415:
    case 422:
      return `Invalid input${where} (${error.status}): ${error.message}`;
    case 429:
      return `Too many requests (429): slow down${
        error.retryAfter ? ` and retry in ${error.retryAfter} s` : ""
      }. ${error.message}`;
    case 503:
      return `The service is not ready (503): ${error.message}. Try again shortly.`;
    case 0:
      return error.message;
    default:
      return `The service answered ${error.status}: ${error.message}`;
  }
}

function showMessage(text, kind = "error") {
  const box = document.getElementById("message");
  box.textContent = text;
  box.className = kind === "info" ? "info" : "";
  box.hidden = !text;
}

function fail(error) {
  if (error && error.name === "AbortError") return;
  showMessage(describe(error));
  if (error instanceof ApiError && error.status === 401) signOut(false);
}

// ---------------------------------------------------------------- small DOM helpers
function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svgEl(tag, attributes = {}) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  return node;
}

function statusBadge(status) {
  return el("span", { class: `status ${status}`, "data-status": status, text: status });
}

function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "";
}

function fmt(value, digits = 4) {
  if (value === null || value === undefined) return "–";
  if (typeof value !== "number") return String(value);
  if (Number.isInteger(value)) return value.toLocaleString();
  return Math.abs(value) < 1e-3 && value !== 0 ? value.toExponential(2) : value.toFixed(digits);
}

function bytes(size) {
  const units = ["B", "KB", "MB", "GB"];
  let value = size;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(unit ? 1 : 0)} ${units[unit]}`;
}

function setView(...children) {
  view().replaceChildren(...present(children));
}

// replaceChildren/append turn null into the text "null": drop absent parts first.
function present(children) {
  return children.flat().filter((child) => child !== null && child !== undefined);
}

// ---------------------------------------------------------------- line charts (SVG)
// series: [{name, points: [[x, y], ...], color, planned}]; the x axis is the update step. A
// planned series is drawn as a wide light band under the others (the schedule a run follows).
function lineChart(title, series, options = {}) {
  const width = 560;
  const height = 220;
  const pad = { left: 52, right: 12, top: 12, bottom: 28 };
  const svg = svgEl("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": title });
  const all = series.flatMap((s) => s.points);
  svg.setAttribute("data-points", String(series.reduce((n, s) => n + (s.planned ? 0 : s.points.length), 0)));
  const box = el("div", { class: "card chart" }, el("h3", { text: title }), svg);
  if (!all.length) {
    const empty = svgEl("text", { x: width / 2, y: height / 2, "text-anchor": "middle", class: "empty" });
    empty.textContent = options.empty || "waiting for data";
    svg.append(empty);
    return box;
  }
  const xs = all.map((p) => p[0]);
  const ys = all.map((p) => p[1]);
  const xMin = options.xMin ?? Math.min(...xs);
  const xMax = Math.max(options.xMax ?? -Infinity, ...xs);
  let yMin = options.yMin ?? Math.min(...ys);
  let yMax = Math.max(...ys);
  if (yMax === yMin) {
    yMax += Math.abs(yMax) * 0.05 || 1;
    yMin -= Math.abs(yMin) * 0.05 || 0;
  }
  const x = (v) => pad.left + ((v - xMin) / (xMax - xMin || 1)) * (width - pad.left - pad.right);
  const y = (v) => height - pad.bottom - ((v - yMin) / (yMax - yMin)) * (height - pad.top - pad.bottom);
  for (const fraction of [0, 0.5, 1]) {
    const value = yMin + fraction * (yMax - yMin);
    svg.append(svgEl("line", { x1: pad.left, x2: width - pad.right, y1: y(value), y2: y(value), class: "gridline" }));
    const label = svgEl("text", { x: pad.left - 6, y: y(value) + 4, "text-anchor": "end" });
    label.textContent = fmt(value, 3);
    svg.append(label);
  }
  svg.append(svgEl("line", { x1: pad.left, x2: width - pad.right, y1: height - pad.bottom, y2: height - pad.bottom, class: "axis" }));
  for (const value of [xMin, xMax]) {
    const label = svgEl("text", { x: x(value), y: height - 8, "text-anchor": value === xMin ? "start" : "end" });
    label.textContent = `step ${fmt(value)}`;
    svg.append(label);
  }
  series.forEach((s, index) => {
    if (!s.points.length) return;
    const color = s.color || COLORS[index % COLORS.length];
    const path = s.points.map((p, i) => `${i ? "L" : "M"}${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join("");
    svg.append(svgEl("path", { d: path, fill: "none", stroke: color, "stroke-width": s.planned ? 7 : 2, "stroke-linejoin": "round" }));
    if (s.points.length === 1) {
      svg.append(svgEl("circle", { cx: x(s.points[0][0]), cy: y(s.points[0][1]), r: 3, fill: color }));
    }
  });
  if (options.marker !== undefined) {
    svg.append(svgEl("line", { x1: x(options.marker), x2: x(options.marker), y1: pad.top, y2: height - pad.bottom, stroke: "#c05621", "stroke-width": 1.5 }));
  }
  if (series.length > 1 || options.legend) {
    box.append(
      el("div", { class: "legend" },
        series.map((s, index) => el("span", {}, el("i", { style: `background:${s.color || COLORS[index % COLORS.length]}` }), s.name)))
    );
  }
  return box;
}

// ---------------------------------------------------------------- server-sent events over fetch
// EventSource cannot send an Authorization header, so the stream is read with fetch.
async function streamEvents(path, onEvent, signal) {
  let lastId = null;
  for (;;) {
    const headers = { Accept: "text/event-stream" };
    if (lastId !== null) headers["Last-Event-ID"] = String(lastId);
    const response = await api("GET", path, { headers, raw: true, signal });
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    let ended = false;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        let kind = "message";
        const data = [];
        for (const line of block.split("\n")) {
          if (line.startsWith("event: ")) kind = line.slice(7);
          else if (line.startsWith("data: ")) data.push(line.slice(6));
          else if (line.startsWith("id: ")) lastId = Number(line.slice(4));
        }
        if (!data.length) continue;
        if (kind === "end") ended = true;
        else onEvent(JSON.parse(data.join("\n")));
      }
    }
    if (ended) return; // the job ended; otherwise the server closed a long stream: reconnect
  }
}

// ---------------------------------------------------------------- sign in / out and routing
function signIn() {
  document.getElementById("nav").hidden = true;
  const template = document.getElementById("sign-in-template");
  setView(template.content.cloneNode(true));
  document.getElementById("sign-in").addEventListener("submit", async (event) => {
    event.preventDefault();
    const key = document.getElementById("api-key").value.trim();
    sessionStorage.setItem(KEY_NAME, key);
    try {
      await api("GET", "/jobs?limit=1");
      showMessage("");
      if (!location.hash || location.hash === "#/") location.hash = "#/jobs";
      else route();
    } catch (error) {
      sessionStorage.removeItem(KEY_NAME);
      showMessage(describe(error));
    }
  });
}

function signOut(clearMessage = true) {
  sessionStorage.removeItem(KEY_NAME);
  if (clearMessage) showMessage("");
  signIn();
}

const ROUTES = [
  [/^#\/jobs\/([\w-]+)$/, "jobs", (id) => jobPage(id)],
  [/^#\/jobs$/, "jobs", () => jobsPage()],
  [/^#\/adapters\/([\w-]+)$/, "adapters", (id) => adapterPage(id)],
  [/^#\/adapters$/, "adapters", () => adaptersPage()],
  [/^#\/datasets$/, "datasets", () => datasetsPage()],
  [/^#\/playground$/, "playground", () => playgroundPage()],
];

function route() {
  leaving.forEach((cleanup) => cleanup());
  leaving = [];
  if (!apiKey()) return signIn();
  document.getElementById("nav").hidden = false;
  const hash = location.hash || "#/jobs";
  for (const [pattern, tab, page] of ROUTES) {
    const match = hash.match(pattern);
    if (!match) continue;
    document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("active", a.dataset.tab === tab));
    showMessage("");
    page(...match.slice(1)).catch(fail);
    return;
  }
  location.hash = "#/jobs";
}

// ---------------------------------------------------------------- jobs
async function jobsPage() {
  const [jobs, models, datasets] = await Promise.all([
    api("GET", "/jobs?limit=100"),
    api("GET", "/models"),
    api("GET", "/datasets?limit=200"),
  ]);
  const rows = jobs.items.map((job) => {
    const progress = job.progress || {};
    const share = progress.total_steps ? (100 * (progress.step || 0)) / progress.total_steps : 0;
    return el("tr", { "data-job": job.id },
      el("td", {}, el("a", { href: `#/jobs/${job.id}`, class: "mono", text: job.id })),
      el("td", { text: job.name || "" }),
      el("td", {}, statusBadge(job.status)),
      el("td", {}, el("div", { class: "bar", title: `${progress.step || 0}/${progress.total_steps || "?"}` },
        el("span", { style: `width:${share.toFixed(1)}%` }))),
      el("td", { class: "num", text: `${progress.step || 0}/${progress.total_steps || "?"}` }),
      el("td", { class: "mono", text: settingsSummary(job.hyperparameters || {}) }),
      el("td", { text: job.base_model }),
      el("td", { text: when(job.created_at) }));
  });
  setView(
    el("section", { class: "card" },
      el("h2", { text: "Start a job" }),
      newJobForm(models.items, datasets.items)),
    el("section", { class: "card" },
      el("h2", { text: "Jobs" }),
      rows.length
        ? el("table", { id: "jobs-table" },
            el("thead", {}, el("tr", {}, ["id", "name", "status", "progress", "steps", "settings", "base model", "created"].map((h) => el("th", { text: h })))),
            el("tbody", {}, rows))
        : el("p", { class: "muted", text: "No jobs yet: upload a data set, then start one above." }))
  );
}

function newJobForm(models, datasets) {
  const columnSelect = (id) => el("select", { id, name: id });
  const form = el("form", { id: "new-job", class: "inline" },
    el("label", {}, "Data set", el("select", { id: "job-dataset", required: true },
      datasets.map((d) => el("option", { value: d.id, text: `${d.name} (${d.num_rows} rows)` })))),
    el("label", {}, "Base model", el("select", { id: "job-model" }, models.map((m) => el("option", { value: m.name, text: m.name })))),
    el("label", {}, "Task", el("select", { id: "job-task" },
      ["classification", "regression"].map((t) => el("option", { value: t, text: t })))),
    el("label", {}, "Text column", columnSelect("job-text")),
    el("label", {}, "Label column", columnSelect("job-label")),
    el("label", {}, "Updates (optional)", el("input", { id: "job-steps", type: "number", min: 1, placeholder: "chosen by the service" })),
    el("label", {}, "Name (optional)", el("input", { id: "job-name" })),
    el("button", { type: "submit", id: "start-job", text: "Start" }));
  const fillColumns = () => {
    const dataset = datasets.find((d) => d.id === form.querySelector("#job-dataset").value);
    for (const [id, guess] of [["job-text", /text|sentence/], ["job-label", /label|target|score/]]) {
      const select = form.querySelector(`#${id}`);
      select.replaceChildren(...(dataset ? dataset.columns : []).map((c) => el("option", { value: c, text: c })));
      const match = (dataset ? dataset.columns : []).find((c) => guess.test(c));
      if (match) select.value = match;
    }
  };
  form.querySelector("#job-dataset").addEventListener("change", fillColumns);
  fillColumns();
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = {
      base_model: form.querySelector("#job-model").value,
      task: form.querySelector("#job-task").value,
      dataset_id: form.querySelector("#job-dataset").value,
      columns: { text: form.querySelector("#job-text").value, label: form.querySelector("#job-label").value },
    };
    const steps = form.querySelector("#job-steps").value;
    if (steps) body.training = { max_steps: Number(steps) };
    const name = form.querySelector("#job-name").value.trim();
    if (name) body.name = name;
    try {
      const job = await api("POST", "/jobs", { json: body });
      location.hash = `#/jobs/${job.id}`;
    } catch (error) {
      fail(error);
    }
  });
  if (!datasets.length) form.querySelector("#start-job").disabled = true;
  return form;
}

async function jobPage(jobId) {
  let job = await api("GET", `/jobs/${jobId}`);
  let schedule = await api("GET", `/jobs/${jobId}/schedule`);
  // accuracy: a language-model job's token accuracy (training and validation) and the exact
  // match of its greedy answers, all on one 0..1 scale.
  const curves = { loss: [], evalLoss: [], lr: [], budget: [], evals: {}, accuracy: {} };
  const log = el("ul", { class: "log", id: "event-log" });
  const charts = el("div", { class: "grid2", id: "charts" });
  const header = el("section", { class: "card" });
  const controller = new AbortController();
  leaving.push(() => controller.abort());

  const drawHeader = () => {
    const progress = job.progress || {};
    const cancel = el("button", { class: "danger", id: "cancel-job", text: "Cancel", disabled: TERMINAL.has(job.status) || job.status === "cancelling" });
    cancel.addEventListener("click", async () => {
      try {
        job = await api("POST", `/jobs/${jobId}/cancel`);
        drawHeader();
      } catch (error) {
        fail(error);
      }
    });
    const adapterLink = job.adapter_id ? el("a", { href: `#/adapters/${job.adapter_id}`, id: "job-adapter", text: `adapter ${job.adapter_id}: allocation and downloads` }) : null;
    header.replaceChildren(...present([
      el("h2", {}, `Job ${job.name || job.id} `, statusBadge(job.status)),
      el("p", {}, `Step ${progress.step || 0} of ${progress.total_steps || "?"} · budget ${fmt((job.budget || {}).current)} · ${job.base_model} · ${job.task} `, cancel),
      job.error ? el("p", { class: "muted" }, `${job.error.code}: ${job.error.message}`) : null,
      adapterLink ? el("p", {}, adapterLink) : null,
    ]));
  };

  const drawCharts = () => {
    const evalSeries = Object.entries(curves.evals).map(([name, points]) => ({ name, points }));
    const planned = (schedule.points || []).map((p) => [p.step, p.budget]);
    charts.replaceChildren(...present([
      lineChart("Training loss", [{ name: "training loss", points: curves.loss }, { name: "evaluation loss", points: curves.evalLoss, color: COLORS[2] }], { xMin: 0, legend: true }),
      lineChart("Evaluation", evalSeries, {
        xMin: 0,
        legend: true,
        empty: job.validation_dataset_id ? "no evaluation yet" : "no validation data set: the job is not evaluated",
      }),
      Object.keys(curves.accuracy).length
        ? lineChart("Token accuracy and exact match",
          Object.entries(curves.accuracy).map(([name, points]) => ({ name, points })),
          { xMin: 0, yMin: 0, legend: true })
        : null,
      lineChart("Learning rate", [{ name: "learning rate", points: curves.lr }], { xMin: 0, yMin: 0 }),
      lineChart("Rank budget (triplets) against its cubic schedule",
        [{ name: "schedule", points: planned, planned: true, color: "#cdd7f8" }, { name: "budget", points: curves.budget, color: COLORS[0] }],
        { xMin: 0, xMax: schedule.total_steps, legend: true })
    ]));
  };

  let redraw = null;
  const later = () => {
    if (redraw === null) redraw = setTimeout(() => { redraw = null; drawHeader(); drawCharts(); }, 150);
  };
  leaving.push(() => clearTimeout(redraw));

  // Everything an event changes on the page happens before any request it causes, so the log
  // and the curves keep the stream's order.
  const onEvent = async (event) => {
    const data = event.data || {};
    log.append(el("li", { class: event.kind }, `${when(event.created_at)} · ${event.kind} · ${JSON.stringify(data)}`));
    while (log.children.length > 500) log.firstChild.remove();
    log.scrollTop = log.scrollHeight;
    later();
    if (event.kind === "progress") {
      if (data.loss !== null && data.loss !== undefined) curves.loss.push([data.step, data.loss]);
      if (data.learning_rate !== null && data.learning_rate !== undefined) curves.lr.push([data.step, data.learning_rate]);
      if (data.budget !== null && data.budget !== undefined) curves.budget.push([data.step, data.budget]);
      if (typeof data.token_accuracy === "number") (curves.accuracy["training token accuracy"] ||= []).push([data.step, data.token_accuracy]);
      job.progress = { ...(job.progress || {}), step: data.step, total_steps: data.total_steps };
      job.budget = { ...(job.budget || {}), current: data.budget };
      if (!(schedule.points || []).length && !controller.signal.aborted) {
        schedule = await api("GET", `/jobs/${jobId}/schedule`, { signal: controller.signal });
        later();
      }
    } else if (event.kind === "eval") {
      for (const [name, value] of Object.entries(data.metrics || {})) {
        if (typeof value !== "number" || name === "predicted_classes" || name === "exact_match_rows") continue;
        const accuracy = { mean_token_accuracy: "validation token accuracy", exact_match: "exact match" }[name];
        const series = name === "eval_loss" ? curves.evalLoss
          : accuracy ? (curves.accuracy[accuracy] ||= [])
          : (curves.evals[name] = curves.evals[name] || []);
        series.push([data.step, value]);
      }
    } else if (event.kind === "status") {
      job = await api("GET", `/jobs/${jobId}`, { signal: controller.signal });
      later();
    }
  };

  drawHeader();
  drawCharts();
  const hyper = job.hyperparameters || {};
  setView(
    header,
    charts,
    el("div", { class: "grid2" },
      el("section", { class: "card" }, el("h3", { text: "Events" }), log),
      el("section", { class: "card", id: "settings" },
        el("h3", { text: "Resolved settings (what ran; repeat it exactly with these)" }),
        settingsTable(hyper)))
  );
  streamEvents(`/jobs/${jobId}/events`, (event) => onEvent(event).catch(fail), controller.signal)
    .then(async () => {
      job = await api("GET", `/jobs/${jobId}`, { signal: controller.signal });
      drawHeader();
    })
    .catch(fail);
}

// The settings that most shape a run, as resolved at submission (the job page lists them all).
function settingsSummary(hyper) {
  const training = hyper.training || {};
  const adalora = hyper.adalora || {};
  return [
    `lr ${fmt(training.learning_rate)}`,
    `${fmt(hyper.total_steps)} updates`,
    `batch ${fmt(training.batch_size)}`,
    `rank ${adalora.init_r}→${adalora.target_r}`,
    `α ${fmt(adalora.lora_alpha)}`,
  ].join(" · ");
}

function settingsTable(hyper) {
  const chosen = new Set(hyper.chosen_by_service || []);
  const rows = [];
  for (const section of ["training", "adalora", "resources"]) {
    for (const [name, value] of Object.entries(hyper[section] || {})) {
      const field = `${section}.${name}`;
      rows.push(el("tr", {}, el("td", { class: "mono", text: field }), el("td", { class: "mono", text: JSON.stringify(value) }),
        el("td", { class: "muted", text: chosen.has(field) ? "chosen by the service" : "" })));
    }
  }
  return el("table", {}, el("tbody", {}, rows));
}

// ---------------------------------------------------------------- adapters and allocation
async function adaptersPage() {
  const [adapters, models] = await Promise.all([api("GET", "/adapters?limit=200"), api("GET", "/models")]);
  const progress = el("progress", { id: "import-progress", max: 100, value: 0, hidden: true });
  const form = el("form", { id: "import", class: "inline" },
    el("label", {}, "PEFT adapter (a zip of its folder)", el("input", { type: "file", id: "import-file", required: true, accept: ".zip" })),
    el("label", {}, "Base model", el("select", { id: "import-base" }, models.items.map((m) => el("option", { value: m.name, text: m.name })))),
    el("label", {}, "Task", el("select", { id: "import-task" },
      ["", "classification", "regression", "causal-lm", "seq2seq"].map((t) => el("option", { value: t, text: t || "from its task_type" })))),
    el("label", {}, "Labels (comma-separated, classification)", el("input", { id: "import-labels" })),
    el("label", {}, "Name (optional)", el("input", { id: "import-name" })),
    el("button", { type: "submit", text: "Import" }));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const file = form.querySelector("#import-file").files[0];
    if (!file) return;
    const data = new FormData();
    data.append("file", file);
    data.append("base_model", form.querySelector("#import-base").value);
    const task = form.querySelector("#import-task").value;
    if (task) data.append("task", task);
    const labels = form.querySelector("#import-labels").value.split(",").map((l) => l.trim()).filter((l) => l);
    if (labels.length) data.append("labels", JSON.stringify(labels));
    const name = form.querySelector("#import-name").value.trim();
    if (name) data.append("name", name);
    upload("/adapters/import", data, progress)
      .then((adapter) => { location.hash = `#/adapters/${adapter.id}`; })
      .catch(fail);
  });
  const rows = adapters.items.map((a) =>
    el("tr", { "data-adapter": a.id },
      el("td", {}, el("a", { href: `#/adapters/${a.id}`, class: "mono", text: a.id })),
      el("td", { text: a.name || "" }),
      el("td", { text: a.base_model }),
      el("td", { text: a.task }),
      el("td", { class: "num", text: `${a.total_rank}` }),
      el("td", { text: Object.entries(a.metrics || {}).filter(([, v]) => typeof v === "number").slice(0, 2).map(([k, v]) => `${k} ${fmt(v, 3)}`).join(", ") }),
      el("td", {}, statusBadge(a.status)),
      el("td", { text: when(a.created_at) })));
  setView(el("section", { class: "card" }, el("h2", { text: "Adapters" }),
    rows.length
      ? el("table", { id: "adapters-table" },
          el("thead", {}, el("tr", {}, ["id", "name", "base", "task", "total rank", "metrics", "status", "created"].map((h) => el("th", { text: h })))),
          el("tbody", {}, rows))
      : el("p", { class: "muted", text: "No adapters yet: a job that succeeds publishes one, or import one below." })),
    el("section", { class: "card" }, el("h2", { text: "Import a PEFT LoRA or AdaLoRA adapter trained elsewhere" }), form, progress));
}

async function adapterPage(adapterId) {
  const [adapter, ranks] = await Promise.all([
    api("GET", `/adapters/${adapterId}`),
    api("GET", `/adapters/${adapterId}/ranks`),
  ]);
  const downloads = adapter.formats.map((format) =>
    el("button", { class: "secondary", "data-format": format, text: `Download ${format}`, onclick: () => download(adapterId, format).catch(fail) }));
  const remove = el("button", { class: "danger", id: "delete-adapter", text: "Delete" });
  remove.addEventListener("click", async () => {
    if (!confirm(`Delete adapter ${adapterId}? Its files go too.`)) return;
    try {
      await api("DELETE", `/adapters/${adapterId}`);
      location.hash = "#/adapters";
    } catch (error) {
      fail(error);
    }
  });
  const facts = [
    ["base model", adapter.base_model], ["task", adapter.task], ["labels", (adapter.labels || []).join(", ")],
    ["ranks", `${adapter.total_rank} kept of ${ranks.budget.initial ?? "?"} (init ${adapter.init_r}, target ${adapter.target_r} per module)`],
    ["trainable parameters", fmt(adapter.trainable_params)], ["size", bytes(adapter.size_bytes)],
    ["sha256", adapter.sha256], ["job", adapter.job_id || ""], ["created", when(adapter.created_at)],
    ...Object.entries(adapter.metrics || {}).map(([k, v]) => [k, fmt(v, 4)]),
  ];
  setView(
    el("section", { class: "card" },
      el("h2", {}, `Adapter ${adapter.name || adapter.id} `, statusBadge(adapter.status)),
      el("dl", { class: "facts" }, facts.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: String(v) })])),
      el("p", {}, downloads, " ", remove)),
    allocationView(ranks)
  );
}

async function download(adapterId, format) {
  const response = await api("GET", `/adapters/${adapterId}/download?format=${format}`, { raw: true });
  const blob = await response.blob();
  const link = el("a", { href: URL.createObjectURL(blob), download: `${adapterId}-${format}.zip` });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10000);
}

// The allocation: layers x module kinds, stepped through the recorded history from init_r
// everywhere (before the first masking step) to the final pattern.
function allocationView(ranks) {
  const modules = ranks.modules;
  const layers = [...new Set(modules.map((m) => m.layer))].sort((a, b) => (a ?? -1) - (b ?? -1));
  const kinds = [...new Set(modules.map((m) => m.kind))];
  const initial = Object.fromEntries(modules.map((m) => [m.name, ranks.init_r]));
  const frames = [{ step: 0, budget: ranks.budget.initial ?? ranks.init_r * modules.length, ranks: initial }, ...ranks.history];
  const last = frames[frames.length - 1];
  const finalRanks = Object.fromEntries(modules.map((m) => [m.name, m.rank]));
  if (JSON.stringify(last.ranks) !== JSON.stringify(finalRanks)) frames.push({ step: last.step, budget: ranks.budget.final, ranks: finalRanks });
  const at = (layer, kind) => modules.find((m) => m.layer === layer && m.kind === kind);

  const table = el("table", { class: "heatmap", id: "heatmap" });
  const caption = el("span", { id: "frame-caption", class: "mono" });
  const slider = el("input", { type: "range", id: "history-slider", min: 0, max: frames.length - 1, value: frames.length - 1, "aria-label": "masking step" });
  const play = el("button", { class: "secondary", id: "play", text: "▶ Play" });
  const budgetBox = el("div", { id: "budget-curve" });
  let timer = null;

  const render = (index) => {
    const frame = frames[index];
    const value = (m) => (m ? frame.ranks[m.name] ?? m.rank : null);
    const head = el("tr", {}, el("th", { text: "layer" }), kinds.map((k) => el("th", { text: k })), el("th", { text: "total" }));
    const body = layers.map((layer) => {
      const cells = kinds.map((kind) => {
        const r = value(at(layer, kind));
        if (r === null) return el("td", {});
        const share = r / ranks.init_r;
        const color = `rgba(55, 87, 214, ${(0.08 + 0.92 * share).toFixed(3)})`;
        return el("td", { class: "cell", style: `background:${color};color:${share > 0.55 ? "#fff" : "#1d2433"}`, "data-layer": layer, "data-kind": kind, title: `layer ${layer} ${kind}: rank ${r} of ${ranks.init_r}`, text: r });
      });
      const total = kinds.reduce((sum, kind) => sum + (value(at(layer, kind)) || 0), 0);
      return el("tr", {}, el("th", { text: layer ?? "–" }), cells, el("td", { class: "total", "data-layer-total": layer, text: total }));
    });
    const kindTotals = kinds.map((kind) => el("td", { class: "total", "data-kind-total": kind, text: layers.reduce((sum, layer) => sum + (value(at(layer, kind)) || 0), 0) }));
    const sum = Object.values(frame.ranks).reduce((a, b) => a + b, 0);
    table.replaceChildren(el("thead", {}, head), el("tbody", {}, body, el("tr", {}, el("th", { text: "total" }), kindTotals, el("td", { class: "total", id: "grand-total", text: sum }))));
    caption.textContent = index === 0 ? `before masking: ${sum} triplets (init_r ${ranks.init_r} everywhere)` : `after update ${frame.step}: ${sum} triplets kept (budget ${frame.budget})`;
    budgetBox.replaceChildren(lineChart("Budget over the recorded masking steps",
      [{ name: "budget", points: frames.map((f) => [f.step, f.budget]) }], { marker: frame.step, xMin: 0 }));
  };
  const stop = () => {
    clearInterval(timer);
    timer = null;
    play.textContent = "▶ Play";
  };
  slider.addEventListener("input", () => render(Number(slider.value)));
  play.addEventListener("click", () => {
    if (timer !== null) return stop();
    if (Number(slider.value) >= frames.length - 1) slider.value = 0;
    play.textContent = "❚❚ Pause";
    timer = setInterval(() => {
      const next = Number(slider.value) + 1;
      if (next > frames.length - 1) return stop();
      slider.value = next;
      render(next);
    }, Math.max(40, 4000 / frames.length));
  });
  leaving.push(stop);
  render(frames.length - 1);
  return el("section", { class: "card", id: "allocation" },
    el("h2", { text: "Where AdaLoRA put the rank budget" }),
    el("div", { class: "scale" }, "rank 0", el("span", { class: "ramp" }), `rank ${ranks.init_r} (init_r)`),
    el("div", { class: "scrub" }, play, slider, caption),
    el("div", { class: "allocation" }, el("div", { class: "heatmap-box" }, table), budgetBox));
}

// ---------------------------------------------------------------- data sets
async function datasetsPage() {
  const datasets = await api("GET", "/datasets?limit=200");
  const progress = el("progress", { id: "upload-progress", max: 100, value: 0, hidden: true });
  const form = el("form", { id: "upload", class: "inline" },
    el("label", {}, "File (CSV, TSV or JSON Lines)", el("input", { type: "file", id: "upload-file", required: true, accept: ".csv,.tsv,.jsonl,.json" })),
    el("label", {}, "Name (optional)", el("input", { id: "upload-name" })),
    el("label", {}, el("span", {}, el("input", { type: "checkbox", id: "upload-header", checked: true }), " first line names the columns (CSV/TSV)")),
    el("button", { type: "submit", text: "Upload" }));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const file = form.querySelector("#upload-file").files[0];
    if (!file) return;
    const data = new FormData();
    data.append("file", file);
    const name = form.querySelector("#upload-name").value.trim();
    if (name) data.append("name", name);
    if (/\.(csv|tsv)$/i.test(file.name)) data.append("header", form.querySelector("#upload-header").checked ? "true" : "false");
    upload("/datasets", data, progress).then(() => datasetsPage()).then(() => showMessage(`Uploaded ${file.name}.`, "info")).catch(fail);
  });
  const rows = datasets.items.map((d) =>
    el("tr", { "data-dataset": d.id },
      el("td", { class: "mono", text: d.id }), el("td", { text: d.name }), el("td", { text: d.format }),
      el("td", { class: "num", text: fmt(d.num_rows) }), el("td", { text: d.columns.join(", ") }),
      el("td", { class: "num", text: bytes(d.size_bytes) }), el("td", { text: when(d.created_at) })));
  setView(
    el("section", { class: "card" }, el("h2", { text: "Upload a data set" }), form, progress),
    el("section", { class: "card" }, el("h2", { text: "Data sets" }),
      rows.length
        ? el("table", { id: "datasets-table" },
            el("thead", {}, el("tr", {}, ["id", "name", "format", "rows", "columns", "size", "created"].map((h) => el("th", { text: h })))),
            el("tbody", {}, rows))
        : el("p", { class: "muted", text: "No data sets yet." }))
  );
}

// XMLHttpRequest, because fetch reports no upload progress.
function upload(path, data, progress) {
  return new Promise((resolve, reject) => {
    const request = new XMLHttpRequest();
    request.open("POST", path);
    request.setRequestHeader("Authorization", `Bearer ${apiKey()}`);
    progress.hidden = false;
    progress.value = 0;
    request.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable) progress.value = (100 * event.loaded) / event.total;
    });
    request.addEventListener("load", () => {
      progress.value = 100;
      if (request.status < 300) return resolve(JSON.parse(request.responseText));
      let error = {};
      try {
        error = JSON.parse(request.responseText).error || {};
      } catch (_) {
        // keep the status alone
      }
      reject(new ApiError(request.status, error.code || "error", error.message || request.statusText, error.field, request.getResponseHeader("Retry-After")));
    });
    request.addEventListener("error", () => reject(new ApiError(0, "unreachable", "The service cannot be reached.")));
    request.send(data);
  });
}

// ---------------------------------------------------------------- playground
async function playgroundPage() {
  const adapters = (await api("GET", "/adapters?limit=200")).items.filter((a) => a.status === "ready");
  const choose = (id, optional) => el("select", { id },
    optional ? el("option", { value: "", text: "(none)" }) : null,
    adapters.map((a) => el("option", { value: a.id, text: `${a.name || a.id} · ${a.task}` })));
  const results = el("div", { id: "playground-results" });
  const form = el("form", { id: "playground" },
    el("div", { class: "side" }, el("label", {}, "Adapter", choose("adapter-a", false)), el("label", {}, "Compare with (optional)", choose("adapter-b", true))),
    el("label", {}, "Inputs, one per line (a tab separates the two texts of a pair)", el("textarea", { id: "inputs", required: true })),
    el("button", { type: "submit", id: "run", text: "Run" }));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const inputs = form.querySelector("#inputs").value.split("\n").map((line) => line.trim()).filter(Boolean)
      .map((line) => (line.includes("\t") ? line.split("\t").slice(0, 2) : line));
    const chosen = [form.querySelector("#adapter-a").value, form.querySelector("#adapter-b").value].filter(Boolean);
    try {
      const answers = await Promise.all(chosen.map((id) => api("POST", "/infer", { json: { adapter_id: id, inputs } })));
      results.replaceChildren(el("table", { id: "playground-table" },
        el("thead", {}, el("tr", {}, el("th", { text: "input" }), chosen.map((id) => el("th", { class: "mono", text: id })))),
        el("tbody", {}, inputs.map((input, row) => el("tr", {},
          el("td", { text: Array.isArray(input) ? input.join(" ‖ ") : input }),
          answers.map((answer) => el("td", { class: "output", text: describeOutput(answer.outputs[row]) })))))));
    } catch (error) {
      fail(error);
    }
  });
  setView(el("section", { class: "card" }, el("h2", { text: "Playground" }),
    adapters.length ? form : el("p", { class: "muted", text: "No ready adapters yet." }), results));
}

function describeOutput(output) {
  if (!output) return "";
  if (output.label !== undefined) return `${output.label} (${(100 * output.score).toFixed(1)}%)`;
  if (output.value !== undefined) return fmt(output.value, 4);
  if (output.text !== undefined) return output.text;
  return JSON.stringify(output);
}

// ---------------------------------------------------------------- start
window.addEventListener("hashchange", route);
document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("sign-out").addEventListener("click", () => signOut());
  route();
});
