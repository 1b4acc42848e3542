"""Log lines as text for a person at a terminal, or one JSON object per line for a
log pipeline (``TOKENDESK_LOG_FORMAT=json``).

Every line written while a request runs names its request id. The application
configures the ``tokendesk`` logger itself (:func:`configure`, from ``create_app``), so
the same lines come out however it is served; ``tokendesk serve`` also gives
uvicorn's own lines the same format (:func:`uvicorn_log_config`) and turns uvicorn's
access log off, since the request log (``tokendesk.request``) replaces it.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING, Any

from tokendesk.observability.context import current_request_id

if TYPE_CHECKING:
    from tokendesk.observability.context import RequestInfo

REQUEST_LOGGER = "tokendesk.request"
FORMATS = ("text", "json")
# uvicorn's level names, as TOKENDESK_LOG_LEVEL takes them.
LEVELS = {
    "critical": logging.CRITICAL,
    "error": logging.ERROR,
    "warning": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
    "trace": logging.DEBUG,
}
_INSTALLED = "_tokendesk_handler"


def _request_id(record: logging.LogRecord) -> str | None:
    found = getattr(record, "request_id", None)
    return found if isinstance(found, str) else current_request_id()


class TextFormatter(logging.Formatter):
    """``2026-12-07 11:00:00,123 INFO tokendesk.request [id] POST /v1/... 200 1.2ms ...``"""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(rid)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        request_id = _request_id(record)
        record.rid = "" if request_id is None else f" [{request_id}]"
        return super().format(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id, the request
    log's fields (``method``, ``route``, ``status``, ``duration_ms``, ``user_id``,
    ``key_id``) and any exception's traceback."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = _request_id(record)
        if request_id is not None:
            line["request_id"] = request_id
        http = getattr(record, "http", None)
        if isinstance(http, dict):
            line.update(http)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def formatter(log_format: str) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else TextFormatter()


class LineHandler(logging.StreamHandler):
    """tokendesk's own handler: a stream handler that also writes the request line
    straight to its stream, as its formatter would have written it.

    The request line is the one line written per request; going through a log record
    (its dozen attributes, the logger's and the handler's calls, the formatter) cost
    several times what writing it does. The same text, the same JSON object, a line
    flushed as it is written.
    """

    def __init__(self, stream: IO[str], log_format: str) -> None:
        super().__init__(stream)
        self.json = log_format == "json"
        self.setFormatter(formatter(log_format))
        self._second = -1
        self._stamp = ""

    def _time(self) -> str:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            if self.json:
                self._stamp = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
            else:
                self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        millis = int((now - second) * 1000)
        return f"{self._stamp}.{millis:03d}+00:00" if self.json else f"{self._stamp},{millis:03d}"

    def write_request(
        self, info: RequestInfo, method: str, route: str, status: int, duration_ms: float
    ) -> None:
        user = "-" if info.user_id is None else info.user_id
        key = "-" if info.key_id is None else info.key_id
        message = f"{method} {route} {status} {duration_ms:.2f}ms user={user} key={key}"
        if self.json:
            # The JSON object JsonFormatter writes, put together by hand: the ids are
            # plain tokens and numbers; the strings a client could shape are encoded.
            dumps = json.dumps
            line = (
                f'{{"time": "{self._time()}", "level": "info", "logger": "{REQUEST_LOGGER}", '
                f'"message": {dumps(message, ensure_ascii=False)}, '
                f'"request_id": "{info.request_id}", "method": {dumps(method)}, '
                f'"route": {dumps(route, ensure_ascii=False)}, "status": {status}, '
                f'"duration_ms": {duration_ms}, "user_id": {_number(info.user_id)}, '
                f'"key_id": {_number(info.key_id)}}}'
            )
        else:
            line = f"{self._time()} INFO {REQUEST_LOGGER} [{info.request_id}] {message}"
        self.acquire()
        try:
            self.stream.write(line + self.terminator)
            self.stream.flush()
        except Exception:
            self.handleError(logging.makeLogRecord({"msg": message}))
        finally:
            self.release()


def _number(value: int | None) -> str:
    return "null" if value is None else str(value)


def direct_handler(logger: logging.Logger) -> LineHandler | None:
    """tokendesk's own handler when it is the only place ``logger``'s INFO lines go,
    with nothing to filter them; else None (then a log record goes the usual way)."""
    if logger.handlers or logger.filters or not logger.propagate:
        return None
    parent = logger.parent
    if parent is None or parent.filters or parent.propagate or len(parent.handlers) != 1:
        return None
    handler = parent.handlers[0]
    if isinstance(handler, LineHandler) and not handler.filters and handler.level <= logging.INFO:
        return handler
    return None


def level_of(name: str) -> int:
    return LEVELS.get(name.lower(), logging.INFO)


def configure(log_format: str, level: str, *, stream: IO[str] | None = None) -> None:
    """Send the ``tokendesk`` loggers' lines to stderr (or ``stream``) in ``log_format``
    at ``level``; again, it replaces what it installed before. Handlers an embedding
    program (or a test runner's log capture) put on the ``tokendesk`` logger stay and
    get every record too: leaving ours out beside them would leave the previous stream
    and format in place."""
    logger = logging.getLogger("tokendesk")
    for handler in [h for h in logger.handlers if getattr(h, _INSTALLED, False)]:
        logger.removeHandler(handler)
    handler = LineHandler(stream if stream is not None else sys.stderr, log_format)
    setattr(handler, _INSTALLED, True)
    logger.addHandler(handler)
    logger.setLevel(level_of(level))
    # Not also through the root logger's handlers, which would write each line twice.
    logger.propagate = False


def uvicorn_log_config(log_format: str) -> dict[str, Any]:
    """uvicorn's logging configuration with tokendesk's format for its own lines."""
    factory = f"{__name__}.{'JsonFormatter' if log_format == 'json' else 'TextFormatter'}"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"tokendesk": {"()": factory}},
        "handlers": {
            "default": {
                "formatter": "tokendesk",
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
            }
        },
        "loggers": {
            "uvicorn": {"handlers": ["default"], "level": "INFO", "propagate": False},
            "uvicorn.error": {"level": "INFO"},
        },
    }
