"""New speakers from old clips: WORLD analysis and resynthesis with the voice changed.

    python -m speech.builtin_recipe.vocode --out work/builtin/data/tts_world \\
        --manifest work/builtin/data/asterisk_en/train.jsonl:x6 \\
        --manifest work/builtin/data/tts_piper/train.jsonl:1500 --jobs 2 --seed 0

Why: every voice the encoder trains on is one of a few engines' few speakers, and the one real
speaker (the Asterisk prompts) is a single woman. WORLD (pyworld, the vocoder behind many
statistical parametric voices) splits a clip into its F0 contour, spectral envelope and
aperiodicity; changing them independently and resynthesizing makes a different-sounding speaker
that says the same words with the same timing, so the transcript stays exact. Each output clip
draws its own voice:

- ``f0``: the mean pitch scaled (log-uniform in ``--f0``), so a woman's prompt becomes a man's
  and back;
- ``formant``: the spectral envelope stretched on the frequency axis (``--formant``; > 1 a
  shorter vocal tract). VTLP in training warps the mel filterbank the same way, but only here
  does the harmonic spacing (F0) move apart from the envelope;
- ``intonation``: the log-F0 contour's excursions around its mean scaled (``--intonation``),
  from flat (0, a monotone) to lively;
- and the vocoder's own sound, which the held-out statistical parametric voices (flite's CG
  voices) share and the diphone, formant and recorded voices in the mix do not.

Clips WORLD cannot analyse (no voiced frame) are copied unchanged and counted in info.json.
Writes ``OUT/train.jsonl`` (paths relative to OUT, as `speechlora data` does) and
``OUT/info.json`` with the sources, ranges, seed and counts. Needs ``pyworld`` (the ``recipe``
extra); only the recipe uses it, never the package at run time.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from speech.data.manifest import read_manifest
from speech.data.wav import SAMPLE_RATE, read_16k, write_16k
from speech.errors import UserError

FRAME_MS = 5.0


def _range(text: str, allow_zero: bool = False) -> tuple[float, float]:
    try:
        lo, hi = (float(x) for x in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: want LOW:HIGH") from None
    if not (0 <= lo if allow_zero else 0 < lo) or lo > hi:
        raise argparse.ArgumentTypeError(f"{text!r}: want LOW:HIGH with 0 {'<=' if allow_zero else '<'} LOW <= HIGH")
    return lo, hi


_COUNT = re.compile(r"^(x?)([1-9][0-9]*)$")


def _source(text: str) -> tuple[Path, str]:
    """MANIFEST[:N|:xK] -> (path, how many): N clips drawn, or every clip K times (N, K >= 1; a
    suffix that is neither is part of the path)."""
    path, _, count = text.rpartition(":")
    if not path or not _COUNT.match(count):
        path, count = text, "x1"
    return Path(path), count


def warp_envelope(sp: np.ndarray, factor: float) -> np.ndarray:
    """Stretch each frame's spectral envelope along frequency: bin k takes the value at k/factor."""
    bins = np.arange(sp.shape[1], dtype=np.float64)
    where = np.clip(bins / factor, 0, sp.shape[1] - 1)
    lo = np.floor(where).astype(int)
    hi = np.minimum(lo + 1, sp.shape[1] - 1)
    frac = where - lo
    return sp[:, lo] * (1 - frac) + sp[:, hi] * frac


def revoice(x: np.ndarray, sr: int, f0_scale: float, formant: float, intonation: float) -> np.ndarray | None:
    """One clip through WORLD with a new voice; None when it has no voiced frame."""
    import pyworld

    x = np.ascontiguousarray(x, dtype=np.float64)
    f0, t = pyworld.dio(x, sr, frame_period=FRAME_MS)
    f0 = pyworld.stonemask(x, f0, t, sr)
    voiced = f0 > 0
    if not voiced.any():
        return None
    sp = pyworld.cheaptrick(x, f0, t, sr)
    ap = pyworld.d4c(x, f0, t, sr)
    log_f0 = np.log(f0[voiced])
    mean = log_f0.mean()
    new_f0 = np.zeros_like(f0)
    new_f0[voiced] = np.exp(mean + math.log(f0_scale) + (log_f0 - mean) * intonation)
    if formant != 1.0:
        sp = warp_envelope(sp, formant)
    y = pyworld.synthesize(new_f0, np.ascontiguousarray(sp), ap, sr, frame_period=FRAME_MS)[: len(x)]
    peak = float(np.abs(y).max())
    return y * (float(np.abs(x).max()) / peak) if peak > 0 else y


