/* Streamed chat completions from tokendesk's OpenAI-compatible gateway. */
import { ApiError, csrf } from "./common.js";

/* POST /v1/chat/completions with stream: true and read its Server-Sent Events.
 *
 * Calls onDelta(text) for every piece of the reply as it arrives and resolves
 * with the usage the gateway reports at the end (or null). Rejects with an
 * ApiError (`quota` set when the balance cannot cover the call) or, when
 * `signal` aborts, with an AbortError; what onDelta received stays delivered.
 */
export async function streamCompletion({ model, messages, signal, onDelta }) {
  const response = await fetch("/v1/chat/completions", {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json", Accept: "text/event-stream", "X-CSRF-Token": csrf },
    body: JSON.stringify({ model, messages, stream: true, stream_options: { include_usage: true } }),
    signal,
  });
  if (!response.ok) {
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      body = null;
    }
    const error = new ApiError(response.status, body);
    error.quota = response.status === 429 && body?.error?.type === "insufficient_quota";
    throw error;
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let usage = null;
  for (;;) {
    const chunk = await reader.read();
    if (chunk.done) return usage;
    buffer += decoder.decode(chunk.value, { stream: true });
    let newline;
    while ((newline = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, newline).replace(/\r$/, "");
      buffer = buffer.slice(newline + 1);
      if (!line.startsWith("data:")) continue;
      const payload = line.slice(5).trim();
      if (payload === "[DONE]") {
        reader.cancel().catch(() => {});
        return usage;
      }
      let event;
      try {
        event = JSON.parse(payload);
      } catch (_) {
        continue;
      }
      if (event.error) throw new ApiError(502, event);
      const delta = event.choices?.[0]?.delta?.content;
      if (delta) onDelta(delta);
      if (event.usage) usage = event.usage;
    }
  }
}
