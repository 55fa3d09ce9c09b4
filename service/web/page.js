// The page of `diffpir serve`: a client of the HTTP API (GET /v1/info, POST /v1/restore,
// GET /v1/progress/<id>), like `diffpir request`. Every form field is generated from
// /v1/info (the engine's declarations), and posted under its declared name; only the
// fields a person set are sent, so the server fills in the model's defaults exactly as
// `diffpir restore` does. The token lives in this tab's sessionStorage only.
"use strict";

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "diffpir-token";
const FILE_INPUTS = new Set(["kernel", "mask"]);
const MAIN_PARAMS = ["steps", "sigma_n", "seed"]; // shown outside the advanced fold
const LABELS = { steps: "steps", sigma_n: "noise level σₙ", seed: "seed", lam: "λ (lam)", zeta: "ζ (zeta)", eta: "η (eta)" };
const CONCURRENT = 2; // restores in flight at once (each also holds a progress stream)

const state = { info: null, items: [], selected: -1, running: [], values: {}, kernelChoice: null, kernelFile: null };

// ----------------------------------------------------------------------------- small helpers

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }

function authHeaders(extra = {}) {
  const headers = { ...extra };
  if (token()) headers.Authorization = "Bearer " + token();
  return headers;
}

function requestId() {
  const bytes = crypto.getRandomValues(new Uint8Array(16)); // (randomUUID needs a secure context)
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

// An API error as its one-line message (the server's JSON {"error": ...}), never a page or a trace.
async function failure(response) {
  let message = "";
  try {
    const body = await response.text();
    try { message = JSON.parse(body).error || ""; } catch (_) { message = body.split("\n")[0].slice(0, 200); }
  } catch (_) { /* the body never came */ }
  const error = new Error(`${message || response.statusText || "no answer"} (HTTP ${response.status})`);
  error.status = response.status;
  return error;
}

async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(path, { ...options, headers: authHeaders(options.headers || {}) });
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new Error("cannot reach the server (" + e.message + ")");
  }
  if (!response.ok) throw await failure(response);
  return response;
}

function showError(where, message) {
  where.textContent = message || "";
  where.hidden = !message;
}

// A record or an info answer with every absolute path cut to its file name: the page shows
// nothing of the server's files.
function redact(value) {
  if (Array.isArray(value)) return value.map(redact);
  if (value && typeof value === "object") return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, redact(v)]));
  if (typeof value === "string") {
    return value.replace(/(?<=^|[\s("'=:])(?:[A-Za-z]:)?[\\/][^\s:"',;]*[\\/]([^\s\\/"',;]+)/g, "$1");
  }
  return value;
}

function seconds(s) {
  if (s === null || s === undefined) return "";
  if (s < 1) return `${Math.round(s * 1000)} ms`;
  if (s < 90) return `${s.toFixed(1)} s`;
  return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
}

// ----------------------------------------------------------------------------- connecting

async function connect() {
  showError($("error"), "");
  $("server").textContent = "connecting…";
  try {
    state.info = redact(await (await api("/v1/info")).json());
  } catch (e) {
    state.info = null;
    $("server").textContent = "not connected";
    showError($("error"), e.message);
    if (e.status === 401) $("token").focus();
    updateRun();
    return;
  }
  const info = state.info;
  const path = info.runtime.path;
  const model = info.runtime.model || {};
  $("server").textContent = `DiffPIR-RT ${info.version} · model ${model.arch || ""} (${model.label || model.kind || ""}) · ` +
    `${path.name}, ${path.backend}, ${path.precision}, ${path.device} · up to ${info.limits.max_pixels.toLocaleString()} pixels`;
  buildTasks();
  updateRun();
}

// ----------------------------------------------------------------------------- the form, from /v1/info

function buildTasks() {
  const select = $("task");
  const current = select.value;
  select.replaceChildren(...Object.keys(state.info.tasks).map((name) => el("option", { value: name, text: name })));
  if (current && state.info.tasks[current]) select.value = current;
  buildMethods();
}

function methodsFor(task) {
  return Object.entries(state.info.methods).filter(([, m]) => m.tasks.includes(task));
}

