"""Deterministic tiny Granite-R2-shaped checkpoints, one per tokenizer family (tests and the demo).

Nothing is downloaded: tokenizers are trained offline on the CLDR display names that `babel` ships
(dozens of scripts), weights come from a seeded generator. The weights are scaled so that parity
checks are *sensitive* (docs/architecture.md, "Parity and sensitive fixtures"): attention logits are large enough that a wrong RoPE
base, window or pattern changes the CLS vector, and the embedding table is small enough in norm that
a wrong LayerNorm epsilon does too.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import MODEL_TENSOR

from granite_gguf.convert.architecture import Dimensions
from granite_gguf.convert.modern_bert import layout
from granite_gguf.convert.tokenizer import GEMMA3, GPT2, O200K, O200K_SPLIT_REGEX, SPACE_ESCAPE, TokenizerFamily
from granite_gguf.models import ENGLISH, MULTILINGUAL_97M, MULTILINGUAL_311M, Model
from granite_gguf.probe_text import cldr_sentences

FIXTURE_VERSION = 4
USER_DEFINED_TOKEN = "<|code|>"  # a non-special added token in the GPT-2-style fixture


@dataclass(frozen=True)
class FixtureShape:
    """Everything that differs between the fixtures: the Granite R2 model each mirrors (tokenizer family,
    activation, normalization, context length; not its size) and how it is built."""

    name: str
    mirrors: Model
    legacy_config: bool  # pre-transformers-5 keys (global_rope_theta, …) instead of rope_parameters
    trained_vocab: int
    seed: int

    @property
    def family(self) -> TokenizerFamily:
        return self.mirrors.family

    @property
    def activation(self) -> str:
        return self.mirrors.shape.activation

    @property
    def normalize(self) -> bool:
        return self.mirrors.normalize

    @property
    def context_length(self) -> int:
        return self.mirrors.context_length


FIXTURES: dict[str, FixtureShape] = {
    shape.name: shape
    for shape in (
        FixtureShape("tiny-gemma3", MULTILINGUAL_311M, legacy_config=False, trained_vocab=3000, seed=311),
        FixtureShape("tiny-o200k", MULTILINGUAL_97M, legacy_config=False, trained_vocab=3000, seed=97),
        FixtureShape("tiny-gpt2", ENGLISH, legacy_config=True, trained_vocab=2500, seed=149),
    )
}

TINY = Dimensions(hidden=64, intermediate=96, layers=4, heads=2)  # head dim 32, as in the 97m; global, local, local, global
LOCAL_ATTENTION = 128
GLOBAL_EVERY = 3
ROPE_GLOBAL = 80_000.0
ROPE_LOCAL = 10_000.0
NORM_EPS = 1e-5
GEMMA_ALPHABET = 600  # characters kept whole; rarer ones fall back to <0xNN> byte pieces
# Scales (standard deviations) that make the fixture sensitive; see the module docstring.
EMBEDDING_STD = 0.004
QKV_STD = 0.15
# Other matrices: 1 / sqrt(row length), which keeps activations at unit scale.
MATRIX_STD = {MODEL_TENSOR.TOKEN_EMBD: EMBEDDING_STD, MODEL_TENSOR.ATTN_QKV: QKV_STD}
NORM_WEIGHT_SPREAD = 0.2


def build_fixture(name: str, dest: Path) -> Path:
    """Write fixture `name` into `dest` (created atomically; an existing complete fixture is reused)."""
    shape = FIXTURES[name]
    stamp = {"name": name, "version": FIXTURE_VERSION}
    if is_built(dest, stamp):
        return dest
    tokenizer, specials = train_tokenizer(shape)
    n_tokens = tokenizer.get_vocab_size(with_added_tokens=True)
    vocab_size = -(-n_tokens // 64) * 64 + 64  # padded like ModernBERT's 50368, plus spare rows
    return write_checkpoint(dest, shape, tokenizer, specials, vocab_size, stamp)


def is_built(dest: Path, stamp: dict[str, Any]) -> bool:
    marker = dest / ".fixture.json"
    return marker.is_file() and json.loads(marker.read_text()) == stamp


def write_checkpoint(dest: Path, shape: FixtureShape, tokenizer: Any, specials: dict[str, str], vocab_size: int,
                     stamp: dict[str, Any]) -> Path:
    """A checkpoint of `shape` around `tokenizer` in `dest`, built beside it and renamed into place,
    with `stamp` as its marker (see `is_built`)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{shape.name}-", dir=dest.parent))
    try:
        (work / "tokenizer.json").write_text(tokenizer.to_str(pretty=True), encoding="utf-8")
        write_tokenizer_files(work, specials)
        write_config(work, shape, vocab_size, specials, tokenizer)
        write_sentence_transformers(work, shape)
        write_weights(work, shape, vocab_size)
        marker_tmp = work / ".fixture.json"
        marker_tmp.write_text(json.dumps(stamp))
        if dest.exists():
            shutil.rmtree(dest)
        work.rename(dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return dest


def train_tokenizer(shape: FixtureShape) -> tuple[Any, dict[str, str]]:
    """Train a BPE tokenizer with the structure of `shape.family` on CLDR text."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    corpus = training_corpus()
    if shape.family is GEMMA3:
        specials = {"pad": "<pad>", "eos": "<eos>", "bos": "<bos>", "unk": "<unk>", "mask": "<mask>"}
        # Train on newline-free pieces: llama.cpp splits Gemma-style text at newlines before merging.
        trainer_tok = Tokenizer(models.BPE(byte_fallback=True, unk_token=None))
        trainer_tok.normalizer = normalizers.Replace(" ", SPACE_ESCAPE)
        trainer_tok.pre_tokenizer = pre_tokenizers.Split(Regex("\n+"), "isolated")
        trainer = trainers.BpeTrainer(vocab_size=shape.trained_vocab, show_progress=False)
        trainer_tok.train_from_iterator(_keep_common_characters(corpus, GEMMA_ALPHABET), trainer)
        trained = json.loads(trainer_tok.to_str())["model"]
        byte_pieces = [f"<0x{b:02X}>" for b in range(256)]
        vocab = _renumber(list(specials.values()) + byte_pieces, trained["vocab"], [])
        tok = Tokenizer.from_str(json.dumps(_tokenizer_json(
            vocab, trained["merges"], specials,
            model_flags={"byte_fallback": True, "fuse_unk": True, "unk_token": "<unk>"},
        )))
        tok.normalizer = normalizers.Replace(" ", SPACE_ESCAPE)
        tok.pre_tokenizer = pre_tokenizers.Split(" ", "merged_with_previous")
        tok.decoder = decoders.Sequence([decoders.Replace(SPACE_ESCAPE, " "), decoders.ByteFallback(), decoders.Fuse()])
        tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", vocab["<bos>"])])
        return tok, specials
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=shape.family is GPT2)
    if shape.family is O200K:
        specials = {"bos": "<|startoftext|>", "eos": "<|endoftext|>", "pad": "<|pad|>", "mask": "<|mask|>"}
        pre: pre_tokenizers.PreTokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(O200K_SPLIT_REGEX), "isolated"), byte_level])
        model_flags: dict[str, Any] = {"ignore_merges": True}
        template = ("<|startoftext|> $A <|endoftext|>", "<|startoftext|>", "<|endoftext|>")
    else:
        specials = {"unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "pad": "[PAD]", "mask": "[MASK]"}
        pre = byte_level
        model_flags = {}
        template = ("[CLS] $A [SEP]", "[CLS]", "[SEP]")
    trainer_tok = Tokenizer(models.BPE(**model_flags))
    trainer_tok.pre_tokenizer = pre
    trainer = trainers.BpeTrainer(vocab_size=shape.trained_vocab, show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    trainer_tok.train_from_iterator(corpus, trainer)
    trained = json.loads(trainer_tok.to_str())["model"]
    vocab = _renumber([], trained["vocab"], list(specials.values()))
    tok = Tokenizer.from_str(json.dumps(_tokenizer_json(vocab, trained["merges"], specials, model_flags=model_flags)))
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    single, bos, eos = template
    tok.post_processor = processors.TemplateProcessing(single=single, special_tokens=[(bos, vocab[bos]), (eos, vocab[eos])])
    if shape.family is GPT2:
        tok.add_tokens([AddedToken(USER_DEFINED_TOKEN, normalized=False, special=False)])  # as fine-tunes do
    return tok, specials


def training_corpus() -> list[str]:
    """CLDR runs, plus the same runs as paragraphs so that newline runs are learned as merges."""
    sentences = list(cldr_sentences())
    paragraphs = ["\n\n".join(sentences[i : i + 3]) + "\n" for i in range(0, len(sentences), 3)]
    return sentences + paragraphs


def _keep_common_characters(texts: list[str], n: int) -> list[str]:
    """Drop all but the `n` most frequent characters (ties broken by code point).

    The trainer's own `limit_alphabet` breaks ties at the cut-off in hash-map order, which differs
    from process to process; choosing the alphabet here keeps the fixture deterministic.
    """
    counts = Counter(char for text in texts for char in text)
    kept = {char for char, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:n]}
    dropped = {ord(char): None for char in counts if char not in kept}
    return [text.translate(dropped) for text in texts]


def _renumber(head: list[str], trained: dict[str, int], tail: list[str]) -> dict[str, int]:
    """Final ids: `head` pieces first, the trained vocabulary in its order, `tail` pieces last."""
    ordered = head + [t for t, _ in sorted(trained.items(), key=lambda kv: kv[1]) if t not in head and t not in tail] + tail
    return {token: index for index, token in enumerate(ordered)}


def _tokenizer_json(vocab: dict[str, int], merges: list[Any], specials: dict[str, str], model_flags: dict[str, Any]) -> dict[str, Any]:
    model = {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None, "end_of_word_suffix": None,
             "fuse_unk": False, "byte_fallback": False, "ignore_merges": False, "vocab": vocab, "merges": merges}
    model.update(model_flags)
    added = [
        {"id": vocab[text], "content": text, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": True}
        for text in sorted(set(specials.values()), key=lambda t: vocab[t])
    ]
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
            "pre_tokenizer": None, "post_processor": None, "decoder": None, "model": model}


def write_tokenizer_files(folder: Path, specials: dict[str, str]) -> None:
    special_map = {f"{role}_token": text for role, text in specials.items()}
    (folder / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 1_000_000, "clean_up_tokenization_spaces": False, **special_map}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


def write_config(folder: Path, shape: FixtureShape, vocab_size: int, specials: dict[str, str], tokenizer: Any,
                 dims: Dimensions = TINY) -> None:
    ids = {role: tokenizer.token_to_id(text) for role, text in specials.items()}
    layer_types = ["full_attention" if i % GLOBAL_EVERY == 0 else "sliding_attention" for i in range(dims.layers)]
    config: dict[str, Any] = {
        "architectures": ["ModernBertModel"], "model_type": "modernbert", "_name_or_path": shape.name,
        "vocab_size": vocab_size, "hidden_size": dims.hidden, "num_hidden_layers": dims.layers,
        "num_attention_heads": dims.heads, "intermediate_size": dims.intermediate, "hidden_activation": shape.activation, "max_position_embeddings": shape.context_length,
        "norm_eps": NORM_EPS, "norm_bias": False, "attention_bias": False, "mlp_bias": False, "local_attention": LOCAL_ATTENTION,
        "classifier_pooling": "cls", "pad_token_id": ids.get("pad"), "bos_token_id": ids.get("bos", ids.get("cls")),
        "eos_token_id": ids.get("eos", ids.get("sep")), "cls_token_id": ids.get("cls", ids.get("bos")),
        "sep_token_id": ids.get("sep", ids.get("eos")), "tie_word_embeddings": True, "dtype": "float32",
    }
    if shape.legacy_config:
        config.update(global_rope_theta=ROPE_GLOBAL, local_rope_theta=ROPE_LOCAL, global_attn_every_n_layers=GLOBAL_EVERY)
    else:
        config.update(layer_types=layer_types, global_attn_every_n_layers=GLOBAL_EVERY, rope_parameters={
            "full_attention": {"rope_theta": ROPE_GLOBAL, "rope_type": "default"},
            "sliding_attention": {"rope_theta": ROPE_LOCAL, "rope_type": "default"},
        })
    (folder / "config.json").write_text(json.dumps(config, indent=2))


def write_sentence_transformers(folder: Path, shape: FixtureShape, hidden: int = TINY.hidden) -> None:
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if shape.normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (folder / "2_Normalize").mkdir()
    (folder / "modules.json").write_text(json.dumps(modules, indent=2))
    (folder / "1_Pooling").mkdir()
    pooling = {"word_embedding_dimension": hidden, "pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False,
               "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False,
               "pooling_mode_weightedmean_tokens": False, "pooling_mode_lasttoken": False, "include_prompt": True}
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": shape.context_length, "do_lower_case": False}))
    (folder / "README.md").write_text(f"---\nlicense: apache-2.0\n---\n# {shape.name}\n\nRandom weights shaped like {shape.mirrors.name}; "
                                      "a test fixture built by granite_gguf.dev.fixtures, not a useful model.\n")


def write_weights(folder: Path, shape: FixtureShape, vocab_size: int, dims: Dimensions = TINY) -> None:
    """Seeded weights with the sensitivity scales above, in state-dict order, saved as safetensors."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(shape.seed)

    def normal(std: float, *dims: int) -> np.ndarray:
        return (rng.standard_normal(dims) * std).astype(np.float32)

    def norm_weight(n: int) -> np.ndarray:
        return (1.0 + rng.uniform(-NORM_WEIGHT_SPREAD, NORM_WEIGHT_SPREAD, n)).astype(np.float32)

    tensors = {
        t.hf_name: norm_weight(*t.shape) if len(t.shape) == 1 else normal(MATRIX_STD.get(t.tensor, 1 / np.sqrt(t.shape[1])), *t.shape)
        for t in layout(dims, vocab_size)
    }
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
