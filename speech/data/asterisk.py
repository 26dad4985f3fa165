"""Debian's asterisk-core-sounds prompts: real recorded speech with transcripts.

The `asterisk-core-sounds-{en,es,fr}-wav` packages hold 8 kHz recordings of the Asterisk PBX
prompts (one speaker per language, CC-BY-SA); the transcripts are in the matching
`asterisk-core-sounds-{lang}` package's docs (`core-sounds-{lang}.txt.gz`, lines "id: text").
The same prompt id means the same sentence in every language, so the 450 spoken prompts
present in all three give Spanish->English and French->English speech translation pairs.
"""

from __future__ import annotations

import dataclasses
import gzip
import re
import subprocess
from functools import lru_cache
from pathlib import Path

from speech.data.manifest import Fractions, normalize_key, split_for
from speech.errors import UserError

LANGS = ("en", "es", "fr")
SOUNDS_ROOT = Path("/usr/share/asterisk/sounds")
DOCS_ROOT = Path("/usr/share/doc")


@dataclasses.dataclass(frozen=True)
class Prompt:
    id: str  # e.g. "vm-intro", "digits/7"
    lang: str
    audio: Path
    text: str


def _dpkg_files(package: str) -> list[str]:
    try:
        out = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True, check=False)
    except FileNotFoundError:  # not a Debian system
        return []
    return out.stdout.splitlines() if out.returncode == 0 else []


@lru_cache(maxsize=None)
def locate(lang: str) -> tuple[Path, Path]:
    """(sound folder, transcript file) for a language; UserError naming the missing package."""
    if lang not in LANGS:
        raise UserError(f"Asterisk prompts exist for {', '.join(LANGS)}, not {lang!r}")
    transcripts = [Path(p) for p in _dpkg_files(f"asterisk-core-sounds-{lang}") if p.endswith(".txt.gz")]
    if not transcripts:
        default = DOCS_ROOT / f"asterisk-core-sounds-{lang}" / f"core-sounds-{lang}.txt.gz"
        transcripts = [default] if default.is_file() else []
    sounds = [
        Path(p)
        for p in _dpkg_files(f"asterisk-core-sounds-{lang}-wav")
        if Path(p).parent == SOUNDS_ROOT and Path(p).is_dir()
    ]
    if not sounds:
        sounds = sorted(p for p in SOUNDS_ROOT.glob(f"{lang}_*") if p.is_dir() and not p.is_symlink())
    if not transcripts or not sounds:
        raise UserError(
            f"Asterisk {lang} prompts not installed: apt-get install "
            f"asterisk-core-sounds-{lang} asterisk-core-sounds-{lang}-wav"
        )
    return sounds[0], transcripts[0]


def available(lang: str) -> bool:
    try:
        locate(lang)
    except UserError:
        return False
    return True


# Annotations in the transcripts that are not spoken: "[ascending tones]", "(beep)",
# "<beep ascending>", "(note: does not say "2")", "at [@]".
_NON_SPEECH = re.compile(r"^\s*[\[(<].*[\])>]\s*$")
_BRACKETED_SYMBOL = re.compile(r"\[[^\w\]]*\]")  # "[@]", "[-]", "[ ]"
_PAREN_NOTE = re.compile(r"\s*\([^)]*\)")
_SPOKEN_SYMBOLS = {"en": {"*": "star", "#": "pound"}}


def clean_text(text: str, lang: str) -> str | None:
    """The spoken words of a transcript line, or None when the prompt is not speech."""
    if not text.strip() or _NON_SPEECH.match(text):
        return None
    text = _BRACKETED_SYMBOL.sub("", text)
    text = _PAREN_NOTE.sub("", text)
    text = re.sub(r"\[([^\]]*)\]", r"\1", text).strip()  # "[temporales]" is spoken
    for symbol, word in _SPOKEN_SYMBOLS.get(lang, {}).items():
        text = re.sub(rf"\s*{re.escape(symbol)}\s*", f" {word} ", text)
    text = re.sub(r"\s+", " ", text).strip()
    return text or None


@lru_cache(maxsize=None)
def prompts(lang: str) -> dict[str, Prompt]:
    """Every spoken prompt of a language that has both a recording and a transcript."""
    sounds, transcripts = locate(lang)
    result: dict[str, Prompt] = {}
    with gzip.open(transcripts, "rt", encoding="utf-8", errors="replace") as f:
        for line in f:
            match = re.match(r"^([^\s:;][^:\s]*):\s*(.*)$", line.rstrip("\n"))
            if not match:
                continue
            prompt_id, raw = match.groups()
            text = clean_text(raw, lang)
            audio = sounds / f"{prompt_id}.wav"
            if text and audio.is_file():
                result[prompt_id] = Prompt(prompt_id, lang, audio, text)
    return result


def common_ids(langs: tuple[str, ...] = LANGS) -> list[str]:
    """Prompt ids spoken in every one of ``langs`` (450 for en/es/fr)."""
    ids = set(prompts(langs[0]))
    for lang in langs[1:]:
        ids &= set(prompts(lang))
    return sorted(ids)


SPLIT_ORDER = ("train", "dev", "test")


@lru_cache(maxsize=None)
def prompt_splits(fractions: Fractions = Fractions(), split_seed: str = "speechlora") -> dict[str, str]:
    """The split of every prompt id: a hash of the id, except that prompts saying the same text
    share one split.

    Asterisk records some sentences under several ids ("invalid" and "pbx-invalid",
    "something-terribly-wrong" and "tt-somethingwrong"): hashed by id alone, 4 of the 22 English
    test prompts had their text in the train split, where a model (and above all an unpruned word
    n-gram) memorizes it. Ids are joined when their normalized text matches in any installed
    language (so a prompt still shares its split across languages), and a group goes to the
    *first* of train, dev, test that any of its members hashed to: a split only ever loses
    prompts to a split before it, so a model trained on the old train split is still never
    scored on a sentence it trained on.
    """
    parent: dict[str, str] = {}  # union-find over prompt ids

    def root(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for lang in LANGS:
        if not available(lang):
            continue
        first_with_text: dict[str, str] = {}
        for prompt_id, prompt in sorted(prompts(lang).items()):
            parent.setdefault(prompt_id, prompt_id)
            other = first_with_text.setdefault(normalize_key(prompt.text), prompt_id)
            a, b = root(prompt_id), root(other)
            if a != b:
                parent[max(a, b)] = min(a, b)
    group_split: dict[str, str] = {}
    for prompt_id in parent:
        r, split = root(prompt_id), split_for(prompt_id, fractions, split_seed)
        group_split[r] = min(group_split.get(r, split), split, key=SPLIT_ORDER.index)
    return {prompt_id: group_split[root(prompt_id)] for prompt_id in parent}
