"""The fine-tuning config: frozen dataclasses read from yaml, every key checked.

A typo in a training config costs a GPU-day when it is silently ignored, so an unknown key is
refused naming the key (`optim.lr_max`), and every value is converted to its field's type with
an error that names the key too. Relative paths are resolved against the config file's folder,
so a run reads the same files whatever directory `torchrun` starts it in.

The defaults are the official Phi-4-multimodal speech recipe: AdamW (0.9, 0.95, eps 1e-7),
lr 4e-5, weight decay 0.01, linear schedule with 50 warm-up steps, clipping at 1.0, global batch
128, the checkpoint's own speech LoRA trained with the LM base frozen.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from speech.errors import UserError

TRAINABLE = ("lora", "projector", "encoder")
LORA_INIT = ("checkpoint", "fresh", "none")
EXPORTS = ("adapter", "full", "none")
TRANSLATION_TASKS = ("translate", "transcribe", "both")
DEFAULT_LORA_TARGETS = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")


@dataclass(frozen=True)
class DataConfig:
    """Where the clips come from and how they are batched."""

    train: tuple[str, ...] = ()  # jsonl manifests (NeMo style)
    validation: tuple[str, ...] = ()
    max_duration: float = 30.0  # seconds; longer clips are skipped and counted
    # What a manifest line with a `translation` becomes: one example per task listed.
    translation_tasks: tuple[str, ...] = ("translate",)
    bucket_window: int = 32  # global batches sorted by duration together (1 = no bucketing)
    num_workers: int = 2  # DataLoader workers per process (audio decoding)
    max_validation_clips: int = 0  # 0 = all


@dataclass(frozen=True)
class LoraConfig:
    """Which speech LoRA the model carries while training.

    init: `checkpoint` keeps the checkpoint's speech LoRA (r/alpha come from it); `fresh` replaces
    it with a new, zero-initialized LoRA of rank `r`; `none` trains without any LoRA.
    """

    init: str = "checkpoint"
    r: int = 0  # fresh only
    alpha: int = 0  # fresh only; 0 = 2 * r
    dropout: float = -1.0  # -1 = the checkpoint's (checkpoint) or 0.01 (fresh)
    target_modules: tuple[str, ...] = DEFAULT_LORA_TARGETS


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 4e-5
    betas: tuple[float, ...] = (0.9, 0.95)
    eps: float = 1e-7
    weight_decay: float = 0.01
    schedule: str = "linear"  # any transformers scheduler name: linear, cosine, constant_with_warmup...
    warmup_steps: int = 50
    max_grad_norm: float = 1.0


@dataclass(frozen=True)
class FinetuneConfig:
    """One training run. README's "Config keys" table lists every key."""

    output_dir: str = ""
    model: str = ""  # checkpoint folder (either layout); empty = the built-in model
    data: DataConfig = field(default_factory=DataConfig)
    trainable: tuple[str, ...] = ("lora",)
    lora: LoraConfig = field(default_factory=LoraConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    global_batch_size: int = 128
    micro_batch_size: int = 8  # per process; accumulation = global / (micro * processes)
    epochs: float = 1.0
    max_steps: int = 0  # > 0 overrides epochs
    seed: int = 0
    precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | bf16 | fp32
    gradient_checkpointing: str = "auto"  # auto (on GPU) | true | false
    save_every: int = 200  # optimizer steps between checkpoints (and validations)
    keep_best: int = 3  # checkpoints kept: best N by validation metric, plus the latest
    best_metric: str = "auto"  # auto (WER when eval.metrics is there and validation has transcripts) | wer | bleu | loss
    log_every: int = 1
    tensorboard: bool = True
    export: str = "adapter"  # adapter (PEFT folder) | full (native model folder) | none
    export_from: str = "best"  # best | last

    # ---- derived --------------------------------------------------------------------------
    def validate(self) -> "FinetuneConfig":
        if not self.output_dir:
            raise UserError("config: output_dir is required")
        if not self.data.train:
            raise UserError("config: data.train needs at least one manifest")
        bad = [t for t in self.trainable if t not in TRAINABLE]
        if bad or not self.trainable:
            raise UserError(f"config: trainable {list(self.trainable)} must list some of {', '.join(TRAINABLE)}")
        _choice("lora.init", self.lora.init, LORA_INIT)
        _choice("export", self.export, EXPORTS)
        _choice("export_from", self.export_from, ("best", "last"))
        _choice("precision", self.precision, ("auto", "bf16", "fp32"))
        _choice("gradient_checkpointing", self.gradient_checkpointing, ("auto", "true", "false"))
        _choice("best_metric", self.best_metric, ("auto", "wer", "bleu", "loss"))
        for task in self.data.translation_tasks:
            _choice("data.translation_tasks", task, TRANSLATION_TASKS)
        if "lora" in self.trainable and self.lora.init == "none":
            raise UserError("config: trainable lists lora but lora.init is none; use lora.init checkpoint or fresh")
        if self.lora.init == "fresh" and self.lora.r <= 0:
            raise UserError("config: lora.init fresh needs lora.r > 0 (the rank of the new LoRA)")
        if self.lora.init != "fresh" and (self.lora.r or self.lora.alpha):
            raise UserError("config: lora.r and lora.alpha apply to lora.init fresh only "
                            "(a checkpoint LoRA keeps its own rank)")
        if self.export == "adapter" and self.lora.init == "none":
            raise UserError("config: export adapter needs a LoRA (lora.init checkpoint or fresh); use export: full")
        for key in ("global_batch_size", "micro_batch_size", "save_every", "log_every", "keep_best"):
            if getattr(self, key) <= 0:
                raise UserError(f"config: {key} must be > 0")
        if self.data.bucket_window <= 0:
            raise UserError("config: data.bucket_window must be > 0")
        if self.max_steps <= 0 and self.epochs <= 0:
            raise UserError("config: set epochs > 0 or max_steps > 0")
        if not 0 < self.data.max_duration <= 30.0:
            raise UserError("config: data.max_duration must be in (0, 30] seconds (the model's clip limit)")
        if self.optim.lr <= 0 or self.optim.warmup_steps < 0 or len(self.optim.betas) != 2:
            raise UserError("config: optim needs lr > 0, warmup_steps >= 0 and two betas")
        return self

    def accumulation(self, processes: int) -> int:
        """Micro-batches per process per optimizer step, so that the global batch is exact."""
        per_step = self.micro_batch_size * processes
        if self.global_batch_size % per_step:
            raise UserError(
                f"global_batch_size {self.global_batch_size} is not a multiple of micro_batch_size "
                f"{self.micro_batch_size} x {processes} process(es); change one of them"
            )
        return self.global_batch_size // per_step

    def to_dict(self) -> dict:
        return _plain(dataclasses.asdict(self))

    def trajectory(self) -> dict:
        """The keys that decide what a run computes: a checkpoint resumes only under equal values.

        Paths of where to write, how often to log or validate, and how to export do not change
        the weights a step produces, so they may change between a run and its resumption.
        """
        data = self.to_dict()
        for key in ("output_dir", "save_every", "keep_best", "best_metric", "log_every", "tensorboard", "export",
                    "export_from"):
            data.pop(key)
        for key in ("validation", "num_workers", "max_validation_clips"):
            data["data"].pop(key)
        return data


def _choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UserError(f"config: {key} is {value!r}; choose one of {', '.join(choices)}")


def _plain(value):
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


# ---- reading ------------------------------------------------------------------------------

def _convert(value, hint, key: str):
    """`value` as type `hint` (str, int, float, bool, tuple[...], a config dataclass)."""
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        if value is None:
            return hint()
        if not isinstance(value, dict):
            raise UserError(f"config: {key} must be a mapping of keys, got {type(value).__name__}")
        return _build(hint, value, key + ".")
    if origin is tuple:
        (item, *_rest) = typing.get_args(hint)
        items = value if isinstance(value, (list, tuple)) else [value]
        return tuple(_convert(v, item, f"{key}[{i}]") for i, v in enumerate(items))
    if origin in (typing.Union, types.UnionType):
        raise TypeError(f"unsupported config type for {key}")
    try:
        if hint is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("true", "yes", "on", "1"):
                return True
            if str(value).lower() in ("false", "no", "off", "0"):
                return False
            raise ValueError
        if hint is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if hint is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)  # yaml reads "4e-5" as a string; float() takes it
        if hint is str:
            if isinstance(value, (dict, list)):
                raise ValueError
            if isinstance(value, bool):  # yaml reads true/on/yes as a bool
                return "true" if value else "false"
            return "" if value is None else str(value)
    except (TypeError, ValueError):
        raise UserError(f"config: {key} must be {hint.__name__}, got {value!r}") from None
    raise TypeError(f"unsupported config type {hint} for {key}")


