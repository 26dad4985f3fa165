"""Audio in: decode any file soundfile reads, downmix to mono, resample to 16 kHz float32.

Why not torchaudio: its PyPI build needs a CUDA torch and it is in maintenance mode. soundfile
(libsndfile: wav, flac, ogg/vorbis/opus, mp3) decodes, soxr resamples (the same high-quality
resampler sox uses), librosa is only a fallback for containers libsndfile cannot open.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from speech.errors import AudioError

SAMPLE_RATE = 16_000
# Below this peak (about -80 dBFS) a clip holds nothing a recognizer can use.
SILENCE_PEAK = 1e-4


def to_mono_16k(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """Downmix (frames, channels) or (frames,) audio to mono and resample it to 16 kHz float32."""
    audio = np.asarray(samples)
    if audio.dtype.kind in "iu":  # integer PCM -> [-1, 1)
        audio = audio.astype(np.float32) / float(np.iinfo(audio.dtype).max + 1)
    audio = audio.astype(np.float32, copy=False)
    if audio.ndim == 2:
        audio = audio.mean(axis=1)
    elif audio.ndim != 1:
        raise AudioError(f"expected 1-D or (frames, channels) audio, got shape {audio.shape}")
    if sample_rate <= 0:
        raise AudioError(f"invalid sample rate {sample_rate}")
    if sample_rate != SAMPLE_RATE and audio.size:
        audio = soxr.resample(audio, sample_rate, SAMPLE_RATE, quality="HQ").astype(np.float32)
    return np.ascontiguousarray(audio)


def check_audio(audio: np.ndarray, name: str = "audio", allow_silence: bool = False) -> np.ndarray:
    """Refuse audio no model can transcribe, with a reason a user can act on."""
    if audio.size == 0:
        raise AudioError(f"{name}: empty audio (no samples)")
    if not np.all(np.isfinite(audio)):
        raise AudioError(f"{name}: audio contains NaN or infinite samples")
    if audio.size < 400:
        raise AudioError(f"{name}: audio too short ({audio.size / SAMPLE_RATE * 1000:.0f} ms; need at least 25 ms)")
    if not allow_silence and float(np.max(np.abs(audio))) < SILENCE_PEAK:
        raise AudioError(f"{name}: audio is silent (peak below -80 dBFS)")
    return audio


def _read(source: str | Path | io.BytesIO, name: str) -> np.ndarray:
    try:
        data, rate = sf.read(source, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as sf_error:
        # libsndfile cannot open some containers (e.g. mp4/m4a); librosa's audioread path can.
        try:
            import warnings

            import librosa

            if isinstance(source, io.BytesIO):
                source.seek(0)
            with warnings.catch_warnings():  # librosa warns before trying audioread; we report below
                warnings.simplefilter("ignore")
                data, rate = librosa.load(source, sr=None, mono=False)
            data = data.T if data.ndim == 2 else data
        except Exception:
            raise AudioError(f"{name}: cannot decode audio ({sf_error})") from None
    return to_mono_16k(data, int(rate))


def load_audio(path: str | Path, allow_silence: bool = False) -> np.ndarray:
    """Read an audio file (wav, flac, ogg, mp3, ... at any rate, mono or stereo) as 16 kHz mono float32."""
    path = Path(path)
    if not path.exists():
        raise AudioError(f"{path}: no such file")
    if path.is_dir():
        raise AudioError(f"{path}: is a directory, not an audio file")
    return check_audio(_read(str(path), str(path)), str(path), allow_silence)


def decode_audio_bytes(data: bytes, name: str = "audio", allow_silence: bool = False) -> np.ndarray:
    """Decode a whole encoded file held in memory (wav/flac/ogg/mp3) to 16 kHz mono float32."""
    if not data:
        raise AudioError(f"{name}: empty audio (no bytes)")
    return check_audio(_read(io.BytesIO(data), name), name, allow_silence)


def pcm16_to_float(data: bytes) -> np.ndarray:
    """Little-endian signed 16-bit PCM bytes -> float32 in [-1, 1)."""
    if len(data) % 2:
        raise AudioError(f"16-bit PCM needs an even number of bytes, got {len(data)}")
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
