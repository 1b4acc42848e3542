/* The API keys page: create a key (shown once, with a copy button), revoke with confirmation. */
import { $, api, el, showFieldError } from "./common.js";

const dates = new Intl.DateTimeFormat(undefined, { dateStyle: "medium" });

export function startSettings() {
  // Dates in the reader's own format, like the ones added below.
  document.querySelectorAll("time[data-local-date]").forEach((node) => {
    node.textContent = dates.format(new Date(node.getAttribute("datetime")));
  });
  const form = $("key-form");
  const nameInput = $("key-name");
  const body = $("keys-body");

  function keyRow(key) {
    const row = el("tr");
    row.dataset.keyId = String(key.id);
    row.appendChild(el("td", "", key.name));
    row.appendChild(el("td", "mono", key.prefix + "…"));
    row.appendChild(el("td", "", dates.format(new Date(key.created_at))));
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

