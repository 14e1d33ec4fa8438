"""SIGKILL at spread-out moments never leaves a partial file under a final name.

A conversion, a quantized set and a store install run as child processes and are killed after a
fraction of the time a complete run takes; afterwards every final path holds either the previous
content or a complete, valid new file, and a store manifest only names blobs that are present and
whole.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from granite_gguf.gguf_file.contract import check_gguf
from tests.helpers import Workspace, cli_command

pytestmark = [pytest.mark.slow]

FRACTIONS = (0.2, 0.4, 0.55, 0.7, 0.8, 0.9, 0.97)


def kill_at_fractions(command: list[str], after_each: Callable[[], None], before_each: Callable[[], None]) -> int:
    """Time one full run, then run again killed at each fraction of it; returns how many kills landed."""
    before_each()
    started = time.monotonic()
    subprocess.run(command, check=True, capture_output=True, timeout=300)
    full = time.monotonic() - started
    after_each()
    landed = 0
    for fraction in FRACTIONS:
        before_each()
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(full * fraction)
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            landed += 1
        process.wait(timeout=60)
        after_each()
    return landed


def test_killed_conversion_keeps_the_previous_file_or_writes_a_whole_one(workspace: Workspace, tmp_path: Path) -> None:
    source = workspace.checkpoint("tiny-gemma3")
    target = tmp_path / "model.gguf"
    previous = workspace.gguf("tiny-o200k", "f16").read_bytes()  # a different, valid file already there

    def put_previous() -> None:
        target.write_bytes(previous)

    def still_whole() -> None:
        if target.read_bytes() != previous:
            check_gguf(target)
            assert target.read_bytes() == workspace.gguf("tiny-gemma3", "f32").read_bytes()

    landed = kill_at_fractions(cli_command("convert", str(source), "-o", str(target), "--outtype", "f32", "--no-progress"),
                               still_whole, put_previous)
    assert landed >= 3


def test_killed_quantized_set_leaves_only_whole_files(workspace: Workspace, tmp_path: Path) -> None:
    outdir = tmp_path / "set"

    def fresh() -> None:
        shutil.rmtree(outdir, ignore_errors=True)
        outdir.mkdir()

    def only_whole() -> None:
        for path in outdir.glob("*.gguf"):
            check_gguf(path)

    landed = kill_at_fractions(cli_command("convert", str(workspace.checkpoint("tiny-gpt2")), "--quant", "f16,q8_0,q4_0",
                                   "--outdir", str(outdir), "--no-progress"), only_whole, fresh)
    assert landed >= 3


@pytest.mark.parametrize("previous", [False, True])
def test_killed_store_install_leaves_a_consistent_store(workspace: Workspace, tmp_path: Path, previous: bool) -> None:
    store = tmp_path / "models"
    gguf = workspace.gguf("tiny-gemma3", "f32")

    def prepare() -> None:
        shutil.rmtree(store, ignore_errors=True)
        if previous:  # an earlier install of another file under the same name must survive intact
            subprocess.run(cli_command("ollama", "install", str(workspace.gguf("tiny-gpt2", "f16")), "--name", "m:1",
                               "--models-dir", str(store)), check=True, capture_output=True, timeout=120)

    def consistent() -> None:
        for manifest in store.glob("manifests/**/*"):
            if manifest.is_file():
                entries = json.loads(manifest.read_text())
                for entry in [entries["config"], *entries["layers"]]:
                    blob = store / "blobs" / entry["digest"].replace(":", "-")
                    assert blob.is_file(), f"{manifest} names a missing blob"
                    assert "sha256:" + hashlib.sha256(blob.read_bytes()).hexdigest() == entry["digest"]

    landed = kill_at_fractions(cli_command("ollama", "install", str(gguf), "--name", "m:1", "--models-dir", str(store)),
                               consistent, prepare)
    assert landed >= 3
