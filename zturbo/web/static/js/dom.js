// Tiny DOM helpers shared by every module.

/** First element matching `selector` (inside `root`). */
export const $ = (selector, root = document) => root.querySelector(selector);

/**
 * Create an element: h("button", {type: "button", onclick}, "Label").
 * Keys starting with "on" become listeners, "dataset"/"aria" objects are spread, others are attributes.
 */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key === "text") el.textContent = value;
    else el.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined && child !== false) el.append(child);
  }
  return el;
}

/** Say something to screen-reader users without moving focus. */
export function announce(message) {
  const region = $("#announcer");
  region.textContent = "";
  requestAnimationFrame(() => { region.textContent = message; });
}

/** Show `text` in a status element, as an error when `isError`. */
export function setMessage(el, text, isError = false) {
  el.textContent = text;
  el.classList.toggle("error", Boolean(isError));
}

/** Open the confirmation dialog; resolves true when the user confirms. */
export function confirmAction(text, okLabel = "Delete") {
  const dialog = $("#confirm-dialog");
  $("#confirm-text").textContent = text;
  $("#confirm-ok").textContent = okLabel;
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
  });
}
