"""NeMo-style jsonl manifests and the deterministic train/dev/test split.

One line per clip: ``{"audio_filepath", "duration", "text", "lang"}`` plus ``"translation"``
(and ``"translation_lang"``) for speech translation pairs. ``audio_filepath`` is relative to
the manifest's folder so a corpus can be moved or copied as one directory.

The split of a clip is a pure function of a key (the normalized sentence, or a prompt id), so
the same sentence spoken by ten voices always lands in the same split, on every machine, in
every run: nothing crosses from train into test.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import unicodedata
from pathlib import Path
from typing import Iterable, Iterator

from speech.errors import UserError

SPLITS = ("train", "dev", "test")


@dataclasses.dataclass(frozen=True)
class Fractions:
    """Share of keys that go to dev and to test; the rest is train."""

    dev: float = 0.05
    test: float = 0.05

    def __post_init__(self) -> None:
        if not (0 <= self.dev < 1 and 0 <= self.test < 1 and self.dev + self.test < 1):
            raise UserError(f"dev/test fractions must be in [0, 1) and sum below 1, got {self.dev}/{self.test}")


@dataclasses.dataclass
class Entry:
    """One manifest line. ``audio_filepath`` is absolute in memory, relative on disk."""

    audio_filepath: str
    duration: float
    text: str
    lang: str
    translation: str | None = None
    translation_lang: str | None = None
    extra: dict = dataclasses.field(default_factory=dict)  # source, voice, key, perturbation...

    def to_json(self, root: Path) -> str:
        record = {
            "audio_filepath": os.path.relpath(self.audio_filepath, root),
            "duration": round(self.duration, 4),
            "text": self.text,
            "lang": self.lang,
        }
        if self.translation is not None:
            record["translation"] = self.translation
            record["translation_lang"] = self.translation_lang
        record.update(self.extra)
        return json.dumps(record, ensure_ascii=False)


def normalize_key(text: str) -> str:
    """Casefolded letters and digits only: "Hello, world!" and "hello world" share a key."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(re.findall(r"\w+", text))


def split_for(key: str, fractions: Fractions = Fractions(), seed: str = "speechlora") -> str:
    """The split ("train", "dev" or "test") a key belongs to; stable across runs and machines."""
    digest = hashlib.sha256(f"{seed}\0{normalize_key(key)}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < fractions.test:
        return "test"
    if u < fractions.test + fractions.dev:
        return "dev"
    return "train"


def write_manifests(out_dir: Path, entries_by_split: dict[str, list[Entry]]) -> dict[str, Path]:
    """Write ``<split>.jsonl`` for each split (sorted, so reruns give identical files)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, entries in entries_by_split.items():
        path = out_dir / f"{split}.jsonl"
        tmp = path.with_suffix(".jsonl.tmp")
        with tmp.open("w", encoding="utf-8") as f:
            for entry in sorted(entries, key=lambda e: e.audio_filepath):
                f.write(entry.to_json(out_dir) + "\n")
        os.replace(tmp, path)
        paths[split] = path
    return paths


def read_manifest(path: str | Path) -> Iterator[dict]:
    """Manifest records with ``audio_filepath`` made absolute (relative to the manifest)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"manifest not found: {path}")
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                audio = Path(record["audio_filepath"])
                record["text"]  # noqa: B018 - required field
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise UserError(f"{path}:{number}: not a manifest line ({exc})") from None
            if not audio.is_absolute():
                record["audio_filepath"] = str((path.parent / audio).resolve())
            yield record


def summarize(entries: Iterable[Entry]) -> tuple[int, float]:
    """(clips, hours)."""
    n, seconds = 0, 0.0
    for entry in entries:
        n += 1
        seconds += entry.duration
    return n, seconds / 3600
