"""Digits spelled as the English words a speaker says for them ("press 3" -> "press three").

Why: the CTC head spells letters, so a transcript's "3" is silent to it. Dropping digits taught
the head to emit nothing for a spoken "three" (the Asterisk prompts are full of "press 1") and
taught the word n-gram that "press" is followed by "to". Every text that becomes CTC targets, a
lexicon or n-gram counts goes through `spell_numbers` first. English only: the head's alphabet is.

Cardinals, ordinals ("11th" -> "eleventh"), thousands separators, decimals ("2.5" -> "two point
five") and percent; a bare four-digit number from 1100 to 1999 or 2010 to 2099 reads as a year
("1988" -> "nineteen eighty eight", "1905" -> "nineteen oh five"), as a speaker (and espeak-ng)
says it, so the n-gram learns the words a spoken year is made of.
"""

from __future__ import annotations

import re

_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
         "fifteen sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ((10**12, "trillion"), (10**9, "billion"), (10**6, "million"), (1000, "thousand"))
_ORDINAL = {"one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth",
            "nine": "ninth", "twelve": "twelfth"}
_NUMBER = re.compile(r"(?<![\w.])(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d+))?(st|nd|rd|th)?(?!\w)", re.IGNORECASE)
_DIGITS = re.compile(r"\d+")


def cardinal(n: int) -> str:
    """`n` in words: 1205 -> "one thousand two hundred five" (no "and": American usage)."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    if n < 1000:
        return _ONES[n // 100] + " hundred" + ("" if n % 100 == 0 else " " + cardinal(n % 100))
    for scale, name in _SCALES:
        if n >= scale:
            rest = n % scale
            return cardinal(n // scale) + " " + name + ("" if rest == 0 else " " + cardinal(rest))
    raise AssertionError(n)  # unreachable: n >= 1000 meets a scale


def ordinal(n: int) -> str:
    """`n` as an ordinal: 3 -> "third", 20 -> "twentieth", 1000000000 -> "one billionth"."""
    words = cardinal(n).split()
    last = words[-1]
    if last in _ORDINAL:
        words[-1] = _ORDINAL[last]
    elif last.endswith("y"):
        words[-1] = last[:-1] + "ieth"
    else:
        words[-1] = last + "th"
    return " ".join(words)


def year(n: int) -> str:
    """A year as said aloud: 1988 -> "nineteen eighty eight", 1900 -> "nineteen hundred",
    1905 -> "nineteen oh five", 2024 -> "twenty twenty four"."""
    high, low = divmod(n, 100)
    if low == 0:
        return cardinal(high) + " hundred"
    return cardinal(high) + " " + (f"oh {_ONES[low]}" if low < 10 else cardinal(low))


def _spell(match: re.Match) -> str:
    whole, decimals, suffix = match.group(1), match.group(2), match.group(3)
    n = int(whole.replace(",", ""))
    if n >= 10**15:  # a serial number or an account, not a quantity: digit by digit
        words = " ".join(_ONES[int(d)] for d in whole if d.isdigit())
    elif len(whole) == 4 and not decimals and not suffix and (1100 <= n <= 1999 or 2010 <= n <= 2099):
        words = year(n)
    else:
        words = ordinal(n) if suffix and not decimals else cardinal(n)
    if decimals:
        words += " point " + " ".join(_ONES[int(d)] for d in decimals)
    return f" {words} "


def spell_numbers(text: str) -> str:
    """`text` with every number written out in English words (the rest unchanged)."""
    if not any(c.isdigit() for c in text):
        return text
    text = _NUMBER.sub(_spell, text).replace("%", " percent ")
    # Digits glued to letters ("mp3", "2x"): read each run as a cardinal.
    return _DIGITS.sub(lambda m: f" {cardinal(int(m.group()))} " if len(m.group()) < 16 else " ", text)
