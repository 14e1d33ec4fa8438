"""Throughput side by side: PyTorch, ONNX Runtime, OpenVINO and GGUF files timed on the same texts in one run.

Each runner lives in its own process and loads its model once; the parent hands every runner the
same texts round by round, so all of them see the same machine state (a noisy neighbour slows all).
Used by scripts/bench_embed.py (every runner and worker layout) and scripts/quality_table.py (docs/s
and tokens/s of every file next to its size and cosine). Figures are medians over rounds.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import platform
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from multiprocessing.connection import Connection
from pathlib import Path
from types import TracebackType

from granite_gguf.bindings.embedder import DEFAULT_BATCH_TOKENS, DEFAULT_MAX_TOKENS

DOC_TOKENS = 512  # the document length of the headline figure (issue 13, docs/performance.md)
PYTORCH_BATCH_TOKENS = 4096  # sentence-transformers batch: 8 documents of 512 tokens per forward pass
SHORT_BATCH = 32  # sentence-transformers' default batch size, for short texts
SHUTDOWN_SECONDS = 60


class Kind(Enum):
    PYTORCH = "pytorch"  # sentence-transformers, fp32, sdpa attention
    ONNX = "onnxruntime"  # an exported encoder; CLS pooling and L2 in numpy, as the checkpoint's pipeline
    OPENVINO = "openvino"  # an OpenVINO IR (.xml) of the same export, CPU plugin; pooling as ONNX
    GGUF = "gguf"  # the Embedder on a GGUF file


@dataclass(frozen=True)
class Runner:
    """One thing to time: `model` is a checkpoint folder (PyTorch), an .onnx file or a .gguf file."""

    name: str
    kind: Kind
    model: str
    threads: int
    workers: int | None = None  # GGUF: Embedder contexts (None: the Embedder's default layout)
    batch_tokens: int = DEFAULT_BATCH_TOKENS  # GGUF: tokens per decode when packing short inputs
    flash_attn: bool = True  # GGUF: llama.cpp's flash attention (the Embedder's default: on)
    llama_lib: str | None = None  # GGUF: a folder holding another build of libllama (LLAMA_CPP_LIB_PATH)
    precision: str | None = None  # OpenVINO: INFERENCE_PRECISION_HINT ("f32"; None: the plugin's default, bf16 on AVX512_BF16)


def exported_tokenizer(model: str) -> Callable[[list[str]], tuple[object, object]]:
    """`texts -> (input_ids, attention_mask)` as int64 arrays, padded to the longest, by the tokenizer.json
    beside an exported model (ONNX Runtime and OpenVINO)."""
    import numpy as np
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(Path(model).parent / "tokenizer.json"))
    tokenizer.enable_padding()
    tokenizer.enable_truncation(DEFAULT_MAX_TOKENS)

    def tokenize(texts: list[str]) -> tuple[object, object]:
        encodings = tokenizer.encode_batch(texts)
        return (np.array([e.ids for e in encodings], dtype=np.int64),
                np.array([e.attention_mask for e in encodings], dtype=np.int64))

    return tokenize


def _cls_batches(run: Callable[[object, object], object], tokenize: Callable[[list[str]], tuple[object, object]]
                 ) -> Callable[[list[str], int], object]:
    """encode(texts, batch_size) for an exported encoder: `run(ids, mask)` gives last_hidden_state; CLS, L2."""
    import numpy as np

    def encode(texts: list[str], batch_size: int) -> object:
        rows = []
        for start in range(0, len(texts), batch_size):
            ids, mask = tokenize(texts[start:start + batch_size])
            cls = np.asarray(run(ids, mask))[:, 0]
            rows.append(cls / np.linalg.norm(cls, axis=1, keepdims=True))
        return np.concatenate(rows)

    return encode


def _load(runner: Runner) -> Callable[[list[str], int], object]:
    """The runner's model, loaded, as `encode(texts, batch_size)` returning normalized vectors."""
    if runner.kind is Kind.PYTORCH:
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(runner.threads)
        model = SentenceTransformer(runner.model, device="cpu", local_files_only=True)
        model.max_seq_length = DEFAULT_MAX_TOKENS

        def encode_pytorch(texts: list[str], batch_size: int) -> object:
            with torch.inference_mode():
                return model.encode(texts, batch_size=batch_size, normalize_embeddings=True)

        return encode_pytorch
    if runner.kind is Kind.ONNX:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = runner.threads
        session = onnxruntime.InferenceSession(runner.model, options, providers=["CPUExecutionProvider"])
        return _cls_batches(lambda ids, mask: session.run(None, {"input_ids": ids, "attention_mask": mask})[0],
                            exported_tokenizer(runner.model))
    if runner.kind is Kind.OPENVINO:
        import openvino

        config: dict[str, object] = {"INFERENCE_NUM_THREADS": runner.threads}
        if runner.precision:
            config["INFERENCE_PRECISION_HINT"] = runner.precision
        compiled = openvino.Core().compile_model(runner.model, "CPU", config)
        request = compiled.create_infer_request()
        return _cls_batches(lambda ids, mask: request.infer({"input_ids": ids, "attention_mask": mask})[0],
                            exported_tokenizer(runner.model))
    from granite_gguf.bindings.embedder import Embedder

    embedder = Embedder(runner.model, n_threads=runner.threads, batch_tokens=runner.batch_tokens, workers=runner.workers,
                        flash_attn=runner.flash_attn)
    return lambda texts, _: embedder.encode(texts)


