"""The proof travels with the file: a verification certificate in the GGUF's own metadata, signed.

`granite-gguf release` writes into every file it verified what was compared and what came out, under
`granite_gguf.certificate.*`: the reference checkpoint and its hub revision or content hash, the probe set's
hash and size, the token limit and the texts cut to it, token mismatches, cosine min and mean, the
threshold, the tool version, the sha256 of the tensor data and of everything else in the file (every
other key and every tensor info). With a signing key (an ed25519 key, `granite-gguf keygen`) the releaser
signs those fields; `granite-gguf check --public-key` then proves the file is the one that releaser
verified. An unsigned certificate proves nothing against a forger, who can recompute both hashes: check
says so (docs/security.md, "Certificates"). The header is rewritten into a new file that is renamed into
place (gguf_file.rewrite); the tensor data is copied byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, BinaryIO, cast

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from gguf import GGUFValueType

from granite_gguf import __version__
from granite_gguf.convert import keys
from granite_gguf.convert.source import Checkpoint
from granite_gguf.errors import UserError
from granite_gguf.files import open_regular, write_atomic
from granite_gguf.gguf_file import Header, OmittedArray, load
from granite_gguf.gguf_file.rewrite import key_entries, rewrite_keys

MAX_KEY_FILE_BYTES = 64 << 10  # a PEM ed25519 key is about 120 bytes


@dataclass(frozen=True)
class Certificate:
    """What a released file was verified against, and the result (one GGUF key per field)."""

    label: str  # the type or recipe the file was written as (convert.quantize labels)
    reference: str  # the checkpoint as named: a folder or a hub repo id
    checkpoint: str  # `<repo>@<revision>` for a hub download, else `sha256:<content hash>`
    probe_set: str  # which set: "gate" (release's smaller set) or "full" (the built-in probe set)
    probe_sha256: str  # of the texts (verify.texts_digest)
    probe_texts: int
    token_limit: int  # inputs longer than this were cut to it on both sides, special tokens kept
    texts_cut: int
    token_mismatches: int
    cosine_min: float
    cosine_mean: float
    threshold: float
    result: str  # PASS or FAIL
    tool_version: str
    tensor_sha256: str  # of the tensor data section, as written
    metadata_sha256: str  # of every other key and the tensor infos (`metadata_sha256`)

    @staticmethod
    def key(name: str) -> str:
        return f"{keys.CERTIFICATE_PREFIX}{name}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_VALUE_TYPES = {str: GGUFValueType.STRING, int: GGUFValueType.UINT32, float: GGUFValueType.FLOAT64}


SIGNATURE_KEY = f"{keys.CERTIFICATE_PREFIX}signature"  # ed25519 signature of `signed_bytes`, hex
SIGNER_KEY = f"{keys.CERTIFICATE_PREFIX}signer"  # the raw public key that signed, hex (informative: trust the one given)
_SIGNED_CONTEXT = b"granite-gguf certificate v1\0"  # a signature made for anything else never verifies here


@dataclass(frozen=True)
class Verdict:
    """What `check_certificate` found: `ok` is False when the file contradicts its certificate, or a key was
    given and the certificate is not signed by it; `note` says which, in one phrase."""

    ok: bool
    note: str


def read_certificate(header: Header) -> Certificate | None:
    """The certificate in a file's metadata, or None when it has none (or an incomplete one)."""
    values = {f.name: header.metadata.get(Certificate.key(f.name)) for f in fields(Certificate)}
    if any(value is None for value in values.values()):
        return None
    return Certificate(**cast(dict[str, Any], values))


def describe(header: Header) -> list[str]:
    """What `inspect` says of a file's certificate, line by line: that it has none, or what was verified against
    what, the result, the hashes and who signed (the signature itself is checked by `check --public-key`)."""
    c = read_certificate(header)
    if c is None:
        return ["none (files from `granite-gguf release` carry one)"]
    signer = header.metadata.get(SIGNER_KEY)
    return [f"{c.result}: {c.label} against {c.reference} ({c.checkpoint})",
            f"{c.probe_set} probe set, {c.probe_texts} texts (sha256 {c.probe_sha256}), token limit {c.token_limit} "
            f"({c.texts_cut} cut)",
            f"token mismatches {c.token_mismatches}, cosine min {c.cosine_min:.7f}, mean {c.cosine_mean:.7f}, "
            f"threshold {c.threshold}; granite-gguf {c.tool_version}",
            f"tensor data sha256 {c.tensor_sha256}, metadata sha256 {c.metadata_sha256}",
            f"signed by key {signer} (`granite-gguf check --public-key` verifies)" if signer else
            "unsigned: proves nothing against a forger"]


def signed_bytes(certificate: Certificate) -> bytes:
    """What the signature covers: every field of the certificate, canonical JSON, after a context string."""
    return _SIGNED_CONTEXT + json.dumps(certificate.as_dict(), sort_keys=True, separators=(",", ":")).encode()


