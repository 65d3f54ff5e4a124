"use strict";
// Ranking with ties, by keyboard or by drag. State: groups of answer indices, best first.
(() => {
  const form = document.getElementById("rank-form");
  if (!form) return;
  const K = Number(form.dataset.k);
  const editable = form.dataset.editable === "1";
  const groupsEl = document.getElementById("groups");
  const poolEl = document.getElementById("pool");
  const text = document.getElementById("ranking-text");
  const msg = document.getElementById("rank-msg");
  const seconds = tiller.timer(document.getElementById("timer"));
  let groups = [];   // e.g. [[1], [0, 3], [2]]
  let history = [];  // answers in the order they were picked, for undo and "="
  let submitted = false;

  const placed = () => new Set(groups.flat());
  const asText = () => groups.map((g) => g.map((i) => i + 1).join(" = ")).join(" > ");

  function remove(i) {
    groups = groups.map((g) => g.filter((j) => j !== i)).filter((g) => g.length);
    history = history.filter((j) => j !== i);
  }
  function pick(i) {
    if (placed().has(i)) { remove(i); }
    groups.push([i]); history.push(i); render();
  }
  function tie() {  // move the last picked answer into the group before its own
    const i = history[history.length - 1];
    if (i === undefined) return;
    const g = groups.findIndex((grp) => grp.includes(i));
    if (g <= 0) return;
    groups[g] = groups[g].filter((j) => j !== i);
    groups[g - 1].push(i);
    groups[g - 1].sort((x, y) => x - y);  // members of a tie in answer order: "1 = 3", however picked
    groups = groups.filter((grp) => grp.length);
    render();
  }
  function undo() { const i = history[history.length - 1]; if (i !== undefined) { remove(i); render(); } }
  function clear() { groups = []; history = []; render(); }

  function chip(i) {
    const c = tiller.el("span", "chip", String(i + 1));
    c.draggable = editable; c.dataset.index = i; c.title = `Answer ${i + 1}`;
    c.addEventListener("dragstart", (e) => e.dataTransfer.setData("text/plain", String(i)));
    return c;
  }
  function dropZone(el, onDrop) {
    el.addEventListener("dragover", (e) => { e.preventDefault(); el.classList.add("over"); });
    el.addEventListener("dragleave", () => el.classList.remove("over"));
    el.addEventListener("drop", (e) => {
      e.preventDefault(); el.classList.remove("over");
      const i = Number(e.dataTransfer.getData("text/plain"));
      if (Number.isInteger(i) && i >= 0 && i < K) { onDrop(i); render(); }
    });
  }
  function slot(at) {  // a gap between groups: dropping here makes a new group at position `at`
    const s = tiller.el("span", "slot", "›");
    dropZone(s, (i) => {
      groups.splice(at, 0, [-1]);  // a marker keeps the position while `i` leaves its old group
      remove(i);
      groups[groups.findIndex((g) => g[0] === -1)] = [i];
      history.push(i);
    });
    return s;
  }

  function render() {
    groupsEl.replaceChildren();
    groupsEl.append(slot(0));
    groups.forEach((g, gi) => {
      const box = tiller.el("span", g.length > 1 ? "group tie" : "group");
      g.forEach((i, n) => { if (n) box.append(tiller.el("span", "eq", "=")); box.append(chip(i)); });
      dropZone(box, (i) => { if (!groups[gi].includes(i)) { remove(i); const t = groups.findIndex((x) => x.includes(g[0])); groups[t].push(i); groups[t].sort((x, y) => x - y); history.push(i); } });
      groupsEl.append(box, slot(gi + 1));
    });
    poolEl.replaceChildren();
    const have = placed();
    for (let i = 0; i < K; i++) if (!have.has(i)) poolEl.append(chip(i));
    document.querySelectorAll(".answer").forEach((card) => {
      const i = Number(card.dataset.index);
      const g = groups.findIndex((grp) => grp.includes(i));
      card.classList.toggle("ranked", g >= 0);
      card.querySelector(".placed").textContent = g >= 0 ? `rank ${g + 1}${groups[g].length > 1 ? " (tie)" : ""}` : "";
    });
    text.value = asText();
    msg.textContent = "";
  }

  function problems() {
    if (placed().size !== K) return `Rank all ${K} answers (${K - placed().size} left).`;
    for (let i = 0; i < K; i++) if (!form.querySelector(`input[name="likert_${i}"]:checked`)) return `Give answer ${i + 1} a score from 1 to 7.`;
    return "";
  }
  function submit() {
    if (submitted) return;
    const p = problems();
    if (p) { msg.textContent = p; return; }
    submitted = true;
    form.elements.time_spent_s.value = seconds().toFixed(1);
    const btn = document.getElementById("submit-btn"); if (btn) btn.disabled = true;
    form.submit();
  }
  function skip() { if (!submitted) { submitted = true; document.getElementById("skip-form").submit(); } }

  if (!editable) { render(); return; }
  dropZone(poolEl, (i) => remove(i));
  document.querySelectorAll(".answer").forEach((card) =>
    card.addEventListener("dragstart", (e) => e.dataTransfer.setData("text/plain", card.dataset.index)));
  text.addEventListener("change", () => {  // typed ranking, e.g. "2 > 1 = 3"
    const parsed = text.value.split(">").map((g) => g.split("=").map((t) => Number(t.trim()) - 1));
    const flat = parsed.flat();
    if (flat.length === K && new Set(flat).size === K && flat.every((i) => Number.isInteger(i) && i >= 0 && i < K)) {
      groups = parsed; history = flat.slice(); render();
    } else { msg.textContent = `Write each answer 1-${K} once, e.g. 2 > 1 = 3.`; }
  });
  form.addEventListener("submit", (e) => { e.preventDefault(); submit(); });
  document.getElementById("undo").addEventListener("click", undo);
  document.getElementById("skip").addEventListener("click", skip);
  form.querySelectorAll(".flags").forEach((d) => d.addEventListener("change", () => {
    const n = d.querySelectorAll("input:checked").length;
    d.querySelector(".flagcount").textContent = n ? `(${n})` : "";
  }));
  document.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey || tiller.typing(e.target)) return;
    const n = Number(e.key);
    if (Number.isInteger(n) && n >= 1 && n <= K && e.key.length === 1) { e.preventDefault(); pick(n - 1); }
    else if (e.key === "=") { e.preventDefault(); tie(); }
    else if (e.key === "Backspace") { e.preventDefault(); undo(); }
    else if (e.key === "Escape") { e.preventDefault(); clear(); }
    else if (e.key === "Enter") { e.preventDefault(); submit(); }
    else if (e.key === "s" || e.key === "S") { e.preventDefault(); skip(); }
  });
  render();
})();
