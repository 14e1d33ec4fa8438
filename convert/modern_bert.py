"""The `modern-bert` architecture unit: the metadata it writes, the tensors it emits, their names and shapes.

In the manner of ollama's convert/ `ModelConverter` (KV, Tensors, Replacements): everything convert/,
the checker, the fixtures and the full-size builder know about ModernBERT is here, in `MODERN_BERT`.
Tensor and key names come from gguf-py (`get_tensor_name_map`, `Keys`, `MODEL_ARCH_NAMES`); another
encoder would be one more module like this one, listed in `architecture.registered`. Facts:
docs/architecture.md and llama.cpp's src/models/modern-bert.cpp.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from gguf import (
    MODEL_ARCH,
    MODEL_ARCH_NAMES,
    MODEL_TENSOR,
    TENSOR_NAMES,
    GGUFWriter,
    Keys,
    PoolingType,
    TensorNameMap,
    get_tensor_name_map,
)

from granite_gguf.convert import keys
from granite_gguf.convert.architecture import Architecture, Dimensions, KeyKind, KeyRule
from granite_gguf.convert.source import Checkpoint
from granite_gguf.convert.tokenizer import bpe_vocab
from granite_gguf.errors import UserError

log = logging.getLogger(__name__)

ARCH = MODEL_ARCH.MODERN_BERT
NAME = MODEL_ARCH_NAMES[ARCH]  # "modern-bert": general.architecture and the key prefix
SUPPORTED_ARCHITECTURES = ("ModernBertModel", "ModernBertForMaskedLM")
ACTIVATIONS = {"gelu": "GeGLU", "silu": "SwiGLU"}
DEFAULT_NORM_EPS = 1e-5  # transformers' ModernBertConfig default

# Upper bounds on config.json integers, far above any ModernBERT, so a hostile config cannot make the
# converter loop or allocate without end (docs/security.md).
CONFIG_LIMITS = {"num_hidden_layers": 1_024, "vocab_size": 1 << 20, "max_position_embeddings": 1 << 20}
DEFAULT_CONFIG_LIMIT = 1 << 16
IGNORED_PREFIXES = ("head.", "decoder.")  # the masked-LM head is not part of the encoder


@dataclass(frozen=True)
class TensorSlot:
    """One tensor of the layout: its gguf-py type, its name in a ModernBertModel state dict, its shape."""

    tensor: MODEL_TENSOR
    hf_name: str  # "{bid}" stands for the layer index; the converter reads names through gguf-py's map
    shape: Callable[[Dimensions, int], tuple[int, ...]]  # numpy (rows, cols) from (dims, vocab size)
    from_layer: int = 0  # layer 0 has no attn_norm (the embedding norm precedes it), as in Granite R2

    @property
    def per_layer(self) -> bool:
        return "{bid}" in self.hf_name


# The tensor plan in state-dict order; numpy shapes (a GGUF lists the dims reversed).
TENSOR_PLAN = (
    TensorSlot(MODEL_TENSOR.TOKEN_EMBD, "embeddings.tok_embeddings.weight", lambda d, vocab: (vocab, d.hidden)),
    TensorSlot(MODEL_TENSOR.TOKEN_EMBD_NORM, "embeddings.norm.weight", lambda d, _: (d.hidden,)),
    TensorSlot(MODEL_TENSOR.ATTN_NORM, "layers.{bid}.attn_norm.weight", lambda d, _: (d.hidden,), from_layer=1),
    TensorSlot(MODEL_TENSOR.ATTN_QKV, "layers.{bid}.attn.Wqkv.weight", lambda d, _: (3 * d.hidden, d.hidden)),
    TensorSlot(MODEL_TENSOR.ATTN_OUT, "layers.{bid}.attn.Wo.weight", lambda d, _: (d.hidden, d.hidden)),
    TensorSlot(MODEL_TENSOR.FFN_NORM, "layers.{bid}.mlp_norm.weight", lambda d, _: (d.hidden,)),
    TensorSlot(MODEL_TENSOR.FFN_UP, "layers.{bid}.mlp.Wi.weight", lambda d, _: (2 * d.intermediate, d.hidden)),
    TensorSlot(MODEL_TENSOR.FFN_DOWN, "layers.{bid}.mlp.Wo.weight", lambda d, _: (d.hidden, d.intermediate)),
    TensorSlot(MODEL_TENSOR.OUTPUT_NORM, "final_norm.weight", lambda d, _: (d.hidden,)),
)


@dataclass(frozen=True)
class PlacedTensor:
    """One tensor of a model of given dimensions: both names, its gguf-py type and its numpy shape."""

    tensor: MODEL_TENSOR
    hf_name: str
    gguf_name: str
    shape: tuple[int, ...]


def layout(dims: Dimensions, vocab_size: int) -> list[PlacedTensor]:
    """Every tensor of a model, in state-dict order (embeddings, layer by layer, final norm)."""
    layer_slots = [slot for slot in TENSOR_PLAN if slot.per_layer]
    first = TENSOR_PLAN.index(layer_slots[0])
    before, after = TENSOR_PLAN[:first], TENSOR_PLAN[first + len(layer_slots):]

    def placed(slot: TensorSlot, bid: int | None) -> PlacedTensor:
        gguf_name = TENSOR_NAMES[slot.tensor].format(bid=bid) + ".weight"
        return PlacedTensor(slot.tensor, slot.hf_name.format(bid=bid), gguf_name, slot.shape(dims, vocab_size))

    def in_order() -> Iterator[PlacedTensor]:
        yield from (placed(slot, None) for slot in before)
        for bid in range(dims.layers):
            yield from (placed(slot, bid) for slot in layer_slots if bid >= slot.from_layer)
        yield from (placed(slot, None) for slot in after)

    return list(in_order())


def tensor_shapes(dims: Dimensions, vocab_size: int) -> dict[str, tuple[int, ...]]:
    """GGUF tensor name → numpy shape, in file order: the whole-model tensors, then layer by layer."""
    tensors = sorted(layout(dims, vocab_size), key=lambda t: "{bid}" in TENSOR_NAMES[t.tensor])  # stable
    return {t.gguf_name: t.shape for t in tensors}


# The keys llama.cpp's loader requires and what each holds ("size": a positive integer below 2**24).
DIMENSION_KEYS = {
    "hidden": Keys.LLM.EMBEDDING_LENGTH.format(arch=NAME),
    "intermediate": Keys.LLM.FEED_FORWARD_LENGTH.format(arch=NAME),
    "layers": Keys.LLM.BLOCK_COUNT.format(arch=NAME),
    "heads": Keys.Attention.HEAD_COUNT.format(arch=NAME),
}
REQUIRED_KEYS: Mapping[str, KeyKind] = {
    Keys.LLM.CONTEXT_LENGTH.format(arch=NAME): "size",
    **dict.fromkeys(DIMENSION_KEYS.values(), "size"),
    Keys.Attention.LAYERNORM_EPS.format(arch=NAME): "float",
    Keys.LLM.POOLING_TYPE.format(arch=NAME): "int",
}


LLAMA_MAX_LAYERS = 512  # llama.cpp src/llama-hparams.h; more layers: GGML_ASSERT(n_layer_all <= LLAMA_MAX_LAYERS)
LLAMA_POOLING = {0: "NONE", 1: "MEAN", 2: "CLS", 3: "LAST"}  # RANK (4) aborts without a classifier head
ROPE_SCALING = ("none", "linear")  # llama.cpp asserts on unknown names; yarn and longrope read keys not audited here
LLAMA_ACTIVATIONS = ("gelu", "geglu", "silu", "swish", "swiglu", "relu", "reglu")  # llm_ffn_op_type_from_string


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _positive(value: Any) -> bool:
    return _finite(value) and value > 0


def _small_positive(value: Any) -> bool:
    """A layer-norm epsilon: llama.cpp's norm kernels GGML_ASSERT(eps >= 0), which NaN fails too."""
    return _positive(value) and value < 1


