"""Stage 2/3 speech corpora for the built-in model, made with `speechlora data`.

    python -m speech.builtin_recipe.data --out work/builtin/data [--jobs 1] [--dry-run]

Needs ``work/builtin/text`` (from `speech.builtin_recipe.text`; made here when missing).
Writes one corpus folder per source, each with ``{train,dev,test}.jsonl`` and ``info.json``:

- ``asterisk_en``; ``asterisk_es`` and ``asterisk_fr`` carry their own transcript in ``text``
  and the English prompt in ``translation``, so one corpus serves transcription (stage 3's
  Spanish fine-tune) and X->English translation;
- ``tts_espeak``: every train/dev sentence once, by one of 99 espeak-ng voices (en-us variants
  m1..m7, f1..f4 x rate 0.85/1.0/1.2 x pitch 35/50/65) drawn per sentence;
- ``tts_flite``: 6000 sentences, flite kal16/awb x rate 0.9/1.0/1.15;
- ``tts_festival``: 2000 sentences, festival kal_diphone/ked_diphone x rate 0.9/1.0/1.15;
- ``tts_heldout``: the test sentences (never seen by tokenizer, LM or training) spoken by
  voices never used in training: espeak-ng en-us+m8, en-us+f5, en-us+klatt, flite rms, slt.

Train splits get speed (0.9/1.0/1.1) and noise perturbation (30% of clips, 10-30 dB SNR);
dev and test stay clean. Every command run and its time go to ``OUT/recipe.json``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import time
from pathlib import Path

from speech.builtin_recipe import text as text_stage

ESPEAK_TRAIN = [
    f"espeak-ng:en-us+{variant},rate={rate},pitch={pitch}"
    for variant in ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4")
    for rate in (0.85, 1.0, 1.2)
    for pitch in (35, 50, 65)
]
FLITE_TRAIN = [f"flite:{v},rate={r}" for v in ("kal16", "awb") for r in (0.9, 1.0, 1.15)]
FESTIVAL_TRAIN = [f"festival:{v},rate={r}" for v in ("kal_diphone", "ked_diphone") for r in (0.9, 1.0, 1.15)]
HELDOUT = ["espeak-ng:en-us+m8", "espeak-ng:en-us+f5", "espeak-ng:en-us+klatt", "flite:rms", "flite:slt"]
PERTURB = ["--speed", "0.9,1.0,1.1", "--noise-prob", "0.3", "--snr", "10:30"]


def commands(out: Path, text_dir: Path, jobs: int) -> list[list[str]]:
    common = ["--jobs", str(jobs), "--seed", "0"]
    pool = out / "sentences_train_dev.txt"
    lines = [s for name in ("tts_train.txt", "tts_dev.txt") for s in (text_dir / name).read_text().split("\n") if s]
    out.mkdir(parents=True, exist_ok=True)
    pool.write_text("\n".join(lines) + "\n")
    (out / "sentences_flite.txt").write_text("\n".join(lines[:6000]) + "\n")
    (out / "sentences_festival.txt").write_text("\n".join(lines[6000:8000]) + "\n")
    heldout = [s for s in (text_dir / "tts_test.txt").read_text().split("\n") if s][:1000]
    (out / "sentences_heldout.txt").write_text("\n".join(heldout) + "\n")
    for name, voices in (("voices_espeak.txt", ESPEAK_TRAIN), ("voices_flite.txt", FLITE_TRAIN),
                         ("voices_festival.txt", FESTIVAL_TRAIN), ("voices_heldout.txt", HELDOUT)):
        (out / name).write_text("\n".join(voices) + "\n")
    return [
        ["data", "asterisk", "--lang", "en", "--out", str(out / "asterisk_en"), *PERTURB, *common],
        ["data", "asterisk", "--lang", "es", "--translate-to", "en", "--out", str(out / "asterisk_es"), *PERTURB, *common],
        ["data", "asterisk", "--lang", "fr", "--translate-to", "en", "--out", str(out / "asterisk_fr"), *PERTURB, *common],
        ["data", "tts", str(out / "sentences_heldout.txt"), "--voices-file", str(out / "voices_heldout.txt"),
         "--voices-per-sentence", "1", "--splits", "test", "--out", str(out / "tts_heldout"), *common],
        ["data", "tts", str(out / "sentences_flite.txt"), "--voices-file", str(out / "voices_flite.txt"),
         "--voices-per-sentence", "1", "--splits", "train,dev", "--out", str(out / "tts_flite"), *PERTURB, *common],
        ["data", "tts", str(out / "sentences_festival.txt"), "--voices-file", str(out / "voices_festival.txt"),
         "--voices-per-sentence", "1", "--splits", "train,dev", "--out", str(out / "tts_festival"), *PERTURB, *common],
        ["data", "tts", str(pool), "--voices-file", str(out / "voices_espeak.txt"),
         "--voices-per-sentence", "1", "--splits", "train,dev", "--out", str(out / "tts_espeak"), *PERTURB, *common],
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--text-dir", type=Path, help="default OUT/../text")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    args = parser.parse_args()
    text_dir = args.text_dir or args.out.parent / "text"
    if not (text_dir / "tts_train.txt").is_file():
        text_stage.build(text_dir)
    from speech.cli import main as speechlora

    record = []
    for argv in commands(args.out, text_dir, args.jobs):
        line = "speechlora " + shlex.join(argv)
        print(line, flush=True)
        if args.dry_run:
            continue
        started = time.monotonic()
        code = speechlora(argv)
        corpus = Path(argv[argv.index("--out") + 1])
        info = json.loads((corpus / "info.json").read_text()) if (corpus / "info.json").is_file() else {}
        record.append({"command": line, "exit": code, "seconds": round(time.monotonic() - started, 1),
                       "splits": info.get("splits"), "skipped": info.get("skipped")})
        (args.out / "recipe.json").write_text(json.dumps(record, indent=2) + "\n")
        if code:
            raise SystemExit(code)


if __name__ == "__main__":
    main()
