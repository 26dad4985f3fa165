"""Speed and noise perturbation, deterministic per clip.

Speed perturbation resamples the waveform (Kaldi-style: tempo and pitch change together).
Noise is white, pink or brown (generated), or a random excerpt of a file from a noise folder,
mixed at a signal-to-noise ratio drawn from a range. Each clip's choices come from a random
generator seeded with the clip's id, so a rerun writes the same audio.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import soxr

from speech.data.wav import SAMPLE_RATE, read_16k
from speech.errors import UserError

COLORS = ("white", "pink", "brown")


@dataclasses.dataclass(frozen=True)
class Perturbation:
    """What to do to a clip; the default does nothing."""

    speeds: tuple[float, ...] = (1.0,)  # one drawn per clip
    noise_prob: float = 0.0
    snr_db: tuple[float, float] = (10.0, 30.0)
    noise_dir: str | None = None  # folder of noise recordings; generated colored noise when None

    def __post_init__(self) -> None:
        if not self.speeds or any(not 0.5 <= s <= 2.0 for s in self.speeds):
            raise UserError(f"speed factors must be within 0.5..2.0, got {self.speeds}")
        if not 0.0 <= self.noise_prob <= 1.0:
            raise UserError(f"noise probability must be within 0..1, got {self.noise_prob}")
        if self.snr_db[0] > self.snr_db[1]:
            raise UserError(f"SNR range must be low:high, got {self.snr_db}")

    @property
    def active(self) -> bool:
        return self.speeds != (1.0,) or self.noise_prob > 0


def rng_for(clip_id: str, seed: int) -> np.random.Generator:
    digest = hashlib.sha256(f"{seed}\0{clip_id}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "big"))


def change_speed(samples: np.ndarray, factor: float) -> np.ndarray:
    """Play ``factor`` times faster (shorter, higher)."""
    if factor == 1.0:
        return samples
    return soxr.resample(samples, round(SAMPLE_RATE * factor), SAMPLE_RATE, quality="HQ").astype(np.float32)


def colored_noise(n: int, color: str, rng: np.random.Generator) -> np.ndarray:
    """White (flat), pink (1/f) or brown (1/f^2) noise, unit RMS."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n)
    freqs[0] = freqs[1] if n > 1 else 1.0
    exponent = {"white": 0.0, "pink": 0.5, "brown": 1.0}[color]
    noise = np.fft.irfft(spectrum / freqs**exponent, n)
    return (noise / (np.sqrt(np.mean(noise**2)) + 1e-12)).astype(np.float32)


def _noise_files(noise_dir: str) -> list[Path]:
    files = sorted(p for p in Path(noise_dir).rglob("*") if p.suffix.lower() in (".wav", ".flac", ".ogg"))
    if not files:
        raise UserError(f"no .wav/.flac/.ogg noise files under {noise_dir}")
    return files


def add_noise(samples: np.ndarray, snr_db: float, noise: np.ndarray) -> np.ndarray:
    signal_power = float(np.mean(samples**2)) + 1e-12
    noise_power = float(np.mean(noise**2)) + 1e-12
    scale = np.sqrt(signal_power / (noise_power * 10 ** (snr_db / 10)))
    mixed = samples + scale * noise
    peak = float(np.max(np.abs(mixed)))
    return (mixed / peak * 0.98 if peak > 0.98 else mixed).astype(np.float32)


def perturb(samples: np.ndarray, p: Perturbation, clip_id: str, seed: int = 0) -> tuple[np.ndarray, dict]:
    """The perturbed clip and a record of what was done (stored in the manifest)."""
    rng = rng_for(clip_id, seed)
    applied: dict = {}
    speed = float(p.speeds[rng.integers(len(p.speeds))])
    if speed != 1.0:
        samples = change_speed(samples, speed)
        applied["speed"] = speed
    if p.noise_prob > 0 and rng.random() < p.noise_prob:
        snr = float(rng.uniform(*p.snr_db))
        if p.noise_dir:
            files = _noise_files(p.noise_dir)
            source = files[rng.integers(len(files))]
            noise = read_16k(source)
            if len(noise) < len(samples):
                noise = np.tile(noise, int(np.ceil(len(samples) / len(noise))))
            start = int(rng.integers(len(noise) - len(samples) + 1))
            noise, kind = noise[start : start + len(samples)], source.name
        else:
            kind = COLORS[rng.integers(len(COLORS))]
            noise = colored_noise(len(samples), kind, rng)
        samples = add_noise(samples, snr, noise)
        applied.update(noise=kind, snr_db=round(snr, 1))
    return samples, applied
