// dalle2 web page: plain JS over the same /v1 API the OpenAI client uses.
"use strict";

const $ = (id) => document.getElementById(id);
const api = (path) => new URL("v1/" + path, document.baseURI).toString();
let models = [];
let busy = false;

function headers(extra = {}) {
  const key = $("api-key").value.trim();
  return key ? { ...extra, Authorization: "Bearer " + key } : extra;
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

async function call(path, init) {
  const response = await fetch(api(path), init);
  let body = null;
  try { body = await response.json(); } catch (e) { /* not JSON */ }
  if (!response.ok) {
    const message = body && body.error ? body.error.message : response.status + " " + response.statusText;
    const error = new Error(message);
    error.status = response.status;
    throw error;
  }
  return body;
}

// ------------------------------------------------------------------------------------------ models
async function loadModels() {
  try {
    const body = await call("models", { headers: headers() });
    models = body.data;
  } catch (error) {
    setStatus(error.status === 401 ? "This server needs an API key: enter it above." : error.message, true);
    return;
  }
  const select = $("model");
  const previous = select.value;
  select.innerHTML = "";
  for (const m of models) {
    const option = document.createElement("option");
    option.value = m.id;
    option.textContent = m.id === "dall-e-2" && m.root ? `dall-e-2 (${m.root})` : m.id;
    select.appendChild(option);
  }
  if (models.some((m) => m.id === previous)) select.value = previous;
  onModelChange();
  setStatus("");
}

function currentModel() {
  return models.find((m) => m.id === $("model").value) || models[0];
}

function onModelChange() {
  const m = currentModel();
  if (!m) return;
  const size = $("size");
  const previous = size.value;
  size.innerHTML = "";
  for (const s of m.sizes || ["256x256", "512x512", "1024x1024"]) {
    const option = document.createElement("option");
    option.value = s;
    option.textContent = s === m.default_size ? s + " (native)" : s;
    size.appendChild(option);
  }
  size.value = (m.sizes || []).includes(previous) ? previous : m.default_size || size.options[0].value;
  const unclip = m.kind === "unclip";
  for (const label of document.querySelectorAll(".controls .unclip")) {
    label.classList.toggle("disabled", !unclip);
    label.querySelector("input").disabled = !unclip;
  }
  const features = m.features || ["generate"];
  $("tab-variations").title = features.includes("variation") ? "" : "this model cannot make variations";
  $("tab-edit").title = features.includes("edit") ? "" : "this model cannot edit images";
  updateButtons();
}

// ------------------------------------------------------------------------------------------- tabs
for (const tab of document.querySelectorAll(".tab")) {
  tab.addEventListener("click", () => {
    for (const t of document.querySelectorAll(".tab")) t.classList.toggle("active", t === tab);
    for (const p of document.querySelectorAll(".panel")) p.classList.toggle("active", p.id === "panel-" + tab.dataset.tab);
  });
}

// ------------------------------------------------------------------------------------- parameters
function options() {
  const out = { model: $("model").value, size: $("size").value, n: Number($("n").value) || 1 };
  for (const name of ["seed", "steps"]) {
    const input = $(name);
    if (!input.disabled && input.value !== "") out[name] = Number.parseInt(input.value, 10);
  }
  if (!$("guidance").disabled && $("guidance").value !== "") out.guidance = Number($("guidance").value);
  return out;
}

function formWith(fields) {
  const form = new FormData();
  for (const [key, value] of Object.entries(fields)) form.append(key, String(value));
  form.append("response_format", "url");
  return form;
}

// ----------------------------------------------------------------------------------------- results
function showResults(body, label) {
  const grid = $("results");
  grid.innerHTML = "";
  body.data.forEach((item, i) => {
    const card = document.createElement("figure");
    card.className = "card";
    const img = document.createElement("img");
    img.src = item.url;
    img.alt = `${label} ${i + 1}`;
    img.addEventListener("load", () => img.classList.toggle("small", img.naturalWidth < 128));
    const meta = document.createElement("div");
    meta.className = "meta";
    const size = document.createElement("span");
    size.textContent = $("size").value;
    const link = document.createElement("a");
    link.className = "download";
    link.href = item.url;
    link.download = `dalle2-${i + 1}.png`;
    link.textContent = "Download";
    meta.append(size, link);
    card.append(img, meta);
    grid.appendChild(card);
  });
}

async function run(button, label, path, init) {
  if (busy) return;
  busy = true;
  updateButtons();
  const started = performance.now();
  setStatus(label + "…");
  const timer = setInterval(() => setStatus(`${label}… ${((performance.now() - started) / 1000).toFixed(0)} s`), 1000);
  try {
    const body = await call(path, init);
    showResults(body, label);
    setStatus(`${body.data.length} image${body.data.length > 1 ? "s" : ""} in ${((performance.now() - started) / 1000).toFixed(1)} s`);
  } catch (error) {
    setStatus(error.message, true);
  } finally {
    clearInterval(timer);
    busy = false;
    updateButtons();
  }
}

// -------------------------------------------------------------------------------------- generate
$("generate").addEventListener("click", () => {
  const prompt = $("prompt").value.trim();
  if (!prompt) { setStatus("Type a prompt first.", true); $("prompt").focus(); return; }
  const body = JSON.stringify({ prompt, response_format: "url", ...options() });
  run($("generate"), "Generating", "images/generations",
    { method: "POST", headers: headers({ "Content-Type": "application/json" }), body });
});
$("prompt").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); $("generate").click(); }
});

