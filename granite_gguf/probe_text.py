"""Real multilingual text that ships with a package: CLDR display names from `babel`.

Used to train the fixtures' tokenizers and to build the verification probe set. Deterministic:
locales are visited in sorted order and every list is sorted.
"""

from __future__ import annotations

from functools import lru_cache

# Locales chosen to cover many scripts (Latin, Cyrillic, Greek, Armenian, Georgian, Hebrew, Arabic,
# Syriac, Thaana, N'Ko, Devanagari, Bengali, Gurmukhi, Gujarati, Oriya, Tamil, Telugu, Kannada,
# Malayalam, Sinhala, Thai, Lao, Tibetan, Myanmar, Khmer, Hangul, Han, Kana, Ethiopic, Cherokee,
# Canadian syllabics, Mongolian, Adlam, Vai, Yi, Ol Chiki, Chakma, Tifinagh, Osage, Deseret, …).
LOCALES = (
    "en", "de", "fr", "es", "pt", "it", "nl", "pl", "cs", "sk", "hu", "ro", "tr", "vi", "fi", "sv", "is", "lt", "lv",
    "sq", "ca", "eu", "ga", "cy", "yo", "ha", "sw", "zu", "az", "uz", "id", "ms", "fil", "ru", "uk", "bg", "sr", "mk",
    "kk", "ky", "mn", "el", "hy", "ka", "he", "yi", "ar", "fa", "ur", "ps", "ug", "sd", "syr", "dv", "nqo", "hi", "mr",
    "ne", "bn", "as", "pa", "gu", "or", "ta", "te", "kn", "ml", "si", "th", "lo", "bo", "my", "km", "ko", "ja", "zh",
    "zh_Hant", "yue", "am", "ti", "chr", "iu", "ff_Adlm", "vai", "ii", "sat", "ccp", "zgh", "osa", "en_Dsrt", "mni",
    "sa", "ks", "ceb", "haw", "mi", "to", "sm", "ku", "tt", "ba", "cv", "sah", "be", "tk", "tg", "bs", "hr", "sl", "et",
)


@lru_cache(maxsize=1)
def cldr_sentences() -> tuple[str, ...]:
    """Comma-joined runs of display names (languages, territories, scripts, months, days) per locale."""
    from babel import Locale, UnknownLocaleError

    sentences: list[str] = []
    for code in LOCALES:
        try:
            locale = Locale.parse(code)
        except (UnknownLocaleError, ValueError):
            continue
        for names in (locale.languages, locale.territories, locale.scripts):
            values = sorted(set(names.values()))
            for start in range(0, len(values), 6):
                sentences.append(", ".join(values[start : start + 6]))
        months = locale.months.get("format", {}).get("wide", {})
        days = locale.days.get("format", {}).get("wide", {})
        sentences.append(" ".join(months[k] for k in sorted(months)))
        sentences.append(" ".join(days[k] for k in sorted(days)))
    return tuple(sentences)
