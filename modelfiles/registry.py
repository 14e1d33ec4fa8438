"""`granite-gguf push` and `pull`: an ollama store entry to and from a Docker distribution registry (docs/architecture.md, "ollama").

Push is the standard upload flow: `HEAD` each blob, upload the missing ones (`POST …/blobs/uploads/`, then one
monolithic `PUT <Location>?digest=…`), then `PUT` the store's manifest bytes unchanged. Pull follows ollama's pull
client (server/download.go, images.go): the manifest with the Docker v2 Accept header; for each blob a GET that
follows redirects only to the same host name and must end in 307 or 200 with a `Location`; parallel Range parts from
that location into `blobs/sha256-<hex>-partial` with ollama's part records (resumed if present); sha256 and size
checked, renamed into place, and the manifest written last, atomically. So a pull that works here works for
`ollama pull`, and one that fails here names the reason ollama fails. A failed pull writes no manifest and no blob
under its final name; a partial download stays for the next pull.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit, urlunsplit

from granite_gguf.errors import UserError
from granite_gguf.files import parse_json

if TYPE_CHECKING:
    import requests

# requests and the store (which imports gguf) load on first use.

# ollama's part sizes (server/download.go: numDownloadParts, minDownloadPartSize, maxDownloadPartSize; MB = 10**6).
PARTS, MIN_PART, MAX_PART = 16, 100 * 10**6, 1000 * 10**6
# What a registry may ask of a pull (docs/security.md, "Registries"). The manifest: distribution's own cap on a
# manifest body (4 MiB); ollama's are about 1 KiB. A model layer: far above any ModernBERT GGUF (the 311m in F32 is
# 1.2 GB), so at most 18 parts. Every other blob (config, params, template, system, license): 16 MiB.
MAX_MANIFEST_BYTES = 4 << 20
MAX_MODEL_LAYER_BYTES = 16 << 30
MAX_OTHER_LAYER_BYTES = 16 << 20
# A transfer slower than MIN_RATE bytes/s over a RATE_WINDOW-second window is abandoned; a read waits at most
# _TIMEOUT[1] seconds for any byte. So a pull takes at most about size / MIN_RATE, and an interrupt ends it
# within one read.
MIN_RATE = 64 << 10
RATE_WINDOW = 30.0
_PIECE = 1 << 20  # bytes per read from a response, at most
_SAVE_EVERY = 64 << 20  # bytes between saves of a part's progress record
_ERROR_BYTES = 64 << 10  # of an error response's body, read for its message
_REDIRECTS = (301, 302, 303, 307, 308)  # the statuses Go's http.Client follows
_TIMEOUT = (10, 30)  # connect, read (seconds)


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
    registry = Registry(target, insecure)
    for entry in one_per_digest(manifest_entries(path)):
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
            registry.request("PUT", registry.upload_url(location, entry["digest"]), ok=(201,),
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
        blob_file_name,
        manifest_file_path,
        models_dir_or_default,
        store_lock,
    )

    root = models_dir_or_default(models_dir)
    local = ModelName.parse(name or target)
    registry = Registry(target, insecure)
    response = registry.request("GET", f"manifests/{registry.name.tag}", ok=(200,),
                                headers={"Accept": MANIFEST_MEDIA_TYPE}, missing=f"manifest {target} not found")
    with response:
        manifest = _body(response, MAX_MANIFEST_BYTES, f"{target}: manifest")
    sent = response.headers.get("Docker-Content-Digest")
    if sent and sent != f"sha256:{hashlib.sha256(manifest).hexdigest()}":
        raise UserError(f"{target}: manifest does not match the registry's digest {sent}")
    entries = one_per_digest(parse_manifest(manifest, target))
    blobs = root / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    _check_free_space(blobs, entries)
    for entry in entries:
        _download(registry, entry, blobs)
    with store_lock(root):  # no `remove` may take a blob away between here and the manifest naming it
        for entry in entries:
            if not (blobs / blob_file_name(entry["digest"])).is_file():
                _download(registry, entry, blobs)
        write_atomic(manifest_file_path(root, local), lambda out: out.write(manifest))


def _body(response: requests.Response, limit: int, what: str) -> bytes:
    """A whole response body of at most `limit` bytes, read as it arrives at no less than MIN_RATE: a longer
    body, declared or sent, is refused once it passes the limit."""
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > limit:
        raise UserError(f"{what} of {int(declared)} bytes exceeds the limit of {limit}")
    body = bytearray()
    for piece in _pieces(response, what):
        body += piece
        if len(body) > limit:
            raise UserError(f"{what} exceeds the limit of {limit} bytes")
    return bytes(body)


def _pieces(response: requests.Response, what: str, stop: threading.Event | None = None) -> Iterator[bytes]:
    """The body of a streamed response as it arrives (each read returns what came, up to _PIECE), until its end or
    `stop`; slower than MIN_RATE over any RATE_WINDOW is a UserError, so a server that sends a byte at a time
    cannot hold a pull."""
    import requests

    window_start, window_bytes = time.monotonic(), 0
    while stop is None or not stop.is_set():
        try:
            piece = response.raw.read1(_PIECE)
        except (OSError, requests.exceptions.RequestException, urllib3_errors()) as exc:
            raise UserError(f"{what}: the transfer failed ({type(exc).__name__})") from None
        if not piece:
            return
        yield piece
        window_bytes += len(piece)
        now = time.monotonic()
        if now - window_start >= RATE_WINDOW:
            if window_bytes < MIN_RATE * (now - window_start):
                raise UserError(f"{what}: the registry sends {window_bytes / (now - window_start):.0f} bytes/s, "
                                f"below the minimum of {MIN_RATE}; try again later")
            window_start, window_bytes = now, 0


def urllib3_errors() -> type[Exception]:
    """urllib3's base exception (its read errors are not OSErrors)."""
    from urllib3.exceptions import HTTPError

    return HTTPError


