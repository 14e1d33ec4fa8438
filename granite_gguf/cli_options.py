"""Options that several commands declare, each defined once: granite_gguf.cli, bindings.cli and modelfiles.cli use them.

With the three cli modules, the only modules that import argparse (tests/test_layers.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_models_dir(command: argparse.ArgumentParser) -> None:
    command.add_argument("--models-dir", type=Path, help="the ollama store (default: $OLLAMA_MODELS or ~/.ollama/models)")


def add_no_progress(command: argparse.ArgumentParser) -> None:
    command.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_insecure(command: argparse.ArgumentParser) -> None:
    command.add_argument("--insecure", action="store_true", help="talk to the registry over plain http instead of https")


def add_dim(command: argparse.ArgumentParser) -> None:
    command.add_argument("--dim", type=int, help="Matryoshka dimension (one the GGUF declares)")


def add_gpu_layers(command: argparse.ArgumentParser) -> None:
    command.add_argument("--gpu-layers", type=int, default=0, metavar="N",
                         help="layers to offload to the GPU (-1: all; default 0, CPU only); needs a llama-cpp-python "
                              "built for the GPU (scripts/install.sh with CMAKE_ARGS, docs/serving.md)")
