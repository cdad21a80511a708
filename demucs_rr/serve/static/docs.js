// /docs: the endpoints of /openapi.json as a list (served locally, no CDN).
"use strict";

function item(method, path, op) {
  const li = document.createElement("li");
  const head = document.createElement("h3");
  head.innerHTML = `<code class="method"></code> <code class="path"></code>`;
  head.querySelector(".method").textContent = method.toUpperCase();
  head.querySelector(".path").textContent = path;
  const summary = document.createElement("p");
  summary.textContent = op.summary || "";
  li.append(head, summary);
  const params = (op.parameters || []).map((p) => `${p.name} (${p.in})`);
  const form = op.requestBody?.content?.["multipart/form-data"]?.schema?.properties;
  if (form) params.push(`multipart form: ${Object.keys(form).join(", ")}`);
  if (params.length) {
    const list = document.createElement("p");
    list.className = "params";
    list.textContent = `parameters: ${params.join(", ")}`;
    li.append(list);
  }
  return li;
}

fetch("/openapi.json").then((r) => r.json()).then((spec) => {
  const target = document.getElementById("endpoints");
  for (const [path, ops] of Object.entries(spec.paths)) {
    for (const [method, op] of Object.entries(ops)) target.append(item(method, path, op));
  }
});
