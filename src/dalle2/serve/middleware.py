"""One ASGI middleware around every request: request id, API key, body size cap, metrics and the log line.

* ``x-request-id`` on every response (the OpenAI client exposes it as ``_request_id``).
* API key (when the server has one): required on ``/v1/*`` and ``/metrics``, as ``Authorization: Bearer KEY``;
  401 ``invalid_api_key`` otherwise. Not required: ``/v1/files/*`` (each URL holds 128 random bits, like
  OpenAI's signed image URLs, so ``<img src>`` and plain downloads work), ``/healthz``, the web page and the
  API docs.
* Bodies: a ``Content-Length`` above the cap is refused (413) before reading; a body without one is counted
  as it is read and refused when it passes the cap.
* One log line per request on the ``dalle2.serve`` logger, as JSON: request id, method, route, model, n,
  size, status, latency in ms.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
import uuid
from typing import Any

from dalle2.serve.errors import ApiError, BodyTooLarge, too_large
from dalle2.serve.metrics import LATENCY_BUCKETS, Metrics

log = logging.getLogger("dalle2.serve")

OPEN_PREFIXES = ("/v1/files/",)
PROTECTED_PREFIXES = ("/v1/", "/metrics")


def needs_key(path: str) -> bool:
    return path.startswith(PROTECTED_PREFIXES) and not path.startswith(OPEN_PREFIXES)


def _masked(key: str) -> str:
    return f"{key[:3]}…{key[-4:]}" if len(key) >= 12 else "…"


class ServeMiddleware:
    def __init__(self, app: Any, *, metrics: Metrics, api_key: str | None, body_limit: int) -> None:
        self.app, self.metrics, self.api_key, self.body_limit = app, metrics, api_key, body_limit

    def _auth_error(self, headers: dict[bytes, bytes]) -> ApiError | None:
        if not self.api_key:
            return None
        given = headers.get(b"authorization", b"").decode("latin-1")
        scheme, _, key = given.partition(" ")
        key = key.strip()
        if scheme.lower() == "bearer" and key and hmac.compare_digest(key.encode(), self.api_key.encode()):
            return None
        if not key:
            message = "You didn't provide an API key. Send it in an Authorization header: Bearer YOUR_KEY."
        else:
            message = f"Incorrect API key provided: {_masked(key)}."
        return ApiError(401, message, code="invalid_api_key")

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.monotonic()
        request_id = f"req_{uuid.uuid4().hex}"
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        status = 500
        received = 0

        async def send_with_id(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        async def counting_receive() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.body_limit:
                    raise BodyTooLarge(self.body_limit)
            return message

        headers = dict(scope.get("headers", []))
        try:
            error = self._auth_error(headers) if needs_key(scope["path"]) else None
            length = headers.get(b"content-length", b"")
            if error is None and length.isdigit() and int(length) > self.body_limit:
                error = too_large(self.body_limit)
            if error is not None:
                await error.response()(scope, receive, send_with_id)
            else:
                await self.app(scope, counting_receive, send_with_id)
        finally:
            self._record(scope, state, status, time.monotonic() - start)

    def _record(self, scope: dict[str, Any], state: dict[str, Any], status: int, seconds: float) -> None:
        route = getattr(scope.get("route"), "path", None) or "other"
        method = scope["method"]
        self.metrics.inc("dalle2_requests_total", (("route", route), ("method", method), ("status", str(status))))
        if status >= 400:
            self.metrics.inc("dalle2_errors_total", (("route", route), ("status", str(status))))
        self.metrics.observe("dalle2_request_duration_seconds", (("route", route),), seconds, LATENCY_BUCKETS)
        record = {
            "event": "request",
            "id": state.get("request_id"),
            "method": method,
            "path": scope["path"],
            "route": route,
            **state.get("log", {}),
            "status": status,
            "latency_ms": round(seconds * 1000, 1),
        }
        log.info(json.dumps(record, ensure_ascii=False))
