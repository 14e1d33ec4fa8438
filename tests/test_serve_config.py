"""`serve` configuration without a model: every option from a GRANITE_GGUF_* variable, the command line winning,
bad values refused with one line, and the `[NAME=]GGUF` list (tests/test_server_production.py runs a server
configured this way)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from granite_gguf.bindings.cli import served_files
from granite_gguf.cli import build_parser
from granite_gguf.errors import UserError
from tests.helpers import run_cli_process


def parsed(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], *argv: str) -> argparse.Namespace:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return build_parser().parse_args(["serve", *argv])


def test_every_serve_option_has_a_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"GRANITE_GGUF_HOST": "0.0.0.0", "GRANITE_GGUF_PORT": "9000", "GRANITE_GGUF_MODEL_NAME": "g",
           "GRANITE_GGUF_WORKERS": "3", "GRANITE_GGUF_BATCH_INPUTS": "16", "GRANITE_GGUF_REQUEST_TIMEOUT": "2.5",
           "GRANITE_GGUF_API_KEY": "k1, k2", "GRANITE_GGUF_CORS_ALLOW_ORIGIN": "https://a.example",
           "GRANITE_GGUF_LOG_FORMAT": "json", "GRANITE_GGUF_MAX_TOKENS": "128", "GRANITE_GGUF_LONG_INPUTS": "chunk",
           "GRANITE_GGUF_THREADS": "2", "GRANITE_GGUF_UNSAFE_SKIP_CHECK": "yes", "GRANITE_GGUF_GPU_LAYERS": "-1",
           "GRANITE_GGUF_MODELS": "a.gguf"}
    args = parsed(monkeypatch, env)
    assert (args.host, args.port, args.model_name, args.workers, args.batch_inputs, args.request_timeout) == \
        ("0.0.0.0", 9000, "g", 3, 16, 2.5)
    assert args.api_key == ["k1", "k2"] and args.cors_allow_origin == ["https://a.example"]
    assert (args.log_format, args.max_tokens, args.long_inputs, args.threads) == ("json", 128, "chunk", 2)
    assert args.unsafe_skip_check is True and args.gpu_layers == -1 and args.models == ["a.gguf"]
    assert args.environment_problems == []
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    options = {action.dest for action in commands.choices["serve"]._actions}
    assert {name.removeprefix("GRANITE_GGUF_").lower() for name in env} == options - {"help", "run"}


def test_the_command_line_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    args = parsed(monkeypatch, {"GRANITE_GGUF_PORT": "9000", "GRANITE_GGUF_API_KEY": "env-key",
                                "GRANITE_GGUF_MODELS": "env.gguf"}, "cli.gguf", "--port", "7", "--api-key", "cli-key")
    assert args.port == 7 and args.models == ["cli.gguf"]
    assert args.api_key == ["env-key", "cli-key"]  # argparse appends to a list default: both keys are accepted


@pytest.mark.parametrize(("env", "message"), [({"GRANITE_GGUF_WORKERS": "two"}, "GRANITE_GGUF_WORKERS='two'"),
                                              ({"GRANITE_GGUF_LOG_FORMAT": "xml"}, "expected one of text, json"),
                                              ({"GRANITE_GGUF_UNSAFE_SKIP_CHECK": "maybe"}, "expected 1/0")])
def test_a_bad_variable_is_one_error_line(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = run_cli_process("serve", "x.gguf")
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert run_cli_process("inspect", "missing.gguf").stderr.startswith("error: missing.gguf")  # other commands unharmed


def test_served_files_names() -> None:
    assert served_files(["a/b/m.gguf", "x=c.gguf"], None) == [("m", Path("a/b/m.gguf")), ("x", Path("c.gguf"))]
    assert served_files(["a/dir=1/m.gguf"], "g") == [("g", Path("a/dir=1/m.gguf"))]  # "=" in a folder name
    with pytest.raises(UserError, match="--model-name names a single file"):
        served_files(["a.gguf", "b.gguf"], "g")
    with pytest.raises(UserError, match="no GGUF file to serve"):
        served_files([], None)
