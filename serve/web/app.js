// The web page's logic, no build step: the form comes from GET /api/v1/task-types/ (uploads, what the prompt is to
// the type, the parameters' JSON Schema), a task is followed over SSE, and its id stays in the URL so a reload
// resumes it.
"use strict";

const $ = (id) => document.getElementById(id);
const RECENT_KEY = "backendai.recent";
const RECENT_SHOWN = 8;
const FINISHED = new Set(["SUCCESS", "FAILURE"]);
let taskTypes = [];
let styles = [];
let following = null; // {id, events}
let recentTimer = null;

const humanize = (name) => name.replaceAll("_", " ").replace(/^./, (c) => c.toUpperCase());
const specOf = (type) => taskTypes.find((spec) => spec.task_type === type);

// --- talking to the API -------------------------------------------------------------------------------------------

class Problem extends Error {
  constructor(message, details = []) {
    super(message);
    this.details = details;
  }
}

async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(path, options);
  } catch {
    throw new Problem("Cannot reach the API. Is it running? (backendai up)");
  }
  const body = await response.json().catch(() => ({}));
  if (response.ok) return body;
  if (response.status === 429) {
    throw new Problem(`Too many requests: try again in ${response.headers.get("Retry-After") || "a few"} s.`);
  }
  const details = body.details;
  const lines = Array.isArray(details)
    ? details.map((d) => (d && d.field ? `${d.field}: ${d.message}` : JSON.stringify(d)))
    : details && typeof details === "object"
      ? Object.entries(details).map(([field, message]) => `${field}: ${message}`)
      : details ? [String(details)] : [];
  throw new Problem(body.error || `The API answered ${response.status}.`, lines);
}

function showError(message, details = []) {
  const box = $("form-error");
  const strong = document.createElement("strong");
  strong.textContent = message;
  const list = document.createElement("ul");
  list.replaceChildren(...details.map((line) => Object.assign(document.createElement("li"), { textContent: line })));
  box.replaceChildren(strong, ...(details.length ? [list] : []));
  box.hidden = false;
}

const clearError = () => { $("form-error").hidden = true; };

// --- the form -----------------------------------------------------------------------------------------------------

async function loadTaskTypes() {
  taskTypes = await api("/api/v1/task-types/");
  $("task_type").replaceChildren(...taskTypes.map((spec) => new Option(humanize(spec.task_type), spec.task_type)));
  $("task_type").value = specOf("background_removal") ? "background_removal" : taskTypes[0].task_type;
  showFields();
}

async function loadStyles() {
  try {
    styles = (await api("/api/v1/styles/")).styles;
  } catch {
    styles = [];
  }
  showStylePicker();
}

function showFields() {
  const spec = specOf($("task_type").value);
  const schema = spec.parameters_schema;
  $("type-hint").textContent = (schema.description || "").replace(/\s+/g, " ").replaceAll("`", "");
  const prompt = $("prompt");
  $("prompt-field").hidden = spec.prompt === "unused";
  prompt.required = spec.prompt === "required";
  $("prompt-label").textContent = spec.prompt === "required" ? "Prompt" : "Prompt (optional)";
  prompt.placeholder = spec.prompt === "required" ? "A lighthouse at dawn, watercolour" : "Guides some models";
  $("uploads").replaceChildren(...spec.uploads.map(uploadField));
  const properties = Object.entries(schema.properties || {}).filter(([name]) => name !== "style");
  $("parameters").replaceChildren(...properties.map(([name, property]) => parameterField(name, property)));
  $("parameters-field").hidden = !properties.length;
  $("parameters-summary").textContent = `Settings (${properties.length}, defaults are fine to start)`;
  showStylePicker();
}

// One file input per upload the type declares, with a preview; the main image can be a generated sample.
function uploadField(upload) {
  const field = document.createElement("div");
  field.className = "upload";
  const label = document.createElement("label");
  label.htmlFor = upload.name;
  const purpose = upload.description.charAt(0).toUpperCase() + upload.description.slice(1);
  label.textContent = upload.required ? purpose : `${purpose} (optional)`;
  const input = Object.assign(document.createElement("input"), {
    id: upload.name, name: upload.name, type: "file", accept: "image/*", required: upload.required });
  const preview = Object.assign(document.createElement("img"), { className: "preview", alt: "", hidden: true });
  input.addEventListener("change", () => {
    const file = input.files[0];
    preview.hidden = !file;
    if (file) preview.src = URL.createObjectURL(file);
    if (upload.name === "style_image") showStylePicker();
  });
  field.append(label, input, preview);
  if (upload.name === "image") {
    const sample = Object.assign(document.createElement("button"), {
      type: "button", className: "link", textContent: "No picture at hand? Use a sample" });
    sample.addEventListener("click", async () => {
      const blob = await (await fetch("/sample.png")).blob();
      const files = new DataTransfer();
      files.items.add(new File([blob], "sample.png", { type: "image/png" }));
      input.files = files.files;
      input.dispatchEvent(new Event("change"));
    });
    field.append(sample);
  }
  return field;
}