function buildMethods() {
  const task = $("task").value;
  $("task-help").textContent = state.info.tasks[task].description;
  const select = $("method");
  const current = select.value;
  select.replaceChildren(...methodsFor(task).map(([name, m]) => {
    const calls = (m.defaults[task] || {}).model_calls;
    return el("option", { value: name, text: calls ? `${name} — ${calls} UNet calls` : name });
  }));
  if (current && methodsFor(task).some(([name]) => name === current)) select.value = current;
  buildFields();
}

function buildFields() {
  const info = state.info;
  const task = $("task").value;
  const methodName = $("method").value;
  const method = info.methods[methodName];
  const defaults = method.defaults[task] || {};
  const steps = method.steps || {};
  const cost = defaults.model_calls ? ` Cost at the default ${defaults[steps.field] ?? ""} steps: ${defaults.model_calls} UNet calls.` : "";
  $("method-help").textContent = method.description + "." + cost + (steps.meaning ? ` steps: ${steps.meaning}.` : "");
  remember();

  // the task's own inputs: kernel (presets, a file), mask (the brush), scale, ...
  const inputs = $("task-inputs");
  inputs.replaceChildren();
  const taskInfo = info.tasks[task];
  for (const [name, spec] of Object.entries(taskInfo.inputs)) {
    if (name === "kernel") inputs.append(kernelField(spec, taskInfo.required.includes("kernel")));
    else if (name === "kernel_index") inputs.append(field(name, spec, undefined, "kernel-index"));
    else if (!FILE_INPUTS.has(name)) inputs.append(field(name, spec, spec.default));
  }
  updateKernelIndex();

  // the method's parameters and the request options: steps, noise level and seed first, the rest folded
  const main = $("main-params");
  const advanced = $("advanced-params");
  main.replaceChildren();
  advanced.replaceChildren();
  const params = { ...method.params };
  const request = info.request;
  for (const name of MAIN_PARAMS) {
    if (params[name]) main.append(field(name, params[name], defaults[name]));
    else if (request[name]) main.append(field(name, request[name], request[name].default));
  }
  const rest = Object.entries(params).filter(([name]) => !MAIN_PARAMS.includes(name));
  rest.sort(([, a], [, b]) => (a.group === "advanced") - (b.group === "advanced"));
  for (const [name, spec] of rest) advanced.append(field(name, spec, defaults[name]));
  for (const [name, spec] of Object.entries(request)) {
    if (MAIN_PARAMS.includes(name)) continue;
    if (name === "boundary" && !taskInfo.boundaries.length) continue; // only the deblurring edge model has a choice
    advanced.append(field(name, spec, spec.default));
  }
  restore();
  const isInpaint = Object.prototype.hasOwnProperty.call(taskInfo.inputs, "mask");
  $("mask-tools").hidden = !isInpaint;
  $("stage").classList.toggle("nomask", !isInpaint);
  updateRun();
}

// One declared parameter as a form field: a choice list, or a text box with the default as its placeholder.
function field(name, spec, fallback, id) {
  const wrap = el("div", { class: "param" });
  const inputId = id || "f-" + name;
  wrap.append(el("label", { for: inputId, text: LABELS[name] || name.replace(/_/g, " ") }));
  const shown = fallback !== undefined && fallback !== null ? String(fallback) : "";
  let input;
  if (spec.choices && !(spec.words && spec.words.length)) {
    input = el("select", { id: inputId, "data-name": name });
    input.append(el("option", { value: "", text: shown ? `default (${shown})` : spec.optional ? "default (the input's)" : "default" }));
    for (const choice of spec.choices) input.append(el("option", { value: String(choice), text: String(choice) }));
  } else {
    input = el("input", { id: inputId, type: "text", "data-name": name, placeholder: shown || spec.expected, inputmode: spec.kind === "str" ? null : "decimal", autocomplete: "off" });
    if (spec.words && spec.words.length) {
      const list = el("datalist", { id: inputId + "-words" });
      for (const word of spec.words) list.append(el("option", { value: word }));
      input.setAttribute("list", list.id);
      wrap.append(list);
    }
  }
  input.title = `${spec.help} (${spec.expected})`;
  wrap.append(input, el("p", { class: "help", text: spec.help, title: spec.help })); // long help is cut to 3 lines; the whole in its tooltip
  return wrap;
}

