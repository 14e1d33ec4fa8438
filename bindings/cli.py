"""The `embed` and `serve` commands; granite_gguf.cli registers them with `add_commands`."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from granite_gguf.bindings.batching import DEFAULT_MAX_BATCH_INPUTS
from granite_gguf.bindings.defaults import DEFAULT_BATCH_ROWS, Limits
from granite_gguf.bindings.embedder import LongInputs
from granite_gguf.cli_options import add_dim, add_gpu_layers, add_no_progress

LOCAL_RAY = "local"  # `embed-corpus --ray` without an address: start a local cluster


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    embed = commands.add_parser("embed", help="print the vectors of texts as JSON lines")
    embed.add_argument("gguf", type=Path)
    embed.add_argument("texts", nargs="+", help="texts to embed; '-' reads one text per line from stdin")
    add_dim(embed)
    embed.add_argument("--verbose", action="store_true", help="say on stderr what llama.cpp repacked and the context size")
    embed.set_defaults(run=run_embed)

    serve = commands.add_parser("serve", help="OpenAI-, ollama- and llama-server-compatible embeddings server",
                                description=f"Every option can also be set as {ENV_PREFIX}<OPTION> (e.g. "
                                            f"{ENV_PREFIX}PORT=9000, {ENV_PREFIX}API_KEY=k1,k2, {ENV_PREFIX}MODELS=a.gguf,"
                                            f"b=b.gguf); an option on the command line wins. docs/serving.md")
    serve.add_argument("models", nargs="*", metavar="[NAME=]GGUF",
                       help="the files to serve, each under its name (NAME=, else the file name without .gguf)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--model-name", help="with one file: the name clients see")
    serve.add_argument("--workers", type=int,
                       help="llama.cpp contexts per model, each with its share of --threads (default: the "
                            "Embedder's default_layout, one per thread, the fastest measured on CPU, docs/performance.md)")
    serve.add_argument("--batch-inputs", type=int, default=DEFAULT_MAX_BATCH_INPUTS,
                       help=f"at most this many inputs of concurrent requests in one shared decode, which also "
                            f"ends at the model's tokens per decode (default {DEFAULT_MAX_BATCH_INPUTS}; 1 runs "
                            "each request on its own)")
    serve.add_argument("--request-timeout", type=float, default=Limits.request_timeout_s, metavar="S",
                       help=f"a request's head, then its body, must arrive within S seconds (default "
                            f"{Limits.request_timeout_s:g}); slower clients are dropped")
    serve.add_argument("--api-key", action="append", metavar="KEY",
                       help="require Authorization: Bearer KEY on every route but /health (repeatable: any of them)")
    serve.add_argument("--cors-allow-origin", action="append", metavar="ORIGIN",
                       help="let browser pages from ORIGIN call the server (repeatable; * for any)")
    serve.add_argument("--log-format", choices=["text", "json"], default="text",
                       help="json: one JSON object per log line, with the request id")
    serve.set_defaults(run=run_serve)

    corpus = commands.add_parser("embed-corpus", help="embed a JSONL, Parquet or text corpus into Parquet shards "
                                                      "(resumable)")
    corpus.add_argument("input", type=Path, help="*.jsonl, *.parquet or *.txt (one text per line)")
    corpus.add_argument("--model", type=Path, required=True, help="the GGUF file")
    corpus.add_argument("--out", type=Path, required=True, help="folder for part-NNNNNN.parquet shards")
    corpus.add_argument("--text-field", default="text", help="column or JSON key of the text (default text)")
    corpus.add_argument("--id-field", default="id", help="column or JSON key of the id (default id; absent: the "
                                                        "row number)")
    add_dim(corpus)
    corpus.add_argument("--batch-rows", type=int, default=DEFAULT_BATCH_ROWS, help=f"rows per shard (default "
                                                                                   f"{DEFAULT_BATCH_ROWS})")
    corpus.add_argument("--max-tokens", type=int, help="tokens per input, longer ones truncated (default: the "
                                                       "model's, at most 8192)")
    corpus.add_argument("--threads", type=int, help="CPU threads (default: the CPUs this process may use; with "
                                                    "--ray: threads per actor, default 1)")
    corpus.add_argument("--ray", nargs="?", const=LOCAL_RAY, metavar="ADDRESS",
                        help="run on Ray Data: a local cluster started here, or the cluster at ADDRESS (auto, "
                             "HEAD:6379, from a node of it); input Parquet (file or folder) or JSONL with an id field")
    corpus.add_argument("--actors", type=int, help="with --ray: embedding actors (default: one per GPU, else one "
                                                   "per --threads CPUs, one CPU left for Ray Data's reads/writes)")
    add_no_progress(corpus)
    corpus.set_defaults(run=run_embed_corpus)
    add_gpu_layers(corpus)

    for command in (embed, serve):
        command.add_argument("--max-tokens", type=int, help="tokens per input (default: the model's, at most 8192)")
        command.add_argument("--long-inputs", choices=[mode.value for mode in LongInputs], default="truncate",
                             help="inputs past --max-tokens: truncate (default), error, or chunk and average")
        command.add_argument("--threads", type=int, help="CPU threads (default: the CPUs this process may use)")
        command.add_argument("--unsafe-skip-check", action="store_true",
                             help="hand the file to llama.cpp without validating it first (experts only)")
        add_gpu_layers(command)
    read_environment(serve)


ENV_PREFIX = "GRANITE_GGUF_"
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off", ""}


def read_environment(parser: argparse.ArgumentParser) -> None:
    """Every option of `parser` also from GRANITE_GGUF_<DEST> (as TEI and llama-server read theirs): the value
    becomes the option's default, so the command line wins. A bad value is kept for `run_serve` to refuse (the
    parser is built for every command, which must not fail on another command's variable)."""
    import os

    problems: list[str] = []
    for action in parser._actions:  # argparse's list of the options it was given
        name = ENV_PREFIX + action.dest.upper()
        if action.dest in ("help", "run") or name not in os.environ:
            continue
        raw = os.environ[name]
        try:
            action.default = _from_environment(action, raw)
            action.required = False
        except (ValueError, TypeError) as exc:
            problems.append(f"{name}={raw!r}: {exc}")
    parser.set_defaults(environment_problems=problems)