def _check_free_space(blobs: Path, entries: list[dict[str, Any]]) -> None:
    """Refuse before downloading what the store's file system cannot hold."""
    from granite_gguf.modelfiles.store import blob_file_name

    needed = sum(entry["size"] for entry in entries if not (blobs / blob_file_name(entry["digest"])).is_file())
    free = shutil.disk_usage(blobs).free
    if needed > free:
        raise UserError(f"{blobs}: {needed} bytes to download, {free} free")


def parse_manifest(manifest: bytes, target: str) -> list[dict[str, Any]]:
    """The config and layers of a Docker v2 schema-2 manifest, digests and sizes checked before any use."""
    from granite_gguf.modelfiles.store import (
        CONFIG_MEDIA_TYPE,
        LAYER_MEDIA_TYPES,
        MANIFEST_MEDIA_TYPE,
        MODEL_MEDIA_TYPE,
        blob_file_name,
    )

    value = parse_json(manifest, f"{target}: manifest")
    try:
        entries = [value["config"], *value["layers"]]
        media_type = value.get("mediaType")
        for entry in entries:
            blob_file_name(entry["digest"])
            if not isinstance(entry["size"], int) or isinstance(entry["size"], bool) or entry["size"] < 0:
                raise ValueError(f"bad size {entry['size']!r}")
            entry.get("mediaType")
    except UserError:  # a ValueError too, but already says what is wrong
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UserError(f"{target}: not a Docker v2 manifest ({exc})") from None
    if media_type != MANIFEST_MEDIA_TYPE:
        raise UserError(f"{target}: manifest media type {media_type!r}, expected {MANIFEST_MEDIA_TYPE}")
    if entries[0].get("mediaType") != CONFIG_MEDIA_TYPE:
        raise UserError(f"{target}: config media type {entries[0].get('mediaType')!r}, expected {CONFIG_MEDIA_TYPE}")
    for entry in entries[1:]:
        if entry.get("mediaType") not in LAYER_MEDIA_TYPES:
            raise UserError(f"{target}: layer media type {entry.get('mediaType')!r}; granite-gguf pulls embedding models, "
                            f"whose layers are {', '.join(LAYER_MEDIA_TYPES)}")
    models = [entry for entry in entries[1:] if entry["mediaType"] == MODEL_MEDIA_TYPE]
    if len(models) != 1:
        raise UserError(f"{target}: {len(models)} model layers; an embedding model has one")
    for entry in entries:
        limit = MAX_MODEL_LAYER_BYTES if entry.get("mediaType") == MODEL_MEDIA_TYPE else MAX_OTHER_LAYER_BYTES
        if entry["size"] > limit:
            raise UserError(f"{target}: {entry.get('mediaType')} blob of {entry['size']} bytes exceeds the limit of {limit}")
    return entries


