"""Concurrent real-time streams against `speechlora serve`: is batching worth it, and how many streams hold?

    python bench/bench_streams.py                      # built-in model (tiny random model if absent)
    python bench/bench_streams.py --model DIR --streams 1 4 16
    python bench/bench_streams.py --serve-args "--ctc-weight 1"   # a decoding option of the server

The server runs as its own process (`speechlora serve`), as in production, so the client threads
here never share its GIL. Each stream sends the same espeak-ng conversation (3 utterances, ~10 s)
in 100 ms chunks at real-time pace. Reported per stream count, side by side in one run:
- held: streams whose every final arrived within trailing silence + 1 s of the end of its speech;
- RTFx: audio seconds the model decoded per second it was busy (interims included);
- p50/p95 time from end of speech to final (includes the trailing silence that defines the end);
- batched vs one-at-a-time: the same 16 streams fed as fast as the server takes them, with
  --max-batch-size 16 and then 1; the ratio of audio throughput.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from service.client import recognition_config, stream  # noqa: E402
from service.proto import speech_grpc  # noqa: E402
from service_support import conversation  # noqa: E402

TEXTS = ["the quick brown fox jumps over the lazy dog", "please leave your message after the tone",
         "seven eight nine ten eleven twelve"]
MIN_SILENCE_MS = 500


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, model: Path | None, batch: int, threads: int, extra: list[str] = ()) -> None:
        self.metrics_port = free_port()
        cmd = [sys.executable, "-m", "speech.cli", "serve", "--port", "0", "--max-batch-size", str(batch),
               "--max-streams", "64", "--metrics-port", str(self.metrics_port),
               "--min-silence-ms", str(MIN_SILENCE_MS), "--device", "cpu"]
        if model is not None:
            cmd += ["--model", str(model)]
        cmd += list(extra)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads)}
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
        self.port = None
        for line in self.proc.stderr:
            if match := re.search(r"serving .* on [\d.]+:(\d+)", line):
                self.port = int(match.group(1))
            if "speechlora: ready" in line:
                break
        if self.port is None:
            raise RuntimeError("server did not start")
        threading.Thread(target=lambda: [None for _ in self.proc.stderr], daemon=True).start()

    def metric(self, name: str) -> float:
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10).read().decode()
        match = re.search(rf"^{name} ([0-9.e+-]+)$", text, re.M)
        return float(match.group(1)) if match else 0.0

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def run_streams(server: Server, audio: np.ndarray, speech_ends: list[float], n: int, realtime: bool) -> dict:
    latencies: list[list[float]] = [[] for _ in range(n)]
    counts = [0] * n
    errors: list[str] = []
    audio_before, busy_before = server.metric("speechlora_decoded_audio_seconds_total"), \
        server.metric("speechlora_model_busy_seconds_total")
    batches_before = (server.metric("speechlora_batch_size_count"), server.metric("speechlora_batch_size_sum"))

    def one(i: int) -> None:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
            stub = speech_grpc.SpeechStub(ch)
            started = time.monotonic()
            try:
                for result in stream(stub, audio, recognition_config(), realtime=realtime, timeout=600):
                    if result.is_final:
                        if counts[i] < len(speech_ends):
                            latencies[i].append(result.received_at - started - speech_ends[counts[i]])
                        counts[i] += 1
            except grpc.RpcError as exc:
                errors.append(f"{exc.code().name}: {exc.details()}")

    started = time.monotonic()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - started
    decoded = server.metric("speechlora_decoded_audio_seconds_total") - audio_before
    busy = server.metric("speechlora_model_busy_seconds_total") - busy_before
    batches = server.metric("speechlora_batch_size_count") - batches_before[0]
    clips = server.metric("speechlora_batch_size_sum") - batches_before[1]
    flat = [x for per in latencies for x in per]
    bound = MIN_SILENCE_MS / 1000 + 1.0
    held = sum(1 for per, c in zip(latencies, counts) if c == len(speech_ends) and max(per) <= bound)
    return {
        "streams": n, "wall_s": wall, "held": held, "errors": errors, "finals_ok": counts.count(len(speech_ends)),
        "rtfx": decoded / busy if busy else float("nan"), "mean_batch": clips / batches if batches else 0.0,
        "p50": float(np.percentile(flat, 50)) if flat else float("nan"),
        "p95": float(np.percentile(flat, 95)) if flat else float("nan"),
        "throughput": n * len(audio) / 16000 / wall,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="checkpoint folder (default: built-in; tiny random if absent)")
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--threads", type=int, default=2, help="torch threads in the server")
    parser.add_argument("--serve-args", default="", help="more `speechlora serve` options for both servers, "
                        "e.g. \"--ctc-weight 1\" (CTC + n-gram alone, no LM pass)")
    args = parser.parse_args()
    extra = shlex.split(args.serve_args)

    from speech.model import builtin_path

    model, label = args.model, str(args.model)
    tmp = None
    if model is None:
        if (builtin_path() / "config.json").exists():
            label = "built-in"
        else:
            from speech.tiny import write_tiny_checkpoint

            tmp = tempfile.TemporaryDirectory()
            model, label = write_tiny_checkpoint(Path(tmp.name) / "tiny"), "tiny random (built-in model absent)"
    talk = conversation(TEXTS, gap_s=1.0)
    speech_ends = [end for _, end in talk.spans]
    print(f"model: {label}; audio per stream {len(talk.audio) / 16000:.1f} s, {len(TEXTS)} utterances; "
          f"trailing silence {MIN_SILENCE_MS} ms; {os.cpu_count()} CPUs visible"
          + (f"; serve {' '.join(extra)}" if extra else ""))

    server = Server(model, batch=16, threads=args.threads, extra=extra)
    try:
        print(f"{'streams':>7} {'held':>6} {'RTFx':>7} {'batch':>6} {'p50 s':>6} {'p95 s':>6}  (real-time pace)")
        for n in args.streams:
            r = run_streams(server, talk.audio, speech_ends, n, realtime=True)
            print(f"{n:>7} {r['held']:>3}/{n:<2} {r['rtfx']:>7.1f} {r['mean_batch']:>6.1f} {r['p50']:>6.2f} "
                  f"{r['p95']:>6.2f}" + (f"  errors: {r['errors'][:2]}" if r["errors"] else ""))
        n = max(args.streams)
        batched = run_streams(server, talk.audio, speech_ends, n, realtime=False)
    finally:
        server.close()
    single_server = Server(model, batch=1, threads=args.threads, extra=extra)
    try:
        single = run_streams(single_server, talk.audio, speech_ends, n, realtime=False)
    finally:
        single_server.close()
    print(f"\n{n} streams as fast as possible: batched {batched['throughput']:.1f} audio s/s "
          f"(mean batch {batched['mean_batch']:.1f}), one-at-a-time {single['throughput']:.1f} audio s/s; "
          f"ratio {batched['throughput'] / single['throughput']:.2f}x")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
