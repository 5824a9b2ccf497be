// "Start from an image": a dropped, pasted or chosen picture becomes the init image (variations at a
// denoise level), and a brush paints an inpaint mask over it (white = repaint). Both are uploaded to
// the input folder when a job is queued; the server builds the graph (LoadImage, LoadImageMask, ...).

import { postForm } from "./api.js";
import { $, setMessage } from "./dom.js";
import { writeSize } from "./sizes.js";

const MAX_PIXELS = 1.5 * 1024 * 1024; // larger pictures are generated at this size, same aspect
let file = null; // the chosen File
let uploaded = null; // {file, name}: the upload of `file`, reused for every job
let painted = false;

const snap16 = (n) => Math.max(16, Math.floor(n / 16) * 16);

/** The size a picture is generated at: its own (cropped to multiples of 16), at most 1.5 megapixels. */
export function initSize(width, height) {
  const scale = Math.min(1, Math.sqrt(MAX_PIXELS / (width * height)));
  return scale < 1 ? [Math.round((width * scale) / 16) * 16, Math.round((height * scale) / 16) * 16]
    : [snap16(width), snap16(height)];
}

function canvas() { return $("#mask-canvas"); }

function clearMask() {
  const c = canvas();
  const ctx = c.getContext("2d");
  ctx.fillStyle = "black";
  ctx.fillRect(0, 0, c.width, c.height);
  painted = false;
}

async function setImage(chosen) {
  if (!chosen || !chosen.type.startsWith("image/")) {
    setMessage($("#init-info"), `${chosen?.name || "That"} is not an image.`, true);
    return;
  }
  file = chosen;
  uploaded = null;
  const img = $("#init-preview");
  const url = URL.createObjectURL(chosen);
  await new Promise((resolve, reject) => { img.onload = resolve; img.onerror = reject; img.src = url; })
    .catch(() => { throw new Error(`${chosen.name} could not be shown`); });
  const c = canvas();
  c.width = img.naturalWidth;
  c.height = img.naturalHeight;
  clearMask();
  const [w, h] = initSize(img.naturalWidth, img.naturalHeight);
  writeSize(w, h);
  $("#init").open = true;
  $("#init-editor").hidden = false;
  setMessage($("#init-info"), `${chosen.name}: ${img.naturalWidth}×${img.naturalHeight}, generated at ${w}×${h}.`);
}

function removeImage() {
  file = uploaded = null;
  painted = false;
  $("#init-editor").hidden = true;
  $("#mask-paint").checked = false;
  $("#init-stage").classList.remove("painting");
  setMessage($("#init-info"), "");
}

function setupBrush() {
  const c = canvas();
  let drawing = false;
  const point = (event) => {
    const box = c.getBoundingClientRect();
    return [(event.clientX - box.left) * (c.width / box.width), (event.clientY - box.top) * (c.height / box.height)];
  };
  const dab = (event) => {
    const ctx = c.getContext("2d");
    const scale = c.width / c.getBoundingClientRect().width;
    const [x, y] = point(event);
    ctx.fillStyle = "white";
    ctx.beginPath();
    ctx.arc(x, y, (Number($("#brush-size").value) || 32) * scale / 2, 0, Math.PI * 2);
    ctx.fill();
    painted = true;
  };
  c.addEventListener("pointerdown", (event) => {
    if (!$("#mask-paint").checked) return;
    drawing = true;
    c.setPointerCapture(event.pointerId);
    dab(event);
  });
  c.addEventListener("pointermove", (event) => { if (drawing) dab(event); });
  for (const end of ["pointerup", "pointercancel"]) c.addEventListener(end, () => { drawing = false; });
  $("#mask-paint").addEventListener("change", (event) => {
    $("#init-stage").classList.toggle("painting", event.target.checked);
  });
}

async function upload(blob, name) {
  const form = new FormData();
  form.append("image", blob, name);
  form.append("type", "input");
  const saved = await postForm("/upload/image", form);
  return saved.subfolder ? `${saved.subfolder}/${saved.name}` : saved.name;
}

/** Settings fields for the init image and mask (uploading them first); {} without an image. */
export async function initFields() {
  if (!file) return {};
  if (!uploaded || uploaded.file !== file) uploaded = { file, name: await upload(file, file.name) };
  const fields = { image: uploaded.name, denoise: Number($("#denoise").value) };
  if (painted) {
    const blob = await new Promise((resolve) => canvas().toBlob(resolve, "image/png"));
    const stem = uploaded.name.replace(/\.[^.]+$/, "");
    fields.mask = await upload(blob, `${stem}-mask.png`);
    fields.denoise = 1.0;
  }
  return fields;
}

export function setupInitImage() {
  const input = $("#init-file");
  $("#init-open").addEventListener("click", () => input.click());
  input.addEventListener("change", () => { if (input.files[0]) setImage(input.files[0]); input.value = ""; });
  $("#init-remove").addEventListener("click", removeImage);
  $("#mask-clear").addEventListener("click", clearMask);
  $("#denoise").addEventListener("input", (event) => {
    $("#denoise-value").textContent = Number(event.target.value).toFixed(2);
  });
  const zone = $("#init");
  zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("dragover"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragover"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    event.stopPropagation(); // not the page-wide "load settings" drop
    zone.classList.remove("dragover");
    if (event.dataTransfer.files[0]) setImage(event.dataTransfer.files[0]);
  });
  document.addEventListener("paste", (event) => {
    const item = [...(event.clipboardData?.files || [])].find((f) => f.type.startsWith("image/"));
    if (item) { event.preventDefault(); setImage(item); }
  });
  setupBrush();
}
