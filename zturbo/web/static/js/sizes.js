// Size presets (multiples of 16, as the model needs) and the custom size inputs.

import { $, setMessage } from "./dom.js";

export const SIZES = [
  { value: "1024x1024", label: "1:1 square · 1024×1024" },
  { value: "1280x720", label: "16:9 landscape · 1280×720" },
  { value: "1920x1088", label: "16:9 landscape · 1920×1088" },
  { value: "720x1280", label: "9:16 portrait · 720×1280" },
  { value: "1152x864", label: "4:3 · 1152×864" },
  { value: "1248x832", label: "3:2 · 1248×832" },
  { value: "custom", label: "Custom…" },
];

const snap = (n) => Math.min(4096, Math.max(16, Math.round(n / 16) * 16));

/** Fill the size select and wire the custom inputs. */
export function setupSizes() {
  const select = $("#size");
  for (const size of SIZES) select.append(new Option(size.label, size.value));
  select.addEventListener("change", () => showSize(select.value));
  for (const id of ["#width", "#height"]) {
    $(id).addEventListener("change", (event) => {
      const value = Number(event.target.value) || 16;
      if (value !== snap(value)) {
        event.target.value = snap(value);
        setMessage($("#size-hint"), `Sizes are multiples of 16: using ${snap(value)}.`);
      } else {
        setMessage($("#size-hint"), "");
      }
    });
  }
}

function showSize(value) {
  $("#custom-size").hidden = value !== "custom";
  if (value !== "custom") {
    const [w, h] = value.split("x").map(Number);
    $("#width").value = w;
    $("#height").value = h;
  }
}

/** The chosen width and height. */
export function readSize() {
  return { width: snap(Number($("#width").value) || 1024), height: snap(Number($("#height").value) || 1024) };
}

/** Select the preset for width×height, or "Custom…" with the values filled in. */
export function writeSize(width, height) {
  const value = `${width}x${height}`;
  const known = SIZES.some((s) => s.value === value);
  $("#size").value = known ? value : "custom";
  $("#width").value = width;
  $("#height").value = height;
  $("#custom-size").hidden = known;
}