// Values typed in a field survive rebuilding the form (another method, another task), by name.
function remember() {
  for (const input of document.querySelectorAll("[data-name]")) state.values[input.dataset.name] = input.value;
}
function restore() {
  for (const input of document.querySelectorAll("[data-name]")) {
    const value = state.values[input.dataset.name];
    if (value !== undefined && (input.tagName !== "SELECT" || [...input.options].some((o) => o.value === value))) input.value = value;
  }
}

function kernelField(spec, required) {
  const wrap = el("div", { class: "field" });
  wrap.append(el("label", { text: "blur kernel" }));
  const grid = el("div", { class: "kernels", role: "radiogroup" });
  const choices = [];
  if (!required) choices.push({ name: "", label: "none (bicubic)" });
  for (const preset of state.info.presets?.kernel || []) choices.push(preset);
  for (const word of spec.words || []) choices.push({ name: "word:" + word, label: word }); // e.g. a blind method's "auto"
  choices.push({ name: "file", label: "a file…" });
  if (state.kernelChoice === null || !choices.some((c) => c.name === state.kernelChoice)) state.kernelChoice = choices[0].name;
  for (const choice of choices) {
    const radio = el("input", { type: "radio", name: "kernel-choice", value: choice.name, checked: choice.name === state.kernelChoice,
                                "data-kernel": choice.name });
    radio.addEventListener("change", () => { state.kernelChoice = choice.name; if (choice.name === "file") $("kernel-file").click(); updateKernelIndex(); updateRun(); });
    const picture = choice.size
      ? el("img", { src: `/web/kernels/${choice.name}.png`, alt: choice.label, title: `${choice.description} (${choice.size}×${choice.size})` })
      : el("span", { class: "none", text: choice.name === "file" ? "…" : choice.name.startsWith("word:") ? "?" : "–" });
    grid.append(el("label", {}, radio, picture, el("span", { text: choice.label })));
  }
  const file = el("input", { id: "kernel-file", type: "file", accept: ".npy,.png,.mat", hidden: true });
  file.addEventListener("change", () => {
    state.kernelFile = file.files[0] || null;
    $("kernel-file-name").textContent = state.kernelFile ? state.kernelFile.name : "";
    updateKernelIndex();
    updateRun();
  });
  wrap.append(grid, file, el("p", { id: "kernel-file-name", class: "help", text: state.kernelFile ? state.kernelFile.name : "" }),
              el("p", { class: "help", text: spec.help + (required ? "" : "; none: the bicubic kernel") }));
  return wrap;
}

function updateKernelIndex() {
  const index = $("kernel-index");
  if (!index) return;
  const mat = state.kernelChoice === "file" && state.kernelFile && /\.mat$/i.test(state.kernelFile.name);
  index.closest(".param").hidden = !mat;
  if (!mat) index.value = "";
}

// ----------------------------------------------------------------------------- images

async function addFiles(files) {
  showError($("error"), "");
  for (const file of files) {
    const item = { id: requestId(), file, name: file.name, mask: null, maskFile: null, result: null, status: "" };
    try {
      await loadPicture(item);
    } catch (e) {
      showError($("error"), e.message);
      continue;
    }
    state.items.push(item);
    select(state.items.length - 1);
  }
  renderThumbs();
  updateRun();
}

// The picture as the server will read it: the browser's own decoder (EXIF orientation applied, as the
// command line does), or the server's for what a browser cannot show (TIFF).
async function loadPicture(item) {
  let bitmap;
  try {
    bitmap = await createImageBitmap(item.file, { imageOrientation: "from-image" });
    item.url = URL.createObjectURL(item.file);
  } catch (_) {
    const response = await api("/v1/preview", { method: "POST", body: item.file, headers: { "Content-Type": "application/octet-stream", "X-File-Name": encodeURIComponent(item.name) } });
    const png = await response.blob();
    bitmap = await createImageBitmap(png);
    item.url = URL.createObjectURL(png);
  }
  item.bitmap = bitmap;
  item.width = bitmap.width;
  item.height = bitmap.height;
}

