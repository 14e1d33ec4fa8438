"""The `modern-bert` architecture unit: the metadata it writes, the tensors it emits, the name table.

Adding an architecture means adding a unit like this one; nothing else in convert/ knows about
ModernBERT. Facts and key names: shared/DESIGN.md §3–4 and llama.cpp's src/models/modern-bert.cpp.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
from gguf import GGUFWriter, PoolingType

from granite_gguf.convert import keys
from granite_gguf.convert.source import Checkpoint
from granite_gguf.errors import UserError

log = logging.getLogger(__name__)

SUPPORTED_ARCHITECTURES = ("ModernBertModel", "ModernBertForMaskedLM")
ACTIVATIONS = {"gelu": "GeGLU", "silu": "SwiGLU"}
DEFAULT_NORM_EPS = 1e-5  # transformers' ModernBertConfig default

# Matryoshka dimensions of the published Granite R2 models, by repository name (largest first).
KNOWN_MATRYOSHKA_DIMS: dict[str, tuple[int, ...]] = {
    "granite-embedding-311m-multilingual-r2": (768, 512, 384, 256, 128),
}

# HF tensor name (after dropping a "model." prefix) → GGUF tensor name.
NAME_TABLE: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^embeddings\.tok_embeddings\.weight$"), "token_embd.weight"),
    (re.compile(r"^embeddings\.norm\.weight$"), "token_embd_norm.weight"),
    (re.compile(r"^layers\.(\d+)\.attn_norm\.weight$"), "blk.{}.attn_norm.weight"),
    (re.compile(r"^layers\.(\d+)\.attn\.Wqkv\.weight$"), "blk.{}.attn_qkv.weight"),
    (re.compile(r"^layers\.(\d+)\.attn\.Wo\.weight$"), "blk.{}.attn_output.weight"),
    (re.compile(r"^layers\.(\d+)\.mlp_norm\.weight$"), "blk.{}.ffn_norm.weight"),
    (re.compile(r"^layers\.(\d+)\.mlp\.Wi\.weight$"), "blk.{}.ffn_up.weight"),
    (re.compile(r"^layers\.(\d+)\.mlp\.Wo\.weight$"), "blk.{}.ffn_down.weight"),
    (re.compile(r"^final_norm\.weight$"), "output_norm.weight"),
]
# Upper bounds on config.json integers, far above any ModernBERT, so a hostile config cannot make the
# converter loop or allocate without end (docs/security.md).
CONFIG_LIMITS = {"num_hidden_layers": 1_024, "vocab_size": 1 << 20, "max_position_embeddings": 1 << 20}
DEFAULT_CONFIG_LIMIT = 1 << 16
IGNORED_PREFIXES = ("head.", "decoder.")  # the masked-LM head is not part of the encoder


@dataclass(frozen=True)
class ModernBertSpec:
    """The hyper-parameters llama.cpp needs, read from config.json and the sentence-transformers modules."""

    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int  # per GLU half
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
    def from_checkpoint(cls, ckpt: Checkpoint, matryoshka_dims: tuple[int, ...] | None = None) -> ModernBertSpec:
        try:
            return cls._from_checkpoint(ckpt, matryoshka_dims)
        except (TypeError, AttributeError, KeyError, IndexError, ValueError) as exc:  # a value of the wrong JSON type
            raise UserError(f"config.json: unexpected structure ({type(exc).__name__}: {exc})") from None

    @classmethod
    def _from_checkpoint(cls, ckpt: Checkpoint, matryoshka_dims: tuple[int, ...] | None) -> ModernBertSpec:
        config = ckpt.config
        architectures = config.get("architectures") or []
        if config.get("model_type") != "modernbert" or not any(a in SUPPORTED_ARCHITECTURES for a in architectures):
            named = ", ".join(architectures) or config.get("model_type") or "unknown"
            raise UserError(f"config.json: unsupported architecture {named}; only ModernBERT encoders ({', '.join(SUPPORTED_ARCHITECTURES)}) convert")
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
        if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not 0 < eps < 1:
            raise UserError(f"config.json: norm_eps {eps!r} is not a small positive number")
        pooling, normalize = _pooling(ckpt)
        dims = matryoshka_dims if matryoshka_dims is not None else _known_matryoshka(ckpt)
        dims = tuple(sorted(set(dims), reverse=True))
        if dims and (dims[0] > hidden or dims[-1] <= 0):
            raise UserError(f"Matryoshka dimensions {list(dims)} must lie in 1..{hidden}")
        return cls(
            hidden_size=hidden,
            num_layers=num_layers,
            num_heads=heads,
            intermediate_size=_int(config, "intermediate_size"),
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
        return tensor_shapes(self.hidden_size, self.intermediate_size, self.num_layers, self.vocab_size)

    def parameter_count(self) -> int:
        return sum(int(np.prod(shape)) for shape in self.expected_shapes().values())

    def write_metadata(self, writer: GGUFWriter) -> None:
        """The `modern-bert.*` keys llama.cpp reads, plus the project's own."""
        writer.add_context_length(self.context_length)
        writer.add_embedding_length(self.hidden_size)
        writer.add_block_count(self.num_layers)
        writer.add_feed_forward_length(self.intermediate_size)
        writer.add_head_count(self.num_heads)
        writer.add_layer_norm_eps(self.norm_eps)
        writer.add_causal_attention(False)
        writer.add_rope_freq_base(self.rope_global)
        writer.add_rope_freq_base_swa(self.rope_local)
        writer.add_sliding_window(self.sliding_window)
        writer.add_sliding_window_pattern(self.global_every)
        writer.add_pooling_type(self.pooling)
        writer.add_string(keys.HIDDEN_ACTIVATION.format(arch=keys.ARCH), self.activation)
        writer.add_vocab_size(self.vocab_size)
        writer.add_bool(keys.NORMALIZE, self.normalize)
        if self.matryoshka_dims:
            writer.add_array(keys.MATRYOSHKA_DIMS, [int(d) for d in self.matryoshka_dims])