def _head_size(metadata: Mapping[str, Any]) -> int:
    return int(metadata[DIMENSION_KEYS["hidden"]]) // int(metadata[DIMENSION_KEYS["heads"]])


def _key(suffix: str) -> str:
    return f"{NAME}.{suffix}"


# Every `modern-bert.*` key llama.cpp 0.3.36 reads (src/llama-model.cpp load_hparams, src/models/modern-bert.cpp,
# the graph it builds), with the values it survives; docs/security.md lists them. Checked after the required keys and
# `embedding_length % head_count`, so a rule may use the dimensions.
KEY_RULES: Mapping[str, KeyRule] = {
    _key("attention.layer_norm_epsilon"): KeyRule(
        "float", lambda v, _: _small_positive(v), "a finite epsilon in (0, 1): the norm kernels assert eps >= 0"),
    _key("block_count"): KeyRule(
        "size", lambda v, _: v <= LLAMA_MAX_LAYERS, f"at most {LLAMA_MAX_LAYERS} layers (GGML_ASSERT in the loader)"),
    _key("attention.head_count"): KeyRule(
        "size", lambda _, m: _head_size(m) % 2 == 0, "an even head size embedding_length / head_count (RoPE rotates "
        "pairs: GGML_ASSERT(n_dims % 2 == 0))"),
    _key("pooling_type"): KeyRule(
        "int", lambda v, _: v in LLAMA_POOLING, f"one of {LLAMA_POOLING} (others abort the graph build)"),
    _key("classifier.pooling_type"): KeyRule("int", lambda v, _: v in LLAMA_POOLING, f"one of {LLAMA_POOLING}"),
    _key("rope.freq_base"): KeyRule("float", lambda v, _: _positive(v), "a finite positive RoPE base"),
    _key("rope.freq_base_swa"): KeyRule("float", lambda v, _: _positive(v), "a finite positive RoPE base"),
    _key("rope.scaling.type"): KeyRule(
        "string", lambda v, _: v in ROPE_SCALING, f"one of {', '.join(ROPE_SCALING)} (unknown names abort the loader)"),
    _key("rope.scaling.factor"): KeyRule(
        "float", lambda v, _: _finite(v) and v >= 0, "a finite factor >= 0 (0: none)"),
    _key("rope.scale_linear"): KeyRule(
        "float", lambda v, _: _finite(v) and v >= 0, "a finite factor >= 0 (0: none)"),
    _key("rope.scaling.attn_factor"): KeyRule("float", lambda v, _: _positive(v), "a finite positive factor"),
    _key("rope.scaling.alpha"): KeyRule("float", lambda v, _: _finite(v) and v >= 0, "a finite value >= 0"),
    _key("rope.scaling.original_context_length"): KeyRule("size", lambda v, _: True, "a positive length"),
    _key("rope.scaling.finetuned"): KeyRule("bool", lambda v, _: True, "a boolean"),
    _key("attention.sliding_window"): KeyRule("size", lambda v, _: True, "a window of at least 1"),
    _key("attention.sliding_window_pattern"): KeyRule("size", lambda v, _: True, "a period of at least 1 layer"),
    _key("attention.causal"): KeyRule("bool", lambda v, _: True, "a boolean"),
    _key("attention.head_count_kv"): KeyRule(
        "int", lambda v, m: v == m[DIMENSION_KEYS["heads"]], "head_count (the fused QKV tensor has no grouped KV heads)"),
    **{_key(suffix): KeyRule("int", lambda v, m: v == _head_size(m),
                             "embedding_length / head_count (modern-bert asserts one head size for K and V)")
       for suffix in ("attention.key_length", "attention.value_length", "attention.key_length_swa",
                      "attention.value_length_swa")},
    **{_key(suffix): KeyRule("int", lambda v, m: 0 < v <= _head_size(m) and v % 2 == 0,
                             "an even count up to the head size (GGML_ASSERT in RoPE)")
       for suffix in ("rope.dimension_count", "rope.dimension_count_swa")},
    _key("embedding_length_out"): KeyRule(
        "int", lambda v, m: v == m[DIMENSION_KEYS["hidden"]], "embedding_length (the vector is the hidden state)"),
    **{_key(suffix): KeyRule("int", lambda v, _: v == 0, "0: modern-bert has no experts or extra prediction layers "
                             "(nonzero counts meet GGML_ASSERTs in the loader)")
       for suffix in ("expert_count", "expert_used_count", "expert_group_count", "expert_group_used_count",
                      "nextn_predict_layers")},
    keys.HIDDEN_ACTIVATION.format(arch=NAME): KeyRule(
        "string", lambda v, _: v in LLAMA_ACTIVATIONS, f"one of {', '.join(LLAMA_ACTIVATIONS)} (others silently run "
        "GeGLU)"),
}


