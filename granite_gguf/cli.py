"""The `granite-gguf` command line: convert, verify, release, inspect, embed, serve, ollama packaging, fixture, demo.

User errors print one line `error: …` and exit 2 (no traceback); verify exits 1 on a parity failure.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType

from granite_gguf import __version__
from granite_gguf.bindings.cli import add_commands as add_embedding_commands
from granite_gguf.cli_options import add_gpu_layers, add_insecure, add_models_dir, add_no_progress
from granite_gguf.errors import UserError, missing_extra_message
from granite_gguf.modelfiles.cli import add_commands as add_modelfile_commands
from granite_gguf.models import ENGLISH, MULTILINGUAL_311M


def main(argv: Sequence[str] | None = None, *, quick_exit: bool = False) -> int:
    """Run one command; `quick_exit` (the command line's entry points): a one-shot `embed` ends its process as
    soon as its vectors are printed, without freeing the model (bindings/cli.py, `quick_exit`)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.quick_exit = quick_exit
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s", stream=sys.stderr)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        return int(args.run(args) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:  # an optional dependency whose extra is not installed
        advice = missing_extra_message(exc)
        if advice is None:
            raise
        print(f"error: {advice}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `granite-gguf inspect X | head`
        sys.stderr.close()
        return 0
    except OSError as exc:  # a file or folder the system refused (`--out /proc/x`, a symlink loop): the user's to fix
        if exc.filename is None:
            raise
        print(f"error: {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 2


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    """Turn SIGTERM into an exception so temporary outputs are removed on the way out."""
    raise KeyboardInterrupt


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="granite-gguf", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    convert = commands.add_parser("convert", help="convert a checkpoint folder or hub repo id to GGUF")
    convert.add_argument("source", help=f"checkpoint folder, or a hub repo id such as {ENGLISH.hub_id}")
    convert.add_argument("-o", "--output", type=Path, help="output .gguf (default: <model>-<type>.gguf here)")
    convert.add_argument("--outtype", default="f16", help="f32, f16, bf16 or q8_0 (default f16)")
    convert.add_argument("--quant", help="several llama.cpp types at once, e.g. f16,q8_0,q6_k,q5_k_m,q4_k_m,q4_0 "
                                         "(written as <model>-<type>.gguf in --outdir)")
    convert.add_argument("--outdir", type=Path, default=Path("."), help="folder for --quant (default: here)")
    convert.add_argument("--matryoshka-dims", help="comma-separated dimensions, e.g. 768,512,256 (default: built-in table)")
    add_no_progress(convert)
    convert.set_defaults(run=run_convert)

    verify = commands.add_parser("verify", help="check a GGUF against the PyTorch reference (exit 1 on failure)")
    verify.add_argument("source", help="the checkpoint the GGUF was converted from")
    verify.add_argument("gguf", type=Path, nargs="*", help="one or more GGUF files")
    verify.add_argument("--all", type=Path, metavar="DIR", help="also every *.gguf in DIR (a `convert --quant` set)")
    verify.add_argument("--json", type=Path, help="also write the reports as JSON")
    verify.add_argument("--threshold", type=float, help="minimum cosine (default: per file type)")
    add_gpu_layers(verify)
    verify.set_defaults(run=run_verify)

    release = commands.add_parser("release", help="convert the recommended set, verify each file, certify, install "
                                                  "into the ollama store and push (exit 1 if any file fails)")
    release.add_argument("source", help="checkpoint folder, hub repo id, or a Granite R2 model name "
                                        f"(e.g. {MULTILINGUAL_311M.name})")
    release.add_argument("--outdir", type=Path, required=True, help="folder for the GGUF files and Modelfiles")
    release.add_argument("--quant", help="types and recipes (default: the recommended set of the model, docs/quality.md)")
    release.add_argument("--name", help="store the files as NS/MODEL:TYPE (default: the model's name)")
    release.add_argument("--push", metavar="HOST:PORT/NS/MODEL", help="also push each file as HOST:PORT/NS/MODEL:TYPE")
    add_insecure(release)
    add_models_dir(release)
    release.add_argument("--full-probes", action="store_true",
                         help="verify on the full probe set instead of the smaller gate set")
    release.add_argument("--signing-key", type=Path, metavar="KEY",
                         help="sign each certificate with this ed25519 private key (`granite-gguf keygen`); a rerun "
                              "trusts only certificates signed by it and verifies every other file again")
    add_no_progress(release)
    release.set_defaults(run=run_release)

    keygen = commands.add_parser("keygen", help="make an ed25519 key pair for signing release certificates")
    keygen.add_argument("key", type=Path, help="the private key file to write (the public key goes to KEY.pub)")
    keygen.set_defaults(run=run_keygen)

    inspect = commands.add_parser("inspect", help="show a GGUF's metadata, tensor types and tokenizer")
    inspect.add_argument("gguf", type=Path)
    inspect.add_argument("--json", action="store_true", help="print JSON")
    inspect.set_defaults(run=run_inspect)

    check = commands.add_parser("check", help="validate GGUF files before llama.cpp loads them (exit 1 if any is bad)")
    check.add_argument("gguf", type=Path, nargs="+")
    check.add_argument("--public-key", type=Path, metavar="KEY.pub",
                       help="also require a certificate signed by this ed25519 public key (the releaser's)")
    check.set_defaults(run=run_check)

    fixture = commands.add_parser("fixture", help="build a tiny Granite-R2-shaped test checkpoint")
    fixture.add_argument("name", choices=_FixtureNames(), metavar="NAME",
                         help="a built-in fixture (an unknown name lists them)")
    fixture.add_argument("dest", type=Path)
    fixture.set_defaults(run=run_fixture)

    demo = commands.add_parser("demo", help="fixture → GGUF → verify → embed two sentences")
    demo.add_argument("--outdir", type=Path, default=Path("out"))
    demo.set_defaults(run=run_demo)

    add_embedding_commands(commands)
    add_modelfile_commands(commands)
    return parser


class _FixtureNames:
    """The fixture names as argparse `choices`, read from granite_gguf.dev.fixtures only when argparse looks (a
    `fixture` command, its help): building the parser for `embed` does not import the checkpoint writer."""

    def __contains__(self, name: object) -> bool:
        return name in self._names()

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    @staticmethod
    def _names() -> list[str]:
        from granite_gguf.dev.fixtures import FIXTURES

        return list(FIXTURES)


def _parse_dims(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise UserError(f"--matryoshka-dims: expected comma-separated integers, got {text!r}") from None


def run_convert(args: argparse.Namespace) -> int:
    from granite_gguf.convert.quantize import convert_set
    from granite_gguf.convert.source import open_checkpoint
    from granite_gguf.convert.types import OutType, Writer
    from granite_gguf.convert.writer import convert

    if args.quant and args.output:
        raise UserError("--quant writes several files into --outdir; -o names a single file")
    outputs = OutType.parse_list(args.quant) if args.quant else None
    outtype = OutType.parse(args.outtype, Writer.GGUF_PY)
    dims = _parse_dims(args.matryoshka_dims)
    ckpt = open_checkpoint(args.source)
    model_name = Path(ckpt.source.rstrip("/")).name
    if outputs:
        for result in convert_set(ckpt, args.outdir, outputs, model_name=model_name, progress=not args.no_progress,
                                  matryoshka_dims=dims):
            note = ("" if result.truthful else
                    f"  (asked for {result.output.label}; most weights are {result.dominant_type.name})")
            print(f"wrote {result.path} ({result.path.stat().st_size / 2**20:.1f} MiB){note}")
        return 0
    output = args.output or Path(f"{model_name}-{outtype.label}.gguf")
    convert(ckpt, output, outtype, matryoshka_dims=dims, progress=not args.no_progress)
    print(f"wrote {output} ({output.stat().st_size / 2**20:.1f} MiB, {outtype.label})")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from granite_gguf.verify import compare, run_reference

    paths = list(args.gguf)
    if args.all is not None:
        if not args.all.is_dir():
            raise UserError(f"--all {args.all}: no such directory")
        paths += sorted(path for path in args.all.glob("*.gguf") if not path.name.startswith("."))
    if not paths:
        raise UserError("no GGUF file to verify: name files, or a folder with --all")
    for path in paths:
        if not path.is_file():
            raise UserError(f"{path}: no such GGUF file")
    reference = run_reference(args.source)
    reports = []
    for path in paths:
        report = compare(reference, path, args.threshold, args.gpu_layers)
        print(report.table() + "\n")
        reports.append(report)
    if args.json:
        args.json.write_text(json.dumps([r.as_dict() for r in reports], indent=2, ensure_ascii=False))
    return 0 if all(r.passed for r in reports) else 1


def run_release(args: argparse.Namespace) -> int:
    from granite_gguf.certificate import load_private_key
    from granite_gguf.convert.types import OutType
    from granite_gguf.release import probe_set_line, release, summary_table

    signing_key = load_private_key(args.signing_key) if args.signing_key else None
    results = release(args.source, args.outdir, outputs=OutType.parse_list(args.quant) if args.quant else None,
                      name=args.name, push_to=args.push, insecure=args.insecure, models_dir=args.models_dir,
                      probe_set="full" if args.full_probes else "gate", progress=not args.no_progress,
                      signing_key=signing_key)
    print(probe_set_line(results))
    print(summary_table(results))
    failed = [r.path.name for r in results if not r.passed]
    for name in failed:
        print(f"refused: {name} failed verification; not installed or pushed", file=sys.stderr)
    return 1 if failed else 0


def run_keygen(args: argparse.Namespace) -> int:
    from granite_gguf.certificate import generate_key

    public = generate_key(args.key)
    print(f"wrote {args.key} (private: keep it; `release --signing-key`) and {public} (public: `check --public-key`)")
    return 0


def run_inspect(args: argparse.Namespace) -> int:
    from granite_gguf import certificate
    from granite_gguf.gguf_file import load
    from granite_gguf.gguf_file.summary import render

    file = load(args.gguf, check=False, whole=True)  # any GGUF, even one the check refuses
    if args.json:
        found = certificate.read_certificate(file.header)
        print(json.dumps({"metadata": file.summary.metadata, "tensor_types": file.summary.tensor_types,
                          "tensor_bytes": file.summary.tensor_bytes,
                          "certificate": found.as_dict() if found else None}, indent=2, ensure_ascii=False))
    else:
        print(render(file, certificate.describe(file.header)))
    return 0


def run_check(args: argparse.Namespace) -> int:
    from gguf import Keys

    from granite_gguf.certificate import check_certificate, load_public_key, read_certificate
    from granite_gguf.gguf_file import GGUFCheckError, load

    public_key = load_public_key(args.public_key) if args.public_key else None
    bad = 0
    for path in args.gguf:
        try:
            checked = load(path, whole=True).header  # checked now, and remembered for the Embedder
        except GGUFCheckError as exc:
            bad += 1
            print(f"INVALID {exc}")
            continue
        vocab = len(checked.metadata[Keys.Tokenizer.LIST])
        certificate = read_certificate(checked)
        verdict = check_certificate(checked, certificate, public_key) if certificate else None
        if verdict is not None and not verdict.ok or verdict is None and public_key is not None:
            bad += 1
            print(f"INVALID {path}: {verdict.note if verdict else 'no certificate, and --public-key asks for a signed one'}")
            continue
        note = f", certificate {certificate.result} ({verdict.note})" if certificate and verdict else ""
        print(f"ok      {path}: GGUF v{checked.version}, {len(checked.tensors)} tensors, {len(checked.metadata)} keys, "
              f"{vocab} tokens{note}")
    return 1 if bad else 0


def run_fixture(args: argparse.Namespace) -> int:
    from granite_gguf.dev.fixtures import build_fixture

    print(f"built {build_fixture(args.name, args.dest)}")
    return 0


def run_demo(args: argparse.Namespace) -> int:
    """The README's first command: everything end to end on the Gemma-style (311m-shaped) fixture."""
    import numpy as np

    from granite_gguf.bindings.embedder import Embedder
    from granite_gguf.convert.source import open_checkpoint
    from granite_gguf.convert.types import OutType
    from granite_gguf.convert.writer import convert
    from granite_gguf.dev.fixtures import build_fixture
    from granite_gguf.verify import compare, run_reference

    args.outdir.mkdir(parents=True, exist_ok=True)
    source = build_fixture("tiny-gemma3", args.outdir / "tiny-gemma3")
    print(f"1. fixture checkpoint: {source}")
    gguf = convert(open_checkpoint(str(source)), args.outdir / "tiny-gemma3-f16.gguf", OutType.F16)
    print(f"2. converted: {gguf}")
    report = compare(run_reference(str(source)), gguf)
    print("3. parity against PyTorch on the built-in probe set:\n" + report.table())
    sentences = ["The cat sits on the mat.", "Die Katze sitzt auf der Matte."]
    with Embedder(gguf) as embedder:
        vectors = embedder.encode(sentences)
    print(f"4. embedded {len(sentences)} sentences: shape {vectors.shape}, cosine {float(np.dot(vectors[0], vectors[1])):.4f}")
    for sentence, vector in zip(sentences, vectors):
        print(f"   {sentence!r}: [{', '.join(f'{x:+.4f}' for x in vector[:4])}, …]")
    return 0 if report.passed else 1


def console_main() -> int:
    """The `granite-gguf` console script."""
    return main(quick_exit=True)


if __name__ == "__main__":
    sys.exit(main(quick_exit=True))
