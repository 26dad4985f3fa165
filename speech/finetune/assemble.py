"""Assemble a native-layout speech model from a causal LM folder and a fresh audio encoder.

The first step of Phi-4-multimodal's recipe in miniature (the built-in model): a small Phi-3-family
LM, pretrained on text and frozen, gets a randomly initialized conformer encoder and speech
projector, and the result is written in the real checkpoint's native layout (config.json
`model_type: phi4_multimodal`, model.safetensors, tokenizer, generation_config.json) so that
`speechlora finetune` trains it (`trainable: [encoder, projector]`, `lora.init: none`) like any
other checkpoint.

The encoder's input normalization (per-mel-bin mean and inverse standard deviation, buffers the
optimizer never touches) is measured on clips of the training manifests, as the real model's was
on its training data: with the defaults (mean 0, std 1) raw log-mels around 5-15 would enter the
first convolution unnormalized.

    python -m speech.finetune.assemble --lm work/builtin/lm --out work/builtin/stage1 \\
        --manifest work/builtin/data/tts/train.jsonl --hidden 256 --blocks 4
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

from speech.checkpoint import LM_CONFIG_FIELDS, AUDIO_PREFIX
from speech.errors import UserError

_VISION_STUB = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)


def feature_stats(manifests: list[str], max_clips: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-bin mean and 1/std of log-mel frames over up to `max_clips` clips of the manifests."""
    from encoder.audio import load_audio
    from encoder.features import LogMelFeatures
    from speech.finetune.data import read_manifests

    corpus = read_manifests(manifests)
    step = max(1, len(corpus.examples) // max_clips)
    clips = sorted({e.audio for e in corpus.examples[::step]})[:max_clips]
    if not clips:
        raise UserError("no readable clips in " + ", ".join(manifests) + " to measure feature statistics on")
    featurizer = LogMelFeatures("cpu")
    total = torch.zeros(80, dtype=torch.float64)
    square = torch.zeros(80, dtype=torch.float64)
    frames = 0
    for path in clips:
        features, _ = featurizer([load_audio(path)])
        f = features[0].double()
        total += f.sum(0)
        square += (f * f).sum(0)
        frames += f.shape[0]
    mean = total / frames
    std = (square / frames - mean * mean).clamp(min=1e-6).sqrt()
    return mean.float(), (1.0 / std).float()


def assemble(lm_dir: str | Path, out: str | Path, audio: dict | None = None, manifests: list[str] = (),
             seed: int = 0) -> Path:
    """Write `out`: the LM of `lm_dir` + a random encoder/projector (dims in `audio`), native layout."""
    from safetensors.torch import save_file
    from transformers import Phi4MultimodalConfig

    from encoder.conformer import ConformerEncoder, SpeechProjector
    from speech.checkpoint import iter_safetensors, read_spec, safetensors_files
    from speech.finetune.export import TOKENIZER_FILES
    from speech.model import load_tokenizer

    lm_dir, out = Path(lm_dir), Path(out)
    try:
        lm_raw = json.loads((lm_dir / "config.json").read_text())
    except FileNotFoundError:
        raise UserError(f"{lm_dir}: no config.json (expected a transformers causal LM folder)") from None
    tokenizer = load_tokenizer(lm_dir)
    ids = {}
    for token in ("<|endoftext|>", "<|end|>", "<|endoftext10|>", "<|endoftext11|>"):
        token_id = tokenizer.convert_tokens_to_ids(token)
        if token_id is None or (token_id == tokenizer.unk_token_id and token != tokenizer.unk_token):
            raise UserError(f"{lm_dir}: the tokenizer has no {token} token (the Phi-4 chat/audio tokens are needed)")
        ids[token] = int(token_id)

    audio = {"hidden_size": 256, "intermediate_size": 1024, "num_blocks": 4, "num_attention_heads": 4,
             "nemo_conv_channels": 256, "bias_max_distance": 500, **(audio or {})}
    audio.setdefault("ext_pw_out_channel", audio["hidden_size"])
    audio.setdefault("depthwise_separable_out_channel", audio["hidden_size"])
    audio["audio_token_id"] = ids["<|endoftext11|>"]
    config = Phi4MultimodalConfig(audio_config=audio, vision_config={**_VISION_STUB,
                                                                     "image_token_id": ids["<|endoftext10|>"]}).to_dict()
    for key in LM_CONFIG_FIELDS:
        if key in lm_raw:
            config[key] = lm_raw[key]
    eos = [ids["<|end|>"], ids["<|endoftext|>"]]
    config.update(model_type="phi4_multimodal", architectures=["Phi4MultimodalForCausalLM"], eos_token_id=eos,
                  bos_token_id=ids["<|endoftext|>"], pad_token_id=ids["<|endoftext|>"], dtype="float32")

    tmp = out.with_name(f".tmp-{out.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    spec = read_spec(tmp)  # the encoder is built from the config exactly as loading will read it

    torch.manual_seed(seed)
    encoder = ConformerEncoder(spec.audio_config)
    projector = SpeechProjector(spec.audio_config.hidden_size * spec.audio_config.downsample_rate,
                                spec.lm_config.hidden_size)
    if manifests:
        mean, invstd = feature_stats(list(manifests))
        encoder.encoder_embedding.global_mean.copy_(mean)
        encoder.encoder_embedding.global_invstd.copy_(invstd)
    state = {key: tensor for key, tensor in iter_safetensors(safetensors_files(lm_dir), lambda k: True)}
    state.update({AUDIO_PREFIX + "encoder." + k: v for k, v in encoder.state_dict().items()})
    state.update({AUDIO_PREFIX + k: v for k, v in projector.state_dict().items()})
    save_file({k: v.float().contiguous() for k, v in sorted(state.items())}, str(tmp / "model.safetensors"),
              metadata={"format": "pt"})
    (tmp / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": ids["<|endoftext|>"], "eos_token_id": eos, "pad_token_id": ids["<|endoftext|>"]}, indent=2))
    for name in TOKENIZER_FILES:
        if (lm_dir / name).exists():
            shutil.copy2(lm_dir / name, tmp / name)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m speech.finetune.assemble", description=__doc__.split("\n\n")[0])
    parser.add_argument("--lm", required=True, help="causal LM folder (config.json, safetensors, tokenizer)")
    parser.add_argument("--out", required=True, help="model folder to write (native layout)")
    parser.add_argument("--manifest", action="append", default=[], help="jsonl manifest for feature statistics")
    parser.add_argument("--hidden", type=int, default=256, help="encoder width (default 256)")
    parser.add_argument("--blocks", type=int, default=4, help="conformer blocks (default 4)")
    parser.add_argument("--heads", type=int, default=4, help="attention heads (default 4)")
    parser.add_argument("--ffn", type=int, default=1024, help="feed-forward width (default 1024)")
    parser.add_argument("--conv-channels", type=int, default=256, help="subsampling conv channels (default 256)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    dims = {"hidden_size": args.hidden, "num_blocks": args.blocks, "num_attention_heads": args.heads,
            "intermediate_size": args.ffn, "nemo_conv_channels": args.conv_channels}
    try:
        print(assemble(args.lm, args.out, dims, args.manifest, args.seed))
    except UserError as exc:
        print(f"error: {exc}")
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
