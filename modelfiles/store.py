"""The ollama model store (docs/architecture.md, "ollama"): sha256-named blobs and Docker v2 manifests, as `ollama create` writes them.

Layout under the models folder: `blobs/sha256-<hex>` and `manifests/<host>/<namespace>/<model>/<tag>`.
Blobs go first and the manifest last, each file atomically, because ollama prunes blobs that no
manifest names when it starts: an interrupted install leaves either the old model or the new one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from gguf import Keys

from granite_gguf.errors import UserError
from granite_gguf.files import held, open_regular, parse_json, sha256_of_file, write_atomic
from granite_gguf.gguf_file import GGUFSummary, load
from granite_gguf.modelfiles.modelfile import (
    ModelFacts,
    Modelfile,
    embedding_modelfile,
    file_type_label,
    go_float32_json,
    load_modelfile,
)

MANIFEST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_MEDIA_TYPE = "application/vnd.docker.container.image.v1+json"
MODEL_MEDIA_TYPE = "application/vnd.ollama.image.model"
PARAMS_MEDIA_TYPE = "application/vnd.ollama.image.params"
# Text layers in the order ollama's create writes them; each holds the instruction's value as it is.
TEXT_LAYERS = {
    "TEMPLATE": "application/vnd.ollama.image.template",
    "SYSTEM": "application/vnd.ollama.image.system",
    "LICENSE": "application/vnd.ollama.image.license",
}

LAYER_MEDIA_TYPES = (MODEL_MEDIA_TYPE, PARAMS_MEDIA_TYPE, *TEXT_LAYERS.values())  # the layers `install` writes
LOCK_FILE = ".granite-gguf.lock"  # in the models folder: install, remove and pull's last step hold it

DEFAULT_HOST, DEFAULT_NAMESPACE, DEFAULT_TAG = "registry.ollama.ai", "library", "latest"
# ollama's types/model/name.go: a letter, digit or '_', then also these characters; (characters, longest).
_NAME_PARTS = {"host": ("-.:", 350), "namespace": ("-", 80), "model": ("-.", 80), "tag": ("-.", 80)}
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_CHUNK = 8 << 20


@dataclass(frozen=True)
class ModelName:
    host: str
    namespace: str
    model: str
    tag: str
    scheme: str = field(default="https", compare=False)  # of `scheme://host/…`; not part of the stored name

    @classmethod
    def parse(cls, text: str) -> ModelName:
        """ollama's `[[scheme://]host/][namespace/]model[:tag]` (types/model/name.go, ParseNameBare); any part that
        could leave the store is a UserError."""
        rest, tag = text, DEFAULT_TAG
        if rest.rfind(":") > rest.rfind("/"):  # a ':' before the last '/' belongs to host:port
            rest, _, tag = rest.rpartition(":")
        parts = rest.rsplit("/", 2)  # from the right: model, namespace, and the host takes the rest
        host, namespace, model = [DEFAULT_HOST, DEFAULT_NAMESPACE][: 3 - len(parts)] + parts
        scheme, _, host = host.partition("://") if "://" in host else ("https", "", host)
        name = cls(host, namespace, model, tag, scheme)
        for part, (extra, longest) in _NAME_PARTS.items():
            value = getattr(name, part)
            if not re.fullmatch(rf"[A-Za-z0-9_][A-Za-z0-9_{re.escape(extra)}]*", value) or len(value) > longest:
                allowed = ", ".join(["letters", "digits", "'_'", *(repr(char) for char in extra)])
                raise UserError(f"invalid model name {text!r}: the {part} {value!r} must start with a letter, "
                                f"digit or '_' and hold only {allowed}, at most {longest} characters")
        return name

    @property
    def parts(self) -> tuple[str, str, str, str]:
        return self.host, self.namespace, self.model, self.tag

    def __str__(self) -> str:
        """The shortest form, as `ollama list` shows it."""
        if self.host != DEFAULT_HOST:
            return "/".join(self.parts[:3]) + f":{self.tag}"
        prefix = f"{self.namespace}/" if self.namespace != DEFAULT_NAMESPACE else ""
        return f"{prefix}{self.model}:{self.tag}"


@dataclass(frozen=True)
class StoredModel:
    name: str
    digest: str  # sha256 of the manifest, the ID `ollama list` shows (first 12 hex digits)
    size: int  # config and layers, bytes
    modified: float  # manifest mtime, seconds since the epoch


def models_dir_or_default(models_dir: Path | None) -> Path:
    """ollama's own rule: `$OLLAMA_MODELS` if set, else ~/.ollama/models."""
    return models_dir or Path(os.environ.get("OLLAMA_MODELS") or Path.home() / ".ollama" / "models")


