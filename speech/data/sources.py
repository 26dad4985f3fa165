"""The three sources of a corpus, turned into clip jobs, and the job runner.

A source yields `Job`s (what to speak or which file to read, the text, the split); `build`
runs them (in a process pool when ``jobs > 1``), writes 16 kHz wavs under ``OUT/audio/`` and
the manifests ``OUT/{train,dev,test}.jsonl``. A clip whose wav already exists is not redone,
so an interrupted run picks up where it stopped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import soundfile as sf
from tqdm import tqdm

from speech.data import asterisk
from speech.data.augment import Perturbation, perturb
from speech.data.manifest import SPLITS, Entry, Fractions, normalize_key, split_for, write_manifests
from speech.data.tts import Voice, synthesize
from speech.data.wav import SAMPLE_RATE, read_16k, write_16k
from speech.errors import UserError

log = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".opus")


@dataclasses.dataclass(frozen=True)
class Job:
    clip_id: str  # unique in the corpus; also the wav's path under audio/<split>/
    split: str
    text: str
    lang: str
    source: str  # "folder", "tts", "asterisk"
    audio: str | None = None  # file to read (folder, asterisk) ...
    voice: Voice | None = None  # ... or a voice to synthesize ``text`` with
    translation: str | None = None
    translation_lang: str | None = None


@dataclasses.dataclass(frozen=True)
class Settings:
    out_dir: Path
    perturbation: Perturbation = Perturbation()
    perturb_splits: tuple[str, ...] = ("train",)  # dev and test stay clean by default
    max_duration: float = 30.0
    seed: int = 0


# ---------------------------------------------------------------- sources


def folder_jobs(
    folder: Path, lang: str, fractions: Fractions, split_by: str = "text", transcripts: Path | None = None,
    split_seed: str = "speechlora",
) -> list[Job]:
    """Audio files with transcripts: a sidecar ``<name>.txt``/``.lab`` beside each file, or one
    ``transcripts`` file of ``NAME<TAB>TEXT`` or ``NAME|TEXT`` lines (LJSpeech's metadata.csv),
    NAME being the file's path relative to ``folder`` with or without its extension."""
    if not folder.is_dir():
        raise UserError(f"not a folder: {folder}")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())
    if not files:
        raise UserError(f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) under {folder}")
    table: dict[str, str] = {}
    if transcripts is not None:
        if not transcripts.is_file():
            raise UserError(f"transcripts file not found: {transcripts}")
        for number, line in enumerate(transcripts.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            name, sep, text = line.partition("\t") if "\t" in line else line.partition("|")
            if not sep:
                raise UserError(f"{transcripts}:{number}: expected NAME<TAB>TEXT or NAME|TEXT")
            text = text.split("|")[-1]  # LJSpeech: id|raw|normalized
            table[name.strip()] = text.strip()
    jobs, missing = [], []
    for path in files:
        rel = path.relative_to(folder)
        stem = str(rel.with_suffix(""))
        text = table.get(str(rel)) or table.get(stem) or table.get(path.stem)
        if text is None and transcripts is None:
            for ext in (".txt", ".lab"):
                sidecar = path.with_suffix(ext)
                if sidecar.is_file():
                    text = " ".join(sidecar.read_text(encoding="utf-8").split())
                    break
        if not text:
            missing.append(str(rel))
            continue
        key = stem if split_by == "id" else text
        jobs.append(Job(stem, split_for(key, fractions, split_seed), text, lang, "folder", audio=str(path)))
    if missing:
        log.warning("%d audio files have no transcript and are skipped (first: %s)", len(missing), missing[0])
    if not jobs:
        raise UserError(f"no audio file under {folder} has a transcript (sidecar .txt/.lab or --transcripts)")
    return jobs


def read_sentences(text_file: Path) -> list[str]:
    """One sentence per line; blank lines and lines starting with '#' are skipped; duplicates
    (same normalized text) are kept once."""
    if not text_file.is_file():
        raise UserError(f"text file not found: {text_file}")
    seen, sentences = set(), []
    for line in text_file.read_text(encoding="utf-8").splitlines():
        line = " ".join(line.split())
        key = normalize_key(line)
        if line and not line.startswith("#") and key and key not in seen:
            seen.add(key)
            sentences.append(line)
    if not sentences:
        raise UserError(f"no sentences in {text_file}")
    return sentences


def tts_jobs(
    sentences: list[str], voices: list[Voice], lang: str, fractions: Fractions,
    voices_per_sentence: int | None = None, seed: int = 0, split_seed: str = "speechlora",
) -> list[Job]:
    """Each sentence spoken by every voice, or by ``voices_per_sentence`` of them drawn per
    sentence (deterministically, from the sentence itself)."""
    if not voices:
        raise UserError("give at least one --voice")
    jobs = []
    for text in sentences:
        key = normalize_key(text)
        digest = hashlib.sha256(f"{seed}\0{key}".encode()).digest()
        chosen = voices
        if voices_per_sentence and voices_per_sentence < len(voices):
            rng = np.random.default_rng(int.from_bytes(digest[:8], "big"))
            chosen = [voices[i] for i in sorted(rng.choice(len(voices), voices_per_sentence, replace=False))]
        sentence_id = hashlib.sha1(key.encode()).hexdigest()[:12]
        split = split_for(text, fractions, split_seed)
        for voice in chosen:
            jobs.append(Job(f"{voice.slug}/{sentence_id}", split, text, lang, "tts", voice=voice))
    return jobs


def asterisk_jobs(
    lang: str, fractions: Fractions, translate_to: str | None = None, common: bool = False,
    split_seed: str = "speechlora",
) -> list[Job]:
    """The prompts of one language; split by prompt id (ids saying the same text joined:
    `asterisk.prompt_splits`), so a prompt's recordings in every language (and its translation
    pairs) share a split."""
    if translate_to == lang:
        raise UserError("--translate-to must differ from --lang")
    prompts = asterisk.prompts(lang)
    ids = asterisk.common_ids() if common else sorted(prompts)
    targets = asterisk.prompts(translate_to) if translate_to else None
    splits = asterisk.prompt_splits(fractions, split_seed)
    jobs = []
    for prompt_id in ids:
        if targets is not None and prompt_id not in targets:
            continue
        p = prompts[prompt_id]
        jobs.append(
            Job(
                f"{lang}/{prompt_id}", splits[prompt_id], p.text, lang, "asterisk",
                audio=str(p.audio),
                translation=targets[prompt_id].text if targets is not None else None,
                translation_lang=translate_to,
            )
        )
    return jobs


# ---------------------------------------------------------------- runner


def _wav_path(settings: Settings, job: Job) -> Path:
    safe = re.sub(r"[^\w\-./+=,]", "_", job.clip_id)
    return settings.out_dir / "audio" / job.split / f"{safe}.wav"


def _run_job(job: Job, settings: Settings) -> tuple[Entry | None, str]:
    """Make one clip; (entry, "") or (None, why it was skipped)."""
    path = _wav_path(settings, job)
    extra: dict = {"source": job.source, "id": job.clip_id}
    if job.voice is not None:
        extra["voice"] = str(job.voice)
    meta_path = path.with_suffix(".json")
    if path.is_file() and meta_path.is_file():  # done by an earlier, interrupted run
        duration = sf.info(str(path)).duration
        extra.update(json.loads(meta_path.read_text()))
    else:
        try:
            samples = synthesize(job.text, job.voice) if job.voice is not None else read_16k(job.audio)
        except UserError as exc:
            return None, str(exc)
        if job.split in settings.perturb_splits and settings.perturbation.active:
            samples, applied = perturb(samples, settings.perturbation, job.clip_id, settings.seed)
            extra.update(applied)
        duration = len(samples) / SAMPLE_RATE
        if duration > settings.max_duration:
            return None, f"{job.clip_id}: {duration:.1f} s is longer than {settings.max_duration:g} s"
        write_16k(path, samples)
        meta_path.write_text(json.dumps({k: v for k, v in extra.items() if k in ("speed", "noise", "snr_db")}))
    return Entry(str(path), duration, job.text, job.lang, job.translation, job.translation_lang, extra), ""


def _run_chunk(args: tuple[list[Job], Settings]) -> list[tuple[Entry | None, str]]:
    jobs, settings = args
    return [_run_job(job, settings) for job in jobs]


def _chunks(items: list[Job], size: int) -> Iterator[list[Job]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def build(
    jobs: Iterable[Job], settings: Settings, workers: int = 1, splits: tuple[str, ...] = SPLITS,
    info: dict | None = None,
) -> dict:
    """Make every clip, write the manifests of ``splits`` and ``info.json``; returns the summary."""
    jobs = [job for job in jobs if job.split in splits]
    ids = [job.clip_id for job in jobs]
    if len(set(ids)) != len(ids):
        raise UserError("two clips share an id (duplicate voice or sentence?)")
    started = time.monotonic()
    by_split: dict[str, list[Entry]] = {split: [] for split in splits}
    skipped: list[str] = []
    chunks = list(_chunks(jobs, 8))
    with tqdm(total=len(jobs), desc=f"clips -> {settings.out_dir.name}", unit="clip", smoothing=0.05) as bar:
        if workers <= 1:
            results = (_run_chunk((c, settings)) for c in chunks)
            pool = None
        else:
            pool = ProcessPoolExecutor(max_workers=workers)
            results = pool.map(_run_chunk, [(c, settings) for c in chunks])
        try:
            for chunk, batch in zip(chunks, results):
                for job, (entry, why) in zip(chunk, batch):
                    if entry is None:
                        skipped.append(why)
                    else:
                        by_split[job.split].append(entry)
                bar.update(len(batch))
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)
    for why in skipped[:5]:
        log.warning("skipped: %s", why)
    paths = write_manifests(settings.out_dir, by_split)
    summary = {
        "splits": {
            split: {
                "manifest": paths[split].name,
                "clips": len(entries),
                "hours": round(sum(e.duration for e in entries) / 3600, 4),
            }
            for split, entries in by_split.items()
        },
        "skipped": len(skipped),
        "seconds": round(time.monotonic() - started, 1),
        "perturbation": dataclasses.asdict(settings.perturbation),
        "seed": settings.seed,
        **(info or {}),
    }
    tmp = settings.out_dir / "info.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    os.replace(tmp, settings.out_dir / "info.json")
    return summary

