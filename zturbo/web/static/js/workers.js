// The worker pool (`zturbo serve --workers N` / `--ray ADDRESS`): each worker, its device and state.
// Shown in the top bar only when the server has a pool; refreshed while the page is open.

import { getJSON } from "./api.js";
import { $ } from "./dom.js";

const REFRESH_MS = 5000;

function describe(worker) {
  const where = [worker.device, worker.host].filter(Boolean).join(" on ");
  return `${worker.name}${where ? ` (${where})` : ""}: ${worker.state}`;
}

async function refresh() {
  const body = await getJSON("/zturbo/workers");
  const list = $("#workers");
  if (!body.pool) return false;
  list.replaceChildren(
    ...body.workers.map((worker) => {
      const item = document.createElement("li");
      item.textContent = describe(worker);
      item.dataset.state = worker.state;
      return item;
    }),
  );
  list.hidden = false;
  return true;
}

export async function setupWorkers() {
  if (await refresh()) setInterval(() => refresh().catch(() => {}), REFRESH_MS);
}
