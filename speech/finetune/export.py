"""Writing what a run trained, in the formats loaders already know.

* `adapter`: a PEFT folder (adapter_config.json + adapter_model.safetensors, keys
  `base_model.model.model.layers.N.<module>.lora_{A,B}.weight`, rank/alpha/target modules
  recorded as vLLM reads them), plus `audio_weights.safetensors` with the trained projector and
  encoder tensors under their native names (`model.embed_tokens_extend.audio_embed.*`), plus
  `training.json`. `SpeechModel.load(base, adapter=DIR)` and `speechlora transcribe --adapter DIR`
  load it; vLLM loads the LoRA part (it has no notion of the audio weights: export `full` when the
  projector or encoder was trained and the target is vLLM).
* `full`: a native-layout model folder (config.json, model.safetensors shards, tokenizer,
  generation_config.json, `speech-lora/`) equal to the base with the trained tensors swapped in;
  this is how the built-in model is shipped.

Both are written into a temporary sibling folder and renamed into place, so a crash never leaves
half an export where a loader would find it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

import torch

from speech.checkpoint import AUDIO_PREFIX, CTC_FILES, CheckpointSpec, safetensors_files
from speech.errors import UserError
from speech.model import ADAPTER_AUDIO_WEIGHTS

log = logging.getLogger("speech.finetune.export")
ADAPTER_WEIGHTS = "adapter_model.safetensors"
TRAINING_INFO = "training.json"
_LORA_KEY = re.compile(r"^lm\.base_model\.model\.(.+\.lora_[AB])\.[^.]+\.weight$")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                    "vocab.json", "merges.txt", "tokenizer.model", "chat_template.jinja", "chat_template.json")


def lora_export_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """SpeechModel LoRA names (`lm.base_model.model.X.lora_A.default.weight`) -> PEFT's saved names."""
    out = {}
    for key, tensor in state.items():
        match = _LORA_KEY.match(key)
        if match:
            out[f"base_model.model.{match.group(1)}.weight"] = tensor
    return out


def audio_export_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """SpeechModel encoder/projector names -> the native checkpoint's names."""
    out = {}
    for key, tensor in state.items():
        if key.startswith("encoder."):
            out[AUDIO_PREFIX + key] = tensor
        elif key.startswith("projector."):
            out[AUDIO_PREFIX + key[len("projector."):]] = tensor
    return out


def adapter_config(r: int, alpha: int, dropout: float, target_modules: list[str], base: str) -> dict:
    """PEFT's LoraConfig fields, as vLLM and peft read them."""
    return {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base,
        "r": r, "lora_alpha": alpha, "lora_dropout": dropout, "target_modules": target_modules,
        "bias": "none", "fan_in_fan_out": False, "modules_to_save": None, "use_rslora": False, "use_dora": False,
        "layers_to_transform": None, "layers_pattern": None, "inference_mode": True,
    }


def base_dtype(spec: CheckpointSpec) -> torch.dtype:
    """The dtype the base checkpoint stores (exports match it: bf16 for the real model)."""
    raw = json.loads((spec.path / "config.json").read_text())
    name = raw.get("torch_dtype") or raw.get("dtype") or "float32"
    return {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(str(name), torch.float32)


def _save(tensors: dict[str, torch.Tensor], path: Path, dtype: torch.dtype | None) -> None:
    """Save on CPU; floating tensors cast to `dtype` (None keeps each tensor's own)."""
    from safetensors.torch import save_file

    cast = lambda v: v.to(dtype) if dtype is not None and v.is_floating_point() else v  # noqa: E731
    save_file({k: cast(v.detach().cpu()).contiguous() for k, v in sorted(tensors.items())}, str(path),
              metadata={"format": "pt"})


def _write_lora(folder: Path, lora: dict[str, torch.Tensor], lora_config: dict, dtype: torch.dtype) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    _save(lora, folder / ADAPTER_WEIGHTS, dtype)
    (folder / "adapter_config.json").write_text(json.dumps(lora_config, indent=2))


def _replace_dir(tmp: Path, final: Path) -> None:
    old = final.with_name(f".old-{final.name}")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def write_adapter(out: Path, lora: dict[str, torch.Tensor], lora_config: dict, audio: dict[str, torch.Tensor],
                  info: dict, dtype: torch.dtype) -> Path:
    """The PEFT adapter folder (+ audio weights when the projector or encoder was trained)."""
    if not lora:
        raise UserError("export adapter: the model has no LoRA to export; use export: full")
    tmp = out.with_name(f".tmp-{out.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    _write_lora(tmp, lora, lora_config, dtype)
    if audio:
        _save(audio, tmp / ADAPTER_AUDIO_WEIGHTS, dtype)
    (tmp / TRAINING_INFO).write_text(json.dumps(info, indent=2))
    _replace_dir(tmp, out)
    return out


def write_full(out: Path, spec: CheckpointSpec, lora: dict[str, torch.Tensor], lora_config: dict | None,
               audio: dict[str, torch.Tensor], info: dict, dtype: torch.dtype) -> Path:
    """A native-layout model folder: the base's files with the trained tensors swapped in."""
    from safetensors import safe_open

    if spec.layout == "remote":
        raise UserError("export full needs a native-layout base checkpoint (config.json model_type "
                        "phi4_multimodal); this one is the remote-code layout: export adapter instead")
    tmp = out.with_name(f".tmp-{out.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    pending = dict(audio)
    for file in safetensors_files(spec.path):
        tensors = {}
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():
                tensor = handle.get_tensor(key)
                if key in pending:  # trained: stored in the base tensor's own dtype
                    tensor = pending.pop(key).detach().cpu().to(tensor.dtype)
                tensors[key] = tensor
        _save(tensors, tmp / file.name, None)
    if pending:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"export full: the base has no tensor {next(iter(pending))}")
    for name in ("config.json", "generation_config.json", "model.safetensors.index.json", *TOKENIZER_FILES):
        if (spec.path / name).exists():
            shutil.copy2(spec.path / name, tmp / name)
    _copy_ctc_files(spec.path, tmp, encoder_trained=any(k.startswith(AUDIO_PREFIX + "encoder.") for k in audio))
    if lora and lora_config:
        _write_lora(tmp / "speech-lora", lora, lora_config, dtype)
    (tmp / TRAINING_INFO).write_text(json.dumps(info, indent=2))
    _replace_dir(tmp, out)
    return out


def _copy_ctc_files(base: Path, out: Path, encoder_trained: bool) -> None:
    """The base's CTC decoding files (CTC_FILES), byte for byte: the head's metadata holds its
    alphabet and tuned settings. A head trained on an encoder that this run changed no longer
    fits it, so then none are copied (the folder decodes with the LM alone)."""
    present = [name for name in CTC_FILES if (base / name).exists()]
    if not present:
        return
    if encoder_trained:
        log.warning("export full: the encoder was trained, so the base's CTC head (%s) no longer fits it and is "
                    "left out; the exported model decodes with the LM alone", ", ".join(present))
        return
    for name in present:
        shutil.copy2(base / name, out / name)
