"""One model worker thread that batches decode work from every stream (dynamic batching).

Streams submit clips from the event loop and await an asyncio future; the worker thread takes the
oldest request, waits up to `max_wait_ms` for more (up to `max_batch_size`), runs one batched
`model.generate`, and hands each text back to its stream's loop. So the event loop never runs the
model, one forward pass serves many streams, and `max_batch_size=1` is the one-at-a-time baseline.
Finals jump ahead of interims (a final is what a user waits for); an interim whose stream has moved
on (its future cancelled) is dropped before it costs anything.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np

from encoder.audio import SAMPLE_RATE
from speech.prompts import Task

log = logging.getLogger(__name__)


class Generator(Protocol):
    def generate(self, audios: list[np.ndarray], task: list[Task]) -> list[str]: ...


@dataclass(frozen=True)
class BatchOptions:
    max_batch_size: int = 16
    max_wait_ms: float = 10.0

    def __post_init__(self) -> None:
        if not 1 <= self.max_batch_size <= 1024:
            raise ValueError(f"max_batch_size must be 1..1024, got {self.max_batch_size}")
        if not 0 <= self.max_wait_ms <= 10_000:
            raise ValueError(f"max_wait_ms must be 0..10000, got {self.max_wait_ms}")


@dataclass
class _Request:
    audio: np.ndarray
    task: Task
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    urgent: bool
    enqueued: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class BatchStats:
    """What one batch did, for metrics: sizes, audio seconds, model seconds, queue wait."""

    size: int
    audio_s: float
    model_s: float
    waits_s: tuple[float, ...]
    queue_depth: int


class ModelWorker:
    """Owns the model; `await worker.decode(audio, task)` from any event loop returns its text."""

    def __init__(
        self,
        model: Generator,
        options: BatchOptions = BatchOptions(),
        on_batch: Callable[[BatchStats], None] | None = None,
    ) -> None:
        self.model = model
        self.options = options
        self._on_batch = on_batch
        self._urgent: deque[_Request] = deque()
        self._interim: deque[_Request] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="speechlora-model-worker", daemon=True)
        self.batches = 0
        self.busy_s = 0.0

    def start(self) -> "ModelWorker":
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def queue_depth(self) -> int:
        with self._cond:
            return len(self._urgent) + len(self._interim)

    def submit(self, audio: np.ndarray, task: Task, urgent: bool = True) -> asyncio.Future:
        """Queue a clip (16 kHz mono float32, <= 30 s); call from the event loop that will await it."""
        loop = asyncio.get_running_loop()
        request = _Request(audio, task, loop.create_future(), loop, urgent)
        with self._cond:
            if self._stopping:
                raise RuntimeError("model worker is stopped")
            (self._urgent if urgent else self._interim).append(request)
            self._cond.notify()
        return request.future

    async def decode(self, audio: np.ndarray, task: Task, urgent: bool = True) -> str:
        return await self.submit(audio, task, urgent)

    def _take_batch(self) -> list[_Request] | None:
        with self._cond:
            while not (self._urgent or self._interim or self._stopping):
                self._cond.wait()
            if self._stopping and not (self._urgent or self._interim):
                return None
            deadline = time.monotonic() + self.options.max_wait_ms / 1000.0
            while len(self._urgent) + len(self._interim) < self.options.max_batch_size and not self._stopping:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            batch: list[_Request] = []
            for queue in (self._urgent, self._interim):
                while queue and len(batch) < self.options.max_batch_size:
                    request = queue.popleft()
                    if not request.future.cancelled():
                        batch.append(request)
            return batch

    def _run(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            if not batch:
                continue
            started = time.monotonic()
            try:
                texts = self.model.generate([r.audio for r in batch], [r.task for r in batch])
                outcome: list[tuple[str | None, BaseException | None]] = [(t, None) for t in texts]
            except Exception as exc:  # a model failure fails this batch's requests, not the worker
                log.exception("batch of %d failed", len(batch))
                outcome = [(None, exc)] * len(batch)
            model_s = time.monotonic() - started
            self.batches += 1
            self.busy_s += model_s
            for request, (text, error) in zip(batch, outcome):
                try:
                    request.loop.call_soon_threadsafe(_resolve, request.future, text, error)
                except RuntimeError:  # that stream's loop is closed: nobody is waiting
                    pass
            if self._on_batch is not None:
                self._on_batch(
                    BatchStats(
                        size=len(batch),
                        audio_s=sum(len(r.audio) for r in batch) / SAMPLE_RATE,
                        model_s=model_s,
                        waits_s=tuple(started - r.enqueued for r in batch),
                        queue_depth=self.queue_depth,
                    )
                )


def _resolve(future: asyncio.Future, text: str | None, error: BaseException | None) -> None:
    if future.done():  # cancelled while the batch ran
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(text)
