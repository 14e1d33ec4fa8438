"""An embeddings server for clients written against OpenAI, ollama or llama-server, on Starlette and uvicorn.

Routes: OpenAI `POST /v1/embeddings` and `GET /v1/models`; llama-server's `POST /embeddings`; ollama
`POST /api/embed`, the older `POST /api/embeddings` and `GET /api/tags`; `GET /health`. What each
route accepts and answers is bindings/service.py; here is the HTTP side. Requests are checked before
they reach llama.cpp (size, count, types) and answered 4xx with a message when wrong. Concurrent
requests share llama.cpp decodes on one or more contexts (bindings/batching.py).

Connections are bounded (`Limits`): a request head and body must arrive within `request_timeout_s`
(uvicorn alone never times out a connection that trickles its head, see `_DeadlineH11Protocol`), idle
keep-alive connections close after `keep_alive_s`, past `max_connections` requests get 503 at once,
and on SIGTERM/SIGINT the server stops accepting, finishes the requests in flight and exits.
Every request gets an id (the client's `X-Request-ID`, or a new one) that the log lines carry and
the answer echoes.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from uvicorn.protocols.http.h11_impl import H11Protocol

from granite_gguf.bindings.defaults import Limits
from granite_gguf.bindings.service import EmbeddingService, RequestError, request_id
from granite_gguf.errors import UserError

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-ID"
_CLIENT_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")  # echoed into logs and headers: keep it tame


def _json(status: HTTPStatus, body: Any, close: bool = False) -> Response:
    """A JSON answer; allow_nan=False, so a NaN that got this far is a 500, never invalid JSON on the wire."""
    headers = {"Connection": "close"} if close else None  # uvicorn closes the connection after this answer
    return Response(json.dumps(body, separators=(",", ":"), allow_nan=False), status, headers,
                    media_type="application/json")


def _error(path: str, error: RequestError, close: bool = False) -> Response:
    message = str(error)
    if path.startswith("/api/"):  # ollama's error shape
        body: dict[str, Any] = {"error": message}
    else:  # OpenAI's (llama-server's too)
        kind = "invalid_request_error" if error.status < 500 else "server_error"
        body = {"error": {"message": message, "type": kind, "param": error.param, "code": error.code}}
    return _json(error.status, body, close)


class _Unread(RequestError):
    """A RequestError raised before the body was read: the connection cannot be reused."""


async def _json_body(request: Request, limits: Limits) -> dict[str, Any]:
    """The body as a JSON object; size and arrival time bounded (RequestError with `close` set when unread)."""
    length_header = request.headers.get("content-length")
    if request.headers.get("transfer-encoding") or length_header is None:
        raise _Unread("a Content-Length header is required", HTTPStatus.LENGTH_REQUIRED)
    try:
        length = int(length_header)
    except ValueError:
        raise _Unread("bad Content-Length") from None
    if length < 0 or length > limits.max_body_bytes:
        raise _Unread(f"request body of {length} bytes; at most {limits.max_body_bytes}",
                      HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
    try:
        raw = await asyncio.wait_for(request.body(), limits.request_timeout_s)
    except TimeoutError:
        raise _Unread(f"request body not received within {limits.request_timeout_s:g} s",
                      HTTPStatus.REQUEST_TIMEOUT) from None
    return parse_json_object(raw)


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """A JSON object from bytes, or a RequestError (400): bad UTF-8 or JSON, nesting past what Python's
    parser recurses into, and integers past Python's 4,300-digit conversion limit are the client's errors."""
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestError(f"body is not JSON in UTF-8: {exc}") from None
    except RecursionError:
        raise RequestError("body is not usable JSON: nested too deeply") from None
    except ValueError as exc:  # e.g. "Exceeds the limit (4300 digits) for integer string conversion"
        raise RequestError(f"body is not usable JSON: {exc}") from None
    if not isinstance(body, dict):
        raise RequestError("body must be a JSON object")
    return body


Endpoint = Callable[[Request], Awaitable[Response]]


def _logged(handler: Callable[[Request], Awaitable[Any]]) -> Endpoint:
    """Wrap a route: request id, JSON answer or error answer, one log line per request."""

    @functools.wraps(handler)
    async def endpoint(request: Request) -> Response:
        given = request.headers.get(REQUEST_ID_HEADER, "")
        rid = given if _CLIENT_REQUEST_ID.fullmatch(given) else uuid.uuid4().hex[:16]
        request_id.set(rid)
        started = time.perf_counter()
        try:
            response = _json(HTTPStatus.OK, await handler(request))
        except RequestError as exc:
            response = _error(request.url.path, exc, close=isinstance(exc, _Unread))
        except Exception:  # a bug must not take the server down; the client gets a 500
            log.exception("[%s] %s %s failed", rid, request.method, request.url.path)
            response = _error(request.url.path, RequestError("internal error", HTTPStatus.INTERNAL_SERVER_ERROR))
        response.headers[REQUEST_ID_HEADER] = rid
        log.info("[%s] %s %s %d %.1f ms", rid, request.method, request.url.path, response.status_code,
                 (time.perf_counter() - started) * 1000)
        return response

    return endpoint


def make_app(service: EmbeddingService) -> Starlette:
    """The ASGI application: every route answers JSON, unknown ones a 404 in the API's error shape."""

    def post(method: Callable[[dict[str, Any]], Awaitable[Any]]) -> Endpoint:
        async def handler(request: Request) -> Any:
            return await method(await _json_body(request, service.limits))
        return _logged(handler)

    def get(method: Callable[[], dict[str, Any]]) -> Endpoint:
        async def handler(request: Request) -> dict[str, Any]:
            return method()
        return _logged(handler)

    async def no_route(request: Request) -> dict[str, Any]:
        raise RequestError(f"no route {request.method} {request.url.path}", HTTPStatus.NOT_FOUND)

    routes = [
        Route("/v1/embeddings", post(service.openai_embeddings), methods=["POST"]),
        Route("/embeddings", post(functools.partial(service.openai_embeddings, native=True)), methods=["POST"]),
        Route("/api/embed", post(service.ollama_embed), methods=["POST"]),
        Route("/api/embeddings", post(service.ollama_embeddings), methods=["POST"]),
        Route("/health", get(lambda: {"status": "ok"}), methods=["GET"]),
        Route("/v1/models", get(service.models_list), methods=["GET"]),
        Route("/api/tags", get(service.tags), methods=["GET"]),
        Route("/{path:path}", _logged(no_route), methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]),
    ]
    return Starlette(routes=routes)


