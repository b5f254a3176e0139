// netforge serve: forms post to the JSON API; the job page follows its server-sent events
// and redraws the server-side SVG chart. No framework, no network access beyond this server.
"use strict";

async function callApi(url, method, body) {
  const response = await fetch(url, { method: method || "POST", body: body, credentials: "same-origin" });
  const text = await response.text();
  let data;
  try { data = JSON.parse(text); } catch (e) { data = { error: text || response.statusText }; }
  if (!response.ok) throw new Error(data.error || response.statusText);
  return data;
}

function showError(form, message) {
  const box = form.querySelector(".error");
  if (box) { box.textContent = message; box.hidden = !message; }
}

function escapeHtml(text) {
  const div = document.createElement("div");
  div.textContent = String(text);
  return div.innerHTML;
}

const renderers = {
  classify(data) {
    const out = document.getElementById("classify-results");
    out.innerHTML = data.results.map((r) => {
      const rows = r.top.map((t) => `<tr><td>${escapeHtml(t.label)}</td><td>${(100 * t.probability).toFixed(1)}%</td></tr>`).join("");
      return `<div class="result"><img src="${r.image}" alt="${escapeHtml(r.name)}">` +
        `<div><div class="top1" data-label="${escapeHtml(r.top[0].label)}">${escapeHtml(r.top[0].label)}</div>` +
        `<div class="muted small">${escapeHtml(r.name)} · snapshot ${data.snapshot}</div>` +
        `<table class="top">${rows}</table></div></div>`;
    }).join("") + data.skipped.map((s) => `<p class="error">${escapeHtml(s.name)}: ${escapeHtml(s.reason)}</p>`).join("");
  },
  confusion(data) {
    const out = document.getElementById("confusion-results");
    const head = "<tr><th>true \\ predicted</th>" + data.labels.map((l) => `<th>${escapeHtml(l)}</th>`).join("") + "<th>accuracy</th></tr>";
    const rows = data.matrix.map((row, k) => `<tr><th>${escapeHtml(data.labels[k])}</th>` +
      row.map((v, j) => `<td style="background:${v ? (j === k ? "#c8e6c9" : "#ffcdd2") : "#fff"}">${v}</td>`).join("") +
      `<td>${data.per_class[k] === null ? "–" : (100 * data.per_class[k]).toFixed(1) + "%"}</td></tr>`).join("");
    out.innerHTML = `<p id="overall-accuracy">Accuracy ${(100 * data.accuracy).toFixed(2)}% on ${data.total} ${data.split} images (snapshot ${data.snapshot})</p>` +
      `<table class="confusion">${head}${rows}</table>`;
  },
};

function wireForms() {
  document.querySelectorAll("form[data-api]").forEach((form) => {
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      showError(form, "");
      const button = form.querySelector("button[type=submit]");
      if (button) button.disabled = true;
      try {
        // getAttribute, not form.dataset: a field named "dataset" shadows that property.
        const data = await callApi(form.getAttribute("data-api"), "POST", new FormData(form));
        const render = form.getAttribute("data-render");
        if (render) renderers[render](data);
        else if (data.url) window.location = data.url;
      } catch (error) {
        showError(form, error.message);
      } finally {
        if (button) button.disabled = false;
      }
    });
  });
  document.querySelectorAll("button[data-action]").forEach((button) => {
    button.addEventListener("click", async () => {
      if (button.dataset.confirm && !window.confirm(button.dataset.confirm)) return;
      try {
        const data = await callApi(button.dataset.action, button.dataset.method || "POST");
        const then = button.dataset.then;
        if (then === "reload") window.location.reload();
        else if (then === "url") window.location = data.url;
        else if (then) window.location = then;
      } catch (error) {
        window.alert(error.message);
      }
    });
  });
}

function pollDataset() {
  const box = document.getElementById("progress");
  if (!box) return;
  const tick = async () => {
    const data = await callApi(box.dataset.poll, "GET");
    if (data.state !== "converting") { window.location.reload(); return; }
    const bar = box.querySelector("progress");
    bar.max = data.progress.total || 1;
    bar.value = data.progress.done;
    box.querySelector(".count").textContent = `${data.progress.done} / ${data.progress.total} images`;
    setTimeout(tick, 500);
  };
  tick();
}

function followJob() {
  const chart = document.getElementById("chart");
  if (!chart) return;
  const job = chart.dataset.job;
  const latest = { train: null, test: null };
  let pending = false;
  let count = 0;
  const redraw = async () => {
    if (pending) return;
    pending = true;
    try {
      const response = await fetch(`/api/jobs/${job}/chart.svg`, { credentials: "same-origin" });
      chart.innerHTML = await response.text();
      document.getElementById("record-count").textContent = `(${count} records)`;
    } finally {
      pending = false;
    }
  };
  const showLatest = () => {
    const rows = [];
    for (const phase of ["train", "test"]) {
      const r = latest[phase];
      if (!r) continue;
      const values = phase === "train" ? { loss: r.loss, lr: r.lr } : r.outputs;
      for (const [name, value] of Object.entries(values)) {
        const shown = typeof value === "number" ? value.toPrecision(4) : value;
        rows.push(`<tr><td>${phase} ${escapeHtml(name)}</td><td>${escapeHtml(shown)}</td><td class="muted">iter ${r.iteration}</td></tr>`);
      }
    }
    document.getElementById("latest").innerHTML = rows.join("");
  };
  const refreshLog = async () => {
    const log = document.getElementById("log");
    const response = await fetch(log.dataset.src, { credentials: "same-origin" });
    log.textContent = await response.text();
    log.scrollTop = log.scrollHeight;
  };
  redraw();
  refreshLog();
  const events = new EventSource(`/api/jobs/${job}/events`);
  events.addEventListener("metrics", (event) => {
    const record = JSON.parse(event.data);
    latest[record.phase] = record;
    count += 1;
    showLatest();
    redraw();
  });
  events.addEventListener("reset", () => { count = 0; });
  events.addEventListener("state", (event) => {
    const data = JSON.parse(event.data);
    const previous = chart.dataset.state;
    chart.dataset.state = data.state;
    document.getElementById("job-state").innerHTML = `<span class="state state-${data.state}">${data.state}</span>`;
    const box = document.getElementById("job-error");
    box.textContent = data.error || "";
    box.hidden = !data.error;
    refreshLog();
    // A run that ended has new snapshots to list and choose from.
    if (previous === "running" && data.state !== "running") setTimeout(() => window.location.reload(), 300);
  });
  events.addEventListener("end", () => { events.close(); redraw(); refreshLog(); });
  setInterval(() => { if (chart.dataset.state === "running") refreshLog(); }, 3000);
}

document.addEventListener("DOMContentLoaded", () => {
  wireForms();
  pollDataset();
  followJob();
});
