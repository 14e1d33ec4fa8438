"""Tokenizer family detection and vocabulary building on hand-written tokenizer.json structures (fast tier)."""

from __future__ import annotations

from typing import Any

import pytest
from gguf import TokenType

from granite_gguf.convert.tokenizer import (
    GEMMA3,
    GPT2,
    O200K,
    O200K_SPLIT_REGEX,
    SPACE_ESCAPE,
    TokenizerFamily,
    build_vocab,
    detect_family,
)
from granite_gguf.errors import UserError

BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
O200K_PRE: dict[str, Any] = {"type": "Sequence", "pretokenizers": [
    {"type": "Split", "pattern": {"Regex": O200K_SPLIT_REGEX}, "behavior": "Isolated", "invert": False},
    {**BYTE_LEVEL, "use_regex": False},
]}
SPACE_TO_ESCAPE = {"type": "Replace", "pattern": {"String": " "}, "content": SPACE_ESCAPE}


def tokenizer(normalizer: Any = None, pre: Any = None, **model: Any) -> dict[str, Any]:
    return {"normalizer": normalizer, "pre_tokenizer": pre, "model": {"type": "BPE", "vocab": {}, "merges": [], **model}}


@pytest.mark.parametrize(("structure", "family"), [
    (tokenizer(SPACE_TO_ESCAPE, byte_fallback=True), GEMMA3),
    (tokenizer({"type": "Sequence", "normalizers": [SPACE_TO_ESCAPE]}, {"type": "Split", "pattern": {"String": " "}},
               byte_fallback=True), GEMMA3),
    (tokenizer(None, BYTE_LEVEL), GPT2),
    (tokenizer(None, {"type": "Sequence", "pretokenizers": [BYTE_LEVEL]}), GPT2),
    (tokenizer(None, O200K_PRE, ignore_merges=True), O200K),
])
def test_families_are_recognised_by_structure(structure: dict[str, Any], family: TokenizerFamily) -> None:
    assert detect_family(structure) is family


@pytest.mark.parametrize(("structure", "message"), [
    ({"model": {"type": "WordPiece"}}, "model.type is 'WordPiece'"),
    (tokenizer(SPACE_TO_ESCAPE), "without BPE byte_fallback"),
    (tokenizer(SPACE_TO_ESCAPE, BYTE_LEVEL, byte_fallback=True), "pre_tokenizer ByteLevel after a ▁-escaping normalizer"),
    (tokenizer({"type": "NFC"}, BYTE_LEVEL), "normalizer NFC"),
    (tokenizer(None, {**BYTE_LEVEL, "add_prefix_space": True}), "ByteLevel with add_prefix_space"),
    (tokenizer(None, O200K_PRE), "without BPE ignore_merges"),
    (tokenizer(None, {"type": "Sequence", "pretokenizers": [
        {**O200K_PRE["pretokenizers"][0], "pattern": {"Regex": r"\w+"}}, O200K_PRE["pretokenizers"][1]]},
        ignore_merges=True), "is not the o200k expression"),
    (tokenizer(None, {"type": "Sequence", "pretokenizers": [{"type": "Whitespace"}, BYTE_LEVEL]}),
     "pre_tokenizer Sequence[Whitespace, ByteLevel]"),
])
def test_unknown_structures_name_the_component(structure: dict[str, Any], message: str) -> None:
    with pytest.raises(UserError, match="unsupported tokenizer") as raised:
        detect_family(structure)
    assert message in str(raised.value)


def bert_template(cls_id: int, sep_id: int) -> dict[str, Any]:
    return {"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                       {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
            "special_tokens": {"[CLS]": {"id": "[CLS]", "ids": [cls_id]}, "[SEP]": {"id": "[SEP]", "ids": [sep_id]}}}


def small_gpt2(merges: list[Any]) -> dict[str, Any]:
    structure = tokenizer(None, BYTE_LEVEL, vocab={"a": 0, "b": 1, "ab": 2, "Ġ\n": 3}, merges=merges)
    structure["added_tokens"] = [{"id": 4, "content": "[CLS]", "special": True},
                                 {"id": 5, "content": "[SEP]", "special": True},
                                 {"id": 6, "content": "<extra>", "special": False}]
    structure["post_processor"] = bert_template(4, 5)
    return structure


def test_vocab_types_specials_padding_and_both_merge_forms() -> None:
    vocab = build_vocab(small_gpt2([["a", "b"], "Ġ \n"]), {"pad_token": "<extra>"}, {"vocab_size": 9})
    assert vocab.family is GPT2
    assert vocab.tokens == ["a", "b", "ab", "Ġ\n", "[CLS]", "[SEP]", "<extra>",
                            "<unused_pad_7>", "<unused_pad_8>"]
    assert vocab.token_types == [TokenType.NORMAL] * 4 + [TokenType.CONTROL] * 2 + [TokenType.USER_DEFINED] + \
        [TokenType.UNUSED] * 2
    assert vocab.merges == ["a b", "Ġ \n"]  # a list pair and the legacy "left right" string, newline kept
    assert vocab.special_ids == {"pad": 6, "bos": 4, "eos": 5}
    assert (vocab.add_bos, vocab.add_eos, vocab.n_padding) == (True, True, 2)


def test_a_merge_with_a_space_inside_a_part_is_refused() -> None:
    with pytest.raises(UserError, match="merge #1 .* has a space that llama.cpp would split on"):
        build_vocab(small_gpt2([["a", "b"], ["a b", "c"]]), {}, {})


def test_gaps_and_small_vocab_sizes_are_refused() -> None:
    gappy = tokenizer(None, BYTE_LEVEL, vocab={"a": 0, "b": 2})
    with pytest.raises(UserError, match="not contiguous .*id 1"):
        build_vocab(gappy, {}, {})
    with pytest.raises(UserError, match="vocab_size 3 is smaller than the tokenizer's 7 tokens"):
        build_vocab(small_gpt2([]), {}, {"vocab_size": 3})