function renderThumbs() {
  const list = $("thumbs");
  list.replaceChildren(...state.items.map((item, i) => {
    const remove = el("button", { type: "button", class: "remove", title: "remove", text: "×", onclick: (event) => { event.stopPropagation(); removeItem(i); } });
    return el("li", { class: i === state.selected ? "selected" : "", title: item.name, onclick: () => select(i) },
              el("img", { src: item.result ? item.result.url : item.url, alt: item.name }),
              el("span", { class: "state", text: item.status || `${item.width}×${item.height}` }), remove);
  }));
  $("editor").hidden = state.selected < 0;
}

function removeItem(i) {
  const [item] = state.items.splice(i, 1);
  if (item.controller) item.controller.abort();
  if (state.selected >= state.items.length) state.selected = state.items.length - 1;
  select(state.selected);
  renderThumbs();
  updateRun();
}

function select(i) {
  state.selected = i;
  const item = state.items[i];
  if (!item) { $("editor").hidden = true; $("result").hidden = true; return; }
  const picture = $("picture");
  const mask = $("mask");
  picture.width = mask.width = item.width;
  picture.height = mask.height = item.height;
  picture.getContext("2d").drawImage(item.bitmap, 0, 0);
  const ctx = mask.getContext("2d");
  ctx.clearRect(0, 0, item.width, item.height);
  if (item.mask) ctx.drawImage(item.mask, 0, 0);
  // a small picture is shown large (pixelated), a large one fits the panel
  $("stage").style.width = Math.min(560, Math.max(item.width, 256 * item.width / Math.max(item.width, item.height))) + "px";
  $("picture-info").textContent = `${item.name}: ${item.width}×${item.height}`;
  $("editor").hidden = false;
  renderThumbs();
  showResult(item);
}

// ----------------------------------------------------------------------------- the mask brush

let stroke = null;

function maskPoint(event) {
  const canvas = $("mask");
  const box = canvas.getBoundingClientRect();
  return [(event.clientX - box.left) * canvas.width / box.width, (event.clientY - box.top) * canvas.height / box.height];
}

function brush(ctx) {
  const eraser = document.querySelector("input[name=tool]:checked").value === "eraser";
  ctx.globalCompositeOperation = eraser ? "destination-out" : "source-over";
  ctx.strokeStyle = ctx.fillStyle = "#ff2020";
  ctx.lineWidth = Number($("brush-size").value);
  ctx.lineCap = ctx.lineJoin = "round";
}

function strokeStart(event) {
  const item = state.items[state.selected];
  if (!item || $("stage").classList.contains("nomask") || event.button !== 0) return;
  event.preventDefault();
  $("mask").setPointerCapture(event.pointerId);
  const ctx = $("mask").getContext("2d");
  brush(ctx);
  const [x, y] = maskPoint(event);
  ctx.beginPath();
  ctx.arc(x, y, ctx.lineWidth / 2, 0, 2 * Math.PI);
  ctx.fill();
  stroke = { x, y };
}

function strokeMove(event) {
  if (!stroke) return;
  const ctx = $("mask").getContext("2d");
  brush(ctx);
  const [x, y] = maskPoint(event);
  ctx.beginPath();
  ctx.moveTo(stroke.x, stroke.y);
  ctx.lineTo(x, y);
  ctx.stroke();
  stroke = { x, y };
}

function strokeEnd() {
  if (!stroke) return;
  stroke = null;
  saveMask(state.items[state.selected]);
}

function saveMask(item) {
  const copy = document.createElement("canvas");
  copy.width = item.width;
  copy.height = item.height;
  copy.getContext("2d", { willReadFrequently: true }).drawImage($("mask"), 0, 0);
  item.mask = copy;
  item.maskFile = null; // edited: the painted mask is what is sent
  updateRun();
}

