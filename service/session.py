"""One streaming recognition: PCM chunks in; interim and final results out. No gRPC in here.

The servicer pushes each audio chunk (`push`, synchronous and cheap: PCM decode, resample,
webrtcvad) and reads results from `events()`. A per-stream decode loop sends work to the shared
`ModelWorker`: a final for each utterance the endpointer closes, and, while an utterance is open,
an interim re-decode of it every `interim_interval_ms` of new speech. Finals go first: an interim
still decoding when its utterance closes is cancelled, so the final is never late for it and no
interim ever follows its own final. Stability: the words an interim shares, as a prefix, with the
previous interim of the same utterance are reported apart with high stability (Google/Riva style).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass
from typing import AsyncIterator, Callable

import numpy as np
import soxr

from encoder.audio import SAMPLE_RATE
from encoder.vad import VadOptions, speech_segments
from service.batcher import ModelWorker
from service.endpointing import Endpointer, Utterance
from service.errors import StreamError, invalid
from speech.prompts import Task, split_both

STABLE = 0.9  # stability of the prefix that survived a re-decode
UNSTABLE = 0.1  # stability of the words after it


@dataclass(frozen=True)
class StreamOptions:
    """A validated stream configuration (see service.requests for the proto -> options rules)."""

    task: Task
    sample_rate: int = SAMPLE_RATE
    channels: int = 1
    language: str = "en-US"  # as the client wrote it; echoed in results
    target_language: str | None = None
    primary: str = "transcript"  # which text leads the result: "transcript" or "translation"
    vad: VadOptions = VadOptions()
    interim_results: bool = True
    interim_interval_ms: int = 500
    max_chunk_bytes: int = 256 * 1024
    max_stream_seconds: float = 3600.0


@dataclass(frozen=True)
class Texts:
    """What the model said for one clip, split by task: transcript and/or translation."""

    transcript: str | None
    translation: str | None

    @classmethod
    def from_output(cls, task: Task, text: str) -> "Texts":
        if task.kind == "transcribe":
            return cls(text, None)
        if task.kind == "translate":
            return cls(None, text)
        return cls(*split_both(text))

    def primary(self, which: str) -> str:
        first, second = (self.translation, self.transcript) if which == "translation" else (self.transcript, self.translation)
        return first if first is not None else (second or "")


@dataclass(frozen=True)
class Interim:
    utterance: int
    stable: str  # words unchanged since the previous interim
    unstable: str  # the rest; starts with a space when `stable` is not empty
    audio_processed: float


@dataclass(frozen=True)
class Final:
    utterance: int
    texts: Texts
    start_s: float
    end_s: float
    audio_processed: float
    reason: str


def stable_split(previous: list[str], words: list[str]) -> tuple[str, str]:
    """(stable prefix, unstable rest) of `words`; the rest starts with a space after a prefix."""
    n = 0
    while n < min(len(previous), len(words)) and previous[n] == words[n]:
        n += 1
    stable, rest = " ".join(words[:n]), " ".join(words[n:])
    return stable, (" " + rest if stable and rest else rest)


class StreamSession:
    """The state of one stream. Create inside the event loop; always `await close()` at the end."""

    def __init__(
        self,
        options: StreamOptions,
        worker: ModelWorker,
        on_first_interim: Callable[[float], None] | None = None,
        on_final: Callable[[float], None] | None = None,
    ) -> None:
        self.options = options
        self.worker = worker
        self._on_first_interim = on_first_interim
        self._on_final = on_final
        self._endpointer = Endpointer(options.vad)
        self._resampler = (
            soxr.ResampleStream(options.sample_rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
            if options.sample_rate != SAMPLE_RATE
            else None
        )
        self._closed: deque[tuple[Utterance, float]] = deque()  # (utterance, when it closed)
        self._events: asyncio.Queue[Interim | Final | StreamError | None] = asyncio.Queue()
        self._wake = asyncio.Event()
        self._ended = False
        self._input_samples = 0  # at the client's rate
        self._samples = 0  # at 16 kHz
        self._interim_mark = 0  # endpointer speech samples at the last interim
        self._previous_words: list[str] = []
        self._opened_at: float | None = None  # wall time the open utterance started
        self._interims_sent = 0
        self._loop = asyncio.create_task(self._decode_loop())

    # ---- input ---------------------------------------------------------------------------
    def push(self, data: bytes) -> None:
        """Take one LINEAR_PCM chunk (16-bit little-endian, interleaved channels)."""
        if self._ended:
            raise invalid("audio after the end of the stream")
        if len(data) > self.options.max_chunk_bytes:
            raise invalid(f"audio chunk of {len(data)} bytes exceeds the {self.options.max_chunk_bytes}-byte limit; "
                          "send smaller chunks (100 ms is typical)")
        frame_bytes = 2 * self.options.channels
        if len(data) % frame_bytes:
            raise invalid(f"LINEAR_PCM chunk of {len(data)} bytes is not a whole number of 16-bit "
                          f"{self.options.channels}-channel frames ({frame_bytes} bytes each)")
        if not data:
            return
        samples = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
        if self.options.channels > 1:
            samples = samples.reshape(-1, self.options.channels).mean(axis=1)
        self._input_samples += len(samples)
        if self._input_samples / self.options.sample_rate > self.options.max_stream_seconds:
            raise StreamError("OUT_OF_RANGE", f"stream is longer than the {self.options.max_stream_seconds:g} s "
                              "limit; start a new stream")
        if self._resampler is not None:
            samples = self._resampler.resample_chunk(samples)
        self._feed(samples)

    def finish(self) -> None:
        """End of input (client half-close, or server drain): close the open utterance."""
        if self._ended:
            return
        if self._resampler is not None:
            self._feed(self._resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True))
        now = time.monotonic()
        self._closed.extend((u, now) for u in self._endpointer.flush())
        self._ended = True
        self._wake.set()

    def _feed(self, samples: np.ndarray) -> None:
        was_open = self._endpointer.is_open
        closed = self._endpointer.push(samples)
        self._samples += len(samples)
        now = time.monotonic()
        if closed or (self._endpointer.is_open and not was_open):
            self._opened_at = now if self._endpointer.is_open else None
        self._closed.extend((u, now) for u in closed)
        self._wake.set()

    # ---- output --------------------------------------------------------------------------
    async def events(self) -> AsyncIterator[Interim | Final]:
        """Results in order, until every final of the input so far is out (after `finish`)."""
        while (event := await self._events.get()) is not None:
            if isinstance(event, StreamError):
                raise event
            yield event

    def abort(self, error: StreamError) -> None:
        """End `events()` with `error` (bad input found while reading)."""
        self._ended = True
        self._events.put_nowait(error)

    async def close(self) -> None:
        self._loop.cancel()
        try:
            await self._loop
        except (asyncio.CancelledError, Exception):
            pass

    @property
    def audio_processed(self) -> float:
        return self._samples / SAMPLE_RATE

    def _wants_interim(self) -> bool:
        interval = SAMPLE_RATE * self.options.interim_interval_ms // 1000
        return (
            self.options.interim_results
            and self._endpointer.is_open
            and self._endpointer.speech_samples - self._interim_mark >= interval
        )

    async def _decode_loop(self) -> None:
        try:
            while True:
                if self._closed:
                    await self._final(*self._closed.popleft())
                elif self._wants_interim():
                    await self._interim()
                elif self._ended:
                    return
                else:
                    self._wake.clear()
                    await self._wake.wait()
        except Exception as exc:  # a failed batch ends this stream with INTERNAL, never the server
            self._events.put_nowait(StreamError("INTERNAL", f"decoding failed: {exc}"))
        finally:
            self._events.put_nowait(None)

    async def _final(self, utterance: Utterance, closed_at: float) -> None:
        text = await self.worker.decode(utterance.audio, self.options.task, urgent=True)
        self._interim_mark = 0
        self._previous_words = []
        self._interims_sent = 0
        self._events.put_nowait(Final(utterance.index, Texts.from_output(self.options.task, text),
                                      utterance.start_s, utterance.end_s, self.audio_processed, utterance.reason))
        if self._on_final is not None:
            self._on_final(time.monotonic() - closed_at)

    async def _interim(self) -> None:
        self._interim_mark = self._endpointer.speech_samples
        opened_at, index = self._opened_at, self._endpointer.next_index
        future = self.worker.submit(self._endpointer.open_audio(), self.options.task, urgent=False)
        future.add_done_callback(lambda _: self._wake.set())
        while not future.done() and not self._closed:
            self._wake.clear()
            await self._wake.wait()
        if not future.done():  # the utterance closed meanwhile: its final matters more
            future.cancel()
            return
        text = Texts.from_output(self.options.task, future.result()).primary(self.options.primary)
        words = text.split()
        stable, unstable = stable_split(self._previous_words, words)
        self._previous_words = words
        if not words:
            return
        self._events.put_nowait(Interim(index, stable, unstable, self.audio_processed))
        if self._interims_sent == 0 and self._on_first_interim is not None and opened_at is not None:
            self._on_first_interim(time.monotonic() - opened_at)
        self._interims_sent += 1


async def recognize(audio: np.ndarray, task: Task, vad: VadOptions, worker: ModelWorker) -> list[Final]:
    """A whole clip: cut by VAD into <= max_speech_s segments, decoded together, one Final each."""
    segments = speech_segments(audio, vad)
    texts = await asyncio.gather(*(worker.decode(audio[s:e], task) for s, e in segments))
    return [
        Final(i, Texts.from_output(task, text), s / SAMPLE_RATE, e / SAMPLE_RATE, e / SAMPLE_RATE, "segment")
        for i, ((s, e), text) in enumerate(zip(segments, texts))
    ]
