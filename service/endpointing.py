"""Streaming endpointing: cut a live 16 kHz stream into utterances with webrtcvad, frame by frame.

The offline cousin is `encoder.vad.speech_segments` (whole files); this one sees audio as it arrives
and must decide without the future: an utterance opens on the first speech frame (with
`speech_pad_ms` of audio from before it), closes once `min_silence_ms` of trailing silence has
arrived (keeping `speech_pad_ms` of it), and is cut at `max_speech_s` so no clip outgrows the
model's 30 s. Bursts with less than `min_speech_ms` of speech are noise and never become
utterances. Sample offsets are in the stream's own timeline (16 kHz samples since its start).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from encoder.audio import SAMPLE_RATE
from encoder.vad import VadOptions, WebRtcFrameClassifier


@dataclass(frozen=True)
class Utterance:
    """A closed utterance: its audio and where it lies in the stream (samples)."""

    index: int
    start: int
    end: int
    audio: np.ndarray
    reason: str  # "silence" (trailing silence), "max_length" (cut), "end_of_stream" (flushed)

    @property
    def start_s(self) -> float:
        return self.start / SAMPLE_RATE

    @property
    def end_s(self) -> float:
        return self.end / SAMPLE_RATE


class Endpointer:
    """Push float32 16 kHz audio in; get closed utterances out. `open_audio()` is the utterance so far."""

    def __init__(self, options: VadOptions) -> None:
        self.options = options
        self._vad = WebRtcFrameClassifier(options.aggressiveness)
        self._frame = SAMPLE_RATE * options.frame_ms // 1000
        self._pad_frames = max(0, options.speech_pad_ms // options.frame_ms)
        self._silence_frames = max(1, -(-options.min_silence_ms // options.frame_ms))
        self._max_frames = max(1, int(options.max_speech_s * 1000) // options.frame_ms)
        self._pending = np.zeros(0, dtype=np.float32)  # less than one frame, not yet classified
        self._position = 0  # samples classified so far (stream timeline)
        self._preroll: deque[np.ndarray] = deque(maxlen=max(1, self._pad_frames))
        self._frames: list[np.ndarray] = []  # the open utterance, frame by frame
        self._start = 0  # stream sample where the open utterance begins
        self._speech_frames = 0
        self._trailing_silence = 0
        self._index = 0
        self.speech_samples = 0  # speech frames seen in the open utterance, as samples

    @property
    def is_open(self) -> bool:
        return bool(self._frames)

    @property
    def next_index(self) -> int:
        """The index the open (or next) utterance will have."""
        return self._index

    def open_audio(self) -> np.ndarray:
        """The open utterance so far (with its leading pad), for an interim decode."""
        return np.concatenate(self._frames) if self._frames else np.zeros(0, dtype=np.float32)

    def push(self, audio: np.ndarray) -> list[Utterance]:
        self._pending = np.concatenate([self._pending, audio.astype(np.float32, copy=False)])
        whole = len(self._pending) // self._frame * self._frame
        frames, self._pending = self._pending[:whole], self._pending[whole:]
        closed: list[Utterance] = []
        for offset in range(0, whole, self._frame):
            utterance = self._step(frames[offset : offset + self._frame])
            if utterance is not None:
                closed.append(utterance)
        return closed

    def flush(self) -> list[Utterance]:
        """End of stream (or drain): close the open utterance if it holds enough speech."""
        utterance = self._close("end_of_stream", keep=len(self._frames)) if self._frames else None
        return [utterance] if utterance is not None else []

    def _step(self, frame: np.ndarray) -> Utterance | None:
        pcm = (np.clip(frame, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
        speech = self._vad.is_speech(pcm, SAMPLE_RATE)
        self._position += self._frame
        if not self._frames:
            if not speech:
                if self._pad_frames:
                    self._preroll.append(frame)
                return None
            self._frames = list(self._preroll) if self._pad_frames else []
            self._preroll.clear()
            self._start = self._position - self._frame * (len(self._frames) + 1)
            self._speech_frames = self._trailing_silence = 0
        self._frames.append(frame)
        if speech:
            self._speech_frames += 1
            self._trailing_silence = 0
        else:
            self._trailing_silence += 1
        self.speech_samples = self._speech_frames * self._frame
        if self._trailing_silence >= self._silence_frames:
            keep = len(self._frames) - self._trailing_silence + min(self._pad_frames, self._trailing_silence)
            return self._close("silence", keep)
        if len(self._frames) >= self._max_frames:
            return self._close("max_length", keep=len(self._frames))
        return None

    def _close(self, reason: str, keep: int) -> Utterance | None:
        every, self._frames = self._frames, []
        frames = every[:keep]
        # The most recent silence becomes the next utterance's pre-roll.
        self._preroll.clear()
        if reason == "silence" and self._pad_frames:
            self._preroll.extend(every[-self._pad_frames :])
        speech_ms = self._speech_frames * self.options.frame_ms
        self._speech_frames = self._trailing_silence = 0
        self.speech_samples = 0
        if speech_ms < self.options.min_speech_ms or not frames:
            return None
        audio = np.concatenate(frames)
        utterance = Utterance(self._index, self._start, self._start + len(audio), audio, reason)
        self._index += 1
        return utterance