def dimensions_from_metadata(metadata: Mapping[str, Any]) -> Dimensions:
    """The dimensions a GGUF's (already type-checked) metadata declares."""
    return Dimensions(**{field: metadata[key] for field, key in DIMENSION_KEYS.items()})


@dataclass(frozen=True)
class ModernBertSpec:
    """The hyper-parameters llama.cpp needs, read from config.json and the sentence-transformers modules."""

    dims: Dimensions
    context_length: int
    vocab_size: int
    norm_eps: float
    rope_global: float
    rope_local: float
    sliding_window: int  # full width: |i - j| <= sliding_window / 2
    global_every: int  # layer i is global when i % global_every == 0
    activation: str  # "gelu" (GeGLU) or "silu" (SwiGLU)
    pooling: PoolingType
    normalize: bool
    matryoshka_dims: tuple[int, ...]

    @classmethod
    def from_checkpoint(cls, ckpt: Checkpoint, matryoshka_dims: tuple[int, ...] = ()) -> ModernBertSpec:
        """The spec of `ckpt`, declaring the Matryoshka dimensions the caller names (the unit knows no model)."""
        try:
            return cls._from_checkpoint(ckpt, matryoshka_dims)
        except UserError:  # a ValueError too, but already says what is wrong
            raise
        except (TypeError, AttributeError, KeyError, IndexError, ValueError) as exc:  # a value of the wrong JSON type
            raise UserError(f"config.json: unexpected structure ({type(exc).__name__}: {exc})") from None

    @classmethod
    def _from_checkpoint(cls, ckpt: Checkpoint, matryoshka_dims: tuple[int, ...]) -> ModernBertSpec:
        config = ckpt.config
        for flag in ("attention_bias", "mlp_bias", "norm_bias"):
            if config.get(flag):
                raise UserError(f"config.json: {flag}=true is unsupported (llama.cpp's modern-bert has no biases)")
        activation = config.get("hidden_activation", config.get("hidden_act"))
        if activation not in ACTIVATIONS:
            raise UserError(f"config.json: unsupported hidden_activation {activation!r}; expected one of {', '.join(ACTIVATIONS)}")
        num_layers = _int(config, "num_hidden_layers")
        rope_global, rope_local = _rope_bases(config)
        hidden = _int(config, "hidden_size")
        heads = _int(config, "num_attention_heads")
        if hidden % heads:
            raise UserError(f"config.json: hidden_size {hidden} is not a multiple of num_attention_heads {heads}")
        eps = config.get("norm_eps", config.get("layer_norm_eps"))
        if eps is None:
            log.warning("config.json has no norm_eps; using transformers' ModernBERT default %g", DEFAULT_NORM_EPS)
            eps = DEFAULT_NORM_EPS
        if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not _small_positive(eps):
            raise UserError(f"config.json: norm_eps {eps!r} is not a small positive number")
        pooling, normalize = _pooling(ckpt)
        dims = tuple(sorted(set(matryoshka_dims), reverse=True))
        if dims and (dims[0] > hidden or dims[-1] <= 0):
            raise UserError(f"Matryoshka dimensions {list(dims)} must lie in 1..{hidden}")
        return cls(
            dims=Dimensions(hidden=hidden, intermediate=_int(config, "intermediate_size"), layers=num_layers, heads=heads),
            context_length=_int(config, "max_position_embeddings"),
            vocab_size=_int(config, "vocab_size"),
            norm_eps=float(eps),
            rope_global=rope_global,
            rope_local=rope_local,
            sliding_window=_int(config, "local_attention"),
            global_every=_global_every(config, num_layers),
            activation=activation,
            pooling=pooling,
            normalize=normalize,
            matryoshka_dims=dims,
        )

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """GGUF tensor name → numpy shape (rows, cols) as stored in the HF checkpoint."""
        return tensor_shapes(self.dims, self.vocab_size)

    def parameter_count(self) -> int:
        return sum(int(np.prod(shape)) for shape in self.expected_shapes().values())

    def write_metadata(self, writer: GGUFWriter) -> None:
        """The `modern-bert.*` keys llama.cpp reads, plus the project's own."""
        writer.add_context_length(self.context_length)
        writer.add_embedding_length(self.dims.hidden)
        writer.add_block_count(self.dims.layers)
        writer.add_feed_forward_length(self.dims.intermediate)
        writer.add_head_count(self.dims.heads)
        writer.add_layer_norm_eps(self.norm_eps)
        writer.add_causal_attention(False)
        writer.add_rope_freq_base(self.rope_global)
        writer.add_rope_freq_base_swa(self.rope_local)
        writer.add_sliding_window(self.sliding_window)
        writer.add_sliding_window_pattern(self.global_every)
        writer.add_pooling_type(self.pooling)
        writer.add_string(keys.HIDDEN_ACTIVATION.format(arch=NAME), self.activation)
        writer.add_vocab_size(self.vocab_size)
        writer.add_bool(keys.NORMALIZE, self.normalize)
        if self.matryoshka_dims:
            writer.add_array(keys.MATRYOSHKA_DIMS, [int(d) for d in self.matryoshka_dims])

    def map_tensors(self, ckpt: Checkpoint) -> dict[str, str]:
        """GGUF name → HF name for every tensor the file will hold, in file order; refuse anything unknown or missing."""
        name_map = _name_map(self.dims.layers)
        mapping: dict[str, str] = {}
        for hf_name in sorted(ckpt.tensors):
            name = hf_name.removeprefix("model.")
            if name.startswith(IGNORED_PREFIXES):
                continue
            if name.endswith(".bias"):
                raise UserError(f"{hf_name}: bias tensors are unsupported (llama.cpp's modern-bert has no biases)")
            gguf_name = name_map.get_name(name, try_suffixes=(".weight",))
            if gguf_name is None:
                raise UserError(f"{hf_name}: unsupported tensor for a {self.dims.layers}-layer ModernBERT encoder")
            if gguf_name in mapping:
                raise UserError(f"{hf_name} and {mapping[gguf_name]} are both {gguf_name}")
            mapping[gguf_name] = hf_name
        expected = self.expected_shapes()
        missing = [name for name in expected if name not in mapping]
        if missing:
            raise UserError(f"checkpoint is missing {len(missing)} tensors that config.json implies, e.g. {missing[0]} (GGUF name)")
        extra = [name for name in mapping if name not in expected]
        if extra:
            raise UserError(f"{mapping[extra[0]]}: unexpected tensor for a {self.dims.layers}-layer model")
        for gguf_name, hf_name in mapping.items():
            shape = ckpt.tensors[hf_name].shape
            if shape != expected[gguf_name]:
                raise UserError(f"{hf_name}: shape {list(shape)} does not match config.json (expected {list(expected[gguf_name])})")
        return {name: mapping[name] for name in expected}


