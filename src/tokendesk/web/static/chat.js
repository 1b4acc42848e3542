/* tokendesk chat app: live token indicator, token requests, streamed chat, API keys.
 *
 * Plain JavaScript, no build step. Text from people or models only ever reaches
 * the page through textContent, never innerHTML.
 */
(function () {
  "use strict";

  const csrf = document.querySelector('meta[name="csrf-token"]')?.content || "";
  const $ = (id) => document.getElementById(id);
  const fmt = new Intl.NumberFormat();

  // ------------------------------------------------------------------ helpers

  class ApiError extends Error {
    constructor(status, body) {
      super((body && (body.detail || body.error?.message)) || `HTTP ${status}`);
      this.status = status;
      this.body = body || {};
    }
  }

  async function api(method, url, body) {
    const headers = { Accept: "application/json" };
    if (method !== "GET") headers["X-CSRF-Token"] = csrf;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(url, {
      method,
      headers,
      credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (response.status === 401) {
      window.location.assign("/login?next=" + encodeURIComponent(window.location.pathname));
      throw new ApiError(401, { detail: "signed out" });
    }
    if (response.status === 204) return null;
    let data = null;
    try {
      data = await response.json();
    } catch (_) {
      data = null;
    }
    if (!response.ok) throw new ApiError(response.status, data);
    return data;
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function toast(title, body, kind) {
    const box = $("toasts");
    if (!box) return;
    const item = el("div", "toast" + (kind ? " toast-" + kind : ""));
    item.appendChild(el("strong", "toast-title", title));
    if (body) item.appendChild(el("p", "toast-body", body));
    const close = el("button", "btn-icon toast-close", "×");
    close.type = "button";
    close.setAttribute("aria-label", "Dismiss notification");
    close.addEventListener("click", () => item.remove());
    item.appendChild(close);
    box.appendChild(item);
    // Long enough to read a note; the close button is there for the impatient.
    setTimeout(() => item.remove(), 12000);
  }

  function showFieldError(node, message) {
    if (!node) return;
    node.textContent = message || "";
    node.hidden = !message;
  }

  // ------------------------------------------------------------------ chat page

  function chatPage(boot) {
    const state = {
      balance: boot.balance,
      lowPercent: boot.low_balance_percent,
      criticalPercent: boot.critical_percent,
      maxRequest: boot.max_request,
      timezone: boot.timezone,
      pending: boot.pending,
      conversation: boot.conversation,
      history: boot.messages.slice(),
      streaming: null,
    };
    const dateFormat = (() => {
      try {
        return new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeZone: state.timezone });
      } catch (_) {
        return new Intl.DateTimeFormat(undefined, { dateStyle: "medium" });
      }
    })();

    // ---- token indicator (mirrors tokendesk.web.chat.indicator_for)

    function levelOf(balance) {
      const remaining = balance.remaining;
      const total = Math.max(balance.allocation + balance.granted + balance.adjusted, 0);
      const percent = total <= 0 ? 0 : Math.max(0, Math.min(100, Math.floor((remaining * 100) / total)));
      let level = "ok";
      if (remaining <= 0) level = "empty";
      else if (total <= 0 || remaining * 100 <= total * state.criticalPercent) level = "critical";
      else if (remaining * 100 < total * state.lowPercent) level = "low";
      return { remaining, total, percent, level };
    }

    function renderBalance() {
      const b = state.balance;
      const view = levelOf(b);
      const indicator = $("indicator");
      indicator.classList.remove("level-ok", "level-low", "level-critical", "level-empty");
      indicator.classList.add("level-" + view.level);
      $("ind-remaining").textContent = fmt.format(view.remaining);
      $("ind-total").textContent = fmt.format(view.total);
      $("ind-used").textContent = fmt.format(b.used);
      const extra = b.granted + b.adjusted;
      $("ind-extra").hidden = extra === 0;
      $("ind-extra-amount").textContent = (extra > 0 ? "+" : "−") + fmt.format(Math.abs(extra));
      const bar = $("ind-bar");
      bar.setAttribute("aria-valuenow", String(view.percent));
      bar.setAttribute(
        "aria-valuetext",
        `${fmt.format(view.remaining)} of ${fmt.format(view.total)} tokens left`
      );
      bar.querySelector(".meter-fill").style.width = view.percent + "%";
      const resetAt = new Date(b.next_reset_at);
      document.querySelectorAll("#ind-reset, .reset-date").forEach((node) => {
        node.setAttribute("datetime", b.next_reset_at);
        node.textContent = dateFormat.format(resetAt);
      });
      document.querySelectorAll(".js-remaining, #banner-remaining").forEach((node) => {
        node.textContent = fmt.format(Math.max(view.remaining, 0));
      });
      $("low-banner").hidden = !(view.level === "low" || view.level === "critical");
      const empty = view.level === "empty";
      $("empty-notice").hidden = !empty;
      $("prompt").disabled = empty;
      $("prompt").placeholder = empty ? "Sending is paused: no tokens left" : "Message tokendesk";
      updateSendButton();
    }

    function isEmpty() {
      return state.balance.remaining <= 0;
    }

    function applyPeriodReset(data) {
      // A new period: fresh allocation, grants and usage gone, open holds carried over.
      const reserved = state.balance.reserved || 0;
      state.balance = Object.assign({}, state.balance, {
        allocation: data.allocation,
        granted: 0,
        adjusted: 0,
        used: 0,
        remaining: data.allocation - reserved,
        period_start: data.period_start,
        next_reset_at: data.next_reset_at,
      });
      renderBalance();
    }

    // ---- pending request

    function renderPending() {
      const pending = state.pending;
      $("pending").hidden = !pending;
      $("request-open").hidden = !!pending;
      if (pending) $("pending-amount").textContent = fmt.format(pending.amount);
      document.querySelectorAll("#empty-notice [data-open-request], #low-banner [data-open-request]").forEach((node) => {
        node.hidden = !!pending;
      });
      $("banner-pending").hidden = !pending;
    }

    async function refreshPending() {
      // After a reconnect the snapshot restores the balance; the pending request
      // may also have been decided meanwhile, so ask for it again.
      try {
        const page = await api("GET", "/api/v1/token-requests?status=pending&limit=500");
        const mine = (page.items || []).find((r) => r.user && r.user.id === boot.user_id);
        state.pending = mine ? { id: mine.id, amount: mine.amount } : null;
        renderPending();
      } catch (_) {
        /* keep what we have; the next event corrects it */
      }
    }

    function onRequestUpdated(data) {
      const request = data.request || data;
      if (!request || !request.user || request.user.id !== boot.user_id) return;
      const change = data.change || request.status;
      if (change === "created") {
        state.pending = { id: request.id, amount: request.amount };
      } else if (state.pending && state.pending.id === request.id) {
        state.pending = null;
      }
      renderPending();
      if (change === "approved") {
        const granted = request.approved_amount ?? request.amount;
        toast(`Approved: +${fmt.format(granted)} tokens`, request.decision_note || "", "ok");
      } else if (change === "rejected") {
        toast("Request rejected", request.decision_note || "No note was given.", "error");
      }
    }

    $("pending-cancel").addEventListener("click", async () => {
      if (!state.pending) return;
      const button = $("pending-cancel");
      button.disabled = true;
      try {
        await api("POST", `/api/v1/token-requests/${state.pending.id}/cancel`);
        state.pending = null;
        renderPending();
        toast("Request cancelled", "", "");
      } catch (error) {
        toast("Could not cancel the request", error.message, "error");
        if (error.status === 404 || error.status === 409) refreshPending();
      } finally {
        button.disabled = false;
      }
    });

    // ---- request dialog

    const dialog = $("request-dialog");
    const amountInput = $("request-amount");
    const reasonInput = $("request-reason");
    let openedBy = null;

    function markPreset() {
      document.querySelectorAll(".preset").forEach((button) => {
        button.setAttribute("aria-pressed", String(button.dataset.amount === amountInput.value));
      });
    }

    function clearRequestErrors() {
      showFieldError($("amount-error"), "");
      showFieldError($("reason-error"), "");
      showFieldError($("request-error"), "");
      amountInput.removeAttribute("aria-invalid");
      reasonInput.removeAttribute("aria-invalid");
    }

    function openRequestDialog(trigger) {
      if (state.pending) return;
      openedBy = trigger || null;
      clearRequestErrors();
      markPreset();
      dialog.showModal();
      amountInput.focus();
      amountInput.select();
    }

    document.addEventListener("click", (event) => {
      const trigger = event.target.closest("[data-open-request]");
      if (trigger) openRequestDialog(trigger);
    });
    document.querySelectorAll(".preset").forEach((button) => {
      button.addEventListener("click", () => {
        amountInput.value = button.dataset.amount;
        markPreset();
        showFieldError($("amount-error"), "");
      });
    });
    amountInput.addEventListener("input", markPreset);
    reasonInput.addEventListener("input", () => {
      $("reason-count").textContent = `${fmt.format(reasonInput.value.length)} / ${fmt.format(1000)}`;
    });
    $("request-close").addEventListener("click", () => dialog.close());
    dialog.addEventListener("close", () => openedBy && openedBy.focus && openedBy.focus());

    $("request-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      clearRequestErrors();
      const raw = amountInput.value.trim();
      const amount = Number(raw);
      if (!/^\d+$/.test(raw) || amount <= 0) {
        amountInput.setAttribute("aria-invalid", "true");
        showFieldError($("amount-error"), "Enter a whole number of tokens greater than 0.");
        amountInput.focus();
        return;
      }
      if (amount > state.maxRequest) {
        amountInput.setAttribute("aria-invalid", "true");
        showFieldError($("amount-error"), `You can ask for at most ${fmt.format(state.maxRequest)} tokens at a time.`);
        amountInput.focus();
        return;
      }
      const submit = $("request-submit");
      submit.disabled = true;
      try {
        const reason = reasonInput.value.trim();
        const created = await api("POST", "/api/v1/token-requests", {
          amount,
          reason: reason || null,
        });
        state.pending = { id: created.id, amount: created.amount };
        renderPending();
        reasonInput.value = "";
        $("reason-count").textContent = `0 / ${fmt.format(1000)}`;
        openedBy = $("pending-cancel");
        dialog.close();
        toast("Request sent", `${fmt.format(created.amount)} tokens. You will see the decision here.`, "");
      } catch (error) {
        const errors = (error.body && error.body.errors) || [];
        let placed = false;
        for (const item of errors) {
          const field = String(item.field || "").split(".").pop();
          if (field === "amount") {
            amountInput.setAttribute("aria-invalid", "true");
            showFieldError($("amount-error"), item.message);
            placed = true;
          } else if (field === "reason") {
            reasonInput.setAttribute("aria-invalid", "true");
            showFieldError($("reason-error"), item.message);
            placed = true;
          }
        }
        if (!placed) showFieldError($("request-error"), error.message);
        if (error.status === 409) refreshPending();
      } finally {
        submit.disabled = false;
      }
    });

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
      if (offerRequest && !state.pending) {
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
        const response = await fetch("/v1/chat/completions", {
          method: "POST",
          credentials: "same-origin",
          headers: { "Content-Type": "application/json", Accept: "text/event-stream", "X-CSRF-Token": csrf },
          body: JSON.stringify({
            model,
            messages: state.history,
            stream: true,
            stream_options: { include_usage: true },
          }),
          signal: controller.signal,
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
        let done = false;
        while (!done) {
          const chunk = await reader.read();
          if (chunk.done) break;
          buffer += decoder.decode(chunk.value, { stream: true });
          let newline;
          while (!done && (newline = buffer.indexOf("\n")) >= 0) {
            const line = buffer.slice(0, newline).replace(/\r$/, "");
            buffer = buffer.slice(newline + 1);
            if (!line.startsWith("data:")) continue;
            const payload = line.slice(5).trim();
            if (payload === "[DONE]") {
              done = true;
              break;
            }
            let event;
            try {
              event = JSON.parse(payload);
            } catch (_) {
              continue;
            }
            if (event.error) throw new ApiError(502, event);
            const delta = event.choices?.[0]?.delta?.content;
            if (delta) {
              content += delta;
              bubble.textContent = content;
              scrollToEnd(false);
            }
            if (event.usage) usage = event.usage;
          }
        }
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
        const message = failure.quota
          ? failure.message
          : `The model did not answer: ${failure.message}`;
        addError(message, !!failure.quota);
      }
    }

    // ---- live updates

    function connect() {
      if (!window.EventSource) return;
      const source = new EventSource("/events");
      let first = true;
      source.addEventListener("snapshot", (event) => {
        const data = JSON.parse(event.data);
        // Lets people (and browser tests) tell a live page from one still connecting.
        document.documentElement.dataset.events = "live";
        if (data.balance) {
          state.balance = data.balance;
          renderBalance();
        }
        if (!first) refreshPending();
        first = false;
      });
      source.addEventListener("balance.changed", (event) => {
        const data = JSON.parse(event.data);
        if (data.user_id !== undefined && data.user_id !== boot.user_id) return;
        state.balance = Object.assign({}, state.balance, data);
        renderBalance();
      });
      source.addEventListener("period.reset", (event) => {
        const data = JSON.parse(event.data);
        if (data.user_id !== undefined && data.user_id !== boot.user_id) return;
        applyPeriodReset(data);
      });
      source.addEventListener("request.updated", (event) => onRequestUpdated(JSON.parse(event.data)));
      // EventSource reconnects by itself; the fresh snapshot then makes everything right again.
      source.addEventListener("error", () => {
        document.documentElement.dataset.events = "reconnecting";
      });
    }

    renderBalance();
    renderPending();
    loadModels();
    connect();
    scrollToEnd(true);
    if (!isEmpty()) prompt.focus();
  }

  // ------------------------------------------------------------------ settings page

  function settingsPage() {
    const form = $("key-form");
    const nameInput = $("key-name");
    const body = $("keys-body");

    function keyRow(key) {
      const row = el("tr");
      row.dataset.keyId = String(key.id);
      row.appendChild(el("td", "", key.name));
      row.appendChild(el("td", "mono", key.prefix + "…"));
      const created = new Intl.DateTimeFormat(undefined, { dateStyle: "medium" });
      row.appendChild(el("td", "", created.format(new Date(key.created_at))));
      row.appendChild(el("td", "", "never"));
      const status = el("td", "key-status");
      status.appendChild(el("span", "pill pill-approved", "active"));
      row.appendChild(status);
      const actions = el("td", "num");
      const revoke = el("button", "btn btn-small", "Revoke");
      revoke.type = "button";
      revoke.dataset.revoke = String(key.id);
      revoke.dataset.name = key.name;
      revoke.appendChild(el("span", "visually-hidden", ` key ${key.name}`));
      actions.appendChild(revoke);
      row.appendChild(actions);
      return row;
    }

    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      showFieldError($("key-name-error"), "");
      nameInput.removeAttribute("aria-invalid");
      const name = nameInput.value.trim();
      if (!name) {
        nameInput.setAttribute("aria-invalid", "true");
        showFieldError($("key-name-error"), "Give the key a name, so you can tell your keys apart.");
        nameInput.focus();
        return;
      }
      $("key-create").disabled = true;
      try {
        const created = await api("POST", "/api/v1/me/api-keys", { name });
        $("new-key-value").value = created.key;
        $("copy-status").textContent = "";
        $("new-key").hidden = false;
        body.prepend(keyRow(created));
        $("no-keys").hidden = true;
        nameInput.value = "";
        $("new-key-value").focus();
        $("new-key-value").select();
      } catch (error) {
        const field = (error.body?.errors || []).find((e) => String(e.field).endsWith("name"));
        nameInput.setAttribute("aria-invalid", "true");
        showFieldError($("key-name-error"), field ? field.message : error.message);
      } finally {
        $("key-create").disabled = false;
      }
    });

    $("copy-key").addEventListener("click", async () => {
      const input = $("new-key-value");
      try {
        await navigator.clipboard.writeText(input.value);
      } catch (_) {
        // Clipboard API needs a secure context; fall back to the selection.
        input.select();
        document.execCommand("copy");
      }
      $("copy-status").textContent = "Copied to the clipboard.";
    });

    const dialog = $("revoke-dialog");
    let target = null;
    body.addEventListener("click", (event) => {
      const button = event.target.closest("[data-revoke]");
      if (!button) return;
      target = button;
      $("revoke-name").textContent = button.dataset.name || "";
      showFieldError($("revoke-error"), "");
      dialog.showModal();
    });
    dialog.querySelector("form").addEventListener("submit", async (event) => {
      if (event.submitter?.value !== "revoke" || !target) return;
      event.preventDefault();
      const id = target.dataset.revoke;
      try {
        await api("DELETE", `/api/v1/me/api-keys/${id}`);
      } catch (error) {
        if (error.status !== 404 && error.status !== 409) {
          showFieldError($("revoke-error"), error.message);
          return;
        }
      }
      const row = target.closest("tr");
      row.querySelector(".key-status").replaceChildren(el("span", "pill pill-cancelled", "revoked"));
      target.remove();
      target = null;
      dialog.close();
      nameInput.focus();
    });
  }

  // ------------------------------------------------------------------ start

  function accountMenu() {
    // <details> opens and closes with the keyboard by itself; also close it on
    // Escape and on a click elsewhere, as people expect of a menu.
    const menu = document.querySelector(".usermenu");
    if (!menu) return;
    document.addEventListener("click", (event) => {
      if (menu.open && !menu.contains(event.target)) menu.open = false;
    });
    menu.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && menu.open) {
        menu.open = false;
        menu.querySelector("summary").focus();
      }
    });
  }

  function start() {
    accountMenu();
    const boot = $("chat-boot");
    if (boot) chatPage(JSON.parse(boot.textContent));
    if ($("key-form")) settingsPage();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
