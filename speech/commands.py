"""`speechlora transcribe` and `speechlora info`."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from speech.prompts import LANGUAGES, TASKS, Task

MODEL_HELP = "local Phi-4-multimodal-instruct folder (remote-code or native layout); default: the built-in model"


CTC_HELP = ("weight of the model's CTC head (with its word n-gram) against the LM when decoding English "
            "transcription, 0..1 (0 = off, the LM alone; 1 = CTC + n-gram alone, fastest; default: the tuned "
            "weight stored with the head; only the built-in model has one)")
BEAM_HELP = ("beam width of the CTC prefix search (default: the tuned width stored with the head; a narrower "
             "beam decodes faster, e.g. 16 with --ctc-weight 1 for many streams on a small CPU)")
PRUNE_HELP = ("the CTC prefix search tries, in each slot, only the characters above this log-probability "
              "(negative; default: the tuned value stored with the head, -11 for the built-in model; at -5 "
              "its search runs about twice as fast, at some accuracy)")


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """--model/--adapter/--device, shared by every command that loads a model."""
    parser.add_argument("--model", metavar="DIR", help=MODEL_HELP)
    parser.add_argument("--adapter", metavar="DIR", help="a fine-tuned speech adapter folder (PEFT format)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument("--ctc-weight", type=float, default=None, metavar="W", help=CTC_HELP)
    parser.add_argument("--ctc-beam", type=int, default=None, metavar="N", help=BEAM_HELP)
    parser.add_argument("--ctc-prune", type=float, default=None, metavar="LOGP", help=PRUNE_HELP)


def _srt_time(seconds: float) -> str:
    ms = int(round(seconds * 1000))
    return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"


def _format(result, fmt: str, task: Task) -> str:
    if fmt == "json":
        return json.dumps(asdict(result), ensure_ascii=False)
    if fmt == "srt":
        blocks = []
        for n, seg in enumerate(result.segments, 1):
            body = seg.text + (f"\n{seg.translation}" if seg.translation else "")
            blocks.append(f"{n}\n{_srt_time(seg.start)} --> {_srt_time(seg.end)}\n{body}\n")
        return "\n".join(blocks)
    if task.kind == "both":
        return f"{result.text}\n{result.translation}"
    return result.text


def run_transcribe(args: argparse.Namespace) -> int:
    from speech.model import SpeechModel

    task = Task.parse(args.task, args.target_lang)
    model = SpeechModel.load(args.model, adapter=args.adapter, device=args.device, ctc_weight=args.ctc_weight,
                              ctc_beam=args.ctc_beam, ctc_prune=args.ctc_prune)
    results = model.transcribe(args.files, task=task, batch_size=args.batch_size,
                               progress=args.progress and sys.stderr.isatty())
    failed = 0
    for result in results:
        if result.error:
            failed += 1
            print(f"speechlora: error: {result.error}", file=sys.stderr)
            continue
        text = _format(result, args.format, task)
        if args.format == "text" and len(args.files) > 1:
            text = f"{result.source}: {text}"
        print(text, flush=True)
    return 1 if failed else 0


def run_info(args: argparse.Namespace) -> int:
    from speech.checkpoint import read_spec
    from speech.model import builtin_path, parameter_counts

    spec = read_spec(args.model or builtin_path())
    counts = parameter_counts(spec)
    a, lm = spec.audio_config, spec.lm_config
    print(f"folder: {spec.path}")
    print(f"layout: {spec.layout} ({'model_type phi4mm' if spec.layout == 'remote' else 'model_type phi4_multimodal'})")
    print(f"encoder: {a.num_blocks} conformer blocks, dim {a.hidden_size}, {a.num_attention_heads} heads, "
          f"FFN {a.intermediate_size}, time reduction {a.time_reduction}")
    print(f"LM: {lm.num_hidden_layers} layers, hidden {lm.hidden_size}, {lm.num_attention_heads} query / "
          f"{lm.num_key_value_heads} KV heads, vocab {lm.vocab_size}")
    if spec.lora:
        print(f"speech LoRA: r={spec.lora.r}, alpha={spec.lora.alpha}, dropout={spec.lora.dropout}")
    print(f"stop tokens: {spec.stop_token_ids}")
    print(f"decoding: {_decoding_line(Path(spec.path))}")
    print("parameters:")
    for name in ("speech LoRA", "encoder", "speech projector", "LM"):
        print(f"  {name}: {counts[name]:,}")
    return 0


def _decoding_line(root: Path) -> str:
    """How English transcription decodes in this folder, from its files (nothing loaded)."""
    from speech.ctc import HEAD_FILE, LEXICON_FILE, decode_settings, head_metadata, ngram_file

    if not (root / HEAD_FILE).exists():
        return "greedy (LM)"
    settings = decode_settings(head_metadata(root / HEAD_FILE))
    line = f"CTC rescoring (weight {settings['decode_weight']:g}, beam {settings['beam']})"
    if (ngram := ngram_file(root)) is not None:
        line += (f", word n-gram {ngram.name} (weight {settings['ngram_weight']:g}, "
                 f"word bonus {settings['word_bonus']:g}, unknown-word penalty {settings['oov_penalty']:g})")
    if (root / LEXICON_FILE).exists():
        line += f", respelling with {LEXICON_FILE}"
    return line


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "transcribe",
        help="transcribe or translate audio files",
        description=(
            "Transcribe (or translate) audio files: any format soundfile reads (wav, flac, ogg, mp3), any "
            "sample rate, mono or stereo. Files longer than 30 s are cut at pauses (VAD) into segments of at "
            "most 30 s; json and srt carry each segment's start/end in the file's timeline."
        ),
        epilog="examples:\n  speechlora transcribe talk.wav\n"
               "  speechlora transcribe a.flac b.mp3 --model ~/Phi-4-multimodal-instruct --format srt\n"
               "  speechlora transcribe fr.wav --task translate --target-lang English\n"
               "  speechlora transcribe es.wav --task both --target-lang en --format json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("files", nargs="+", metavar="FILE")
    add_model_args(p)
    p.add_argument("--task", default="transcribe", help=f"one of {', '.join(TASKS)} (default: transcribe)")
    p.add_argument("--target-lang", default="en",
                   help=f"translation target: {', '.join(f'{c}/{n}' for c, n in LANGUAGES.items())} (default: en)")
    p.add_argument("--format", choices=("text", "json", "srt"), default="text")
    p.add_argument("--batch-size", type=int, default=8, help="segments decoded together (default: 8)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")
    p.set_defaults(func=run_transcribe)

    q = sub.add_parser("info", help="describe a checkpoint folder without loading weights",
                       description="Read a folder's config alone (no weights needed) and print the layout it "
                                   "detected and the parameter counts of encoder, speech projector, speech LoRA and LM.")
    q.add_argument("--model", metavar="DIR", help=MODEL_HELP)
    q.set_defaults(func=run_info)
