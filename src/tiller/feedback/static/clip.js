"use strict";
// Two clips side by side, answered with a click or a key. The answer is the submit button's value, so the
// page works without this script too; here: keys, one submit per page, the time spent, and replay in step.
(() => {
  const form = document.getElementById("clip-form");
  if (!form) return;
  const editable = form.dataset.editable === "1";
  const videos = Array.from(document.querySelectorAll(".clip video"));
  const seconds = tiller.timer(document.getElementById("timer"));
  let submitted = false;

  function replay() {  // both from the start, so the same moments play side by side
    videos.forEach((v) => { v.currentTime = 0; const p = v.play(); if (p) p.catch(() => {}); });
  }
  function answer(choice) {
    const btn = form.querySelector(`button[name="choice"][value="${choice}"]`);
    if (btn && !btn.disabled) form.requestSubmit(btn);
  }
  function skip() { if (!submitted) { submitted = true; document.getElementById("skip-form").submit(); } }

  // Muted videos may autoplay; a browser that still refuses starts them on the first key or click.
  videos.forEach((v) => { v.muted = true; const p = v.play(); if (p) p.catch(() => {}); });
  document.getElementById("replay").addEventListener("click", replay);
  if (!editable) return;
  form.addEventListener("submit", (e) => {
    if (submitted) { e.preventDefault(); return; }
    submitted = true;
    form.elements.time_spent_s.value = seconds().toFixed(1);
    form.querySelectorAll('button[name="choice"]').forEach((b) => { b.classList.toggle("on", b === e.submitter); });
  });
  document.getElementById("skip").addEventListener("click", skip);
  const keys = { "1": "left", ArrowLeft: "left", "2": "right", ArrowRight: "right",
                 "3": "equal", ArrowDown: "equal", "4": "cant_tell", ArrowUp: "cant_tell" };
  document.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey || tiller.typing(e.target)) return;
    if (keys[e.key]) { e.preventDefault(); answer(keys[e.key]); }
    else if (e.key === "r" || e.key === "R") { e.preventDefault(); replay(); }
    else if (e.key === "s" || e.key === "S") { e.preventDefault(); skip(); }
  });
})();
