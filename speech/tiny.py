"""Write tiny Phi-4-multimodal checkpoints: real folders, real key names, random small weights.

The real checkpoint (~11 GB) is never on a developer's laptop or in CI, so every loading path is
proven on folders written here in both on-disk layouts:

* native (`model_type: phi4_multimodal`): config.json, model.safetensors (optionally sharded with
  an index), `speech-lora/` (PEFT adapter_config.json + adapter_model.safetensors);
* remote (`model_type: phi4mm`): the original config schema, sharded safetensors with the
  original encoder names and the LoRA inside (`base_layer`, `lora_A.speech`, `lora_B.vision`...).

Both get a byte-level BPE tokenizer with the Phi-4 chat and audio special tokens and a
generation_config.json with the real stop tokens. Written from the same seed, the two layouts
hold identical weights, so they must load to identical models.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from speech.checkpoint import AUDIO_PREFIX, LORA_TARGET_REGEX

PHI4_SPECIAL_TOKENS = [
    "<|endoftext|>", "<|endoftext10|>", "<|endoftext11|>", "<|assistant|>", "<|end|>", "<|user|>",
    "<|system|>", "<|tool|>", "<|/tool|>", "<|tool_call|>", "<|/tool_call|>", "<|tool_response|>", "<|tag|>",
]
_CORPUS = [
    "Transcribe the audio clip into text.", "Translate the audio to English.", "Translate the audio to French.",
    "Transcribe the audio to text, and then translate the audio to German. Use <sep> as a separator "
    "between the original transcript and the translation.", "Spanish Italian Japanese Chinese Portuguese",
    "the quick brown fox jumps over the lazy dog", "hello world, this is a test of speech recognition.",
    "please leave a message after the tone", "one two three four five six seven eight nine ten zero",
    "Bonjour le monde. Hola mundo. Hallo Welt. Ciao mondo.",
]


@dataclass(frozen=True)
class TinyDims:
    """Small enough to load in about a second; big enough that every code path is exercised."""

    lm_hidden: int = 64
    lm_layers: int = 2
    lm_heads: int = 4
    lm_kv_heads: int = 2
    lm_intermediate: int = 128
    enc_hidden: int = 64
    enc_blocks: int = 2
    enc_heads: int = 4
    enc_intermediate: int = 96
    enc_conv_channels: int = 32
    bias_max_distance: int = 50
    lora_r: int = 8
    lora_alpha: int = 16
    vocab_target: int = 400


def real_shape(lm_layers: int = 32) -> TinyDims:
    """The real checkpoint's shapes (DESIGN §2: encoder 24 x 1024, 16 heads, FFN 1536, bias distance
    500; LM hidden 3072, 24/8 heads of 128, MLP 8192; LoRA r 320 / alpha 640) with `lm_layers` LM
    layers and a small vocabulary: every kernel the real model runs, at its sizes, without its 11 GB."""
    return TinyDims(lm_hidden=3072, lm_layers=lm_layers, lm_heads=24, lm_kv_heads=8, lm_intermediate=8192,
                    enc_hidden=1024, enc_blocks=24, enc_heads=16, enc_intermediate=1536, enc_conv_channels=1024,
                    bias_max_distance=500, lora_r=320, lora_alpha=640)


def build_tokenizer(vocab_size: int = 400, corpus: list[str] | None = None):
    """A byte-level BPE that keeps Phi-4's chat/audio special tokens as single tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=PHI4_SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus or _CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>", unk_token="<|endoftext|>",
                                   additional_special_tokens=PHI4_SPECIAL_TOKENS[1:])


