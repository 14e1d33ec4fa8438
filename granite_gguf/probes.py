"""The built-in multilingual probe set for `verify` (≥ 2,000 strings, ≥ 25 scripts).

Built deterministically from the CLDR text `babel` ships plus hand-written edge cases: code, emoji,
combining marks, whitespace and newline runs, very long words, inputs longer than the 128-token
local attention window, and inputs of several thousand tokens.
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache

from granite_gguf.probe_text import cldr_sentences

CODE = [
    "def embed(texts: list[str]) -> np.ndarray:\n    return model.encode(texts, normalize_embeddings=True)\n",
    "for (int i = 0; i < n; ++i) {\n\tsum += a[i] * b[i];\n}",
    '{"model": "granite", "input": ["a", "b"], "dimensions": 256}',
    "SELECT id, title FROM docs WHERE lang = 'de' ORDER BY score DESC LIMIT 10;",
    "<div class=\"card\"><p>Grüße &amp; 你好</p></div>",
    "#!/usr/bin/env bash\nset -euo pipefail\ncurl -s http://localhost:11434/api/embed | jq '.embeddings[0][:4]'",
    "fn main() { let v: Vec<f32> = vec![0.5; 384]; println!(\"{:?}\", v.len()); }",
    "x = [i**2 for i in range(10) if i % 3 == 0]  # squares\n\n\nprint(x)",
    "const f = async (u) => (await fetch(u)).json();\r\nexport default f;",
    "x = 1 <|code|> y = 2 <|code|><|code|>end",
    "\\begin{equation} e^{i\\pi} + 1 = 0 \\end{equation}",
    "λx. x + 1 ≠ ∀y ∈ ℝ: y² ≥ 0 → ∑ᵢ aᵢ ≤ ∞",
    "https://huggingface.co/ibm-granite/granite-embedding-311m-multilingual-r2?x=1&y=%20",
    "user@example.com, +1 (555) 010-9999, 192.168.0.1, 2026-11-26T16:42:00Z",
]
EMOJI = [
    "I love it 😍😍😍", "👩‍👩‍👧‍👦 family", "🇩🇪🇫🇷🇯🇵 flags", "👍🏽 thumbs", "🧑🏿‍🚀 astronaut", "❤️‍🔥 heart on fire",
    "🏳️‍🌈", "emoji only: 🐍🦀☕️🚀", "✈️ ✈ ☀️ ☀", "#️⃣ 1️⃣ keycaps", "🫠🫡🫶 new ones", "text😀text😀text",
]
WHITESPACE = [
    "", " ", "  ", "\n", "\n\n", "\n\n\n\n", "\t", "\t\t tabs", "a  b", "a   b    c", " leading space", "trailing space ",
    "line one\nline two", "para one\n\npara two", "windows\r\nline", "mixed \t\n \n\t end", "   \n   ", "a\n \nb",
    "\u00a0non-breaking\u00a0space", "ideographic\u3000space", "zero\u200bwidth\u200bspace", "x" + " " * 40 + "y",
    "\n" * 12 + "after newlines", "end with newline\n",
]
LONG_WORDS = [
    "a" * 300, "Donaudampfschifffahrtselektrizitätenhauptbetriebswerkbauunterbeamtengesellschaft",
    "pneumonoultramicroscopicsilicovolcanoconiosis" * 3, "ab" * 150, "😀" * 60, "日本" * 100,
    "supercalifragilisticexpialidocious-" * 5, "0123456789" * 20, "Привет" * 40, "ـ" * 80,
]
COMBINING_BASE = [
    "Tiếng Việt có nhiều dấu thanh", "naïve café résumé coöperate", "Ελληνικά με τόνους", "हिन्दी भाषा",
    "ภาษาไทย สวัสดีครับ", "ꦧꦱꦗꦮ", "ဗမာစာ", "ಕನ್ನಡ ಲಿಪಿ", "Ǆǅǆ ﬁ ﬂ ligatures", "Z̤͔ͧ̑̓ä͖̭̈̇lͮ̒ͫǧ̗͚̚o̙̔ͮ̇͐̇",
]


@lru_cache(maxsize=1)
def probe_texts() -> tuple[str, ...]:
    """All probe strings, in a fixed order."""
    sentences = list(cldr_sentences())
    texts: list[str] = []
    texts += sentences[::8]  # about 2,000 CLDR runs across all locales
    texts += CODE + EMOJI + WHITESPACE + LONG_WORDS
    for base in COMBINING_BASE:
        texts += [base, unicodedata.normalize("NFD", base), unicodedata.normalize("NFC", base)]
    texts += ["Mixed: English, Deutsch, русский, 中文, العربية, हिन्दी, 한국어, ελληνικά, עברית, ไทย."]
    texts += [" ".join(sentences[i : i + 12]) for i in range(0, 600, 100)]  # past the local window
    texts += [long_text(start, 6_000) for start in (0, 5_000, 10_000)]  # thousands of tokens
    return tuple(texts)


def long_text(start: int, n_chars: int) -> str:
    """A long multilingual document: consecutive CLDR runs joined by spaces and newlines."""
    sentences = cldr_sentences()
    parts: list[str] = []
    index = start
    while sum(len(p) + 1 for p in parts) < n_chars:
        parts.append(sentences[index % len(sentences)])
        index += 1
    return "\n".join(" ".join(parts[i : i + 5]) for i in range(0, len(parts), 5))


def scripts_covered(texts: tuple[str, ...]) -> set[str]:
    """Unicode script names (first word of the character name) of the letters in `texts`."""
    found = set()
    for text in texts:
        for char in text:
            if char.isalpha():
                found.add(unicodedata.name(char, "UNKNOWN").split()[0])
    return found


GATE_SIZE = 400  # texts in `gate_texts`
LONG_CHARS = 300  # texts at least this long (those past the local window, and of thousands of tokens) are all kept


@lru_cache(maxsize=1)
def gate_texts(size: int = GATE_SIZE) -> tuple[str, ...]:
    """A smaller probe set for `release`: every long probe (past the local window and of thousands of
    tokens), then the others drawn round-robin from strata of (main script, length class), in order.

    The full set on the full-size 311m shape did not finish in 24 minutes on 2 cores; this one keeps
    what finds bugs (long inputs, every script, short and odd strings) at a fraction of the cost.
    """
    texts = probe_texts()
    chosen = {i for i, text in enumerate(texts) if len(text) >= LONG_CHARS}
    strata: dict[tuple[str, int], list[int]] = {}
    for index, text in enumerate(texts):
        if index not in chosen:
            strata.setdefault((main_script(text), len(text).bit_length()), []).append(index)
    queues = [strata[key] for key in sorted(strata)]
    while len(chosen) < size and any(queues):
        for queue in queues:
            if queue and len(chosen) < size:
                chosen.add(queue.pop(0))
    return tuple(texts[i] for i in sorted(chosen))


def main_script(text: str) -> str:
    """The script (first word of the Unicode name) of most letters in `text`; "NONE" without letters."""
    counts: dict[str, int] = {}
    for char in text:
        if char.isalpha():
            script = unicodedata.name(char, "UNKNOWN").split()[0]
            counts[script] = counts.get(script, 0) + 1
    return max(counts, key=lambda s: (counts[s], s)) if counts else "NONE"


def whitespace_texts() -> tuple[str, ...]:
    """Whitespace-, newline- and tab-heavy texts: runs of 1–40 spaces, newlines and tabs alone, between
    words, at either end, and mixed runs; what Gemma-style vocabularies hold special pieces for."""
    texts: list[str] = []
    for n in range(1, 41):
        for char in (" ", "\n", "\t"):
            run = char * n
            texts += [run, f"a{run}b", f"{run}word", f"word{run}", f"Satz eins.{run}Satz zwei.", f"x {run} y"]
    for mix in (" \n", "\n ", "\t\n", " \t", "\r\n", "\n\t \n", "\u3000\n"):
        for n in (1, 2, 3, 5, 8, 13, 21):
            texts += [mix * n, f"para{mix * n}para", f"  {mix * n}  end"]
    return tuple(texts)


def special_token_texts(tokens: list[str]) -> tuple[str, ...]:
    """`tokens` (a vocabulary's added tokens) written in text: alone, between words, glued, doubled."""
    return tuple(text for token in tokens for text in (token, f"a {token} b", f"a{token}b", f"{token}{token} x"))
