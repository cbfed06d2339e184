// The chat page: talks to this server's own /v1 API with relative URLs, keeps the
// conversations in localStorage, and renders the model's text as text. Nothing the
// model writes is ever parsed as HTML: every node is built with textContent.
"use strict";

const STORE = "nanovllm.conversations";
const CURRENT = "nanovllm.current";
const KEY = "nanovllm.apiKey"; // typed by the user; the page itself carries no secret
const SETTINGS = ["model", "system", "temperature", "top_p", "max_tokens", "seed"];
const $ = (id) => document.getElementById(id);

let conversations = JSON.parse(localStorage.getItem(STORE) || "[]");
let currentId = localStorage.getItem(CURRENT);
let running = null; // the AbortController of the answer being streamed

// --- the API

class ApiError extends Error {}

async function api(path, options = {}) {
  const headers = { "Content-Type": "application/json", ...(options.headers || {}) };
  const key = localStorage.getItem(KEY);
  if (key) headers.Authorization = `Bearer ${key}`;
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401) {
    $("key-form").hidden = false;
    throw new ApiError("This server needs an API key: enter it above the message box.");
  }
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try { message = (await response.json()).error.message || message; } catch (_) { /* not JSON */ }
    throw new ApiError(message);
  }
  return response;
}

async function* serverSentEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return;
        yield JSON.parse(data);
      }
    }
  }
}

// --- rendering, as text

function inline(parent, text) {
  // `code`, **bold**, *italic*; everything else as text
  const pattern = /(`[^`]+`|\*\*[^*]+\*\*|\*[^*\s][^*]*\*)/g;
  let last = 0;
  for (const match of text.matchAll(pattern)) {
    parent.append(text.slice(last, match.index));
    const token = match[0];
    const [tag, body] = token.startsWith("`") ? ["code", token.slice(1, -1)]
      : token.startsWith("**") ? ["strong", token.slice(2, -2)] : ["em", token.slice(1, -1)];
    const node = document.createElement(tag);
    node.textContent = body;
    parent.append(node);
    last = match.index + token.length;
  }
  parent.append(text.slice(last));
}