// ------------------------------------------------------------------------- uploads as square PNGs
const MAX_SIDE = 1024;
let varySource = null;   // square canvas of the uploaded image
let editSource = null;
const paint = document.createElement("canvas");  // painted strokes (opaque where the mask is transparent)

function loadSquare(file) {
  return new Promise((resolve, reject) => {
    const url = URL.createObjectURL(file);
    const img = new Image();
    img.onload = () => {
      const side = Math.min(img.naturalWidth, img.naturalHeight);
      const out = Math.min(side, MAX_SIDE);
      const canvas = document.createElement("canvas");
      canvas.width = canvas.height = out;
      canvas.getContext("2d").drawImage(img, (img.naturalWidth - side) / 2, (img.naturalHeight - side) / 2, side, side, 0, 0, out, out);
      URL.revokeObjectURL(url);
      resolve(canvas);
    };
    img.onerror = () => { URL.revokeObjectURL(url); reject(new Error("That file is not an image the browser can read.")); };
    img.src = url;
  });
}

const toBlob = (canvas) => new Promise((resolve) => canvas.toBlob(resolve, "image/png"));

function drawPreview(target, source) {
  const ctx = target.getContext("2d");
  target.width = target.height = source.width;
  ctx.drawImage(source, 0, 0);
}

$("vary-file").addEventListener("change", async (event) => {
  const file = event.target.files[0];
  if (!file) return;
  try {
    varySource = await loadSquare(file);
    drawPreview($("vary-preview"), varySource);
    setStatus("");
  } catch (error) { varySource = null; setStatus(error.message, true); }
  updateButtons();
});

$("vary").addEventListener("click", async () => {
  if (!varySource) return;
  const fields = options();
  const form = formWith(fields);
  form.append("image", await toBlob(varySource), "image.png");
  run($("vary"), "Making variations", "images/variations", { method: "POST", headers: headers(), body: form });
});

// ---------------------------------------------------------------------------------- inpainting
function redrawEdit() {
  const canvas = $("edit-canvas");
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (!editSource) return;
  ctx.drawImage(editSource, 0, 0);
  ctx.globalAlpha = 0.55;
  ctx.drawImage(paint, 0, 0);
  ctx.globalAlpha = 1;
}

$("edit-file").addEventListener("change", async (event) => {
  const file = event.target.files[0];
  if (!file) return;
  try {
    editSource = await loadSquare(file);
    const canvas = $("edit-canvas");
    canvas.width = canvas.height = paint.width = paint.height = editSource.width;
    redrawEdit();
    setStatus("Paint over the area to redraw.");
  } catch (error) { editSource = null; setStatus(error.message, true); }
  updateButtons();
});

let painting = false;
function stroke(event) {
  const canvas = $("edit-canvas");
  const rect = canvas.getBoundingClientRect();
  const scale = canvas.width / rect.width;
  const x = (event.clientX - rect.left) * scale, y = (event.clientY - rect.top) * scale;
  const ctx = paint.getContext("2d");
  ctx.fillStyle = "#ff3b3b";
  ctx.beginPath();
  ctx.arc(x, y, (Number($("brush").value) / 2) * scale, 0, 2 * Math.PI);
  ctx.fill();
  redrawEdit();
}
$("edit-canvas").addEventListener("pointerdown", (e) => { if (!editSource) return; painting = true; e.target.setPointerCapture(e.pointerId); stroke(e); });
$("edit-canvas").addEventListener("pointermove", (e) => { if (painting) stroke(e); });
$("edit-canvas").addEventListener("pointerup", () => { painting = false; updateButtons(); });
$("clear-mask").addEventListener("click", () => { paint.getContext("2d").clearRect(0, 0, paint.width, paint.height); redrawEdit(); updateButtons(); });

function maskCanvas() {
  // opaque everywhere, fully transparent (alpha 0) where painted
  const mask = document.createElement("canvas");
  mask.width = mask.height = paint.width;
  const ctx = mask.getContext("2d");
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, mask.width, mask.height);
  ctx.globalCompositeOperation = "destination-out";
  ctx.drawImage(paint, 0, 0);
  return mask;
}

$("edit").addEventListener("click", async () => {
  const prompt = $("edit-prompt").value.trim();
  if (!editSource) return;
  if (!prompt) { setStatus("Describe what the painted area should show.", true); $("edit-prompt").focus(); return; }
  const form = formWith({ prompt, ...options() });
  form.append("image", await toBlob(editSource), "image.png");
  form.append("mask", await toBlob(maskCanvas()), "mask.png");
  run($("edit"), "Editing", "images/edits", { method: "POST", headers: headers(), body: form });
});

// --------------------------------------------------------------------------------------- wiring
function updateButtons() {
  const features = (currentModel() || {}).features || ["generate"];
  $("generate").disabled = busy;
  $("vary").disabled = busy || !varySource || !features.includes("variation");
  $("edit").disabled = busy || !editSource || !features.includes("edit");
}

$("model").addEventListener("change", onModelChange);
$("api-key").value = localStorage.getItem("dalle2-api-key") || "";
$("api-key").addEventListener("change", () => { localStorage.setItem("dalle2-api-key", $("api-key").value.trim()); loadModels(); });
loadModels();
