// The ControlNet panel: a control image (uploaded to the input folder), its type, strength and Canny
// thresholds, and a preview of the preprocessed map as the server computes it (/zturbo/control/preview).

import { postForm } from "./api.js";
import { $, setMessage } from "./dom.js";

let uploaded = null; // the control image's name in the input folder

const thresholds = () => ({ low: $("#control-low").value, high: $("#control-high").value });

function refreshPreview() {
  const preview = $("#control-preview");
  $("#control-canny").hidden = $("#control-type").value !== "canny";
  if (!uploaded) {
    preview.hidden = true;
    preview.removeAttribute("src");
    return;
  }
  const query = new URLSearchParams({ image: uploaded, type: $("#control-type").value, ...thresholds() });
  preview.src = `/zturbo/control/preview?${query}`;
  preview.hidden = false;
}

async function upload() {
  const file = $("#control-file").files[0];
  if (!file) return;
  const form = new FormData();
  form.append("image", file);
  form.append("overwrite", "true");
  try {
    const { name, subfolder } = await postForm("/upload/image", form);
    uploaded = subfolder ? `${subfolder}/${name}` : name;
    refreshPreview();
  } catch (error) {
    setMessage($("#form-message"), `Control image: ${error.message}`, true);
  }
}

function clear() {
  uploaded = null;
  $("#control-file").value = "";
  refreshPreview();
}

export function setupControl() {
  $("#control-file").addEventListener("change", upload);
  for (const id of ["#control-type", "#control-low", "#control-high"]) $(id).addEventListener("change", refreshPreview);
  $("#control-clear").addEventListener("click", clear);
  refreshPreview();
}

/** The panel's settings for POST /zturbo/graph, or null without a control image. */
export function readControl() {
  if (!uploaded) return null;
  const { low, high } = thresholds();
  return {
    image: uploaded,
    type: $("#control-type").value,
    strength: Number($("#control-strength").value),
    low: Number(low),
    high: Number(high),
  };
}
