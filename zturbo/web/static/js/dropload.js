// Drop (or open) a PNG or workflow JSON: load its settings into the form, or run its workflow.

import { postForm, queuePrompt } from "./api.js";
import { $, h } from "./dom.js";

let callbacks = {};

function report(...children) {
  const box = $("#drop-result");
  box.replaceChildren(...children);
  box.hidden = false;
}

async function run(found, name) {
  try {
    const { prompt_id } = await queuePrompt(found.prompt, found.workflow);
    callbacks.onQueued(prompt_id, `Workflow: ${name}`);
    report(h("p", { text: `Queued the workflow from ${name}.` }));
  } catch (error) {
    report(h("p", { class: "error-text", role: "alert", text: `Could not run ${name}: ${error.message}` }));
  }
}

/** Inspect a file on the server and act on what it holds. */
export async function loadFile(file) {
  const form = new FormData();
  form.append("file", file, file.name);
  let found;
  try {
    found = await postForm("/zturbo/inspect", form);
  } catch (error) {
    report(h("p", { class: "error-text", role: "alert", text: `${file.name}: ${error.message}` }));
    return;
  }
  const parts = [];
  if (found.settings) {
    callbacks.applySettings(found.settings, file.name);
    parts.push(h("p", { text: `Loaded the settings of ${file.name}.` }));
  } else {
    parts.push(h("p", { text: `${file.name} holds a workflow but no simple text-to-image settings.` }));
  }
  if (found.prompt) {
    parts.push(h("button", { type: "button", class: "run-workflow", onclick: () => run(found, file.name) },
      `Run the workflow of ${file.name}`));
  }
  for (const note of found.notes || []) parts.push(h("p", { class: "hint", text: note }));
  report(...parts);
}

function setupDrop() {
  const overlay = $("#drop-overlay");
  let depth = 0;
  const hasFiles = (event) => [...(event.dataTransfer?.types || [])].includes("Files");
  document.addEventListener("dragenter", (event) => {
    if (!hasFiles(event)) return;
    depth += 1;
    overlay.hidden = false;
  });
  document.addEventListener("dragleave", () => {
    depth = Math.max(0, depth - 1);
    if (depth === 0) overlay.hidden = true;
  });
  document.addEventListener("dragover", (event) => { if (hasFiles(event)) event.preventDefault(); });
  document.addEventListener("drop", (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    depth = 0;
    overlay.hidden = true;
    const file = event.dataTransfer.files[0];
    if (file) loadFile(file);
  });
}

export function setupFileLoading(handlers) {
  callbacks = handlers;
  setupDrop();
  const input = $("#open-file");
  $("#open-file-button").addEventListener("click", () => input.click());
  input.addEventListener("change", () => {
    if (input.files[0]) loadFile(input.files[0]);
    input.value = "";
  });
}
