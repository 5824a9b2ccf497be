// The queue: one card per prompt we queued, with progress, live previews, the result and cancel.

import { clientId, getJSON, postJSON, viewUrl } from "./api.js";
import { $, announce, h } from "./dom.js";

const jobs = new Map(); // prompt_id -> {el, state, title, previewUrl}
const ended = new Set(); // prompts that finished before their card existed (fast jobs)
let onFinished = () => {};
const LABELS = {
  queued: "Queued", running: "Running", cancelling: "Cancelling…", done: "Done", error: "Failed", cancelled: "Cancelled",
};
const FINAL = new Set(["done", "error", "cancelled"]);

function updateEmpty() {
  $("#jobs-empty").hidden = jobs.size > 0;
}

function setState(job, state, detail = "") {
  job.state = state;
  job.el.dataset.state = state;
  job.el.querySelector(".job-state").textContent = LABELS[state] + (detail ? ` · ${detail}` : "");
  job.el.querySelector(".cancel").hidden = FINAL.has(state);
}

/** Add a card for a queued prompt. */
export function addJob(promptId, title) {
  if (jobs.has(promptId)) return jobs.get(promptId);
  const el = h("li", { class: "job", dataset: { promptId } },
    h("div", { class: "job-head" },
      h("span", { class: "job-title", title, text: title }),
      h("span", { class: "job-state" }),
      h("button", { type: "button", class: "cancel small", "aria-label": `Cancel: ${title}` }, "Cancel")),
    h("progress", { max: 1, value: 0, "aria-label": `Progress: ${title}` }),
    h("div", { class: "job-images" }));
  const job = { el, state: "queued", title, previewUrl: null };
  el.querySelector(".cancel").addEventListener("click", () => cancel(promptId));
  jobs.set(promptId, job);
  $("#jobs").prepend(el);
  setState(job, "queued");
  updateEmpty();
  if (ended.delete(promptId)) finish(promptId);
  return job;
}

function showPreview(job, blob) {
  const images = job.el.querySelector(".job-images");
  let img = images.querySelector("img.preview");
  if (!img) {
    img = h("img", { class: "preview", alt: `Live preview: ${job.title}` });
    images.replaceChildren(img);
  }
  if (job.previewUrl) URL.revokeObjectURL(job.previewUrl);
  job.previewUrl = URL.createObjectURL(blob);
  img.src = job.previewUrl;
}

function showImages(job, images) {
  const items = images.map((image) => h("a", { href: viewUrl(image), target: "_blank", rel: "noopener" },
    h("img", { class: "result", src: viewUrl(image), alt: `Result: ${job.title}` })));
  job.el.querySelector(".job-images").replaceChildren(...items);
  if (job.previewUrl) URL.revokeObjectURL(job.previewUrl);
}

const outputImages = (outputs) => Object.values(outputs || {}).flatMap((o) => o.images || []);

/** The prompt ended: read its history entry for the outcome and the images. */
async function finish(promptId) {
  const job = jobs.get(promptId);
  if (!job || FINAL.has(job.state)) return;
  let entry = null;
  try { entry = (await getJSON(`/history/${promptId}`))[promptId]; } catch { /* shown as failed below */ }
  const messages = entry?.status?.messages || [];
  const progress = job.el.querySelector("progress");
  if (messages.some(([name]) => name === "execution_interrupted") || (!entry && job.state === "cancelling")) {
    setState(job, "cancelled");
  } else if (entry?.status?.status_str === "success") {
    progress.value = progress.max;
    showImages(job, outputImages(entry.outputs));
    setState(job, "done");
    announce(`Image ready: ${job.title}`);
  } else {
    const error = messages.find(([name]) => name === "execution_error")?.[1];
    setState(job, "error");
    const text = error ? `${error.node_type || "node"}: ${error.exception_message}` : "the job failed";
    job.el.append(h("p", { class: "error-text", role: "alert", text }));
  }
  onFinished(promptId);
}

async function cancel(promptId) {
  const job = jobs.get(promptId);
  if (!job || FINAL.has(job.state)) return;
  if (job.state === "queued") {
    await postJSON("/queue", { delete: [promptId] });
    // The delete only drops pending prompts: one that started while it was on its way runs on, so ask
    // where it is now and, if it runs, stop it there. Otherwise its history entry tells: cancelled
    // (the delete landed) or the result of a run that beat it.
    const queue = await getJSON("/queue");
    if (!queue.queue_running.some((item) => item[1] === promptId)) {
      const ended = (await getJSON(`/history/${promptId}`))[promptId];
      if (ended) finish(promptId);
      else if (!FINAL.has(job.state)) setState(job, "cancelled");
      return;
    }
  }
  setState(job, "cancelling");
  await postJSON("/interrupt", { prompt_id: promptId });
}

/** A JSON event from /ws. */
export function handleEvent(type, data) {
  const job = jobs.get(data.prompt_id);
  if (type === "execution_start" && job?.state === "queued") setState(job, "running"); // not over "Cancelling…"
  else if (type === "progress" && job) {
    const progress = job.el.querySelector("progress");
    progress.max = data.max;
    progress.value = data.value;
    if (job.state === "queued") setState(job, "running");
    setState(job, job.state, `step ${data.value}/${data.max}`);
  }
  else if (type === "executing" && data.node === null) {
    if (job) finish(data.prompt_id);
    else ended.add(data.prompt_id);
  }
  else if (type === "zturbo_lora" && job && data.unmatched?.length) {
    // A LoRA load's report: the keys it could not use are named on the job (the rest is in history).
    const text = `LoRA ${data.lora_name}: ${data.unmatched.length} keys matched nothing: ${data.unmatched.join(", ")}`;
    job.el.querySelector("progress").after(h("p", { class: "hint lora-warning", role: "status", text }));
  }
}

/** A binary preview frame: for its prompt, or for whichever of ours is running. */
export function handlePreview({ blob, promptId }) {
  const job = jobs.get(promptId) || [...jobs.values()].find((j) => j.state === "running");
  if (job) showPreview(job, blob);
}

/** After a (re)connect: pick up our queued prompts and settle the ones that ended meanwhile. */
export async function syncQueue() {
  const queue = await getJSON("/queue");
  const live = new Set();
  for (const [state, items] of [["running", queue.queue_running], ["queued", queue.queue_pending]]) {
    for (const item of items) {
      if (item[3]?.client_id !== clientId) continue;
      live.add(item[1]);
      const job = addJob(item[1], "Queued earlier");
      if (!FINAL.has(job.state)) setState(job, state);
    }
  }
  for (const [promptId, job] of jobs) if (!live.has(promptId) && !FINAL.has(job.state)) finish(promptId);
}

export function setupJobs(callbacks) {
  onFinished = callbacks.onFinished;
  $("#clear-finished").addEventListener("click", () => {
    for (const [promptId, job] of jobs) {
      if (FINAL.has(job.state)) { job.el.remove(); jobs.delete(promptId); }
    }
    updateEmpty();
  });
  updateEmpty();
}
