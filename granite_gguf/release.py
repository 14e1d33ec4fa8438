"""`granite-gguf release`: a checkpoint to a verified set of GGUF files, installed (and pushed) for ollama.

One command instead of five: convert the set (`convert_set`: the checkpoint read once, every type by
llama.cpp's quantizer), run the PyTorch reference once for the whole set, verify every file with
verify's `measure`, write its certificate into it (granite_gguf.certificate), write a Modelfile
beside it, install it into the ollama store as NS/MODEL:TYPE and, if asked, push it to
HOST:PORT/NS/MODEL:TYPE (a recipe's tag spelt with `-` for `+`). A file that fails its gate is
neither installed nor pushed, and the run ends with exit 1 naming it.

Resumable: a file in the output folder whose certificate names this checkpoint (hub revision or
content hash), this probe set, this tool version and this label is not converted again. It is not
verified again only if its certificate is signed by this run's signing key and the file still has the
certified hashes: that proves this releaser verified exactly this file. Any other certificate (unsigned,
or another key's) may be forged (docs/security.md, "Certificates"), so the file is verified again.

Cost: the full probe set on the full-size 311m shape did not finish in 24 minutes on 2 cores, so
the default gate is `probes.gate_texts` (every long probe, the rest stratified over scripts and
lengths); `--full-probes` uses the whole set. The certificate records which one was used.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from granite_gguf import __version__
from granite_gguf.bindings.embedder import Embedder
from granite_gguf.certificate import (
    Certificate,
    check_certificate,
    checkpoint_identity,
    metadata_sha256,
    new_certificate,
    read_certificate,
    tensor_data_sha256,
    write_certificate,
)
from granite_gguf.convert.quantize import convert_set
from granite_gguf.convert.source import open_checkpoint
from granite_gguf.convert.types import OutType
from granite_gguf.files import write_atomic
from granite_gguf.gguf_file import GGUFCheckError, load
from granite_gguf.models import DEFAULT_SET, by_name
from granite_gguf.probes import gate_texts, probe_texts
from granite_gguf.quality import effective_types
from granite_gguf.verify import Reference, default_threshold, measure, report_of, run_reference, texts_digest

PROBE_SETS: dict[str, Callable[[], tuple[str, ...]]] = {"gate": gate_texts, "full": probe_texts}


@dataclass
class ReleasedFile:
    label: str
    path: Path
    certificate: Certificate
    reused: bool  # verified by an earlier run with the same inputs, as its certificate signed with this key proves
    types: str  # effective GGML types, share of parameters
    installed: str | None = None  # the store name
    pushed: str | None = None  # the registry target

    @property
    def passed(self) -> bool:
        return self.certificate.result == "PASS"


def hub_id(source: str) -> str:
    """A Granite R2 model name stands for its hub repo id; anything else is passed through."""
    model = by_name(source)
    return model.hub_id if model else source


def recommended_set(model_name: str) -> list[OutType]:
    """The published model's recommended types (granite_gguf.models); any other checkpoint gets the default set."""
    model = by_name(model_name)
    return list(model.recommended if model else DEFAULT_SET)


def release(source: str, outdir: Path, *, outputs: list[OutType] | None = None, name: str | None = None,
            push_to: str | None = None, insecure: bool = False, models_dir: Path | None = None,
            probe_set: str = "gate", progress: bool = False,
            signing_key: Ed25519PrivateKey | None = None) -> list[ReleasedFile]:
    """Convert, verify, certify (signed with `signing_key`, if given), write Modelfiles, install and push; returns one
    entry per output type."""
    from granite_gguf.modelfiles.store import ModelName

    ckpt = open_checkpoint(hub_id(source))
    model_name = Path(ckpt.source.rstrip("/")).name
    outputs = outputs or recommended_set(model_name)
    namespace_model = name or model_name
    for output in outputs:  # refuse bad names before any work
        ModelName.parse(f"{namespace_model}:{output.file_label}")
        if push_to:
            ModelName.parse(f"{push_to}:{output.file_label}")
    texts = PROBE_SETS[probe_set]()
    outdir.mkdir(parents=True, exist_ok=True)
    identity = checkpoint_identity(ckpt)
    earlier = certified_files(outdir, identity, texts_digest(texts), signing_key)
    released = {f.label: f for f in earlier if f.reused}
    unproven = {f.label: f.path for f in earlier if not f.reused}  # converted before; verified again
    todo = [output for output in outputs if output.label not in released and output.label not in unproven]
    to_verify = {label: path for label, path in unproven.items() if label in {output.label for output in outputs}}
    if todo or to_verify:
        files = convert_set(ckpt, outdir, todo, model_name=model_name, progress=progress) if todo else []
        to_verify.update((written.output.label, written.path) for written in files)
        reference = run_reference(ckpt, texts)
        for label, path in to_verify.items():
            released[label] = certify(label, path, reference, probe_set, signing_key)
    results = [released[output.label] for output in outputs]
    for result in results:
        if result.passed:
            tag = OutType.parse(result.label).file_label
            result.installed = install(result.path, f"{namespace_model}:{tag}", models_dir)
            if push_to:
                from granite_gguf.modelfiles.registry import push

                push(result.installed, f"{push_to}:{tag}", models_dir, insecure)
                result.pushed = f"{push_to}:{tag}"
    return results


