"""The CTC prefix search, compiled (speech/ctc_search.py) against its Python reference, side by side.

    python bench/bench_ctc_search.py                                   # built-in model, espeak-ng clips
    python bench/bench_ctc_search.py --manifest work/builtin/data/dev_unseen/dev.jsonl --clips 100
    python bench/bench_ctc_search.py --settings 64:-5 128:-5 128:-11   # beam:prune pairs

The encoder and CTC head run once; then, for each beam:prune pair, both searches decode every
clip's log-probabilities with the model's word n-gram and tuned fusion weights, alternating
compiled / Python for --rounds rounds. Printed per setting: seconds for all clips, the ratio, and
whether every n-best list and score was identical (the compiled search promises exactly the
Python search's answer; a "NO" is a bug). The first compiled call (kernel load or compile) is
made before timing.

Without --manifest it synthesizes espeak-ng clips of a few sentences (several voices and speeds),
so it runs on a fresh checkout.
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from encoder.audio import load_audio  # noqa: E402
from speech import ctc_search  # noqa: E402
from speech.ctc import prefix_beam_search, prefix_beam_search_python  # noqa: E402
from speech.model import SpeechModel  # noqa: E402

SENTENCES = ["the weather will be warm and sunny tomorrow", "thank you for calling please hold the line",
             "seven eight nine ten eleven twelve", "the quick brown fox jumps over the lazy dog",
             "please leave your message after the tone", "all of our operators are busy at the moment"]
VOICES = ["en-us+m8", "en-us+f5", "en+klatt", "en-us"]


def espeak_clips(folder: Path) -> list[Path]:
    paths = []
    for i, text in enumerate(SENTENCES):
        for j, voice in enumerate(VOICES):
            path = folder / f"{i}_{j}.wav"
            subprocess.run(["espeak-ng", "-v", voice, "-s", str(140 + 15 * j), "-w", str(path), text], check=True)
            paths.append(path)
    return paths


def manifest_clips(manifests: list[str], clips: int) -> list[Path]:
    from speech.finetune.data import read_manifests

    found = [Path(e.audio) for e in read_manifests(manifests).examples if e.task.kind == "transcribe"]
    random.Random(0).shuffle(found)
    return found[:clips]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="model folder with a CTC head (default: built-in)")
    parser.add_argument("--manifest", action="append", default=[], help="clips to decode (default: espeak-ng)")
    parser.add_argument("--clips", type=int, default=60, help="at most this many clips from the manifests")
    parser.add_argument("--settings", nargs="+", default=["64:-5", "128:-5", "128:-11"], metavar="BEAM:PRUNE")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the encoder")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not ctc_search.available():
        raise SystemExit("error: numba is not installed: there is no compiled search to compare")
    model = SpeechModel.load(args.model)
    if model.ctc_head is None:
        raise SystemExit("error: the model has no CTC head (ctc_head.safetensors)")
    with tempfile.TemporaryDirectory() as tmp:
        paths = manifest_clips(args.manifest, args.clips) if args.manifest else espeak_clips(Path(tmp))
        audios = [load_audio(p) for p in paths]
    rows = []
    with torch.inference_mode():
        for i in range(0, len(audios), 8):
            features, frames = model.features(audios[i: i + 8])
            states, lengths = model.encoder(features.to(model.dtype), frames)
            log_probs, slots = model.ctc_head(states.float(), lengths)
            rows += [(log_probs[j, : int(slots[j])].clone(), int(slots[j])) for j in range(len(slots))]
    seconds = sum(len(a) for a in audios) / 16_000
    chars, fusion = model.ctc_head.chars, model.fusion
    prefix_beam_search(*rows[0], chars, beam=2, fusion=fusion)  # load or compile the kernel, build its arrays
    print(f"{len(rows)} clips, {seconds:.0f} s of audio; n-gram fused: {fusion is not None}")
    print(f"{'beam:prune':>10}  {'compiled s':>10}  {'python s':>9}  {'ratio':>6}  identical")
    for setting in args.settings:
        beam, prune = int(setting.split(":")[0]), float(setting.split(":")[1])
        times = {"compiled": [], "python": []}
        answers = {}
        for _ in range(args.rounds):
            for name, search in (("compiled", prefix_beam_search), ("python", prefix_beam_search_python)):
                start = time.perf_counter()
                answers[name] = [search(lp, n, chars, beam, prune, fusion) for lp, n in rows]
                times[name].append(time.perf_counter() - start)
        fast, slow = min(times["compiled"]), min(times["python"])
        same = "yes" if answers["compiled"] == answers["python"] else "NO"
        print(f"{setting:>10}  {fast:10.2f}  {slow:9.2f}  {slow / fast:5.1f}x  {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
