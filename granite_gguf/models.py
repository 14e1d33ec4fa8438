"""The published Granite Embedding R2 models: one record each, the only place their names and facts are written.

Release (the recommended types), the shipped Modelfiles (context lengths), the converter (Matryoshka
dimensions of a checkpoint it recognises by name), the tiny fixtures and the full-size builder (shapes,
tokenizer families) all read these records. Sources: the models' config.json and model cards
(docs/architecture.md, "The models").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from granite_gguf.convert.architecture import Dimensions
from granite_gguf.convert.tokenizer import GEMMA3, GPT2, O200K, TokenizerFamily
from granite_gguf.convert.types import OutType

HUB_ORG = "ibm-granite"
# What every model is released as, and any other checkpoint too; the shipped Modelfiles are for these types.
DEFAULT_SET = (OutType.F16, OutType.Q8_0)
# The recipes on the multilingual models' Pareto front of (size, docs/s, cosine mean) in docs/quality.md
# (full311m, full97m: seeded-noise weights of the real shapes). The English models have no measured table yet.
RECIPES_ON_FRONT = (OutType.Q8_0_EMB_Q4_K, OutType.Q6_K_EMB_Q4_K, OutType.Q4_0_EMB_Q4_0)


@dataclass(frozen=True)
class Shape:
    """A model's sizes, as its config.json gives them."""

    dims: Dimensions
    activation: str  # config.json hidden_activation: "gelu" (GeGLU) or "silu" (SwiGLU)
    vocab: int  # config.json vocab_size


@dataclass(frozen=True)
class Model:
    """One published model."""

    name: str  # the hub repository name
    short: str  # what benchmarks and the full-size builder call it
    context_length: int
    matryoshka_dims: tuple[int, ...]  # largest first; () when the model was not trained for truncation
    family: TokenizerFamily
    shape: Shape
    normalize: bool  # sentence-transformers ends with Normalize
    recommended: tuple[OutType, ...]  # what `granite-gguf release` makes by default

    @property
    def hub_id(self) -> str:
        return f"{HUB_ORG}/{self.name}"


MULTILINGUAL_311M = Model(
    "granite-embedding-311m-multilingual-r2", "311m", context_length=32768, matryoshka_dims=(768, 512, 384, 256, 128),
    family=GEMMA3, shape=Shape(Dimensions(hidden=768, intermediate=1152, layers=22, heads=12), "gelu", 262_144),
    normalize=True, recommended=DEFAULT_SET + RECIPES_ON_FRONT)
MULTILINGUAL_97M = Model(
    "granite-embedding-97m-multilingual-r2", "97m", context_length=32768, matryoshka_dims=(),
    family=O200K, shape=Shape(Dimensions(hidden=384, intermediate=1536, layers=12, heads=12), "silu", 180_000),
    # iq4_nl: the 97m's recommended CPU file (blocks llama.cpp repacks; docs/performance.md)
    normalize=True, recommended=DEFAULT_SET + (OutType.IQ4_NL,) + RECIPES_ON_FRONT)
ENGLISH = Model(
    "granite-embedding-english-r2", "english", context_length=8192, matryoshka_dims=(),
    family=GPT2, shape=Shape(Dimensions(hidden=768, intermediate=1152, layers=22, heads=12), "gelu", 50368),
    normalize=False, recommended=DEFAULT_SET)
SMALL_ENGLISH = Model(
    "granite-embedding-small-english-r2", "small-english", context_length=8192, matryoshka_dims=(),
    family=GPT2, shape=Shape(Dimensions(hidden=384, intermediate=1536, layers=12, heads=12), "gelu", 50368),
    normalize=False, recommended=DEFAULT_SET)
MODELS = (MULTILINGUAL_311M, MULTILINGUAL_97M, ENGLISH, SMALL_ENGLISH)


def by_name(name: str) -> Model | None:
    """The model whose hub repository name is `name`."""
    return next((model for model in MODELS if model.name == name), None)


def recognise(source: str, config: Mapping[str, Any]) -> Model | None:
    """The published model a checkpoint is, by its folder or repository name or its config's `_name_or_path`."""
    names = (source.rstrip("/").rsplit("/", 1)[-1], str(config.get("_name_or_path", "")).rstrip("/").rsplit("/", 1)[-1])
    return next((model for model in MODELS if model.name in names), None)