def tensor_shapes(hidden: int, intermediate: int, num_layers: int, vocab_size: int) -> dict[str, tuple[int, ...]]:
    """Every tensor of a modern-bert file, numpy order (rows, cols); a GGUF lists the dims reversed.

    Layer 0 has no attn_norm (the embedding norm precedes it), as in the Granite R2 checkpoints.
    """
    h, ff = hidden, intermediate
    shapes: dict[str, tuple[int, ...]] = {
        "token_embd.weight": (vocab_size, h),
        "token_embd_norm.weight": (h,),
        "output_norm.weight": (h,),
    }
    for i in range(num_layers):
        if i != 0:
            shapes[f"blk.{i}.attn_norm.weight"] = (h,)
        shapes[f"blk.{i}.attn_qkv.weight"] = (3 * h, h)
        shapes[f"blk.{i}.attn_output.weight"] = (h, h)
        shapes[f"blk.{i}.ffn_norm.weight"] = (h,)
        shapes[f"blk.{i}.ffn_up.weight"] = (2 * ff, h)
        shapes[f"blk.{i}.ffn_down.weight"] = (h, ff)
    return shapes


def map_tensor_names(ckpt: Checkpoint, spec: ModernBertSpec) -> dict[str, str]:
    """GGUF name → HF name for every tensor the file will hold; refuse anything unknown or missing."""
    mapping: dict[str, str] = {}
    for hf_name in sorted(ckpt.tensors):
        name = hf_name.removeprefix("model.")
        if name.startswith(IGNORED_PREFIXES):
            continue
        if name.endswith(".bias"):
            raise UserError(f"{hf_name}: bias tensors are unsupported (llama.cpp's modern-bert has no biases)")
        gguf_name = _gguf_name(name)
        if gguf_name is None:
            raise UserError(f"{hf_name}: unsupported tensor for a ModernBERT encoder")
        mapping[gguf_name] = hf_name
    expected = spec.expected_shapes()
    missing = [name for name in expected if name not in mapping]
    if missing:
        raise UserError(f"checkpoint is missing {len(missing)} tensors that config.json implies, e.g. {missing[0]} (GGUF name)")
    extra = [name for name in mapping if name not in expected]
    if extra:
        raise UserError(f"{mapping[extra[0]]}: unexpected tensor for a {spec.num_layers}-layer model")
    for gguf_name, hf_name in mapping.items():
        shape = ckpt.tensors[hf_name].shape
        if shape != expected[gguf_name]:
            raise UserError(f"{hf_name}: shape {list(shape)} does not match config.json (expected {list(expected[gguf_name])})")
    return {name: mapping[name] for name in expected}


def _gguf_name(hf_name: str) -> str | None:
    for pattern, template in NAME_TABLE:
        match = pattern.match(hf_name)
        if match:
            return template.format(*match.groups())
    return None


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
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            raise UserError(f"config.json: {kind} RoPE base {value!r} is not a positive number")
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


def _known_matryoshka(ckpt: Checkpoint) -> tuple[int, ...]:
    names = {ckpt.source.rstrip("/").rsplit("/", 1)[-1], str(ckpt.config.get("_name_or_path", "")).rsplit("/", 1)[-1]}
    for name in names:
        if name in KNOWN_MATRYOSHKA_DIMS:
            return KNOWN_MATRYOSHKA_DIMS[name]
    return ()
