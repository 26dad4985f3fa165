"""Voice activity detection with webrtcvad: speech segments of long files, frame decisions for streams.

Offline segmentation (long files) follows faster-whisper's shape: a frozen `VadOptions`, pure
functions over arrays. The streaming endpointer in service/ reuses `WebRtcFrameClassifier`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import webrtcvad

from encoder.audio import SAMPLE_RATE


@dataclass(frozen=True)
class VadOptions:
    """Endpointing knobs. Defaults suit conversational speech at 16 kHz.

    aggressiveness: webrtcvad mode 0 (keeps most) .. 3 (drops most non-speech).
    min_silence_ms: trailing silence that closes an utterance.
    speech_pad_ms: audio kept on both sides of detected speech (keeps soft onsets and codas).
    max_speech_s: an utterance is cut at this length (the model takes at most 30 s).
    min_speech_ms: shorter bursts are dropped as clicks.
    """

    aggressiveness: int = 2
    frame_ms: int = 30
    min_silence_ms: int = 500
    speech_pad_ms: int = 200
    max_speech_s: float = 30.0
    min_speech_ms: int = 200

    def __post_init__(self) -> None:
        if self.aggressiveness not in (0, 1, 2, 3):
            raise ValueError("aggressiveness must be 0..3")
        if self.frame_ms not in (10, 20, 30):
            raise ValueError("frame_ms must be 10, 20 or 30")
        if not 0 < self.max_speech_s <= 30.0:
            raise ValueError("max_speech_s must be in (0, 30]")
        if self.min_silence_ms < 0 or self.speech_pad_ms < 0 or self.min_speech_ms < 0:
            raise ValueError("durations must be >= 0")


class WebRtcFrameClassifier:
    """Speech / non-speech per 10, 20 or 30 ms frame of 16-bit mono PCM."""

    def __init__(self, aggressiveness: int = 2) -> None:
        self._vad = webrtcvad.Vad(aggressiveness)

    def is_speech(self, frame: bytes, sample_rate: int = SAMPLE_RATE) -> bool:
        return self._vad.is_speech(frame, sample_rate)


def float_to_pcm16(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


def frame_decisions(audio: np.ndarray, options: VadOptions = VadOptions()) -> np.ndarray:
    """One boolean per frame of a 16 kHz clip (trailing partial frame dropped)."""
    frame = SAMPLE_RATE * options.frame_ms // 1000
    pcm = float_to_pcm16(audio)
    classifier = WebRtcFrameClassifier(options.aggressiveness)
    n = len(audio) // frame
    return np.array([classifier.is_speech(pcm[i * frame * 2:(i + 1) * frame * 2]) for i in range(n)], dtype=bool)


def speech_segments(audio: np.ndarray, options: VadOptions = VadOptions()) -> list[tuple[int, int]]:
    """(start, end) sample ranges of speech, padded, each at most `max_speech_s` long.

    Utterances close after `min_silence_ms` of non-speech; an utterance reaching the maximum is
    cut at its quietest frame in the last third (not mid-word when avoidable).
    """
    frame = SAMPLE_RATE * options.frame_ms // 1000
    speech = frame_decisions(audio, options)
    silence_frames = max(1, options.min_silence_ms // options.frame_ms)
    pad = SAMPLE_RATE * options.speech_pad_ms // 1000
    max_len = int(options.max_speech_s * SAMPLE_RATE)

    raw: list[tuple[int, int]] = []
    start, silent = None, 0
    for i, is_speech in enumerate(speech):
        if is_speech:
            if start is None:
                start = i
            silent = 0
        elif start is not None:
            silent += 1
            if silent >= silence_frames:
                raw.append((start * frame, (i - silent + 1) * frame))
                start, silent = None, 0
    if start is not None:
        raw.append((start * frame, (len(speech) - silent) * frame))

    min_len = SAMPLE_RATE * options.min_speech_ms // 1000
    segments: list[tuple[int, int]] = []
    for s, e in raw:
        if e - s < min_len:
            continue
        s, e = max(0, s - pad), min(len(audio), e + pad)
        if segments and s < segments[-1][1]:  # padding made neighbours touch: split the overlap
            mid = (segments[-1][1] + s) // 2
            segments[-1] = (segments[-1][0], mid)
            s = mid
        segments.extend(_split_long(audio, s, e, max_len, frame))
    return segments


def _split_long(audio: np.ndarray, start: int, end: int, max_len: int, frame: int) -> list[tuple[int, int]]:
    out = []
    while end - start > max_len:
        lo, hi = start + (2 * max_len) // 3, start + max_len
        energies = [float(np.mean(audio[p:p + frame] ** 2)) for p in range(lo, hi - frame + 1, frame)]
        cut = lo + frame * int(np.argmin(energies)) if energies else hi
        out.append((start, cut))
        start = cut
    out.append((start, end))
    return out
