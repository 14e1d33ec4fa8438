"""Defaults that the command line shows in its help, kept apart from the modules that use them so that
building the parser (every `granite-gguf` command) imports neither the ASGI stack nor pyarrow."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_BATCH_ROWS = 1024  # embed-corpus: rows per Parquet shard and per Embedder call


@dataclass(frozen=True)
class Limits:
    """Bounds on requests and connections, so clients cannot make the server allocate or wait without end."""

    max_body_bytes: int = 4 * 1024 * 1024
    max_inputs: int = 256
    request_timeout_s: float = 60.0  # head, then body, must arrive within this; a stalled client is dropped
    keep_alive_s: int = 5  # an idle keep-alive connection is closed after this
    max_connections: int = 1024  # open connections (and requests in progress) before new requests get 503
    graceful_shutdown_s: int = 60  # on SIGTERM/SIGINT, requests in flight get this long to finish


@dataclass(frozen=True)
class Access:
    """Who may call the server: API keys (none: anyone) and the browser origins CORS allows (none: no CORS)."""

    api_keys: tuple[str, ...] = ()
    cors_origins: tuple[str, ...] = ()
