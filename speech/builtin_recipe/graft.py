"""Copy a native model folder with its encoder replaced by another folder's (same shapes).

Why: the encoder can keep training with CTC (stage 2b) after stage 3 has fitted the projector
and speech LoRA to it. Grafting the newer encoder onto the stage-3 model and giving stage 3 a
short refresh (`stage3r.yaml`) is much cheaper than redoing stage 3 from scratch.

The CTC head goes with the encoder it was trained on: the donor's ``ctc_head.safetensors`` replaces
the model's (a head left from the old encoder would decode the new one's states wrongly), and
without a donor head the model's is dropped. The word list and n-gram are the text's, and stay.

    python -m speech.builtin_recipe.graft --model work/builtin/stage3b/model \\
        --encoder-from work/builtin/stage2b --out work/builtin/stage3b_graft

Given ``--encoder-from`` more than once, the encoder is the mean of the donors' (in fp32), and so
is the CTC head: two points of one training run (stage 2r and 2s, the second trained on from the
first) average into an encoder that decoded dev better than either (docs/builtin-model.md).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from speech.checkpoint import AUDIO_PREFIX
from speech.ctc import HEAD_FILE

ENCODER = AUDIO_PREFIX + "encoder."


def _mean(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The element-wise mean of same-named tensors, computed in fp32, stored in the first's dtype."""
    return {k: (sum(s[k].float() for s in states) / len(states)).to(v.dtype) for k, v in states[0].items()}


def _donor_heads(donors: list[Path]) -> tuple[list[Path], dict[str, str]]:
    """The donors' CTC head files and the metadata to write with their mean, checked before
    anything is written: all donors have one or none does, and averaged heads share an alphabet."""
    heads = [d / HEAD_FILE for d in donors if (d / HEAD_FILE).exists()]
    if heads and len(heads) != len(donors):
        raise SystemExit(f"error: only {len(heads)} of {len(donors)} donors have a {HEAD_FILE} to average")
    metas = []
    for head in heads:
        with safe_open(str(head), "pt") as f:
            metas.append(f.metadata())
    shape = ("chars", "upsample")
    if any(m.get(k) != metas[0].get(k) for m in metas for k in shape):
        raise SystemExit("error: the donors' CTC heads differ in their characters or upsampling")
    # The tuned decoding settings stored beside them (weights, beam) are the first donor's: tune
    # the grafted model again (tune_ctc --write) before shipping it.
    return heads, metas[0] if metas else {}


def graft(model: Path, encoder_from: Path | list[Path], out: Path) -> int:
    """Write `out`; returns how many encoder tensors were replaced."""
    donors = [encoder_from] if isinstance(encoder_from, Path) else list(encoder_from)
    heads, head_metadata = _donor_heads(donors)
    state = load_file(str(model / "model.safetensors"))
    mine = {k for k in state if k.startswith(ENCODER)}
    encoders = []
    for path in donors:
        donor = {k: v for k, v in load_file(str(path / "model.safetensors")).items() if k.startswith(ENCODER)}
        if mine != set(donor):
            raise SystemExit(f"error: the encoders differ ({len(mine ^ set(donor))} tensor names not in both)")
        for key, tensor in donor.items():
            if tensor.shape != state[key].shape:
                raise SystemExit(f"error: {key} is {tuple(tensor.shape)} in {path}, {tuple(state[key].shape)} here")
        encoders.append(donor)
    for key, tensor in _mean(encoders).items():
        state[key] = tensor.to(state[key].dtype).contiguous()
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(model, out, ignore=shutil.ignore_patterns("model.safetensors"))
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / HEAD_FILE).unlink(missing_ok=True)
    if len(heads) == 1:
        shutil.copyfile(heads[0], out / HEAD_FILE)
    elif heads:
        save_file(_mean([load_file(str(h)) for h in heads]), str(out / HEAD_FILE), metadata=head_metadata)
    return len(mine)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, type=Path, help="native model folder (base + speech-lora/)")
    parser.add_argument("--encoder-from", required=True, type=Path, action="append",
                        help="folder whose encoder weights (and CTC head) to take; repeat to take their mean")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    n = graft(args.model, args.encoder_from, args.out)
    print(f"{args.out}: {n} encoder tensors from {' + '.join(map(str, args.encoder_from))}"
          f"{' (their mean)' if len(args.encoder_from) > 1 else ''}")


if __name__ == "__main__":
    main()
