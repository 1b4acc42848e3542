/* The token indicator (templates/chat/_indicator.html), drawn from a balance: shared by
 * the chat app and the request page a personal link opens.
 */
import { $, fmt } from "./common.js";

export function dateFormatIn(timeZone) {
  try {
    return new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeZone });
  } catch (_) {
    return new Intl.DateTimeFormat(undefined, { dateStyle: "medium" });
  }
}

/* Bar and colour (mirrors tokendesk.web.chat.indicator_for). `look` carries the debit
 * the period opened with (`carried`, 0 or negative) and the organization's thresholds. */
export function levelOf(balance, look) {
  const remaining = balance.remaining;
  const total = Math.max(balance.allocation + balance.granted + balance.adjusted - look.carried, 0);
  const percent = total <= 0 ? 0 : Math.max(0, Math.min(100, Math.floor((remaining * 100) / total)));
  let level = "ok";
  if (remaining <= 0) level = "empty";
  else if (total <= 0 || remaining * 100 <= total * look.criticalPercent) level = "critical";
  else if (remaining * 100 < total * look.lowPercent) level = "low";
  return { remaining, total, percent, level };
}

/* Redraw every part of the indicator, the page's reset dates (.reset-date) and its
 * remaining figures (.js-remaining); returns what levelOf found. */
export function drawIndicator(balance, look) {
  const view = levelOf(balance, look);
  const indicator = $("indicator");
  indicator.classList.remove("level-ok", "level-low", "level-critical", "level-empty");
  indicator.classList.add("level-" + view.level);
  $("ind-remaining").textContent = fmt.format(view.remaining);
  $("ind-total").textContent = fmt.format(view.total);
  $("ind-used").textContent = fmt.format(balance.used);
  const extra = balance.granted + balance.adjusted - look.carried;
  $("ind-carried").hidden = look.carried === 0;
  $("ind-carried-text").textContent =
    "−" + fmt.format(Math.abs(look.carried)) + " carried from " + look.carriedFrom;
  $("ind-extra").hidden = extra === 0;
  $("ind-extra-amount").textContent = (extra > 0 ? "+" : "−") + fmt.format(Math.abs(extra));
  const bar = $("ind-bar");
  bar.setAttribute("aria-valuenow", String(view.percent));
  bar.setAttribute("aria-valuetext", `${fmt.format(view.remaining)} of ${fmt.format(view.total)} tokens left`);
  bar.querySelector(".meter-fill").style.width = view.percent + "%";
  const resetAt = new Date(balance.next_reset_at);
  document.querySelectorAll("#ind-reset, .reset-date").forEach((node) => {
    node.setAttribute("datetime", balance.next_reset_at);
    node.textContent = look.dateFormat.format(resetAt);
  });
  document.querySelectorAll(".js-remaining").forEach((node) => {
    node.textContent = fmt.format(Math.max(view.remaining, 0));
  });
  return view;
}

/* The balance a `period.reset` event leaves: a fresh allocation, grants and usage gone,
 * open holds carried over, and the debit the last period ended with, if any, carried too.
 * Returns the new balance; `look.carried` and `look.carriedFrom` are updated in place. */
export function afterReset(balance, data, look) {
  const reserved = balance.reserved || 0;
  look.carried = data.carried || 0;
  look.carriedFrom = data.carried_from || "";
  return Object.assign({}, balance, {
    allocation: data.allocation,
    granted: 0,
    adjusted: look.carried,
    used: 0,
    remaining: data.allocation + look.carried - reserved,
    period_start: data.period_start,
    next_reset_at: data.next_reset_at,
  });
}
