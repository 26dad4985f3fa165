"""Numbers spelled out for the CTC head, its lexicon and its n-gram (speech/numbers.py)."""

from __future__ import annotations

import pytest
from whisper_normalizer.english import EnglishTextNormalizer

from speech.ctc import build_lexicon, char_ids, heard_words
from speech.numbers import cardinal, ordinal, spell_numbers, year

ALPHABET = " 'abcdefghijklmnopqrstuvwxyz"


@pytest.mark.parametrize("n, words", [
    (0, "zero"), (7, "seven"), (13, "thirteen"), (20, "twenty"), (42, "forty two"),
    (100, "one hundred"), (115, "one hundred fifteen"), (1000, "one thousand"),
    (1205, "one thousand two hundred five"), (90_000, "ninety thousand"),
    (1_000_000_000, "one billion"), (2_003_000, "two million three thousand"),
])
def test_cardinal(n: int, words: str) -> None:
    assert cardinal(n) == words


@pytest.mark.parametrize("n, words", [
    (1, "first"), (2, "second"), (3, "third"), (5, "fifth"), (8, "eighth"), (9, "ninth"),
    (11, "eleventh"), (12, "twelfth"), (20, "twentieth"), (21, "twenty first"),
    (40, "fortieth"), (100, "one hundredth"), (1_000_000_000, "one billionth"),
])
def test_ordinal(n: int, words: str) -> None:
    assert ordinal(n) == words


@pytest.mark.parametrize("n, words", [
    (1988, "nineteen eighty eight"), (1900, "nineteen hundred"), (1905, "nineteen oh five"),
    (2024, "twenty twenty four"), (1100, "eleven hundred"),
])
def test_year(n: int, words: str) -> None:
    assert year(n) == words


def test_spell_numbers_in_text() -> None:
    spelled = " ".join(spell_numbers("Press 1 to mute, 2 to lock; the 11th of 1,250 at 2.5 km, mp3.").split())
    assert spelled == ("Press one to mute, two to lock; the eleventh of one thousand two hundred fifty "
                       "at two point five km, mp three .")
    assert spell_numbers("no digits here") == "no digits here"
    assert " ".join(spell_numbers("In 1988, 2005 and 2,024 people; 5% of 1999.5").split()) == (
        "In nineteen eighty eight , two thousand five and two thousand twenty four people; five percent "
        "of one thousand nine hundred ninety nine point five")


def test_spelled_numbers_score_as_the_digits() -> None:
    """The Whisper normalizer (the eval's) reads our spelling back as the same digits."""
    normalize = EnglishTextNormalizer()
    for text in ("press 3 for advanced options", "the 7th caller", "1000 points", "the 21st century"):
        assert normalize(" ".join(spell_numbers(text).split())) == normalize(text)


def test_ctc_targets_lexicon_and_ngram_words_hear_the_numbers() -> None:
    """A spoken "three" is in the targets (it used to be dropped: "press 3" trained as "press")."""
    assert "".join(ALPHABET[i] for i in char_ids("Press 3 now", ALPHABET)) == "press three now"
    assert heard_words("press 1 to send a reply", ALPHABET) == ["press", "one", "to", "send", "a", "reply"]
    lexicon = build_lexicon(["Press 3 for options.", "the 21st"], ALPHABET)
    assert "three" in lexicon and "first" in lexicon and not any(c.isdigit() for w in lexicon for c in w)
