"""The registry client's pure parts: target names, upload URLs, manifest parsing, Go-compatible JSON (fast tier)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from granite_gguf.errors import UserError
from granite_gguf.modelfiles import registry
from granite_gguf.modelfiles.store import MANIFEST_MEDIA_TYPE, go_json

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(("target", "insecure", "base", "tag"), [
    ("127.0.0.1:5000/test/tiny:q8_0", True, "http://127.0.0.1:5000/v2/test/tiny/", "q8_0"),
    ("registry.example/ns/model", False, "https://registry.example/v2/ns/model/", "latest"),
])
def test_registry_targets(target: str, insecure: bool, base: str, tag: str) -> None:
    remote = registry.Registry(target, insecure)
    assert (remote.base, remote.name.tag) == (base, tag)


@pytest.mark.parametrize("target", ["test/tiny:q8_0", "tiny", "registry.ollama.ai/library/tiny:q8_0"])
def test_a_target_needs_a_registry_host(target: str) -> None:
    with pytest.raises(UserError, match=r"must be \[scheme://\]host\[:port\]/namespace/model\[:tag\]"):
        registry.Registry(target, insecure=True)


def test_upload_url_keeps_the_registrys_state() -> None:
    remote = registry.Registry("h:1/a/b:c", insecure=True)
    assert remote.upload_url("http://h/v2/a/b/blobs/uploads/u?_state=s", DIGEST) == \
        f"http://h/v2/a/b/blobs/uploads/u?_state=s&digest={DIGEST}"
    assert remote.upload_url("blobs/uploads/u", DIGEST) == f"http://h:1/v2/a/b/blobs/uploads/u?digest={DIGEST}"


def manifest(**changes: Any) -> bytes:
    value = {"schemaVersion": 2, "mediaType": MANIFEST_MEDIA_TYPE,
             "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": DIGEST, "size": 10},
             "layers": [{"mediaType": "application/vnd.ollama.image.model", "digest": DIGEST, "size": 0}]}
    return json.dumps({**value, **changes}).encode()


def test_manifest_entries_are_config_then_layers() -> None:
    entries = registry.parse_manifest(manifest(), "h:1/a/b:c")
    assert [entry["size"] for entry in entries] == [10, 0]
    assert registry.one_per_digest(entries) == [entries[1]], "one entry per digest"


@pytest.mark.parametrize(("body", "message"), [
    (b"not json", "manifest: not valid JSON"),
    (manifest(layers=[{"digest": DIGEST, "size": -1}]), "bad size -1"),
    (manifest(layers=[{"digest": "md5:00", "size": 1}]), "invalid blob digest 'md5:00'"),
    (manifest(config=None), "not a Docker v2 manifest"),
    (manifest(mediaType="application/vnd.oci.image.manifest.v1+json"), "manifest media type"),
])
def test_bad_manifests_are_refused_before_use(body: bytes, message: str) -> None:
    with pytest.raises(UserError, match="h:1/a/b:c|invalid blob digest") as raised:
        registry.parse_manifest(body, "h:1/a/b:c")
    assert message in str(raised.value)


def test_json_is_written_as_gos_encoder_writes_it() -> None:
    """ollama hashes the config blob it wrote with Go's json.Encoder: compact, HTML-escaped, newline."""
    assert go_json({"a": "<b>&", "n": [1, 2], "u": "ü\u2028"}) == b'{"a":"\\u003cb\\u003e\\u0026","n":[1,2],"u":"\xc3\xbc\\u2028"}\n'
