"""`granite-gguf push` and `pull`: an ollama store entry to and from a Docker distribution registry (shared/DESIGN.md §7).

Push is the standard upload flow: `HEAD` each blob, upload the missing ones (`POST …/blobs/uploads/`, then one
monolithic `PUT <Location>?digest=…`), then `PUT` the store's manifest bytes unchanged. Pull is what ollama does:
the manifest with the Docker v2 Accept header, each blob in HTTP Range chunks into `blobs/sha256-<hex>-partial`
(resumed if present), its sha256 and size checked, renamed into place, and the manifest written last, atomically.
A failed pull writes no manifest and no blob under its final name; a partial download stays for the next pull.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit, urlunsplit

from granite_gguf.errors import UserError

if TYPE_CHECKING:
    import requests

# requests and the store (which imports gguf) load on first use: the CLI imports this module at start.

CHUNK = 64 << 20  # bytes per Range request
_PIECE = 1 << 20  # bytes per read from a response
_TIMEOUT = (10, 300)  # connect, read (seconds)


def add_registry_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    push_command = commands.add_parser("push", help="upload a model from the ollama store to a registry")
    push_command.add_argument("name", help="the model in the store: [host/][namespace/]model[:tag]")
    push_command.add_argument("target", help="host:port/namespace/model:tag")
    push_command.set_defaults(run=run_push)
    pull_command = commands.add_parser("pull", help="download a model from a registry into the ollama store")
    pull_command.add_argument("target", help="host:port/namespace/model:tag")
    pull_command.add_argument("--name", help="store it under this name (default: TARGET, as ollama does)")
    pull_command.set_defaults(run=run_pull)
    for command in (push_command, pull_command):
        command.add_argument("--insecure", action="store_true", help="plain http instead of https")
        command.add_argument("--models-dir", type=Path, help="the store (default: $OLLAMA_MODELS or ~/.ollama/models)")


def run_push(args: argparse.Namespace) -> int:
    push(args.name, args.target, args.models_dir, args.insecure)
    print(f"pushed {args.name} to {args.target}")
    return 0


def run_pull(args: argparse.Namespace) -> int:
    pull(args.target, args.models_dir, args.insecure, args.name)
    print(f"pulled {args.target}" + (f" as {args.name}" if args.name else ""))
    return 0


def push(name: str, target: str, models_dir: Path | None, insecure: bool) -> None:
    """Upload `name`'s blobs that the registry lacks, then its manifest bytes as they are in the store."""
    from granite_gguf.modelfiles.store import (
        MANIFEST_MEDIA_TYPE,
        ModelName,
        blob_file_name,
        manifest_entries,
        manifest_file_path,
        models_dir_or_default,
    )

    root = models_dir_or_default(models_dir)
    path = manifest_file_path(root, ModelName.parse(name))
    if not path.is_file():
        raise UserError(f"model '{name}' not found in {root}")
    manifest = path.read_bytes()
    registry = _Registry(target, insecure)
    for entry in _unique(manifest_entries(path)):
        blob = root / "blobs" / blob_file_name(entry["digest"])
        if not blob.is_file():
            raise UserError(f"{blob}: missing from the store (named by {path})")
        if registry.request("HEAD", f"blobs/{entry['digest']}", ok=(200, 404)).status_code == 200:
            continue
        started = registry.request("POST", "blobs/uploads/", ok=(202,))
        location = started.headers.get("Location")
        if not location:
            raise UserError(f"registry {registry.host}: upload started without a Location header")
        with blob.open("rb") as data:
            registry.request("PUT", _with_digest(urljoin(registry.base, location), entry["digest"]), ok=(201,),
                             data=data, headers={"Content-Type": "application/octet-stream",
                                                 "Content-Length": str(blob.stat().st_size)})
    registry.request("PUT", f"manifests/{registry.name.tag}", ok=(201,), data=manifest,
                     headers={"Content-Type": MANIFEST_MEDIA_TYPE})


def pull(target: str, models_dir: Path | None, insecure: bool, name: str | None = None) -> None:
    """Download `target` into the store (as `name`, default `target`); blobs first, verified, manifest last."""
    from granite_gguf.files import write_atomic
    from granite_gguf.modelfiles.store import (
        MANIFEST_MEDIA_TYPE,
        ModelName,
        manifest_file_path,
        models_dir_or_default,
    )

    root = models_dir_or_default(models_dir)
    local = ModelName.parse(name or target)
    registry = _Registry(target, insecure)
    response = registry.request("GET", f"manifests/{registry.name.tag}", ok=(200,),
                                headers={"Accept": MANIFEST_MEDIA_TYPE}, missing=f"manifest {target} not found")
    manifest = response.content
    sent = response.headers.get("Docker-Content-Digest")
    if sent and sent != f"sha256:{hashlib.sha256(manifest).hexdigest()}":
        raise UserError(f"{target}: manifest does not match the registry's digest {sent}")
    entries = _manifest_entries(manifest, target)
    for entry in _unique(entries):
        _download(registry, entry, root / "blobs")
    write_atomic(manifest_file_path(root, local), lambda out: out.write(manifest))


