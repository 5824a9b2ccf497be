// HTTP helpers for the zturbo / ComfyUI API. An auth token given as ?token= in the page URL is passed on.

const TOKEN = new URLSearchParams(location.search).get("token");

function newId() {
  if (crypto.randomUUID) return crypto.randomUUID();
  return Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** This tab's ComfyUI client id: events for our prompts are sent to it. */
export const clientId = sessionStorage.getItem("zturbo.clientId") || newId();
sessionStorage.setItem("zturbo.clientId", clientId);

export class ApiError extends Error {
  constructor(message, status, body) {
    super(message);
    this.status = status;
    this.body = body;
  }
}

/** The most useful sentence in an error body (ComfyUI, FastAPI and our own shapes). */
export function errorMessage(body, status) {
  if (!body) return `request failed (HTTP ${status})`;
  const nodeErrors = Object.values(body.node_errors || {}).flatMap((n) => n.errors || []);
  if (nodeErrors.length) {
    return nodeErrors.map((e) => `${e.message}: ${e.details || ""}`.trim()).join("; ");
  }
  if (body.error && typeof body.error === "object") return body.error.message || body.error.type;
  if (typeof body.error === "string") return body.error;
  if (Array.isArray(body.detail)) return body.detail.map((d) => d.msg.replace(/^Value error, /, "")).join("; ");
  if (typeof body.detail === "string") return body.detail;
  return `request failed (HTTP ${status})`;
}

async function request(method, path, body, isForm = false) {
  const headers = {};
  if (TOKEN) headers.Authorization = `Bearer ${TOKEN}`;
  if (body !== undefined && !isForm) headers["Content-Type"] = "application/json";
  const init = { method, headers, body: isForm ? body : body === undefined ? undefined : JSON.stringify(body) };
  const response = await fetch(path, init);
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = { error: text }; }
  if (!response.ok) throw new ApiError(errorMessage(data, response.status), response.status, data);
  return data;
}

export const getJSON = (path) => request("GET", path);
export const postJSON = (path, body = {}) => request("POST", path, body);
export const postForm = (path, form) => request("POST", path, form, true);
export const del = (path) => request("DELETE", path);

/** URL of an output image (`{filename, subfolder, type}`), for <img> and downloads. */
export function viewUrl(image) {
  const params = new URLSearchParams({
    filename: image.filename, subfolder: image.subfolder || "", type: image.type || "output",
  });
  if (TOKEN) params.set("token", TOKEN);
  return `/view?${params}`;
}

/** The WebSocket URL for this client. */
export function socketUrl() {
  const params = new URLSearchParams({ clientId });
  if (TOKEN) params.set("token", TOKEN);
  return `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws?${params}`;
}

/** Queue an API-format prompt for this client (with live previews); resolves to {prompt_id, number}. */
export function queuePrompt(prompt, workflow = null) {
  const extra_data = { preview_method: "auto", ...(workflow ? { extra_pnginfo: { workflow } } : {}) };
  return postJSON("/prompt", { prompt, client_id: clientId, extra_data });
}
