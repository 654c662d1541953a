// See the attention: a client of the model server's REST API, as any other client.
//
// Requests, all of which the real TensorFlow Serving accepts:
//   GET  {address}/v1/models/NAME                         the versions and their states
//   GET  {address}/v1/models/NAME[/versions/V]/metadata   the signatures of the export
//   POST {address}/v1/models/NAME[/versions/V]:predict    {"signature_name": "translate_attention"
//        (or "translate_beam_attention"), "instances": [sentence, ...]}: row format, one input
// and, only when the page comes from the same server as the REST address (kerasformer-serve),
//   GET  /kerasformer/stats                               the names of the models it serves.
// The signature's outputs (export/exporter.py): translation, source_pieces, target_pieces, their
// lengths, and encoder_self_attention / decoder_self_attention / cross_attention
// [layers][heads][rows][columns], -1 past each sentence's length.
"use strict";

const MAX_SENTENCES = 32;  // each sentence's weights are layers x heads x pieces^2 numbers
const TIMEOUT_MS = 120000;
const SIGNATURES = { greedy: "translate_attention", beam: "translate_beam_attention" };
const KINDS = {
  cross_attention: {
    title: "cross-attention",
    help: "Row: the piece being generated; column: a source piece. A translation that follows " +
      "its source in order shows a diagonal; the [END] row is what the model looked at when it decided to stop.",
  },
  decoder_self_attention: {
    title: "decoder self-attention",
    help: "Row: the decoder's input at that step (the piece before the one it generated, [START] first); " +
      "column: an input of an earlier step. Nothing lies above the diagonal (the causal mask); a head that " +
      "attends to the previous token draws a line just below it.",
  },
  encoder_self_attention: {
    title: "encoder self-attention",
    help: "Both axes: the source pieces. Every piece may look at every other one (no causal mask).",
  },
};
// viridis, 9 stops (matplotlib's): dark = little weight, yellow = much.
const VIRIDIS = [
  [68, 1, 84], [72, 40, 120], [62, 73, 137], [49, 104, 142], [38, 130, 142],
  [31, 158, 137], [53, 183, 121], [109, 205, 89], [180, 222, 44], [253, 231, 37],
];

const $ = (id) => document.getElementById(id);
const state = { results: [], selected: -1, kind: "cross_attention", average: false, view: null, signatures: {} };

class ServerError extends Error {
  constructor(status, said, path) {
    super(said);
    this.status = status;
    this.path = path;
  }
}

// --- talking to the model server ----------------------------------------------------------

function address() {
  const typed = $("address").value.trim();
  return (typed || window.location.origin).replace(/\/+$/, "");
}

function modelName() {
  return $("model").value.trim();
}

function modelPath() {
  const version = $("version").value;
  return `/v1/models/${encodeURIComponent(modelName())}` + (version ? `/versions/${version}` : "");
}

