"use strict";
(() => {
  const form = document.getElementById("demo-form");
  if (!form) return;
  const seconds = tiller.timer(document.getElementById("timer"));
  let submitted = false;
  form.addEventListener("submit", (e) => {
    if (submitted) { e.preventDefault(); return; }
    submitted = true;
    form.elements.time_spent_s.value = seconds().toFixed(1);
  });
  form.elements.response.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); form.requestSubmit(); }
  });
  const skip = document.getElementById("skip");
  if (skip) skip.addEventListener("click", () => document.getElementById("skip-form").submit());
})();
