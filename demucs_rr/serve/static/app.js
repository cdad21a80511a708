// The page of `demucs-rr serve`: uploads, a live job list (server-sent events), players.
"use strict";

const $ = (selector, root = document) => root.querySelector(selector);
const cards = new Map(); // job id -> <li>
let info = null;

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  node.append(...children);
  return node;
}

function showMessage(text) {
  const box = $("#message");
  box.textContent = text || "";
  box.hidden = !text;
}

async function api(path, options = {}) {
  const response = await fetch(path, options);
  if (!response.ok) {
    let detail = response.statusText;
    try { detail = (await response.json()).detail || detail; } catch (_) { /* not JSON */ }
    if (response.status === 401) {
      detail = "this server needs its access token: open the address printed by " +
        "`demucs-rr serve` (it ends in ?token=...)";
    }
    throw new Error(detail);
  }
  return response.status === 204 ? null : response.json();
}

async function loadInfo() {
  info = await api("/api/info");
  $("#server").textContent = `model ${info.model} on ${info.device} \u00b7 ` +
    `${info.workers} worker${info.workers === 1 ? "" : "s"} \u00b7 demucs_rr ${info.version}`;
  $("#limit").textContent = `up to ${info.max_upload_mb} MB per file`;
  $("#model").replaceChildren(...info.models.map((name, i) =>
    el("option", { value: name, text: i === 0 ? `${info.model} (default)` : name })));
  $("#two-stems").append(...info.sources.map((stem) =>
    el("option", { value: stem, text: `${stem} + no_${stem}` })));
  $("#shifts").max = info.max_shifts;
}

function formFields() {
  const fields = new FormData($("#options"));
  for (const [key, value] of [...fields.entries()]) {
    if (value === "" || (key === "model" && value === info.models[0])) fields.delete(key);
  }
  return fields;
}

function upload(file) {
  if (info && file.size > info.max_upload_mb * 1024 * 1024) {
    showMessage(`${file.name} is larger than the server's limit of ${info.max_upload_mb} MB`);
    return;
  }
  const form = formFields();
  form.append("file", file, file.name);
  const pending = el("li", { class: "job", "data-state": "uploading" });
  const bar = el("progress", { max: "1", value: "0" });
  const status = el("span", { class: "state", text: "uploading" });
  pending.append(el("div", { class: "row" }, el("span", { class: "name", text: file.name }), status), bar);
  $("#jobs").prepend(pending);
  updateEmpty();
  const xhr = new XMLHttpRequest();
  xhr.open("POST", "/api/jobs");
  xhr.upload.onprogress = (e) => { if (e.lengthComputable) bar.value = e.loaded / e.total; };
  xhr.onload = () => {
    pending.remove();
    let body = {};
    try { body = JSON.parse(xhr.responseText); } catch (_) { /* not JSON */ }
    if (xhr.status === 201) {
      showMessage("");
      renderJob(body);
    } else {
      showMessage(`${file.name}: ${body.detail || `upload failed (HTTP ${xhr.status})`}`);
    }
    updateEmpty();
  };
  xhr.onerror = () => {
    pending.remove();
    showMessage(`${file.name}: the upload did not reach the server`);
    updateEmpty();
  };
  xhr.send(form);
}

function statusText(job) {
  const pct = `${Math.round(job.progress * 100)}%`;
  if (job.state === "running") return `separating ${pct}${job.device ? ` on ${job.device}` : ""}`;
  if (job.state === "done") return `done in ${(job.finished - job.started).toFixed(1)} s`;
  return job.state;
}

function stemRow(stem) {
  return el("div", { class: "stem" },
    el("span", { class: "stem-name", text: stem.name }),
    el("img", { class: "wave", src: stem.waveform, alt: `waveform of ${stem.name}` }),
    el("audio", { controls: "", preload: "metadata", src: stem.url }),
    el("a", { class: "download button", href: stem.download, download: "", text: "Download" }));
}

function newCard(job) {
  const remove = el("button", { class: "delete", type: "button", text: "Delete" });
  remove.onclick = () => {
    if (!window.confirm(`Delete ${job.name} and its stems?`)) return;
    api(job.url, { method: "DELETE" })
      .then(() => { removeCard(job.id); updateEmpty(); })
      .catch((err) => showMessage(err.message));
  };
  const card = el("li", { class: "job", "data-id": job.id },
    el("div", { class: "row" },
      el("span", { class: "name", text: job.name }),
      el("span", { class: "state" }),
      remove),
    el("progress", { max: "1", value: "0" }),
    el("p", { class: "error", hidden: "" }),
    el("div", { class: "stems" }));
  cards.set(job.id, card);
  $("#jobs").prepend(card);
  return card;
}

function renderJob(job) {
  const card = cards.get(job.id) || newCard(job);
  card.dataset.state = job.state;
  $(".state", card).textContent = statusText(job);
  $("progress", card).value = job.progress;
  const error = $(".error", card);
  error.textContent = job.error || "";
  error.hidden = !job.error;
  const stems = $(".stems", card);
  if (job.state === "done" && !stems.childElementCount) {
    stems.append(...job.stems.map(stemRow),
      el("a", { class: "zip button", href: job.zip, download: "", text: "Download all (zip)" }));
  }
}

function updateEmpty() {
  $("#empty").hidden = $("#jobs").childElementCount > 0;
}

function removeCard(id) {
  cards.get(id)?.remove();
  cards.delete(id);
}

function sync(jobs) {
  const seen = new Set(jobs.map((job) => job.id));
  for (const id of [...cards.keys()]) if (!seen.has(id)) removeCard(id);
  jobs.forEach(renderJob);
  updateEmpty();
}

function listen() {
  // "snapshot": every job (on each connection); "change": the jobs that changed and the
  // ids of deleted ones
  const events = new EventSource("/api/events");
  const online = () => $("#server").classList.remove("offline");
  events.addEventListener("snapshot", (e) => { online(); sync(JSON.parse(e.data).jobs); });
  events.addEventListener("change", (e) => {
    online();
    const change = JSON.parse(e.data);
    change.jobs.forEach(renderJob);
    change.deleted.forEach(removeCard);
    updateEmpty();
  });
  events.onerror = () => $("#server").classList.add("offline");
}

function setupDrop() {
  const drop = $("#drop");
  const files = (list) => [...list].forEach(upload);
  $("#file").addEventListener("change", (e) => { files(e.target.files); e.target.value = ""; });
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    files(e.dataTransfer.files);
  });
}

async function main() {
  setupDrop();
  try {
    await loadInfo();
    sync((await api("/api/jobs")).jobs);
    listen();
  } catch (err) {
    $("#server").textContent = "not connected";
    showMessage(err.message);
  }
}

main();
