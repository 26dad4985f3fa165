"""Training data: jsonl manifests -> examples -> duration-bucketed micro-batches of token ids.

A manifest line is NeMo-style: `audio_filepath` (relative to the manifest's folder, or absolute),
`duration`, `text`, optional `lang`, optional `translation` (+ `translation_lang`, default en).
A line with a translation becomes speech-translation examples (the tasks in
`data.translation_tasks`); a line without one is a transcription example.

Every clip's real length is read from its file header once, up front: clips longer than the
model's 30 s window, shorter than one 25 ms frame, or unreadable are skipped and counted (a bad
file must not stop a multi-GPU run an hour in). The order of batches is a pure function of
(seed, epoch), so every process computes the same plan without talking to the others, and a
resumed run finds its place by step number alone.

The sequence the model learns is the chat prompt, the audio placeholders, then the answer and the
stop tokens the model emits (`<|end|>` then `<|endoftext|>`); labels are -100 everywhere but on the
answer and its stop tokens.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from encoder.audio import load_audio
from encoder.features import WIN_LENGTH, num_audio_tokens
from speech.errors import UserError
from speech.prompts import AUDIO_MARKER, SEPARATOR, Task, build_prompt, language_code

log = logging.getLogger(__name__)

IGNORE = -100
MIN_SECONDS = WIN_LENGTH / 16_000


@dataclass(frozen=True)
class Example:
    audio: str  # absolute path
    duration: float  # seconds, from the file header
    task: Task
    answer: str  # what the model must say
    lang: str  # language of the answer (picks the WER normalizer)


@dataclass
class Corpus:
    """The usable examples of some manifests, and what was skipped and why."""

    examples: list[Example]
    skipped: Counter = field(default_factory=Counter)
    skipped_files: list[str] = field(default_factory=list)  # a few, for the log
    manifests: list[dict] = field(default_factory=list)  # path, sha256, lines, for training.json

    @property
    def hours(self) -> float:
        return sum(e.duration for e in self.examples) / 3600

    def summary(self) -> dict:
        return {
            "manifests": self.manifests,
            "examples": len(self.examples),
            "hours": round(self.hours, 3),
            "tasks": dict(Counter(e.task.kind if e.task.kind == "transcribe" else f"{e.task.kind}:{e.task.target_lang}"
                                  for e in self.examples)),
            "languages": dict(Counter(e.lang for e in self.examples)),
            "skipped": dict(self.skipped),
        }


def _probe(path: str) -> float | None:
    """Seconds of audio in a file from its header (no decoding); None if unreadable."""
    try:
        info = sf.info(path)
        return info.frames / info.samplerate if info.samplerate > 0 else None
    except Exception:  # noqa: BLE001 - libsndfile cannot open it; try the slower decoders
        try:
            import librosa

            return float(librosa.get_duration(path=path))
        except Exception:  # noqa: BLE001
            return None


def _read_manifest(manifest: Path) -> tuple[str, list[tuple[int, dict]]]:
    """(sha256 of the file, [(line number, record)]) with format errors refused by file:line."""
    try:
        raw = manifest.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{manifest}: no such manifest") from None
    records = []
    for number, line in enumerate(raw.decode("utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{manifest}:{number}: not a json line ({exc.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("audio_filepath"), str):
            raise UserError(f"{manifest}:{number}: needs an audio_filepath string")
        if not isinstance(record.get("text"), str) and not isinstance(record.get("translation"), str):
            raise UserError(f"{manifest}:{number}: needs a text (or translation) string")
        records.append((number, record))
    return hashlib.sha256(raw).hexdigest(), records


def read_manifests(paths: list[str] | tuple[str, ...], max_duration: float = 30.0,
                   translation_tasks: tuple[str, ...] = ("translate",), workers: int = 8) -> Corpus:
    """Examples from NeMo-style jsonl manifests; bad clips skipped and counted."""
    corpus = Corpus([])
    records = []
    for path in paths:
        manifest = Path(path)
        digest, lines = _read_manifest(manifest)
        for number, record in lines:
            audio = Path(record["audio_filepath"]).expanduser()
            if not audio.is_absolute():
                audio = manifest.parent / audio
            records.append((f"{manifest}:{number}", str(audio.resolve()), record))
        corpus.manifests.append({"path": str(manifest), "sha256": digest, "lines": len(lines)})

    unique = sorted({audio for _, audio, _ in records})
    with ThreadPoolExecutor(max(1, workers)) as pool:
        durations = dict(zip(unique, pool.map(_probe, unique)))

    for where, audio, record in records:
        seconds = durations[audio]
        reason = ("unreadable" if seconds is None else "too long" if seconds > max_duration + 1e-3
                  else "too short" if seconds < MIN_SECONDS else None)
        if reason:
            corpus.skipped[reason] += 1
            if len(corpus.skipped_files) < 5:
                corpus.skipped_files.append(f"{where} ({reason}: {audio})")
            continue
        lang = language_code_or_raw(record.get("lang") or "en")
        text = record.get("text")
        translation = record.get("translation")
        if isinstance(translation, str):
            try:
                target = language_code(record.get("translation_lang") or "en")
            except UserError as exc:
                raise UserError(f"{where}: translation_lang: {exc}") from None
            for kind in translation_tasks:
                if kind == "transcribe":
                    if isinstance(text, str):
                        corpus.examples.append(Example(audio, seconds, Task("transcribe"), text.strip(), lang))
                elif kind == "translate":
                    corpus.examples.append(Example(audio, seconds, Task("translate", target), translation.strip(), target))
                elif isinstance(text, str):
                    answer = f"{text.strip()} {SEPARATOR} {translation.strip()}"
                    corpus.examples.append(Example(audio, seconds, Task("both", target), answer, target))
        else:
            corpus.examples.append(Example(audio, seconds, Task("transcribe"), text.strip(), lang))
    if corpus.skipped:
        log.warning("skipped %d clip(s): %s; e.g. %s", sum(corpus.skipped.values()),
                    ", ".join(f"{n} {r}" for r, n in corpus.skipped.items()), "; ".join(corpus.skipped_files[:2]))
    return corpus


def language_code_or_raw(value: str) -> str:
    """A supported language's two-letter code, or the value as given (a new language, e.g. 'sw')."""
    try:
        return language_code(value)
    except UserError:
        return value.strip().lower()