def _download(registry: Registry, entry: dict[str, Any], blobs: Path) -> None:
    """One blob as ollama's pull fetches it (server/download.go): its URL from the registry's redirect, then
    parallel Range parts into `<blob>-partial`, each part's progress in `<blob>-partial-N` (ollama's own JSON, so
    either tool resumes the other's download); sha256 and size checked, renamed into place."""
    from granite_gguf.modelfiles.store import blob_file_name, sha256_of_file, validate_blob

    digest, size, media_type = entry["digest"], entry["size"], entry["mediaType"]
    final = blobs / blob_file_name(digest)
    if final.is_file() and final.stat().st_size == size and sha256_of_file(final) == digest:
        validate_blob(media_type, final)
        return
    partial = final.with_name(final.name + "-partial")
    for attempt in range(2):
        parts = _parts(partial, size)
        resumed = any(part.completed for part in parts)
        url = registry.blob_url(digest)
        stop = threading.Event()  # set on the first failure or interrupt: the other parts save and end
        try:
            with partial.open("r+b" if partial.exists() else "w+b") as out:
                out.truncate(size)
                with ThreadPoolExecutor(min(PARTS, max(len(parts), 1))) as pool:
                    try:
                        for done in [pool.submit(_fetch_part, registry, url, out.fileno(), part, partial, stop)
                                     for part in parts]:
                            done.result()
                    except BaseException:
                        stop.set()
                        raise
                os.fsync(out.fileno())
        except OSError as exc:  # the store's file system refused the size or the writes: nothing is kept
            _discard(partial)
            raise UserError(f"{partial}: cannot write ({exc.strerror})") from None
        for part in parts:
            part.file(partial).unlink()
        actual = sha256_of_file(partial)
        if actual == digest:
            try:
                validate_blob(media_type, partial)  # nothing reaches the store unchecked
            except UserError:
                _discard(partial)
                raise
            os.replace(partial, final)
            return
        partial.unlink()
        if not resumed or attempt:
            raise UserError(f"blob {digest} from {registry.host}: content does not match its digest "
                            f"({actual}; expected {size} bytes)")


def _discard(partial: Path) -> None:
    """Remove a partial download and its part records."""
    for path in partial.parent.glob(f"{partial.name}*"):
        path.unlink(missing_ok=True)


@dataclass
class _Part:
    """ollama's blobDownloadPart as it writes it to `<blob>-partial-N`: bytes [offset, offset + size), `completed` done."""

    n: int
    offset: int
    size: int
    completed: int = 0

    def file(self, partial: Path) -> Path:
        return partial.with_name(f"{partial.name}-{self.n}")

    def save(self, partial: Path) -> None:
        record = {"N": self.n, "Offset": self.offset, "Size": self.size, "Completed": self.completed}
        self.file(partial).write_text(json.dumps(record, separators=(",", ":")) + "\n")


