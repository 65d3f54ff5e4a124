"use strict";
// Shared helpers. Model text is only ever inserted with textContent: nothing it contains can run.
const tiller = {
  csrf: () => document.querySelector('meta[name="csrf-token"]').content,
  el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  },
  // Seconds spent on the page while it is visible (stored with the label, as in InstructGPT's tool).
  timer(display) {
    let spent = 0, since = document.hidden ? null : performance.now();
    document.addEventListener("visibilitychange", () => {
      if (document.hidden && since !== null) { spent += performance.now() - since; since = null; }
      else if (!document.hidden && since === null) since = performance.now();
    });
    const seconds = () => (spent + (since === null ? 0 : performance.now() - since)) / 1000;
    if (display) setInterval(() => {
      const s = Math.floor(seconds());
      display.textContent = `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
    }, 500);
    return seconds;
  },
  typing: (t) => t && (t.tagName === "TEXTAREA" || (t.tagName === "INPUT" && ["text", "password", "number", "search"].includes(t.type)) || t.isContentEditable),
};
document.querySelectorAll("[data-width]").forEach((e) => { e.style.width = `${e.dataset.width}%`; });
