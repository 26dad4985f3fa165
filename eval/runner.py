"""Batched inference over evaluation datasets, written as leaderboard jsonl: resumable and sharded.

Per dataset:
1. `prepare` (no model needed): pick each utterance's reference for the task, drop references the
   scorer would drop anyway (empty, "ignore time segment in scoring"), list missing audio, refuse
   unknown languages. Done for every dataset before the model loads, so bad input fails fast.
2. `run_dataset`: skip utterances already in the results (the merged file and any per-rank part
   files of an interrupted run), sort the rest longest first (little padding; an out-of-memory
   batch shows up at once), deal them round-robin to the ranks, and decode in batches. Audio is
   decoded one batch ahead in a thread; the timed region is `model.generate` only (feature
   extraction through detokenization), CUDA-synchronized, after a warm-up batch. Each batch is
   appended to the rank's part file and flushed, so a crash loses at most the batch in flight.
3. All ranks meet at a barrier; rank 0 merges the results file and the parts in dataset order,
   atomically, and writes the `.skipped.json` sidecar (missing/unreadable/dropped).

Sharding uses torch.distributed with gloo (CPU or GPU: only barriers and small objects travel),
initialized from the environment `torchrun` and `accelerate launch` set (RANK, WORLD_SIZE, ...).
"""

from __future__ import annotations

import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import numpy as np

from eval.manifests import EvalDataset, Utterance
from eval.metrics import is_scored_reference
from eval.normalizers import normalizer_for
from eval.results import (
    append_rows,
    drop_torn_tail,
    part_path,
    part_paths,
    read_rows,
    result_filename,
    skipped_path,
    write_rows,
)
from speech.errors import AudioError, UserError
from speech.prompts import Task, language_code

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
MAX_CLIP_SECONDS = 30.0
MAX_LISTED = 10


@dataclass(frozen=True)
class RunOptions:
    """Settings shared by every dataset of a run (same decoding for all, as the leaderboard does)."""

    model_id: str
    task: Task = field(default_factory=Task)
    lang: str = "en"  # reference language where the dataset does not say
    batch_size: int = 8
    max_new_tokens: int | None = None
    warmup_batches: int = 1
    strict: bool = False
    progress: bool = True


@dataclass(frozen=True)
class Item:
    utterance: Utterance
    reference: str  # what `pred_text` is scored against: transcript, or translation for `translate`
    lang: str  # language of `reference`


@dataclass
class Prepared:
    dataset: EvalDataset
    task: Task
    items: list[Item]
    missing: list[str]
    dropped: list[str]

    @property
    def dataset_id(self) -> str:
        """The dataset id, with the task appended when it is not plain transcription."""
        if self.task.kind == "transcribe":
            return self.dataset.dataset_id
        ds = self.dataset
        name = f"{ds.name}.{self.task.kind}-{self.task.target_lang}"
        return "_".join(p.replace("/", "-") for p in (ds.path, name, ds.split))


@dataclass
class DatasetRun:
    """What one dataset's run did (rank 0's view after the merge)."""

    path: Path
    utterances: int  # rows in the merged results file
    decoded: int  # rows decoded by this run, all ranks
    resumed: int  # rows found already done
    missing: list[str]
    unreadable: list[dict]
    dropped: list[str]


class Distributed:
    """This process's place among `torchrun`/`accelerate launch` ranks (a single rank otherwise)."""

    def __init__(self) -> None:
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self._owns_group = False
        if self.world_size > 1:
            import torch.distributed as dist

            if not dist.is_initialized():
                # Long timeout: a rank that finishes early waits at the barrier for the slowest one.
                dist.init_process_group("gloo", timeout=timedelta(hours=12))
                self._owns_group = True

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()

    def gather(self, obj) -> list:
        """Every rank's `obj`, in rank order (on every rank)."""
        if self.world_size == 1:
            return [obj]
        import torch.distributed as dist

        out: list = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def close(self) -> None:
        if self._owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()
            self._owns_group = False


def resolve_task(dataset: EvalDataset, task: Task, explicit_target: bool) -> Task:
    """The task for one dataset: a translation target not given on the command line comes from
    the manifest's `translation_lang` when all its utterances agree."""
    if task.kind == "transcribe" or explicit_target:
        return task
    targets = {u.translation_lang for u in dataset.utterances if u.translation_lang}
    if len(targets) == 1:
        return Task(task.kind, language_code(targets.pop()))
    return task