def metadata_sha256(header: Header) -> str:
    """sha256 of what the file says besides its certificate and tensor data: every other key with its type and
    value, in file order, and every tensor's name, shape, type and offset. `header` must hold every array
    (a file loaded `whole`, not a remembered check's)."""
    entries = []
    for key, value in header.metadata.items():
        if key.startswith(keys.CERTIFICATE_PREFIX):
            continue
        if isinstance(value, OmittedArray):
            raise ValueError(f"{key}: the header lacks its values")
        item_type = header.item_types.get(key)
        entries.append([key, int(header.value_types[key]), None if item_type is None else int(item_type), value])
    tensors = [[t.name, list(t.dims), int(t.ggml_type), t.offset] for t in header.tensors]
    text = json.dumps([entries, tensors, header.version], separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def check_certificate(header: Header, certificate: Certificate, public_key: Ed25519PublicKey | None) -> Verdict:
    """Does the file at `header.path` (loaded `whole`) still hold what `certificate` describes, and is
    the certificate signed by `public_key` (when one is given)?"""
    if tensor_data_sha256(header) != certificate.tensor_sha256:
        return Verdict(False, f"tensor data changed since it was certified (sha256 is not {certificate.tensor_sha256})")
    if metadata_sha256(header) != certificate.metadata_sha256:
        return Verdict(False, "keys or tensor infos changed since it was certified")
    signature, signer = header.metadata.get(SIGNATURE_KEY), header.metadata.get(SIGNER_KEY)
    if public_key is None:
        if signature is None:
            return Verdict(True, "unsigned: the hashes match, which proves nothing against a forger")
        return Verdict(True, f"signed by key {str(signer)[:16]}…, not verified (give --public-key)")
    try:
        public_key.verify(bytes.fromhex(str(signature)), signed_bytes(certificate))
    except (InvalidSignature, ValueError):
        return Verdict(False, "certificate is not signed by the given public key" if signature is not None
                       else "certificate is unsigned; the given public key proves nothing about it")
    return Verdict(True, f"signed by the given key {public_hex(public_key)[:16]}…")


def public_hex(public_key: Ed25519PublicKey) -> str:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def generate_key(path: Path) -> Path:
    """A new ed25519 signing key: the private key in `path` (PEM, PKCS#8, readable by its owner only) and the public
    key in `path`.pub (PEM) for whoever runs `check`. Neither file may exist yet. Returns the public key's path."""
    private = Ed25519PrivateKey.generate()
    public = path.with_name(path.name + ".pub")
    for target in (path, public):
        if target.exists():
            raise UserError(f"{target}: already exists; refusing to overwrite a key")
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())

    def private_only(out: BinaryIO) -> None:
        os.fchmod(out.fileno(), 0o600)  # before the key is in it
        out.write(pem)

    write_atomic(path, private_only)
    write_atomic(public, lambda out: out.write(private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)))
    return public


def load_private_key(path: Path) -> Ed25519PrivateKey:
    key = _load_key(path, serialization.load_pem_private_key, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise UserError(f"{path}: not an ed25519 private key (make one with `granite-gguf keygen`)")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    key = _load_key(path, serialization.load_pem_public_key)
    if not isinstance(key, Ed25519PublicKey):
        raise UserError(f"{path}: not an ed25519 public key (`granite-gguf keygen` writes one beside the private key)")
    return key


def _load_key(path: Path, loader: Callable[..., Any], **kwargs: Any) -> Any:
    try:
        with open_regular(path) as handle:
            data = handle.read(MAX_KEY_FILE_BYTES + 1)
        if len(data) > MAX_KEY_FILE_BYTES:
            raise ValueError("too large for a key")
        return loader(data, **kwargs)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise UserError(f"{path}: not a PEM key ({exc})") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror})") from None


def tensor_data_sha256(header: Header) -> str:
    """sha256 of everything from the start of the tensor data section to the end of the file."""
    with header.path.open("rb") as handle:
        handle.seek(header.data_start)
        return hashlib.file_digest(handle, "sha256").hexdigest()


def write_certificate(path: Path, certificate: Certificate, signing_key: Ed25519PrivateKey | None = None) -> None:
    """Put `certificate` into the GGUF at `path` (replacing an earlier one), signed with `signing_key` if given:
    the keys are written anew, the tensor infos and data copied unchanged, into a temporary file renamed over
    `path`."""
    header = load(path, check=False, whole=True).header
    entries = [entry for entry in key_entries(header) if not entry[0].startswith(keys.CERTIFICATE_PREFIX)]
    for name, value in certificate.as_dict().items():
        entries.append((Certificate.key(name), _VALUE_TYPES[type(value)], value, None))
    if signing_key is not None:
        entries.append((SIGNATURE_KEY, GGUFValueType.STRING, signing_key.sign(signed_bytes(certificate)).hex(), None))
        entries.append((SIGNER_KEY, GGUFValueType.STRING, public_hex(signing_key.public_key()), None))
    rewrite_keys(path, header, entries)
    load(path)  # a new file under the old name: checked once now, as `convert` does


def checkpoint_identity(ckpt: Checkpoint) -> str:
    """`<repo>@<revision>` for a hub snapshot; else sha256 over the checkpoint folder's files (path
    and content of each, hidden files aside)."""
    if not Path(ckpt.source).exists() and ckpt.root.parent.name == "snapshots":
        return f"{ckpt.source}@{ckpt.root.name}"
    digest = hashlib.sha256()
    for file in sorted(p for p in ckpt.root.rglob("*") if p.is_file()):
        relative = file.relative_to(ckpt.root)
        if any(part.startswith(".") for part in relative.parts):
            continue
        digest.update(relative.as_posix().encode() + b"\0")
        with file.open("rb") as handle:
            digest.update(hashlib.file_digest(handle, "sha256").digest())
    return f"sha256:{digest.hexdigest()}"


def new_certificate(**values: Any) -> Certificate:
    """A certificate stamped with this tool's version."""
    return Certificate(tool_version=__version__, **values)
