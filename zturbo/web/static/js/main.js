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
import { initFields, initSize, setupInitImage } from "./initimage.js";
import { readControl, setupControl } from "./control.js";
import { loadLoras, setupLoras } from "./loras.js";
import { setupWorkers } from "./workers.js";
import { VARIATIONS, variationSettings } from "./variety.js";
import { handleEnhanceEvent, setupEnhance } from "./enhance.js";

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

/** "Variations": the form's job at several fresh seeds, seed variety on. */
function variationJobs() {
  const [first] = jobSettings();
  return variationSettings(first, jobCount() > 1 ? jobCount() : VARIATIONS);
}

async function generate(event, variations = false) {
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
    const fields = await initFields();
    const all = (variations ? variationJobs() : jobSettings()).map((settings) => ({ ...settings, ...fields }));
    const warned = new Set();
    for (const settings of all) {
      const { prompt, warnings } = await postJSON("/zturbo/graph", { settings, control: readControl() });
      (warnings || []).forEach((line) => warned.add(line));
      const { prompt_id } = await queuePrompt(prompt);
      addJob(prompt_id, excerpt($("#prompt").value.trim()));
    }
    const note = [...warned].map((line) => ` Warning: ${line}.`).join("");
    setMessage(message, `Queued ${all.length} image${all.length > 1 ? "s" : ""}.${note}`);
  } catch (error) {
    setMessage(message, error.message, true);
  } finally {
    button.disabled = false;
  }
}

/** Gallery "Upscale ×2": the image enlarged (Lanczos) and refined at denoise 0.33, as a new job. */
async function upscaleImage(item, size) {
  const message = $("#form-message");
  try {
    const name = item.image.subfolder ? `${item.image.subfolder}/${item.image.filename}` : item.image.filename;
    const [width, height] = initSize(...size);
    const base = item.settings || { ...readSettings(), prompt: $("#prompt").value.trim(), negative: "" };
    const seed = nextSeeds(1)[0];
    const settings = {
      ...base, width, height, seed, batch: 1, image: `${name} [output]`, mask: "", denoise: 0, hires_scale: 2,
    };
    const { prompt } = await postJSON("/zturbo/graph", { settings });
    const { prompt_id } = await queuePrompt(prompt);
    addJob(prompt_id, `Upscale ×2: ${item.image.filename}`);
    setMessage(message, `Queued an upscale of ${item.image.filename}.`);
  } catch (error) {
    setMessage(message, error.message, true);
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
  setupGallery({ applySettings, upscale: upscaleImage });
  setupInitImage();
  setupFileLoading({ applySettings, onQueued: (id, title) => addJob(id, title) });
  setupControl();
  setupLoras();
  setupEnhance();
  $("#create-form").addEventListener("submit", generate);
  $("#variations").addEventListener("click", (event) => generate(event, true));
  $("#prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) $("#create-form").requestSubmit();
  });
  const onEvent = (type, data) => { handleEnhanceEvent(type, data); handleEvent(type, data); };
  connectSocket({ event: onEvent, preview: handlePreview, open: () => syncQueue().catch(() => {}) });
  const results = await Promise.allSettled([loadOptions(), loadStyles(""), loadGallery(), loadModels(), loadLoras(), setupWorkers()]);
  const failed = results.filter((r) => r.status === "rejected").map((r) => r.reason.message);
  if (failed.length) setMessage($("#form-message"), `Could not load: ${failed.join("; ")}`, true);
  document.body.dataset.ready = "true";
}

main();