@functools.lru_cache(maxsize=4)
def _name_map(num_layers: int) -> TensorNameMap:
    """gguf-py's HF → GGUF names for modern-bert (building one takes a fifth of a second)."""
    return get_tensor_name_map(ARCH, num_layers)


def _int(config: dict[str, Any], key: str) -> int:
    value = config.get(key)
    if value is None:
        raise UserError(f"config.json: missing key {key!r}")
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise UserError(f"config.json: {key} must be a positive integer, got {value!r}")
    limit = CONFIG_LIMITS.get(key, DEFAULT_CONFIG_LIMIT)
    if value > limit:
        raise UserError(f"config.json: {key} = {value} exceeds the limit {limit}")
    return value


def _rope_bases(config: dict[str, Any]) -> tuple[float, float]:
    """(global, local) RoPE bases from transformers-5 `rope_parameters` or the legacy keys.

    A missing base is an error: transformers silently falls back to 160 000, wrong for Granite.
    """
    params = config.get("rope_parameters")
    found: dict[str, Any] = {}
    if isinstance(params, dict):
        found["global"] = (params.get("full_attention") or {}).get("rope_theta")
        found["local"] = (params.get("sliding_attention") or {}).get("rope_theta")
    found["global"] = found.get("global") or config.get("global_rope_theta")
    found["local"] = found.get("local") or config.get("local_rope_theta")
    for kind, value in found.items():
        if value is None:
            raise UserError(
                f"config.json: no {kind} RoPE base (rope_parameters.{'full' if kind == 'global' else 'sliding'}_attention.rope_theta "
                f"or {kind}_rope_theta); refusing to guess"
            )
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not _positive(value):
            raise UserError(f"config.json: {kind} RoPE base {value!r} is not a finite positive number")
    return float(found["global"]), float(found["local"])