function markdown(text) {
  const fragment = document.createDocumentFragment();
  const parts = text.split(/^```[^\n]*\n?/m);
  parts.forEach((part, index) => {
    if (index % 2 === 1) { // inside a fenced block (an unclosed one while it streams)
      const pre = document.createElement("pre");
      const code = document.createElement("code");
      code.textContent = part.replace(/\n$/, "");
      pre.append(code);
      fragment.append(pre);
      return;
    }
    for (const block of part.split(/\n{2,}/)) {
      if (!block.trim()) continue;
      const lines = block.split("\n");
      const bullet = /^\s*([-*]|\d+\.)\s+/;
      if (lines.every((line) => bullet.test(line))) {
        const list = document.createElement(/^\s*\d/.test(lines[0]) ? "ol" : "ul");
        for (const line of lines) {
          const item = document.createElement("li");
          inline(item, line.replace(bullet, ""));
          list.append(item);
        }
        fragment.append(list);
      } else {
        const paragraph = document.createElement("p");
        inline(paragraph, block);
        fragment.append(paragraph);
      }
    }
  });
  return fragment;
}

function messageNode(message) {
  const node = document.createElement("div");
  node.className = `message ${message.role}`;
  const role = document.createElement("div");
  role.className = "role";
  role.textContent = message.role;
  node.append(role);
  if (message.reasoning) {
    const details = document.createElement("details");
    details.className = "reasoning";
    const summary = document.createElement("summary");
    summary.textContent = "Reasoning";
    const body = document.createElement("p");
    body.textContent = message.reasoning;
    details.append(summary, body);
    node.append(details);
  }
  const content = document.createElement("div");
  content.className = "content";
  content.append(markdown(message.content || ""));
  node.append(content);
  for (const call of message.tool_calls || []) {
    const block = document.createElement("div");
    block.className = "tool-call";
    block.textContent = `tool call: ${call.name}(${call.arguments})`;
    node.append(block);
  }
  return node;
}

// --- conversations

function current() {
  let conversation = conversations.find((c) => c.id === currentId);
  if (!conversation) {
    conversation = { id: String(Date.now()), title: "New chat", messages: [] };
    conversations.unshift(conversation);
    currentId = conversation.id;
  }
  return conversation;
}

function save() {
  localStorage.setItem(STORE, JSON.stringify(conversations));
  localStorage.setItem(CURRENT, currentId);
}

function render() {
  const conversation = current();
  $("messages").replaceChildren(...conversation.messages.map(messageNode));
  $("messages").scrollTop = $("messages").scrollHeight;
  $("conversations").replaceChildren(...conversations.map((c) => {
    const item = document.createElement("li");
    item.textContent = c.title;
    item.className = c.id === currentId ? "current" : "";
    item.onclick = () => { if (!running) { currentId = c.id; save(); render(); } };
    return item;
  }));
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

// --- sending

function requestBody(conversation) {
  const messages = [];
  const system = $("system").value.trim();
  if (system) messages.push({ role: "system", content: system });
  for (const m of conversation.messages) messages.push({ role: m.role, content: m.content || "" });
  const body = { model: $("model").value || undefined, messages, stream: true,
    temperature: Number($("temperature").value), top_p: Number($("top_p").value),
    max_tokens: Number($("max_tokens").value) };
  if ($("seed").value !== "") body.seed = Number($("seed").value);
  return body;
}

function applyDelta(answer, delta) {
  if (delta.content) answer.content += delta.content;
  const reasoning = delta.reasoning_content || delta.reasoning;
  if (reasoning) answer.reasoning = (answer.reasoning || "") + reasoning;
  for (const call of delta.tool_calls || []) {
    answer.tool_calls = answer.tool_calls || [];
    const entry = answer.tool_calls[call.index] || (answer.tool_calls[call.index] = { name: "", arguments: "" });
    if (call.function && call.function.name) entry.name = call.function.name;
    if (call.function && call.function.arguments) entry.arguments += call.function.arguments;
  }
}

async function send(text) {
  const conversation = current();
  showError("");
  conversation.messages.push({ role: "user", content: text });
  if (conversation.title === "New chat") conversation.title = text.slice(0, 40);
  const answer = { role: "assistant", content: "" };
  const body = requestBody(conversation);
  conversation.messages.push(answer);
  render();
  let node = $("messages").lastElementChild;
  running = new AbortController();
  $("send").hidden = true;
  $("stop").hidden = false;
  try {
    const response = await api("v1/chat/completions", { method: "POST", body: JSON.stringify(body),
      signal: running.signal });
    for await (const chunk of serverSentEvents(response)) {
      if (chunk.error) throw new ApiError(chunk.error.message);
      for (const choice of chunk.choices) applyDelta(answer, choice.delta || {});
      const fresh = messageNode(answer);
      node.replaceWith(fresh);
      node = fresh;
      $("messages").scrollTop = $("messages").scrollHeight;
    }
  } catch (error) {
    if (error.name !== "AbortError") showError(error.message);
  } finally {
    running = null;
    $("send").hidden = false;
    $("stop").hidden = true;
    if (!answer.content && !answer.tool_calls && !answer.reasoning) conversation.messages.pop();
    save();
    render();
  }
}

// --- the models and the status strip

async function loadModels() {
  try {
    const models = (await (await api("v1/models")).json()).data;
    const select = $("model");
    const chosen = localStorage.getItem("nanovllm.setting.model");
    select.replaceChildren(...models.map((m) => new Option(m.id, m.id, false, m.id === chosen)));
  } catch (error) {
    showError(error.message);
  }
}

let lastTokens = null;
async function refreshStatus() {
  try {
    const stats = await (await fetch("stats")).json();
    const now = performance.now();
    const rate = lastTokens ? (stats.generated_tokens - lastTokens.count) / ((now - lastTokens.at) / 1000) : 0;
    lastTokens = { count: stats.generated_tokens, at: now };
    $("status").textContent = `${stats.model} · ${stats.state} · running ${stats.running} · waiting ${stats.waiting}`
      + ` · ${rate.toFixed(1)} tok/s`;
  } catch (_) {
    $("status").textContent = "the server does not answer";
  }
}

// --- wiring

for (const name of SETTINGS) {
  const field = $(name);
  const stored = localStorage.getItem(`nanovllm.setting.${name}`);
  if (stored !== null && name !== "model") field.value = stored;
  field.addEventListener("change", () => localStorage.setItem(`nanovllm.setting.${name}`, field.value));
}

$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("prompt").value.trim();
  if (!text || running) return;
  $("prompt").value = "";
  send(text);
});
$("prompt").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) {
    event.preventDefault();
    $("composer").requestSubmit();
  }
});
$("stop").addEventListener("click", () => running && running.abort());
$("new-chat").addEventListener("click", () => {
  if (running) return;
  currentId = null;
  current();
  save();
  render();
});
$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  localStorage.setItem(KEY, $("api-key").value);
  $("key-form").hidden = true;
  showError("");
  loadModels();
});

render();
loadModels();
refreshStatus();
setInterval(refreshStatus, 2000);
