"""A server's refusal (a 5xx domain error: the database cannot be written) as the web
pages meet it: a toast for htmx's requests (admin.js shows the server's own message),
a page of its own for a form the browser posted. The REST API and the gateway answer
in JSON, as for any domain error."""

from __future__ import annotations

from fastapi import Request, Response

from tokendesk.errors import AppError
from tokendesk.web.admin.common import toast_response
from tokendesk.web.pages import render

API_PREFIXES = ("/api/", "/v1/")


def page_error(request: Request, exc: AppError) -> Response | None:
    """The page's answer to ``exc``, or None where JSON is the answer (the API's paths,
    a caller that asks for JSON only)."""
    if request.url.path.startswith(API_PREFIXES):
        return None
    if request.headers.get("hx-request"):
        return toast_response(exc.message, kind="error", status_code=exc.status_code)
    accept = request.headers.get("accept", "")
    if "application/json" in accept and "text/html" not in accept:
        return None  # a script calling a page's route, asking for JSON
    return render(request, "unavailable.html", status_code=exc.status_code, message=exc.message)
