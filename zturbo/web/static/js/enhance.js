// "✨ enhance": the prompt rewritten by the text encoder (POST /zturbo/enhance, a queued job), its text
// appearing in the prompt box as the server streams it (`zturbo_enhance` events to this tab's client
// id), then the final answer; the box stays editable. Seeded by the form's seed field.

import { clientId, postJSON } from "./api.js";
import { $, announce, setMessage } from "./dom.js";

const MAX_TOKENS = 300;
let streaming = null; // {pieces} while an enhancement of ours runs

/** Events: the pieces of our running enhancement go into the prompt box as they come. */
export function handleEnhanceEvent(type, data) {
  if (type !== "zturbo_enhance" || streaming === null || typeof data.text !== "string") return;
  if (streaming.promptId && data.prompt_id !== streaming.promptId) return;
  streaming.promptId = data.prompt_id;
  streaming.pieces += 1;
  $("#prompt").value += data.text;
}

async function enhance() {
  const box = $("#prompt");
  const button = $("#enhance");
  const status = $("#enhance-status");
  const idea = box.value.trim();
  if (!idea) {
    setMessage(status, "Write a short idea first.", true);
    box.focus();
    return;
  }
  const seed = Math.max(0, Math.floor(Number($("#seed").value) || 0));
  button.disabled = true;
  box.readOnly = true;
  box.value = "";
  streaming = { pieces: 0, promptId: null };
  setMessage(status, "Enhancing…");
  try {
    const body = { prompt: idea, seed, max_tokens: MAX_TOKENS, client_id: clientId };
    const answer = await postJSON("/zturbo/enhance", body);
    box.value = answer.prompt;
    status.dataset.pieces = String(streaming.pieces);
    setMessage(status, `Enhanced with seed ${seed}: edit it, or generate.`);
    announce("Prompt enhanced");
  } catch (error) {
    box.value = idea;
    setMessage(status, error.message, true);
  } finally {
    streaming = null;
    box.readOnly = false;
    button.disabled = false;
    box.focus();
  }
}

export function setupEnhance() {
  $("#enhance").addEventListener("click", enhance);
}
