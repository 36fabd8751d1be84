// The hub's playground: a streamed chat (or text continuation) against the cluster. It reads
// the models from /v1/models, streams each answer as server-sent events and shows which worker
// served it (the X-GoLlama-Worker header), the time to the first token and tokens per second.
// A hub with API keys answers 401: the page then asks for a key and keeps it in this tab only.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY = "gollama-playground-key";
let history = [];  // the chat so far: [{role, content}]
let running = null;  // the AbortController of the answer being streamed

function headers() {
  const key = sessionStorage.getItem(KEY);
  const h = { "Content-Type": "application/json" };
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

function status(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "muted";
}

async function loadModels() {
  const reply = await fetch("/v1/models", { headers: headers() });
  if (reply.status === 401) {
    $("key-form").hidden = false;
    $("key").focus();
    status("this hub asks for an API key");
    return false;
  }
  const body = await reply.json();
  if (!reply.ok) {
    status(`/v1/models answered ${reply.status}: ${body.error ? body.error.message : ""}`, true);
    return false;
  }
  $("key-form").hidden = true;
  const select = $("model");
  select.replaceChildren();
  for (const model of body.data) {
    const option = document.createElement("option");
    option.value = model.id;
    option.textContent = `${model.id} (${model.workers.length} worker${model.workers.length === 1 ? "" : "s"})`;
    select.append(option);
  }
  status(body.data.length ? "" : "no healthy worker serves a model yet", !body.data.length);
  return body.data.length > 0;
}

function addTurn(who, role, text = "") {
  const turn = document.createElement("div");
  turn.className = `turn ${role}`;
  const label = document.createElement("span");
  label.className = "who";
  label.textContent = who;
  const content = document.createElement("span");
  content.className = "text";
  content.textContent = text;
  turn.append(label, content);
  $("conversation").append(turn);
  return turn;
}

// Reads server-sent events from a fetch body; calls onEvent with each `data:` payload.
async function readEvents(body, onEvent) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let pending = "";
  for (;;) {
    const { done, value } = await reader.read();
    if (done) return;
    pending += decoder.decode(value, { stream: true });
    const events = pending.replace(/\r\n/g, "\n").split("\n\n");
    pending = events.pop();
    for (const event of events) {
      for (const line of event.split("\n")) {
        if (line.startsWith("data:")) onEvent(line.slice(5).trim());
      }
    }
  }
}

async function send(event) {
  event.preventDefault();
  const prompt = $("prompt").value;
  if (!prompt.trim() || running) return;
  const mode = $("mode").value;
  const body = {
    model: $("model").value || undefined,
    stream: true,
    max_tokens: Number($("max-tokens").value) || 128,
    temperature: Number($("temperature").value),
  };
  // a stop string, typed with \n for a line break
  const stopAt = $("stop-at").value.replace(/\\n/g, "\n").replace(/\\t/g, "\t");
  if (stopAt) body.stop = [stopAt];
  let path;
  if (mode === "chat") {
    history.push({ role: "user", content: prompt });
    body.messages = history;
    body.stream_options = { include_usage: true };
    path = "/v1/chat/completions";
    addTurn("you", "user", prompt);
  } else {
    body.prompt = prompt;
    path = "/v1/completions";
    addTurn("text", "user", prompt);
  }
  $("prompt").value = "";
  const turn = addTurn("…", "assistant");
  const text = turn.querySelector(".text");
  running = new AbortController();
  $("send").disabled = true;
  $("stop").disabled = false;
  status("waiting for a worker …");
  const started = performance.now();
  let firstAt = null;
  let pieces = 0;
  let tokens = null;
  let reply = "";
  let complete = false;
  try {
    const response = await fetch(path, {
      method: "POST", headers: headers(), body: JSON.stringify(body), signal: running.signal,
    });
    const worker = response.headers.get("X-GoLlama-Worker") || "?";
    turn.querySelector(".who").textContent = worker;
    if (!response.ok) {
      const error = await response.json().catch(() => ({}));
      if (response.status === 401) $("key-form").hidden = false;
      throw new Error(`${response.status}: ${error.error ? error.error.message : response.statusText}`);
    }
    status(`streaming from ${worker} …`);
    await readEvents(response.body, (data) => {
      if (data === "[DONE]") { complete = true; return; }
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message || "the stream broke off");
      const choice = (chunk.choices || [])[0] || {};
      const piece = choice.text ?? (choice.delta || {}).content ?? "";
      if (piece) {
        if (firstAt === null) firstAt = performance.now();
        pieces += 1;
        reply += piece;
        text.textContent = reply;
      }
      if (chunk.timings && Number.isInteger(chunk.timings.predicted_n)) tokens = chunk.timings.predicted_n;
      else if (chunk.usage && Number.isInteger(chunk.usage.completion_tokens)) tokens = chunk.usage.completion_tokens;
    });
    const done = performance.now();
    const count = tokens ?? pieces;
    const streaming = firstAt === null ? 0 : (done - firstAt) / 1000;
    const ttft = firstAt === null ? "–" : `${((firstAt - started) / 1000).toFixed(2)} s`;
    const rate = streaming > 0 ? `${(count / streaming).toFixed(1)} tokens/s` : "–";
    $("stats").textContent = `worker ${worker} · time to first token ${ttft} · ${count} tokens · ${rate}`;
    $("stats").dataset.worker = worker;
    status(complete ? "" : "the answer ended without [DONE]", !complete);
    if (mode === "chat") history.push({ role: "assistant", content: reply });
  } catch (error) {
    turn.classList.add("failed");
    if (mode === "chat") history.pop();
    status(error.name === "AbortError" ? "stopped" : `failed: ${error.message}`, error.name !== "AbortError");
  } finally {
    running = null;
    $("send").disabled = false;
    $("stop").disabled = true;
  }
}

$("ask").addEventListener("submit", send);
$("stop").addEventListener("click", () => running && running.abort());
$("clear").addEventListener("click", () => {
  history = [];
  $("conversation").replaceChildren();
  $("stats").textContent = "";
});
$("prompt").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) send(event);
});
$("key-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  sessionStorage.setItem(KEY, $("key").value.trim());
  $("key").value = "";
  if (!(await loadModels())) $("key-error").textContent = "the hub did not accept this key";
  else $("key-error").textContent = "";
});
loadModels().catch((error) => status(`cannot reach the hub: ${error.message}`, true));
