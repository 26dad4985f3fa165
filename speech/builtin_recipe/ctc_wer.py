"""Greedy CTC WER of a model folder's character head (stage 2's progress, no LM involved).

Stage 2 trains the encoder and `ctc_head.safetensors` alone; this is the quick check of what it
hears, per manifest: best path, blanks and repeats collapsed, Whisper's English normalizer.

    python -m speech.builtin_recipe.ctc_wer --model work/builtin/stage2e \\
        --manifest work/builtin/data/dev_unseen/dev.jsonl --manifest work/builtin/data/asterisk_en/dev.jsonl
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jiwer
import torch
from whisper_normalizer.english import EnglishTextNormalizer

from encoder.audio import load_audio
from speech.builtin_recipe.ctc import greedy_chars
from speech.finetune.data import read_manifests
from speech.model import SpeechModel


def greedy_wer(model: SpeechModel, manifest: str, clips: int, batch_size: int = 8) -> tuple[float, int]:
    """(WER, clips scored) of `model`'s head read greedily on the first `clips` of `manifest`."""
    head = model.ctc_head
    if head is None:
        raise SystemExit("error: the model folder has no ctc_head.safetensors")
    examples = [e for e in read_manifests([manifest]).examples if e.task.kind == "transcribe"][:clips]
    norm = EnglishTextNormalizer()
    refs, hyps = [], []
    with torch.inference_mode():
        for i in range(0, len(examples), batch_size):
            batch = examples[i: i + batch_size]
            features, lengths = model.features([load_audio(e.audio) for e in batch])
            states, lengths = model.encoder(features.to(model.dtype), lengths)
            log_probs, slots = head(states.float(), lengths)
            for e, lp, n in zip(batch, log_probs.cpu(), slots.tolist()):
                refs.append(norm(e.answer))
                hyps.append(norm(greedy_chars(lp, n, head.blank)))
    keep = [(r, h) for r, h in zip(refs, hyps) if r.strip()]
    return jiwer.wer([r for r, _ in keep], [h for _, h in keep]), len(keep)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, type=Path, action="append", help="model folder(s) with a CTC head")
    parser.add_argument("--manifest", required=True, action="append")
    parser.add_argument("--clips", type=int, default=90, help="the first this many clips of each manifest")
    args = parser.parse_args()
    for folder in args.model:
        model = SpeechModel.load(folder)
        for manifest in args.manifest:
            wer, n = greedy_wer(model, manifest, args.clips)
            print(f"{folder}\t{manifest}\t{n} clips\tCTC greedy WER {100 * wer:.2f} %")


if __name__ == "__main__":
    main()
