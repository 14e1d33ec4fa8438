"""Hostile GGUF metadata (issue 21, items 1, 9, 10, 12): every value llama.cpp would abort on, or compute NaN from,
is refused by `check`; the file llama.cpp loads is the file that was checked; a FIFO is refused, not waited on."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType

from granite_gguf.bindings.embedder import Embedder, NonFiniteVectorError
from granite_gguf.cli import main
from granite_gguf.errors import UserError
from granite_gguf.gguf_file import load
from granite_gguf.gguf_file.contract import check_gguf
from granite_gguf.gguf_file.header import GGUFCheckError, read_header
from granite_gguf.gguf_file.rewrite import key_entries, rewrite_keys
from tests.helpers import Workspace, cli_command

F32, U32, STR, BOOL = GGUFValueType.FLOAT32, GGUFValueType.UINT32, GGUFValueType.STRING, GGUFValueType.BOOL
ARCH = "modern-bert"


def with_keys(source: Path, dest: Path, changes: dict[str, tuple[GGUFValueType, Any] | None]) -> Path:
    """A copy of `source` with keys set (type, value) or removed (None)."""
    shutil.copyfile(source, dest)
    header = read_header(dest)
    entries = [entry for entry in key_entries(header) if entry[0] not in changes]
    entries += [(key, change[0], change[1], None) for key, change in changes.items() if change is not None]
    rewrite_keys(dest, header, entries)
    return dest


# key → (value type, value, what the refusal says); each would abort llama.cpp 0.3.36 or give NaN vectors.
HOSTILE_KEYS: dict[str, tuple[str, GGUFValueType, Any, str]] = {
    "eps -1": (f"{ARCH}.attention.layer_norm_epsilon", F32, -1.0, "eps >= 0"),
    "eps NaN": (f"{ARCH}.attention.layer_norm_epsilon", F32, float("nan"), "eps >= 0"),
    "eps 0": (f"{ARCH}.attention.layer_norm_epsilon", F32, 0.0, "finite epsilon in \\(0, 1\\)"),
    "eps inf": (f"{ARCH}.attention.layer_norm_epsilon", F32, float("inf"), "finite epsilon"),
    "RoPE base NaN": (f"{ARCH}.rope.freq_base", F32, float("nan"), "finite positive RoPE base"),
    "RoPE base -1": (f"{ARCH}.rope.freq_base", F32, -1.0, "finite positive RoPE base"),
    "local RoPE base 0": (f"{ARCH}.rope.freq_base_swa", F32, 0.0, "finite positive RoPE base"),
    "RoPE scaling yarn": (f"{ARCH}.rope.scaling.type", STR, "yarn", "one of none, linear"),
    "RoPE scaling unknown": (f"{ARCH}.rope.scaling.type", STR, "bogus", "unknown names abort"),
    "RoPE scaling factor NaN": (f"{ARCH}.rope.scaling.factor", F32, float("nan"), "finite factor"),
    "RoPE dimensions odd": (f"{ARCH}.rope.dimension_count", U32, 3, "even count"),
    "RoPE dimensions too many": (f"{ARCH}.rope.dimension_count", U32, 4096, "even count up to the head size"),
    "window 0": (f"{ARCH}.attention.sliding_window", U32, 0, "out of range"),
    "pattern 0": (f"{ARCH}.attention.sliding_window_pattern", U32, 0, "out of range"),
    "600 layers": (f"{ARCH}.block_count", U32, 600, "at most 512 layers"),
    "odd head size": (f"{ARCH}.attention.head_count", U32, 64, "even head size"),
    "grouped KV heads": (f"{ARCH}.attention.head_count_kv", U32, 1, "no grouped KV heads"),
    "key length": (f"{ARCH}.attention.key_length", U32, 7, "one head size"),
    "experts": (f"{ARCH}.expert_count", U32, 8, "no experts"),
    "nextn layers": (f"{ARCH}.nextn_predict_layers", U32, 1, "no experts or extra prediction layers"),
    "rank pooling": (f"{ARCH}.pooling_type", U32, 4, "others abort the graph build"),
    "unknown activation": (f"{ARCH}.hidden_activation", STR, "gelu_new", "silently run GeGLU"),
    "causal not a bool": (f"{ARCH}.attention.causal", U32, 1, "expected bool"),
    "SPM vocabulary": ("tokenizer.ggml.model", STR, "llama", "only 'gpt2'"),
    "add BOS without a BOS id": ("tokenizer.ggml.bos_token_id", STR, None, "bos_token_id is missing"),
}


@pytest.fixture(scope="module")
def good(workspace: Workspace) -> Path:
    return workspace.gguf("tiny-gemma3", "f16")


@pytest.mark.parametrize("case", list(HOSTILE_KEYS))
def test_hostile_hyperparameters_are_refused(good: Path, tmp_path: Path, case: str) -> None:
    key, value_type, value, message = HOSTILE_KEYS[case]
    changes = {key: None if value is None else (value_type, value)}
    if case == "add BOS without a BOS id":
        changes["tokenizer.ggml.add_bos_token"] = (BOOL, True)
    path = with_keys(good, tmp_path / "hostile.gguf", changes)
    with pytest.raises(GGUFCheckError, match=message):
        check_gguf(path)
    assert main(["check", str(path)]) == 1


def test_the_good_file_with_every_optional_key_at_a_sane_value_passes(good: Path, tmp_path: Path) -> None:
    """The rules refuse the hostile values, not the keys: upstream converters write some of them."""
    meta = check_gguf(good).metadata
    heads = meta[f"{ARCH}.attention.head_count"]
    head = meta[f"{ARCH}.embedding_length"] // heads
    path = with_keys(good, tmp_path / "sane.gguf", {
        f"{ARCH}.rope.scaling.type": (STR, "none"), f"{ARCH}.attention.head_count_kv": (U32, heads),
        f"{ARCH}.attention.key_length": (U32, head), f"{ARCH}.rope.dimension_count": (U32, head),
        f"{ARCH}.expert_count": (U32, 0), f"{ARCH}.hidden_activation": (STR, "swiglu"),
    })
    assert check_gguf(path).metadata[f"{ARCH}.rope.scaling.type"] == "none"


def edited_tensor(good: Path, dest: Path, name: str, edit: str) -> Path:
    shutil.copyfile(good, dest)
    reader = GGUFReader(dest, "r+")
    tensor = next(t for t in reader.tensors if t.name == name)
    if edit == "nan":
        tensor.data[:] = np.nan
    else:  # the type field of the tensor info: [name length, name, n_dims, dims, type, offset]
        tensor.field.parts[4][0] = int(GGMLQuantizationType.F16)
    reader.data.flush()
    del reader
    return dest


def test_nan_norm_weights_are_refused(good: Path, tmp_path: Path) -> None:
    """Issue 21 item 9: all-NaN weights passed check; a NaN in any norm weight makes every vector NaN."""
    path = edited_tensor(good, tmp_path / "nan.gguf", "blk.1.ffn_norm.weight", "nan")
    with pytest.raises(GGUFCheckError, match="blk.1.ffn_norm.weight holds NaN or infinite values"):
        check_gguf(path)


def test_a_norm_weight_in_f16_is_refused(good: Path, tmp_path: Path) -> None:
    """ggml-cpu's binary ops abort on F32 activations times an F16 weight ("unsupported types")."""
    path = edited_tensor(good, tmp_path / "f16norm.gguf", "output_norm.weight", "type")
    with pytest.raises(GGUFCheckError, match="output_norm.weight is F16; llama.cpp needs 1-D tensors in F32"):
        check_gguf(path)


