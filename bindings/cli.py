"""The `embed` and `serve` commands; granite_gguf.cli registers them with `add_commands`."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from granite_gguf.bindings.batching import DEFAULT_MAX_BATCH_INPUTS
from granite_gguf.bindings.defaults import DEFAULT_BATCH_ROWS, Limits
from granite_gguf.bindings.embedder import LongInputs

LOCAL_RAY = "local"  # `embed-corpus --ray` without an address: start a local cluster


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
    serve.add_argument("--workers", type=int,
                       help="llama.cpp contexts, each with its share of --threads (default: the Embedder's "
                            "default_layout, one per thread, the fastest measured on CPU, docs/performance.md)")
    serve.add_argument("--batch-inputs", type=int, default=DEFAULT_MAX_BATCH_INPUTS,
                       help=f"inputs of concurrent requests packed into one shared call (default "
                            f"{DEFAULT_MAX_BATCH_INPUTS}; 1 runs each request on its own)")
    serve.add_argument("--request-timeout", type=float, default=Limits.request_timeout_s, metavar="S",
                       help=f"a request's head, then its body, must arrive within S seconds (default "
                            f"{Limits.request_timeout_s:g}); slower clients are dropped")
    serve.set_defaults(run=run_serve)

    corpus = commands.add_parser("embed-corpus", help="embed a JSONL, Parquet or text corpus into Parquet shards "
                                                      "(resumable)")
    corpus.add_argument("input", type=Path, help="*.jsonl, *.parquet or *.txt (one text per line)")
    corpus.add_argument("--model", type=Path, required=True, help="the GGUF file")
    corpus.add_argument("--out", type=Path, required=True, help="folder for part-NNNNNN.parquet shards")
    corpus.add_argument("--text-field", default="text", help="column or JSON key of the text (default text)")
    corpus.add_argument("--id-field", default="id", help="column or JSON key of the id (default id; absent: the "
                                                        "row number)")
    corpus.add_argument("--dim", type=int, help="Matryoshka dimension (one the GGUF declares)")
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
    corpus.add_argument("--no-progress", action="store_true", help="no progress bar")
    corpus.set_defaults(run=run_embed_corpus)

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
        for vector in vectors:  # before llama.cpp frees the model (60 ms for a 180,000-token vocabulary)
            print(json.dumps([round(float(x), 7) for x in vector]))
        sys.stdout.flush()
    return 0


def run_serve(args: argparse.Namespace) -> int:
    from granite_gguf.bindings.batching import Batcher
    from granite_gguf.bindings.embedder import Embedder, default_layout, usable_threads
    from granite_gguf.bindings.server import listen, make_server
    from granite_gguf.bindings.service import EmbeddingService, ServedModel
    from granite_gguf.errors import UserError

    total_threads = args.threads or usable_threads()
    workers = default_layout(total_threads).workers if args.workers is None else args.workers
    if workers < 1 or args.batch_inputs < 1 or args.request_timeout <= 0:
        raise UserError("--workers, --batch-inputs and --request-timeout must be positive")
    sock = listen(args.host, args.port)
    threads = max(1, total_threads // workers)
    embedders: list[Embedder] = []
    try:
        for _ in range(workers):
            embedders.append(Embedder(args.gguf, n_threads=threads, max_tokens=args.max_tokens,
                                      unsafe_skip_check=args.unsafe_skip_check, workers=1))
    except BaseException:
        for embedder in embedders:
            embedder.close()
        sock.close()
        raise
    batcher = Batcher(embedders, max_batch_inputs=args.batch_inputs)
    model = ServedModel(args.model_name or args.gguf.name.removesuffix(".gguf"), batcher)
    service = EmbeddingService([model], LongInputs(args.long_inputs), Limits(request_timeout_s=args.request_timeout))
    for name in ("granite_gguf.bindings", "uvicorn.error"):  # request lines (with ids), start and shutdown
        logging.getLogger(name).setLevel(logging.INFO)
    host, port = sock.getsockname()[:2]
    print(f"serving {model.name} on http://{host}:{port} (POST /v1/embeddings, /api/embed; "
          f"max {embedders[0].max_tokens} tokens per input; {workers} worker(s) × {threads} thread(s))",
          flush=True)
    try:
        make_server(service).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises the SIGINT/SIGTERM it handled, after its graceful shutdown
        pass
    finally:
        batcher.close()
        sock.close()
    print("stopped", flush=True)
    return 0


def run_embed_corpus(args: argparse.Namespace) -> int:
    from granite_gguf.bindings.corpus_job import run_job

    if args.ray is not None:
        return run_embed_corpus_on_ray(args)
    if args.actors is not None:
        from granite_gguf.errors import UserError

        raise UserError("--actors needs --ray")
    summary = run_job(args.input, args.model, args.out, text_field=args.text_field, id_field=args.id_field,
                      dim=args.dim, batch_rows=args.batch_rows, max_tokens=args.max_tokens, threads=args.threads,
                      progress=not args.no_progress)
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