def _from_environment(action: argparse.Action, raw: str) -> object:
    if action.nargs == 0:  # a switch
        if raw.strip().lower() not in _TRUE | _FALSE:
            raise ValueError("expected 1/0, true/false, yes/no or on/off")
        return raw.strip().lower() in _TRUE
    convert = action.type if callable(action.type) else str
    many = isinstance(action, argparse._AppendAction) or action.nargs in ("*", "+")
    values = [convert(item.strip()) for item in raw.split(",") if item.strip()] if many else [convert(raw)]
    for value in values:
        if action.choices is not None and value not in action.choices:
            raise ValueError(f"expected one of {', '.join(map(str, action.choices))}")
    return values if many else values[0]


def run_embed(args: argparse.Namespace) -> int:
    from granite_gguf.bindings.embedder import Embedder

    texts = [line.rstrip("\n") for line in sys.stdin] if args.texts == ["-"] else args.texts
    with Embedder(args.gguf, n_threads=args.threads, max_tokens=args.max_tokens, gpu_layers=args.gpu_layers,
                  unsafe_skip_check=args.unsafe_skip_check) as embedder:
        vectors = embedder.encode(texts, truncate_dim=args.dim, long_inputs=args.long_inputs)
        if args.verbose:
            print(f"{args.gguf.name}: {embedder.describe()}", file=sys.stderr)
        for vector in vectors:  # before llama.cpp frees the model (60 ms for a 180,000-token vocabulary)
            print(json.dumps([round(float(x), 7) for x in vector]))
        sys.stdout.flush()
        if getattr(args, "quick_exit", False):  # the command line, not an in-process main(): no teardown
            quick_exit(0)
    return 0


