// taskraft dashboard: plain JavaScript, no dependencies. Everything it shows comes
// from /api/... on the node that served the page.
"use strict";

const TOKEN_KEY = "taskraft-token";
const REFRESH_MS = 3000;
const $ = (sel) => document.querySelector(sel);
let deadQueue = null;

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

function flash(text, ok) {
  const f = $("#flash");
  f.textContent = text;
  f.className = ok ? "ok" : "bad";
}

class Unauthorized extends Error {}

async function api(path, method) {
  const headers = {};
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = "Bearer " + token;
  const resp = await fetch("/api" + path, { method: method || "GET", headers });
  if (resp.status === 401) {
    showLogin(true);
    throw new Unauthorized("a valid token is required");
  }
  const body = await resp.json().catch(() => ({}));
  if (!resp.ok) throw new Error(body.error || resp.statusText);
  return body;
}

function showLogin(on) {
  $("#login").hidden = !on;
  $("#main").hidden = on;
  $("#logout").hidden = on || !sessionStorage.getItem(TOKEN_KEY);
}

function ago(ms, now) {
  const s = Math.max(0, Math.round((now - ms) / 1000));
  return s < 60 ? s + " s ago" : Math.round(s / 60) + " min ago";
}

// A tiny two-line chart of enqueue and completion rates, drawn as inline SVG.
function chart(rates) {
  const W = 180, H = 36, NS = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("class", "chart");
  svg.setAttribute("width", W);
  svg.setAttribute("height", H);
  const enq = (rates && rates.enqueue_per_s) || [];
  const done = (rates && rates.complete_per_s) || [];
  const max = Math.max(1, ...enq, ...done);
  const n = Math.max(enq.length, 2);
  const line = (values, cls) => {
    const p = document.createElementNS(NS, "polyline");
    p.setAttribute("class", cls);
    p.setAttribute("points", values.map((v, i) =>
      ((i / (n - 1)) * (W - 2) + 1).toFixed(1) + "," + (H - 2 - (v / max) * (H - 4)).toFixed(1)).join(" "));
    svg.append(p);
  };
  const axis = document.createElementNS(NS, "line");
  axis.setAttribute("class", "axis");
  axis.setAttribute("x1", 0); axis.setAttribute("x2", W);
  axis.setAttribute("y1", H - 1); axis.setAttribute("y2", H - 1);
  svg.append(axis);
  line(enq, "enq");
  line(done, "done");
  const title = document.createElementNS(NS, "title");
  const last = (a) => (a.length ? a[a.length - 1].toFixed(1) : "0");
  title.textContent = `now: ${last(enq)} enqueued/s, ${last(done)} completed/s; peak ${max.toFixed(1)}/s`;
  svg.append(title);
  return svg;
}

function renderCluster(c) {
  const leader = c.leader_id ? "node " + c.leader_id : "none";
  $("#cluster-summary").textContent =
    `node ${c.node_id} · leader ${leader} · term ${c.term}` + (c.metrics_enabled ? "" : " · metrics off");
  const body = $("#nodes tbody");
  body.replaceChildren(...c.nodes.map((n) =>
    el("tr", { "data-node": n.id },
      el("td", {}, n.id + (n.id === c.node_id ? " (this node)" : "")),
      el("td", {}, n.addr),
      el("td", { class: "role-" + n.role }, n.role),
      el("td", { class: "n" }, n.matched_index))));
  $("#raft").textContent =
    `log ${c.last_log_index} · committed ${c.commit_index} · applied ${c.applied_index}`;
}

const STATES = ["ready", "scheduled", "leased", "dead", "succeeded", "cancelled"];

function renderQueues(list) {
  const body = $("#queues tbody");
  if (!list.length) {
    body.replaceChildren(el("tr", {}, el("td", { colspan: 9, class: "muted" }, "no queues yet")));
    return;
  }
  body.replaceChildren(...list.map((q) => {
    const row = el("tr", { "data-queue": q.queue,
      "data-counts": STATES.map((s) => s + "=" + q[s]).join(" ") });
    const name = el("td", {}, q.queue);
    if (q.paused) name.append(el("span", { class: "paused" }, "paused"));
    row.append(name);
    for (const s of STATES) row.append(el("td", { class: "n " + s }, q[s]));
    row.append(el("td", {}, chart(q.rates)));
    row.append(el("td", {},
      el("button", { "data-dead": q.queue, onclick: () => openDead(q.queue) }, "dead jobs"), " ",
      q.paused
        ? el("button", { "data-resume": q.queue, onclick: () => queueAction(q.queue, "resume") }, "resume")
        : el("button", { "data-pause": q.queue, onclick: () => queueAction(q.queue, "pause") }, "pause")));
    return row;
  }));
}

