"""The probe sets: the release gate set is a stratified subset that keeps every long input."""

from __future__ import annotations

from granite_gguf.probes import GATE_SIZE, LONG_CHARS, gate_texts, probe_texts, scripts_covered, whitespace_texts


def test_gate_set_is_a_stratified_subset_with_every_long_input() -> None:
    full, gate = probe_texts(), gate_texts()
    assert len(gate) == GATE_SIZE < len(full) / 4
    rest = iter(full)
    assert all(any(text == other for other in rest) for text in gate), "a subsequence of the full set"
    assert [t for t in full if len(t) >= LONG_CHARS] == [t for t in gate if len(t) >= LONG_CHARS]
    assert sum(len(t) >= LONG_CHARS for t in gate) >= 9  # the six past the local window, the three of thousands of tokens
    assert len(scripts_covered(gate)) >= 0.9 * len(scripts_covered(full))
    assert any(len(t) <= 2 for t in gate) and any("\n\n" in t for t in gate)


def test_whitespace_texts_cover_runs_of_every_kind() -> None:
    texts = whitespace_texts()
    for char in (" ", "\n", "\t"):
        assert char * 31 in texts and f"a{char * 40}b" in texts
    assert any("\r\n" in t for t in texts) and len(set(texts)) > 0.9 * len(texts)
