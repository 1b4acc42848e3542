/* Shared by the chat app's modules: the REST helper, safe element building, toasts.
 *
 * Text from people or models only ever reaches the page through textContent,
 * never innerHTML.
 */

export const csrf = document.querySelector('meta[name="csrf-token"]')?.content || "";
export const $ = (id) => document.getElementById(id);
export const fmt = new Intl.NumberFormat();

export class ApiError extends Error {
  constructor(status, body) {
    super((body && (body.detail || body.error?.message)) || `HTTP ${status}`);
    this.status = status;
    this.body = body || {};
  }
}

export async function api(method, url, body) {
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

export function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

export function toast(title, body, kind) {
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

export function showFieldError(node, message) {
  if (!node) return;
  node.textContent = message || "";
  node.hidden = !message;
}

export function accountMenu() {
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
