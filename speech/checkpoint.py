"""Reading a Phi-4-multimodal folder: which layout it is, its configs, and its weights.

Two on-disk layouts exist, and both load from a local folder (never a hub):

* remote-code (`model_type: phi4mm`, the Hub's main branch): LoRA weights live in the main
  safetensors next to each base weight (`X.base_layer.weight`, `X.lora_A.speech.weight`, ...);
  the encoder uses the original module names (`feed_forward_in.net.0.linear`, `linear_q`, ...).
* native (`model_type: phi4_multimodal`, transformers' converted layout): plain base weights plus
  a PEFT folder `speech-lora/`.

Everything is mapped onto one set of names: the native checkpoint's, which our encoder shares.
Only safetensors are read (never pickle), shard by shard, key by key, so the vision tower and the
vision LoRA of the real checkpoint are never materialized.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch
from transformers import Phi3Config, Phi4MultimodalAudioConfig

from speech.errors import CheckpointError

AUDIO_PREFIX = "model.embed_tokens_extend.audio_embed."
# What a folder may carry beside its weights for CTC decoding (speech/ctc.py; the built-in model
# does): the head, its word list and its word n-gram (compact .npz, or ARPA; speech/ngram.py). Not
# model weights: loaders skip the head file and a full export copies them as they are.
CTC_FILES = ("ctc_head.safetensors", "lexicon.txt", "ngram.npz", "ngram.arpa.gz")
# The speech LoRA wraps these four linears of every LM layer (qkv, o, gate_up, down).
LORA_TARGET_REGEX = r"model\.layers\.\d+\.(self_attn\.(qkv_proj|o_proj)|mlp\.(gate_up_proj|down_proj))"

# remote-code encoder names -> native names (transformers' convert_phi4_multimodal_weights_to_hf.py).
_REMOTE_TO_NATIVE = [
    (re.compile(r"(encoders\.\d+\.feed_forward_(?:in|out))\.net\.0\.linear\."), r"\1.gate_up_proj."),
    (re.compile(r"(encoders\.\d+\.feed_forward_(?:in|out))\.net\.2\."), r"\1.down_proj."),
    (re.compile(r"(encoders\.\d+\.self_attn)\.linear_(q|k|v)\."), r"\1.\2_proj."),
    (re.compile(r"(encoders\.\d+\.self_attn)\.linear_out\."), r"\1.o_proj."),
    (re.compile(r"audio_projection\.speech\.0\."), "up_proj_for_speech."),
    (re.compile(r"audio_projection\.speech\.2\."), "down_proj_for_speech."),
    (re.compile(r"audio_projection\.vision\.0\."), "up_proj_for_vision_speech."),
    (re.compile(r"audio_projection\.vision\.2\."), "down_proj_for_vision_speech."),
]
_LM_KEYS = re.compile(r"^(model\.(layers\.|embed_tokens\.|norm\.)|lm_head\.)")


@dataclass(frozen=True)
class LoraSpec:
    r: int
    alpha: int
    dropout: float
    target_modules: str | list[str] = LORA_TARGET_REGEX


@dataclass
class CheckpointSpec:
    """Everything read from a folder's json files; no weights."""

    path: Path
    layout: str  # "remote" | "native" | "builtin"
    audio_config: Phi4MultimodalAudioConfig
    lm_config: Phi3Config
    lora: LoraSpec | None
    lora_dir: Path | None = None  # native: the PEFT folder
    stop_token_ids: list[int] = field(default_factory=list)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path.parent}: no {path.name} (is this a Phi-4-multimodal folder?)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid json ({exc})") from None


LM_CONFIG_FIELDS = (
    "vocab_size hidden_size intermediate_size num_hidden_layers num_attention_heads num_key_value_heads "
    "hidden_act max_position_embeddings original_max_position_embeddings rms_norm_eps tie_word_embeddings "
    "rope_scaling rope_parameters rope_theta partial_rotary_factor bos_token_id eos_token_id pad_token_id "
    "sliding_window resid_pdrop embd_pdrop attention_dropout initializer_range"
).split()


def _lm_config(raw: dict) -> Phi3Config:
    kwargs = {k: raw[k] for k in LM_CONFIG_FIELDS if k in raw and raw[k] is not None}
    # Old configs spread RoPE over rope_scaling/rope_theta/partial_rotary_factor; transformers 5
    # wants one rope_parameters dict. Build it here so both schemas load the same way.
    rope = dict(kwargs.pop("rope_parameters", None) or kwargs.pop("rope_scaling", None) or {})
    kwargs.pop("rope_scaling", None)
    if "type" in rope:
        rope.setdefault("rope_type", rope.pop("type"))
    rope.setdefault("rope_type", "default")
    if rope["rope_type"] in ("su", "yarn"):
        rope["rope_type"] = "longrope"
    rope.setdefault("rope_theta", kwargs.pop("rope_theta", 10000.0))
    rope.setdefault("partial_rotary_factor", kwargs.pop("partial_rotary_factor", 1.0))
    kwargs.pop("rope_theta", None)
    kwargs.pop("partial_rotary_factor", None)
    kwargs["rope_parameters"] = rope
    try:
        return Phi3Config(**kwargs)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"cannot build the language-model config: {exc}") from None


