"""The result file format: the Open ASR Leaderboard's jsonl, named the leaderboard's way.

One file per (model, dataset), `MODEL_{model_id}_DATASET_{dataset_path}_{dataset_name}_{split}.jsonl`
with "/" replaced by "-" in each part (`normalizer/eval_utils.py: write_manifest`), one JSON object
per utterance, `ensure_ascii=False`::

    {"audio_filepath": ..., "duration": seconds, "time": seconds, "text": reference, "pred_text": raw output}

`time` is the utterance's share of its batch's inference time (batch time / batch size), as the
leaderboard's runners write it, so sum(duration) / sum(time) is the RTFx. Text is stored raw:
normalization happens at scoring time, so a file can be re-scored under other rules. We add
fields the leaderboard's scorer ignores: `index` (position in the dataset: resume and merge
order), `lang` (language of `text`), `task`, and for `both` `translation`/`pred_translation`/
`target_lang`.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import IO, Iterable

log = logging.getLogger(__name__)

LEADERBOARD_FIELDS = ("audio_filepath", "duration", "time", "text", "pred_text")


def slug(part: str) -> str:
    return part.replace("/", "-")


def result_filename(model_id: str, dataset_id: str) -> str:
    """The leaderboard's name; `dataset_id` is `{dataset_path}_{dataset_name}_{split}`."""
    return f"MODEL_{slug(model_id)}_DATASET_{slug(dataset_id)}.jsonl"


def parse_result_filename(name: str) -> tuple[str, str]:
    """(model id, dataset id) from a result file name, as the leaderboard's `score_results` reads it.

    The model part turns its first "-" back into "/" ("openai-whisper-tiny" -> "openai/whisper-tiny");
    a name without MODEL_/DATASET_ markers yields ("", stem).
    """
    stem = Path(name).name.removesuffix(".jsonl")
    if "MODEL_" not in stem or "DATASET_" not in stem:
        return "", stem
    stem = stem[stem.find("MODEL_") :]
    ds_index = stem.find("DATASET_")
    model = stem[:ds_index].removeprefix("MODEL_").rstrip("_")
    if "-" in model:
        author, _, rest = model.partition("-")
        model = f"{author}/{rest}"
    return model, stem[ds_index:].removeprefix("DATASET_")


def part_paths(results: Path) -> list[Path]:
    """Per-rank in-progress files of one result file (`<name>.rank<R>.part`; not *.jsonl, so not scored)."""
    return sorted(results.parent.glob(results.name + ".rank*.part"))


def part_path(results: Path, rank: int) -> Path:
    return results.with_name(f"{results.name}.rank{rank}.part")


def skipped_path(results: Path) -> Path:
    """Sidecar listing utterances not in the results: missing or unreadable audio, dropped references."""
    return results.with_name(results.name.removesuffix(".jsonl") + ".skipped.json")


def read_rows(path: Path, tolerate_torn_tail: bool = False) -> list[dict]:
    """Rows of a jsonl result file. A crash mid-append can leave a torn last line: with
    `tolerate_torn_tail` it is dropped (its utterance is simply redone), otherwise it is an error."""
    rows: list[dict] = []
    with path.open(encoding="utf-8") as handle:
        lines = handle.read().split("\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            last = all(not rest.strip() for rest in lines[number:])
            if tolerate_torn_tail and last:
                log.warning("%s: dropping a torn last line (an interrupted write)", path)
                continue
            raise ValueError(f"{path}:{number}: not JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{number}: expected a JSON object")
        rows.append(row)
    return rows


def drop_torn_tail(path: Path) -> None:
    """Cut a crash's half-written last line off a file we are about to append to."""
    if not path.exists():
        return
    with path.open("rb+") as handle:
        data = handle.read()
        if data and not data.endswith(b"\n"):
            handle.truncate(data.rfind(b"\n") + 1)


def dumps(row: dict) -> str:
    return json.dumps(row, ensure_ascii=False)


def append_rows(handle: IO[str], rows: Iterable[dict]) -> None:
    """Append and make durable: a crash loses at most the batch being written."""
    handle.write("".join(dumps(row) + "\n" for row in rows))
    handle.flush()
    os.fsync(handle.fileno())


def write_rows(path: Path, rows: Iterable[dict]) -> None:
    """Write a whole file atomically (temp file + rename): readers never see half of it."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        handle.write("".join(dumps(row) + "\n" for row in rows))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
