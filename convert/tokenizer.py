"""tokenizer.json → llama.cpp BPE vocabulary, for the three Granite R2 tokenizer families (`bpe_vocab`, the
vocabulary hook of the modern-bert unit).

The family is recognised from the structure of tokenizer.json (normalizer, pre-tokenizer, model
flags), never from a hash of its output, so fine-tunes with added tokens and pruned vocabularies
convert too. Token-exactness is then *proved* by `granite-gguf verify`, not assumed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gguf import GGUFWriter, TokenType

from granite_gguf.convert import keys
from granite_gguf.errors import UserError

if TYPE_CHECKING:
    from granite_gguf.convert.source import Checkpoint

log = logging.getLogger(__name__)

# The split regex of o200k-style tokenizers (GPT-OSS, and the pruned 97m vocabulary). llama.cpp's
# `granite-embed-multi-97m` pre-tokenizer implements exactly this expression, \p{M} included.
O200K_SPLIT_REGEX = (
    "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    "|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    "|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
)
SPACE_ESCAPE = "\u2581"  # ▁
BYTE_PIECES = {f"<0x{b:02X}>" for b in range(256)}


MAX_VOCAB = 1 << 20  # Granite R2's largest vocabulary is 262,144; bounds what a hostile file can make us allocate


class TokenizerFamily:
    """One BPE tokenizer family: how tokenizer.json shows it, the llama.cpp pre-tokenizer (`tokenizer.ggml.pre`)
    that reproduces it, and its vocabulary rules. One object per family (GEMMA3, O200K, GPT2, in FAMILIES);
    a new family is one more subclass here, a tokenizer that is not BPE its own module (`Architecture.vocab`)."""

    name: str  # granite_gguf.tokenizer_family
    pre: str

    def claims(self, normalizer: Any, steps: list[Any]) -> bool:
        """Whether tokenizer.json has this family's signature (its normalizer, its pre-tokenizer steps)."""
        raise NotImplementedError

    def check(self, model: dict[str, Any], pre: Any, steps: list[Any]) -> None:
        """Refuse, naming the component, a tokenizer that has the signature but differs elsewhere."""

    def token_type(self, text: str) -> TokenType | None:
        """The type of a vocabulary piece the family decides itself (None: normal)."""
        return None

    def check_tokens(self, tokens: list[str], token_types: list[TokenType]) -> None:
        """Refuse or warn about a vocabulary llama.cpp would read otherwise than HF."""

    def can_hold(self, piece: str) -> bool:
        """Whether a piece can occur in the text the BPE model is given, as far as the family's pipeline decides it
        (see `usable_merges`). Byte-level families: every merge is kept as written."""
        return True

    def __repr__(self) -> str:
        return self.name


class _Gemma3(TokenizerFamily):
    """SentencePiece-like BPE over raw UTF-8, spaces escaped to ▁, byte fallback."""

    name, pre = "GEMMA3", "granite-embed-multi-311m"

    def claims(self, normalizer: Any, steps: list[Any]) -> bool:
        return _is_space_escape(normalizer)

    def check(self, model: dict[str, Any], pre: Any, steps: list[Any]) -> None:
        if not model.get("byte_fallback"):
            raise UserError("unsupported tokenizer: a ▁-escaping normalizer without BPE byte_fallback")
        if pre is not None and not _is_split_on_space(pre):
            raise UserError(f"unsupported tokenizer: pre_tokenizer {_describe(pre)} after a ▁-escaping normalizer")

    def token_type(self, text: str) -> TokenType | None:
        return TokenType.BYTE if text in BYTE_PIECES else None

    def check_tokens(self, tokens: list[str], token_types: list[TokenType]) -> None:
        missing_bytes = BYTE_PIECES - set(tokens)
        if missing_bytes:
            raise UserError(f"unsupported tokenizer: byte_fallback is on but {len(missing_bytes)} byte pieces (<0xNN>) are missing")
        _warn_newline_mixes(tokens, token_types)

    def can_hold(self, piece: str) -> bool:
        """The normalizer turns every space into ▁ before BPE runs, so no piece holding a raw space is ever built by
        merging (raw-space pieces are only matched whole, as added tokens)."""
        return " " not in piece


class _O200k(TokenizerFamily):
    """Byte-level BPE, o200k split regex, ignore_merges."""

    name, pre = "O200K", "granite-embed-multi-97m"

    def claims(self, normalizer: Any, steps: list[Any]) -> bool:
        return normalizer is None and _kinds(steps) == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True)

    def check(self, model: dict[str, Any], pre: Any, steps: list[Any]) -> None:
        regex = (steps[0].get("pattern") or {}).get("Regex")
        if regex != O200K_SPLIT_REGEX:
            raise UserError(f"unsupported tokenizer: pre_tokenizer Split regex {regex!r} is not the o200k expression")
        if steps[0].get("behavior") != "Isolated":
            raise UserError(f"unsupported tokenizer: pre_tokenizer Split behavior {steps[0].get('behavior')!r}")
        if not model.get("ignore_merges"):
            raise UserError("unsupported tokenizer: o200k-style split without BPE ignore_merges")


