// Style presets: prompt templates with a {subject} slot, built-in and saved on the server.

import { del, getJSON, postJSON } from "./api.js";
import { $, announce, confirmAction, setMessage } from "./dom.js";
import { writeSize } from "./sizes.js";

const SLOT = "{subject}";
let presets = [];

const selected = () => presets.find((p) => p.id === $("#style").value) || null;

/** The prompt (and extra negative) the chosen style makes of `subject`. */
export function expandPrompt(subject) {
  const style = selected();
  if (!style) return { prompt: subject, negative: "" };
  return { prompt: style.template.split(SLOT).join(subject.trim()), negative: style.negative || "" };
}

function renderSelect(keepId) {
  const select = $("#style");
  const none = new Option("None (prompt as written)", "");
  const groups = [["Built-in", true], ["Saved", false]].map(([label, builtin]) => {
    const group = document.createElement("optgroup");
    group.label = label;
    group.append(...presets.filter((p) => p.builtin === builtin).map((p) => new Option(p.name, p.id)));
    return group;
  });
  select.replaceChildren(none, ...groups.filter((g) => g.children.length));
  select.value = presets.some((p) => p.id === keepId) ? keepId : "";
  showPreview();
}

function showPreview() {
  const style = selected();
  const subject = $("#prompt").value.trim() || "your prompt";
  $("#style-preview").textContent = style ? `Prompt sent: ${style.template.split(SLOT).join(subject)}` : "";
  $("#style-delete").disabled = !style || style.builtin;
  if (style) {
    $("#style-name").value = style.builtin ? "" : style.name;
    $("#style-template").value = style.template;
  }
}

function onStyleChange() {
  const style = selected();
  if (style?.width && style?.height) writeSize(style.width, style.height);
  showPreview();
  if (style) announce(`Style ${style.name} selected`);
}

async function save() {
  const message = $("#style-message");
  const name = $("#style-name").value.trim();
  const template = $("#style-template").value.trim();
  if (!name) return setMessage(message, "Give the style a name.", true);
  if (!template.includes(SLOT)) return setMessage(message, `The template needs ${SLOT} where your prompt goes.`, true);
  const size = { width: Number($("#width").value), height: Number($("#height").value) };
  try {
    const saved = await postJSON("/zturbo/presets", { name, template, ...size });
    await loadStyles(saved.id);
    setMessage(message, `Saved style “${saved.name}”.`);
  } catch (error) {
    setMessage(message, error.message, true);
  }
}

async function remove() {
  const style = selected();
  if (!style || style.builtin) return;
  if (!(await confirmAction(`Delete the style “${style.name}”?`))) return;
  try {
    await del(`/zturbo/presets/${encodeURIComponent(style.id)}`);
    await loadStyles("");
    setMessage($("#style-message"), `Deleted style “${style.name}”.`);
  } catch (error) {
    setMessage($("#style-message"), error.message, true);
  }
}

/** Fetch the presets and (re)fill the select, keeping `keepId` selected when it still exists. */
export async function loadStyles(keepId = $("#style").value) {
  presets = (await getJSON("/zturbo/presets")).presets;
  renderSelect(keepId);
}

export function setupStyles() {
  $("#style").addEventListener("change", onStyleChange);
  $("#prompt").addEventListener("input", showPreview);
  $("#style-save").addEventListener("click", save);
  $("#style-delete").addEventListener("click", remove);
}

/** Back to "None" (e.g. when settings from an image carry the full prompt already). */
export function clearStyle() {
  $("#style").value = "";
  showPreview();
}