async function request(method, path, body) {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), TIMEOUT_MS);
  let response;
  try {
    response = await fetch(address() + path, {
      method,
      headers: body === undefined ? {} : { "Content-Type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: controller.signal,
    });
  } catch (error) {
    if (error.name === "AbortError") {
      throw new Error(`The model server at ${address()} did not answer within ${TIMEOUT_MS / 1000} s.`);
    }
    throw new Error(`Could not reach the model server at ${address()} (${error.message}). Is it running, ` +
      "and is the address right? A server on another origin than this page must be started with " +
      "--rest_api_enable_cors_support.");
  } finally {
    clearTimeout(timer);
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch (error) {
    data = null;
  }
  if (!response.ok) {
    const said = data && typeof data.error === "string" ? data.error
      : (text.replace(/<[^>]*>/g, " ").replace(/\s+/g, " ").trim().slice(0, 300) || response.statusText);
    throw new ServerError(response.status, said, path);
  }
  if (data === null || typeof data !== "object") {
    throw new Error(`The model server answered ${method} ${path} with something that is not JSON.`);
  }
  return data;
}

function explain(error) {
  if (!(error instanceof ServerError)) return error.message;
  if (error.status === 404 && /Servable not found/.test(error.message)) {
    const version = $("version").value;
    return `The model server has no model “${modelName()}”` + (version ? ` in version ${version}` : "") +
      `. It said: ${error.message}`;
  }
  return `The model server answered HTTP ${error.status}: ${error.message}`;
}

async function suggestModels() {
  // Only kerasformer-serve lists its models (an extension); ask it only when it served this page.
  if ($("address").value.trim() && address() !== window.location.origin) return;
  // The first name fills only a field that was empty when the page asked: a model named in the
  // address or typed while the answer was on its way is the user's, and is never replaced.
  const fill = !modelName();
  try {
    const stats = await request("GET", "/kerasformer/stats");
    const names = Object.keys(stats.models || {}).sort();
    $("model-names").replaceChildren(...names.map((name) => Object.assign(document.createElement("option"), { value: name })));
    if (fill && !modelName() && names.length) $("model").value = names[0];
  } catch (error) {
    // another server: the user types the model's name
  }
}

async function loadVersions() {
  const name = modelName();
  if (!name) {
    showMessage("Enter the name of a model the server serves (its --model_name).");
    return false;
  }
  const status = await request("GET", `/v1/models/${encodeURIComponent(name)}`);
  const versions = (status.model_version_status || [])
    .filter((entry) => entry.state === "AVAILABLE")
    .map((entry) => entry.version)
    .sort((a, b) => Number(b) - Number(a));
  const select = $("version");
  const previous = select.value;
  select.replaceChildren(new Option("latest", ""), ...versions.map((version) => new Option(version, version)));
  if (versions.includes(previous)) select.value = previous;
  $("server-status").textContent = versions.length
    ? `${name}: version${versions.length > 1 ? "s" : ""} ${versions.join(", ")} available`
    : `${name}: no version available yet`;
  return true;
}

async function signatureNames() {
  const key = address() + modelPath();
  if (!state.signatures[key]) {
    const metadata = await request("GET", modelPath() + "/metadata");
    state.signatures[key] = Object.keys(((metadata.metadata || {}).signature_def || {}).signature_def || {});
  }
  return state.signatures[key];
}

// --- translating -----------------------------------------------------------------------------

async function translate(event) {
  event.preventDefault();
  hideMessage();
  const sentences = $("text").value.split("\n").map((line) => line.trim()).filter((line) => line);
  if (!sentences.length) {
    showMessage("Type a sentence to translate (one per line).");
    return;
  }
  if (sentences.length > MAX_SENTENCES) {
    showMessage(`At most ${MAX_SENTENCES} sentences at a time (got ${sentences.length}): ` +
      "the attention weights of each one are a large answer.");
    return;
  }
  if (!modelName()) {
    showMessage("Enter the name of a model the server serves (its --model_name).");
    return;
  }
  const signature = SIGNATURES[$("decoding").value];
  setBusy(true);
  try {
    const names = await signatureNames();
    if (!names.includes(signature)) {
      throw new Error(`Model “${modelName()}” has no ${signature} signature (it was exported by an older ` +
        `kerasformer-export; export it again). Its signatures: ${names.sort().join(", ")}.`);
    }
    const answer = await request("POST", modelPath() + ":predict", { signature_name: signature, instances: sentences });
    if (!Array.isArray(answer.predictions) || answer.predictions.length !== sentences.length) {
      throw new Error("The model server's answer has no prediction for each sentence.");
    }
    state.results = answer.predictions.map((prediction, row) => ({ source: sentences[row], ...prediction }));
    showResults();
    select(0);
  } catch (error) {
    showMessage(explain(error));
  } finally {
    setBusy(false);
  }
}

function setBusy(busy) {
  $("translate").disabled = busy;
  $("busy").hidden = !busy;
}

function showMessage(text, note = false) {
  const box = $("message");
  box.textContent = text;
  box.classList.toggle("note", note);
  box.hidden = false;
}

function hideMessage() {
  $("message").hidden = true;
}

function pieceText(piece) {
  return piece.replace(/^▁/, "").replace(/▁/g, " ");
}

function showResults() {
  const list = $("translations");
  list.replaceChildren(...state.results.map((result, row) => {
    const item = document.createElement("li");
    item.dataset.row = row;
    item.tabIndex = 0;
    const source = Object.assign(document.createElement("div"), { className: "source", textContent: result.source });
    const target = Object.assign(document.createElement("div"), { className: "target", textContent: result.translation });
    item.append(source, target);
    const kept = result.source_pieces.slice(0, result.source_length).map(pieceText).join("").replace(/\s/g, "");
    if (result.source.replace(/\s/g, "").length > 2 * kept.length + 10) {
      item.append(Object.assign(document.createElement("div"), {
        className: "cut",
        textContent: `Only the first ${result.source_length} pieces were translated: the model's longest input.`,
      }));
    }
    item.addEventListener("click", () => select(row));
    item.addEventListener("keydown", (event) => { if (event.key === "Enter" || event.key === " ") select(row); });
    return item;
  }));
  $("results").hidden = false;
}

function select(row) {
  state.selected = row;
  for (const item of $("translations").children) {
    item.setAttribute("aria-selected", String(Number(item.dataset.row) === row));
  }
  $("attention").hidden = false;
  drawGrid();
}

// --- the heatmaps ----------------------------------------------------------------------------

function labelsAndWeights(result, kind) {
  const source = result.source_pieces.slice(0, result.source_length);
  const target = result.target_pieces.slice(0, result.target_length);
  const inputs = ["[START]", ...target.slice(0, -1)];
  const [rows, columns] = {
    cross_attention: [target, source],
    decoder_self_attention: [inputs, inputs],
    encoder_self_attention: [source, source],
  }[kind];
  const layers = result[kind].map((heads) => heads.map((matrix) =>
    matrix.slice(0, rows.length).map((values) => values.slice(0, columns.length))));
  return { rows, columns, layers, generated: kind === "decoder_self_attention" ? target : null };
}

function averaged(heads) {
  const rows = heads[0].length, columns = rows ? heads[0][0].length : 0;
  const mean = Array.from({ length: rows }, () => new Array(columns).fill(0));
  for (const matrix of heads) {
    for (let i = 0; i < rows; i++) for (let j = 0; j < columns; j++) mean[i][j] += matrix[i][j] / heads.length;
  }
  return mean;
}

function colour(value) {
  const x = Math.min(Math.max(value, 0), 1) * (VIRIDIS.length - 1);
  const low = Math.floor(x), high = Math.min(low + 1, VIRIDIS.length - 1), t = x - low;
  const channel = (k) => Math.round(VIRIDIS[low][k] + (VIRIDIS[high][k] - VIRIDIS[low][k]) * t);
  return `rgb(${channel(0)}, ${channel(1)}, ${channel(2)})`;
}

function cssColour(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

function cellSize(rows, columns) {
  // Readable at any length: never below 12 px a cell; the grid scrolls instead.
  return Math.max(12, Math.min(26, Math.floor(360 / Math.max(rows, columns, 1))));
}

function drawGrid() {
  const result = state.results[state.selected];
  if (!result) return;
  const { rows, columns, layers, generated } = labelsAndWeights(result, state.kind);
  const grid = $("grid");
  const heads = layers.length ? layers[0].length : 0;
  const size = cellSize(rows.length, columns.length);
  grid.style.setProperty("--label-size", `${Math.min(13, size - 2)}px`);
  grid.style.setProperty("--cell-size", `${size}px`);
  Object.assign(grid.dataset, {
    kind: state.kind, layers: layers.length, heads, rows: rows.length, columns: columns.length,
    average: String(state.average), highlight: "",
  });
  $("kind-help").textContent = KINDS[state.kind].help;
  state.view = { rows, columns, generated, size, panels: [] };
  const blocks = layers.map((layerHeads, layer) => {
    const block = Object.assign(document.createElement("div"), { className: "layer" });
    block.dataset.layer = layer;
    block.append(Object.assign(document.createElement("div"), { className: "layer-title", textContent: `layer ${layer + 1}` }));
    const matrices = state.average ? [averaged(layerHeads)] : layerHeads;
    matrices.forEach((matrix, head) => block.append(panel(matrix, layer, state.average ? null : head)));
    return block;
  });
  if (!rows.length || !columns.length) {
    grid.replaceChildren(Object.assign(document.createElement("p"), {
      className: "hint", textContent: "This sentence has no pieces on one of the axes (an empty source).",
    }));
    return;
  }
  grid.replaceChildren(...blocks);
}

function panel(matrix, layer, head) {
  const { rows, columns, size } = state.view;
  const figure = Object.assign(document.createElement("figure"), { className: "panel" });
  figure.dataset.layer = layer;
  figure.dataset.head = head === null ? "average" : head;
  const caption = head === null ? `layer ${layer + 1}, average of the heads` : `layer ${layer + 1}, head ${head + 1}`;
  figure.append(Object.assign(document.createElement("figcaption"), { textContent: caption }));
  figure.append(Object.assign(document.createElement("div"), { className: "corner" }));

  const columnLabels = Object.assign(document.createElement("div"), { className: "columns" });
  columns.forEach((piece, j) => columnLabels.append(label(piece, "column", j, size)));
  const rowLabels = Object.assign(document.createElement("div"), { className: "rows" });
  rows.forEach((piece, i) => rowLabels.append(label(piece, "row", i, size)));

  const canvas = document.createElement("canvas");
  const ratio = window.devicePixelRatio || 1;
  canvas.width = columns.length * size * ratio;
  canvas.height = rows.length * size * ratio;
  canvas.style.width = `${columns.length * size}px`;
  canvas.style.height = `${rows.length * size}px`;
  canvas.dataset.rows = rows.length;
  canvas.dataset.columns = columns.length;
  canvas.setAttribute("role", "img");
  canvas.setAttribute("aria-label", `${KINDS[state.kind].title}, ${caption}`);
  const base = document.createElement("canvas");  // the heatmap without highlights, to redraw from
  base.width = canvas.width;
  base.height = canvas.height;
  const context = base.getContext("2d");
  context.scale(ratio, ratio);
  matrix.forEach((values, i) => values.forEach((value, j) => {
    context.fillStyle = value < 0 ? cssColour("--padded") : colour(value);
    context.fillRect(j * size, i * size, size, size);
  }));
  canvas.getContext("2d").drawImage(base, 0, 0);
  canvas.addEventListener("mousemove", (event) => {
    const box = canvas.getBoundingClientRect();
    const i = Math.floor((event.clientY - box.top) / size), j = Math.floor((event.clientX - box.left) / size);
    if (i >= 0 && i < rows.length && j >= 0 && j < columns.length) highlight(i, j, matrix, layer, head);
  });
  canvas.addEventListener("mouseleave", () => highlight(null, null));
  state.view.panels.push({ canvas, base, matrix, figure, ratio });
  figure.append(columnLabels, rowLabels, canvas);
  return figure;
}

function label(piece, axis, index, size) {
  const element = Object.assign(document.createElement("div"), { className: "piece", textContent: piece, title: piece });
  element.dataset.axis = axis;
  element.dataset.index = index;
  element.style[axis === "row" ? "height" : "width"] = `${size}px`;
  element.addEventListener("mouseenter", () => (axis === "row" ? highlight(index, null) : highlight(null, index)));
  element.addEventListener("mouseleave", () => highlight(null, null));
  return element;
}

function highlight(i, j, matrix = null, layer = null, head = null) {
  const { rows, columns, generated, size, panels } = state.view;
  $("grid").dataset.highlight = i === null && j === null ? "" : `${i ?? ""},${j ?? ""}`;
  const outline = cssColour("--highlight");
  for (const { canvas, base, ratio } of panels) {
    const context = canvas.getContext("2d");
    context.setTransform(1, 0, 0, 1, 0, 0);
    context.clearRect(0, 0, canvas.width, canvas.height);
    context.drawImage(base, 0, 0);
    context.scale(ratio, ratio);
    context.strokeStyle = outline;
    context.lineWidth = 1.5;
    if (i !== null) context.strokeRect(0.75, i * size + 0.75, columns.length * size - 1.5, size - 1.5);
    if (j !== null) context.strokeRect(j * size + 0.75, 0.75, size - 1.5, rows.length * size - 1.5);
    if (i !== null && j !== null) {
      context.lineWidth = 3;
      context.strokeRect(j * size + 1.5, i * size + 1.5, size - 3, size - 3);
    }
  }
  for (const element of $("grid").querySelectorAll(".piece")) {
    const index = Number(element.dataset.index);
    element.classList.toggle("highlight", element.dataset.axis === "row" ? index === i : index === j);
  }
  const info = $("hover-info");
  if (i === null && j === null) {
    info.innerHTML = "&nbsp;";
  } else if (matrix && i !== null && j !== null) {
    const where = head === null ? `layer ${layer + 1}, average of the heads` : `layer ${layer + 1}, head ${head + 1}`;
    const step = generated ? ` (the step that generated “${generated[i]}”)` : "";
    info.textContent = `${where}: “${rows[i]}”${step} → “${columns[j]}”: ${matrix[i][j].toFixed(3)}`;
  } else {
    info.textContent = i !== null ? `row “${rows[i]}”` : `column “${columns[j]}”`;
  }
}

function drawLegend() {
  const canvas = document.createElement("canvas");
  canvas.width = 200;
  canvas.height = 12;
  const context = canvas.getContext("2d");
  for (let x = 0; x < canvas.width; x++) {
    context.fillStyle = colour(x / (canvas.width - 1));
    context.fillRect(x, 0, 1, canvas.height);
  }
  $("legend").replaceChildren("attention weight 0", canvas, "1");
}

// --- wiring --------------------------------------------------------------------------------------

function setKind(kind) {
  state.kind = kind;
  for (const tab of $("kinds").children) tab.setAttribute("aria-selected", String(tab.dataset.kind === kind));
  drawGrid();
}

function start() {
  const query = new URLSearchParams(window.location.search);
  $("address").value = query.get("address") || window.location.origin;
  $("model").value = query.get("model") || "";
  if (query.get("text")) $("text").value = query.get("text");
  drawLegend();
  $("controls").addEventListener("submit", translate);
  $("connect").addEventListener("click", async () => {
    hideMessage();
    try {
      await loadVersions();
    } catch (error) {
      showMessage(explain(error));
    }
  });
  $("version").addEventListener("change", () => hideMessage());
  $("model").addEventListener("change", async () => {
    // Another model: its own versions (a version number of the last one may not exist here).
    $("version").replaceChildren(new Option("latest", ""));
    $("server-status").textContent = "";
    if (!modelName()) return;
    try {
      await loadVersions();
    } catch (error) {
      showMessage(explain(error));
    }
  });
  $("kinds").addEventListener("click", (event) => {
    if (event.target.dataset && event.target.dataset.kind) setKind(event.target.dataset.kind);
  });
  $("average").addEventListener("change", (event) => {
    state.average = event.target.checked;
    drawGrid();
  });
  window.matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => drawGrid());
  suggestModels().then(async () => {
    if (!modelName()) return;
    try {
      await loadVersions();
    } catch (error) {
      showMessage(explain(error));
    }
  });
}

start();