def certified_files(outdir: Path, identity: str, probes_sha256: str,
                    signing_key: Ed25519PrivateKey | None) -> list[ReleasedFile]:
    """The files in `outdir` whose certificates name these inputs; `reused` when the certificate is signed by
    `signing_key` and the file still has its hashes (only then is its verification trusted)."""
    found = []
    for path in sorted(outdir.glob("*.gguf")):
        try:
            file = load(path, check=False, whole=True)
        except GGUFCheckError:
            continue
        header = file.header
        certificate = read_certificate(header)
        if (certificate is not None and certificate.checkpoint == identity and certificate.probe_sha256 == probes_sha256
                and certificate.tool_version == __version__):
            proven = signing_key is not None and check_certificate(header, certificate, signing_key.public_key()).ok
            found.append(ReleasedFile(certificate.label, path, certificate, proven, effective_types(file.summary)))
    return found


def certify(label: str, path: Path, reference: Reference, probe_set: str,
            signing_key: Ed25519PrivateKey | None = None) -> ReleasedFile:
    """Verify `path` against `reference` and write the outcome into it as its certificate (signed, with a key)."""
    with Embedder(path, max_tokens=reference.needed) as embedder:
        threshold = default_threshold(embedder.header)
        metrics = measure(embedder, reference)
        report = report_of(reference, metrics, path, embedder.summary.file_type_name, threshold)
        header, summary = embedder.header, embedder.summary
    certificate = new_certificate(
        label=label, reference=reference.source, checkpoint=reference.checkpoint_id, probe_set=probe_set,
        probe_sha256=reference.texts_digest, probe_texts=report.n_texts, token_limit=report.token_limit,
        texts_cut=len(report.truncated_texts), token_mismatches=report.token_mismatches,
        cosine_min=report.cosine_min, cosine_mean=report.cosine_mean, threshold=threshold,
        result="PASS" if report.passed else "FAIL", tensor_sha256=tensor_data_sha256(header),
        metadata_sha256=metadata_sha256(load(path, check=False, whole=True).header),
    )
    write_certificate(path, certificate, signing_key)
    return ReleasedFile(label, path, certificate, False, effective_types(summary))


def install(path: Path, store_name: str, models_dir: Path | None) -> str:
    """Write the Modelfile beside `path` and install it as `store_name`, unless the store already
    holds exactly this file under that name."""
    from granite_gguf.modelfiles.modelfile import generate_modelfile
    from granite_gguf.modelfiles.store import (
        MODEL_MEDIA_TYPE,
        ModelName,
        manifest_entries,
        manifest_file_path,
        models_dir_or_default,
        sha256_of_file,
    )
    from granite_gguf.modelfiles.store import install as store_install

    modelfile = path.with_suffix(".Modelfile")
    text = generate_modelfile(path, modelfile).encode()
    if not modelfile.is_file() or modelfile.read_bytes() != text:
        write_atomic(modelfile, lambda out: out.write(text))
    manifest = manifest_file_path(models_dir_or_default(models_dir), ModelName.parse(store_name))
    digest = sha256_of_file(path)
    if not (manifest.is_file() and any(entry.get("mediaType") == MODEL_MEDIA_TYPE and entry.get("digest") == digest
                                       for entry in manifest_entries(manifest))):
        store_install(modelfile, store_name, models_dir)
    return store_name


def summary_table(results: list[ReleasedFile]) -> str:
    """One row per file: file, size, effective types, tokens, cosine min/mean, gate, result."""
    header = ("file", "size", "effective types", "tokens", "cos min", "cos mean", "gate", "result")
    rows = [header]
    for r in results:
        c = r.certificate
        outcome = "PASS" if r.passed else "FAIL: not installed"
        if r.installed:
            outcome += f", installed {r.installed}"
        if r.pushed:
            outcome += ", pushed"
        if r.reused:
            outcome += " (verified before)"
        rows.append((r.path.name, f"{r.path.stat().st_size / 2**20:.1f} MiB", r.types,
                     f"{c.token_mismatches} of {c.probe_texts} differ", f"{c.cosine_min:.5f}", f"{c.cosine_mean:.6f}",
                     f"≥ {c.threshold}", outcome))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)


def probe_set_line(results: list[ReleasedFile]) -> str:
    c = results[0].certificate
    return (f"probe set: {c.probe_set} ({c.probe_texts} texts, sha256 {c.probe_sha256[:12]}…), inputs cut at "
            f"{c.token_limit} tokens ({c.texts_cut} texts cut); reference {c.reference} ({c.checkpoint[:19]}…)")

