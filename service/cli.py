"""`speechlora serve` and `speechlora stream`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from speech.commands import BEAM_HELP, CTC_HELP, PRUNE_HELP
from speech.errors import UserError

TOKEN_ENV = "SPEECHLORA_TOKEN"


def register(subparsers) -> None:
    serve = subparsers.add_parser(
        "serve", help="run the gRPC speech server (Riva-compatible)",
        description="Serve streaming and offline recognition/translation over gRPC. Speaks Riva's ASR API "
                    "(nvidia-riva-client works unmodified) plus speechlora.v1.Speech. Uses the built-in "
                    "model unless --model names a local Phi-4-multimodal folder.")
    serve.add_argument("--model", type=Path, help="checkpoint folder (default: the built-in model)")
    serve.add_argument("--adapter", type=Path, help="fine-tuned speech LoRA folder to use instead of the checkpoint's")
    serve.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    serve.add_argument("--ctc-weight", type=float, default=None, metavar="W", help=CTC_HELP)
    serve.add_argument("--ctc-beam", type=int, default=None, metavar="N", help=BEAM_HELP)
    serve.add_argument("--ctc-prune", type=float, default=None, metavar="LOGP", help=PRUNE_HELP)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for all; default %(default)s)")
    serve.add_argument("--port", type=int, default=50051, help="gRPC port (default %(default)s; 0 = any free)")
    serve.add_argument("--max-streams", type=int, default=32, help="concurrent streams (default %(default)s)")
    serve.add_argument("--max-stream-seconds", type=float, default=3600.0,
                       help="audio per stream (default %(default)s)")
    serve.add_argument("--max-chunk-bytes", type=int, default=256 * 1024,
                       help="bytes per audio message (default %(default)s)")
    serve.add_argument("--max-batch-size", type=int, default=16, help="clips per model batch (default %(default)s)")
    serve.add_argument("--max-wait-ms", type=float, default=10.0,
                       help="how long a batch waits to fill (default %(default)s)")
    serve.add_argument("--min-silence-ms", type=int, default=500,
                       help="trailing silence that ends an utterance (default %(default)s)")
    serve.add_argument("--vad-aggressiveness", type=int, default=2, choices=range(4), help="webrtcvad mode")
    serve.add_argument("--interim-interval-ms", type=int, default=500,
                       help="new speech between interim results (default %(default)s)")
    serve.add_argument("--token-file", type=Path,
                       help=f"file holding the bearer token clients must send (or set ${TOKEN_ENV})")
    serve.add_argument("--tls-cert", type=Path, help="PEM certificate chain (enables TLS)")
    serve.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    serve.add_argument("--tls-client-ca", type=Path, help="PEM CA: require client certificates it signed (mTLS)")
    serve.add_argument("--metrics-port", type=int, help="serve Prometheus /metrics on this HTTP port")
    serve.add_argument("--drain-grace", type=float, default=10.0,
                       help="seconds open streams get to finish on SIGTERM (default %(default)s)")
    serve.set_defaults(func=_serve)

    stream = subparsers.add_parser(
        "stream", help="stream an audio file to a server and print interim and final results",
        description="Send FILE (any format; resampled to 16 kHz PCM) to a running `speechlora serve` and print "
                    "interim lines ('..') and final lines ('[start-end] text') as they arrive.")
    stream.add_argument("file", type=Path)
    stream.add_argument("--server", default="127.0.0.1:50051", help="host:port (default %(default)s)")
    stream.add_argument("--realtime", action="store_true", help="send audio at real-time pace, like a microphone")
    stream.add_argument("--translate", metavar="LANG", help="translate the speech to LANG (en, fr, de, ...)")
    stream.add_argument("--both", action="store_true", help="with --translate: transcript and translation")
    stream.add_argument("--language", default="en-US", help="spoken language (default %(default)s)")
    stream.add_argument("--chunk-ms", type=int, default=100, help="audio per message (default %(default)s)")
    stream.add_argument("--no-interim", action="store_true", help="print finals only")
    stream.add_argument("--min-silence-ms", type=int, help="this stream's end-of-utterance silence")
    stream.add_argument("--token-file", type=Path, help=f"bearer token file (or set ${TOKEN_ENV})")
    stream.add_argument("--tls", action="store_true", help="use TLS (system roots unless --tls-ca)")
    stream.add_argument("--tls-ca", type=Path, help="PEM CA that signed the server's certificate")
    stream.set_defaults(func=_stream)


def _token(path: Path | None) -> str | None:
    if path is not None:
        try:
            token = path.read_text().strip()
        except OSError as exc:
            raise UserError(f"{path}: cannot read token file ({exc.strerror})") from None
        if not token:
            raise UserError(f"{path}: token file is empty")
        return token
    return os.environ.get(TOKEN_ENV) or None


def _existing(path: Path | None, what: str) -> Path | None:
    if path is not None and not path.is_file():
        raise UserError(f"{path}: no such {what} file")
    return path


def _serve(args: argparse.Namespace) -> int:
    import asyncio

    from encoder.vad import VadOptions
    from service.batcher import BatchOptions
    from service.config import Limits, ServerOptions, StreamDefaults
    from service.server import SpeechServer
    from speech.model import SpeechModel, builtin_path

    if args.model is not None and not args.model.is_dir():
        raise UserError(f"{args.model}: no such model folder")
    if args.model is None and not (builtin_path() / "config.json").exists():
        raise UserError("the built-in model is not part of this install; pass --model DIR")
    if bool(args.tls_cert) != bool(args.tls_key):
        raise UserError("--tls-cert and --tls-key go together")
    if args.tls_client_ca and not args.tls_cert:
        raise UserError("--tls-client-ca needs --tls-cert and --tls-key")
    try:
        options = ServerOptions(
            host=args.host, port=args.port,
            limits=Limits(max_streams=args.max_streams, max_stream_seconds=args.max_stream_seconds,
                          max_chunk_bytes=args.max_chunk_bytes),
            batch=BatchOptions(max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms),
            defaults=StreamDefaults(VadOptions(aggressiveness=args.vad_aggressiveness,
                                               min_silence_ms=args.min_silence_ms),
                                    interim_interval_ms=args.interim_interval_ms),
            token=_token(args.token_file),
            tls_cert=_existing(args.tls_cert, "certificate"), tls_key=_existing(args.tls_key, "key"),
            tls_client_ca=_existing(args.tls_client_ca, "CA"),
            metrics_port=args.metrics_port, drain_grace_s=args.drain_grace,
        )
    except ValueError as exc:
        raise UserError(str(exc)) from None
    name = args.model.resolve().name if args.model else "builtin"

    async def main() -> int:
        server = SpeechServer(options, lambda: SpeechModel.load(args.model, adapter=args.adapter, device=args.device,
                                                                   ctc_weight=args.ctc_weight, ctc_beam=args.ctc_beam,
                                                                   ctc_prune=args.ctc_prune),
                              model_name=name)
        try:
            port = await server.start()
        except (OSError, RuntimeError) as exc:
            raise UserError(f"cannot listen on {args.host}:{args.port}: {exc}") from None
        server.install_signal_handlers()
        print(f"speechlora: serving {name} on {args.host}:{port} (loading the model)", file=sys.stderr, flush=True)
        await server.wait_ready()
        print("speechlora: ready", file=sys.stderr, flush=True)
        await server.wait_closed()
        return 0

    try:
        return asyncio.run(main())
    except Exception as exc:  # a model that fails to load is a user problem (wrong folder, bad adapter)
        if isinstance(exc, UserError):
            raise
        raise UserError(f"server failed: {exc}") from None


def _stream(args: argparse.Namespace) -> int:
    import grpc

    from encoder.audio import load_audio
    from service.client import channel, recognition_config, stream
    from service.proto import speech_grpc
    from speech.prompts import language_code

    samples = load_audio(args.file)
    target = language_code(args.translate) if args.translate else None
    if args.both and not target:
        raise UserError("--both needs --translate LANG")
    if args.chunk_ms < 10 or args.chunk_ms > 5000:
        raise UserError("--chunk-ms must be within 10..5000")
    token = _token(args.token_file)
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    config = recognition_config(args.language, task="both" if args.both else None, min_silence_ms=args.min_silence_ms)
    stub = speech_grpc.SpeechStub(channel(args.server, _existing(args.tls_ca, "CA"), args.tls))
    tty = sys.stdout.isatty()
    width = 0
    try:
        for result in stream(stub, samples, config, translate_to=target, interim_results=not args.no_interim,
                             chunk_ms=args.chunk_ms, realtime=args.realtime, metadata=metadata):
            if result.is_final:
                line = f"[{result.start_s:7.2f}-{result.end_s:7.2f}] {result.text}"
                if len(result.alternatives) > 1:
                    line += "".join(f"\n{'':17}({lang}) {text}" for text, lang in result.alternatives[1:])
                print(("\r" + " " * width + "\r" if tty else "") + line, flush=True)
                width = 0
            elif tty:
                text = ".. " + result.text
                print("\r" + text + " " * max(0, width - len(text)), end="", flush=True)
                width = len(text)
            else:
                print(".. " + result.text, flush=True)
    except grpc.RpcError as exc:
        raise UserError(f"{args.server}: {exc.code().name}: {exc.details()}") from None
    return 0
