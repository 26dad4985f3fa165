"""Files or arrays of any length -> transcripts with segment times.

Clips of at most 30 s go to the model whole. Longer ones are cut by VAD into segments of at most
30 s; segments from all inputs are decoded together in batches (sorted by length so a batch
pads little) and stitched back per input, with times in the input's own timeline.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
from tqdm import tqdm

from encoder.audio import SAMPLE_RATE, check_audio, load_audio
from encoder.vad import VadOptions, speech_segments
from speech.errors import AudioError
from speech.prompts import Task, split_both

if TYPE_CHECKING:
    from speech.model import SpeechModel

log = logging.getLogger(__name__)


@dataclass
class Segment:
    start: float  # seconds in the input's timeline
    end: float
    text: str  # transcript (transcribe/both) or translation (translate)
    translation: str = ""  # only for task "both"


@dataclass
class Transcript:
    source: str
    duration: float
    text: str
    translation: str = ""
    segments: list[Segment] = field(default_factory=list)
    error: str | None = None  # set when this input could not be processed (others still are)


def _plan(audio: np.ndarray, vad: VadOptions) -> list[tuple[int, int]]:
    if len(audio) <= vad.max_speech_s * SAMPLE_RATE:
        return [(0, len(audio))]
    return [(s, e) for s, e in speech_segments(audio, vad) if e - s >= 400]


def transcribe(model: "SpeechModel", inputs: Sequence[str | Path | np.ndarray], task: Task = Task(),
               batch_size: int = 8, vad: VadOptions | None = None, progress: bool = False) -> list[Transcript]:
    """Transcribe/translate each input; a bad input yields a Transcript with `error`, not an exception."""
    vad = vad or VadOptions()
    results: list[Transcript] = []
    work: list[tuple[int, int, int, np.ndarray]] = []  # (input index, start, end, samples)
    for i, item in enumerate(inputs):
        name = str(item) if not isinstance(item, np.ndarray) else f"array[{i}]"
        try:
            audio = load_audio(item) if not isinstance(item, np.ndarray) else check_audio(
                np.asarray(item, dtype=np.float32), name)
        except AudioError as exc:
            results.append(Transcript(name, 0.0, "", error=str(exc)))
            continue
        results.append(Transcript(name, len(audio) / SAMPLE_RATE, ""))
        plan = _plan(audio, vad)
        if not plan:
            log.warning("%s: no speech found", name)
        work.extend((i, s, e, audio[s:e]) for s, e in plan)

    order = sorted(range(len(work)), key=lambda k: len(work[k][3]), reverse=True)
    texts: dict[int, str] = {}
    bar = tqdm(total=sum(len(w[3]) for w in work) / SAMPLE_RATE, unit="audio s", disable=not progress,
               bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} audio s [{elapsed}<{remaining}]")
    for b in range(0, len(order), batch_size):
        chunk = order[b:b + batch_size]
        for k, text in zip(chunk, model.generate([work[k][3] for k in chunk], task)):
            texts[k] = text
        bar.update(sum(len(work[k][3]) for k in chunk) / SAMPLE_RATE)
    bar.close()

    for k, (i, s, e, _) in enumerate(work):
        text, translation = split_both(texts[k]) if task.kind == "both" else (texts[k], "")
        results[i].segments.append(Segment(s / SAMPLE_RATE, e / SAMPLE_RATE, text, translation))
    for r in results:
        r.text = " ".join(s.text for s in r.segments if s.text).strip()
        r.translation = " ".join(s.translation for s in r.segments if s.translation).strip()
    return results
