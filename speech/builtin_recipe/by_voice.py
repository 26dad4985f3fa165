"""WER by voice of an eval results file whose clips sit in per-voice folders (``audio/test/VOICE/``).

Why: the held-out TTS set mixes five unseen voices, and the built-in model hears them very
differently (espeak-ng vs flite); one average hides that. Scored like `speechlora eval`
(Whisper's English normalizer, corpus WER).

    python -m speech.builtin_recipe.by_voice work/builtin/eval/asr/MODEL_*_DATASET_tts_heldout_*.jsonl
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from eval.metrics import wer


def by_voice(path: Path) -> dict[str, tuple[int, float]]:
    """{voice folder: (utterances, WER %)}, plus an entry per engine (the part before '_')."""
    groups: dict[str, list[tuple[str, str]]] = defaultdict(list)
    with open(path, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            voice = Path(row["audio_filepath"]).parent.name
            for key in (voice, voice.split("_")[0] + " (all)"):
                groups[key].append((row["text"], row["pred_text"]))
    out = {}
    for key, pairs in sorted(groups.items()):
        error = wer([r for r, _ in pairs], [h for _, h in pairs])
        out[key] = (len(pairs), error if error is not None else float("nan"))  # already a percentage
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", type=Path, help="results .jsonl files written by speechlora eval")
    args = parser.parse_args()
    for path in args.results:
        print(path.name)
        for voice, (n, error) in by_voice(path).items():
            print(f"  {voice:32s} {n:4d}  WER {error:6.2f} %")


if __name__ == "__main__":
    main()
