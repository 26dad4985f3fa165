"""Copy a native model folder with its encoder replaced by another folder's (same shapes).

Why: the encoder can keep training with CTC (stage 2b) after stage 3 has fitted the projector
and speech LoRA to it. Grafting the newer encoder onto the stage-3 model and giving stage 3 a
short refresh (`stage3r.yaml`) is much cheaper than redoing stage 3 from scratch.

The CTC head goes with the encoder it was trained on: the donor's ``ctc_head.safetensors`` replaces
the model's (a head left from the old encoder would decode the new one's states wrongly), and
without a donor head the model's is dropped. The word list and n-gram are the text's, and stay.

    python -m speech.builtin_recipe.graft --model work/builtin/stage3b/model \\
        --encoder-from work/builtin/stage2b --out work/builtin/stage3b_graft
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file

from speech.checkpoint import AUDIO_PREFIX
from speech.ctc import HEAD_FILE

ENCODER = AUDIO_PREFIX + "encoder."


def graft(model: Path, encoder_from: Path, out: Path) -> int:
    """Write `out`; returns how many encoder tensors were replaced."""
    state = load_file(str(model / "model.safetensors"))
    donor = {k: v for k, v in load_file(str(encoder_from / "model.safetensors")).items() if k.startswith(ENCODER)}
    mine = {k for k in state if k.startswith(ENCODER)}
    if mine != set(donor):
        raise SystemExit(f"error: the encoders differ ({len(mine ^ set(donor))} tensor names not in both)")
    for key, tensor in donor.items():
        if tensor.shape != state[key].shape:
            raise SystemExit(f"error: {key} is {tuple(tensor.shape)} in {encoder_from}, {tuple(state[key].shape)} here")
        state[key] = tensor.to(state[key].dtype).contiguous()
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(model, out, ignore=shutil.ignore_patterns("model.safetensors"))
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / HEAD_FILE).unlink(missing_ok=True)
    if (encoder_from / HEAD_FILE).exists():
        shutil.copyfile(encoder_from / HEAD_FILE, out / HEAD_FILE)
    return len(donor)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, type=Path, help="native model folder (base + speech-lora/)")
    parser.add_argument("--encoder-from", required=True, type=Path, help="folder whose encoder weights to take")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    n = graft(args.model, args.encoder_from, args.out)
    print(f"{args.out}: {n} encoder tensors from {args.encoder_from}")


if __name__ == "__main__":
    main()
