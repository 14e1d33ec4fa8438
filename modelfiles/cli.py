"""The `modelfile`, `ollama install|list|remove`, `push` and `pull` commands; granite_gguf.cli registers them with `add_commands`."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from granite_gguf.cli_options import add_insecure, add_models_dir
from granite_gguf.errors import UserError


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    modelfile = commands.add_parser("modelfile", help="write an ollama Modelfile for an embedding GGUF, or check one")
    modelfile.add_argument("gguf", type=Path, nargs="?", help="the GGUF the Modelfile is for")
    modelfile.add_argument("-o", "--output", type=Path,
                           help="Modelfile to write (default: print it; FROM is then relative to this folder)")
    modelfile.add_argument("--check", type=Path, metavar="FILE",
                           help="print each problem as FILE:LINE: message (warning: where ollama accepts the file "
                                "but reads it otherwise than it looks); exit 1 if ollama would refuse the file")
    modelfile.set_defaults(run=run_modelfile)

    ollama = commands.add_parser("ollama", help="install, list and remove models in an ollama model store")
    store_commands = ollama.add_subparsers(dest="ollama_command", required=True)
    install = store_commands.add_parser("install", help="store a GGUF or a Modelfile's model under NAME")
    install.add_argument("source", type=Path, help="a .gguf, or a Modelfile whose FROM names one")
    install.add_argument("--name", required=True, help="[host/][namespace/]model[:tag] (tag default: latest)")
    install.set_defaults(run=run_install)
    listing = store_commands.add_parser("list", help="the models in the store")
    listing.set_defaults(run=run_list)
    remove = store_commands.add_parser("remove", help="remove a model and the blobs only it uses")
    remove.add_argument("name")
    remove.set_defaults(run=run_remove)

    push = commands.add_parser("push", help="upload a model from the ollama store to a registry")
    push.add_argument("name", help="the model in the store: [host/][namespace/]model[:tag]")
    push.add_argument("target", help="[http[s]://]host:port/namespace/model:tag")
    push.set_defaults(run=run_push)
    pull = commands.add_parser("pull", help="download a model from a registry into the ollama store")
    pull.add_argument("target", help="[http[s]://]host:port/namespace/model:tag")
    pull.add_argument("--name", help="store it under this name (default: TARGET, as ollama does)")
    pull.set_defaults(run=run_pull)
    for command in (push, pull):
        add_insecure(command)
    for command in (install, listing, remove, push, pull):
        add_models_dir(command)


def run_modelfile(args: argparse.Namespace) -> int:
    from granite_gguf.files import write_atomic
    from granite_gguf.modelfiles.modelfile import check_modelfile, generate_modelfile, read_modelfile

    if (args.gguf is None) == (args.check is None):
        raise UserError("give either a GGUF to write a Modelfile for, or --check FILE")
    if args.check:
        problems = check_modelfile(read_modelfile(args.check))
        for problem in problems:
            print(f"{args.check}:{problem.line}: {'' if problem.fatal else 'warning: '}{problem.message}")
        if not problems:
            print(f"{args.check}: ok")
        return 1 if any(problem.fatal for problem in problems) else 0
    text = generate_modelfile(args.gguf, args.output or Path.cwd() / "Modelfile")
    if args.output is None:
        print(text, end="")
        return 0
    data = text.encode()
    write_atomic(args.output, lambda out: out.write(data))
    print(f"wrote {args.output}")
    return 0


def run_install(args: argparse.Namespace) -> int:
    from granite_gguf.modelfiles.store import install

    model = install(args.source, args.name, args.models_dir)
    print(f"installed {model.name} ({model.digest[7:19]}, {_size(model.size)})")
    return 0


def run_list(args: argparse.Namespace) -> int:
    from granite_gguf.modelfiles.store import list_models

    models = list_models(args.models_dir)
    width = max([len("NAME"), *(len(model.name) for model in models)])
    print(f"{'NAME':<{width}}  {'ID':<12}  {'SIZE':>9}  MODIFIED")
    for model in models:
        modified = time.strftime("%Y-%m-%d %H:%M", time.localtime(model.modified))
        print(f"{model.name:<{width}}  {model.digest[7:19]}  {_size(model.size):>9}  {modified}")
    return 0


def run_remove(args: argparse.Namespace) -> int:
    from granite_gguf.modelfiles.store import remove

    remove(args.name, args.models_dir)
    print(f"deleted '{args.name}'")
    return 0


def run_push(args: argparse.Namespace) -> int:
    from granite_gguf.modelfiles.registry import push

    push(args.name, args.target, args.models_dir, args.insecure)
    print(f"pushed {args.name} to {args.target}")
    return 0


def run_pull(args: argparse.Namespace) -> int:
    from granite_gguf.modelfiles.registry import pull

    pull(args.target, args.models_dir, args.insecure, args.name)
    print(f"pulled {args.target}" + (f" as {args.name}" if args.name else ""))
    return 0


def _size(n_bytes: int) -> str:
    return f"{n_bytes / 1e9:.1f} GB" if n_bytes >= 1e9 else f"{n_bytes / 1e6:.1f} MB"
