// Boot: wire the modules together, submit jobs, listen on /ws.

import { postJSON, queuePrompt } from "./api.js";
import { $, announce, setMessage } from "./dom.js";
import { jobCount, loadOptions, nextSeeds, readSettings, setupForm, writeSettings } from "./form.js";
import { loadGallery, setupGallery } from "./gallery.js";
import { addJob, handleEvent, handlePreview, setupJobs, syncQueue } from "./jobs.js";
import { loadModels, setupModels } from "./models.js";
import { connectSocket } from "./socket.js";
import { clearStyle, expandPrompt, loadStyles, setupStyles } from "./styles.js";
import { setupFileLoading } from "./dropload.js";
import { readControl, setupControl } from "./control.js";

const excerpt = (text) => (text.length > 80 ? `${text.slice(0, 77)}…` : text);

/** Settings for each job of this run (the style applied, seeds by the seed mode). */
function jobSettings() {
  const subject = $("#prompt").value.trim();
  const { prompt, negative: styleNegative } = expandPrompt(subject);
  const base = readSettings();
  const userNegative = base.cfg > 1 ? $("#negative").value.trim() : "";
  const negative = base.cfg > 1 ? [userNegative, styleNegative].filter(Boolean).join(", ") : "";
  return nextSeeds(jobCount()).map((seed) => ({ ...base, prompt, negative, seed }));
}

async function generate(event) {
  event.preventDefault();
  const message = $("#form-message");
  if (!$("#prompt").value.trim()) {
    setMessage(message, "Write a prompt first.", true);
    $("#prompt").focus();
    return;
  }
  const button = $("#generate");
  button.disabled = true;
  try {
    const all = jobSettings();
    for (const settings of all) {
      const { prompt } = await postJSON("/zturbo/graph", { settings, control: readControl() });
      const { prompt_id } = await queuePrompt(prompt);
      addJob(prompt_id, excerpt($("#prompt").value.trim()));
    }
    setMessage(message, `Queued ${all.length} image${all.length > 1 ? "s" : ""}.`);
  } catch (error) {
    setMessage(message, error.message, true);
  } finally {
    button.disabled = false;
  }
}

function applySettings(settings, source) {
  clearStyle();
  writeSettings(settings);
  setMessage($("#form-message"), `Settings loaded from ${source}.`);
  announce(`Settings loaded from ${source}`);
}

async function main() {
  setupForm();
  setupStyles();
  setupModels();
  setupJobs({ onFinished: () => loadGallery() });
  setupGallery({ applySettings });
  setupFileLoading({ applySettings, onQueued: (id, title) => addJob(id, title) });
  setupControl();
  $("#create-form").addEventListener("submit", generate);
  $("#prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) $("#create-form").requestSubmit();
  });
  connectSocket({ event: handleEvent, preview: handlePreview, open: () => syncQueue().catch(() => {}) });
  const results = await Promise.allSettled([loadOptions(), loadStyles(""), loadGallery(), loadModels()]);
  const failed = results.filter((r) => r.status === "rejected").map((r) => r.reason.message);
  if (failed.length) setMessage($("#form-message"), `Could not load: ${failed.join("; ")}`, true);
  document.body.dataset.ready = "true";
}

main();