// The mask the API takes: white (nonzero) = observed, black = to fill in, from the painted alpha.
function maskBlob(item) {
  if (item.maskFile) return Promise.resolve(item.maskFile);
  const out = document.createElement("canvas");
  out.width = item.width;
  out.height = item.height;
  const ctx = out.getContext("2d");
  const image = ctx.createImageData(item.width, item.height);
  const painted = item.mask ? item.mask.getContext("2d", { willReadFrequently: true }).getImageData(0, 0, item.width, item.height).data : null;
  for (let i = 0; i < image.data.length; i += 4) {
    const v = painted && painted[i + 3] >= 128 ? 0 : 255;
    image.data[i] = image.data[i + 1] = image.data[i + 2] = v;
    image.data[i + 3] = 255;
  }
  ctx.putImageData(image, 0, 0);
  return new Promise((resolve) => out.toBlob(resolve, "image/png"));
}

// The "before" of an inpainting: the picture with the pixels the restore was told are missing
// tinted as on the brush's canvas (the same alpha >= 128 rule as the mask sent).
function maskedPicture(item) {
  const out = document.createElement("canvas");
  out.width = item.width;
  out.height = item.height;
  const ctx = out.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(item.bitmap, 0, 0);
  if (item.mask) {
    const image = ctx.getImageData(0, 0, item.width, item.height);
    const painted = item.mask.getContext("2d", { willReadFrequently: true }).getImageData(0, 0, item.width, item.height).data;
    const d = image.data;
    for (let i = 0; i < d.length; i += 4) {
      if (painted[i + 3] < 128) continue;
      d[i] = (d[i] + 255) >> 1; d[i + 1] = (d[i + 1] + 32) >> 1; d[i + 2] = (d[i + 2] + 32) >> 1;
    }
    ctx.putImageData(image, 0, 0);
  }
  return new Promise((resolve) => out.toBlob((blob) => resolve(URL.createObjectURL(blob)), "image/png"));
}

function hasMask(item) {
  if (item.maskFile) return true;
  if (!item.mask) return false;
  const data = item.mask.getContext("2d", { willReadFrequently: true }).getImageData(0, 0, item.width, item.height).data;
  for (let i = 3; i < data.length; i += 4) if (data[i] >= 128) return true;
  return false;
}

async function uploadMask(file) {
  const item = state.items[state.selected];
  if (!item || !file) return;
  showError($("error"), "");
  let bitmap;
  try {
    bitmap = await createImageBitmap(file, { imageOrientation: "from-image" });
  } catch (_) {
    const response = await api("/v1/preview", { method: "POST", body: file, headers: { "X-File-Name": encodeURIComponent(file.name) } }).catch((e) => { showError($("error"), e.message); });
    if (!response) return;
    bitmap = await createImageBitmap(await response.blob());
  }
  if (bitmap.width !== item.width || bitmap.height !== item.height) {
    showError($("error"), `mask ${file.name}: ${bitmap.width}×${bitmap.height} does not match the ${item.width}×${item.height} image`);
    return;
  }
  // shown as paint where the mask is zero (missing); the file itself is sent until it is painted over
  const scratch = document.createElement("canvas");
  scratch.width = item.width;
  scratch.height = item.height;
  const sctx = scratch.getContext("2d", { willReadFrequently: true });
  sctx.drawImage(bitmap, 0, 0);
  const pixels = sctx.getImageData(0, 0, item.width, item.height);
  const d = pixels.data;
  for (let i = 0; i < d.length; i += 4) {
    const missing = d[i] === 0 && d[i + 1] === 0 && d[i + 2] === 0;
    d[i] = 255; d[i + 1] = 32; d[i + 2] = 32; d[i + 3] = missing ? 255 : 0;
  }
  const ctx = $("mask").getContext("2d");
  ctx.globalCompositeOperation = "source-over";
  ctx.putImageData(pixels, 0, 0);
  saveMask(item);
  item.maskFile = file;
}

// ----------------------------------------------------------------------------- running

function formIssues() {
  if (!state.info) return "connect to the server first";
  if (!state.items.length) return "add an image";
  const taskInfo = state.info.tasks[$("task").value];
  if (taskInfo.required.includes("mask") && !state.items.every(hasMask)) return "paint (or upload) a mask on every image";
  if (taskInfo.inputs.kernel && state.kernelChoice === "file" && !state.kernelFile) return "choose a kernel file";
  return "";
}

function updateRun() {
  const issue = formIssues();
  const busy = state.running.length > 0;
  $("run").disabled = Boolean(issue) || busy;
  $("run").title = issue;
  $("cancel").hidden = !busy;
}