def prepare(dataset: EvalDataset, task: Task, default_lang: str, strict: bool = False) -> Prepared:
    """References, languages and audio checks for one dataset; refuses what cannot be evaluated."""
    default_lang = language_code(default_lang)
    items: list[Item] = []
    missing: list[str] = []
    dropped: list[str] = []
    no_translation = 0
    for utt in dataset.utterances:
        source_lang = language_code(utt.lang) if utt.lang else default_lang
        if task.kind != "transcribe" and utt.translation is None:
            no_translation += 1  # no reference to score against: dropped like an empty one
            dropped.append(utt.audio_id)
            continue
        if task.kind == "translate":
            reference, lang = utt.translation, task.target_lang
        else:
            reference, lang = utt.text, source_lang
        if not is_scored_reference(normalizer_for(lang)(reference)):
            dropped.append(utt.audio_id)
            continue
        if not utt.audio.exists():
            missing.append(utt.audio_id)
            continue
        items.append(Item(utt, reference, lang))
    if no_translation == len(dataset.utterances):
        raise UserError(f"{dataset.origin}: no utterance has a 'translation', which task {task.kind!r} is scored against")
    if no_translation:
        log.warning("%s: %d utterance(s) without 'translation' dropped", dataset.origin, no_translation)
    if missing:
        shown = ", ".join(missing[:MAX_LISTED]) + (" ..." if len(missing) > MAX_LISTED else "")
        if strict:
            raise UserError(f"{dataset.origin}: {len(missing)} audio file(s) missing: {shown}")
        log.warning("%s: %d audio file(s) missing, skipped: %s", dataset.origin, len(missing), shown)
    if not items:
        log.warning("%s: nothing to evaluate", dataset.origin)
    return Prepared(dataset, task, items, missing, dropped)


def _load_batch(items: list[Item], strict: bool) -> tuple[list[tuple[Item, np.ndarray]], list[dict]]:
    loaded, failed = [], []
    for item in items:
        try:
            loaded.append((item, item.utterance.audio.load()))
        except AudioError as exc:
            if strict:
                raise
            failed.append({"audio_filepath": item.utterance.audio_id, "reason": str(exc)})
    return loaded, failed


def _sync(device) -> None:
    if getattr(device, "type", "cpu") == "cuda":
        import torch

        torch.cuda.synchronize(device)


def decode_batch(model, audios: list[np.ndarray], task: Task, max_new_tokens: int | None) -> list[str]:
    """Raw model output per clip; clips over 30 s go through `transcribe` (VAD-cut, stitched)."""
    short = [i for i, a in enumerate(audios) if len(a) <= MAX_CLIP_SECONDS * SAMPLE_RATE]
    out: list[str] = [""] * len(audios)
    if short:
        for i, text in zip(short, model.generate([audios[i] for i in short], task, max_new_tokens)):
            out[i] = text
    for i in sorted(set(range(len(audios))) - set(short)):
        result = model.transcribe([audios[i]], task=task)[0]  # an error here means silence: "" is right
        out[i] = f"{result.text} <sep> {result.translation}" if task.kind == "both" else result.text
    return out


def _row(item: Item, audio: np.ndarray, seconds: float, prediction: str, task: Task) -> dict:
    from speech.prompts import split_both

    utt = item.utterance
    row = {
        "audio_filepath": utt.audio_id,
        "duration": len(audio) / SAMPLE_RATE,
        "time": seconds,
        "text": item.reference,
        "pred_text": prediction,
        "index": utt.index,
        "lang": item.lang,
        "task": task.kind,
    }
    if task.kind == "both":
        transcript, translation = split_both(prediction)
        row.update(pred_text=transcript, translation=utt.translation, pred_translation=translation,
                   target_lang=task.target_lang)
    elif task.kind == "translate" and utt.text:
        row["source_text"] = utt.text
    return row


def _done_rows(results: Path) -> dict[int, dict]:
    """Rows already written for this dataset, by index: the merged file, then any part files."""
    done: dict[int, dict] = {}
    for path in ([results] if results.exists() else []) + part_paths(results):
        try:
            rows = read_rows(path, tolerate_torn_tail=path != results)
        except ValueError as exc:
            raise UserError(f"{exc}; remove the file or pass --overwrite") from None
        for row in rows:
            if not isinstance(row.get("index"), int):
                raise UserError(f"{path}: not written by `speechlora eval` (no 'index'); "
                                "remove it or pass --overwrite")
            done.setdefault(row["index"], row)
    return done


