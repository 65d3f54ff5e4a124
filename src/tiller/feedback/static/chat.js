"use strict";
// Playground: answers stream as server-sent events over a POST (fetch + ReadableStream).
(() => {
  const chat = document.getElementById("chat");
  const form = document.getElementById("chat-form");
  const input = document.getElementById("chat-input");
  const model = document.getElementById("model");
  const consent = document.getElementById("consent");
  const buttons = [document.getElementById("send"), document.getElementById("compare")];
  let conversation = null, busy = false;

  async function api(path, body) {
    const res = await fetch(path, {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": tiller.csrf() },
      body: JSON.stringify(body),
    });
    if (!res.ok) {
      let detail = res.statusText;
      try { detail = (await res.json()).detail; } catch (e) { /* not JSON */ }
      throw new Error(typeof detail === "string" ? detail : JSON.stringify(detail));
    }
    return res;
  }
  function bubble(role, text) {
    const m = tiller.el("div", `msg ${role}`);
    m.append(tiller.el("div", "role", role), tiller.el("div", "text", text));
    chat.append(m); m.scrollIntoView({ block: "end" });
    return m;
  }
  function thumbs(m, id) {
    const bar = tiller.el("div", "thumbs");
    for (const [value, label] of [[1, "▲ good"], [-1, "▼ bad"]]) {
      const b = tiller.el("button", "btn ghost small", label);
      b.type = "button"; b.title = value > 0 ? "Good answer" : "Bad answer";
      b.addEventListener("click", async () => {
        await api(`/api/chat/messages/${id}/rating`, { value });
        bar.querySelectorAll("button").forEach((x) => x.classList.remove("on"));
        b.classList.add("on");
      });
      bar.append(b);
    }
    m.append(bar); m.dataset.messageId = id;
  }
  async function ensureConversation() {
    if (conversation === null) {
      const res = await api("/api/chat/conversations", { model: model.value });
      conversation = (await res.json()).id;
    }
    return conversation;
  }
  async function stream(content) {
    const id = await ensureConversation();
    const res = await api(`/api/chat/conversations/${id}/turn`, { content, consent: consent.checked });
    const m = bubble("assistant", ""); m.classList.add("streaming");
    const out = m.querySelector(".text");
    const reader = res.body.getReader(), decoder = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        const raw = buf.slice(0, cut); buf = buf.slice(cut + 2);
        let event = "message", data = "";
        for (const line of raw.split("\n")) {
          if (line.startsWith("event: ")) event = line.slice(7);
          else if (line.startsWith("data: ")) data += line.slice(6);
        }
        const msg = JSON.parse(data);
        if (event === "message") out.textContent += msg.delta;
        else if (event === "done") { out.textContent = msg.content; thumbs(m, msg.message_id); }
        else if (event === "error") m.append(tiller.el("p", "error small", msg.detail));
        m.scrollIntoView({ block: "end" });
      }
    }
    m.classList.remove("streaming");
  }
  async function compare(content) {
    const id = await ensureConversation();
    const box = tiller.el("div", "compare");
    box.append(tiller.el("p", "muted small", "Generating two answers…"));
    chat.append(box);
    const comp = await (await api(`/api/chat/conversations/${id}/compare`, { content, consent: consent.checked })).json();
    box.replaceChildren(tiller.el("p", "small", "Which answer is better?"));
    const row = tiller.el("div", "pair");
    comp.responses.forEach((text, choice) => {
      const card = tiller.el("div", "msg assistant");
      card.append(tiller.el("div", "role", `answer ${choice + 1}`), tiller.el("div", "text", text));
      const pickBtn = tiller.el("button", "btn small", "This one is better");
      pickBtn.type = "button";
      pickBtn.addEventListener("click", async () => {
        const r = await (await api(`/api/chat/comparisons/${comp.id}/choose`, { choice })).json();
        box.remove(); thumbs(bubble("assistant", r.content), r.message_id);
      });
      card.append(pickBtn); row.append(card);
    });
    box.append(row);
  }
  async function send(mode) {
    const content = input.value.trim();
    if (!content || busy) return;
    busy = true; buttons.forEach((b) => { b.disabled = true; });
    bubble("user", content); input.value = "";
    try { await (mode === "compare" ? compare(content) : stream(content)); }
    catch (e) { chat.append(tiller.el("p", "error small", e.message)); }
    finally { busy = false; buttons.forEach((b) => { b.disabled = false; }); input.focus(); }
  }
  form.addEventListener("submit", (e) => { e.preventDefault(); send("stream"); });
  document.getElementById("compare").addEventListener("click", () => send("compare"));
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); send("stream"); }
  });
  const reset = () => { conversation = null; chat.replaceChildren(); };
  document.getElementById("new-chat").addEventListener("click", reset);
  model.addEventListener("change", reset);
})();