def _global_every(config: dict[str, Any], num_layers: int) -> int:
    """The global-attention period, from `layer_types` (checked to be periodic) or the legacy key."""
    legacy = config.get("global_attn_every_n_layers")
    layer_types = config.get("layer_types")
    if layer_types is None:
        if legacy is None:
            raise UserError("config.json: neither layer_types nor global_attn_every_n_layers is present")
        return _int(config, "global_attn_every_n_layers")
    if not isinstance(layer_types, list) or len(layer_types) != num_layers:
        raise UserError(f"config.json: layer_types must list {num_layers} entries")
    unknown = set(layer_types) - {"full_attention", "sliding_attention"}
    if unknown:
        raise UserError(f"config.json: unsupported layer_types {sorted(unknown)}")
    global_layers = [i for i, kind in enumerate(layer_types) if kind == "full_attention"]
    period = global_layers[1] - global_layers[0] if len(global_layers) > 1 else num_layers
    if not global_layers or global_layers != list(range(0, num_layers, period)):
        raise UserError(f"config.json: layer_types put global attention at layers {global_layers}, not every n-th layer from 0")
    if legacy is not None and legacy != period and len(global_layers) > 1:
        raise UserError(f"config.json: layer_types (every {period}) disagree with global_attn_every_n_layers={legacy}")
    return period