// A JSON Schema property (pydantic's) as a typed input: enums as selects, booleans as checkboxes, bounded numbers
// as number inputs (or sliders for 0..1 blends); anything else as text, sent as JSON when it parses.
function parameterField(name, property) {
  const nullable = Array.isArray(property.anyOf) && property.anyOf.some((s) => s.type === "null");
  const type = nullable ? property.anyOf.find((s) => s.type !== "null") : property;
  const id = `param-${name}`;
  const field = document.createElement("div");
  field.className = "parameter";
  const label = Object.assign(document.createElement("label"), { htmlFor: id, textContent: humanize(name) });
  let input;
  let kind = type.type;
  if (type.enum) {
    input = document.createElement("select");
    if (nullable) input.add(new Option("Default", ""));
    for (const value of type.enum) input.add(new Option(String(value), String(value)));
    input.value = property.default == null ? "" : String(property.default);
  } else if (type.type === "boolean") {
    input = Object.assign(document.createElement("input"), { type: "checkbox", checked: !!property.default });
    field.classList.add("check");
  } else if (type.type === "integer" || type.type === "number") {
    const slider = type.type === "number" && type.minimum === 0 && type.maximum === 1;
    input = Object.assign(document.createElement("input"), { type: slider ? "range" : "number" });
    if (type.minimum != null) input.min = type.minimum;
    if (type.maximum != null) input.max = type.maximum;
    input.step = type.multipleOf || (type.type === "integer" ? 1 : slider ? 0.05 : "any");
    input.value = property.default == null ? "" : property.default;
    if (nullable) input.placeholder = "default";
    if (slider) {
      const shown = Object.assign(document.createElement("output"), { value: input.value });
      input.addEventListener("input", () => { shown.value = input.value; });
      label.append(" ", shown);
    }
  } else {
    input = Object.assign(document.createElement("input"), { type: "text", value: property.default ?? "" });
    if (type.maxLength) input.maxLength = type.maxLength;
    if (type.type !== "string") kind = "json";
  }
  Object.assign(input, { id });
  input.dataset.parameter = name;
  input.dataset.kind = type.enum ? (typeof type.enum[0] === "number" ? "number" : "string") : kind;
  input.dataset.default = JSON.stringify(property.default ?? null);
  const hint = Object.assign(document.createElement("p"), { className: "hint", textContent: property.description || "" });
  if (field.classList.contains("check")) field.append(input, label, hint);
  else field.append(label, input, hint);
  return field;
}

function collectParameters() {
  const parameters = {};
  for (const input of document.querySelectorAll("[data-parameter]")) {
    const kind = input.dataset.kind;
    let value;
    if (kind === "boolean") value = input.checked;
    else if (input.value === "") continue; // left empty: the type's default
    else if (kind === "integer" || kind === "number") value = Number(input.value);
    else if (kind === "json") {
      try { value = JSON.parse(input.value); } catch { value = input.value; }
    } else value = input.value;
    if (JSON.stringify(value) !== input.dataset.default) parameters[input.dataset.parameter] = value;
  }
  const style = document.querySelector("input[name=style-choice]:checked");
  if (style && style.value && !style.disabled) parameters.style = style.value;
  return parameters;
}

// The built-in styles as a grid of thumbnails (names alone where the API has no thumbnails).
function showStylePicker() {
  const spec = specOf($("task_type").value);
  const picker = $("style-picker");
  picker.hidden = !(spec && spec.parameters_schema.properties?.style && styles.length);
  if (picker.hidden) return;
  if (!$("styles").children.length) {
    const choices = [{ name: "", label: "Default", thumbnail_url: "/sample.png" },
      ...styles.map((s) => ({ ...s, label: s.name }))];
    $("styles").replaceChildren(...choices.map((style, index) => {
      const option = document.createElement("label");
      option.className = "style";
      const radio = Object.assign(document.createElement("input"), {
        type: "radio", name: "style-choice", value: style.name, checked: index === 0 });
      option.append(radio);
      if (style.thumbnail_url) {
        const image = Object.assign(document.createElement("img"), {
          src: style.thumbnail_url, alt: "", width: 96, height: 72 });
        image.addEventListener("error", () => image.remove());
        option.append(image);
      }
      option.append(Object.assign(document.createElement("span"), { textContent: style.label }));
      return option;
    }));
  }
  const styleImage = $("style_image");
  const chosen = !!(styleImage && styleImage.files.length);
  for (const radio of document.querySelectorAll("input[name=style-choice]")) radio.disabled = chosen;
  $("style-hint").textContent = chosen
    ? "A style image is chosen: its style is used instead of a named one."
    : "Pick a built-in style, or upload a style image instead.";
}