def _parts(partial: Path, size: int) -> list[_Part]:
    """The parts an earlier pull (ours or ollama's) left, if they tile the blob; else new ones, as ollama sizes them."""
    try:
        records = [json.loads(path.read_text()) for path in partial.parent.glob(f"{partial.name}-*")]
        parts = sorted((_Part(r["N"], r["Offset"], r["Size"], r["Completed"]) for r in records), key=lambda p: p.n)
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        parts = []
    ends = [0] + [part.offset + part.size for part in parts]
    if partial.is_file() and parts and ends[-1] == size and all(
            part.n == n and part.offset == ends[n] and 0 <= part.completed <= part.size for n, part in enumerate(parts)):
        return parts
    for stale in partial.parent.glob(f"{partial.name}*"):
        stale.unlink()
    step = min(max(size // PARTS, MIN_PART), MAX_PART)
    parts = [_Part(n, offset, min(step, size - offset)) for n, offset in enumerate(range(0, size, step))]
    for part in parts:
        part.save(partial)
    return parts


def _fetch_part(registry: Registry, url: str, fd: int, part: _Part, partial: Path, stop: threading.Event) -> None:
    """The rest of one part by a Range request, written at its offset, until done or `stop`; its record saved as it
    goes and at the end."""
    import requests

    if part.completed == part.size:
        return
    start, end = part.offset + part.completed, part.offset + part.size
    try:
        with requests.Session() as session:
            response = registry.request("GET", url, ok=(206,), session=session,
                                        headers={"Range": f"bytes={start}-{end - 1}", "Accept-Encoding": "identity"})
            with response:
                for piece in _pieces(response, f"blob part {part.n} from {urlsplit(url).netloc}", stop):
                    piece = piece[: end - start]
                    os.pwrite(fd, piece, start)
                    start += len(piece)
                    part.completed = start - part.offset
                    if part.completed % _SAVE_EVERY < len(piece):
                        part.save(partial)
                    if start == end or stop.is_set():
                        break
    finally:
        part.save(partial)
    if start < end:
        raise UserError(f"blob part {part.n} from {urlsplit(url).netloc}: the download ended early at byte {start}")


def one_per_digest(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A manifest's entries with each blob once (a config and a layer may share a digest)."""
    return list({entry["digest"]: entry for entry in entries}.values())


class Registry:
    """One repository `<ns>/<model>` on a registry; request() turns every failure into a one-line UserError."""

    def __init__(self, target: str, insecure: bool) -> None:
        import requests

        from granite_gguf.modelfiles.store import DEFAULT_HOST, ModelName

        self.name = ModelName.parse(target)
        if not target.removeprefix(f"{self.name.scheme}://").startswith(self.name.host + "/") \
                or self.name.host == DEFAULT_HOST:
            raise UserError(f"registry target {target!r} must be [scheme://]host[:port]/namespace/model[:tag]")
        if self.name.scheme not in ("http", "https"):
            raise UserError(f"registry target {target!r}: unsupported protocol scheme {self.name.scheme!r}")
        if self.name.scheme == "http" and not insecure:  # ollama's errInsecureProtocol
            raise UserError(f"insecure protocol http: {target} needs --insecure")
        self.host = self.name.host
        self.base = f"{'http' if insecure else 'https'}://{self.host}/v2/{self.name.namespace}/{self.name.model}/"
        self.insecure = insecure
        self.session = requests.Session()

    def upload_url(self, location: str, digest: str) -> str:
        """Where the monolithic PUT of a blob goes: the upload `location` the registry gave (relative to the
        repository), its query (the registry's state) kept, `digest=` added."""
        parts = urlsplit(urljoin(self.base, location))
        query = f"{parts.query}&digest={digest}" if parts.query else f"digest={digest}"
        return urlunsplit(parts._replace(query=query))

    def request(self, method: str, path: str, ok: tuple[int, ...], missing: str | None = None,
                session: requests.Session | None = None, **kwargs: Any) -> requests.Response:
        """`path` relative to the repository's URL, or absolute; answered with a status in `ok`, or a UserError."""
        import requests

        url = urljoin(self.base, path)
        host = urlsplit(url).netloc
        try:  # streamed: a body is read only as far as it is wanted (an error's, at most _ERROR_BYTES)
            response = (session or self.session).request(method, url, timeout=_TIMEOUT, **{"stream": True, **kwargs})
        except requests.exceptions.SSLError:
            raise UserError(f"registry {host}: TLS failed (a plain-http registry needs --insecure)") from None
        except requests.exceptions.ConnectionError as exc:
            reason = "connection refused" if "refused" in str(exc).lower() else type(exc).__name__
            raise UserError(f"registry {host}: cannot connect ({reason})") from None
        except requests.exceptions.RequestException as exc:
            raise UserError(f"registry {host}: {method} {urlsplit(url).path}: {type(exc).__name__}") from None
        if response.status_code in ok:
            return response
        if response.status_code == 404 and missing:
            raise UserError(f"registry {host}: {missing}")
        raise UserError(f"registry {host}: {method} {urlsplit(url).path}: HTTP {response.status_code}"
                        f"{_registry_error(response)}")

    def blob_url(self, digest: str) -> str:
        """Where the blob's bytes are, found by ollama's rules (server/download.go, blobDownload.run): GET the blob,
        following redirects only to the same host name, at most 10; the answer must be 307 or 200 with a Location."""
        url = urljoin(self.base, f"blobs/{digest}")
        hostname = urlsplit(url).hostname
        for _ in range(11):
            response = self.request("GET", url, ok=tuple(range(100, 400)), missing=f"blob {digest} not found",
                                    allow_redirects=False)
            response.close()
            location = response.headers.get("Location")
            if response.status_code not in _REDIRECTS or not location \
                    or urlsplit(urljoin(url, location)).hostname != hostname:
                break
            url = urljoin(url, location)
        else:
            raise UserError(f"registry {self.host}: blob {digest}: more than 10 redirects")
        if response.status_code not in (200, 307):
            raise UserError(f"registry {self.host}: blob {digest}: HTTP {response.status_code} "
                            "(ollama pull accepts only 307 or 200 with a Location)")
        if not location:
            raise UserError(f"registry {self.host}: blob {digest}: HTTP {response.status_code} without a Location "
                            "header; `ollama pull` fails on it too ('http: no Location header in response'): serve "
                            "blobs through a redirect (docs/commands.md: push, pull)")
        return urljoin(url, location)


def _registry_error(response: requests.Response) -> str:
    """The distribution API's {"errors": [{"code", "message"}]} as ' (CODE: message)', if there is one."""
    try:
        errors = json.loads(response.raw.read(_ERROR_BYTES, decode_content=True))["errors"]
        text = "; ".join(f"{error.get('code')}: {error.get('message')}" for error in errors)
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError, OSError, urllib3_errors()):
        return ""
    return f" ({' '.join(text.split())[:300]})" if text else ""