def _rope(dims: TinyDims, longrope: bool) -> dict:
    """Default RoPE, or the real checkpoint's kind: longrope with per-frequency factors (short ones
    for prompts within the original 4,096 positions, long ones beyond), made non-trivial here so
    that a loader that dropped them would give other logits."""
    rope = {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.75}
    if longrope:
        n = int(dims.lm_hidden // dims.lm_heads * 0.75) // 2  # rotary frequencies: 48 in the real model
        rope.update(rope_type="longrope", short_factor=[round(1.0 + 0.2 * i / n, 4) for i in range(n)],
                    long_factor=[round(1.0 + 5.0 * i / n, 4) for i in range(n)])
    return rope


def _native_config(dims: TinyDims, vocab: int, tokenizer, longrope: bool = False):
    from transformers import Phi4MultimodalConfig

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in PHI4_SPECIAL_TOKENS}
    audio = dict(hidden_size=dims.enc_hidden, intermediate_size=dims.enc_intermediate, num_blocks=dims.enc_blocks,
                 num_attention_heads=dims.enc_heads, ext_pw_out_channel=dims.enc_hidden,
                 depthwise_separable_out_channel=dims.enc_hidden, nemo_conv_channels=dims.enc_conv_channels,
                 bias_max_distance=dims.bias_max_distance, audio_token_id=ids["<|endoftext11|>"])
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                  image_token_id=ids["<|endoftext10|>"])
    return Phi4MultimodalConfig(
        vocab_size=vocab, hidden_size=dims.lm_hidden, intermediate_size=dims.lm_intermediate,
        num_hidden_layers=dims.lm_layers, num_attention_heads=dims.lm_heads, num_key_value_heads=dims.lm_kv_heads,
        max_position_embeddings=131072 if longrope else 4096, original_max_position_embeddings=4096,
        tie_word_embeddings=True, rope_parameters=_rope(dims, longrope),
        bos_token_id=ids["<|endoftext|>"], pad_token_id=ids["<|endoftext|>"],
        eos_token_id=[ids["<|end|>"], ids["<|endoftext|>"]], audio_config=audio, vision_config=vision,
    )


def _width_scale(width: int, tiny: int = 64) -> float:
    """1 up to the tiny width, then 1/sqrt(width) relative to it: wider models get proportionally
    smaller random weights, so that activations at the real checkpoint's shapes stay in a range bf16
    can hold, as trained ones do; the tiny checkpoints' weights are unchanged."""
    return min(1.0, (tiny / width) ** 0.5)


def _random_state(config, seed: int) -> dict[str, torch.Tensor]:
    """Every native weight, drawn from one seeded generator (not identity norms, not zero biases)."""
    from transformers import Phi4MultimodalForCausalLM

    with torch.device("meta"):  # shapes only: nothing allocated, fast at the real checkpoint's sizes
        model = Phi4MultimodalForCausalLM(config)
    gen = torch.Generator().manual_seed(seed)
    lm_scale, audio_scale = _width_scale(config.hidden_size), _width_scale(config.audio_config.hidden_size)
    state = {}
    for key, tensor in model.state_dict().items():
        if key == "lm_head.weight" and config.tie_word_embeddings:
            continue
        if key.endswith("global_mean"):
            t = torch.randn(tensor.shape, generator=gen) + 8.0  # log-mel values live around 5-15
        elif key.endswith("global_invstd"):
            t = 0.25 + 0.05 * torch.rand(tensor.shape, generator=gen)
        elif re.search(r"(norm|layernorm|layer_norm[^.]*)\.weight$", key) and tensor.ndim == 1:
            t = 1.0 + 0.05 * torch.randn(tensor.shape, generator=gen)
        elif key.startswith(("model.layers.", "model.embed_tokens.")) and tensor.ndim == 2:
            # Large enough that greedy decoding wanders instead of repeating one token, so a
            # decoding mismatch shows up within a few steps.
            t = 0.25 * lm_scale * torch.randn(tensor.shape, generator=gen)
        else:
            t = 0.08 * (audio_scale if "audio" in key else lm_scale) * torch.randn(tensor.shape, generator=gen)
        state[key] = t.contiguous()
    return state


