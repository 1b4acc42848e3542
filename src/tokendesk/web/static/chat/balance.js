/* The live token indicator, the low-balance banner, the pending request and the
 * "Request more tokens" dialog, kept current by the /events stream.
 */
import { $, api, fmt, showFieldError, toast } from "./common.js";
import { afterReset, dateFormatIn, drawIndicator } from "./indicator.js";

export function startBalance(boot) {
  const state = {
    balance: boot.balance,
    lowPercent: boot.low_balance_percent,
    criticalPercent: boot.critical_percent,
    maxRequest: boot.max_request,
    pending: boot.pending,
    // The debit this period opened with (0 or negative), shown on its own.
    carried: (boot.carried && boot.carried.amount) || 0,
    carriedFrom: (boot.carried && boot.carried.from) || "",
  };
  const listeners = [];
  // The indicator's look: the thresholds above, the carried debit and the date format.
  state.dateFormat = dateFormatIn(boot.timezone);

  function renderBalance() {
    // Everything on the page that shows the balance is redrawn from state.balance.
    const view = drawIndicator(state.balance, state);
    $("banner-remaining").textContent = fmt.format(Math.max(view.remaining, 0));
    $("low-banner").hidden = !(view.level === "low" || view.level === "critical");
    const empty = view.level === "empty";
    $("empty-notice").hidden = !empty;
    for (const listener of listeners) listener();
  }

  function isEmpty() {
    return state.balance.remaining <= 0;
  }

  function applyPeriodReset(data) {
    state.balance = afterReset(state.balance, data, state);
    renderBalance();
  }

  // ---- pending request

  function renderPending() {
    const pending = state.pending;
    const hadFocus = $("pending").contains(document.activeElement);
    $("pending").hidden = !pending;
    $("request-open").hidden = !!pending;
    if (pending) $("pending-amount").textContent = fmt.format(pending.amount);
    const offers = document.querySelectorAll("#empty-notice [data-open-request], #low-banner [data-open-request]");
    offers.forEach((node) => {
      node.hidden = !!pending;
    });
    $("banner-pending").hidden = !pending;
    // A cancelled or decided request takes its Cancel button away: keep keyboard focus nearby.
    if (!pending && hadFocus) $("request-open").focus();
  }

  async function refreshPending() {
    // After a reconnect the snapshot restores the balance; the pending request
    // may also have been decided meanwhile, so ask for it again.
    try {
      // Admins see others' requests too: narrow to the caller by email, then by id.
      const query = new URLSearchParams({ status: "pending", q: boot.email, limit: "50" });
      const page = await api("GET", `/api/v1/token-requests?${query}`);
      const mine = (page.items || []).find((r) => r.user && r.user.id === boot.user_id);
      state.pending = mine ? { id: mine.id, amount: mine.amount } : null;
      renderPending();
    } catch (_) {
      /* keep what we have; the next event corrects it */
    }
  }

  const announced = new Set();

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
    // A rule decides as the request is made: the reply and the live event both say
    // so, in either order, and the member hears it once.
    if (change === "approved" || change === "rejected") {
      if (announced.has(request.id)) return;
      announced.add(request.id);
    }
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
      // Disabling the button while waiting took focus away; put it where the user goes next.
      $("request-open").focus();
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
      reasonInput.value = "";
      $("reason-count").textContent = `0 / ${fmt.format(1000)}`;
      if (created.status === "pending") {
        state.pending = { id: created.id, amount: created.amount };
        renderPending();
        openedBy = $("pending-cancel");
        dialog.close();
        toast("Request sent", `${fmt.format(created.amount)} tokens. You will see the decision here.`, "");
      } else {
        // Approved by a rule already; the balance follows with its own live event.
        openedBy = $("request-open");
        dialog.close();
        onRequestUpdated({ request: created, change: created.status });
      }
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
        // A period that began while disconnected may have opened with a debit we did
        // not hear of; until the next page load it shows among the extra tokens.
        if (data.balance.period_start !== state.balance.period_start) state.carried = 0;
        state.balance = data.balance;
        renderBalance();
      }
      if (!first) refreshPending();
      first = false;
    });
    source.addEventListener("balance.changed", (event) => {
      const data = JSON.parse(event.data);
      if (data.user_id !== undefined && data.user_id !== boot.user_id) return;
      // A new reset day or time zone arrives with the organization's zone.
      if (data.timezone) state.dateFormat = dateFormatIn(data.timezone);
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
  connect();
  return {
    isEmpty,
    remaining: () => state.balance.remaining,
    hasPending: () => !!state.pending,
    onChange: (listener) => listeners.push(listener),
  };
}
