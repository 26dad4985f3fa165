"""The training loop, on HF accelerate over torch.distributed.

The engine is accelerate: one process per device started by `torchrun` or `accelerate launch`,
DDP by default, FSDP or DeepSpeed ZeRO when an accelerate config file asks for them
(examples/finetune/accelerate/), bf16 autocast on GPU, fp32 on CPU. What this module adds is
what speech fine-tuning needs on top:

* the loss of a step is summed over answer tokens and divided by the answer tokens of the whole
  global batch (all micro-batches of all processes), so one process with 4 micro-batches and two
  processes with 2 each compute the same gradient;
* the batch plan is a pure function of (seed, epoch), and a checkpoint holds the model's
  trainable tensors, the optimizer, the scheduler and every process's RNG, so a resumed run
  repeats the uninterrupted one exactly;
* checkpoints are written to a temporary folder and renamed, ranked by validation WER (or loss),
  and the best N kept;
* the result is exported as a PEFT adapter or a full native model folder (speech.finetune.export).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import re
import shutil
import time
from collections import deque
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from encoder.features import LogMelFeatures
from speech.checkpoint import LoraSpec
from speech.errors import UserError
from speech.finetune import export as exporting
from speech.finetune.config import FinetuneConfig, differences, fingerprint
from speech.finetune.data import IGNORE, Corpus, MicroBatches, Tokens, loader, plan_epoch, read_manifests, \
    validation_batches
from speech.model import SpeechModel, builtin_path, lora_target_names

log = logging.getLogger("speech.finetune")

STATE_FILE = "trainer_state.json"
TRAINABLE_FILE = "trainable.safetensors"
LOG_FILE = "log.jsonl"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def _base_name(path: Path) -> str:
    """adapter_config.json's base_model_name_or_path: the folder trained on, as peft records it,
    except that the built-in model is named, not located (its path is the training machine's)."""
    return "speechlora/builtin" if Path(path).resolve() == builtin_path() else str(path)


class Trainee(nn.Module):
    """What the engine wraps (DDP/FSDP/DeepSpeed): a micro-batch in, its summed answer-token loss out.

    Logits are computed at answer positions only: with Phi-4's 200k-token vocabulary, logits over
    the prompt and the audio placeholders would be most of the activation memory.
    """

    def __init__(self, speech: SpeechModel) -> None:
        super().__init__()
        self.speech = speech

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                features: torch.Tensor, frame_lengths: torch.Tensor) -> torch.Tensor:
        speech = self.speech
        embeds = speech.embed(input_ids, features, frame_lengths)
        causal = _causal_lm(speech.lm)
        positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        hidden = causal.model(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=positions,
                              use_cache=False).last_hidden_state
        targets = labels[:, 1:]
        keep = targets != IGNORE
        logits = causal.lm_head(hidden[:, :-1][keep]).float()
        return F.cross_entropy(logits, targets[keep], reduction="sum")


def _causal_lm(lm: nn.Module) -> nn.Module:
    from peft import PeftModel

    return lm.get_base_model() if isinstance(lm, PeftModel) else lm


# ---- the model ----------------------------------------------------------------------------

def _set_lora_dropout(lm: nn.Module, p: float) -> None:
    from peft.tuners.lora import LoraLayer

    for module in lm.modules():
        if isinstance(module, LoraLayer):
            for name in module.lora_dropout:
                module.lora_dropout[name] = nn.Dropout(p) if p > 0 else nn.Identity()


def lora_layout(lm: nn.Module) -> dict | None:
    """r, alpha, dropout and target modules of the model's LoRA, as an adapter_config records them.

    Target modules are written as module-name suffixes (what vLLM and peft expect) when those
    suffixes select exactly the wrapped modules, else as the full module names.
    """
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    if not isinstance(lm, PeftModel):
        return None
    cfg = lm.peft_config["default"]
    base = lm.get_base_model()
    wrapped = {name for name, m in base.named_modules() if isinstance(m, LoraLayer)}
    suffixes = sorted({name.rsplit(".", 1)[-1] for name in wrapped})
    candidates = {name for name, m in base.named_modules()
                  if isinstance(m, (nn.Linear, LoraLayer)) and name.rsplit(".", 1)[-1] in suffixes}
    dropouts = [d.p for m in base.modules() if isinstance(m, LoraLayer) for d in m.lora_dropout.values()
                if isinstance(d, nn.Dropout)]
    return {"r": int(cfg.r), "alpha": int(cfg.lora_alpha), "dropout": float(dropouts[0] if dropouts else 0.0),
            "target_modules": suffixes if candidates == wrapped else sorted(wrapped)}


