"""Helpers for the service tests: speech synthesized by espeak-ng on the spot, a server in a thread."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from encoder.audio import SAMPLE_RATE, load_audio

ESPEAK = shutil.which("espeak-ng")


def synthesize(text: str, voice: str = "en-us", speed: int = 165) -> np.ndarray:
    """One utterance as 16 kHz float32, spoken by espeak-ng (silence trimmed by the voice itself)."""
    if ESPEAK is None:
        pytest.skip("espeak-ng is not installed (Debian package espeak-ng)")
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "u.wav"
        subprocess.run([ESPEAK, "-v", voice, "-s", str(speed), "-w", str(wav), text], check=True,
                       capture_output=True)
        return load_audio(wav)


@dataclass(frozen=True)
class Conversation:
    """Utterances separated by silence, with where each one's speech lies (seconds)."""

    audio: np.ndarray
    spans: list[tuple[float, float]]
    texts: list[str]

    def pcm16(self) -> bytes:
        return (np.clip(self.audio, -1, 1) * 32767).astype("<i2").tobytes()

    def write_wav(self, path: Path, rate: int = SAMPLE_RATE) -> Path:
        import soundfile as sf
        import soxr

        audio = self.audio if rate == SAMPLE_RATE else soxr.resample(self.audio, SAMPLE_RATE, rate)
        sf.write(path, audio, rate, subtype="PCM_16")
        return path


def conversation(texts: list[str], gap_s: float = 1.2, lead_s: float = 0.5, tail_s: float = 1.2,
                 voice: str = "en-us") -> Conversation:
    parts, spans, t = [np.zeros(int(lead_s * SAMPLE_RATE), np.float32)], [], lead_s
    for i, text in enumerate(texts):
        speech = synthesize(text, voice)
        spans.append((t, t + len(speech) / SAMPLE_RATE))
        parts.append(speech)
        t += len(speech) / SAMPLE_RATE
        pause = tail_s if i == len(texts) - 1 else gap_s
        parts.append(np.zeros(int(pause * SAMPLE_RATE), np.float32))
        t += pause
    return Conversation(np.concatenate(parts), spans, texts)
