"""An embeddings server over one Embedder, for clients written against OpenAI or ollama.

Routes: OpenAI `POST /v1/embeddings` (`input`, `dimensions`, `encoding_format` float|base64, usage)
and `GET /v1/models`; ollama `POST /api/embed` (`input`, `truncate`, `dimensions`), the older
`POST /api/embeddings` (`prompt`) and `GET /api/tags`; `GET /health`. Requests are checked before
they reach llama.cpp (size, count, types) and answered 4xx with a message when wrong. One llama.cpp
context serves every connection, one request at a time (contexts are not thread-safe).
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

from granite_gguf.bindings.embedder import Embedder, LongInputs
from granite_gguf.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    """Bounds on one request, so a client cannot make the server allocate or compute without end."""

    max_body_bytes: int = 4 * 1024 * 1024
    max_inputs: int = 256
    socket_timeout_s: float = 60.0  # a client that stops sending mid-request is dropped after this


class RequestError(Exception):
    """A bad request: answered with `status` and the message, the server keeps going."""

    def __init__(self, message: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.param = param


class EmbeddingService:
    """Validates request bodies and turns them into Embedder calls and API-shaped answers."""

    def __init__(self, embedder: Embedder, model_name: str, long_inputs: LongInputs = LongInputs.TRUNCATE,
                 limits: Limits = Limits()) -> None:
        self.embedder = embedder
        self.model_name = model_name
        self.long_inputs = long_inputs
        self.limits = limits
        self._lock = threading.Lock()

    def openai_embeddings(self, body: dict[str, Any]) -> dict[str, Any]:
        texts = self._texts(body.get("input"), "input")
        encoding = body.get("encoding_format", "float")
        if encoding not in ("float", "base64"):
            raise RequestError("encoding_format must be 'float' or 'base64'", param="encoding_format")
        vectors, tokens = self._embed(texts, self._dimensions(body), self.long_inputs)
        data = [{"object": "embedding", "index": i, "embedding": _encoded(v, encoding)} for i, v in enumerate(vectors)]
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return {"object": "list", "data": data, "model": self.model_name, "usage": usage}

    def ollama_embed(self, body: dict[str, Any]) -> dict[str, Any]:
        started = time.perf_counter_ns()
        texts = self._texts(body.get("input"), "input")
        truncate = body.get("truncate", True)
        if not isinstance(truncate, bool):
            raise RequestError("truncate must be true or false", param="truncate")
        long_inputs = self.long_inputs if truncate else LongInputs.ERROR
        vectors, tokens = self._embed(texts, self._dimensions(body), long_inputs)
        return {"model": body.get("model") or self.model_name, "embeddings": vectors.tolist(),
                "total_duration": time.perf_counter_ns() - started, "load_duration": 0, "prompt_eval_count": tokens}

    def ollama_embeddings(self, body: dict[str, Any]) -> dict[str, Any]:
        """ollama's older endpoint: one `prompt`, the model's vector without extra normalization."""
        prompt = body.get("prompt")
        if not isinstance(prompt, str):
            raise RequestError("prompt must be a string", param="prompt")
        with self._lock:
            vector = self.embedder.encode([prompt], normalize_embeddings=False)[0]
        return {"embedding": vector.tolist()}

    def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [{"id": self.model_name, "object": "model", "owned_by": "granite-gguf"}]}

    def tags(self) -> dict[str, Any]:
        size = self.embedder.path.stat().st_size
        return {"models": [{"name": self.model_name, "model": self.model_name, "size": size}]}

    def _texts(self, value: Any, param: str) -> list[str]:
        if isinstance(value, str):
            return [value]
        if not isinstance(value, list) or not value:
            raise RequestError(f"{param} must be a string or a non-empty list of strings", param=param)
        if len(value) > self.limits.max_inputs:
            raise RequestError(f"{param} has {len(value)} items; at most {self.limits.max_inputs} per request",
                               param=param)
        if not all(isinstance(item, str) for item in value):
            if all(isinstance(item, int) or isinstance(item, list) for item in value):
                raise RequestError("token-id input is not supported; send text", param=param)
            raise RequestError(f"{param} must be a string or a list of strings", param=param)
        return value

    def _dimensions(self, body: dict[str, Any]) -> int | None:
        value = body.get("dimensions")
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise RequestError("dimensions must be a positive integer", param="dimensions")
        return value

    def _embed(self, texts: list[str], dimensions: int | None, long_inputs: LongInputs) -> tuple[np.ndarray, int]:
        with self._lock:
            try:
                vectors = self.embedder.encode(texts, truncate_dim=dimensions, long_inputs=long_inputs)
            except UserError as exc:
                raise RequestError(str(exc)) from None
            return vectors, sum(self.embedder.last_token_counts)


def _encoded(vector: np.ndarray, encoding: str) -> list[float] | str:
    """OpenAI's base64 form: the little-endian float32 bytes, as its client decodes them."""
    if encoding == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()


