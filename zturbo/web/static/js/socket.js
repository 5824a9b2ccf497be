// The ComfyUI event stream (/ws): JSON events and binary preview frames, with reconnects.

import { socketUrl } from "./api.js";

const PREVIEW = 1;
const PREVIEW_WITH_METADATA = 4;
const IMAGE_TYPES = { 1: "image/jpeg", 2: "image/png" };

/** Decode a binary frame into {blob, promptId} (promptId only with metadata), or null. */
export function decodePreview(buffer) {
  const view = new DataView(buffer);
  const kind = view.getUint32(0);
  if (kind === PREVIEW) {
    const type = IMAGE_TYPES[view.getUint32(4)] || "image/jpeg";
    return { blob: new Blob([buffer.slice(8)], { type }), promptId: null };
  }
  if (kind === PREVIEW_WITH_METADATA) {
    const length = view.getUint32(4);
    const meta = JSON.parse(new TextDecoder().decode(buffer.slice(8, 8 + length)));
    const blob = new Blob([buffer.slice(8 + length)], { type: meta.image_type || "image/jpeg" });
    return { blob, promptId: meta.prompt_id || null };
  }
  return null;
}

/**
 * Connect and keep connected. `handlers.event(type, data)` gets JSON events,
 * `handlers.preview({blob, promptId})` previews, `handlers.open()` every (re)connect.
 */
export function connectSocket(handlers) {
  let delay = 500;
  const open = () => {
    const ws = new WebSocket(socketUrl());
    ws.binaryType = "arraybuffer";
    ws.addEventListener("open", () => {
      delay = 500;
      ws.send(JSON.stringify({ type: "feature_flags", data: { supports_preview_metadata: true } }));
      handlers.open?.();
    });
    ws.addEventListener("message", (message) => {
      if (typeof message.data === "string") {
        const { type, data } = JSON.parse(message.data);
        handlers.event(type, data || {});
      } else {
        const preview = decodePreview(message.data);
        if (preview) handlers.preview(preview);
      }
    });
    ws.addEventListener("close", () => {
      setTimeout(open, delay);
      delay = Math.min(delay * 2, 8000);
    });
  };
  open();
}
