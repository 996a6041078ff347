# ruff: noqa: E501 (the page's HTML, CSS and script, kept as written)
"""The explorer's single page: inline style and script, no external resource (works offline).

Every string from the server is put into the page with ``textContent`` or as an ``img`` source checked
to be a ``data:image/png`` URI; the circuitsvis view goes into a sandboxed ``iframe`` (``srcdoc``), so
nothing a token or a question holds can run in the page.
"""

from __future__ import annotations

PAGE = r"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>hooked_mllm explorer</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><link rel="icon" href="data:,">
<style>
body{font-family:system-ui,sans-serif;margin:1em 2em;color:#222}
h1{font-size:1.4em;margin:.2em 0}h2{font-size:1.1em;margin:1.2em 0 .4em;border-bottom:1px solid #ddd}
#left{float:left;width:300px;margin-right:2em}#right{overflow:hidden}
input,select,button{font-size:1em;margin:2px 0}input[type=text]{width:280px}input[type=number]{width:70px}
#preview{width:256px;height:256px;border:1px solid #aaa;image-rendering:pixelated;display:block;margin:.5em 0}
#status{min-height:1.4em;font-style:italic;color:#555}#status.error{color:#b00020;font-style:normal;font-weight:bold}
#answer{font-size:1.3em;font-weight:bold}
table.grid{border-collapse:collapse}table.grid td{border:1px solid #ccc;width:44px;height:30px;text-align:center;
font:11px monospace;cursor:pointer;overflow:hidden;max-width:44px;white-space:nowrap}
table.grid td.on{outline:2px solid #000}table.grid th{font:11px monospace;font-weight:normal;padding:2px}
figure{display:inline-block;margin:6px;vertical-align:top}figure img{width:192px;height:192px;display:block}
figcaption{font-size:90%;color:#555;max-width:192px}
#attention{width:100%;height:720px;border:1px solid #ddd}
.hidden{display:none}
</style></head>
<body>
<h1>hooked_mllm explorer</h1>
<div id="left">
  <h2>Image</h2>
  <div>toy world <input id="seed" type="number" value="7" min="0"> scene <input id="index" type="number"
    value="6" min="0"> <button id="load">Load scene</button></div>
  <div>or upload: <input id="file" type="file" accept="image/*"></div>
  <img id="preview" alt="the image">
  <h2>Question</h2>
  <input id="question" type="text" list="questions" placeholder="what color is the triangle ?">
  <datalist id="questions"></datalist>
  <div><button id="ask">Ask</button></div>
  <div id="status"></div>
</div>
<div id="right">
  <div id="results" class="hidden">
    <h2>Answer</h2><div id="answer"></div>
    <h2>Logit lens over the image</h2>
    <div>layer <input id="lens-layer" type="range" min="0" max="0" value="0"> <span id="lens-layer-label"></span>
      (hover a cell for its top token; click it for the top five)</div>
    <table id="lens-grid" class="grid"></table><div id="cell-info"></div>
    <h2>Head scores (layer x head)</h2>
    <div>click a head for its map over the image</div>
    <table id="heads" class="grid"></table>
    <figure><img id="head-map" alt="head map"><figcaption id="head-label"></figcaption></figure>
    <h2>Baselines</h2><div id="baselines"></div>
    <h2>Patching sweep</h2>
    <div>corrupt with <select id="corruption"><option value="noise">noise on the image tokens</option>
      <option value="blur">blur</option><option value="black">black image</option></select>
      at layer <input id="patch-layer" type="number" value="0" min="0"> <button id="patch">Run the sweep</button></div>
    <figure><img id="patch-map" alt="patching map"><figcaption id="patch-label"></figcaption></figure>
    <h2>Attention (circuitsvis)</h2>
    <iframe id="attention" sandbox="allow-scripts" title="attention view"></iframe>
  </div>
</div>
<script>
"use strict";
let current = null, image = null, scene = null;
const $ = (id) => document.getElementById(id);
function status(text, error) { $("status").textContent = text; $("status").className = error ? "error" : ""; }
function png(el, uri) { if (typeof uri === "string" && uri.startsWith("data:image/png;base64,")) el.src = uri; }
async function call(url, options) {
  const response = await fetch(url, options);
  const body = await response.json();
  if (!response.ok || body.error) throw new Error(body.error || ("HTTP " + response.status));
  return body;
}
async function busy(text, work) {
  status(text, false);
  for (const b of document.querySelectorAll("button")) b.disabled = true;
  try { await work(); status("", false); } catch (e) { status(e.message, true); }
  finally { for (const b of document.querySelectorAll("button")) b.disabled = false; }
}
async function loadScene() {
  await busy("Loading the scene…", async () => {
    const seed = Number($("seed").value), index = Number($("index").value);
    const found = await call(`/api/scene?seed=${seed}&index=${index}`);
    scene = [seed, index]; image = null; png($("preview"), found.image);
    const list = $("questions"); list.replaceChildren();
    for (const q of found.questions) { const o = document.createElement("option"); o.value = q.question; list.append(o); }
    if (found.questions.length) $("question").value = found.questions[0].question;
  });
}
$("load").onclick = loadScene;
$("file").onchange = () => {
  const file = $("file").files[0]; if (!file) return;
  const reader = new FileReader();
  reader.onload = () => { image = String(reader.result); scene = null;
    $("preview").src = image.startsWith("data:image/") ? image : ""; };
  reader.readAsDataURL(file);
};
function color(value, top) {
  const v = Math.max(-1, Math.min(1, value / (top || 1)));
  const c = Math.round(255 * (1 - Math.abs(v)));
  return v >= 0 ? `rgb(255,${c},${c})` : `rgb(${c},${c},255)`;
}
function drawLens() {
  const layer = Number($("lens-layer").value), lens = current.lens;
  $("lens-layer-label").textContent = "after block " + lens.layers[layer];
  const table = $("lens-grid"); table.replaceChildren();
  lens.tokens[layer].forEach((row, r) => {
    const tr = table.insertRow();
    row.forEach((token, c) => {
      const td = tr.insertCell(), p = lens.probs[layer][r][c];
      td.textContent = token; td.title = `${token} ${p.toFixed(2)}`; td.dataset.row = r; td.dataset.col = c;
      td.style.background = color(p, 1);
      td.onclick = () => busy("Reading the cell…", async () => {
        const info = await call(`/api/cell?id=${current.id}&layer=${lens.layers[layer]}&row=${r}&col=${c}`);
        $("cell-info").textContent = `cell (${r}, ${c}), block ${lens.layers[layer]}: ` +
          info.tokens.map((t, i) => `${t} ${info.probs[i].toFixed(2)}`).join(", ");
      });
    });
  });
}
function drawHeads() {
  const values = current.heads.values, table = $("heads"); table.replaceChildren();
  const top = Math.max(...values.flat().map(Math.abs));
  const head = table.insertRow(); head.append(document.createElement("th"));
  values[0].forEach((_, h) => { const th = document.createElement("th"); th.textContent = "H" + h; head.append(th); });
  values.forEach((row, l) => {
    const tr = table.insertRow(), th = document.createElement("th"); th.textContent = "L" + l; tr.append(th);
    row.forEach((v, h) => {
      const td = tr.insertCell(); td.textContent = v.toFixed(2); td.style.background = color(v, top);
      td.dataset.layer = l; td.dataset.head = h; td.title = `L${l}H${h}: ${v.toFixed(3)}`;
      td.onclick = () => showHead(l, h);
    });
  });
}
async function showHead(l, h) {
  await busy(`Mapping head L${l}H${h}…`, async () => {
    const found = await call(`/api/head?id=${current.id}&layer=${l}&head=${h}`);
    for (const td of $("heads").querySelectorAll("td")) td.classList.toggle("on", td.dataset.layer == l && td.dataset.head == h);
    png($("head-map"), found.image);
    $("head-label").textContent = `L${l}H${h} (score ${found.score.toFixed(3)}), peak at cell (${found.peak.join(", ")})`;
  });
}
$("ask").onclick = () => busy("Running the model (answer, logit lens, heads, baselines)…", async () => {
  const body = { question: $("question").value };
  if (scene) body.scene = scene; else body.image = image;
  current = await call("/api/ask", { method: "POST", headers: { "Content-Type": "application/json" },
                                       body: JSON.stringify(body) });
  $("results").classList.remove("hidden");
  $("answer").textContent = current.answer;
  const slider = $("lens-layer"); slider.max = current.lens.layers.length - 1; slider.value = slider.max;
  slider.oninput = drawLens; drawLens(); drawHeads(); $("cell-info").textContent = "";
  const baselines = $("baselines"); baselines.replaceChildren();
  for (const [name, found] of Object.entries(current.baselines)) {
    const figure = document.createElement("figure"), img = document.createElement("img"),
          caption = document.createElement("figcaption");
    png(img, found.image); img.alt = name; caption.textContent = `${name}: peak (${found.peak.join(", ")})`;
    figure.append(img, caption); baselines.append(figure);
  }
  $("attention").srcdoc = current.attention.html;
  $("patch-layer").max = current.lens.layers.length - 1;
  const [l, h] = current.heads.top[0]; await showHead(l, h);
});
$("patch").onclick = () => busy("Patching every cell…", async () => {
  if (!current) throw new Error("Ask a question first.");
  const found = await call(`/api/patch?id=${current.id}&corruption=${$("corruption").value}&layer=${Number($("patch-layer").value)}`);
  png($("patch-map"), found.image);
  $("patch-label").textContent = `restored fraction of log p(answer); clean ${found.clean}, corrupted ${found.corrupted}; peak (${found.peak.join(", ")})`;
});
loadScene();
</script>
</body></html>
"""