class _Handler(BaseHTTPRequestHandler):
    """HTTP/1.1 with keep-alive; every answer is JSON with a Content-Length."""

    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        self.timeout = self.server.service.limits.socket_timeout_s  # type: ignore[misc]  # typeshed: a ClassVar; setup() reads it per instance
        super().setup()

    def do_GET(self) -> None:  # noqa: N802 - the name http.server dispatches to
        routes: dict[str, Callable[[], dict[str, Any]]] = {
            "/health": lambda: {"status": "ok"}, "/v1/models": self.server.service.models,
            "/api/tags": self.server.service.tags,
        }
        if self.path not in routes:
            self._send_error(RequestError(f"no route GET {self.path}", HTTPStatus.NOT_FOUND))
            return
        self._send(HTTPStatus.OK, routes[self.path]())

    def do_POST(self) -> None:  # noqa: N802
        service = self.server.service
        routes: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "/v1/embeddings": service.openai_embeddings, "/embeddings": service.openai_embeddings,
            "/api/embed": service.ollama_embed, "/api/embeddings": service.ollama_embeddings,
        }
        try:
            if self.path not in routes:
                raise RequestError(f"no route POST {self.path}", HTTPStatus.NOT_FOUND)
            body = self._json_body(service.limits.max_body_bytes)
            answer = routes[self.path](body)
        except RequestError as exc:
            self._send_error(exc)
            return
        except Exception:  # a bug must not take the server down; the client gets a 500
            log.exception("request to %s failed", self.path)
            self._send_error(RequestError("internal error", HTTPStatus.INTERNAL_SERVER_ERROR))
            return
        self._send(HTTPStatus.OK, answer)

    def _json_body(self, limit: int) -> dict[str, Any]:
        length_header = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding") or length_header is None:
            self.close_connection = True
            raise RequestError("a Content-Length header is required", HTTPStatus.LENGTH_REQUIRED)
        try:
            length = int(length_header)
        except ValueError:
            self.close_connection = True
            raise RequestError("bad Content-Length") from None
        if length < 0 or length > limit:
            self.close_connection = True  # the body is not read, so the connection cannot be reused
            raise RequestError(f"request body of {length} bytes; at most {limit}", HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RequestError(f"body is not JSON in UTF-8: {exc}") from None
        if not isinstance(body, dict):
            raise RequestError("body must be a JSON object")
        return body

    def _send_error(self, error: RequestError) -> None:
        message = str(error)
        if self.path.startswith("/api/"):  # ollama's error shape
            body: dict[str, Any] = {"error": message}
        else:  # OpenAI's
            kind = "invalid_request_error" if error.status < 500 else "server_error"
            body = {"error": {"message": message, "type": kind, "param": error.param, "code": None}}
        self._send(error.status, body)

    def _send(self, status: HTTPStatus, body: dict[str, Any]) -> None:
        data = json.dumps(body, separators=(",", ":")).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        log.info("%s %s", self.address_string(), format % args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512  # a burst of clients waits in the backlog instead of being refused

    def __init__(self, address: tuple[str, int], service: EmbeddingService) -> None:
        self.service = service
        super().__init__(address, _Handler)


def make_server(service: EmbeddingService, host: str = "127.0.0.1", port: int = 8080) -> ThreadingHTTPServer:
    """A bound server (port 0 picks a free one: read `server.server_address`); call `serve_forever()`."""
    return _Server((host, port), service)