// --- a task: submit, follow, show ---------------------------------------------------------------------------------

async function submit(event) {
  event.preventDefault();
  clearError();
  const spec = specOf($("task_type").value);
  const prompt = $("prompt").value.trim();
  if (spec.prompt === "required" && !prompt) return showError(`${humanize(spec.task_type)} needs a prompt.`);
  const form = new FormData();
  form.append("task_type", spec.task_type);
  form.append("prompt", prompt || humanize(spec.task_type)); // the API wants some text even where it is unused
  let inputName = null;
  for (const input of $("uploads").querySelectorAll("input[type=file]")) {
    const file = input.files[0];
    if (!file && input.required) {
      return showError(`${humanize(spec.task_type)} needs ${input.id === "image" ? "an image" : input.id.replace("_", " ")}: choose a file.`);
    }
    if (file) {
      form.append(input.name, file);
      if (input.name === "image") inputName = file.name.replace(/\.[^.]*$/, "");
    }
  }
  form.append("parameters", JSON.stringify(collectParameters()));
  $("submit").disabled = true;
  try {
    const created = await api("/api/v1/tasks/create/", { method: "POST", body: form });
    const before = document.querySelector("#target_image")?.files[0] || document.querySelector("#image")?.files[0];
    remember({ id: created.task_id, type: spec.task_type, name: inputName, at: new Date().toISOString() });
    history.pushState(null, "", `?task=${created.task_id}`);
    open(created.task_id, before ? URL.createObjectURL(before) : null);
  } catch (problem) {
    showError(problem.message, problem.details);
  } finally {
    $("submit").disabled = false;
  }
}

function open(taskId, beforeUrl = null) {
  if (following) following.events.close();
  clearError();
  $("result-section").hidden = true;
  $("progress-section").hidden = false;
  $("task-label").textContent = taskId.slice(0, 8);
  $("progress").value = 0;
  $("progress-text").textContent = "Connecting…";
  $("cancel").hidden = false;
  $("cancel").disabled = false;
  if (window.innerWidth < 900) $("progress-section").scrollIntoView({ block: "start" }); // below the form on phones
  const events = new EventSource(`/api/v1/tasks/${taskId}/events/`);
  following = { id: taskId, events };
  events.addEventListener("status", (event) => {
    const status = JSON.parse(event.data);
    showProgress(status);
    refreshRecentItem(status);
    if (!FINISHED.has(status.status)) return;
    events.close();
    $("cancel").hidden = true;
    if (status.status === "SUCCESS") showResult(taskId, beforeUrl);
    else if (!status.cancelled) showError(`The task failed: ${status.error_message || "no reason given"}`);
  });
  events.addEventListener("error", async () => {
    if (events.readyState !== EventSource.CLOSED) return; // the browser reconnects by itself
    $("cancel").hidden = true;
    try {
      await api(`/api/v1/tasks/${taskId}/status/`);
    } catch (problem) {
      $("progress-section").hidden = true;
      showError(problem.message === "Task not found" ? `No task ${taskId} here (deleted, or made with another key).`
        : problem.message, problem.details);
    }
  });
}

function showProgress(status) {
  const done = status.progress || 0;
  $("progress").value = done;
  let text = `${status.status} ${done}%`;
  if (status.cancelled) text = "Cancelled";
  else if (status.message) text += ` — ${status.message}`;
  if (status.queue_position != null) {
    const eta = status.eta_seconds != null ? `, done in about ${Math.max(1, Math.round(status.eta_seconds))} s` : "";
    text += ` (${status.queue_position} ahead${eta})`;
  }
  if (status.deleted) text += " — deleted";
  $("progress-text").textContent = text;
}