def _audio_config(fields: dict) -> Phi4MultimodalAudioConfig:
    """transformers' audio config from the fields it knows (saved configs carry extra keys)."""
    known = getattr(Phi4MultimodalAudioConfig, "__dataclass_fields__", None)
    return Phi4MultimodalAudioConfig(**{k: v for k, v in fields.items() if known is None or k in known})


def _remote_audio_config(raw: dict) -> Phi4MultimodalAudioConfig:
    """The remote `audio_processor.config` in transformers' names (as the official converter does)."""
    try:
        cfg = dict(raw["audio_processor"]["config"])
        embd = raw.get("embd_layer", {}).get("audio_embd_layer", {})
    except (KeyError, TypeError):
        raise CheckpointError("config.json has no audio_processor.config: not a Phi-4-multimodal checkpoint") from None
    for key in ("activation_checkpointing", "cnn_layer_norm", "input_layer", "encoder_embedding_config", "batch_norm",
                "bias_in_glu", "ext_pw_kernel_size", "depthwise_seperable_out_channel"):
        cfg.pop(key, None)
    try:
        cfg["hidden_size"] = cfg.pop("attention_dim")
        cfg["num_attention_heads"] = cfg.pop("attention_heads")
        cfg["intermediate_size"] = cfg.pop("linear_units")
        cfg["nemo_conv_channels"] = cfg.pop("nemo_conv_settings")["conv_channels"]
        cfg["bias_max_distance"] = cfg.pop("relative_attention_bias_args")["t5_bias_max_distance"]
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"audio_processor.config lacks {exc}") from None
    cfg["depthwise_separable_out_channel"] = raw["audio_processor"]["config"].get(
        "depthwise_seperable_out_channel", cfg["hidden_size"])
    if "downsample_rate" in embd:
        cfg["downsample_rate"] = embd["downsample_rate"]
    return _audio_config(cfg)


def lora_from_peft_dir(lora_dir: Path) -> LoraSpec:
    cfg = _read_json(lora_dir / "adapter_config.json")
    if cfg.get("peft_type", "LORA").upper() != "LORA":
        raise CheckpointError(f"{lora_dir}: not a LoRA adapter (peft_type {cfg.get('peft_type')})")
    try:
        return LoraSpec(int(cfg["r"]), int(cfg["lora_alpha"]), float(cfg.get("lora_dropout", 0.0)),
                        cfg.get("target_modules") or LORA_TARGET_REGEX)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{lora_dir}/adapter_config.json: missing or bad field {exc}") from None


def read_spec(path: str | Path) -> CheckpointSpec:
    """Detect the layout and read the configs of a local checkpoint folder (no weights)."""
    root = Path(path).expanduser()
    if not root.exists():
        raise CheckpointError(f"{root}: no such folder")
    if not root.is_dir():
        raise CheckpointError(f"{root}: not a folder (expected a Phi-4-multimodal checkpoint folder)")
    raw = _read_json(root / "config.json")
    model_type = raw.get("model_type")
    if model_type == "phi4mm":
        audio = _remote_audio_config(raw)
        sl = raw.get("speech_lora") or {}
        lora = LoraSpec(int(sl["r"]), int(sl["lora_alpha"]), float(sl.get("dp", 0.0))) if sl.get("r") else None
        spec = CheckpointSpec(root, "remote", audio, _lm_config(raw), lora)
    elif model_type == "phi4_multimodal":
        audio = _audio_config(raw.get("audio_config") or {})
        lora_dir = root / "speech-lora"
        lora = lora_from_peft_dir(lora_dir) if lora_dir.is_dir() else None
        layout = "builtin" if raw.get("speechlora_builtin") else "native"
        spec = CheckpointSpec(root, layout, audio, _lm_config(raw), lora, lora_dir if lora else None)
    else:
        raise CheckpointError(
            f"{root}: config.json has model_type {model_type!r}; expected 'phi4mm' (remote-code layout) "
            "or 'phi4_multimodal' (transformers' native layout)"
        )
    gen_path = root / "generation_config.json"
    eos = (json.loads(gen_path.read_text()).get("eos_token_id") if gen_path.exists() else None) or raw.get("eos_token_id")
    spec.stop_token_ids = [int(t) for t in (eos if isinstance(eos, list) else [eos] if eos is not None else [])]
    return spec


