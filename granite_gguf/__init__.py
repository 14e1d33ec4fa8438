"""granite-gguf: IBM Granite Embedding R2 (ModernBERT) checkpoints to verified GGUF files.

`from granite_gguf import Embedder` is the Python API (docs/python-api.md). It is imported on first
use, so `import granite_gguf` stays cheap (no numpy, no llama-cpp-python).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from granite_gguf.errors import UserError

if TYPE_CHECKING:
    from granite_gguf.bindings.embedder import Embedder

try:  # the version is written once, in pyproject.toml; the installed distribution's metadata carries it
    __version__ = version("granite-gguf")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"
__all__ = ["Embedder", "UserError", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "Embedder":
        from granite_gguf import bindings  # whose own __getattr__ imports the embedder

        return bindings.Embedder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