def _build(cls, raw: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = [k for k in raw if k not in names]
    if unknown:
        raise UserError(f"config: unknown key {prefix + unknown[0]!r} (known keys: {', '.join(sorted(names))})")
    return cls(**{k: _convert(v, hints[k], prefix + k) for k, v in raw.items()})


def _set(raw: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UserError(f"--set {dotted}: {part} is not a section")
    node[last] = value


def _resolve_paths(config: FinetuneConfig, base: Path) -> FinetuneConfig:
    def resolve(path: str) -> str:
        return str((base / Path(path).expanduser()).resolve()) if path else path

    data = dataclasses.replace(config.data, train=tuple(map(resolve, config.data.train)),
                               validation=tuple(map(resolve, config.data.validation)))
    return dataclasses.replace(config, output_dir=resolve(config.output_dir), model=resolve(config.model), data=data)


def load_config(path: str | Path, overrides: list[str] = ()) -> FinetuneConfig:
    """Read a yaml config, apply `KEY=VALUE` overrides (dotted keys, yaml values), validate."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise UserError(f"{path}: no such config file") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid yaml ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: a config is a mapping of keys, not {type(raw).__name__}")
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set {item!r}: expected KEY=VALUE")
        _set(raw, key.strip(), yaml.safe_load(text))
    config = _build(FinetuneConfig, raw)
    return _resolve_paths(config, path.resolve().parent).validate()


def from_dict(raw: dict, base: str | Path = ".") -> FinetuneConfig:
    """Build a config from a dict (a notebook, a test) with the same checks as the yaml path."""
    return _resolve_paths(_build(FinetuneConfig, raw), Path(base).resolve()).validate()


def fingerprint(trajectory: dict) -> str:
    return hashlib.sha256(json.dumps(trajectory, sort_keys=True).encode()).hexdigest()[:16]


def differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """'key: old -> new' for every leaf that differs between two trajectory dicts."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out
