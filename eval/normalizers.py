"""Text normalization applied to both references and predictions before WER/CER.

English uses Whisper's `EnglishTextNormalizer` (from the `whisper-normalizer` package), the
normalizer the Open ASR Leaderboard uses: numbers to digits ("twenty five" -> "25"), British to
American spelling, contractions expanded, punctuation and bracketed noise tags removed; ellipses
are removed first, as the leaderboard's copy of that normalizer does (Whisper's own leaves a
trailing "..." behind as a one-character word "."). Other
languages use a basic multilingual normalizer: lowercase, NFKC, punctuation and symbols removed,
diacritics and combining marks kept (stripping marks would mangle scripts such as Devanagari, and
in French or Portuguese an accent can be the whole difference between two words).

Importing this module imports no model: fine-tuning uses it for validation WER.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from typing import Callable

# Scored by character error rate: Chinese and Japanese are written without spaces between words,
# and Korean is conventionally scored by CER too.
CER_LANGUAGES = frozenset({"zh", "ja", "ko"})

Normalizer = Callable[[str], str]

_BRACKETED = re.compile(r"[<\[][^>\]]*[>\]]")  # [noise], <unk>
_PARENTHESIZED = re.compile(r"\(([^)]+?)\)")  # (laughs)
_WHITESPACE = re.compile(r"\s+")
_TRAILING_ELLIPSIS = re.compile(r"\.{3,}\s*$")
_ELLIPSIS = re.compile(r"\s*\.{3,}\s*")


def base_language(lang: str | None) -> str:
    """'en', 'EN', 'en-US', 'en_GB' -> 'en'; None -> 'en' (the leaderboard's default)."""
    if not lang:
        return "en"
    return re.split(r"[-_]", lang.strip().lower(), maxsplit=1)[0]


def normalize_multilingual(text: str) -> str:
    """Lowercase, drop bracketed/parenthesized tags, NFKC, punctuation and symbols to spaces.

    Letters, digits and combining marks (diacritics, Indic vowel signs) are kept; every
    Unicode punctuation (P*) and symbol (S*) character becomes a space.
    """
    text = text.lower()
    text = _BRACKETED.sub("", text)
    text = _PARENTHESIZED.sub("", text)
    text = unicodedata.normalize("NFKC", text)
    text = "".join(" " if unicodedata.category(c)[0] in "PS" else c for c in text)
    return _WHITESPACE.sub(" ", text.lower()).strip()


@lru_cache(maxsize=1)
def _english() -> Normalizer:
    # Deferred: loading the spelling table costs ~50 ms, and only English needs it.
    from whisper_normalizer.english import EnglishTextNormalizer

    return EnglishTextNormalizer()


def normalize_english(text: str) -> str:
    """Whisper's English normalizer, after the leaderboard's ellipsis removal; whitespace trimmed."""
    text = _ELLIPSIS.sub(" ", _TRAILING_ELLIPSIS.sub("", text.replace("\u2026", "...")))
    return _WHITESPACE.sub(" ", _english()(text)).strip()


def normalizer_for(lang: str | None) -> Normalizer:
    """The normalizer for a reference language: Whisper's English one for 'en', else multilingual."""
    return normalize_english if base_language(lang) == "en" else normalize_multilingual


def uses_cer(lang: str | None) -> bool:
    """True for zh, ja and ko, scored by CER (whitespace removed) instead of WER."""
    return base_language(lang) in CER_LANGUAGES
