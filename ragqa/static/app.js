// The ragqa page. Everything from the server (answers, passages, titles, URLs) is untrusted text: it is only
// ever put into the page with textContent / createTextNode, never as HTML. No inline script: the page's CSP
// allows scripts from this origin only.
"use strict";

const $ = (id) => document.getElementById(id);
let sources = [];

function setStatus(text) { $("status").textContent = text; }

function showError(text) {
  const box = $("error");
  box.textContent = text;
  box.hidden = !text;
}

function safeUrl(url) {
  // Only http(s) links; anything else (javascript:, data:) is shown as text.
  try {
    const u = new URL(url);
    return (u.protocol === "http:" || u.protocol === "https:") ? u.href : null;
  } catch (e) { return null; }
}

function showPassage(n) {
  const p = sources.find((s) => s.n === n);
  if (!p) return;
  $("passage-title").textContent = `[${n}] ${p.title || p.id}`;
  const meta = $("passage-meta");
  meta.replaceChildren();
  meta.append(document.createTextNode([p.source, p.id, `score ${p.score}`].filter(Boolean).join(" · ")));
  const href = p.url && safeUrl(p.url);
  if (href) {
    meta.append(document.createTextNode(" · "));
    const a = document.createElement("a");
    a.href = href;
    a.rel = "noopener noreferrer";
    a.textContent = p.url;
    meta.append(a);
  }
  $("passage-text").textContent = p.text;
  const box = $("passage");
  box.hidden = false;
  box.focus();
}

function citeButton(n) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = "cite";
  b.textContent = `[${n}]`;
  b.setAttribute("aria-label", `Show source ${n}`);
  b.addEventListener("click", () => showPassage(n));
  return b;
}

function renderAnswer(text) {
  // Text with [n] markers -> text nodes and buttons that open passage n.
  const el = $("answer");
  el.replaceChildren();
  const parts = text.split(/\[(\d+)\]/);
  parts.forEach((part, i) => {
    if (i % 2 === 0) { if (part) el.append(document.createTextNode(part)); return; }
    const n = Number(part);
    el.append(sources.some((s) => s.n === n) ? citeButton(n) : document.createTextNode(`[${n}]`));
  });
}

function renderSources() {
  const list = $("sources");
  list.replaceChildren();
  for (const s of sources) {
    const li = document.createElement("li");
    li.value = s.n;
    const b = citeButton(s.n);
    b.className = "source";
    b.textContent = s.title || s.id;
    li.append(b);
    if (s.source) li.append(document.createTextNode(` (${s.source})`));
    list.append(li);
  }
}

async function ask(question) {
  const headers = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) headers.Authorization = `Bearer ${key}`;
  const res = await fetch("/v1/chat/completions", {
    method: "POST", headers,
    body: JSON.stringify({ model: "ragqa", stream: true, messages: [{ role: "user", content: question }] }),
  });
  if (!res.ok) {
    let msg = `${res.status} ${res.statusText}`;
    try { msg = (await res.json()).error.message; } catch (e) { /* keep the status line */ }
    if (res.status === 503 && res.headers.get("Retry-After")) msg += ` (retry in ${res.headers.get("Retry-After")} s)`;
    throw new Error(msg);
  }
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  const answer = $("answer");
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return;
        const msg = JSON.parse(data);
        if (msg.error) throw new Error(msg.error.message);
        const delta = msg.choices[0].delta;
        if (delta.content) {
          answer.append(document.createTextNode(delta.content));
          setStatus("Answering…");
        }
        if (msg.sources) {
          sources = msg.sources;
          $("abstained").hidden = !msg.abstained;
          renderSources();
          renderAnswer(msg.answer);
        }
      }
    }
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("ask-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const question = $("question").value.trim();
    if (!question) { showError("Type a question first."); return; }
    showError("");
    sources = [];
    $("answer").replaceChildren();
    $("sources").replaceChildren();
    $("passage").hidden = true;
    $("abstained").hidden = true;
    $("ask-button").disabled = true;
    setStatus("Waiting for the model…");
    try {
      await ask(question);
      setStatus("Done.");
    } catch (e) {
      showError(`Error: ${e.message}`);
      setStatus("");
    } finally {
      $("ask-button").disabled = false;
    }
  });
  $("question").addEventListener("keydown", (event) => {
    // Enter asks, Shift+Enter starts a new line.
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      $("ask-form").requestSubmit();
    }
  });
});