class _Gpt2(TokenizerFamily):
    """Byte-level BPE with the GPT-2 split regex (English R2, ModernBERT)."""

    name, pre = "GPT2", "modern-bert"

    def claims(self, normalizer: Any, steps: list[Any]) -> bool:
        return normalizer is None and _kinds(steps) == ["ByteLevel"] and steps[0].get("use_regex", True)

    def check(self, model: dict[str, Any], pre: Any, steps: list[Any]) -> None:
        if steps[0].get("add_prefix_space"):
            raise UserError("unsupported tokenizer: pre_tokenizer ByteLevel with add_prefix_space")


GEMMA3, O200K, GPT2 = _Gemma3(), _O200k(), _Gpt2()
FAMILIES = (GEMMA3, O200K, GPT2)


@dataclass
class GGUFVocab:
    """Everything the `tokenizer.ggml.*` keys hold."""

    family: TokenizerFamily
    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    special_ids: dict[str, int]  # bos, eos, cls, sep, pad, unk, mask → id
    add_bos: bool
    add_eos: bool
    n_padding: int  # unused entries appended to reach config.vocab_size
    dropped_merges: int = 0  # merges of pieces the BPE input never holds (see usable_merges)

    def write(self, writer: GGUFWriter) -> None:
        """The `tokenizer.ggml.*` keys, as llama.cpp's BPE (gpt2) tokenizer reads them."""
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(self.family.pre)
        writer.add_token_list(self.tokens)
        writer.add_token_types(self.token_types)
        writer.add_token_merges(self.merges)
        setters = {
            "bos": writer.add_bos_token_id, "eos": writer.add_eos_token_id, "unk": writer.add_unk_token_id,
            "sep": writer.add_sep_token_id, "pad": writer.add_pad_token_id, "mask": writer.add_mask_token_id,
        }
        for role, token_id in self.special_ids.items():
            if role == "cls":
                writer.add_uint32(keys.CLS_ID, token_id)
            else:
                setters[role](token_id)
        writer.add_add_bos_token(self.add_bos)
        writer.add_add_eos_token(self.add_eos)
        writer.add_add_sep_token(False)
        writer.add_string(keys.TOKENIZER_FAMILY, self.family.name)
        writer.add_uint32(keys.DROPPED_MERGES, self.dropped_merges)


def detect_family(tokenizer: dict[str, Any]) -> TokenizerFamily:
    """Name the family from tokenizer.json structure; an unknown structure names the component."""
    model = tokenizer.get("model") or {}
    if model.get("type") != "BPE":
        raise UserError(f"unsupported tokenizer: model.type is {model.get('type')!r}; only BPE tokenizers are supported")
    normalizer = tokenizer.get("normalizer")
    pre = tokenizer.get("pre_tokenizer")
    steps: list[Any] = pre.get("pretokenizers", []) if isinstance(pre, dict) and pre.get("type") == "Sequence" else [pre]
    for family in FAMILIES:
        if family.claims(normalizer, steps):
            family.check(model, pre, steps)
            return family
    if normalizer is not None:
        raise UserError(f"unsupported tokenizer: normalizer {_describe(normalizer)}")
    raise UserError(f"unsupported tokenizer: pre_tokenizer {_describe(pre)}")


def _kinds(steps: list[Any]) -> list[Any]:
    return [step.get("type") if isinstance(step, dict) else None for step in steps]


def _describe(component: Any) -> str:
    if not isinstance(component, dict):
        return repr(component)
    if component.get("type") == "Sequence":
        inner = component.get("pretokenizers") or component.get("normalizers") or []
        return "Sequence[" + ", ".join(_describe(step) for step in inner) + "]"
    return str(component.get("type"))


def _is_space_escape(normalizer: Any) -> bool:
    if not isinstance(normalizer, dict):
        return False
    if normalizer.get("type") == "Sequence":
        steps = normalizer.get("normalizers", [])
        return len(steps) == 1 and _is_space_escape(steps[0])
    return (
        normalizer.get("type") == "Replace"
        and normalizer.get("pattern") == {"String": " "}
        and normalizer.get("content") == SPACE_ESCAPE
    )


def _is_split_on_space(pre: dict[str, Any]) -> bool:
    return pre.get("type") == "Split" and pre.get("pattern") == {"String": " "}


def bpe_vocab(ckpt: Checkpoint) -> GGUFVocab:
    """`Architecture.vocab` of encoders with a BPE tokenizer.json: llama.cpp's gpt2 vocabulary of `ckpt`."""
    return build_vocab(ckpt.tokenizer, ckpt.special_tokens_map, ckpt.config)