def _lora_state(config, dims: TinyDims, seed: int, name: str) -> dict[str, torch.Tensor]:
    """LoRA tensors `model.layers.N.<module>.lora_{A,B}.weight` for the four target linears."""
    gen = torch.Generator().manual_seed(seed + (1 if name == "speech" else 2))
    head = config.hidden_size // config.num_attention_heads
    shapes = {
        "self_attn.qkv_proj": (config.hidden_size, (config.num_attention_heads + 2 * config.num_key_value_heads) * head),
        "self_attn.o_proj": (config.hidden_size, config.hidden_size),
        "mlp.gate_up_proj": (config.hidden_size, 2 * config.intermediate_size),
        "mlp.down_proj": (config.intermediate_size, config.hidden_size),
    }
    a_std, b_std = 0.08 * _width_scale(config.hidden_size), 0.08 * _width_scale(dims.lora_r, tiny=8)
    out = {}
    for layer in range(config.num_hidden_layers):
        for module, (fan_in, fan_out) in shapes.items():
            prefix = f"model.layers.{layer}.{module}"
            out[f"{prefix}.lora_A.weight"] = a_std * torch.randn(dims.lora_r, fan_in, generator=gen)
            out[f"{prefix}.lora_B.weight"] = b_std * torch.randn(fan_out, dims.lora_r, generator=gen)
    return out


def _save_shards(state: dict[str, torch.Tensor], root: Path, shards: int) -> None:
    from safetensors.torch import save_file

    keys = sorted(state)
    if shards <= 1:
        save_file({k: state[k] for k in keys}, str(root / "model.safetensors"), metadata={"format": "pt"})
        return
    per = -(-len(keys) // shards)
    weight_map = {}
    for i in range(shards):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = keys[i * per:(i + 1) * per]
        save_file({k: state[k] for k in part}, str(root / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in part})
    total = sum(t.numel() * t.element_size() for t in state.values())
    (root / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))


_NATIVE_TO_REMOTE = [
    (re.compile(r"(feed_forward_(?:in|out))\.gate_up_proj\."), r"\1.net.0.linear."),
    (re.compile(r"(feed_forward_(?:in|out))\.down_proj\."), r"\1.net.2."),
    (re.compile(r"(self_attn)\.(q|k|v)_proj\."), r"\1.linear_\2."),
    (re.compile(r"(self_attn)\.o_proj\."), r"\1.linear_out."),
    (re.compile(r"up_proj_for_speech\."), "audio_projection.speech.0."),
    (re.compile(r"down_proj_for_speech\."), "audio_projection.speech.2."),
    (re.compile(r"up_proj_for_vision_speech\."), "audio_projection.vision.0."),
    (re.compile(r"down_proj_for_vision_speech\."), "audio_projection.vision.2."),
]


def _remote_config(config, dims: TinyDims) -> dict:
    a = config.audio_config
    eos = config.eos_token_id
    return {
        "_name_or_path": "tiny-phi4mm", "architectures": ["Phi4MMForCausalLM"], "model_type": "phi4mm",
        "audio_processor": {"name": "cascades", "config": {
            "activation": "swish", "activation_checkpointing": {"interval": 1, "module": "transformer", "offload": False},
            "attention_dim": a.hidden_size, "attention_heads": a.num_attention_heads, "batch_norm": False,
            "bias_in_glu": True, "causal": True, "chunk_size": -1, "cnn_layer_norm": True, "conv_activation": "swish",
            "conv_glu_type": "swish", "depthwise_multiplier": 1, "depthwise_seperable_out_channel": a.hidden_size,
            "dropout_rate": 0.0, "encoder_embedding_config": {"input_size": 80}, "ext_pw_kernel_size": 1,
            "ext_pw_out_channel": a.hidden_size, "input_layer": "nemo_conv", "input_size": 80, "kernel_size": 3,
            "left_chunk": 18, "linear_units": a.intermediate_size, "nemo_conv_settings": {"conv_channels": a.nemo_conv_channels},
            "num_blocks": a.num_blocks, "relative_attention_bias_args": {"t5_bias_max_distance": a.bias_max_distance, "type": "t5"},
            "time_reduction": 8}},
        "embd_layer": {"audio_embd_layer": {"compression_rate": 8, "downsample_rate": 1, "embedding_cls": "audio",
                                            "projection_cls": "mlp", "use_conv_downsample": False, "use_qformer": False},
                       "embedding_cls": "image_audio", "image_embd_layer": {"crop_size": 448, "embedding_cls": "tune_image"}},
        "bos_token_id": config.bos_token_id, "eos_token_id": eos[-1] if isinstance(eos, list) else eos,
        "pad_token_id": config.pad_token_id, "hidden_act": "silu", "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size, "num_attention_heads": config.num_attention_heads,
        "num_hidden_layers": config.num_hidden_layers, "num_key_value_heads": config.num_key_value_heads,
        "max_position_embeddings": 4096, "original_max_position_embeddings": 4096, "partial_rotary_factor": 0.75,
        "rms_norm_eps": config.rms_norm_eps, "rope_theta": 10000.0, "rope_scaling": None, "sliding_window": None,
        "tie_word_embeddings": True, "vocab_size": config.vocab_size, "torch_dtype": "float32",
        "speech_lora": {"dp": 0.0, "layer": "((layers.*self_attn\\.(qkv|o)_proj)|(layers.*mlp\\.(gate_up|down)_proj))",
                        "lora_alpha": dims.lora_alpha, "r": dims.lora_r},
        "vision_lora": {"dp": 0.0, "layer": "layers.*((self_attn\\.(qkv_proj|o_proj))|(mlp\\.(gate_up|down)_proj))",
                        "lora_alpha": dims.lora_alpha, "r": dims.lora_r},
    }


