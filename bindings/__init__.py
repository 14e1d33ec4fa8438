"""Running GGUF embedding models through llama-cpp-python: `Embedder` (imported on first use)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from granite_gguf.bindings.embedder import Embedder

__all__ = ["Embedder"]


def __getattr__(name: str) -> Any:
    if name == "Embedder":
        from granite_gguf.bindings.embedder import Embedder

        return Embedder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