@contextmanager
def store_lock(root: Path) -> Iterator[None]:
    """Hold the store's lock (an exclusive flock on `<models>/.granite-gguf.lock`) for the block, so that a remove
    cannot delete the blobs an install or pull is about to name in its manifest. Another granite-gguf waits; a running
    ollama takes no such lock (docs/security.md)."""
    root.mkdir(parents=True, exist_ok=True)
    with held(root / LOCK_FILE):
        yield


def validate_blob(media_type: str, path: Path) -> None:
    """A pulled blob is what its media type says before it enters the store: the model layer passes `granite-gguf
    check`, the config and params are JSON objects, the text layers UTF-8."""
    if media_type == MODEL_MEDIA_TYPE:
        load(path, whole=True)  # checked afresh
        return
    with open_regular(path) as handle:
        data = handle.read()
    if media_type in (CONFIG_MEDIA_TYPE, PARAMS_MEDIA_TYPE):
        if not isinstance(parse_json(data, f"{media_type} blob {path.name}"), dict):
            raise UserError(f"{media_type} blob {path.name}: not a JSON object")
        return
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{media_type} blob {path.name}: not UTF-8 text") from None


def install(source: Path, name: str, models_dir: Path | None = None) -> StoredModel:
    """Store a GGUF (with a generated embedding Modelfile) or a Modelfile's model as `name`; idempotent."""
    model_name = ModelName.parse(name)
    root = models_dir_or_default(models_dir)
    if _is_gguf(source):
        # Validated before storing: ollama runs llama.cpp, which aborts on some malformed files.
        gguf, summary = source, load(source).summary
        modelfile = embedding_modelfile(ModelFacts.from_summary(summary), str(source))
    else:
        modelfile = load_modelfile(source)
        _refuse_unsupported(modelfile, source)
        gguf = _gguf_of(modelfile, source)
        summary = load(gguf).summary
    blobs = root / "blobs"
    path = manifest_file_path(root, model_name)
    with store_lock(root):
        layers = [_put_file(blobs, MODEL_MEDIA_TYPE, gguf)]
        layers += [_put_bytes(blobs, media_type, value.encode()) for keyword, media_type in TEXT_LAYERS.items()
                   for value in _text_values(modelfile, keyword)]
        params = modelfile.parameters()
        if params:
            layers.append(_put_bytes(blobs, PARAMS_MEDIA_TYPE, go_json(params)))
        config = _put_bytes(blobs, CONFIG_MEDIA_TYPE, go_json(_config(summary, layers)))
        manifest = {"schemaVersion": 2, "mediaType": MANIFEST_MEDIA_TYPE, "config": config, "layers": layers}
        data = go_json(manifest)
        write_atomic(path, lambda out: out.write(data))
        return _stored(model_name, path)


def _text_values(modelfile: Modelfile, keyword: str) -> list[str]:
    """server/create.go at fb30760: the last TEMPLATE and SYSTEM unless empty, every LICENSE (an empty one too)."""
    values = modelfile.values(keyword)
    if keyword == "LICENSE":
        return values
    return values[-1:] if values and values[-1] else []


def list_models(models_dir: Path | None = None) -> list[StoredModel]:
    return [_stored(name, path) for name, path in _manifests(models_dir_or_default(models_dir))]


def remove(name: str, models_dir: Path | None = None) -> None:
    """Delete `name`'s manifest, then the blobs that no other manifest names."""
    model_name = ModelName.parse(name)
    root = models_dir_or_default(models_dir)
    path = manifest_file_path(root, model_name)
    if not path.is_file():
        raise UserError(f"model '{model_name}' not found in {root}")
    with store_lock(root):
        digests = _digests(path)
        path.unlink()
        for folder in path.parents[:3]:  # tag's folders up to manifests/<host>, while empty
            if any(folder.iterdir()):
                break
            folder.rmdir()
        still_used = {digest for _, other in _manifests(root) for digest in _digests(other)}
        for digest in digests - still_used:
            (root / "blobs" / blob_file_name(digest)).unlink(missing_ok=True)


def _is_gguf(path: Path) -> bool:
    """Whether `path` starts as a GGUF does; anything but a regular file (a FIFO would hang) is a UserError."""
    with open_regular(path) as f:
        return f.read(4) == b"GGUF"


def _gguf_of(modelfile: Modelfile, modelfile_path: Path) -> Path:
    """FROM resolved like ollama's client does: ~ expanded, relative to the Modelfile's folder."""
    source = modelfile.values("FROM")[-1]
    path = modelfile_path.parent / Path(source).expanduser()
    if not path.is_file() or not _is_gguf(path):
        raise UserError(f"{modelfile_path}: FROM {source}: not a GGUF file (installing from another model is not supported)")
    return path


def _refuse_unsupported(modelfile: Modelfile, source: Path) -> None:
    for keyword in ("ADAPTER", "MESSAGE", "REQUIRES", "RENDERER", "PARSER", "DRAFT"):
        if modelfile.values(keyword):
            raise UserError(f"{source}: {keyword} is not supported by granite-gguf ollama install")
    if len(modelfile.values("FROM")) > 1:
        raise UserError(f"{source}: more than one FROM; granite-gguf ollama install stores one GGUF")