def build_model(config: FinetuneConfig, device: torch.device, dtype: torch.dtype, upcast_trainable: bool,
                checkpointing: bool) -> SpeechModel:
    """Load the checkpoint, set up the LoRA the config asks for, and mark what trains."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import PeftModel, get_peft_model

    speech = SpeechModel.load(config.model or None, device=str(device), dtype=dtype, merge_lora=False)
    lm = speech.lm
    lora = config.lora
    if lora.init in ("fresh", "none") and isinstance(lm, PeftModel):
        lm = lm.unload()  # drop the checkpoint's speech LoRA, unmerged
    if lora.init == "checkpoint":
        if not isinstance(lm, PeftModel):
            raise UserError(f"{speech.spec.path} has no speech LoRA; set lora.init to fresh (with lora.r) or none")
        if lora.dropout >= 0:
            _set_lora_dropout(lm, lora.dropout)
    elif lora.init == "fresh":
        alpha = lora.alpha or 2 * lora.r
        dropout = 0.01 if lora.dropout < 0 else lora.dropout
        targets = lora_target_names(lm, LoraSpec(lora.r, alpha, dropout, list(lora.target_modules)))
        if not targets:
            raise UserError(f"lora.target_modules {list(lora.target_modules)} match no linear layer of the LM")
        lm = get_peft_model(lm, PeftLoraConfig(r=lora.r, lora_alpha=alpha, lora_dropout=dropout,
                                               target_modules=targets, bias="none"))
    speech.lm = lm

    speech.requires_grad_(False)
    if "lora" in config.trainable:
        for name, param in lm.named_parameters():
            if "lora_" in name:
                param.requires_grad_(True)
    if "projector" in config.trainable:
        speech.projector.requires_grad_(True)
    if "encoder" in config.trainable:
        speech.encoder.requires_grad_(True)
    if upcast_trainable:  # bf16 frozen weights, fp32 master weights for what trains
        for param in speech.parameters():
            if param.requires_grad:
                param.data = param.data.float()
    if checkpointing:
        _causal_lm(lm).gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        speech.encoder.gradient_checkpointing = "encoder" in config.trainable
    return speech


# ---- checkpoints --------------------------------------------------------------------------

def checkpoints(output_dir: Path) -> list[tuple[int, Path, dict]]:
    """Complete checkpoints of a run (step, folder, trainer state), oldest first."""
    found = []
    if output_dir.is_dir():
        for child in output_dir.iterdir():
            match = _CHECKPOINT.match(child.name)
            if match and (child / STATE_FILE).exists():
                found.append((int(match.group(1)), child, json.loads((child / STATE_FILE).read_text())))
    return sorted(found, key=lambda item: item[0])


def _fsync_tree(root: Path) -> None:
    for path in [*root.rglob("*"), root]:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("speechlora")
    except Exception:  # noqa: BLE001 - running from a source tree
        return "source"


def _manifest_digests(paths: tuple[str, ...]) -> list[str]:
    import hashlib

    try:
        return [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths]
    except FileNotFoundError as exc:
        raise UserError(f"{exc.filename}: no such manifest") from None


class Trainer:
    def __init__(self, config: FinetuneConfig, resume: str | bool | None = None, export_only: bool = False) -> None:
        from accelerate import Accelerator, PartialState
        from accelerate.utils import DistributedDataParallelKwargs, DistributedType, set_seed

        self.config = config
        self.output_dir = Path(config.output_dir)
        # Without a GPU, accelerate runs several processes (torchrun) only when told cpu=True.
        cpu = not torch.cuda.is_available()
        state = PartialState(cpu=cpu)
        self.processes = state.num_processes
        self.accum = config.accumulation(self.processes)
        # What decides the weights a step computes; checked before anything slow is loaded.
        self.trajectory = {**config.trajectory(), "data_sha256": _manifest_digests(config.data.train)}
        self.fingerprint = fingerprint(self.trajectory)
        self.start_from = None if export_only else self.resume_from(resume)
        on_gpu = state.device.type == "cuda"
        bf16 = config.precision == "bf16" or (config.precision == "auto" and on_gpu)
        self.accelerator = acc = Accelerator(
            cpu=cpu, mixed_precision="bf16" if bf16 else "no", gradient_accumulation_steps=self.accum,
            step_scheduler_with_optimizer=False,
            kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)],
        )
        self.is_main = acc.is_main_process
        if not self.is_main:
            logging.getLogger("speech").setLevel(logging.WARNING)
        self.sharded = acc.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
        if acc.distributed_type == DistributedType.DEEPSPEED:
            ds = acc.state.deepspeed_plugin.deepspeed_config
            ds["train_micro_batch_size_per_gpu"] = config.micro_batch_size
            ds["gradient_accumulation_steps"] = self.accum
            ds["train_batch_size"] = config.global_batch_size
            ds["gradient_clipping"] = config.optim.max_grad_norm
        zero3 = (acc.distributed_type == DistributedType.DEEPSPEED
                 and acc.state.deepspeed_plugin.deepspeed_config.get("zero_optimization", {}).get("stage") == 3)
        self.can_generate = acc.distributed_type != DistributedType.FSDP and not zero3

        set_seed(config.seed)
        # FSDP flattens parameters and wants one dtype: keep fp32 weights there and let its
        # mixed-precision policy cast; DeepSpeed keeps its own fp32 master copy.
        dtype = torch.bfloat16 if bf16 and acc.distributed_type != DistributedType.FSDP else torch.float32
        checkpointing = config.gradient_checkpointing == "true" or (config.gradient_checkpointing == "auto" and on_gpu)
        self.speech = build_model(config, acc.device, dtype, upcast_trainable=dtype != torch.float32 and not self.sharded,
                                  checkpointing=checkpointing)
        self.trainable_names = [n for n, p in self.speech.named_parameters() if p.requires_grad]
        self.lora = lora_layout(self.speech.lm)
        self.featurizer = LogMelFeatures(acc.device)

        self._load_data()
        self.trainee, self.optimizer, self.scheduler = acc.prepare(Trainee(self.speech), *self._optimizer())
        if not self.sharded:
            # The model's trainable tensors travel in trainable.safetensors (the trained tensors only),
            # not as a full state dict with the frozen 3.8B-parameter LM in every checkpoint.
            acc.register_save_state_pre_hook(lambda models, weights, output_dir: weights.clear())
            acc.register_load_state_pre_hook(lambda models, input_dir: models.clear())

        self.writer = None
        self.step = 0

    # ---- setup helpers ----------------------------------------------------------------------
    def _load_data(self) -> None:
        """Manifests -> examples and answer ids; every process computes the same plan from them."""
        config = self.config
        self.tokens = Tokens(self.speech.tokenizer, self.speech.audio_token_id)
        self.train = read_manifests(config.data.train, config.data.max_duration, config.data.translation_tasks)
        if not self.train.examples:
            raise UserError("no usable training clips in " + ", ".join(config.data.train))
        self.train_answers = self.tokens.answers(self.train.examples)
        self.durations = np.array([e.duration for e in self.train.examples])
        self.group = self.accum * self.processes
        self.steps_per_epoch = len(self.train.examples) // config.global_batch_size
        if self.steps_per_epoch == 0:
            raise UserError(f"{len(self.train.examples)} training examples are fewer than one global batch "
                            f"({config.global_batch_size}); lower global_batch_size")
        self.total_steps = config.max_steps or math.ceil(config.epochs * self.steps_per_epoch)
        self.val = (read_manifests(config.data.validation, config.data.max_duration, config.data.translation_tasks)
                    if config.data.validation else Corpus([]))
        if config.data.max_validation_clips:
            self.val.examples = self.val.examples[: config.data.max_validation_clips]
        self.val_answers = self.tokens.answers(self.val.examples)
        # WER and BLEU come from the eval package (it imports no model) when it is installed.
        self.have_metrics = importlib.util.find_spec("eval") is not None and \
            importlib.util.find_spec("eval.metrics") is not None
        self.metric = self._metric_name()

    def _optimizer(self):
        """AdamW (no decay on biases and norms) and the schedule over the run's steps."""
        decay, no_decay = [], []
        for name, param in self.speech.named_parameters():
            if param.requires_grad:
                (no_decay if param.ndim < 2 or "norm" in name else decay).append(param)
        o = self.config.optim
        optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": o.weight_decay},
                                       {"params": no_decay, "weight_decay": 0.0}],
                                      lr=o.lr, betas=tuple(o.betas), eps=o.eps)
        from transformers import get_scheduler

        try:
            scheduler = get_scheduler(o.schedule, optimizer, num_warmup_steps=o.warmup_steps,
                                      num_training_steps=self.total_steps)
        except (ValueError, KeyError) as exc:
            raise UserError(f"config: optim.schedule {o.schedule!r}: {exc}") from None
        return optimizer, scheduler

    def _metric_name(self) -> str | None:
        if not self.val.examples:
            return None
        if self.config.best_metric == "loss":
            return "loss"
        has_transcripts = any(e.task.kind == "transcribe" for e in self.val.examples)
        why = (None if has_transcripts and self.have_metrics and self.can_generate else
               "the validation manifests hold no transcription clips" if not has_transcripts else
               "eval.metrics is not installed" if not self.have_metrics else
               "decoding under FSDP / ZeRO-3 is not supported")
        if self.config.best_metric == "wer" and why:
            raise UserError(f"config: best_metric wer: {why}; use best_metric: loss")
        if self.config.best_metric == "bleu":
            # A translation fine-tune is judged by its translations: the loss on teacher-forced
            # references tracks BLEU loosely on small sets, and WER says nothing about them.
            has_translations = any(e.task.kind == "translate" for e in self.val.examples)
            why = (None if has_translations and self.have_metrics and self.can_generate else
                   "the validation manifests hold no translation clips" if not has_translations else
                   "eval.metrics is not installed" if not self.have_metrics else
                   "decoding under FSDP / ZeRO-3 is not supported")
            if why:
                raise UserError(f"config: best_metric bleu: {why}; use best_metric: loss")
            return "bleu"
        return "loss" if why else "wer"

    def _unwrapped(self) -> Trainee:
        return self.accelerator.unwrap_model(self.trainee)

    # ---- resume -----------------------------------------------------------------------------
    def resume_from(self, resume: str | bool | None) -> Path | None:
        """The checkpoint to continue from, checked to belong to this config; None = fresh start."""
        existing = checkpoints(self.output_dir)
        if resume is None or resume is False:
            if existing:
                raise UserError(f"{self.output_dir} already holds checkpoints (latest {existing[-1][1].name}); "
                                "pass --resume to continue that run, or choose another output_dir")
            return None
        if resume is True:
            if not existing:
                log.info("no checkpoint in %s: starting a new run", self.output_dir)
                return None
            path, state = existing[-1][1], existing[-1][2]
        else:
            path = Path(resume)
            if not (path / STATE_FILE).exists():
                raise UserError(f"{path}: not a finetune checkpoint (no {STATE_FILE})")
            state = json.loads((path / STATE_FILE).read_text())
        if state.get("fingerprint") != self.fingerprint:
            changed = differences(state.get("trajectory", {}), self.trajectory)
            raise UserError(f"{path} was written by a different config ({'; '.join(changed[:4]) or 'unknown'}); "
                            "resume it with the config it was trained with, or start a new output_dir")
        if state.get("processes") != self.processes:
            raise UserError(f"{path} was written by {state.get('processes')} process(es), this run has "
                            f"{self.processes}; an exact resume needs the same number (each has its own RNG state)")
        return path

    def _load(self, path: Path) -> None:
        from safetensors.torch import load_file

        if not self.sharded:
            tensors = load_file(str(path / TRAINABLE_FILE), device=str(self.accelerator.device))
            missing = sorted(set(self.trainable_names) - tensors.keys())
            if missing:
                raise UserError(f"{path}/{TRAINABLE_FILE} lacks {missing[0]} ({len(missing)} tensors)")
            with torch.no_grad():
                params = dict(self.speech.named_parameters())
                for name in self.trainable_names:
                    params[name].copy_(tensors[name])
        self.accelerator.load_state(str(path))
        self.step = json.loads((path / STATE_FILE).read_text())["step"]
        if self.is_main:  # the log continues from the checkpoint: drop what a killed run wrote after it
            log_path = self.output_dir / LOG_FILE
            if log_path.exists():
                kept = [line for line in log_path.read_text().splitlines()
                        if line.strip() and json.loads(line).get("step", 0) <= self.step]
                log_path.write_text("".join(line + "\n" for line in kept))
        log.info("resumed from %s (step %d of %d)", path, self.step, self.total_steps)

    # ---- checkpoints --------------------------------------------------------------------------
    def _trainable_state(self) -> dict[str, torch.Tensor]:
        """The trainable tensors by SpeechModel name (gathered across shards under FSDP/ZeRO)."""
        if self.sharded:
            state = self.accelerator.get_state_dict(self.trainee)
            wanted = set(self.trainable_names)
            return {k[len("speech."):]: v for k, v in state.items() if k[len("speech."):] in wanted}
        params = dict(self.speech.named_parameters())
        return {name: params[name].detach() for name in self.trainable_names}

    def save_checkpoint(self, metrics: dict) -> Path:
        from safetensors.torch import save_file

        acc = self.accelerator
        final = self.output_dir / f"checkpoint-{self.step}"
        tmp = self.output_dir / f".tmp-checkpoint-{self.step}"
        if self.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        state = self._trainable_state()
        if self.is_main:
            save_file({k: v.cpu().contiguous() for k, v in state.items()}, str(tmp / TRAINABLE_FILE))
        acc.save_state(str(tmp))
        acc.wait_for_everyone()
        if self.is_main:
            value = _metric_value(metrics, self.metric)
            (tmp / STATE_FILE).write_text(json.dumps({
                "step": self.step, "epoch": self.step / self.steps_per_epoch, "total_steps": self.total_steps,
                "processes": self.processes, "fingerprint": self.fingerprint, "trajectory": self.trajectory,
                "metric": {"name": self.metric, "value": value} if value is not None else None,
                "validation": metrics, "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }, indent=2))
            _fsync_tree(tmp)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            self._prune()
        acc.wait_for_everyone()
        return final

    def _prune(self) -> None:
        found = checkpoints(self.output_dir)
        keep = {found[-1][0]}
        scored = [(_rank(s["metric"]), -step) for step, _, s in found if s.get("metric")]
        if scored:  # best first (lowest WER or loss, highest BLEU); on a tie the later checkpoint wins
            keep |= {-neg for _, neg in sorted(scored)[: self.config.keep_best]}
        else:
            keep |= {step for step, _, _ in found[-self.config.keep_best:]}
        for step, path, _ in found:
            if step not in keep:
                shutil.rmtree(path, ignore_errors=True)

    # ---- validation -----------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict:
        if not self.val.examples:
            return {}
        acc = self.accelerator
        durations = np.array([e.duration for e in self.val.examples])
        mine = validation_batches(durations, self.config.micro_batch_size, acc.process_index, self.processes)
        real = len(mine)
        if self.sharded:  # FSDP/ZeRO gather weights in every forward: every process runs as many
            rounds = math.ceil(math.ceil(len(durations) / self.config.micro_batch_size) / self.processes)
            mine = mine + [mine[0] if mine else [0]] * (rounds - real)
        batches = MicroBatches(self.val.examples, self.val_answers, self.tokens, mine)
        model = self.trainee if self.sharded else self._unwrapped()  # no DDP hooks outside training
        model.eval()
        loss_sum = torch.zeros((), dtype=torch.float64, device=acc.device)
        count = torch.zeros((), dtype=torch.float64, device=acc.device)
        pairs = []
        for i, batch in enumerate(loader(batches, self.config.data.num_workers, self.config.seed)):
            features, lengths = self.featurizer(batch["audios"])
            with acc.autocast():
                loss = model(batch["input_ids"].to(acc.device), batch["attention_mask"].to(acc.device),
                             batch["labels"].to(acc.device), features.clone(), lengths)
            if i >= real:
                continue  # a repeated batch that only keeps the processes in step
            loss_sum += loss.double()
            count += (batch["labels"][:, 1:] != IGNORE).sum().item()
            examples = [self.val.examples[j] for j in batch["indices"]]
            if self.can_generate and self.have_metrics and (
                    self.metric == "wer" or any(e.task.kind != "transcribe" for e in examples)):
                with acc.autocast():
                    hyps = self.speech.generate([a.numpy() for a in batch["audios"]], [e.task for e in examples])
                pairs += [(e.task.kind, e.task.target_lang, e.lang, e.answer, h) for e, h in zip(examples, hyps)]
        self.trainee.train()
        totals = acc.reduce(torch.stack([loss_sum, count]), "sum")
        metrics = {"loss": float(totals[0] / totals[1].clamp(min=1))}
        if self.processes > 1:
            from accelerate.utils import gather_object

            pairs = gather_object(pairs)
        metrics.update(_score(pairs))
        return metrics

    # ---- training ---------------------------------------------------------------------------------
    def _step(self, micro_batches: list[dict]) -> dict:
        acc = self.accelerator
        local = torch.tensor([sum(int((mb["labels"][:, 1:] != IGNORE).sum()) for mb in micro_batches),
                              sum(len(mb["indices"]) for mb in micro_batches),
                              sum(mb["seconds"] for mb in micro_batches),
                              sum(len(mb["failed"]) for mb in micro_batches)], dtype=torch.float64, device=acc.device)
        tokens, clips, seconds, failed = acc.reduce(local, "sum").tolist()
        # accelerate divides by the accumulation steps and DDP averages over processes: undo both,
        # so the gradient is sum(token losses) / tokens of the whole global batch.
        scale = self.accum * self.processes / tokens
        loss_sum = torch.zeros((), dtype=torch.float64, device=acc.device)
        for mb in micro_batches:
            with acc.accumulate(self.trainee):
                features, lengths = self.featurizer(mb["audios"])
                loss = self.trainee(mb["input_ids"].to(acc.device), mb["attention_mask"].to(acc.device),
                                    mb["labels"].to(acc.device), features.clone(), lengths)
                acc.backward(loss * scale)
                loss_sum += loss.detach().double()
        grad_norm = None
        if self.config.optim.max_grad_norm > 0:
            # All parameters (frozen ones have no gradient): accelerate recognizes the FSDP model's own
            # parameter list and then clips with the sharded norm.
            grad_norm = acc.clip_grad_norm_(list(self.trainee.parameters()), self.config.optim.max_grad_norm)
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        loss = float(acc.reduce(loss_sum, "sum")) / tokens
        for mb in micro_batches:
            for message in mb["failed"]:
                log.warning("skipped a clip that failed to decode: %s", message)
        return {"loss": loss, "lr": lr, "grad_norm": None if grad_norm is None else float(grad_norm),
                "tokens": int(tokens), "clips": int(clips), "audio_seconds": seconds, "failed": int(failed)}

    def _micro_batches(self):
        """(step, this process's micro-batches) from self.step on, across epochs."""
        step = self.step
        rank = self.accelerator.process_index
        while step < self.total_steps:
            epoch, offset = divmod(step, self.steps_per_epoch)
            plan = plan_epoch(self.durations, self.config.micro_batch_size, self.group, self.config.seed, epoch,
                              self.config.data.bucket_window)[offset:]
            plan = plan[: self.total_steps - step]
            mine = [mb for groups in plan for mb in groups[rank * self.accum:(rank + 1) * self.accum]]
            batches = MicroBatches(self.train.examples, self.train_answers, self.tokens, mine)
            it = iter(loader(batches, self.config.data.num_workers, self.config.seed + epoch))
            for _ in plan:
                yield [next(it) for _ in range(self.accum)]
                step += 1

    def _log(self, record: dict) -> None:
        if not self.is_main:
            return
        with open(self.output_dir / LOG_FILE, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            prefix = "eval" if "eval" in record else "train"
            for key, value in (record.get("eval") or record).items():
                if isinstance(value, (int, float)) and key != "step":
                    self.writer.add_scalar(f"{prefix}/{key}", value, record["step"])

    def fit(self) -> Path | None:
        """Train to the last step (checkpointing and validating on the way), then export."""
        config, acc = self.config, self.accelerator
        start_from = self.start_from
        if self.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            for stale in self.output_dir.glob(".tmp-checkpoint-*"):
                shutil.rmtree(stale, ignore_errors=True)  # a checkpoint a killed run never finished
            if config.tensorboard:
                try:
                    from torch.utils.tensorboard import SummaryWriter

                    self.writer = SummaryWriter(str(self.output_dir / "tensorboard"))
                except ImportError:
                    log.warning("tensorboard is not installed: no TensorBoard logs")
        acc.wait_for_everyone()
        if start_from is not None:
            self._load(start_from)
        elif self.is_main:
            (self.output_dir / LOG_FILE).unlink(missing_ok=True)
        self._describe()
        self.trainee.train()
        times: deque[float] = deque(maxlen=20)
        for micro_batches in self._micro_batches():
            began = time.perf_counter()
            stats = self._step(micro_batches)
            self.step += 1
            times.append(time.perf_counter() - began)
            record = {"step": self.step, "epoch": round(self.step / self.steps_per_epoch, 4), **stats}
            self._log(record)
            if self.step % config.log_every == 0 or self.step == self.total_steps:
                per_step = sum(times) / len(times)
                eta = per_step * (self.total_steps - self.step)
                log.info("step %d/%d (epoch %.2f) | loss %.4f | lr %.2e | grad %s | %.1f audio s/s, %.1f clips/s "
                         "| %.2f s/step | ETA %s", self.step, self.total_steps, record["epoch"], stats["loss"],
                         stats["lr"], "-" if stats["grad_norm"] is None else f"{stats['grad_norm']:.3f}",
                         stats["audio_seconds"] / times[-1], stats["clips"] / times[-1], per_step,
                         timedelta(seconds=round(eta)))
            if self.step % config.save_every == 0 or self.step == self.total_steps:
                metrics = self.evaluate()
                if metrics:
                    self._log({"step": self.step, "eval": metrics})
                    log.info("validation at step %d: %s", self.step,
                             ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float)))
                path = self.save_checkpoint(metrics)
                log.info("checkpoint %s", path)
        if self.writer is not None:
            self.writer.close()
        return self.export()

    def _describe(self) -> None:
        c = self.config
        counts = {}
        for name, p in self.speech.named_parameters():
            if p.requires_grad:
                part = "LoRA" if "lora_" in name else name.split(".")[0]
                counts[part] = counts.get(part, 0) + p.numel()
        log.info("model %s (%s layout) | trainable %s | LoRA %s", self.speech.spec.path, self.speech.spec.layout,
                 ", ".join(f"{k} {v:,}" for k, v in counts.items()), self.lora or "none")
        log.info("data: %d train examples (%.2f h), %d validation, skipped %s | %d steps of %d clips "
                 "(%d process(es) x %d micro x %d accumulation) | %d steps per epoch | best by %s",
                 len(self.train.examples), self.train.hours, len(self.val.examples),
                 dict(self.train.skipped + self.val.skipped) or "none", self.total_steps, c.global_batch_size,
                 self.processes, c.micro_batch_size, self.accum, self.steps_per_epoch, self.metric or "(no validation)")

    # ---- export -------------------------------------------------------------------------------------
    def export(self) -> Path | None:
        config, acc = self.config, self.accelerator
        if config.export == "none":
            return None
        found = checkpoints(self.output_dir)
        if not found:
            raise UserError(f"{self.output_dir}: no checkpoint to export")
        chosen = found[-1]
        scored = [item for item in found if item[2].get("metric")]
        if config.export_from == "best" and scored:
            chosen = min(scored, key=lambda item: (_rank(item[2]["metric"]), -item[0]))
        if chosen[2].get("fingerprint") != self.fingerprint:
            changed = differences(chosen[2].get("trajectory", {}), self.trajectory)
            raise UserError(f"{chosen[1]} was written by a different config ({'; '.join(changed[:4])}); "
                            "export it with the config it was trained with")
        live = {}  # a frozen LoRA is not in the checkpoint: take it from the model
        if self.lora and "lora" not in config.trainable:
            if self.sharded:  # gathering is a collective: every process takes part
                live = {k[len("speech."):]: v for k, v in acc.get_state_dict(self.trainee).items() if "lora_" in k}
            elif self.is_main:
                live = {k: v for k, v in self.speech.state_dict().items() if "lora_" in k}
        out = None
        if self.is_main:
            from safetensors.torch import load_file

            trained = load_file(str(chosen[1] / TRAINABLE_FILE))
            lora = exporting.lora_export_state({**live, **trained}) if self.lora else {}
            audio = exporting.audio_export_state(trained)
            spec = self.speech.spec
            dtype = exporting.base_dtype(spec)
            lora_config = (exporting.adapter_config(self.lora["r"], self.lora["alpha"], self.lora["dropout"],
                                                    self.lora["target_modules"], _base_name(spec.path))
                           if self.lora else None)
            info = self._training_info(chosen)
            if config.export == "adapter":
                out = exporting.write_adapter(self.output_dir / "adapter", lora, lora_config, audio, info, dtype)
            else:
                out = exporting.write_full(self.output_dir / "model", spec, lora, lora_config, audio, info, dtype)
            log.info("exported %s (%s) from %s", out, config.export, chosen[1].name)
        acc.wait_for_everyone()
        return out if out is not None else self.output_dir / ("adapter" if config.export == "adapter" else "model")

    def _training_info(self, chosen: tuple[int, Path, dict]) -> dict:
        step, path, state = chosen
        return {
            "base_model": str(self.speech.spec.path), "base_layout": self.speech.spec.layout,
            "trained": list(self.config.trainable), "lora_init": self.config.lora.init, "lora": self.lora,
            "checkpoint": path.name, "step": step, "epochs": round(step / self.steps_per_epoch, 4),
            "metric": state.get("metric"), "validation": state.get("validation"),
            "train_data": self.train.summary(), "validation_data": self.val.summary() if self.val.examples else None,
            "global_batch_size": self.config.global_batch_size, "processes": self.processes,
            "precision": self.accelerator.mixed_precision, "seed": self.config.seed,
            "speechlora_version": _version(), "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "config": self.config.to_dict(),
        }


def _metric_value(metrics: dict, name: str | None) -> float | None:
    """The checkpoint's selection metric; "bleu" is the mean over the validation target languages."""
    if name == "bleu":
        values = [v for k, v in metrics.items() if k.startswith("bleu_")]
        return sum(values) / len(values) if values else None
    return metrics.get(name) if name else None


def _rank(metric: dict) -> float:
    """Sort key of a stored {"name", "value"}: lower is better (BLEU is negated)."""
    return -metric["value"] if metric.get("name") == "bleu" else metric["value"]


def _score(pairs: list[tuple]) -> dict:
    """Validation WER (over transcription clips, all languages pooled) and BLEU per target language."""
    out = {}
    asr = [p for p in pairs if p[0] == "transcribe"]
    if asr:
        from eval.metrics import error_rate

        errors = words = 0
        for lang in sorted({p[2] for p in asr}):
            group = [p for p in asr if p[2] == lang]
            rate = error_rate([p[3] for p in group], [p[4] for p in group], lang, top=0)
            errors += rate.errors
            words += rate.reference_length
        if words:
            out["wer"] = 100.0 * errors / words
    for target in sorted({p[1] for p in pairs if p[0] == "translate"}):
        from eval.metrics import translation_score

        group = [p for p in pairs if p[0] == "translate" and p[1] == target]
        out[f"bleu_{target}"] = float(translation_score([p[4] for p in group], [p[3] for p in group], target).bleu)
    return out


def run(config: FinetuneConfig, resume: str | bool | None = None, export_only: bool = False) -> Path | None:
    """Train (or, with export_only, export the best/last checkpoint of a finished run)."""
    trainer = Trainer(config, resume=resume, export_only=export_only)
    if export_only:
        return trainer.export()
    return trainer.fit()