def _manifest_entries(manifest: bytes, target: str) -> list[dict[str, Any]]:
    """The config and layers of a Docker v2 schema-2 manifest, digests and sizes checked before any use."""
    from granite_gguf.modelfiles.store import MANIFEST_MEDIA_TYPE, blob_file_name

    try:
        value = json.loads(manifest)
        entries = [value["config"], *value["layers"]]
        media_type = value.get("mediaType")
        for entry in entries:
            blob_file_name(entry["digest"])
            if not isinstance(entry["size"], int) or entry["size"] < 0:
                raise ValueError(f"bad size {entry['size']!r}")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UserError(f"{target}: not a Docker v2 manifest ({exc})") from None
    if media_type != MANIFEST_MEDIA_TYPE:
        raise UserError(f"{target}: manifest media type {media_type!r}, expected {MANIFEST_MEDIA_TYPE}")
    return entries


def _download(registry: _Registry, entry: dict[str, Any], blobs: Path) -> None:
    """Fetch one blob by Range requests into `<blob>-partial`, resuming it; verify; rename into place."""
    from granite_gguf.modelfiles.store import blob_file_name, sha256_of_file

    digest, size = entry["digest"], entry["size"]
    final = blobs / blob_file_name(digest)
    if final.is_file() and final.stat().st_size == size and sha256_of_file(final) == digest:
        return
    blobs.mkdir(parents=True, exist_ok=True)
    partial = final.with_name(final.name + "-partial")
    for attempt in range(2):
        resumed = _fetch(registry, digest, size, partial)
        actual = sha256_of_file(partial)
        got = partial.stat().st_size
        if got == size and actual == digest:
            os.replace(partial, final)
            return
        partial.unlink()
        if not resumed or attempt:
            raise UserError(f"blob {digest} from {registry.host}: content does not match its digest "
                            f"({got} bytes, {actual}; expected {size} bytes)")


def _fetch(registry: _Registry, digest: str, size: int, partial: Path) -> bool:
    """Complete `partial` to `size` bytes; True when it resumed an earlier download."""
    start = partial.stat().st_size if partial.is_file() else 0
    if start > size:
        partial.unlink()
        start = 0
    resumed = start > 0
    with partial.open("r+b" if start else "wb") as out:
        out.seek(start)
        while start < size:
            end = min(start + CHUNK, size) - 1
            response = registry.request("GET", f"blobs/{digest}", ok=(200, 206), stream=True,
                                        headers={"Range": f"bytes={start}-{end}"}, missing=f"blob {digest} not found")
            with response:
                if response.status_code == 200:  # the whole blob: the server ignored the Range
                    out.seek(0)
                    out.truncate()
                    start, end, resumed = 0, size - 1, False
                for piece in response.iter_content(_PIECE):
                    out.write(piece)
                    start += len(piece)
            if start <= end:
                raise UserError(f"blob {digest} from {registry.host}: the download ended early at byte {start}")
        out.flush()
        os.fsync(out.fileno())
    return resumed


def _unique(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return list({entry["digest"]: entry for entry in entries}.values())


def _with_digest(url: str, digest: str) -> str:
    parts = urlsplit(url)
    query = f"{parts.query}&digest={digest}" if parts.query else f"digest={digest}"
    return urlunsplit(parts._replace(query=query))


class _Registry:
    """One repository `<ns>/<model>` on a registry; request() turns every failure into a one-line UserError."""

    def __init__(self, target: str, insecure: bool) -> None:
        import requests

        from granite_gguf.modelfiles.store import DEFAULT_HOST, ModelName

        self.name = ModelName.parse(target)
        if not target.startswith(self.name.host + "/") or self.name.host == DEFAULT_HOST:
            raise UserError(f"registry target {target!r} must be host[:port]/namespace/model[:tag]")
        self.host = self.name.host
        self.base = f"{'http' if insecure else 'https'}://{self.host}/v2/{self.name.namespace}/{self.name.model}/"
        self.insecure = insecure
        self.session = requests.Session()

    def request(self, method: str, path: str, ok: tuple[int, ...], missing: str | None = None,
                **kwargs: Any) -> requests.Response:
        import requests

        url = urljoin(self.base, path)
        try:
            response = self.session.request(method, url, timeout=_TIMEOUT, **kwargs)
        except requests.exceptions.SSLError:
            raise UserError(f"registry {self.host}: TLS failed (a plain-http registry needs --insecure)") from None
        except requests.exceptions.ConnectionError as exc:
            reason = "connection refused" if "refused" in str(exc).lower() else type(exc).__name__
            raise UserError(f"registry {self.host}: cannot connect ({reason})") from None
        except requests.exceptions.RequestException as exc:
            raise UserError(f"registry {self.host}: {method} {urlsplit(url).path}: {type(exc).__name__}") from None
        if response.status_code in ok:
            return response
        if response.status_code == 404 and missing:
            raise UserError(f"registry {self.host}: {missing}")
        raise UserError(f"registry {self.host}: {method} {urlsplit(url).path}: HTTP {response.status_code}"
                        f"{_registry_error(response)}")


def _registry_error(response: requests.Response) -> str:
    """The distribution API's {"errors": [{"code", "message"}]} as ' (CODE: message)', if there is one."""
    try:
        errors = response.json()["errors"]
        text = "; ".join(f"{error.get('code')}: {error.get('message')}" for error in errors)
    except (ValueError, KeyError, TypeError, AttributeError):
        return ""
    return f" ({' '.join(text.split())[:300]})" if text else ""