async function kernelUpload() {
  if (!state.info.tasks[$("task").value].inputs.kernel) return null;
  if (state.kernelChoice === "file") return [state.kernelFile, state.kernelFile.name];
  if (!state.kernelChoice) return null;
  if (state.kernelChoice.startsWith("word:")) return [state.kernelChoice.slice(5), null];
  const response = await api(`/web/kernels/${state.kernelChoice}.npy`);
  return [await response.blob(), `${state.kernelChoice}.npy`];
}

async function run() {
  showError($("error"), "");
  remember();
  const task = $("task").value;
  const fields = [["task", task], ["method", $("method").value]];
  for (const input of document.querySelectorAll("#task-inputs [data-name], #main-params [data-name], #advanced-params [data-name]")) {
    if (input.value.trim() !== "" && !input.closest("[hidden]")) fields.push([input.dataset.name, input.value.trim()]);
  }
  let kernel;
  try {
    kernel = await kernelUpload();
  } catch (e) {
    showError($("error"), e.message);
    return;
  }
  const queue = [...state.items];
  for (const item of queue) { item.status = "waiting"; item.error = ""; }
  renderThumbs();
  const worker = async () => {
    while (queue.length) {
      const item = queue.shift();
      if (!state.items.includes(item)) continue;
      state.running.push(item);
      updateRun();
      await restoreOne(item, task, fields, kernel);
      state.running.splice(state.running.indexOf(item), 1);
      updateRun();
      showProgress(null);
    }
  };
  await Promise.all(Array.from({ length: CONCURRENT }, worker));
  renderThumbs();
}

async function restoreOne(item, task, fields, kernel) {
  const form = new FormData();
  form.append("image", item.file, item.name);
  for (const [name, value] of fields) form.append(name, value);
  if (kernel && kernel[1] === null) form.append("kernel", kernel[0]); // a declared word, as text
  else if (kernel) form.append("kernel", kernel[0], kernel[1]);
  let before = null;
  if (state.info.tasks[task].inputs.mask) {
    form.append("mask", await maskBlob(item), "mask.png");
    before = await maskedPicture(item);
  }
  const id = requestId();
  item.controller = new AbortController();
  item.status = "sending";
  item.progress = null;
  renderThumbs();
  showProgress(item);
  const watching = watchProgress(item, id);
  const started = performance.now();
  try {
    const response = await api("/v1/restore", { method: "POST", body: form, headers: { "X-Request-Id": id }, signal: item.controller.signal });
    const record = redact(JSON.parse(response.headers.get("X-DiffPIR-Record") || "{}"));
    const blob = await response.blob();
    if (item.result) for (const url of [item.result.url, item.result.before]) if (url) URL.revokeObjectURL(url);
    item.result = { url: URL.createObjectURL(blob), before, blob, record, task, roundTrip: (performance.now() - started) / 1000 };
    item.status = "done";
  } catch (e) {
    if (before) URL.revokeObjectURL(before);
    item.status = e.name === "AbortError" ? "cancelled" : "failed";
    item.error = e.name === "AbortError" ? "cancelled" : e.message;
  } finally {
    item.controller.abort(); // ends the progress stream too
    item.controller = null;
    await watching;
  }
  renderThumbs();
  if (state.items[state.selected] === item) showResult(item);
}

// The progress stream of one request: JSON lines until the request ends (service/progress.py).
async function watchProgress(item, id) {
  try {
    const response = await fetch(`/v1/progress/${id}`, { headers: authHeaders(), signal: item.controller.signal });
    if (!response.ok || !response.body) return;
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let newline;
      while ((newline = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, newline);
        buffer = buffer.slice(newline + 1);
        if (!line.trim()) continue;
        item.progress = JSON.parse(line);
        if (item.progress.state === "queued") item.status = "in queue";
        else if (item.progress.state === "running") item.status = `${item.progress.done}/${item.progress.total}`;
        renderThumbs();
        showProgress(item);
      }
    }
  } catch (_) { /* aborted when the answer came, or no progress to show: the restore's own answer is what counts */ }
}