class Tokens:
    """Token ids of prompts and answers, computed once in the main process (workers get ids only)."""

    def __init__(self, tokenizer, audio_token_id: int) -> None:
        self.tokenizer = tokenizer
        self.audio_token_id = audio_token_id
        self.stop = []
        for token in ("<|end|>", "<|endoftext|>"):  # the order the model emits them in
            token_id = tokenizer.convert_tokens_to_ids(token)
            if token_id is None or (token_id == tokenizer.unk_token_id and token != tokenizer.unk_token):
                raise UserError(f"the tokenizer has no {token} token: not a Phi-4 chat tokenizer")
            self.stop.append(int(token_id))
        self.pad_id = self.stop[-1]
        self._prompts: dict[Task, tuple[list[int], list[int]]] = {}

    def prompt(self, task: Task) -> tuple[list[int], list[int]]:
        if task not in self._prompts:
            prefix, suffix = build_prompt(task).split(AUDIO_MARKER)
            encode = lambda s: self.tokenizer.encode(s, add_special_tokens=False)  # noqa: E731
            self._prompts[task] = (encode(prefix), encode(suffix))
        return self._prompts[task]

    def answers(self, examples: list[Example]) -> list[list[int]]:
        texts = [e.answer for e in examples]
        encoded = self.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
        return [list(ids) + self.stop for ids in encoded]