def test_a_fifo_is_refused_not_waited_on(tmp_path: Path) -> None:
    """Issue 21 item 12: opening a FIFO to read waits for a writer forever; check, inspect and install hung."""
    fifo = tmp_path / "model.gguf"
    os.mkfifo(fifo)
    commands = {"check": ["check", str(fifo)], "inspect": ["inspect", str(fifo)],
                "install": ["ollama", "install", str(fifo), "--name", "x", "--models-dir", str(tmp_path / "store")],
                "modelfile": ["modelfile", "--check", str(fifo)]}
    running = {name: subprocess.Popen(cli_command(*argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for name, argv in commands.items()}
    results = {}
    try:
        for name, process in running.items():
            out, err = process.communicate(timeout=60)
            results[name] = process.returncode
            assert "not a regular file (a FIFO)" in out + err, name
            assert "Traceback" not in err
    finally:
        for process in running.values():
            process.kill()
    assert results == {"check": 1, "inspect": 2, "install": 2, "modelfile": 2}


def test_llama_cpp_loads_the_file_that_was_checked(good: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 21 item 10: a file renamed over the checked one before llama.cpp opened it aborted the process. The name
    handed to llama.cpp is the checked file's descriptor, so the swap changes nothing."""
    path = tmp_path / "model.gguf"
    shutil.copyfile(good, path)
    bad = with_keys(good, tmp_path / "bad.gguf", {f"{ARCH}.attention.layer_norm_epsilon": (F32, -1.0)})
    file = load(path)
    with file.opened() as load_path:
        os.replace(bad, path)  # the swap, after the check
        assert file.header.path == path and load_path.startswith("/proc/self/fd/")
        assert check_gguf(Path(load_path)).metadata[f"{ARCH}.attention.layer_norm_epsilon"] > 0
    with pytest.raises(GGUFCheckError, match="eps >= 0"):
        check_gguf(path)


def test_a_file_swapped_between_load_and_open_is_refused(good: Path, tmp_path: Path) -> None:
    """`GGUFFile.opened` hands llama.cpp only the version `load` read: another file renamed over it, or the file
    changed in place, in between is an error, never an unchecked load."""
    path = tmp_path / "model.gguf"
    shutil.copyfile(good, path)
    file = load(path)
    shutil.copyfile(with_keys(good, tmp_path / "bad.gguf", {f"{ARCH}.attention.layer_norm_epsilon": (F32, -1.0)}),
                    tmp_path / "swap.gguf")
    os.replace(tmp_path / "swap.gguf", path)
    with pytest.raises(GGUFCheckError, match="changed since it was read"), file.opened():
        pass
    file = load(path, check=False)
    with path.open("r+b") as handle:  # in place: same inode
        handle.seek(0, os.SEEK_END)
        handle.write(b"\0")
    with pytest.raises(GGUFCheckError, match="changed since it was read"), file.opened():
        pass


@pytest.mark.slow
def test_the_swap_inside_the_embedder_loads_the_checked_file(good: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The Embedder itself: the swap happens between its check and llama.cpp's load, and it embeds."""
    import llama_cpp

    path = tmp_path / "model.gguf"
    shutil.copyfile(good, path)
    bad = with_keys(good, tmp_path / "bad.gguf", {f"{ARCH}.attention.layer_norm_epsilon": (F32, -1.0)})
    real = llama_cpp.Llama

    def swap_then_load(*args: Any, **kwargs: Any) -> Any:
        os.replace(bad, path)
        return real(*args, **kwargs)

    monkeypatch.setattr(llama_cpp, "Llama", swap_then_load)
    with Embedder(path) as embedder:
        assert np.isfinite(embedder.encode(["x"])).all()


@pytest.mark.slow
def test_without_the_check_a_negative_epsilon_aborts_llama_cpp(good: Path, tmp_path: Path) -> None:
    """Why item 1 matters: the file the old check passed kills the process at its first embedding."""
    path = with_keys(good, tmp_path / "eps.gguf", {f"{ARCH}.attention.layer_norm_epsilon": (F32, -1.0)})
    script = ("from granite_gguf.bindings.embedder import Embedder\n"
              f"Embedder({str(path)!r}, unsafe_skip_check=True).encode(['x'])")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode < 0 or result.returncode == 134, result.stderr[-500:]
    assert "eps >= 0" in result.stderr


@pytest.mark.slow
def test_the_embedder_refuses_non_finite_vectors(good: Path, tmp_path: Path) -> None:
    """Issue 21 item 9: NaN in a matrix (not read by the check) gives NaN vectors; they are refused, not returned."""
    path = tmp_path / "nan-matrix.gguf"
    shutil.copyfile(good, path)
    reader = GGUFReader(path, "r+")
    tensor = next(t for t in reader.tensors if t.name == "blk.0.attn_output.weight")
    tensor.data[:] = np.nan
    reader.data.flush()
    del reader
    check_gguf(path)  # the check does not read matrices
    with Embedder(path) as embedder, pytest.raises(NonFiniteVectorError, match="NaN or infinite values for input 0"):
        embedder.encode(["x"])
    assert issubclass(NonFiniteVectorError, UserError)