function showProgress(item) {
  const box = $("progress");
  const running = item || state.running[0];
  if (!running) { box.hidden = true; return; }
  box.hidden = false;
  const p = running.progress;
  const bar = $("progress-bar");
  const name = state.items.length > 1 ? `${running.name}: ` : "";
  if (p && p.state === "running") {
    bar.max = Math.max(1, p.total);
    bar.value = p.done;
    const eta = p.eta_s !== null && p.eta_s !== undefined ? `, about ${seconds(p.eta_s)} left` : "";
    $("progress-text").textContent = `${name}UNet calls ${p.done} of ${p.total}${eta}` + (p.batch > 1 ? ` (in a batch of ${p.batch})` : "");
  } else if (p && p.state === "queued") {
    bar.removeAttribute("value");
    $("progress-text").textContent = `${name}in the queue: ${p.ahead} request(s) ahead, waited ${seconds(p.waited_s)}`;
  } else {
    bar.removeAttribute("value");
    $("progress-text").textContent = `${name}sending and checking…`;
  }
}

function cancel() {
  for (const item of state.running) if (item.controller) item.controller.abort();
}

// ----------------------------------------------------------------------------- the result

const view = { zoom: 1, x: 0, y: 0, drag: null };

function showResult(item) {
  const box = $("result");
  if (!item || (!item.result && !item.error)) { box.hidden = true; return; }
  box.hidden = false;
  showError($("result-error"), item.error ? `${item.name}: ${item.error}` : "");
  $("compare-box").hidden = !item.result || Boolean(item.error);
  if (!item.result) return;
  const { url, blob, record } = item.result;
  $("before").src = item.result.before || item.url;
  $("after").src = url;
  const stem = item.name.replace(/\.[^.]*$/, "");
  const imageLink = $("download-image");
  imageLink.href = url;
  imageLink.download = `${stem}_restored.png`;
  const recordLink = $("download-record");
  if (recordLink.dataset.url) URL.revokeObjectURL(recordLink.dataset.url);
  recordLink.dataset.url = URL.createObjectURL(new Blob([JSON.stringify(record, null, 2) + "\n"], { type: "application/json" }));
  recordLink.href = recordLink.dataset.url;
  recordLink.download = `${stem}_restored.png.json`;
  const path = record.runtime?.path || {};
  const model = record.runtime?.model || {};
  const service = record.service || {};
  const rows = [
    ["task", `${record.task}, ${record.method}` + (record.scale ? ` ×${record.scale}` : "")],
    ["runtime path", [path.name, path.backend, path.precision, path.device].filter(Boolean).join(", ")],
    ["model", [model.arch, model.label].filter(Boolean).join(", ")],
    ["UNet calls", `${record.model_calls ?? ""} (steps ${record.config?.steps ?? "–"}, seed ${record.seed})`],
    ["time", `restore ${seconds(record.seconds)}, queued ${seconds(service.queued_s ?? 0)}, round trip ${seconds(item.result.roundTrip)}` +
             (record.batch_size > 1 ? `, in a batch of ${record.batch_size}` : "")],
    ["output", `${item.result.blob.size.toLocaleString()} bytes, ${record.bit_depth}-bit PNG`],
  ];
  $("record").replaceChildren(...rows.map(([k, v]) => el("tr", {}, el("th", { text: k }), el("td", { text: v }))));
  $("record-json").textContent = JSON.stringify(record, null, 2);
  setSplit($("split").value);
  zoomTo(1, 0, 0);
}

function setSplit(percent) {
  $("after").style.clipPath = `inset(0 0 0 ${percent}%)`;
  placeDivider();
}

function placeDivider() {
  const box = $("compare").getBoundingClientRect();
  const inner = $("compare-inner");
  const x = view.x + (Number($("split").value) / 100) * inner.offsetWidth * view.zoom;
  $("divider").style.left = Math.max(0, Math.min(box.width, x)) + "px";
}

function zoomTo(zoom, x, y) {
  const inner = $("compare-inner");
  const box = $("compare");
  view.zoom = Math.max(1, Math.min(32, zoom));
  const w = inner.offsetWidth;
  const h = inner.offsetHeight;
  view.x = Math.min(0, Math.max(box.clientWidth - w * view.zoom, x));
  view.y = Math.min(0, Math.max(box.clientHeight - h * view.zoom, y));
  inner.style.transform = `translate(${view.x}px, ${view.y}px) scale(${view.zoom})`;
  $("zoom-level").textContent = `${Math.round(view.zoom * 100)} %`;
  placeDivider();
}