class _DeadlineH11Protocol(H11Protocol):
    """uvicorn's h11 protocol plus a deadline for each request head.

    uvicorn closes a keep-alive connection only if it sends nothing at all for `timeout_keep_alive`
    after a response; a connection that never sends a request, or sends its head a byte at a time,
    stays open for ever. Here a head must be complete `head_timeout_s` after the connection opens or
    the previous response ends, or the connection is closed. `make_server` subclasses it per server
    with its `head_timeout_s` (uvicorn builds protocols from a class).
    """

    head_timeout_s = Limits.request_timeout_s

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_deadline()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        self._arm_head_deadline()  # before the parent, which may start a pipelined request at once
        super().on_response_complete()

    def handle_events(self) -> None:
        super().handle_events()
        if self.cycle is not None and not self.cycle.response_complete:
            self._cancel_head_deadline()  # a request head arrived

    def _arm_head_deadline(self) -> None:
        self._cancel_head_deadline()
        self._head_deadline = self.loop.call_later(self.head_timeout_s, self.timeout_keep_alive_handler)

    def _cancel_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None


def listen(host: str, port: int) -> socket.socket:
    """A listening socket (port 0 picks a free one: read `getsockname()`); UserError if the address is taken."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)  # a burst of clients waits in the backlog instead of being refused
    except OSError as exc:
        raise UserError(f"cannot listen on {host}:{port} ({exc.strerror})") from None
    sock.set_inheritable(True)
    return sock


def make_server(service: EmbeddingService) -> uvicorn.Server:
    """A uvicorn server for the service; run it with `server.run(sockets=[listen(host, port)])`."""
    limits = service.limits

    class Protocol(_DeadlineH11Protocol):
        head_timeout_s = limits.request_timeout_s

    config = uvicorn.Config(
        make_app(service), http=Protocol,
        loop="asyncio", lifespan="off", access_log=False, log_config=None, timeout_keep_alive=limits.keep_alive_s,
        limit_concurrency=limits.max_connections, timeout_graceful_shutdown=limits.graceful_shutdown_s,
    )
    return uvicorn.Server(config)
