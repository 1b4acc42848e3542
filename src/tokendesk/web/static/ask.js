/* The request page a personal link opens (/ask/<token>): the balance and the request's
 * status stay current from the link's own event stream, with no reload. The forms
 * themselves are plain HTML posts; this only keeps what the page shows true.
 */
import { $, fmt } from "./chat/common.js";
import { afterReset, dateFormatIn, drawIndicator } from "./chat/indicator.js";

const boot = JSON.parse($("ask-boot").textContent);
const look = {
  lowPercent: boot.low_balance_percent,
  criticalPercent: boot.critical_percent,
  carried: (boot.carried && boot.carried.amount) || 0,
  carriedFrom: (boot.carried && boot.carried.from) || "",
  dateFormat: dateFormatIn(boot.timezone),
};
let balance = boot.balance;
let pending = boot.pending;

function renderBalance() {
  const view = drawIndicator(balance, look);
  $("empty-notice").hidden = view.level !== "empty";
}

function renderPending() {
  $("ask-pending").hidden = !pending;
  $("ask-new").hidden = !!pending;
  $("empty-ask").hidden = !!pending;
  $("empty-wait").hidden = !pending;
  if (pending) {
    $("pending-amount").textContent = fmt.format(pending.amount);
    $("cancel-id").value = String(pending.id);
  }
}

function showDecision(kind, text) {
  const box = $("decision");
  box.className = "alert" + (kind ? " alert-" + kind : "");
  box.textContent = text;
  box.hidden = false;
  const outcome = $("outcome");
  if (outcome) outcome.hidden = true;
}

function onRequestUpdated(data) {
  const request = data.request || {};
  if (!request.user || request.user.id !== boot.user_id) return;
  const change = data.change || request.status;
  if (change === "created") {
    pending = { id: request.id, amount: request.amount };
  } else if (pending && pending.id === request.id) {
    pending = null;
  }
  renderPending();
  const note = request.decision_note ? ` Note: “${request.decision_note}”` : "";
  if (change === "approved") {
    const granted = request.approved_amount ?? request.amount;
    showDecision("ok", `Approved: ${fmt.format(granted)} tokens were added to your balance.${note}`);
  } else if (change === "rejected") {
    showDecision("error", `Your request for ${fmt.format(request.amount)} tokens was rejected.${note || " No note was given."}`);
  } else if (change === "cancelled") {
    showDecision("", "Your request was cancelled.");
  }
}

function setLive(state, text) {
  // Lets people (and browser tests) tell a live page from one still connecting.
  document.documentElement.dataset.events = state;
  $("live").dataset.state = state;
  $("live-text").textContent = text;
}

function connect() {
  if (!window.EventSource) {
    setLive("off", "Reload the page to see changes.");
    return;
  }
  const source = new EventSource(boot.events_url);
  source.addEventListener("snapshot", (event) => {
    const data = JSON.parse(event.data);
    setLive("live", "This page updates by itself.");
    if (data.balance.period_start !== balance.period_start) look.carried = 0;
    balance = data.balance;
    pending = data.pending;
    renderBalance();
    renderPending();
  });
  source.addEventListener("balance.changed", (event) => {
    const data = JSON.parse(event.data);
    if (data.user_id !== undefined && data.user_id !== boot.user_id) return;
    if (data.timezone) look.dateFormat = dateFormatIn(data.timezone);
    balance = Object.assign({}, balance, data);
    renderBalance();
  });
  source.addEventListener("period.reset", (event) => {
    const data = JSON.parse(event.data);
    if (data.user_id !== undefined && data.user_id !== boot.user_id) return;
    balance = afterReset(balance, data, look);
    renderBalance();
  });
  source.addEventListener("request.updated", (event) => onRequestUpdated(JSON.parse(event.data)));
  source.addEventListener("error", () => {
    // A refused reconnection (the link expired, the account was deactivated) closes the
    // stream for good; a dropped one is retried by the browser.
    if (source.readyState === EventSource.CLOSED) {
      const expired = Date.now() >= Date.parse(boot.expires_at);
      setLive("closed", expired ? "This link has expired: reload the page for what to do next." : "Live updates stopped: reload the page.");
    } else {
      setLive("reconnecting", "Reconnecting…");
    }
  });
}

const amountInput = $("request-amount");
function markPreset() {
  document.querySelectorAll(".preset").forEach((button) => {
    button.setAttribute("aria-pressed", String(button.dataset.amount === amountInput.value.replace(/[,\s_]/g, "")));
  });
}
document.querySelectorAll(".preset").forEach((button) => {
  button.addEventListener("click", () => {
    amountInput.value = button.dataset.amount;
    markPreset();
  });
});
amountInput.addEventListener("input", markPreset);
markPreset();

function showExpiry() {
  const node = $("expires-at");
  try {
    const format = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short", timeZone: boot.timezone });
    node.textContent = format.format(new Date(boot.expires_at));
  } catch (_) {
    /* the server's wording stays */
  }
}

showExpiry();
renderBalance();
renderPending();
connect();
