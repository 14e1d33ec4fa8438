"""An embeddings server for clients written against OpenAI, ollama or llama-server, on FastAPI and uvicorn.

Routes: OpenAI `POST /v1/embeddings` and `GET /v1/models`; llama-server's `POST /embeddings`; ollama
`POST /api/embed`, the older `POST /api/embeddings`, `GET /api/tags` and `/api/version`; `GET /health`,
`/metrics` (Prometheus), `/openapi.json` and `/docs`. What each route accepts and answers is
bindings/service.py; here is the HTTP side: API keys, CORS, request ids and the log, metrics. Requests are checked before
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
import hmac
import json
import logging
import re
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from importlib.metadata import version
from typing import Any

import uvicorn
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel
from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from granite_gguf.bindings import api_models as models
from granite_gguf.bindings.defaults import Access, Limits
from granite_gguf.bindings.metrics import Metrics
from granite_gguf.bindings.service import EmbeddingService, RequestError, request_id
from granite_gguf.errors import UserError
from granite_gguf.files import parse_json

log = logging.getLogger(__name__)

PACKAGE_VERSION = version("granite-gguf")
OLLAMA_API_VERSION = "0.33.0"  # /api/version: the ollama whose API this follows (fb30760, after v0.33.0-rc2)
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
    """A JSON object from bytes, or a RequestError (400): bad UTF-8, and what `files.parse_json` refuses (bad JSON,
    nesting past what Python's parser recurses into, integers past its 4,300-digit limit), are the client's errors."""
    try:
        body = parse_json(raw.decode("utf-8"), "body")
    except UnicodeDecodeError as exc:
        raise RequestError(f"body is not UTF-8: {exc}") from None
    except UserError as exc:
        raise RequestError(str(exc)) from None
    if not isinstance(body, dict):
        raise RequestError("body must be a JSON object")
    return body


Endpoint = Callable[[Request], Awaitable[Response]]


def _answered(handler: Callable[[Request], Awaitable[Any]]) -> Endpoint:
    """Wrap a route: its JSON answer, or its error in the API's shape (a bug: a logged 500, the server goes on)."""

    async def endpoint(request: Request) -> Response:  # FastAPI reads this signature: the request, no parameters
        try:
            return _json(HTTPStatus.OK, await handler(request))
        except RequestError as exc:
            return _error(request.url.path, exc, close=isinstance(exc, _Unread))
        except Exception:
            log.exception("[%s] %s %s failed", request_id.get(), request.method, request.url.path)
            return _error(request.url.path, RequestError("internal error", HTTPStatus.INTERNAL_SERVER_ERROR))

    return endpoint


@dataclass(frozen=True)
class _Route:
    path: str
    method: str
    summary: str
    answer: type[BaseModel] | None  # what a 200 carries (None: a list of LlamaServerEmbedding)
    request: type[BaseModel] | None = None


ROUTES = [
    _Route("/v1/embeddings", "POST", "OpenAI: embed texts or token ids", models.OpenAIEmbeddingResponse,
           models.OpenAIEmbeddingRequest),
    _Route("/embeddings", "POST", "llama-server: embed, answered as a list", None, models.OpenAIEmbeddingRequest),
    _Route("/api/embed", "POST", "ollama: embed texts", models.OllamaEmbedResponse, models.OllamaEmbedRequest),
    _Route("/api/embeddings", "POST", "ollama (older): embed one prompt, not normalized",
           models.OllamaEmbeddingsResponse, models.OllamaEmbeddingsRequest),
    _Route("/v1/models", "GET", "OpenAI: the served models", models.ModelList),
    _Route("/api/tags", "GET", "ollama: the served models", models.OllamaTags),
    _Route("/api/version", "GET", "ollama: the version of ollama's API served", models.OllamaVersion),
    _Route("/health", "GET", "liveness (no API key needed)", models.Health),
]
KNOWN_PATHS = frozenset({route.path for route in ROUTES} | {"/metrics", "/openapi.json", "/docs"})


def make_app(service: EmbeddingService, access: Access = Access()) -> FastAPI:
    """The ASGI application: FastAPI for /openapi.json and /docs, with the service's own checks and error
    shapes; API keys, CORS and the request log (ids, metrics) as middleware around it."""
    app = FastAPI(title="granite-gguf serve", version=PACKAGE_VERSION, docs_url="/docs", redoc_url=None,
                  openapi_url="/openapi.json", description="Embeddings for OpenAI, ollama and llama-server "
                  "clients (docs/serving.md). Errors: OpenAI's error object, `{\"error\": \"…\"}` under /api/.")
    handlers: dict[str, Callable[[Request], Awaitable[Any]]] = {
        "/v1/embeddings": lambda r: _post(r, service.openai_embeddings, service.limits),
        "/embeddings": lambda r: _post(r, functools.partial(service.openai_embeddings, native=True), service.limits),
        "/api/embed": lambda r: _post(r, service.ollama_embed, service.limits),
        "/api/embeddings": lambda r: _post(r, service.ollama_embeddings, service.limits),
        "/v1/models": lambda r: _now(service.models_list()),
        "/api/tags": lambda r: _now(service.tags()),
        "/api/version": lambda r: _now({"version": OLLAMA_API_VERSION}),
        "/health": lambda r: _now({"status": "ok"}),
    }
    for route in ROUTES:
        error = models.OllamaError if route.path.startswith("/api/") else models.OpenAIError
        answer: Any = route.answer or list[models.LlamaServerEmbedding]
        app.add_api_route(route.path, _answered(handlers[route.path]), methods=[route.method], summary=route.summary,
                          response_model=None, responses={200: {"model": answer}, 400: {"model": error}},
                          openapi_extra=_body_schema(route.request))

    async def metrics(request: Request) -> Response:
        return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    async def no_route(request: Request) -> Any:
        raise RequestError(f"no route {request.method} {request.url.path}", HTTPStatus.NOT_FOUND)

    app.add_api_route("/metrics", metrics, methods=["GET"], summary="Prometheus metrics", response_model=None,
                      responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
    app.add_api_route("/{path:path}", _answered(no_route), include_in_schema=False,
                      methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
    app.openapi = functools.partial(_openapi, app)  # type: ignore[method-assign]
    app.add_middleware(ApiKeys, keys=access.api_keys)
    if access.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(access.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type", REQUEST_ID_HEADER],
                           expose_headers=[REQUEST_ID_HEADER], max_age=600)
    app.add_middleware(RequestLog, metrics=service.metrics)
    return app


async def _post(request: Request, method: Callable[[dict[str, Any]], Awaitable[Any]], limits: Limits) -> Any:
    return await method(await _json_body(request, limits))


async def _now(answer: Any) -> Any:
    return answer


def _body_schema(model: type[BaseModel] | None) -> dict[str, Any] | None:
    """The request body as OpenAPI shows it: the model's schema (the route reads and checks the body itself)."""
    if model is None:
        return None
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema plus the request models, which no route declares as a parameter."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for route in ROUTES:
            if route.request is not None:
                body = route.request.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(body.pop("$defs", {}))
                components[route.request.__name__] = body
        app.openapi_schema = schema
    return app.openapi_schema


class RequestLog:
    """Outermost middleware: the request id (the client's `X-Request-ID` or a new one, in the log, the answer and
    the batcher's lines), one log line per request, and the request metrics, for every answer (401s too)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = Headers(scope=scope).get(REQUEST_ID_HEADER, "")
        rid = given if _CLIENT_REQUEST_ID.fullmatch(given) else uuid.uuid4().hex[:16]
        request_id.set(rid)
        started = time.perf_counter()
        status = [500]
        recorded = [False]

        def record() -> None:
            """Counted and logged once, before the last byte goes out: a client that has its answer sees it."""
            if recorded[0]:
                return
            recorded[0] = True
            elapsed = time.perf_counter() - started
            route = scope["path"] if scope["path"] in KNOWN_PATHS else "other"
            self.metrics.requests.labels(route, scope["method"], str(status[0])).inc()
            if status[0] >= 400:
                self.metrics.errors.labels(route, str(status[0])).inc()
            self.metrics.latency.labels(route).observe(elapsed)
            log.info("[%s] %s %s %d %.1f ms", rid, scope["method"], scope["path"], status[0], elapsed * 1000)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                MutableHeaders(scope=message).append(REQUEST_ID_HEADER, rid)
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                record()
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            record()  # no answer went out (the client left, or a bug below): still one line and one count


class ApiKeys:
    """`Authorization: Bearer KEY` on every route but /health when keys are set; else a 401 in the API's shape."""

    def __init__(self, app: ASGIApp, keys: tuple[str, ...]) -> None:
        self.app = app
        self.keys = [key.encode() for key in keys]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys or scope["path"] == "/health" or self._allowed(scope):
            await self.app(scope, receive, send)
            return
        error = RequestError("invalid or missing API key: send Authorization: Bearer KEY", HTTPStatus.UNAUTHORIZED,
                             code="invalid_api_key")
        response = _error(scope["path"], error)
        response.headers["WWW-Authenticate"] = "Bearer"
        await response(scope, receive, send)

    def _allowed(self, scope: Scope) -> bool:
        scheme, _, token = Headers(scope=scope).get("authorization", "").partition(" ")
        given = token.strip().encode()
        # compare_digest with every key: the time taken says nothing about which key, or how much of one, matched
        matches = [hmac.compare_digest(given, key) for key in self.keys]
        return scheme.lower() == "bearer" and any(matches)


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


def make_server(service: EmbeddingService, access: Access = Access()) -> uvicorn.Server:
    """A uvicorn server for the service; run it with `server.run(sockets=[listen(host, port)])`."""
    limits = service.limits

    class Protocol(_DeadlineH11Protocol):
        head_timeout_s = limits.request_timeout_s

    config = uvicorn.Config(
        make_app(service, access), http=Protocol,
        loop="asyncio", lifespan="off", access_log=False, log_config=None, timeout_keep_alive=limits.keep_alive_s,
        limit_concurrency=limits.max_connections, timeout_graceful_shutdown=limits.graceful_shutdown_s,
    )
    return uvicorn.Server(config)
