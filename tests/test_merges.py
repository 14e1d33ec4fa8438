"""Merges that can never apply are dropped; a merge that can apply but cannot be written is refused."""

from __future__ import annotations

import pytest

from granite_gguf.convert.tokenizer import GEMMA3, GPT2, O200K, TokenizerFamily, usable_merges
from granite_gguf.errors import UserError


def test_raw_space_merges_are_dropped_under_the_space_escaping_normalizer() -> None:
    raw = [["▁", "a"], [" " * 29, "  "], ["  ", " "], ["\n", "\n"], ["▁▁", "▁"], ["a", " b"]]
    merges, dropped = usable_merges(raw, GEMMA3.can_hold)
    assert merges == ["▁ a", "\n \n", "▁▁ ▁"]
    assert dropped == 3


@pytest.mark.parametrize("family", [GPT2, O200K])
def test_byte_level_merges_are_kept_and_a_space_inside_one_is_refused(family: TokenizerFamily) -> None:
    assert usable_merges(["Ġ t", ["Ġt", "he"], ["Ċ", "Ċ"]], family.can_hold) == (["Ġ t", "Ġt he", "Ċ Ċ"], 0)
    with pytest.raises(UserError, match=r"merge #1 \['a b', 'c'\] can apply and has a space"):
        usable_merges([["x", "y"], ["a b", "c"]], family.can_hold)


def test_a_space_first_on_the_left_or_on_the_right_is_written() -> None:
    """llama.cpp splits a merge string at its first space after the first character: these are unambiguous."""
    assert usable_merges([[" a", "b"], ["a", " b c"]], GPT2.can_hold) == ([" a b", "a  b c"], 0)