def run_dataset(model, prepared: Prepared, out_dir: Path, options: RunOptions, dist: Distributed) -> DatasetRun:
    """Decode every pending utterance of one dataset on this rank; rank 0 merges. See module doc."""
    results = out_dir / result_filename(options.model_id, prepared.dataset_id)
    by_index = {item.utterance.index: item for item in prepared.items}
    done = _done_rows(results)
    for index, row in done.items():
        item = by_index.get(index)
        expected = item.utterance.audio_id if item else None
        if expected is not None and row.get("audio_filepath") != expected:
            raise UserError(
                f"{results.name} was written for other data (row {index} is {row.get('audio_filepath')!r}, "
                f"the dataset has {expected!r}); use another --output-dir or pass --overwrite"
            )
    dist.barrier()  # every rank has read the same done set before any rank appends to it
    pending = [item for item in prepared.items if item.utterance.index not in done]
    # Longest first (by the manifest's duration where known): less padding, early OOM.
    pending.sort(key=lambda it: -(it.utterance.duration or 0.0))
    mine = pending[dist.rank :: dist.world_size]
    batches = [mine[i : i + options.batch_size] for i in range(0, len(mine), options.batch_size)]
    unreadable: list[dict] = []
    decoded = 0
    if batches:
        decoded, unreadable = _decode_batches(model, prepared.task, batches, part_path(results, dist.rank),
                                              options, dist, results.name)
    gathered = dist.gather((decoded, unreadable))
    dist.barrier()  # all parts complete
    run = DatasetRun(results, 0, sum(d for d, _ in gathered), len(done), prepared.missing,
                     [u for _, us in gathered for u in us], prepared.dropped)
    if dist.is_main:
        merged = _done_rows(results)
        write_rows(results, [merged[i] for i in sorted(merged)])
        for part in part_paths(results):
            part.unlink()
        run.utterances = len(merged)
        skipped = {"missing": run.missing, "unreadable": run.unreadable, "dropped": run.dropped}
        sidecar = skipped_path(results)
        if any(skipped.values()):
            sidecar.write_text(json.dumps(skipped, ensure_ascii=False, indent=1))
        elif sidecar.exists():
            sidecar.unlink()
    dist.barrier()  # nobody starts the next dataset while rank 0 rewrites this one
    return run


def _decode_batches(model, task: Task, batches: list[list[Item]], part: Path, options: RunOptions,
                    dist: Distributed, label: str) -> tuple[int, list[dict]]:
    from tqdm import tqdm

    device = getattr(model, "device", None)
    unreadable: list[dict] = []
    decoded = 0
    bar = tqdm(total=sum(map(len, batches)), desc=label[:60], unit="utt",
               disable=not (options.progress and dist.is_main))
    drop_torn_tail(part)
    with ThreadPoolExecutor(max_workers=1) as pool, part.open("a", encoding="utf-8") as handle:
        future = pool.submit(_load_batch, batches[0], options.strict)
        warmed = 0
        for number in range(len(batches)):
            loaded, failed = future.result()
            if number + 1 < len(batches):
                future = pool.submit(_load_batch, batches[number + 1], options.strict)
            unreadable.extend(failed)
            for entry in failed:
                log.warning("unreadable audio, skipped: %s (%s)", entry["audio_filepath"], entry["reason"])
            if not loaded:
                bar.update(len(failed))
                continue
            audios = [audio for _, audio in loaded]
            while warmed < options.warmup_batches:  # untimed: lazy init, allocator, kernels
                decode_batch(model, audios, task, options.max_new_tokens)
                warmed += 1
            _sync(device)
            start = time.perf_counter()
            predictions = decode_batch(model, audios, task, options.max_new_tokens)
            _sync(device)
            per_utterance = (time.perf_counter() - start) / len(loaded)
            append_rows(handle, [_row(item, audio, per_utterance, pred, task)
                                 for (item, audio), pred in zip(loaded, predictions)])
            decoded += len(loaded)
            bar.update(len(loaded) + len(failed))
    bar.close()
    if part.exists() and part.stat().st_size == 0:
        part.unlink()
    return decoded, unreadable


def run(model, datasets: list[Prepared], out_dir: Path, options: RunOptions, dist: Distributed) -> list[DatasetRun]:
    """Evaluate every prepared dataset in turn; returns what each run did."""
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = []
    for prepared in datasets:
        runs.append(run_dataset(model, prepared, out_dir, options, dist))
        if dist.is_main:
            r = runs[-1]
            log.info("%s: %d utterances (%d decoded now, %d resumed, %d missing, %d unreadable, %d dropped)",
                     r.path.name, r.utterances, r.decoded, r.resumed, len(r.missing), len(r.unreadable),
                     len(r.dropped))
    return runs
