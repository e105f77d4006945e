// Operator actions: every one is confirmed in a dialog that says what will happen and that it is
// audited under the signed-in token, then sent to the API (which checks the role and the
// tenant again and writes the audit row). The answer is shown as a notice, a refusal in the
// banner with the API's own detail line. Viewers never get here: the views draw no buttons.

import {$, el} from "./dom.js";
import {describe} from "./api.js";

let pending = null;   // the open confirmation's resolve

function close(value) {
  const dialog = $("confirm");
  if (dialog.open) dialog.close();
  const resolve = pending;
  pending = null;
  if (resolve) resolve(value);
}

export function installDialog() {
  const dialog = $("confirm");
  $("confirm-cancel").addEventListener("click", () => close(null));
  dialog.addEventListener("cancel", (ev) => { ev.preventDefault(); close(null); });   // Escape
  $("confirm-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const input = $("confirm-input");
    if (!input.hidden && !input.reportValidity()) return;
    close({value: input.hidden ? null : input.value});
  });
}

// {title, lines: [text], verb, input: {label, value, min, max}} → null (cancelled) or {value}
export function confirmAction({title, lines = [], verb = "confirm", input = null, who = ""}) {
  if (pending) close(null);
  $("confirm-title").textContent = title;
  $("confirm-body").replaceChildren(...lines.map((l) => el("p", null, l)),
                                    el("p", {class: "muted"}, `Recorded in the audit log as ${who || "you"}.`));
  const box = $("confirm-input"), label = $("confirm-input-label");
  box.hidden = label.hidden = !input;
  box.required = !!input;   // a hidden required field would block the form
  if (input) {
    label.textContent = input.label;
    box.value = String(input.value ?? "");
    box.min = input.min ?? "";
    box.max = input.max ?? "";
  }
  $("confirm-ok").textContent = verb;
  return new Promise((resolve) => {
    pending = resolve;
    $("confirm").showModal();
    (input ? box : $("confirm-ok")).focus();
  });
}

export function notify(message) {
  const n = $("notice");
  n.textContent = message;
  n.hidden = !message;
  clearTimeout(notify.timer);
  if (message) notify.timer = setTimeout(() => { n.hidden = true; }, 8000);
}

// Confirm, call, report. Returns the API's answer (or null when cancelled).
export async function act(ctx, {title, lines, verb, input, call, done}) {
  const answer = await confirmAction({title, lines, verb, input, who: ctx.you ? ctx.you.name : ""});
  if (answer === null) return null;
  const res = await call(answer.value);
  if (!res.ok) {
    ctx.setBanner(describe(res));
    return res;
  }
  ctx.setBanner("");
  notify(typeof done === "function" ? done(res.body) : done);
  ctx.refresh();
  return res;
}

// A small button that starts an action; `disabled` (a reason) greys it out and says why.
export function button(label, onclick, {disabled = null, danger = false, action = label} = {}) {
  return el("button", {type: "button", class: `act${danger ? " danger" : ""}`, "data-action": action,
                       disabled: !!disabled, title: disabled || null, onclick}, label);
}