def build_vocab(tokenizer: dict[str, Any], special_tokens_map: dict[str, Any], config: dict[str, Any]) -> GGUFVocab:
    """Token list, types, merges, special ids and BOS/EOS policy, padded to config.vocab_size.

    tokenizer.json comes from anywhere: ids and sizes are bounded first, and a value of the wrong
    JSON type anywhere becomes a one-line error instead of a traceback.
    """
    if not isinstance(tokenizer, dict) or not isinstance(tokenizer.get("model"), dict):
        raise UserError("tokenizer.json: expected an object with a model object")
    _check_bounds(tokenizer, config)
    try:
        return _build_vocab(tokenizer, special_tokens_map if isinstance(special_tokens_map, dict) else {}, config)
    except UserError:  # a ValueError too, but already says what is wrong
        raise
    except (TypeError, AttributeError, KeyError, IndexError, ValueError) as exc:
        raise UserError(f"tokenizer.json: unexpected structure ({type(exc).__name__}: {exc})") from None


def _check_bounds(tokenizer: dict[str, Any], config: dict[str, Any]) -> None:
    vocab = tokenizer["model"].get("vocab") or {}
    added = tokenizer.get("added_tokens") or []
    if not isinstance(vocab, dict) or not isinstance(added, list):
        raise UserError("tokenizer.json: model.vocab must be an object and added_tokens a list")
    ids = list(vocab.values()) + [token.get("id") if isinstance(token, dict) else None for token in added]
    if not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < MAX_VOCAB for i in ids):
        raise UserError(f"tokenizer.json: every token id must be an integer in 0..{MAX_VOCAB - 1}")
    size = config.get("vocab_size", 0)
    if isinstance(size, int) and size > MAX_VOCAB:
        raise UserError(f"config.json: vocab_size {size} exceeds the limit {MAX_VOCAB}")


def _build_vocab(tokenizer: dict[str, Any], special_tokens_map: dict[str, Any], config: dict[str, Any]) -> GGUFVocab:
    family = detect_family(tokenizer)
    model = tokenizer["model"]
    id_to_text: dict[int, str] = {}
    for text, token_id in (model.get("vocab") or {}).items():
        id_to_text[int(token_id)] = text
    added = {int(t["id"]): t for t in tokenizer.get("added_tokens") or []}
    for token_id, info in added.items():
        id_to_text[token_id] = info["content"]
    n_tokens = max(id_to_text) + 1 if id_to_text else 0
    missing = [i for i in range(n_tokens) if i not in id_to_text]
    if missing:
        raise UserError(f"unsupported tokenizer: token ids are not contiguous (first gap at id {missing[0]})")
    tokens = [id_to_text[i] for i in range(n_tokens)]

    unk = model.get("unk_token")
    token_types = []
    for token_id, text in enumerate(tokens):
        if token_id in added:
            token_types.append(TokenType.CONTROL if added[token_id].get("special") else TokenType.USER_DEFINED)
        elif text == unk:
            token_types.append(TokenType.UNKNOWN)
        else:
            token_types.append(family.token_type(text) or TokenType.NORMAL)
    family.check_tokens(tokens, token_types)
    _make_unique(tokens, token_types, added)

    target = config.get("vocab_size", n_tokens)
    if not isinstance(target, int) or target < n_tokens:
        raise UserError(f"config.json: vocab_size {target!r} is smaller than the tokenizer's {n_tokens} tokens")
    taken = set(tokens)
    for token_id in range(n_tokens, target):
        text = f"<unused_pad_{token_id}>"
        while text in taken:
            text += "_"
        tokens.append(text)
        taken.add(text)
        token_types.append(TokenType.UNUSED)

    template_bos, template_eos = template_specials(tokenizer.get("post_processor"))
    text_to_id = {text: i for i, text in enumerate(tokens)}
    special_ids = _special_ids(special_tokens_map, config, text_to_id, unk)
    if template_bos is not None:
        special_ids["bos"] = template_bos
    if template_eos is not None:
        special_ids["eos"] = template_eos
    merges, dropped = usable_merges(model.get("merges") or [], family.can_hold)
    if dropped:
        log.warning("dropped %d of %d merges that can never apply (they join pieces the BPE input never holds, "
                    "such as raw spaces after a normalizer that escapes every space to %s)", dropped,
                    len(merges) + dropped, SPACE_ESCAPE)
    return GGUFVocab(
        family=family,
        tokens=tokens,
        token_types=[int(t) for t in token_types],
        merges=merges,
        special_ids=special_ids,
        add_bos=template_bos is not None,
        add_eos=template_eos is not None,
        n_padding=target - n_tokens,
        dropped_merges=dropped,
    )