def _serve(connection: Connection, runner: Runner) -> None:
    """A runner's process: load, say "ready", then run each (texts, batch_size, vectors) job until None and
    answer its seconds, or its vectors (a float32 array, one normalized row per text) when `vectors`."""
    import numpy as np

    if runner.llama_lib:  # before llama_cpp is imported: llama-cpp-python reads it once
        os.environ["LLAMA_CPP_LIB_PATH"] = runner.llama_lib
    encode = _load(runner)
    connection.send("ready")
    while (job := connection.recv()) is not None:
        texts, batch_size, vectors = job
        started = time.perf_counter()
        result = encode(texts, batch_size)
        seconds = time.perf_counter() - started
        connection.send(np.asarray(result, dtype=np.float32) if vectors else seconds)


class Bench:
    """Runner processes started together, timed on the same texts round by round (runners interleaved)."""

    def __init__(self, runners: Sequence[Runner]) -> None:
        context = mp.get_context("spawn")
        self._processes: dict[str, tuple[mp.process.BaseProcess, Connection]] = {}
        try:
            for runner in runners:
                parent_end, child_end = context.Pipe()
                process = context.Process(target=_serve, args=(child_end, runner), daemon=True, name=runner.name)
                process.start()
                child_end.close()
                self._processes[runner.name] = (process, parent_end)
                if self._receive(runner.name) != "ready":
                    raise RuntimeError(f"{runner.name}: unexpected start message")
        except BaseException:
            self.close()
            raise

    def _receive(self, name: str) -> object:
        process, connection = self._processes[name]
        try:
            return connection.recv()
        except EOFError:
            process.join(5)
            raise RuntimeError(f"runner {name} exited with code {process.exitcode} (its stderr is above)") from None

    def warm_up(self, texts: list[str], batch_size: int) -> None:
        """One untimed round: first-call costs (page faults on the weights, contexts grown to the inputs,
        PyTorch's first dispatch) stay out of the timed rounds."""
        self.rounds(texts, batch_size, 1)

    def rounds(self, texts: list[str], batch_size: int, rounds: int,
               report: Callable[[int, str, float], None] | None = None) -> dict[str, list[float]]:
        """Seconds per round per runner; `report(round, name, seconds)` after each."""
        seconds: dict[str, list[float]] = {name: [] for name in self._processes}
        for round_index in range(rounds):
            for name, (_, connection) in self._processes.items():
                connection.send((texts, batch_size, False))
                value = self._receive(name)
                assert isinstance(value, float)
                seconds[name].append(value)
                if report:
                    report(round_index + 1, name, value)
        return seconds

    def vectors(self, texts: list[str], batch_size: int) -> dict[str, object]:
        """Each runner's normalized vectors for `texts` (float32 arrays, one row per text), untimed."""
        result: dict[str, object] = {}
        for name, (_, connection) in self._processes.items():
            connection.send((texts, batch_size, True))
            result[name] = self._receive(name)
        return result

    def close(self) -> None:
        """Stop every runner; one that already exited (a crash after its last reply) is named, not fatal."""
        for name, (process, connection) in self._processes.items():
            try:
                connection.send(None)
            except (BrokenPipeError, ConnectionResetError, OSError):
                pass
            process.join(SHUTDOWN_SECONDS)
            if process.is_alive():
                process.terminate()
                process.join(5)
            if process.exitcode:
                print(f"warning: runner {name} ended with exit code {process.exitcode}", flush=True)
            connection.close()
        self._processes.clear()

    def __enter__(self) -> Bench:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def make_documents(checkpoint: Path, tokens: int, count: int) -> list[str]:
    """`count` texts of about `tokens` tokens (special tokens included), cut from the probe set with the
    checkpoint's own tokenizer."""
    from tokenizers import Tokenizer

    from granite_gguf.probes import probe_texts

    tokenizer = Tokenizer.from_file(str(checkpoint / "tokenizer.json"))
    ids = tokenizer.encode(" ".join(probe_texts()), add_special_tokens=False).ids
    content = tokens - 2
    while len(ids) < content * count:
        ids = ids + ids
    return [tokenizer.decode(ids[i * content:(i + 1) * content]) for i in range(count)]


