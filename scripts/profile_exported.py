"""Where ONNX Runtime and OpenVINO spend embedding time: per-node timings from each runtime's own profiler, by op class.

The counterpart of scripts/profile_embed.py (perf on llama.cpp). ONNX Runtime's session profiler
(`enable_profiling`: one JSON event per node run) and OpenVINO's per-node counters (`PERF_COUNT`,
`get_profiling_info`: real time, the kernel that ran, e.g. `brgemm_avx512_amx_i8`) are summed over
the documents and grouped into the classes of the llama.cpp profile (matrix products, attention, the
rest), so the three runtimes can be read side by side. Documents are the benchmark's (probe text, one
per call, `--tokens` each); one untimed call first.

    .venv/bin/python scripts/profile_exported.py /tmp/full97m /tmp/q97 --tokens 512
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

from granite_gguf.throughput import exported_tokenizer, make_documents

CLASSES = [  # (class, pattern on "op type / kernel"), first match wins
    ("matrix products (weights)", re.compile(r"\(weights\)|FullyConnected", re.I)),
    ("attention (QK^T, softmax, ·V)", re.compile(r"\(attention\)|MatMul|ScaledDotProduct|Softmax|SDPA|Subgraph", re.I)),
    ("activation quantization", re.compile(r"DynamicQuantizeLinear|FakeQuantize|QuantizeLinear|DequantizeLinear", re.I)),
    ("norms / GLU / RoPE / elementwise", re.compile(r"Norm|MVN|Mul|Add|Sub|Div|Gelu|Erf|Sigmoid|Tanh|Pow|Sqrt|Eltwise|RoPE|Sin|Cos", re.I)),
    ("layout (reshape, transpose, copies, casts)", re.compile(r"Reshape|Transpose|Reorder|Split|Concat|Slice|Gather|Cast|Convert|Expand|Unsqueeze|Squeeze|Where|Shape|Range|Broadcast|Identity|Tile", re.I)),
]


def classify(name: str) -> str:
    return next((label for label, pattern in CLASSES if pattern.search(name)), "other")


def onnx_profile(model: Path, docs: list[str], threads: int) -> tuple[float, collections.Counter[str], collections.Counter[str]]:
    """Seconds for the documents and per-op-type / per-class node time (µs) from ONNX Runtime's profiler."""
    import time

    import onnxruntime

    tokenize = exported_tokenizer(str(model))
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.enable_profiling = True
    options.profile_file_prefix = os.path.join(tempfile.mkdtemp(), "ort")
    session = onnxruntime.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    ids, mask = tokenize(docs[:1])
    session.run(None, {"input_ids": ids, "attention_mask": mask})
    started = time.perf_counter()
    for doc in docs:
        ids, mask = tokenize([doc])
        session.run(None, {"input_ids": ids, "attention_mask": mask})
    seconds = time.perf_counter() - started
    events = json.loads(Path(session.end_profiling()).read_text())
    by_op: collections.Counter[str] = collections.Counter()
    for event in events:  # the warm-up call's nodes too: one run in len(docs) + 1, the same mix
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            op = event["args"]["op_name"]
            if "MatMul" in op or op == "Gemm":  # the export names nodes by module: /layers.N/attn/Wqkv/MatMul
                op += " (weights)" if re.search(r"/(Wqkv|Wo|Wi|dense|head)/", event["name"]) else " (attention)"
            by_op[op] += event["dur"] * len(docs) / (len(docs) + 1)
    by_class: collections.Counter[str] = collections.Counter()
    for op, us in by_op.items():
        by_class[classify(op)] += us
    return seconds, by_op, by_class


def openvino_profile(model: Path, docs: list[str], threads: int, precision: str | None
                     ) -> tuple[float, collections.Counter[str], collections.Counter[str]]:
    """Seconds for the documents and per-(node type, kernel) / per-class real time (µs) from OpenVINO's counters."""
    import time

    import openvino

    tokenize = exported_tokenizer(str(model))
    config: dict[str, object] = {"INFERENCE_NUM_THREADS": threads, "PERF_COUNT": True}
    if precision:
        config["INFERENCE_PRECISION_HINT"] = precision
    request = openvino.Core().compile_model(str(model), "CPU", config).create_infer_request()
    ids, mask = tokenize(docs[:1])
    request.infer({"input_ids": ids, "attention_mask": mask})
    by_op: collections.Counter[str] = collections.Counter()
    seconds = 0.0
    for doc in docs:
        ids, mask = tokenize([doc])
        started = time.perf_counter()
        request.infer({"input_ids": ids, "attention_mask": mask})
        seconds += time.perf_counter() - started
        for info in request.get_profiling_info():
            if info.status == info.Status.EXECUTED:
                by_op[f"{info.node_type} / {info.exec_type}"] += info.real_time.total_seconds() * 1e6
    by_class: collections.Counter[str] = collections.Counter()
    for op, us in by_op.items():
        by_class[classify(op)] += us
    return seconds, by_op, by_class


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="the checkpoint (its tokenizer cuts the documents)")
    parser.add_argument("folder", type=Path, help="bench_embed's --gguf-dir, holding the ONNX and OpenVINO exports")
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--docs", type=int, default=8)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--top", type=int, default=8)
    args = parser.parse_args()
    docs = make_documents(args.checkpoint, args.tokens, args.docs)
    name = args.checkpoint.name
    runs: list[tuple[str, Callable[[], tuple[float, collections.Counter[str], collections.Counter[str]]]]] = [
        ("onnxruntime-fp32", lambda: onnx_profile(args.folder / f"{name}-fp32.onnx", docs, args.threads)),
        ("onnxruntime-int8", lambda: onnx_profile(args.folder / f"{name}-int8.onnx", docs, args.threads)),
        ("openvino-default", lambda: openvino_profile(args.folder / f"{name}-openvino.xml", docs, args.threads, None)),
        ("openvino-f32", lambda: openvino_profile(args.folder / f"{name}-openvino.xml", docs, args.threads, "f32")),
        ("openvino-int8", lambda: openvino_profile(args.folder / f"{name}-openvino-int8.xml", docs, args.threads, None)),
    ]
    for label, run in runs:
        seconds, by_op, by_class = run()
        total = sum(by_class.values()) or 1.0
        print(f"\n{label}: {len(docs)} documents of {args.tokens} tokens in {seconds:.2f} s = {len(docs) / seconds:.3g} docs/s "
              f"({args.threads} threads); node time {total / 1e6:.2f} s")
        for cls, us in by_class.most_common():
            print(f"  {100 * us / total:5.1f}%  {cls}  ({us / 1e3 / len(docs):.1f} ms/doc)")
        print("  top nodes:")
        for op, us in by_op.most_common(args.top):
            print(f"    {100 * us / total:5.1f}%  {op}")


if __name__ == "__main__":
    main()