def _pooling(ckpt: Checkpoint) -> tuple[PoolingType, bool]:
    """Pooling and normalization from the sentence-transformers modules (or the config without them)."""
    if ckpt.pooling is None:
        mode = ckpt.config.get("classifier_pooling", "cls")
        log.warning("no sentence-transformers Pooling module; using config.classifier_pooling=%r", mode)
        modes = {mode}
    else:
        modes = {key.removeprefix("pooling_mode_").removesuffix("_token").removesuffix("_tokens")
                 for key, value in ckpt.pooling.items() if key.startswith("pooling_mode_") and value is True}
    if modes == {"cls"}:
        return PoolingType.CLS, ckpt.has_normalize
    if modes == {"mean"}:
        return PoolingType.MEAN, ckpt.has_normalize
    raise UserError(f"unsupported pooling {sorted(modes) or 'none'}; only CLS or MEAN pooling alone converts")


MODERN_BERT = Architecture(
    arch=ARCH,
    hf_model_type="modernbert",
    hf_architectures=SUPPORTED_ARCHITECTURES,
    read_spec=ModernBertSpec.from_checkpoint,
    vocab=bpe_vocab,
    required_keys=REQUIRED_KEYS,
    key_rules=KEY_RULES,
    dimensions_from_metadata=dimensions_from_metadata,
    tensor_shapes=tensor_shapes,
)
