// The gallery: finished images with their settings; reuse, download, delete.

import { getJSON, postJSON, viewUrl } from "./api.js";
import { $, announce, confirmAction, h } from "./dom.js";
import { describeLoras } from "./loras.js";

let applySettings = () => {};
let upscale = () => {};

/** "1280×720 · 8 steps · cfg 1 · res_multistep/simple · seed 42" */
export function describeSettings(s) {
  const loras = describeLoras(s.loras);
  return `${s.width}×${s.height} · ${s.steps} steps · cfg ${s.cfg} · ${s.sampler}/${s.scheduler} · seed ${s.seed}`
    + (loras ? ` · ${loras}` : "");
}

async function remove(item) {
  const name = item.image.filename;
  if (!(await confirmAction(`Delete ${name}? The file is removed from the output folder.`))) return;
  try {
    await postJSON("/zturbo/outputs/delete", { filename: name, subfolder: item.image.subfolder });
    announce(`Deleted ${name}`);
  } catch (error) {
    announce(`Could not delete ${name}: ${error.message}`);
  }
  await loadGallery();
}

function card(item) {
  const s = item.settings;
  const name = item.image.filename;
  const label = s ? s.prompt : name;
  const url = viewUrl(item.image);
  return h("li", { class: "card", dataset: { filename: name } },
    h("a", { href: url, target: "_blank", rel: "noopener", "aria-label": `Open ${name} full size` },
      h("img", { src: url, alt: label, loading: "lazy" })),
    h("div", { class: "meta" },
      h("p", { class: "prompt", title: label, text: label }),
      s ? h("p", { class: "hint settings", text: describeSettings(s) }) : null,
      h("div", { class: "buttons" },
        s ? h("button", { type: "button", class: "reuse", onclick: () => applySettings(s, name),
          "aria-label": `Reuse settings of ${name}` }, "Reuse") : null,
        h("a", { class: "button-link", href: url, download: name, "aria-label": `Download ${name}` }, "Download"),
        h("button", { type: "button", class: "upscale", "aria-label": `Upscale ${name} two times`,
          onclick: (event) => {
            const img = event.target.closest(".card").querySelector("img");
            upscale(item, s ? [s.width, s.height] : [img.naturalWidth, img.naturalHeight]);
          } }, "Upscale ×2"),
        h("button", { type: "button", class: "danger delete", onclick: () => remove(item),
          "aria-label": `Delete ${name}` }, "Delete"))));
}

/** Fetch and render the newest images. */
export async function loadGallery() {
  const { items } = await getJSON("/zturbo/gallery?limit=120");
  $("#gallery").replaceChildren(...items.map(card));
  $("#gallery-empty").hidden = items.length > 0;
}

export function setupGallery(callbacks) {
  applySettings = callbacks.applySettings;
  upscale = callbacks.upscale;
  $("#refresh-gallery").addEventListener("click", loadGallery);
}
