"""Reading any audio file as 16 kHz mono float32, and writing 16-bit 16 kHz mono wav."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from speech.errors import AudioError

SAMPLE_RATE = 16000


def read_16k(path: str | Path) -> np.ndarray:
    """Decode, downmix and resample to 16 kHz; AudioError on unreadable or empty audio."""
    try:
        samples, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        raise AudioError(f"cannot read audio {path}: {exc}") from None
    samples = samples.mean(axis=1)
    if samples.size == 0 or not np.isfinite(samples).all():
        raise AudioError(f"empty or invalid audio: {path}")
    if rate != SAMPLE_RATE:
        samples = soxr.resample(samples, rate, SAMPLE_RATE, quality="HQ")
    return samples.astype(np.float32, copy=False)


def write_16k(path: str | Path, samples: np.ndarray) -> float:
    """Write 16-bit PCM wav atomically (tmp + rename); returns the duration in seconds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    sf.write(str(tmp), np.clip(samples, -1.0, 1.0), SAMPLE_RATE, subtype="PCM_16", format="WAV")
    os.replace(tmp, path)
    return len(samples) / SAMPLE_RATE
