"""Deepen a model folder's conformer encoder by appending blocks that start as (near) identities.

    python -m speech.builtin_recipe.grow --model work/builtin/stage3u/model --out work/builtin/stage3u_grown --add 2
    python -m speech.builtin_recipe.grow --model work/builtin/shipped4 --out work/builtin/shipped4_grown --add 2 --float32

Why: by stage 2k more steps of the 4-block encoder had stopped paying (stages 2j and 2k tied
the encoder before them), while it still misspelled flite's own *training* voices half the time:
underfit, which capacity addresses. Each new block is a copy of the last one with its four
residual branches' output projections zeroed (both feed-forward halves' `down_proj`, attention's
`o_proj`, the convolution module's last pointwise convolution) and its closing LayerNorm reset to
weight 1, bias 0. The block then only re-normalizes its input, which is already a LayerNorm's
output, so the grown model hears as before (greedy CTC WER on dev_unseen 44.25 % before, 44.14 %
grown, untrained; keeping the copied LayerNorm's affine instead gave 46.75 %) and training starts
from the trained model rather than from a perturbed one. The config's `audio_config.num_blocks`
is raised; nothing else in the folder changes, so every loader reads the result as it is.
Tried alone as stage 2l (greedy CTC WER 2-5 points lower on every dev set, held-out TTS after
the decoder not better), then with a Piper voice as stage 2o, which ships (docs/builtin-model.md).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import load_file, save_file

BLOCKS = "model.embed_tokens_extend.audio_embed.encoder.encoders."
ZEROED = ("feed_forward_in.down_proj.", "feed_forward_out.down_proj.", "self_attn.o_proj.", "conv.ext_pw_conv_1d.")


def _float32(path: Path) -> None:
    """Rewrite one safetensors file with its floating tensors in fp32, keeping its metadata."""
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
    state = {k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in load_file(str(path)).items()}
    save_file(state, str(path), metadata=metadata)


def grow(model: Path, out: Path, add: int, float32: bool = False) -> int:
    """Copy `model` to `out` with `add` identity-like blocks appended; returns the new block count.

    `float32`: first upcast the weights and the speech LoRA (a shipped fp16 package) so that
    training goes on in fp32; the values are unchanged, so the grown model hears the same. With
    `add` 0 it only upcasts: how a new round of training starts from the shipped package when the
    fp32 files of the round before are gone."""
    if add < 0 or (add == 0 and not float32):
        raise SystemExit("error: --add must be at least 1 (or 0 with --float32: an fp32 working copy)")
    if out.resolve() == model.resolve():
        raise SystemExit("error: --out must be a new folder, not --model (it is replaced)")
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(model, out)
    config = json.loads((out / "config.json").read_text())
    if float32:
        for path in [out / "model.safetensors", *sorted((out / "speech-lora").glob("*.safetensors"))]:
            _float32(path)
        config["torch_dtype"] = config["dtype"] = "float32"
    blocks = config["audio_config"]["num_blocks"]
    if add:
        _append_blocks(out / "model.safetensors", blocks, add)
        config["audio_config"]["num_blocks"] = blocks + add
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return blocks + add


def _append_blocks(weights: Path, blocks: int, add: int) -> None:
    """Append `add` copies of the last of `blocks` encoder blocks to `weights`, each made a
    near-identity (its output projections zeroed, its closing norm reset)."""
    with safe_open(str(weights), "pt") as f:
        metadata = f.metadata()
    state = load_file(str(weights))
    prefix = f"{BLOCKS}{blocks - 1}."
    last = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not last:
        raise SystemExit(f"error: no encoder block {blocks - 1} in {weights}")
    for i in range(blocks, blocks + add):
        for name, tensor in last.items():
            tensor = tensor.clone()
            if name.startswith(ZEROED):
                tensor.zero_()
            elif name.startswith("layer_norm."):  # the block's closing norm, not layer_norm_att
                tensor.fill_(1.0 if name.endswith("weight") else 0.0)
            state[f"{BLOCKS}{i}.{name}"] = tensor
    save_file(state, str(weights), metadata=metadata)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, type=Path, help="native model folder (fp32 weights, or fp16 with --float32)")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--add", type=int, default=2, help="blocks to append (default 2; 0 with --float32 only upcasts)")
    parser.add_argument("--float32", action="store_true",
                        help="upcast the weights and speech LoRA to fp32 first (from a shipped fp16 package)")
    args = parser.parse_args()
    total = grow(args.model, args.out, args.add, float32=args.float32)
    print(f"{args.out}: encoder of {total} blocks ({args.add} appended)")


if __name__ == "__main__":
    main()