def count_tokens(checkpoint: Path, texts: Sequence[str]) -> int:
    """Tokens the model sees for `texts` (special tokens included), by the checkpoint's tokenizer."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(checkpoint / "tokenizer.json"))
    return sum(len(encoding.ids) for encoding in tokenizer.encode_batch(list(texts)))


def export_onnx(checkpoint: Path, folder: Path) -> tuple[Path, Path]:
    """fp32 ONNX of the checkpoint's encoder (torch.onnx.export, eager attention, opset 17) and its
    dynamic int8 quantization (onnxruntime.quantization.quantize_dynamic), made once in `folder`."""
    fp32, int8 = folder / f"{checkpoint.name}-fp32.onnx", folder / f"{checkpoint.name}-int8.onnx"
    shutil.copy(checkpoint / "tokenizer.json", folder / "tokenizer.json")
    if not fp32.exists():
        import torch
        from transformers import AutoModel

        model = AutoModel.from_pretrained(str(checkpoint), attn_implementation="eager").eval()
        example = (torch.ones(2, 16, dtype=torch.long), torch.ones(2, 16, dtype=torch.long))
        axes = {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"}}
        partial = fp32.with_suffix(".partial.onnx")
        torch.onnx.export(model, example, str(partial), input_names=["input_ids", "attention_mask"],
                          output_names=["last_hidden_state"], dynamic_axes=axes, opset_version=17, dynamo=False)
        partial.rename(fp32)
    if not int8.exists():
        from onnxruntime.quantization import QuantType, quantize_dynamic

        partial = int8.with_suffix(".partial.onnx")
        quantize_dynamic(str(fp32), str(partial), weight_type=QuantType.QInt8)
        partial.rename(int8)
    return fp32, int8


def machine() -> str:
    """The CPU model, the CPUs this process may use, RAM and Python, for a benchmark table's header."""
    def first(path: str, key: str) -> str | None:
        try:
            return next((line.split(":", 1)[1].strip() for line in Path(path).read_text().splitlines()
                         if line.startswith(key)), None)
        except OSError:
            return None

    cpu = first("/proc/cpuinfo", "model name") or platform.processor() or "unknown CPU"
    memory = first("/proc/meminfo", "MemTotal")
    ram = f", {int(memory.split()[0]) / 2**20:.1f} GiB RAM" if memory else ""
    return f"{cpu}, {len(os.sched_getaffinity(0))} usable CPUs (of {os.cpu_count()}){ram}, Python {platform.python_version()}"


def export_openvino(fp32_onnx: Path, checkpoint: Path, folder: Path, calibration: int = 32) -> tuple[Path, Path]:
    """The OpenVINO IR of the fp32 ONNX export (`openvino.convert_model`, weights kept f32) and its int8
    post-training quantization (`nncf.quantize`, model type TRANSFORMER, default preset, calibrated on
    `calibration` probe-set documents of 512 tokens with the checkpoint's tokenizer), made once in `folder`."""
    import openvino

    ir, int8 = folder / f"{checkpoint.name}-openvino.xml", folder / f"{checkpoint.name}-openvino-int8.xml"
    if not ir.exists():
        _save_ir(openvino.convert_model(str(fp32_onnx)), ir)
    if not int8.exists():
        import nncf

        tokenize = exported_tokenizer(str(fp32_onnx))
        documents = make_documents(checkpoint, DOC_TOKENS, calibration * 2)[calibration:]  # not the benchmark's first ones
        samples = [dict(zip(("input_ids", "attention_mask"), tokenize([document]), strict=True)) for document in documents]
        quantized = nncf.quantize(openvino.Core().read_model(str(ir)), nncf.Dataset(samples),
                                  model_type=nncf.ModelType.TRANSFORMER, subset_size=len(samples))
        _save_ir(quantized, int8)
    return ir, int8


def _save_ir(model: object, xml: Path) -> None:
    """An IR (.xml and its .bin) saved under partial names and renamed into place, .bin first: an interrupted
    export leaves no .xml that `export_openvino` would take for a finished one (as `export_onnx` does)."""
    import openvino

    partial = xml.with_suffix(".partial.xml")
    openvino.save_model(model, str(partial), compress_to_fp16=False)
    partial.with_suffix(".bin").rename(xml.with_suffix(".bin"))
    partial.rename(xml)
