"""Mix jsonl manifests into one, with a chosen number of lines from each (sampled or repeated).

Stage 3 of the built-in model trains task prompts on a balanced mix: the few hundred Asterisk
Spanish/French -> English pairs would vanish among 37k English transcription clips otherwise.

    python -m speech.builtin_recipe.mix --out work/builtin/data/stage3/train.jsonl \\
        work/builtin/data/tts_espeak/train.jsonl:4000 work/builtin/data/asterisk_es/train.jsonl:x3
"""

from __future__ import annotations

import argparse
import json
import os
import random
from pathlib import Path


def mix(sources: list[str], out: Path, seed: int = 0) -> int:
    rng = random.Random(seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    lines: list[dict] = []
    for source in sources:
        path, _, amount = source.partition(":")
        manifest = Path(path)
        rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
        for row in rows:  # audio paths relative to the new manifest's folder
            audio = (manifest.parent / row["audio_filepath"]).resolve()
            row["audio_filepath"] = os.path.relpath(audio, out.parent.resolve())
        if amount.startswith("x"):
            rows = rows * int(amount[1:])
        elif amount:
            rows = rng.sample(rows, min(int(amount), len(rows)))
        lines.extend(rows)
    rng.shuffle(lines)
    out.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in lines))
    return len(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sources", nargs="+", help="MANIFEST[:N | :xK]: N sampled lines, or every line K times")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"{args.out}: {mix(args.sources, args.out, args.seed)} lines")


if __name__ == "__main__":
    main()
