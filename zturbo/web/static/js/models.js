// The models panel: which of the three files are present; download the missing ones with progress.

import { getJSON, postJSON } from "./api.js";
import { $, h, setMessage } from "./dom.js";

const POLL_MS = 700;
let polling = null;

const gigabytes = (n) => `${(n / 1e9).toFixed(2)} GB`;

function component(c) {
  const files = c.files.map((f) => h("li", { text: `${f.ok ? "✓" : "✗"} ${f.path}: ${f.description}` }));
  return h("li", { dataset: { kind: c.kind } },
    h("strong", { text: c.label }), " ",
    h("span", { class: c.present ? "state-ok" : "state-missing", text: c.present ? "present" : "missing" }),
    c.present ? null : h("p", { class: "hint", text: `Expected: ${c.expected}` }),
    files.length ? h("ul", { class: "files" }, files) : null);
}

function showDownload(status) {
  const progress = $("#models-progress");
  const text = $("#models-status");
  const running = status.state === "running";
  $("#models-download-button").disabled = running;
  progress.hidden = !running;
  if (running) {
    progress.max = status.bytes_total || 1;
    progress.value = status.bytes_done;
    const size = status.bytes_total ? `${gigabytes(status.bytes_done)} of ${gigabytes(status.bytes_total)}` : "starting";
    setMessage(text, `Downloading${status.current ? ` ${status.current}` : ""}: ${size}`);
  } else if (status.state === "error") {
    setMessage(text, `Download failed: ${status.error}`, true);
  } else if (status.state === "done") {
    setMessage(text, "Download finished.");
  } else {
    setMessage(text, "");
  }
}

async function poll() {
  const status = await getJSON("/zturbo/models/download");
  showDownload(status);
  if (status.state === "running") {
    polling = setTimeout(poll, POLL_MS);
  } else {
    polling = null;
    if (status.state === "done") await loadModels();
  }
}

/** Refresh the panel; resolves to the list of missing files. */
export async function loadModels() {
  const data = await getJSON("/zturbo/models");
  $("#models-dir").textContent = `Models folder: ${data.models_dir}`;
  $("#models-list").replaceChildren(...data.components.map(component));
  $("#models-download").hidden = data.missing.length === 0 && data.download.state !== "error";
  $("#models-download-button").textContent = `Download missing files (${data.missing.length})`;
  showDownload(data.download);
  if (data.download.state === "running" && !polling) poll();
  showBanner(data.missing);
  return data.missing;
}

function showBanner(missing) {
  const banner = $("#banner");
  banner.hidden = missing.length === 0;
  if (missing.length) {
    banner.replaceChildren(`Missing model files: ${missing.join(", ")}. `,
      h("button", { type: "button", class: "small", onclick: openPanel }, "Open the models panel"));
  }
}

function openPanel() {
  $("#models-dialog").showModal();
  loadModels();
}

async function startDownload() {
  showDownload(await postJSON("/zturbo/models/download"));
  if (!polling) poll();
}

export function setupModels() {
  $("#models-button").addEventListener("click", openPanel);
  $("#models-download-button").addEventListener("click", startDownload);
}
