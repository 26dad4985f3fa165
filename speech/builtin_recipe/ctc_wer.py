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
from encoder.conformer import ConformerEncoder
from encoder.features import LogMelFeatures
from speech.checkpoint import AUDIO_PREFIX, read_spec
from speech.ctc import load_ctc_head
from speech.finetune.data import read_manifests


def greedy_wer(model: Path, manifest: str, clips: int, batch_size: int = 8) -> tuple[float, int]:
    """(WER, clips scored) of the head's greedy transcripts on the first `clips` of `manifest`."""
    from safetensors.torch import load_file

    spec = read_spec(model)
    encoder = ConformerEncoder(spec.audio_config)
    prefix = AUDIO_PREFIX + "encoder."
    encoder.load_state_dict({k[len(prefix):]: v.float() for k, v in load_file(str(model / "model.safetensors")).items()
                             if k.startswith(prefix)})
    found = load_ctc_head(model, spec.audio_config.hidden_size, torch.device("cpu"))
    if found is None:
        raise SystemExit(f"error: {model} has no ctc_head.safetensors")
    head, _ = found
    encoder.eval()
    examples = [e for e in read_manifests([manifest]).examples if e.task.kind == "transcribe"][:clips]
    featurizer, norm = LogMelFeatures(), EnglishTextNormalizer()
    refs, hyps = [], []
    with torch.inference_mode():
        for i in range(0, len(examples), batch_size):
            batch = examples[i: i + batch_size]
            features, lengths = featurizer([load_audio(e.audio) for e in batch])
            log_probs, slots = head(*encoder(features, lengths))
            for e, lp, n in zip(batch, log_probs, slots.tolist()):
                best = lp[:n].argmax(-1).tolist()
                chars = [c for k, c in enumerate(best) if c != head.blank and (k == 0 or c != best[k - 1])]
                refs.append(norm(e.answer))
                hyps.append(norm("".join(head.chars[c] for c in chars)))
    keep = [(r, h) for r, h in zip(refs, hyps) if r.strip()]
    return jiwer.wer([r for r, _ in keep], [h for _, h in keep]), len(keep)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, type=Path, action="append", help="model folder(s) with a CTC head")
    parser.add_argument("--manifest", required=True, action="append")
    parser.add_argument("--clips", type=int, default=90, help="the first this many clips of each manifest")
    args = parser.parse_args()
    for model in args.model:
        for manifest in args.manifest:
            wer, n = greedy_wer(model, manifest, args.clips)
            print(f"{model}\t{manifest}\t{n} clips\tCTC greedy WER {100 * wer:.2f} %")


if __name__ == "__main__":
    main()
