"""The `embed` and `serve` commands; granite_gguf.cli registers them with `add_commands`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from granite_gguf.bindings.embedder import LongInputs


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    embed = commands.add_parser("embed", help="print the vectors of texts as JSON lines")
    embed.add_argument("gguf", type=Path)
    embed.add_argument("texts", nargs="+", help="texts to embed; '-' reads one text per line from stdin")
    embed.add_argument("--dim", type=int, help="Matryoshka dimension (one the GGUF declares)")
    embed.add_argument("--verbose", action="store_true", help="say on stderr what llama.cpp repacked and the context size")
    embed.set_defaults(run=run_embed)

    serve = commands.add_parser("serve", help="OpenAI- and ollama-compatible embeddings server")
    serve.add_argument("gguf", type=Path)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--model-name", help="the name clients see (default: the file name without .gguf)")
    serve.set_defaults(run=run_serve)

    for command in (embed, serve):
        command.add_argument("--max-tokens", type=int, help="tokens per input (default: the model's, at most 8192)")
        command.add_argument("--long-inputs", choices=[mode.value for mode in LongInputs], default="truncate",
                             help="inputs past --max-tokens: truncate (default), error, or chunk and average")
        command.add_argument("--threads", type=int, help="CPU threads (default: the CPUs this process may use)")
        command.add_argument("--unsafe-skip-check", action="store_true",
                             help="hand the file to llama.cpp without validating it first (experts only)")


def run_embed(args: argparse.Namespace) -> int:
    from granite_gguf.bindings.embedder import Embedder

    texts = [line.rstrip("\n") for line in sys.stdin] if args.texts == ["-"] else args.texts
    with Embedder(args.gguf, n_threads=args.threads, max_tokens=args.max_tokens,
                  unsafe_skip_check=args.unsafe_skip_check) as embedder:
        vectors = embedder.encode(texts, truncate_dim=args.dim, long_inputs=args.long_inputs)
        if args.verbose:
            print(f"{args.gguf.name}: {embedder.describe()}", file=sys.stderr)
    for vector in vectors:
        print(json.dumps([round(float(x), 7) for x in vector]))
    return 0


def run_serve(args: argparse.Namespace) -> int:
    from granite_gguf.bindings.embedder import Embedder
    from granite_gguf.bindings.server import EmbeddingService, make_server
    from granite_gguf.errors import UserError

    with Embedder(args.gguf, n_threads=args.threads, max_tokens=args.max_tokens,
                  unsafe_skip_check=args.unsafe_skip_check) as embedder:
        service = EmbeddingService(embedder, args.model_name or args.gguf.name.removesuffix(".gguf"),
                                   LongInputs(args.long_inputs))
        try:
            server = make_server(service, args.host, args.port)
        except OSError as exc:
            raise UserError(f"cannot listen on {args.host}:{args.port} ({exc.strerror})") from None
        host, port = server.server_address[:2]
        print(f"serving {service.model_name} on http://{host!s}:{port} "
              f"(POST /v1/embeddings, /api/embed; max {embedder.max_tokens} tokens per input)", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: a normal stop
            print("stopped", flush=True)
        finally:
            server.server_close()
    return 0
