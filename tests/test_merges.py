"""Merges that can never apply are dropped; a merge that can apply but cannot be written is refused."""

from __future__ import annotations

import pytest

from granite_gguf.convert.tokenizer import TokenizerFamily, bpe_input_can_hold, usable_merges
from granite_gguf.errors import UserError


def test_raw_space_merges_are_dropped_under_the_space_escaping_normalizer() -> None:
    raw = [["▁", "a"], [" " * 29, "  "], ["  ", " "], ["\n", "\n"], ["▁▁", "▁"], ["a", " b"]]
    merges, dropped = usable_merges(raw, bpe_input_can_hold(TokenizerFamily.GEMMA3))
    assert merges == ["▁ a", "\n \n", "▁▁ ▁"]
    assert dropped == 3


@pytest.mark.parametrize("family", [TokenizerFamily.GPT2, TokenizerFamily.O200K])
def test_byte_level_merges_outside_the_byte_alphabet_are_dropped(family: TokenizerFamily) -> None:
    raw = ["Ġ t", "Ġt he", ["中", "t"], ["a b", "c"], ["Ċ", "Ċ"]]  # 中 and the space are not byte-level characters
    merges, dropped = usable_merges(raw, bpe_input_can_hold(family))
    assert merges == ["Ġ t", "Ġt he", "Ċ Ċ"]
    assert dropped == 2


def test_a_merge_that_can_apply_and_holds_a_space_is_refused() -> None:
    """Under a pipeline that lets spaces reach BPE, llama.cpp's "left right" string cannot hold it."""
    with pytest.raises(UserError, match=r"merge #1 \['a b', 'c'\] can apply and has a space"):
        usable_merges([["x", "y"], ["a b", "c"]], lambda piece: True)
    # a space first on the left, or anywhere on the right, is written unambiguously
    assert usable_merges([[" a", "b"], ["a", " b c"]], lambda piece: True) == ([" a b", "a  b c"], 0)
