// The web page's logic: load task types, submit a task, follow it over SSE, show the result.
"use strict";

const $ = (id) => document.getElementById(id);
const RECENT_KEY = "backendai.recent";
let taskTypes = [];

async function loadTaskTypes() {
  const response = await fetch("/api/v1/task-types/");
  taskTypes = await response.json();
  $("task_type").replaceChildren(...taskTypes.map((spec) => new Option(spec.task_type, spec.task_type)));
  $("task_type").value = taskTypes.some((s) => s.task_type === "background_removal")
    ? "background_removal" : taskTypes[0].task_type;
  showFields();
}

// One file input per upload the task type declares (GET /api/v1/task-types/), named as the API expects it.
function uploadField(upload) {
  const field = document.createElement("div");
  const label = document.createElement("label");
  label.htmlFor = upload.name;
  const purpose = upload.description.charAt(0).toUpperCase() + upload.description.slice(1);
  label.textContent = upload.required ? purpose : `${purpose} (optional)`;
  const input = document.createElement("input");
  Object.assign(input, { id: upload.name, name: upload.name, type: "file", accept: "image/*",
                         required: upload.required });
  field.append(label, input);
  return field;
}

function showFields() {
  const spec = taskTypes.find((s) => s.task_type === $("task_type").value);
  $("uploads").replaceChildren(...spec.uploads.map(uploadField));
  const names = Object.keys(spec.parameters_schema.properties || {});
  $("parameters-hint").textContent = names.length ? `Accepted: ${names.join(", ")}` : "No parameters.";
}

function showError(message) {
  $("form-error").textContent = message;
  $("form-error").hidden = false;
}

function remember(taskId, taskType) {
  const recent = JSON.parse(localStorage.getItem(RECENT_KEY) || "[]").filter((t) => t.id !== taskId);
  recent.unshift({ id: taskId, type: taskType, at: new Date().toISOString() });
  localStorage.setItem(RECENT_KEY, JSON.stringify(recent.slice(0, 10)));
  renderRecent();
}

function renderRecent() {
  const recent = JSON.parse(localStorage.getItem(RECENT_KEY) || "[]");
  $("recent").replaceChildren(...recent.map((task) => {
    const item = document.createElement("li");
    const link = document.createElement("a");
    link.href = `/api/v1/tasks/${task.id}/status/`;
    link.textContent = task.id.slice(0, 8);
    item.append(link, ` ${task.type} — ${new Date(task.at).toLocaleString()}`);
    return item;
  }));
}

function showProgress(status) {
  $("progress").value = status.progress || 0;
  const waiting = status.queue_position != null
    ? ` — ${status.queue_position} ahead${status.eta_seconds != null ? `, about ${Math.round(status.eta_seconds)} s` : ""}`
    : "";
  $("progress-text").textContent = `${status.status} ${status.progress || 0}% ${status.message || ""}${waiting}`;
}

async function showResult(taskId) {
  const result = await (await fetch(`/api/v1/tasks/${taskId}/result/`)).json();
  $("result-image").src = result.result.image_url;
  $("result-metadata").textContent = JSON.stringify(
    { prompt_used: result.result.prompt_used, processing_time: result.processing_time, ...result.result.metadata },
    null, 2);
  $("result-section").hidden = false;
}

function follow(taskId) {
  return new Promise((resolve) => {
    const events = new EventSource(`/api/v1/tasks/${taskId}/events/`);
    events.addEventListener("status", async (event) => {
      const status = JSON.parse(event.data);
      showProgress(status);
      if (status.status === "SUCCESS" || status.status === "FAILURE") {
        events.close();
        if (status.status === "SUCCESS") await showResult(taskId);
        else showError(status.error_message || "Task failed");
        resolve(status);
      }
    });
  });
}

async function submit(event) {
  event.preventDefault();
  $("form-error").hidden = true;
  $("result-section").hidden = true;
  const form = new FormData($("task-form"));
  for (const [name, value] of [...form.entries()]) {
    if (value instanceof File && !value.size) form.delete(name);  // a file input left empty
  }
  $("submit").disabled = true;
  try {
    const response = await fetch("/api/v1/tasks/create/", { method: "POST", body: form });
    const body = await response.json();
    if (!response.ok) {
      const details = body.details ? ` (${JSON.stringify(body.details)})` : "";
      showError(`${body.error}${details}`);
      return;
    }
    remember(body.task_id, form.get("task_type"));
    $("progress-section").hidden = false;
    showProgress(body);
    await follow(body.task_id);
  } catch (error) {
    showError(`Request failed: ${error}`);
  } finally {
    $("submit").disabled = false;
  }
}

$("task_type").addEventListener("change", showFields);
$("task-form").addEventListener("submit", submit);
renderRecent();
loadTaskTypes();