// Zoom keeping the point under (cx, cy) of the view where it is.
function zoomAt(factor, cx, cy) {
  const zoom = Math.max(1, Math.min(32, view.zoom * factor));
  const k = zoom / view.zoom;
  zoomTo(zoom, cx - (cx - view.x) * k, cy - (cy - view.y) * k);
}

// ----------------------------------------------------------------------------- wiring

function wire() {
  $("token").value = token();
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const value = $("token").value.trim();
    if (value) sessionStorage.setItem(TOKEN_KEY, value); else sessionStorage.removeItem(TOKEN_KEY);
    connect();
  });
  const drop = $("drop");
  $("files").addEventListener("change", (event) => { addFiles([...event.target.files]); event.target.value = ""; });
  drop.addEventListener("keydown", (event) => { if (event.key === "Enter" || event.key === " ") $("files").click(); });
  for (const name of ["dragenter", "dragover"]) drop.addEventListener(name, (event) => { event.preventDefault(); drop.classList.add("over"); });
  for (const name of ["dragleave", "drop"]) drop.addEventListener(name, () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => { event.preventDefault(); addFiles([...event.dataTransfer.files]); });
  $("task").addEventListener("change", buildMethods);
  $("method").addEventListener("change", buildFields);
  const mask = $("mask");
  mask.addEventListener("pointerdown", strokeStart);
  mask.addEventListener("pointermove", strokeMove);
  mask.addEventListener("pointerup", strokeEnd);
  mask.addEventListener("pointercancel", strokeEnd);
  $("mask-clear").addEventListener("click", () => {
    const item = state.items[state.selected];
    if (!item) return;
    mask.getContext("2d").clearRect(0, 0, mask.width, mask.height);
    saveMask(item);
  });
  $("mask-file").addEventListener("change", (event) => { uploadMask(event.target.files[0]); event.target.value = ""; });
  $("mask-download").addEventListener("click", async (event) => {
    const link = event.currentTarget;
    const item = state.items[state.selected];
    if (!item || link.dataset.ready) { delete link.dataset.ready; return; }
    event.preventDefault();
    const blob = await maskBlob(item);
    link.href = URL.createObjectURL(blob);
    link.download = item.name.replace(/\.[^.]*$/, "") + "_mask.png";
    link.dataset.ready = "1";
    link.click();
  });
  $("run").addEventListener("click", run);
  $("cancel").addEventListener("click", cancel);
  $("split").addEventListener("input", (event) => setSplit(event.target.value));
  $("zoom-in").addEventListener("click", () => { const b = $("compare"); zoomAt(2, b.clientWidth / 2, b.clientHeight / 2); });
  $("zoom-out").addEventListener("click", () => { const b = $("compare"); zoomAt(0.5, b.clientWidth / 2, b.clientHeight / 2); });
  $("zoom-fit").addEventListener("click", () => zoomTo(1, 0, 0));
  const compare = $("compare");
  compare.addEventListener("wheel", (event) => {
    event.preventDefault();
    const box = compare.getBoundingClientRect();
    zoomAt(event.deltaY < 0 ? 1.25 : 0.8, event.clientX - box.left, event.clientY - box.top);
  }, { passive: false });
  compare.addEventListener("pointerdown", (event) => {
    compare.setPointerCapture(event.pointerId);
    view.drag = { x: event.clientX, y: event.clientY, vx: view.x, vy: view.y };
  });
  compare.addEventListener("pointermove", (event) => {
    if (!view.drag) return;
    zoomTo(view.zoom, view.drag.vx + event.clientX - view.drag.x, view.drag.vy + event.clientY - view.drag.y);
  });
  for (const name of ["pointerup", "pointercancel"]) compare.addEventListener(name, () => { view.drag = null; });
  $("after").addEventListener("load", placeDivider);
  window.addEventListener("resize", placeDivider);
  connect();
}

wire();
