/* Conversations: the sidebar, the model picker, and replies streamed from the
 * OpenAI-compatible gateway, saved through the conversations API.
 */
import { $, api, el, fmt, toast } from "./common.js";
import { streamCompletion } from "./stream.js";

export function startConversation(boot, balance) {
  const state = {
    conversation: boot.conversation,
    history: boot.messages.slice(),
    streaming: null,
  };
  const isEmpty = balance.isEmpty;

  // ---- sidebar

  const sidebar = $("sidebar");
  const toggle = $("sidebar-toggle");
  const scrim = $("sidebar-scrim");

  function setSidebar(open) {
    sidebar.classList.toggle("open", open);
    scrim.hidden = !open;
    toggle.setAttribute("aria-expanded", String(open));
    toggle.setAttribute("aria-label", open ? "Hide conversations" : "Show conversations");
    if (open) sidebar.querySelector("a, button")?.focus();
  }
  toggle.addEventListener("click", () => setSidebar(!sidebar.classList.contains("open")));
  scrim.addEventListener("click", () => setSidebar(false));
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && sidebar.classList.contains("open")) {
      setSidebar(false);
      toggle.focus();
    }
  });

  function sidebarItem(conversation) {
    const li = el("li");
    li.dataset.id = String(conversation.id);
    const link = el("a", "", conversation.title);
    link.href = `/chat/${conversation.id}`;
    const remove = el("button", "btn-icon btn-delete");
    remove.type = "button";
    remove.dataset.delete = String(conversation.id);
    remove.dataset.title = conversation.title;
    remove.setAttribute("aria-label", `Delete conversation: ${conversation.title}`);
    remove.appendChild($("icon-trash").content.cloneNode(true));
    li.append(link, remove);
    return li;
  }

  function upsertSidebar(conversation, current) {
    const list = $("conversation-list");
    let item = list.querySelector(`li[data-id="${conversation.id}"]`);
    if (!item) {
      item = sidebarItem(conversation);
    } else {
      item.querySelector("a").textContent = conversation.title;
      const remove = item.querySelector("[data-delete]");
      remove.dataset.title = conversation.title;
      remove.setAttribute("aria-label", `Delete conversation: ${conversation.title}`);
    }
    list.prepend(item);
    if (current) {
      list.querySelectorAll("a[aria-current]").forEach((a) => a.removeAttribute("aria-current"));
      item.querySelector("a").setAttribute("aria-current", "page");
    }
    $("no-conversations").hidden = true;
  }

  const deleteDialog = $("delete-dialog");
  let deleting = null;
  $("conversation-list").addEventListener("click", (event) => {
    const button = event.target.closest("[data-delete]");
    if (!button) return;
    deleting = { id: Number(button.dataset.delete), button };
    $("delete-name").textContent = button.dataset.title || "";
    deleteDialog.returnValue = "";
    deleteDialog.showModal();
  });
  deleteDialog.addEventListener("close", async () => {
    const target = deleting;
    deleting = null;
    if (!target) return;
    if (deleteDialog.returnValue !== "delete") {
      target.button.focus();
      return;
    }
    try {
      await api("DELETE", `/api/v1/conversations/${target.id}`);
    } catch (error) {
      if (error.status !== 404) {
        toast("Could not delete the conversation", error.message, "error");
        return;
      }
    }
    if (state.conversation && state.conversation.id === target.id) {
      window.location.assign("/chat");
      return;
    }
    const item = $("conversation-list").querySelector(`li[data-id="${target.id}"]`);
    const next = item?.nextElementSibling || item?.previousElementSibling;
    item?.remove();
    $("no-conversations").hidden = $("conversation-list").children.length > 0;
    (next?.querySelector("a") || $("new-chat")).focus();
  });

  // ---- models

  const modelSelect = $("model");

  async function loadModels() {
    let models = [];
    try {
      const data = await api("GET", "/v1/models");
      models = (data && data.data) || [];
    } catch (error) {
      modelSelect.replaceChildren(el("option", "", "Models unavailable"));
      modelSelect.options[0].value = "";
      toast("Could not load the model list", error.message, "error");
      updateSendButton();
      return;
    }
    const wanted = state.conversation?.model || localStorage.getItem("tokendesk.model") || "";
    const options = models.map((model) => {
      const isDemo = model.id === "demo" || model.owned_by === "tokendesk-demo" || model.demo === true;
      const option = el("option", "", isDemo ? `${model.id} (built-in demo)` : model.id);
      option.value = model.id;
      return option;
    });
    if (wanted && !models.some((m) => m.id === wanted)) {
      const gone = el("option", "", `${wanted} (no longer available)`);
      gone.value = wanted;
      gone.disabled = true;
      options.unshift(gone);
    }
    if (!options.length) {
      const none = el("option", "", "No models configured");
      none.value = "";
      options.push(none);
    }
    modelSelect.replaceChildren(...options);
    const available = models.map((m) => m.id);
    modelSelect.value = available.includes(wanted) ? wanted : available[0] || "";
    updateSendButton();
  }

  modelSelect.addEventListener("change", async () => {
    localStorage.setItem("tokendesk.model", modelSelect.value);
    updateSendButton();
    if (state.conversation && modelSelect.value) {
      try {
        state.conversation = await api("PATCH", `/api/v1/conversations/${state.conversation.id}`, {
          model: modelSelect.value,
        });
      } catch (_) {
        /* the next message still goes to the chosen model */
      }
    }
  });

  // ---- messages and streaming

  const messages = $("messages");
  const prompt = $("prompt");

  function nearBottom() {
    return messages.scrollHeight - messages.scrollTop - messages.clientHeight < 80;
  }

  function scrollToEnd(force) {
    if (force || nearBottom()) messages.scrollTop = messages.scrollHeight;
  }

  function addMessage(role, text) {
    $("empty-state").hidden = true;
    const article = el("article", "msg msg-" + role);
    article.appendChild(el("h3", "visually-hidden", role === "user" ? "You" : "Assistant"));
    const bubble = el("div", "bubble", text);
    article.appendChild(bubble);
    messages.appendChild(article);
    scrollToEnd(true);
    return { article, bubble };
  }

  function addError(message, offerRequest) {
    const box = el("div", "alert alert-error msg-error");
    box.setAttribute("role", "alert");
    box.appendChild(el("p", "", message));
    if (offerRequest && !balance.hasPending()) {
      const button = el("button", "btn btn-primary btn-small", "Request more tokens");
      button.type = "button";
      button.dataset.openRequest = "";
      box.appendChild(button);
    }
    messages.appendChild(box);
    scrollToEnd(true);
  }

  function updateSendButton() {
    const busy = !!state.streaming;
    $("send").disabled = busy || isEmpty() || !modelSelect.value;
    $("send").hidden = busy;
    $("stop").hidden = !busy;
  }

  function autosize() {
    prompt.style.height = "auto";
    prompt.style.height = Math.min(prompt.scrollHeight, 240) + "px";
  }
  prompt.addEventListener("input", autosize);
  prompt.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("composer").requestSubmit();
    }
  });
  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    send();
  });
  $("stop").addEventListener("click", () => state.streaming && state.streaming.abort());

  async function ensureConversation() {
    if (state.conversation) return state.conversation;
    const created = await api("POST", "/api/v1/conversations", { model: modelSelect.value || null });
    state.conversation = created;
    history.replaceState(null, "", `/chat/${created.id}`);
    upsertSidebar(created, true);
    return created;
  }

  async function refreshTitle(conversationId) {
    try {
      const page = await api("GET", "/api/v1/conversations?limit=1");
      const latest = page.items && page.items[0];
      if (latest && latest.id === conversationId) {
        state.conversation = latest;
        upsertSidebar(latest, true);
        document.title = `${latest.title} · tokendesk`;
      }
    } catch (_) {
      /* the title shows after the next reload */
    }
  }

  async function send() {
    const text = prompt.value;
    if (!text.trim() || state.streaming || isEmpty() || !modelSelect.value) return;
    const model = modelSelect.value;
    let conversation;
    try {
      conversation = await ensureConversation();
      const firstMessage = state.history.length === 0;
      await api("POST", `/api/v1/conversations/${conversation.id}/messages`, {
        role: "user",
        content: text,
      });
      if (firstMessage) refreshTitle(conversation.id);
    } catch (error) {
      addError(`Your message was not sent: ${error.message}`, false);
      return;
    }
    prompt.value = "";
    autosize();
    addMessage("user", text);
    state.history.push({ role: "user", content: text });
    await streamReply(conversation, model);
    if (!isEmpty()) prompt.focus();
  }

  async function streamReply(conversation, model) {
    const controller = new AbortController();
    state.streaming = controller;
    updateSendButton();
    const { article, bubble } = addMessage("assistant", "");
    article.classList.add("streaming");
    messages.setAttribute("aria-busy", "true");
    let content = "";
    let usage = null;
    let stopped = false;
    let failure = null;
    try {
      usage = await streamCompletion({
        model,
        messages: state.history,
        signal: controller.signal,
        onDelta: (delta) => {
          content += delta;
          bubble.textContent = content;
          scrollToEnd(false);
        },
      });
    } catch (error) {
      if (error.name === "AbortError") stopped = true;
      else failure = error;
    } finally {
      state.streaming = null;
      article.classList.remove("streaming");
      messages.removeAttribute("aria-busy");
      updateSendButton();
    }
    if (stopped) article.appendChild(el("p", "msg-note muted", "Stopped"));
    if (content) {
      state.history.push({ role: "assistant", content });
      try {
        await api("POST", `/api/v1/conversations/${conversation.id}/messages`, {
          role: "assistant",
          content,
          tokens: usage?.completion_tokens ?? null,
        });
      } catch (error) {
        toast("The reply was not saved", error.message, "error");
      }
    } else {
      article.remove();
    }
    if (failure) {
      // The gateway's own message is written for API clients; say it the chat app's way.
      const message = failure.quota
        ? `Not enough tokens left for this reply (${fmt.format(Math.max(balance.remaining(), 0))} left). ` +
          "Ask for more to keep chatting."
        : `The model did not answer: ${failure.message}`;
      addError(message, !!failure.quota);
    }
  }

  function onBalance() {
    const empty = isEmpty();
    prompt.disabled = empty;
    prompt.placeholder = empty ? "Sending is paused: no tokens left" : "Message tokendesk";
    updateSendButton();
  }
  balance.onChange(onBalance);
  onBalance();
  loadModels();
  scrollToEnd(true);
  if (!isEmpty()) prompt.focus();
}
