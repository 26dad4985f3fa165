"""English text from Debian packages, for the built-in model's tokenizer, LM and TTS sentences.

Sources: `fortunes` (/usr/share/games/fortunes), `sword-text-web` (the World English Bible
as a SWORD zText module), and the Asterisk English prompt transcripts. Every sentence gets
its split from `speech.data.manifest.split_for`, the same function the speech corpora use,
so a sentence held out for the TTS test set (or an Asterisk test prompt) is never seen by the
tokenizer or the LM either.

    python -m speech.builtin_recipe.text --out work/builtin/text

writes ``lm.txt`` and ``lm_dev.txt`` (the train and dev sentences, documents separated by blank
lines; test sentences are written nowhere but ``tts_test.txt``),
``tts_train.txt``/``tts_test.txt`` (short speakable sentences, one per line) and ``info.json``.
"""

from __future__ import annotations

import argparse
import json
import re
import struct
import unicodedata
import zlib
from pathlib import Path
from typing import Iterator

import numpy as np

from speech.data import asterisk
from speech.data.manifest import Fractions, normalize_key, split_for

FORTUNES = Path("/usr/share/games/fortunes")
SWORD_WEB = Path("/usr/share/sword/modules/texts/ztext/engWEB2015eb")
SKIP_FORTUNES = {"ascii-art", "translate-me"}  # drawings; non-English
FRACTIONS = Fractions(dev=0.05, test=0.05)

_ASCII = str.maketrans({"’": "'", "‘": "'", "“": '"', "”": '"', "—": " - ", "–": "-", "…": "...", "\t": " "})


def clean(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).translate(_ASCII)
    return re.sub(r"[ \u00a0]+", " ", text).strip()


def fortunes(root: Path = FORTUNES) -> Iterator[str]:
    """Each fortune cookie as one document (lines joined, attribution lines kept)."""
    for path in sorted(root.iterdir()):
        if path.suffix or path.name in SKIP_FORTUNES or not path.is_file():
            continue
        raw = path.read_bytes().decode("utf-8", errors="replace")
        for cookie in re.split(r"^%\s*$", raw, flags=re.M):
            lines = [line.strip() for line in cookie.splitlines() if line.strip()]
            if lines:
                yield clean(" ".join(lines))


def bible_verses(root: Path = SWORD_WEB) -> Iterator[str]:
    """Verses of the World English Bible, OSIS markup and footnotes removed, in book order.

    zText layout: ``*.bzs`` holds (offset, size, raw size) of each zlib block in ``*.bzz``;
    ``*.bzv`` holds (block, offset, size) of each verse inside its decompressed block.
    """
    for testament in ("ot", "nt"):
        bzs = (root / f"{testament}.bzs").read_bytes()
        bzz = (root / f"{testament}.bzz").read_bytes()
        bzv = (root / f"{testament}.bzv").read_bytes()
        blocks = []
        for i in range(len(bzs) // 12):
            offset, size, _ = struct.unpack_from("<III", bzs, i * 12)
            blocks.append(zlib.decompress(bzz[offset : offset + size]))
        for i in range(len(bzv) // 10):
            block, offset, size = struct.unpack_from("<IIH", bzv, i * 10)
            if size == 0:
                continue
            osis = blocks[block][offset : offset + size].decode("utf-8", errors="replace")
            osis = re.sub(r"(?<=\w)<note\b.*?</note>(?=\w)", " ", osis, flags=re.S)  # "of<note/>Tubias"
            osis = re.sub(r"<note\b.*?</note>", "", osis, flags=re.S)
            osis = re.sub(r"</w>((?:<[^>]*>)*)<w\b", r"</w> \1<w", osis)  # words only tags stood between
            text = clean(re.sub(r"<[^>]+>", "", osis))
            if text:
                yield text


def sentences(document: str) -> list[str]:
    """Split after . ! or ? (and a closing quote or bracket) before a capital letter."""
    return [s.strip() for s in re.split(r"(?:(?<=[.!?])|(?<=[.!?][\"')]))\s+(?=[\"'(]*[A-Z])", document) if s.strip()]


_SPEAKABLE = re.compile(r"^[A-Z][A-Za-z ,.'?!;:-]*[.?!]$")


def speakable(sentence: str, min_words: int = 4, max_words: int = 16) -> bool:
    """Short plain sentences a TTS engine reads exactly as written (no digits, symbols or
    all-caps acronyms, which engines expand in their own way)."""
    words = sentence.split()
    return (
        min_words <= len(words) <= max_words
        and bool(_SPEAKABLE.match(sentence))
        and not any(len(w.strip(",.;:!?'")) > 1 and w.strip(",.;:!?'").isupper() for w in words)
        and "--" not in sentence
    )


def build(out: Path, seed: int = 0) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    documents: list[tuple[str, list[str]]] = [("fortunes", sentences(d)) for d in fortunes()]
    verses = list(bible_verses())
    for start in range(0, len(verses), 8):  # ~8 verses a document
        documents.append(("bible", [s for v in verses[start : start + 8] for s in sentences(v)]))

    docs: dict[str, list[str]] = {"train": [], "dev": [], "test": []}
    pool: dict[str, dict[str, str]] = {"train": {}, "dev": {}, "test": {}}
    for _, sents in documents:
        parts: dict[str, list[str]] = {"train": [], "dev": [], "test": []}
        for s in sents:
            split = split_for(s, FRACTIONS)
            parts[split].append(s)
            if speakable(s):
                pool[split].setdefault(normalize_key(s), s)
        for split, kept in parts.items():
            if kept:
                docs[split].append(" ".join(kept))

    # The Asterisk English prompts, split as in `speechlora data asterisk` (by prompt id, ids
    # saying the same text in one split).
    splits = asterisk.prompt_splits(FRACTIONS)
    for pid, prompt in sorted(asterisk.prompts("en").items()):
        docs[splits[pid]].append(prompt.text)

    rng = np.random.default_rng(seed)
    for split, name in (("train", "lm.txt"), ("dev", "lm_dev.txt")):  # test sentences are never written
        rng.shuffle(docs[split])
        (out / name).write_text("\n\n".join(docs[split]) + "\n", encoding="utf-8")
    for split in ("train", "dev", "test"):
        lines = sorted(pool[split].values())
        rng.shuffle(lines)
        (out / f"tts_{split}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    info = {
        "lm_documents": {split: len(d) for split, d in docs.items()},
        "lm_chars": {split: sum(len(x) for x in d) for split, d in docs.items()},
        "tts_sentences": {split: len(pool[split]) for split in pool},
        "split_fractions": {"dev": FRACTIONS.dev, "test": FRACTIONS.test},
        "seed": seed,
        "sources": ["fortunes (Debian `fortunes`, `fortunes-min`)", "sword-text-web (engWEB2015eb)",
                    "asterisk-core-sounds-en transcripts (split by prompt id, one split per text)"],
    }
    (out / "info.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(json.dumps(build(args.out, args.seed), indent=2))


if __name__ == "__main__":
    main()