def safetensors_files(root: Path) -> list[Path]:
    """The weight files of a folder: the shards an index names, or every *.safetensors."""
    index = root / "model.safetensors.index.json"
    if index.exists():
        weight_map = _read_json(index).get("weight_map", {})
        files = sorted({root / name for name in weight_map.values()})
        missing = [f.name for f in files if not f.exists()]
        if missing:
            raise CheckpointError(f"{root}: index names missing shard(s): {', '.join(missing)}")
        return files
    files = sorted(f for f in root.glob("*.safetensors") if f.name not in CTC_FILES)
    if not files:
        if list(root.glob("*.bin")) or list(root.glob("*.pt")):
            raise CheckpointError(f"{root}: only pickle weights (*.bin/*.pt); convert them to safetensors")
        raise CheckpointError(f"{root}: no *.safetensors weight files")
    return files


def iter_safetensors(files: list[Path], keep) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (key, tensor) for keys where keep(key) is true; damaged files raise CheckpointError."""
    from safetensors import safe_open

    for file in files:
        try:
            with safe_open(str(file), framework="pt") as handle:
                for key in handle.keys():
                    if keep(key):
                        yield key, handle.get_tensor(key)
        except CheckpointError:
            raise
        except Exception as exc:  # safetensors raises its own error types for truncation/corruption
            raise CheckpointError(f"{file}: damaged safetensors file ({str(exc).splitlines()[0]})") from None


def remote_to_native_key(key: str) -> str:
    if key.startswith(AUDIO_PREFIX):
        for pattern, repl in _REMOTE_TO_NATIVE:
            key = pattern.sub(repl, key)
    return key


@dataclass
class Weights:
    encoder: dict[str, torch.Tensor] = field(default_factory=dict)
    projector: dict[str, torch.Tensor] = field(default_factory=dict)
    lm: dict[str, torch.Tensor] = field(default_factory=dict)
    lora: dict[str, torch.Tensor] = field(default_factory=dict)  # "model.layers.N...lora_A.weight"


def _wanted(key: str) -> bool:
    if key.startswith(AUDIO_PREFIX):
        return "vision" not in key
    return bool(_LM_KEYS.match(key)) and ".vision." not in key


def load_weights(spec: CheckpointSpec, dtype: torch.dtype | None = None) -> Weights:
    """Read the speech path's weights (encoder, speech projector, LM, speech LoRA) of any layout.

    Floating tensors are cast to `dtype` as they are read, so the checkpoint's own copy (bf16 for
    the real model) is freed at once: fp32 on a 24 GB CPU machine peaks near the fp32 size alone.
    """
    weights = Weights()
    for key, tensor in iter_safetensors(safetensors_files(spec.path), _wanted):
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        if spec.layout == "remote":
            key = remote_to_native_key(key)
            if ".lora_A.speech." in key or ".lora_B.speech." in key:
                weights.lora[key.replace(".speech.", ".")] = tensor
                continue
            key = key.replace(".base_layer.", ".")
        if key.startswith(AUDIO_PREFIX + "encoder."):
            weights.encoder[key[len(AUDIO_PREFIX + "encoder."):]] = tensor
        elif key.startswith(AUDIO_PREFIX):
            weights.projector[key[len(AUDIO_PREFIX):]] = tensor
        else:
            weights.lm[key] = tensor
    if spec.lora_dir is not None:
        weights.lora = read_adapter_weights(spec.lora_dir, dtype)
    if not weights.encoder or not weights.projector:
        raise CheckpointError(f"{spec.path}: no audio encoder/projector weights under {AUDIO_PREFIX!r}")
    return weights


def read_adapter_weights(adapter_dir: Path, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """A PEFT adapter's LoRA tensors, keys normalized to 'model.layers.N.<module>.lora_{A,B}.weight'."""
    file = adapter_dir / "adapter_model.safetensors"
    if not file.exists():
        if (adapter_dir / "adapter_model.bin").exists():
            raise CheckpointError(f"{adapter_dir}: only a pickle adapter_model.bin; convert it to safetensors")
        raise CheckpointError(f"{adapter_dir}: no adapter_model.safetensors")
    out = {}
    for key, tensor in iter_safetensors([file], lambda k: True):
        key = key.removeprefix("base_model.model.")
        key = re.sub(r"\.lora_(A|B)\.[^.]+\.weight$", r".lora_\1.weight", key)  # drop an adapter name
        out[key] = tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor
    return out
