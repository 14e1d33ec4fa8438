"""Bad input: exit 2, one `error:` line, no traceback, and no output file left behind."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.helpers import Workspace, run_cli_process

pytestmark = [pytest.mark.slow]


def edit_json(path: Path, **changes: object) -> None:
    data = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    path.write_text(json.dumps(data))


def truncate_weights(folder: Path) -> None:
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


def corrupt_header(folder: Path) -> None:
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[8:20] = b"not json at!"
    weights.write_bytes(bytes(data))


def pickle_only(folder: Path) -> None:
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")


def wordpiece_tokenizer(folder: Path) -> None:
    edit_json(folder / "tokenizer.json", model={"type": "WordPiece", "vocab": {"[UNK]": 0}, "unk_token": "[UNK]"})


def unknown_pre_tokenizer(folder: Path) -> None:
    edit_json(folder / "tokenizer.json", pre_tokenizer={"type": "Whitespace"})


BREAKAGES = {
    "truncated safetensors": (truncate_weights, "truncated file"),
    "corrupted safetensors header": (corrupt_header, "corrupted safetensors file"),
    "missing config key": (lambda d: edit_json(d / "config.json", hidden_size=None), "missing key 'hidden_size'"),
    "missing RoPE base": (lambda d: edit_json(d / "config.json", global_rope_theta=None), "no global RoPE base"),
    "unknown architecture": (lambda d: edit_json(d / "config.json", architectures=["BertModel"], model_type="bert"), "unsupported architecture BertModel"),
    "biases": (lambda d: edit_json(d / "config.json", mlp_bias=True), "mlp_bias"),
    "unknown activation": (lambda d: edit_json(d / "config.json", hidden_activation="relu"), "hidden_activation 'relu'"),
    "pickle-only checkpoint": (pickle_only, "pickle"),
    "WordPiece tokenizer": (wordpiece_tokenizer, "model.type is 'WordPiece'"),
    "unknown pre-tokenizer": (unknown_pre_tokenizer, "pre_tokenizer Whitespace"),
    "missing tokenizer.json": (lambda d: (d / "tokenizer.json").unlink(), "tokenizer.json: missing"),
    "MEAN+CLS pooling": (lambda d: edit_json(d / "1_Pooling" / "config.json", pooling_mode_mean_tokens=True), "unsupported pooling"),
}


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_bad_checkpoint_exits_2_and_writes_nothing(workspace: Workspace, tmp_path: Path, breakage: str) -> None:
    folder = tmp_path / "ckpt"
    shutil.copytree(workspace.checkpoint("tiny-gpt2"), folder)
    damage, expected = BREAKAGES[breakage]
    damage(folder)
    out = tmp_path / "out"
    out.mkdir()
    result = run_cli_process("convert", str(folder), "-o", str(out / "model.gguf"), "--outtype", "q8_0")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and expected in lines[-1], result.stderr
    assert "Traceback" not in result.stderr
    assert list(out.iterdir()) == [], "a failed conversion must leave nothing in the output folder"


def test_missing_source_and_bad_outtype(tmp_path: Path, workspace: Workspace) -> None:
    result = run_cli_process("convert", str(tmp_path / "nope"))
    assert result.returncode == 2 and result.stderr.startswith("error: ")
    result = run_cli_process("convert", str(workspace.checkpoint("tiny-gpt2")), "--outtype", "q4_k_m", "-o", str(tmp_path / "x.gguf"))
    assert result.returncode == 2 and "unknown output type 'q4_k_m'" in result.stderr
    assert not (tmp_path / "x.gguf").exists()


def test_verify_bad_input_exits_2(tmp_path: Path, workspace: Workspace) -> None:
    result = run_cli_process("verify", str(workspace.checkpoint("tiny-gpt2")), str(tmp_path / "missing.gguf"))
    assert result.returncode == 2 and "no such GGUF file" in result.stderr
    result = run_cli_process("verify", str(workspace.checkpoint("tiny-gpt2")), "--all", str(tmp_path))
    assert result.returncode == 2 and "no GGUF file to verify" in result.stderr
    not_gguf = tmp_path / "fake.gguf"
    not_gguf.write_bytes(b"GGUF\x03\x00\x00\x00garbage")
    result = run_cli_process("inspect", str(not_gguf))
    assert result.returncode == 2 and "left in the file" in result.stderr and result.stderr.count("\n") == 1
