// tokendesk admin center: live queue over /events, selection, dialogs and toasts.
// Plain JS on top of htmx; the server renders every fragment.
(function () {
  "use strict";

  const REFRESH_DEBOUNCE_MS = 200;
  const BALANCE_REFRESH_MS = 30000;
  const TOAST_MS = 6000;

  const $ = (selector, root) => (root || document).querySelector(selector);
  const $$ = (selector, root) => Array.from((root || document).querySelectorAll(selector));
  const fmt = (n) => Number(n).toLocaleString("en-US");

  // ------------------------------------------------------------ toasts

  function toast(message, kind) {
    const box = $("#toasts");
    if (!box) return;
    const item = document.createElement("div");
    item.className = "toast toast-" + (kind || "ok");
    item.textContent = message;
    box.appendChild(item);
    setTimeout(() => item.remove(), TOAST_MS);
  }

  // ------------------------------------------------------------ dialog

  let opener = null;

  function dialog() {
    return $("#admin-dialog");
  }

  function openDialog() {
    const d = dialog();
    if (!d || d.open) return;
    const active = document.activeElement;
    opener = active && active.id ? active.id : null;
    d.showModal();
    const first = $("[autofocus]", d);
    if (first) first.focus();
  }

  function closeDialog() {
    const d = dialog();
    if (d && d.open) d.close();
  }

  function onDialogClosed() {
    $("#dialog-content").innerHTML = "";
    // The button that opened the dialog may have been re-rendered by a live refresh.
    const back = opener && document.getElementById(opener);
    if (back) back.focus();
    opener = null;
  }

  // ------------------------------------------------------------ badge

  function setBadge(count) {
    const badge = $("#pending-badge");
    if (!badge) return;
    badge.textContent = String(count);
    badge.dataset.count = String(count);
    badge.hidden = count === 0;
    badge.classList.toggle("badge-hot", count > 0);
    badge.setAttribute("aria-label", count + " pending");
  }

  // ------------------------------------------------------------ selection

  const selection = { ids: new Map(), matching: false };
  let liveSwap = false;

  function queue() {
    return $("#queue");
  }

  function rowBoxes() {
    return $$("#queue .row-select");
  }

  function clearSelection() {
    selection.ids.clear();
    selection.matching = false;
    applySelection();
  }

  function applySelection() {
    for (const box of rowBoxes()) {
      box.checked = selection.matching || selection.ids.has(Number(box.value));
    }
    updateBulkBar();
  }

  function keepVisibleSelection() {
    // A request decided elsewhere leaves the view; it leaves the selection with it.
    const visible = new Set(rowBoxes().map((box) => Number(box.value)));
    for (const id of Array.from(selection.ids.keys())) {
      if (!visible.has(id)) selection.ids.delete(id);
    }
    applySelection();
  }

  function updateBulkBar() {
    const bar = $("#bulk-bar");
    const q = queue();
    if (!bar || !q) return;
    const boxes = rowBoxes();
    const checked = boxes.filter((box) => box.checked);
    const pageAll = boxes.length > 0 && checked.length === boxes.length;
    const selectPage = $("#select-page");
    if (selectPage) {
      selectPage.checked = pageAll;
      selectPage.indeterminate = !pageAll && checked.length > 0;
      selectPage.disabled = boxes.length === 0;
    }
    const matchingCount = Number(q.dataset.matchingPending || 0);
    if (selection.matching && matchingCount === 0) selection.matching = false;
    const summary = $("#bulk-summary");
    const offer = $("#select-matching");
    if (selection.matching) {
      summary.textContent =
        "All " + fmt(matchingCount) + " pending requests matching these filters are selected.";
      offer.hidden = true;
    } else {
      let tokens = 0;
      for (const amount of selection.ids.values()) tokens += amount;
      const n = selection.ids.size;
      summary.textContent =
        fmt(n) + (n === 1 ? " request" : " requests") + " selected · " + fmt(tokens) + " tokens";
      const more = pageAll && matchingCount > boxes.length;
      offer.hidden = !more;
      if (more) offer.textContent = "Select all " + fmt(matchingCount) + " matching";
    }
    bar.hidden = !(selection.matching || selection.ids.size > 0);
  }

  function onBoxChange(box) {
    if (box.id === "select-page") {
      selection.matching = false;
      for (const row of rowBoxes()) {
        if (box.checked) selection.ids.set(Number(row.value), Number(row.dataset.amount));
        else selection.ids.delete(Number(row.value));
      }
      applySelection();
      return;
    }
    if (selection.matching) {
      // Narrowing an "all matching" selection falls back to the ticked rows.
      selection.matching = false;
      for (const row of rowBoxes()) {
        if (row !== box) selection.ids.set(Number(row.value), Number(row.dataset.amount));
      }
    }
    if (box.checked) selection.ids.set(Number(box.value), Number(box.dataset.amount));
    else selection.ids.delete(Number(box.value));
    applySelection();
  }

  function openBulk(action) {
    const q = queue();
    if (!q) return;
    const params = new URLSearchParams({ action: action });
    if (selection.matching) {
      params.set("matching", "1");
      if (q.dataset.filterQ) params.set("q", q.dataset.filterQ);
      if (q.dataset.filterTeam) params.set("team_id", q.dataset.filterTeam);
    } else {
      params.set("ids", Array.from(selection.ids.keys()).join(","));
    }
    htmx.ajax("GET", "/admin/requests/bulk?" + params.toString(), {
      target: "#dialog-content",
      swap: "innerHTML",
    });
  }

  // ------------------------------------------------------------ live refresh

  let refreshTimer = null;
  let refreshing = false;
  let refreshAgain = false;

  function scheduleRefresh() {
    clearTimeout(refreshTimer);
    refreshTimer = setTimeout(refresh, REFRESH_DEBOUNCE_MS);
  }

  function refresh() {
    const q = queue();
    if (refreshing) {
      refreshAgain = true;
      return;
    }
    refreshing = true;
    let work;
    if (q) {
      liveSwap = true;
      work = htmx.ajax("GET", q.dataset.refreshUrl, {
        source: q,
        target: "#queue",
        swap: "outerHTML",
        headers: { "X-Live-Refresh": "1" },
      });
    } else {
      work = htmx.ajax("GET", "/admin/badge", { target: "#pending-badge", swap: "outerHTML" });
    }
    Promise.resolve(work).finally(() => {
      refreshing = false;
      liveSwap = false;
      if (refreshAgain) {
        refreshAgain = false;
        scheduleRefresh();
      }
    });
  }

  function setLive(state) {
    const el = $("#live-status");
    if (!el) return;
    el.dataset.state = state;
    const text = $(".live-text", el);
    if (text) text.textContent = state === "live" ? "Live" : "Reconnecting…";
  }

  function connect() {
    if (typeof EventSource === "undefined") return;
    let connectedBefore = false;
    const source = new EventSource("/events");
    source.addEventListener("snapshot", (event) => {
      const data = JSON.parse(event.data);
      if (typeof data.pending_count === "number") setBadge(data.pending_count);
      // After a reconnect, events may have been missed: fetch the truth once.
      if (connectedBefore) scheduleRefresh();
      connectedBefore = true;
      setLive("live");
    });
    source.addEventListener("queue.changed", scheduleRefresh);
    source.addEventListener("error", () => setLive("reconnecting"));
    window.addEventListener("pagehide", () => source.close());
  }

  // ------------------------------------------------------------ copy

  async function copyFrom(button) {
    const input = $(button.dataset.copy);
    if (!input) return;
    try {
      await navigator.clipboard.writeText(input.value);
    } catch (_) {
      // The Clipboard API needs a secure context; fall back to the selection.
      input.select();
      document.execCommand("copy");
    }
    const status = button.closest("section") && $("[role=status]", button.closest("section"));
    if (status) status.textContent = "Copied to the clipboard.";
  }

  // ------------------------------------------------------------ wiring

  document.addEventListener("DOMContentLoaded", () => {
    const d = dialog();
    if (d) d.addEventListener("close", onDialogClosed);

    document.body.addEventListener("click", (event) => {
      const target = event.target.closest("[data-close-dialog], [data-bulk], [data-copy], #clear-selection, #select-matching");
      if (!target) return;
      if (target.matches("[data-close-dialog]")) closeDialog();
      else if (target.matches("[data-copy]")) copyFrom(target);
      else if (target.matches("[data-bulk]")) openBulk(target.dataset.bulk);
      else if (target.id === "clear-selection") clearSelection();
      else if (target.id === "select-matching") {
        selection.matching = true;
        applySelection();
        $("#bulk-summary").focus();
      }
    });

    document.body.addEventListener("change", (event) => {
      const box = event.target;
      if (box.matches && box.matches("#select-page, .row-select")) onBoxChange(box);
    });

    // A second load into a loaded dialog (a double click, or a click replayed while a live
    // refresh re-rendered the row) would replace the form and wipe what the admin typed:
    // it is not sent, or, if it was sent before the first load arrived, its answer is
    // dropped. Requests from inside the dialog (confirm, summary) still swap it. The
    // content is emptied when the dialog closes.
    function secondLoad(target, requester) {
      const d = dialog();
      return Boolean(
        target && target.id === "dialog-content" && target.childElementCount > 0 && d && !d.contains(requester),
      );
    }
    document.body.addEventListener("htmx:beforeRequest", (event) => {
      if (secondLoad(event.detail.target, event.detail.elt)) event.preventDefault();
    });
    document.body.addEventListener("htmx:beforeSwap", (event) => {
      // Here the event's own element is the target; the requester is in its request.
      const requester = event.detail.requestConfig && event.detail.requestConfig.elt;
      if (secondLoad(event.detail.target, requester)) event.detail.shouldSwap = false;
    });

    document.body.addEventListener("htmx:afterSettle", (event) => {
      const target = event.detail.target;
      // Opened once settled: htmx focuses [autofocus] as it settles, and focus must not
      // jump away from a field the admin has started typing in.
      if (target && target.id === "dialog-content") openDialog();
      if (!target || target.id !== "queue") return;
      if (liveSwap) keepVisibleSelection();
      else clearSelection();
    });

    document.body.addEventListener("htmx:responseError", (event) => {
      const xhr = event.detail.xhr;
      if (xhr && xhr.getResponseHeader("HX-Trigger")) return; // the server sent its own toast
      toast("Something went wrong (" + (xhr ? xhr.status : "network") + "). Try again.", "error");
    });
    document.body.addEventListener("htmx:sendError", () =>
      toast("The server could not be reached. Check the connection and try again.", "error"),
    );

    document.body.addEventListener("admin:toast", (event) =>
      toast(event.detail.message, event.detail.kind),
    );
    document.body.addEventListener("admin:close-dialog", closeDialog);
    document.body.addEventListener("admin:clear-selection", clearSelection);
    document.body.addEventListener("admin:refresh", scheduleRefresh);

    if (queue()) applySelection();
    // Balances move without queue events (usage, resets), and an event can be lost
    // (a dropped connection between snapshot and replay): re-read now and then.
    setInterval(() => {
      if (document.visibilityState === "visible") scheduleRefresh();
    }, BALANCE_REFRESH_MS);
    connect();
  });
})();