def _config(summary: GGUFSummary, layers: list[dict[str, Any]]) -> dict[str, Any]:
    """ollama's ConfigV2 in its field order; architecture/os are the Docker image's platform, fixed by ollama."""
    family = summary.metadata.get(Keys.General.ARCHITECTURE, "")
    return {
        "model_format": "gguf",
        "model_family": family,
        "model_families": [family],
        "model_type": parameter_size(sum(summary.tensor_elements.values())),
        "file_type": file_type_label(summary).upper(),
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [layer["digest"] for layer in layers]},
    }


def parameter_size(parameters: int) -> str:
    """ollama's format.HumanNumber (format/format.go, the same at 0.5.4 and fb30760) of the GGUF's parameter count, the
    sum of every tensor's elements (fs/ggml/gguf.go): create stores it as model_type, `ollama show` as "parameters"."""
    for unit, suffix, decimals in ((10**9, "B", 1), (10**6, "M", 2)):
        if parameters >= unit:
            number = parameters / unit
            return f"{number:.0f}{suffix}" if number == int(number) else f"{number:.{decimals}f}{suffix}"
    return f"{parameters / 1000:.0f}K" if parameters >= 1000 else str(parameters)


def go_json(value: Any) -> bytes:
    """JSON as Go's json.Encoder writes it: compact, UTF-8, HTML characters escaped, one trailing newline; floats are
    api.Options float32s, printed as Go prints a float32 (go_float32_json)."""
    return (_go_encode(value) + "\n").encode()


def _go_encode(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ",".join(f"{_go_encode(str(key))}:{_go_encode(item)}" for key, item in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(_go_encode(item) for item in value) + "]"
    if isinstance(value, float):
        return go_float32_json(value)
    if isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
        for char in "<>&\u2028\u2029":
            text = text.replace(char, f"\\u{ord(char):04x}")
        return text
    return json.dumps(value)  # int, bool, None


def _layer(media_type: str, digest: str, size: int) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": digest, "size": size}


def _put_bytes(blobs: Path, media_type: str, data: bytes) -> dict[str, Any]:
    layer = _layer(media_type, f"sha256:{hashlib.sha256(data).hexdigest()}", len(data))
    _put(blobs, layer, lambda out: out.write(data))
    return layer


def _put_file(blobs: Path, media_type: str, path: Path) -> dict[str, Any]:
    """A large file hashed, then copied, in chunks; a file that changes in between is refused."""
    layer = _layer(media_type, sha256_of_file(path), path.stat().st_size)

    def copy(out: BinaryIO) -> None:
        digest = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
        if f"sha256:{digest.hexdigest()}" != layer["digest"]:
            raise UserError(f"{path}: changed while it was being installed")

    _put(blobs, layer, copy)
    return layer


def _put(blobs: Path, layer: dict[str, Any], fill: Callable[[BinaryIO], object]) -> None:
    """Write a blob unless one with the right content is already there (re-install does not rewrite it)."""
    path = blobs / blob_file_name(layer["digest"])
    if not (path.is_file() and path.stat().st_size == layer["size"] and sha256_of_file(path) == layer["digest"]):
        write_atomic(path, fill)


def blob_file_name(digest: str) -> str:
    """`sha256:<hex>` → `sha256-<hex>`; anything else in a manifest is refused, so no path can leave blobs/."""
    if not _DIGEST.fullmatch(digest):
        raise UserError(f"invalid blob digest {digest!r} in a manifest")
    return digest.replace(":", "-")


def manifest_file_path(root: Path, name: ModelName) -> Path:
    return root / "manifests" / Path(*name.parts)


def _manifests(root: Path) -> Iterator[tuple[ModelName, Path]]:
    folder = root / "manifests"
    for path in sorted(folder.glob("*/*/*/*")):
        if path.is_file() and not path.name.startswith("."):  # dot files are temporary writes
            yield ModelName(*path.relative_to(folder).parts), path


def manifest_entries(path: Path) -> list[dict[str, Any]]:
    """The config and layer descriptors a manifest names."""
    try:
        manifest = json.loads(path.read_bytes())
        return [manifest["config"], *manifest["layers"]]
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as exc:
        raise UserError(f"{path}: not a readable manifest ({exc})") from None


def _digests(path: Path) -> set[str]:
    return {entry["digest"] for entry in manifest_entries(path)}


def _stored(name: ModelName, path: Path) -> StoredModel:
    size = sum(int(entry["size"]) for entry in manifest_entries(path))
    digest = f"sha256:{hashlib.sha256(path.read_bytes()).hexdigest()}"
    return StoredModel(str(name), digest, size, path.stat().st_mtime)