def _warn_newline_mixes(tokens: list[str], token_types: list[TokenType]) -> None:
    """llama.cpp's Gemma-style splitter cuts text into newline runs and the rest before merging, so it
    never produces a normal token that mixes a newline with other text, while HF does: texts holding
    one tokenize differently. The real vocabularies of this family hold newline runs only."""
    mixed = [t for t, kind in zip(tokens, token_types) if kind is TokenType.NORMAL and "\n" in t and t.strip("\n")]
    if mixed:
        log.warning("%d tokens mix a newline with other text (e.g. %s): llama.cpp splits text at newlines and never "
                    "produces them, so texts containing them tokenize differently from HF (`granite-gguf verify` "
                    "counts the mismatches)", len(mixed), ", ".join(repr(t) for t in mixed[:3]))


def _make_unique(tokens: list[str], token_types: list[TokenType], added: dict[int, Any]) -> None:
    """llama.cpp aborts the process on duplicate token texts. Keep the entry that HF reaches from text
    (the added token), rename the other one to an unused placeholder, and say so."""
    first_id: dict[str, int] = {}
    for token_id, text in enumerate(tokens):
        other = first_id.setdefault(text, token_id)
        if other == token_id:
            continue
        loser = other if token_id in added and other not in added else token_id
        if loser == other:
            first_id[text] = token_id
        tokens[loser] = f"<unused_dup_{loser}>"
        token_types[loser] = TokenType.UNUSED
        log.warning("token text %r appears at ids %d and %d; id %d renamed to %r", text, other, token_id, loser, tokens[loser])


def usable_merges(raw: list[Any], can_hold: Callable[[str], bool]) -> tuple[list[str], int]:
    """The merges as llama.cpp's "left right" strings, and how many were dropped because they can
    never apply (a side that `can_hold` rules out). A merge that can apply and has a space after the
    first character of its left side cannot be written (llama.cpp splits at that space): refused."""
    merges = []
    for index, merge in enumerate(raw):
        left, right = merge if isinstance(merge, list) else merge.split(" ", 1)
        if not (can_hold(left) and can_hold(right)):
            continue
        if " " in left[1:]:
            raise UserError(f"unsupported tokenizer: merge #{index} {merge!r} can apply and has a space that "
                            "llama.cpp would split on")
        merges.append(f"{left} {right}")
    return merges, len(raw) - len(merges)


def template_specials(post: Any) -> tuple[int | None, int | None]:
    """(id added before the text, id added after it) according to the post-processor."""
    if post is None:
        return None, None
    kind = post.get("type")
    if kind == "Sequence":
        found = [s for s in post.get("processors", []) if s.get("type") != "ByteLevel"]
        if len(found) > 1:
            raise UserError("unsupported tokenizer: more than one post_processor that adds tokens")
        return template_specials(found[0]) if found else (None, None)
    if kind == "ByteLevel":
        return None, None
    if kind in ("BertProcessing", "RobertaProcessing"):
        return int(post["cls"][1]), int(post["sep"][1])
    if kind != "TemplateProcessing":
        raise UserError(f"unsupported tokenizer: post_processor {kind!r}")
    single = post.get("single") or []
    position = [i for i, piece in enumerate(single) if "Sequence" in piece]
    if len(position) != 1:
        raise UserError("unsupported tokenizer: post_processor template without exactly one $A")
    before, after = single[: position[0]], single[position[0] + 1 :]
    if len(before) > 1 or len(after) > 1:
        raise UserError("unsupported tokenizer: post_processor template adds more than one token on a side")

    def special_id(pieces: list[dict[str, Any]]) -> int | None:
        if not pieces:
            return None
        name = pieces[0]["SpecialToken"]["id"]
        ids = post.get("special_tokens", {}).get(name, {}).get("ids", [])
        if len(ids) != 1:
            raise UserError(f"unsupported tokenizer: template special {name!r} maps to {len(ids)} ids")
        return int(ids[0])

    return special_id(before), special_id(after)


def _special_ids(special_tokens_map: dict[str, Any], config: dict[str, Any], text_to_id: dict[str, int], unk: str | None) -> dict[str, int]:
    ids: dict[str, int] = {}
    for role in ("bos", "eos", "cls", "sep", "pad", "unk", "mask"):
        entry = special_tokens_map.get(f"{role}_token")
        text = entry.get("content") if isinstance(entry, dict) else entry
        if isinstance(text, str) and text in text_to_id:
            ids[role] = text_to_id[text]
        elif isinstance(config.get(f"{role}_token_id"), int) and 0 <= config[f"{role}_token_id"] < len(text_to_id):
            ids[role] = config[f"{role}_token_id"]
    if "unk" not in ids and unk in text_to_id:
        ids["unk"] = text_to_id[unk]
    return ids