def quick_exit(code: int) -> None:
    """End a one-shot process now, its output flushed: no freeing of llama.cpp's model (its vocabulary maps:
    about a tenth of `granite-gguf embed`'s wall time on a 180,000-token vocabulary) and no interpreter
    teardown (docs/performance.md, cold start). Only where nothing is left to clean up."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_serve(args: argparse.Namespace) -> int:
    from granite_gguf.bindings.defaults import Access
    from granite_gguf.bindings.server import listen, make_server  # the serve extra; granite_gguf.cli names it if missing
    from granite_gguf.bindings.service import EmbeddingService, Pool
    from granite_gguf.errors import UserError

    if args.environment_problems:
        raise UserError("; ".join(args.environment_problems))
    files = served_files(args.models, args.model_name)
    if args.batch_inputs < 1 or args.request_timeout <= 0:
        raise UserError("--batch-inputs and --request-timeout must be positive")
    pool = Pool.sized(args.threads, args.workers, max_tokens=args.max_tokens, gpu_layers=args.gpu_layers,
                      unsafe_skip_check=args.unsafe_skip_check, batch_inputs=args.batch_inputs)
    configure_logging(args.log_format)
    sock = listen(args.host, args.port)
    try:
        service = EmbeddingService.load(files, pool, LongInputs(args.long_inputs),
                                        Limits(request_timeout_s=args.request_timeout))
    except BaseException:
        sock.close()
        raise
    host, port = sock.getsockname()[:2]
    auth = "; API key required" if args.api_key else ""
    print(f"serving {', '.join(m.name for m in service.models)} on http://{host}:{port} (POST /v1/embeddings, "
          f"/api/embed; max {service.default.embedder.max_tokens} tokens per input; {pool.workers} worker(s) × "
          f"{pool.threads} thread(s){auth})", flush=True)
    access = Access(tuple(args.api_key or ()), tuple(args.cors_allow_origin or ()))
    try:
        make_server(service, access).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises the SIGINT/SIGTERM it handled, after its graceful shutdown
        pass
    finally:
        service.close()
        sock.close()
    print("stopped", flush=True)
    return 0


def served_files(specs: list[str], model_name: str | None) -> list[tuple[str, Path]]:
    """(name, path) per `[NAME=]GGUF`; `--model-name` names a single file."""
    from granite_gguf.errors import UserError

    if not specs:
        raise UserError(f"no GGUF file to serve: name one or more, or set {ENV_PREFIX}MODELS")
    if model_name and len(specs) > 1:
        raise UserError("--model-name names a single file; with several, write NAME=GGUF")
    files = []
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or "/" in name:  # a path that holds "=" in a folder name is a path
            name, path = "", spec
        files.append((model_name or name or Path(path).name.removesuffix(".gguf"), Path(path)))
    return files


def configure_logging(log_format: str) -> None:
    """Request lines (with ids), start and shutdown at INFO; as JSON objects with `--log-format json`."""
    from granite_gguf.bindings.logs import JsonFormatter

    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    for name in ("granite_gguf.bindings", "uvicorn.error"):
        logging.getLogger(name).setLevel(logging.INFO)


def run_embed_corpus(args: argparse.Namespace) -> int:
    from granite_gguf.bindings.corpus_job import run_job

    if args.ray is not None:
        return run_embed_corpus_on_ray(args)
    if args.actors is not None:
        from granite_gguf.errors import UserError

        raise UserError("--actors needs --ray")
    summary = run_job(args.input, args.model, args.out, text_field=args.text_field, id_field=args.id_field,
                      dim=args.dim, batch_rows=args.batch_rows, max_tokens=args.max_tokens, threads=args.threads,
                      gpu_layers=args.gpu_layers, progress=not args.no_progress)
    resumed = f" ({summary.resumed} found done by an earlier run)" if summary.resumed else ""
    print(f"wrote {summary.rows} rows in {summary.shards} shard(s) to {summary.out}{resumed}")
    return 0


def run_embed_corpus_on_ray(args: argparse.Namespace) -> int:
    from granite_gguf.bindings.ray_job import run_ray_job

    rows, plan = run_ray_job(args.input, args.model, args.out, text_field=args.text_field, id_field=args.id_field,
                             dim=args.dim, batch_rows=args.batch_rows, max_tokens=args.max_tokens,
                             address=None if args.ray == LOCAL_RAY else args.ray, actors=args.actors,
                             threads_per_actor=args.threads or 1, progress=not args.no_progress)
    print(f"wrote {rows} rows to {args.out} (Ray Data, {plan.actors} actor(s) of {plan.threads_per_actor} "
          f"thread(s){', GPU' if plan.gpus_per_actor else ''})")
    return 0
