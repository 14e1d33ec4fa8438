"""Several llama.cpp types from one checkpoint read, with truthful names."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from granite_gguf.bindings.embedder import Embedder
from granite_gguf.convert.quantize import convert_set
from granite_gguf.convert.source import open_checkpoint
from granite_gguf.convert.types import OutType
from granite_gguf.gguf_file import load
from granite_gguf.verify import compare
from tests.helpers import Workspace

pytestmark = [pytest.mark.slow]


def test_quant_set_loads_and_names_are_truthful(workspace: Workspace, tmp_path: Path) -> None:
    outputs = OutType.parse_list("f16,q8_0,q6_k,q5_k_m,q4_k_m,q4_0")
    results = convert_set(open_checkpoint(str(workspace.checkpoint("tiny-o200k"))), tmp_path, outputs, model_name="tiny")
    assert [r.output for r in results] == outputs
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(r.path.name for r in results), "no temporary files left"
    for result in results:
        summary = load(result.path, check=False).summary
        weights = {t: n for t, n in summary.tensor_elements.items() if t != "F32"}
        assert result.dominant_type.name == max(weights, key=weights.__getitem__)
        assert result.truthful == (result.path.name == f"tiny-{result.output.label}.gguf")
        if result.output.label.endswith(("_k", "_k_m")):
            # hidden 64 is not a multiple of 256: no tensor can be a K-quant, and the name says so
            assert not any(t.endswith("_K") for t in weights) and not result.truthful
        with Embedder(result.path, max_tokens=64) as embedder:
            vector = embedder.encode("Grüß Gott, 世界")
        assert vector.shape == (64,) and abs(float(np.linalg.norm(vector)) - 1) < 1e-5
    q8 = next(r for r in results if r.output is OutType.Q8_0)
    assert q8.truthful
    assert compare(workspace.reference("tiny-o200k"), q8.path).passed, "llama.cpp's q8_0 must pass like gguf-py's"


def test_quant_set_shows_a_progress_bar_per_file(workspace: Workspace, tmp_path: Path, capsys) -> None:
    """One bar over the checkpoint read, then one per output file that counts llama.cpp's tensors."""
    results = convert_set(open_checkpoint(str(workspace.checkpoint("tiny-gemma3"))), tmp_path, [OutType.Q8_0, OutType.Q4_0],
                          model_name="tiny", progress=True)
    err = capsys.readouterr().err.replace("\r", "\n")
    assert "tiny (f32, read once): 100%" in err
    for result in results:
        tensors = sum(load(result.path, check=False).summary.tensor_types.values())
        assert f"tiny-{result.output.label}.gguf: 100%|" in err and f"| {tensors}/{tensors} [" in err


def test_a_killed_runs_temporaries_are_removed_and_a_live_ones_kept(workspace: Workspace, tmp_path: Path) -> None:
    """Writers lock their temporaries; SIGKILL drops the lock, so the next set removes what a killed run
    left (a 1.2 GB F32 intermediate on the 311m) and leaves those a running process still holds."""
    killed = [tmp_path / ".tiny-f32.999999.source.tmp", tmp_path / "..tiny-f32.999999.source.tmp.999999.tmp",
              tmp_path / ".tiny-q8_0.gguf.999999.tmp"]
    for path in killed:
        path.write_bytes(b"partial")
    live = tmp_path / ".tiny-q4_0.gguf.999998.tmp"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import fcntl, os, sys, time
        descriptor = os.open({str(live)!r}, os.O_WRONLY | os.O_CREAT)
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        print("locked", flush=True)
        time.sleep(120)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        results = convert_set(open_checkpoint(str(workspace.checkpoint("tiny-gemma3"))), tmp_path, [OutType.Q8_0, OutType.Q4_0],
                              model_name="tiny")
        left = sorted(p.name for p in tmp_path.iterdir())
        assert left == sorted([live.name, *(r.path.name for r in results)])
    finally:
        holder.kill()
        holder.wait()