function renderWorkers(w) {
  const body = $("#workers tbody");
  if (!w.workers.length) {
    body.replaceChildren(el("tr", {}, el("td", { colspan: 5, class: "muted" }, "no workers seen recently")));
    return;
  }
  body.replaceChildren(...w.workers.map((x) =>
    el("tr", { "data-worker": x.worker_id },
      el("td", {}, x.worker_id),
      el("td", {}, x.queues.join(", ")),
      el("td", { class: "n" }, x.jobs_in_hand),
      el("td", { class: "n" }, x.leased_total),
      el("td", {}, ago(x.last_seen_ms, w.now_ms)))));
}

async function refresh() {
  try {
    const [c, q, w] = await Promise.all([api("/cluster"), api("/queues"), api("/workers")]);
    showLogin(false);
    renderCluster(c);
    renderQueues(q.queues);
    renderWorkers(w);
    if (deadQueue) await loadDead();
  } catch (e) {
    if (!(e instanceof Unauthorized)) flash("refresh failed: " + e.message, false);
  }
}

async function queueAction(queue, action) {
  try {
    await api(`/queues/${encodeURIComponent(queue)}/${action}`, "POST");
    flash(`${action} ${queue}: done`, true);
  } catch (e) {
    flash(`${action} ${queue} failed: ${e.message}`, false);
  }
  await refresh();
}

async function openDead(queue) {
  deadQueue = queue;
  $("#dead-queue").textContent = queue;
  $("#dead-panel").hidden = false;
  await loadDead();
}

async function loadDead() {
  const r = await api(`/queues/${encodeURIComponent(deadQueue)}/jobs?state=dead&limit=200`);
  const body = $("#dead tbody");
  if (!r.jobs.length) {
    body.replaceChildren(el("tr", {}, el("td", { colspan: 5, class: "muted" }, "no dead jobs")));
    return;
  }
  body.replaceChildren(...r.jobs.map((j) =>
    el("tr", { "data-job": j.id },
      el("td", {}, el("button", { class: "link", onclick: () => showJob(j.id) }, j.id)),
      el("td", {}, j.job_type),
      el("td", { class: "n" }, `${j.attempt}/${j.max_attempts}`),
      el("td", { class: "err" }, j.last_error || ""),
      el("td", {}, el("button", { "data-retry": j.id, onclick: () => retryJob(j.id) }, "retry")))));
}

async function retryJob(id) {
  try {
    const j = await api(`/jobs/${encodeURIComponent(id)}/retry`, "POST");
    flash(`retried ${id}: now ${j.state}`, true);
  } catch (e) {
    flash(`retry ${id} failed: ${e.message}`, false);
  }
  await refresh();
}

async function redrive() {
  try {
    const r = await api(`/queues/${encodeURIComponent(deadQueue)}/redrive`, "POST");
    flash(`redrove ${r.count} job(s) of ${deadQueue}`, true);
  } catch (e) {
    flash(`redrive failed: ${e.message}`, false);
  }
  await refresh();
}

async function showJob(id) {
  try {
    const j = await api(`/jobs/${encodeURIComponent(id)}`);
    $("#job-title").textContent = j.id;
    const rows = [
      ["queue", j.queue], ["type", j.job_type], ["state", j.state],
      ["attempt", `${j.attempt}/${j.max_attempts}`], ["priority", j.priority],
      ["created", new Date(j.created_at_ms).toISOString()],
      ["last error", j.last_error || "—"],
      ["lease", j.lease ? `${j.lease.worker_id} until ${new Date(j.lease.deadline_ms).toISOString()}` : "—"],
      ["headers", JSON.stringify(j.headers)],
      ["payload", `${j.payload} (${j.payload_bytes} bytes)`],
    ];
    $("#job").replaceChildren(...rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
    $("#job-panel").hidden = false;
  } catch (e) {
    flash(`job ${id}: ${e.message}`, false);
  }
}

// URL actions, so a link (or a test) can open a view or press a button:
//   #job=<id>          show one job
//   #dead=<queue>      open the dead jobs of a queue
//   #retry=<id>        press that job's retry button (opening #dead first if given)
async function runHashActions() {
  const p = new URLSearchParams(location.hash.slice(1));
  if (p.get("dead")) await openDead(p.get("dead"));
  if (p.get("job")) await showJob(p.get("job"));
  const retry = p.get("retry");
  if (retry) {
    const button = document.querySelector(`button[data-retry="${CSS.escape(retry)}"]`);
    if (button) button.click();
    else await retryJob(retry);
  }
}

$("#search").addEventListener("submit", (e) => {
  e.preventDefault();
  const id = $("#search-id").value.trim();
  if (id) showJob(id);
});
$("#login-form").addEventListener("submit", (e) => {
  e.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $("#login-token").value);
  refresh().then(runHashActions);
});
$("#logout").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  showLogin(true);
});
$("#redrive").addEventListener("click", redrive);
$("#dead-close").addEventListener("click", () => { deadQueue = null; $("#dead-panel").hidden = true; });
$("#job-close").addEventListener("click", () => { $("#job-panel").hidden = true; });
window.addEventListener("hashchange", runHashActions);

refresh().then(runHashActions);
setInterval(refresh, REFRESH_MS);
