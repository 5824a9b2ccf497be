// The LoRA picker: files of models/loras, several at once, each with its strength slider.
// Read into the job's settings as `loras` (zturbo's GenerationRequest.loras, LoraChoice fields).

import { getJSON } from "./api.js";
import { $, h } from "./dom.js";

const MIN = -2;
const MAX = 2;

function row(name, strength = 1) {
  const value = Math.min(MAX, Math.max(MIN, Number(strength)));
  const output = h("output", { class: "lora-value", text: value.toFixed(2) });
  const slider = h("input", {
    type: "range", class: "lora-strength", min: MIN, max: MAX, step: 0.05, value,
    "aria-label": `Strength of ${name}`,
    oninput: (event) => { output.textContent = Number(event.target.value).toFixed(2); },
  });
  const item = h("li", { class: "lora", dataset: { name } },
    h("span", { class: "lora-name", text: name }), slider, output,
    h("button", { type: "button", class: "small danger", "aria-label": `Remove ${name}`,
      onclick: () => item.remove() }, "Remove"));
  return item;
}

function add(name, strength = 1) {
  if (!name || [...$("#lora-list").children].some((li) => li.dataset.name === name)) return;
  $("#lora-list").append(row(name, strength));
}

/** The chosen LoRAs, in order: [{name, strength}] (the text encoder gets the same strength). */
export function readLoras() {
  return [...$("#lora-list").children].map((li) => ({
    name: li.dataset.name, strength: Number(li.querySelector(".lora-strength").value),
  }));
}

/** Show a settings object's LoRAs (from a gallery image or a dropped PNG). */
export function writeLoras(loras) {
  $("#lora-list").replaceChildren();
  for (const lora of loras || []) add(lora.name, lora.strength);
}

/** "LoRA a.safetensors 0.8, b.safetensors -0.5" or "" */
export function describeLoras(loras) {
  if (!loras || !loras.length) return "";
  return `LoRA ${loras.map((l) => `${l.name} ${l.strength}`).join(", ")}`;
}

export async function loadLoras() {
  const names = await getJSON("/models/loras");
  $("#lora-select").replaceChildren(...names.map((name) => new Option(name, name)));
  $("#lora-empty").hidden = names.length > 0;
  $("#lora-add").disabled = names.length === 0;
}

export function setupLoras() {
  $("#lora-add").addEventListener("click", () => add($("#lora-select").value));
}