def write_tiny_checkpoint(path: str | Path, layout: str = "native", seed: int = 0, dims: TinyDims = TinyDims(),
                          shards: int | None = None, longrope: bool = False,
                          dtype: torch.dtype = torch.float32) -> Path:
    """Write a tiny checkpoint folder in `layout` ("native" or "remote") and return its path.
    `longrope` gives the LM the real checkpoint's RoPE (native layout only); `dtype` is what the
    files store (bf16 halves a real-shape folder, as the real checkpoint stores it)."""
    if layout not in ("native", "remote"):
        raise ValueError(f"layout must be 'native' or 'remote', not {layout!r}")
    if longrope and layout != "native":
        raise ValueError("longrope is written for the native layout only")
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(dims.vocab_target)
    tokenizer.save_pretrained(str(root))
    vocab = -(-len(tokenizer) // 64) * 64
    config = _native_config(dims, vocab, tokenizer, longrope)
    def cast(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(dtype) for k, v in tensors.items()}

    state = cast(_random_state(config, seed))
    speech_lora = cast(_lora_state(config, dims, seed, "speech"))
    gen_config = {"bos_token_id": config.bos_token_id, "eos_token_id": list(config.eos_token_id),
                  "pad_token_id": config.pad_token_id, "use_cache": True}
    (root / "generation_config.json").write_text(json.dumps(gen_config, indent=2))

    if layout == "native":
        config.save_pretrained(str(root))
        _save_shards(state, root, shards or 1)
        lora_dir = root / "speech-lora"
        lora_dir.mkdir(exist_ok=True)
        from safetensors.torch import save_file

        save_file(speech_lora, str(lora_dir / "adapter_model.safetensors"), metadata={"format": "pt"})
        (lora_dir / "adapter_config.json").write_text(json.dumps({
            "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": dims.lora_r, "lora_alpha": dims.lora_alpha,
            "lora_dropout": 0.0, "bias": "none", "target_modules": LORA_TARGET_REGEX,
            "base_model_name_or_path": str(root)}, indent=2))
        return root

    vision_lora = cast(_lora_state(config, dims, seed, "vision"))
    remote = {}
    lora_modules = {k.rsplit(".lora_", 1)[0] for k in speech_lora}
    for key, tensor in state.items():
        if key.startswith(AUDIO_PREFIX):
            for pattern, repl in _NATIVE_TO_REMOTE:
                key = pattern.sub(repl, key)
            remote[key] = tensor
        elif key.endswith(".weight") and key[: -len(".weight")] in lora_modules:
            module = key[: -len(".weight")]
            remote[f"{module}.base_layer.weight"] = tensor
            for ab in "AB":
                remote[f"{module}.lora_{ab}.speech.weight"] = speech_lora[f"{module}.lora_{ab}.weight"]
                remote[f"{module}.lora_{ab}.vision.weight"] = vision_lora[f"{module}.lora_{ab}.weight"]
        else:
            remote[key] = tensor
    _save_shards(remote, root, shards or 2)
    (root / "config.json").write_text(json.dumps(_remote_config(config, dims), indent=2))
    return root
