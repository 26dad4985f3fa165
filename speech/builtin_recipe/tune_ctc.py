"""Pick the CTC head's decoding weight on development clips and store it with the head.

CTC rescoring (speech/ctc.py) scores each candidate transcript as
``w * log P_ctc + (1 - w) * log P_lm``. The best ``w`` (and beam) depends on how good the LM and
the head each are, so it is measured, on dev clips only (never the test sets), and written into
``ctc_head.safetensors``'s metadata, where `SpeechModel.load` reads it.

    python -m speech.builtin_recipe.tune_ctc --model speech/builtin/model \\
        --manifest work/builtin/data/tts_espeak/dev.jsonl --manifest work/builtin/data/asterisk_en/dev.jsonl \\
        --clips 160 --weights 0 0.3 0.5 0.7 --beams 8 16 --write
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import time
from pathlib import Path

import jiwer
from safetensors import safe_open
from safetensors.torch import save_file
from whisper_normalizer.english import EnglishTextNormalizer

from encoder.audio import load_audio
from speech.ctc import HEAD_FILE
from speech.finetune.data import read_manifests
from speech.model import SpeechModel

log = logging.getLogger("speech.builtin_recipe.tune_ctc")


def store_weight(model_dir: Path, weight: float, beam: int, record: dict) -> None:
    """Rewrite the head file with `decode_weight` and `beam` (and how they were chosen) in its metadata."""
    path = model_dir / HEAD_FILE
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta["decode_weight"], meta["beam"] = str(weight), str(beam)
    meta["decode_weight_tuning"] = json.dumps(record)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, type=Path, help="native model folder with a ctc_head.safetensors")
    parser.add_argument("--manifest", action="append", required=True, help="dev manifests (transcription)")
    parser.add_argument("--clips", type=int, default=160, help="random sample of this many dev clips (seed 0)")
    parser.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.3, 0.5, 0.7])
    parser.add_argument("--beams", type=int, nargs="+", default=[8, 16], help="CTC beam widths to try")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--write", action="store_true", help="store the best weight in the head's metadata")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    if not (args.model / HEAD_FILE).exists():
        raise SystemExit(f"error: {args.model} has no {HEAD_FILE}")
    examples = [e for e in read_manifests(args.manifest).examples if e.task.kind == "transcribe"]
    random.Random(0).shuffle(examples)
    examples = sorted(examples[: args.clips], key=lambda e: e.duration)
    audios = [load_audio(e.audio) for e in examples]
    norm = EnglishTextNormalizer()
    refs = [norm(e.answer) for e in examples]
    model = SpeechModel.load(args.model)
    results: dict[tuple[float, int], float] = {}
    for beam in args.beams:
        for weight in args.weights:
            if weight == 0 and beam != args.beams[0]:
                continue  # weight 0 is the LM alone: the beam does not matter
            model.ctc_weight, model.ctc_beam = weight, beam
            start, hyps = time.perf_counter(), []
            for i in range(0, len(audios), args.batch_size):
                hyps += model.generate(audios[i: i + args.batch_size])
            keep = [(r, norm(h)) for r, h in zip(refs, hyps) if r.strip()]
            error = jiwer.wer([r for r, _ in keep], [h for _, h in keep])
            results[(weight, beam)] = round(100 * error, 2)
            log.info("weight %.2f beam %d: dev WER %.2f %% (%d clips, %.1f s)", weight, beam, 100 * error,
                     len(keep), time.perf_counter() - start)
    weight, beam = min(results, key=results.get)
    log.info("best: weight %.2f, beam %d (dev WER %.2f %%)", weight, beam, results[(weight, beam)])
    if args.write:
        record = {"manifests": args.manifest, "clips": len(examples),
                  "dev_wer": {f"w={w} beam={b}": v for (w, b), v in results.items()}}
        store_weight(args.model, weight, beam, record)
        log.info("stored decode_weight=%.2f, beam=%d in %s", weight, beam, args.model / HEAD_FILE)


if __name__ == "__main__":
    main()