def plan_epoch(durations: np.ndarray, micro: int, group: int, seed: int, epoch: int,
               window: int) -> list[list[list[int]]]:
    """The epoch's optimizer steps, each a list of `group` micro-batches of `micro` example indices.

    Shuffle, sort windows of `window` global batches by duration (so a micro-batch holds clips
    of similar length and pads little), cut into micro-batches, shuffle those. A step's
    micro-batches go to processes in order: process p takes micro-batches [p*accum, (p+1)*accum).
    The trailing partial global batch is dropped (a different one each epoch).
    """
    rng = np.random.default_rng([seed, epoch])
    global_batch = micro * group
    steps = len(durations) // global_batch
    order = rng.permutation(len(durations))[: steps * global_batch]
    span = global_batch * window
    batches = []
    for start in range(0, len(order), span):
        chunk = order[start:start + span]
        chunk = chunk[np.argsort(durations[chunk], kind="stable")]
        batches += [chunk[i:i + micro].tolist() for i in range(0, len(chunk), micro)]
    batches = [batches[i] for i in rng.permutation(len(batches))]
    return [batches[s * group:(s + 1) * group] for s in range(steps)]


def validation_batches(durations: np.ndarray, batch: int, rank: int, processes: int) -> list[list[int]]:
    """Validation micro-batches of this process: longest first, dealt round-robin."""
    order = np.argsort(-durations, kind="stable")
    batches = [order[i:i + batch].tolist() for i in range(0, len(order), batch)]
    return batches[rank::processes]


class MicroBatches(torch.utils.data.Dataset):
    """Item i = one collated micro-batch: audio loaded, prompt + answer ids right-padded."""

    def __init__(self, examples: list[Example], answers: list[list[int]], tokens: Tokens,
                 batches: list[list[int]]) -> None:
        self.examples = examples
        self.answers = answers
        self.prompts = {task: tokens.prompt(task) for task in {e.task for e in examples}}
        self.audio_token_id = tokens.audio_token_id
        self.pad_id = tokens.pad_id
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> dict:
        audios, sequences, labels, kept, failed = [], [], [], [], []
        for index in self.batches[i]:
            example = self.examples[index]
            try:
                audio = load_audio(example.audio)
            except Exception as exc:  # noqa: BLE001 - a file that passed the header check but will not decode
                failed.append(f"{example.audio}: {str(exc).splitlines()[0]}")
                continue
            audio = audio[: int(30.0 * 16_000)]
            prefix, suffix = self.prompts[example.task]
            prompt = prefix + [self.audio_token_id] * num_audio_tokens(len(audio)) + suffix
            answer = self.answers[index]
            audios.append(audio)
            sequences.append(prompt + answer)
            labels.append([IGNORE] * len(prompt) + answer)
            kept.append(index)
        if not audios:
            raise UserError("every clip of a batch failed to decode: " + "; ".join(failed[:3]))
        width = max(map(len, sequences))
        input_ids = torch.full((len(sequences), width), self.pad_id, dtype=torch.long)
        label_ids = torch.full((len(sequences), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, (seq, lab) in enumerate(zip(sequences, labels)):
            input_ids[row, :len(seq)] = torch.tensor(seq)
            label_ids[row, :len(lab)] = torch.tensor(lab)
            mask[row, :len(seq)] = 1
        return {
            "input_ids": input_ids,
            "attention_mask": mask,
            "labels": label_ids,
            "audios": [torch.from_numpy(a) for a in audios],
            "indices": kept,
            "failed": failed,
            "seconds": float(sum(len(a) for a in audios) / 16_000),
        }


def loader(dataset: MicroBatches, workers: int, seed: int) -> torch.utils.data.DataLoader:
    """Micro-batches in plan order. Its own generator: creating it never touches the global RNG,
    so a resumed run's dropout masks stay those of the uninterrupted run."""
    return torch.utils.data.DataLoader(
        dataset, batch_size=None, shuffle=False, num_workers=workers,
        generator=torch.Generator().manual_seed(seed),
    )
