// The settings form: options from /object_info, CFG-dependent negative prompt, seed modes,
// and reading/writing settings objects (the fields of zturbo's GenerationRequest).

import { getJSON } from "./api.js";
import { $ } from "./dom.js";
import { readLoras, writeLoras } from "./loras.js";
import { readSize, setupSizes, writeSize } from "./sizes.js";
import { readVariety, writeVariety } from "./variety.js";

const MAX_RANDOM_SEED = 2 ** 48;

function fillSelect(select, options, selected) {
  select.replaceChildren(...options.map((name) => new Option(name, name)));
  if (options.includes(selected)) select.value = selected;
}

/** Load sampler and scheduler names from the server's KSampler declaration. */
export async function loadOptions() {
  const info = await getJSON("/object_info/KSampler");
  const required = info.KSampler.input.required;
  fillSelect($("#sampler"), required.sampler_name[0], "res_multistep");
  fillSelect($("#scheduler"), required.scheduler[0], "simple");
}

function updateNegative() {
  $("#negative-group").hidden = !(Number($("#cfg").value) > 1);
}

export function setupForm() {
  setupSizes();
  writeSize(1024, 1024);
  $("#cfg").addEventListener("input", updateNegative);
  updateNegative();
}

export const seedMode = () => document.querySelector('input[name="seed-mode"]:checked').value;

function setSeedMode(mode) {
  document.querySelector(`input[name="seed-mode"][value="${mode}"]`).checked = true;
}

/** Seeds for `count` jobs by the seed mode; the seed field is left where the next run continues. */
export function nextSeeds(count) {
  const mode = seedMode();
  const base = Math.max(0, Math.floor(Number($("#seed").value) || 0));
  let seeds;
  if (mode === "random") seeds = Array.from({ length: count }, () => Math.floor(Math.random() * MAX_RANDOM_SEED));
  else if (mode === "fixed") seeds = Array(count).fill(base);
  else seeds = Array.from({ length: count }, (_, i) => base + i);
  $("#seed").value = mode === "increment" ? base + count : seeds[seeds.length - 1];
  return seeds;
}

/** The form's settings except prompt/negative/seed, which the caller fills in. */
export function readSettings() {
  const cfg = Number($("#cfg").value);
  return {
    ...readSize(),
    steps: Math.round(Number($("#steps").value) || 8),
    cfg: Number.isFinite(cfg) ? cfg : 1,
    sampler: $("#sampler").value,
    scheduler: $("#scheduler").value,
    batch: 1,
    loras: readLoras(),
    ...readVariety(),
  };
}

export const jobCount = () => Math.min(64, Math.max(1, Math.round(Number($("#count").value) || 1)));

/** Put a settings object (from an image or a file) into the form; the seed becomes fixed. */
export function writeSettings(settings) {
  $("#prompt").value = settings.prompt ?? "";
  $("#negative").value = settings.negative ?? "";
  writeSize(settings.width, settings.height);
  $("#steps").value = settings.steps;
  $("#cfg").value = settings.cfg;
  for (const [id, value] of [["#sampler", settings.sampler], ["#scheduler", settings.scheduler]]) {
    if (![...$(id).options].some((o) => o.value === value)) $(id).append(new Option(value, value));
    $(id).value = value;
  }
  $("#seed").value = settings.seed;
  writeLoras(settings.loras);
  writeVariety(settings);
  setSeedMode("fixed");
  updateNegative();
}