async function showResult(taskId, beforeUrl) {
  let result;
  try {
    result = await api(`/api/v1/tasks/${taskId}/result/`);
  } catch (problem) {
    return showError(problem.message, problem.details);
  }
  const metadata = result.result.metadata || {};
  $("result-image").src = result.result.image_url;
  $("noise-note").hidden = !metadata.random_weights;
  const facts = { prompt_used: result.result.prompt_used, processing_time: result.processing_time, ...metadata };
  $("result-metadata").replaceChildren(...Object.entries(facts).filter(([, v]) => v != null).flatMap(([k, v]) => [
    Object.assign(document.createElement("dt"), { textContent: humanize(k) }),
    Object.assign(document.createElement("dd"), { textContent: typeof v === "object" ? JSON.stringify(v) : String(v) }),
  ]));
  const known = loadRecent().find((task) => task.id === taskId);
  const base = [known?.name, result.task_type, taskId.slice(0, 8)].filter(Boolean).join("-");
  const download = $("download");
  download.download = `${base}.png`;
  download.href = result.result.image_url;
  fetch(result.result.image_url).then((r) => r.blob()).then((blob) => { download.href = URL.createObjectURL(blob); })
    .catch(() => {}); // a cross-origin media URL: the plain link still works
  const compare = !!beforeUrl;
  $("before-clip").hidden = $("before-after").hidden = $("before-after-label").hidden = !compare;
  if (compare) {
    $("before-image").src = beforeUrl;
    $("before-after").value = 50;
    clipBefore();
  }
  $("result-section").hidden = false;
}

function clipBefore() {
  $("before-clip").style.clipPath = `inset(0 ${100 - $("before-after").value}% 0 0)`;
}

async function cancelTask() {
  if (!following) return;
  $("cancel").disabled = true;
  try {
    await api(`/api/v1/tasks/${following.id}/cancel/`, { method: "POST" });
  } catch (problem) {
    showError(problem.message, problem.details);
  }
}

// --- recent tasks: this browser's, with live status -----------------------------------------------------------

function loadRecent() {
  try {
    return JSON.parse(localStorage.getItem(RECENT_KEY) || "[]");
  } catch {
    return [];
  }
}

function remember(task) {
  const recent = [task, ...loadRecent().filter((t) => t.id !== task.id)].slice(0, 20);
  localStorage.setItem(RECENT_KEY, JSON.stringify(recent));
  renderRecent();
}

function renderRecent() {
  const recent = loadRecent().slice(0, RECENT_SHOWN);
  $("recent-empty").hidden = recent.length > 0;
  $("recent").replaceChildren(...recent.map((task) => {
    const item = document.createElement("li");
    item.dataset.task = task.id;
    const link = Object.assign(document.createElement("a"), { href: `?task=${task.id}` });
    link.append(Object.assign(document.createElement("span"), { textContent: humanize(task.type) }),
      Object.assign(document.createElement("span"), { className: "badge", textContent: "…" }),
      Object.assign(document.createElement("time"), {
        dateTime: task.at, textContent: new Date(task.at).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }) }));
    link.addEventListener("click", (event) => {
      event.preventDefault();
      history.pushState(null, "", `?task=${task.id}`);
      open(task.id);
    });
    item.append(link);
    return item;
  }));
  pollRecent();
}

function refreshRecentItem(status) {
  const badge = document.querySelector(`#recent li[data-task="${status.task_id}"] .badge`);
  if (!badge) return;
  const state = status.cancelled ? "cancelled" : status.status.toLowerCase();
  badge.textContent = FINISHED.has(status.status) || status.cancelled ? state : `${state} ${status.progress}%`;
  badge.dataset.state = state;
}

async function pollRecent() {
  clearTimeout(recentTimer);
  const items = [...document.querySelectorAll("#recent li")];
  const unfinished = await Promise.all(items.map(async (item) => {
    try {
      const status = await api(`/api/v1/tasks/${item.dataset.task}/status/`);
      refreshRecentItem(status);
      return !FINISHED.has(status.status);
    } catch (problem) {
      if (problem.message.startsWith("Task not found")) item.remove(); // deleted, or expired from the database
      return false;
    }
  }));
  if (unfinished.some(Boolean)) recentTimer = setTimeout(pollRecent, 2000);
}

function openFromUrl() {
  const taskId = new URLSearchParams(location.search).get("task");
  if (taskId) open(taskId);
}

$("task_type").addEventListener("change", () => { clearError(); showFields(); });
$("task-form").addEventListener("submit", submit);
$("cancel").addEventListener("click", cancelTask);
$("before-after").addEventListener("input", clipBefore);
window.addEventListener("popstate", openFromUrl);
renderRecent();
loadTaskTypes().then(loadStyles).catch((problem) => showError(problem.message, problem.details));
openFromUrl();
