"""The exception type that the command line turns into `error: …` and exit status 2, and the one-line advice it
prints for an optional dependency whose extra is not installed."""


class UserError(ValueError):
    """Bad input from the user: a missing file, an unsupported model, a malformed checkpoint.

    A `ValueError`, so library callers catch it as they would any bad argument. The CLI prints the
    message on one line and exits 2; nothing else is written.
    """


# Optional dependencies: the top-level module a command imports → the pyproject extra that installs it
# (tests/test_packaging.py checks this table against pyproject.toml).
EXTRA_OF_MODULE = {
    "torch": "verify",
    "transformers": "verify",
    "sentence_transformers": "verify",
    "fastapi": "serve",
    "starlette": "serve",
    "uvicorn": "serve",
    "prometheus_client": "serve",
    "pyarrow": "corpus",
    "ray": "ray",
    "onnx": "bench",
    "onnxruntime": "bench",
}


def missing_extra_message(exc: ModuleNotFoundError) -> str | None:
    """The one-line advice for an optional dependency that is not installed; None for any other missing module."""
    module = (exc.name or "").split(".")[0]
    extra = EXTRA_OF_MODULE.get(module)
    if extra is None:
        return None
    return f"this needs {module}, from the '{extra}' extra: pip install 'granite-gguf[{extra}]'"