def _job(args: tuple) -> dict:
    row, src, dst, params, source_voice = args
    x = read_16k(src)
    y = revoice(x, SAMPLE_RATE, **params)
    copied = y is None
    write_16k(dst, x if copied else y)
    if copied:  # the voice is the source's: say so, not the draw that was never applied
        row = {**row, "voice": f"{source_voice},copied"}
    return {**row, "copied": copied}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", action="append", required=True, type=_source,
                        help="MANIFEST[:N|:xK]: N clips drawn from it, or each clip K times (default x1)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--f0", type=_range, default=(0.6, 1.7), help="mean-pitch factor range (log-uniform)")
    parser.add_argument("--formant", type=_range, default=(0.87, 1.17), help="envelope stretch range (log-uniform)")
    parser.add_argument("--intonation", type=lambda t: _range(t, allow_zero=True), default=(0.5, 1.5),
                        help="pitch-excursion factor range (uniform; 0 is a monotone)")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    try:
        build(args)
    except UserError as exc:  # a missing or malformed manifest, an unreadable clip: one line
        raise SystemExit(f"error: {exc}") from None


def build(args: argparse.Namespace) -> None:
    rng = random.Random(args.seed)
    work = []
    for path, count in args.manifest:
        rows = list(read_manifest(path))
        if count.startswith("x"):
            picked = [r for r in rows for _ in range(int(count[1:]))]
        else:
            if int(count) > len(rows):
                print(f"note: {path} has {len(rows)} clips, fewer than the {count} asked; taking them all")
            picked = rng.sample(rows, min(int(count), len(rows)))
        for row in picked:
            src = Path(row["audio_filepath"])  # absolute: read_manifest resolved it
            params = {"f0_scale": math.exp(rng.uniform(*map(math.log, args.f0))),
                      "formant": math.exp(rng.uniform(*map(math.log, args.formant))),
                      "intonation": rng.uniform(*args.intonation)}
            rel = Path("audio/train") / f"{len(work):06d}.wav"
            source_voice = row.get("voice", row.get("source", "clip"))
            voice = ",".join([f"world:{source_voice}"] + [f"{k}={v:.3f}" for k, v in params.items()])
            out_row = {**row, "audio_filepath": str(rel), "id": f"world/{len(work):06d}", "voice": voice}
            work.append((out_row, src, args.out / rel, params, source_voice))
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with ProcessPoolExecutor(max(1, args.jobs)) as pool:
        done = list(tqdm(pool.map(_job, work, chunksize=16), total=len(work), desc=f"revoice -> {args.out.name}",
                         unit="clip"))
    copied = sum(r.pop("copied") for r in done)
    with (args.out / "train.jsonl").open("w") as f:
        for row in done:
            f.write(json.dumps(row) + "\n")
    hours = sum(r.get("duration", 0.0) for r in done) / 3600
    info = {"sources": [f"{p}:{c}" for p, c in args.manifest], "f0": args.f0, "formant": args.formant,
            "intonation": args.intonation, "seed": args.seed, "clips": len(done), "hours": round(hours, 2),
            "copied_unvoiced": copied, "seconds": round(time.monotonic() - started, 1)}
    (args.out / "info.json").write_text(json.dumps(info, indent=2) + "\n")
    print(f"{args.out / 'train.jsonl'}: {len(done)} clips, {hours:.2f} h ({copied} copied unchanged) "
          f"in {info['seconds']:.0f} s")


if __name__ == "__main__":
    main()
