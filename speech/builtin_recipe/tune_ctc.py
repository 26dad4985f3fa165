"""Pick the CTC head's decoding settings on development clips and store them with the head.

CTC rescoring (speech/ctc.py) scores each candidate transcript as
``w * (log P_ctc + alpha * ln P_ngram + beta * words) + (1 - w) * log P_lm``, the n-gram terms
only when the folder has a word n-gram (``ngram.arpa.gz``), which the beam search uses too.
The best ``w``, ``alpha``, ``beta`` and beam depend on how good the LM, the n-gram and the head
each are, so they are measured, on dev clips only (never the test sets), over the grid given,
and written into ``ctc_head.safetensors``'s metadata, where `SpeechModel.load` reads them.

    python -m speech.builtin_recipe.tune_ctc --model speech/builtin/model \\
        --manifest work/builtin/data/tts_espeak/dev.jsonl --manifest work/builtin/data/asterisk_en/dev.jsonl \\
        --manifest work/builtin/data/dev_unseen/dev.jsonl --clips 100 --weights 0.5 0.7 --beams 16 --ngram-weights 0.3 0.6 --word-bonuses 0.5 1.5 --write
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import random
import time
from pathlib import Path

import jiwer
from safetensors import safe_open
from safetensors.torch import save_file
from whisper_normalizer.english import EnglishTextNormalizer

from encoder.audio import load_audio
from speech.ctc import DEFAULT_PRUNE, HEAD_FILE, WordFusion, decode_settings, head_metadata
from speech.finetune.data import read_manifests
from speech.model import SpeechModel

log = logging.getLogger("speech.builtin_recipe.tune_ctc")

# the grid's axes: command-line name -> key in the head's decoding settings (speech.ctc.decode_settings)
TUNED = {"weights": "decode_weight", "beams": "beam", "ngram_weights": "ngram_weight", "word_bonuses": "word_bonus",
         "oov_penalties": "oov_penalty", "prunes": "prune"}


def store_weight(model_dir: Path, weight: float, beam: int, record: dict, ngram_weight: float | None = None,
                 word_bonus: float | None = None, empty_margin: float = math.inf, oov_penalty: float = 0.0,
                 prune: float | None = None) -> None:
    """Rewrite the head file with `decode_weight`, `beam` (the n-gram's `ngram_weight`, `word_bonus`
    and `oov_penalty`, the empty candidate's `empty_margin`, the search's `prune`) and how they were
    chosen in its metadata."""
    path = model_dir / HEAD_FILE
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    meta["decode_weight"], meta["beam"] = str(weight), str(beam)
    if prune is not None:
        meta["prune"] = str(prune)
    if ngram_weight is not None:
        meta["ngram_weight"], meta["word_bonus"] = str(ngram_weight), str(word_bonus)
        meta["oov_penalty"] = str(oov_penalty)
    if math.isinf(empty_margin):
        meta.pop("empty_margin", None)
    else:
        meta["empty_margin"] = str(empty_margin)
    meta["decode_weight_tuning"] = json.dumps(record)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, type=Path, help="native model folder with a ctc_head.safetensors")
    parser.add_argument("--manifest", action="append", required=True, help="dev manifests (transcription)")
    parser.add_argument("--clips", type=int, default=100, help="random sample of up to this many clips per manifest (seed 0)")
    parser.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.3, 0.5, 0.7])
    parser.add_argument("--beams", type=int, nargs="+", default=[8, 16], help="CTC beam widths to try")
    parser.add_argument("--ngram-weights", type=float, nargs="+", default=[0.5],
                        help="alpha: the word n-gram's weight (when the folder has ngram.arpa.gz)")
    parser.add_argument("--word-bonuses", type=float, nargs="+", default=[1.0], help="beta: a bonus per word")
    parser.add_argument("--oov-penalties", type=float, nargs="+", default=[0.0],
                        help="nats charged per word outside the n-gram's vocabulary, on top of its <unk> score")
    parser.add_argument("--prunes", type=float, nargs="+", default=[DEFAULT_PRUNE],
                        help="the search's pruning: characters below this log-probability in a slot are not "
                             "tried there (wider, e.g. -7, costs time and reaches characters the head hears weakly)")
    parser.add_argument("--empty-margins", type=float, nargs="+", default=[math.inf],
                        help="then, at the best of the grid: drop the empty candidate when CTC's all-blank "
                             "path is this many nats below its best spelling (inf: never drop it)")
    parser.add_argument("--keep-tuned", action="store_true",
                        help="a setting not given here (--weights, --beams, --ngram-weights, --word-bonuses, "
                             "--oov-penalties, --prunes) keeps the value stored in the head, instead of this tool's default: "
                             "a second pass over one axis (e.g. --beams 16 32) after a grid")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--write", action="store_true", help="store the best weight in the head's metadata")
    defaults = {name: parser.get_default(name) for name in TUNED}
    for name in TUNED:
        parser.set_defaults(**{name: None})
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    if not (args.model / HEAD_FILE).exists():
        raise SystemExit(f"error: {args.model} has no {HEAD_FILE}")
    meta = head_metadata(args.model / HEAD_FILE)
    stored = decode_settings(meta)
    for name, key in TUNED.items():
        if getattr(args, name) is None:
            setattr(args, name, [stored[key]] if args.keep_tuned else defaults[name])
    sampled = []  # (clip, the name of its manifest's folder: the set it is reported under)
    for manifest in args.manifest:  # a sample from each, so a small dev set still counts
        found = [e for e in read_manifests([manifest]).examples if e.task.kind == "transcribe"]
        random.Random(0).shuffle(found)
        sampled += [(e, Path(manifest).parent.name) for e in found[: args.clips]]
    sampled.sort(key=lambda pair: pair[0].duration)
    examples, sets = [e for e, _ in sampled], [name for _, name in sampled]
    audios = [load_audio(e.audio) for e in examples]
    norm = EnglishTextNormalizer()
    refs = [norm(e.answer) for e in examples]
    model = SpeechModel.load(args.model)
    fusions = ([(a, b, o) for a in args.ngram_weights for b in args.word_bonuses for o in args.oov_penalties]
               if model.fusion else [(None, None, None)])
    results: dict[tuple, float] = {}
    model.ctc_empty_margin = math.inf  # the grid runs with the old rule; margins are tried after it

    def use(weight: float, beam: int, alpha: float | None, beta: float | None, oov: float | None,
            prune: float) -> None:
        model.ctc_weight, model.ctc_beam, model.ctc_prune = weight, beam, prune
        if model.fusion:
            model.fusion = WordFusion(model.fusion.ngram, model.fusion.chars, alpha, beta, oov)

    def dev_wer() -> tuple[float, int, float]:
        """WER on all the dev clips (the figure tuned), logged per manifest too (a setting that wins
        overall by losing one set shows there)."""
        start, hyps = time.perf_counter(), []
        for i in range(0, len(audios), args.batch_size):
            hyps += model.generate(audios[i: i + args.batch_size])
        keep = [(r, norm(h), s) for r, h, s in zip(refs, hyps, sets) if r.strip()]
        error = jiwer.wer([r for r, _, _ in keep], [h for _, h, _ in keep])
        parts = {name: 100 * jiwer.wer([r for r, _, s in keep if s == name], [h for _, h, s in keep if s == name])
                 for name in dict.fromkeys(s for _, _, s in keep)}
        log.info("  by set: %s", ", ".join(f"{name} {value:.2f} %" for name, value in parts.items()))
        return round(100 * error, 2), len(keep), time.perf_counter() - start

    for prune, beam, weight, (alpha, beta, oov) in itertools.product(args.prunes, args.beams, args.weights, fusions):
        if weight == 0 and (prune, beam, alpha, beta, oov) != (args.prunes[0], args.beams[0], *fusions[0]):
            continue  # weight 0 is the LM alone: the search and the n-gram do not matter
        use(weight, beam, alpha, beta, oov, prune)
        error, n, seconds = dev_wer()
        results[(weight, beam, alpha, beta, oov, prune)] = error
        log.info("weight %.2f beam %d ngram %s bonus %s oov %s prune %s: dev WER %.2f %% (%d clips, %.1f s)", weight,
                 beam, alpha, beta, oov, prune, error, n, seconds)
    best = min(results, key=results.get)  # ties: the first in grid order
    weight, beam, alpha, beta, oov, prune = best
    log.info("best: weight %.2f, beam %d, ngram weight %s, word bonus %s, oov penalty %s, prune %s (dev WER %.2f %%)",
             weight, beam, alpha, beta, oov, prune, results[best])
    margins = {math.inf: results[best]}
    use(weight, beam, alpha, beta, oov, prune)
    for margin in [m for m in args.empty_margins if m != math.inf] if weight > 0 else []:
        model.ctc_empty_margin = margin
        margins[margin], n, seconds = dev_wer()
        log.info("  empty margin %s: dev WER %.2f %% (%.1f s)", margin, margins[margin], seconds)
    margin = min(margins, key=lambda m: (margins[m], m != math.inf, -m))  # ties: the old rule, then the wider
    log.info("empty candidate margin: %s (dev WER %.2f %%)", margin, margins[margin])
    if args.write:
        record = {"manifests": args.manifest, "clips": len(examples),
                  "dev_wer": {f"w={w} beam={b}" + (f" alpha={a} beta={c} oov={o}" if a is not None else "")
                              + f" prune={p}": v for (w, b, a, c, o, p), v in results.items()},
                  "empty_margin_dev_wer": {str(m): v for m, v in margins.items()}}
        previous = meta.get("decode_weight_tuning")
        if args.keep_tuned and previous:  # this pass refined the one before: keep its record too
            record["before"] = json.loads(previous)
        store_weight(args.model, weight, beam, record, alpha, beta, margin, oov or 0.0, prune)
        log.info("stored the settings in %s", args.model / HEAD_FILE)


if __name__ == "__main__":
    main()
