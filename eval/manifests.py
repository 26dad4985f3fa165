"""Evaluation inputs: NeMo-style jsonl manifests and local Hugging Face datasets, as utterance lists.

A NeMo manifest has one JSON object per line::

    {"audio_filepath": "wav/1.wav", "duration": 3.2, "text": "hello world", "lang": "en"}

`audio_filepath` and `text` are required; `duration`, `offset` (seconds into the file), `lang`,
`translation` (the reference for speech translation) and `translation_lang` are optional (the
same fields `speechlora data` writes). Relative paths
resolve against the manifest's folder. Bad lines are reported together, with their numbers.

A local Hugging Face dataset is a folder written by `Dataset.save_to_disk` /
`DatasetDict.save_to_disk` (arrow files), or parquet files; columns follow the leaderboard's
names: `audio` (the `{bytes, path}` struct or `{array, sampling_rate}`), the transcript in the
first of `text`, `sentence`, `normalized_text`, `transcript`, `transcription`, optional `id`,
`translation`, `lang`. They are read with pyarrow directly (memory-mapped; audio decoded one
batch at a time), so neither the `datasets` package nor its audio decoding backend is needed.

Every dataset gets the leaderboard's identity (dataset path, name, split), which names its result
file: by default the containing folder's name, the file or folder name, and "test" (or the
DatasetDict split); `NAME[:SPLIT]=PATH` on the command line overrides name and split.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from speech.errors import UserError

# The leaderboard's transcript columns, in its order of preference (data_utils.get_text).
TEXT_COLUMNS = ("text", "sentence", "normalized_text", "transcript", "transcription")
LANG_COLUMNS = ("lang", "language", "locale")
MAX_REPORTED_ERRORS = 10


class AudioSource(Protocol):
    def exists(self) -> bool: ...
    def load(self) -> np.ndarray: ...


@dataclass(frozen=True)
class FileAudio:
    """An audio file on disk, optionally a slice of it (NeMo's `offset` and `duration`)."""

    path: Path
    offset: float = 0.0
    duration: float | None = None

    def exists(self) -> bool:
        return self.path.is_file()

    def load(self) -> np.ndarray:
        from encoder.audio import check_audio, load_audio, to_mono_16k

        if not self.offset:
            audio = load_audio(self.path, allow_silence=True)
            if self.duration is None:
                return audio
            return check_audio(audio[: int(round(self.duration * 16_000))], str(self.path), True)
        import soundfile as sf

        from speech.errors import AudioError

        try:
            info = sf.info(str(self.path))
            start = int(round(self.offset * info.samplerate))
            frames = -1 if self.duration is None else int(round(self.duration * info.samplerate))
            data, rate = sf.read(str(self.path), start=start, frames=frames, dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError) as exc:
            raise AudioError(f"{self.path}: cannot decode audio ({exc})") from None
        return check_audio(to_mono_16k(data, rate), f"{self.path}@{self.offset}s", True)


@dataclass(frozen=True)
class ArrowAudio:
    """One row of an arrow/parquet `audio` column, decoded only when loaded."""

    table: object = field(repr=False)  # pyarrow.Table
    column: str
    row: int
    base_dir: Path

    def _cell(self) -> dict:
        return self.table.column(self.column)[self.row].as_py() or {}

    def _path(self, cell: dict) -> Path | None:
        if not cell.get("path"):
            return None
        path = Path(cell["path"])
        if path.is_absolute() or not (self.base_dir / path).exists():
            return path
        return self.base_dir / path

    def exists(self) -> bool:
        scalar = self.table.column(self.column)[self.row]  # look at the fields without copying the bytes
        if not scalar.is_valid:
            return False
        fields = {name: scalar[name] for name in scalar.type.names} if hasattr(scalar.type, "names") else {}
        if any(name in fields and fields[name].is_valid for name in ("bytes", "array")):
            return True
        path = self._path({"path": fields["path"].as_py()} if "path" in fields else {})
        return path is not None and path.is_file()

    def load(self) -> np.ndarray:
        from encoder.audio import check_audio, decode_audio_bytes, load_audio, to_mono_16k

        cell = self._cell()
        name = cell.get("path") or f"row {self.row}"
        if cell.get("bytes"):
            return decode_audio_bytes(cell["bytes"], name, allow_silence=True)
        if cell.get("array") is not None:
            audio = to_mono_16k(np.asarray(cell["array"], dtype=np.float32), int(cell["sampling_rate"]))
            return check_audio(audio, name, True)
        path = self._path(cell)
        if path is None:
            from speech.errors import AudioError

            raise AudioError(f"{name}: audio cell holds neither bytes, an array nor a path")
        return load_audio(path, allow_silence=True)


@dataclass(frozen=True)
class Utterance:
    index: int  # position in the dataset: results are merged back in this order
    audio_id: str  # written as `audio_filepath` (the manifest's path as written, or the dataset id)
    text: str  # reference transcript ("" when the dataset has none)
    audio: AudioSource = field(repr=False)
    translation: str | None = None
    lang: str | None = None  # language of `text`
    translation_lang: str | None = None  # language of `translation`
    duration: float | None = None  # from the manifest, used to sort batches by length


@dataclass
class EvalDataset:
    """One dataset (one split) to evaluate, with the leaderboard's identity parts."""

    path: str  # the leaderboard's "dataset_path" part
    name: str
    split: str
    origin: Path  # the file or folder it was read from
    utterances: list[Utterance]

    @property
    def dataset_id(self) -> str:
        return "_".join(part.replace("/", "-") for part in (self.path, self.name, self.split))


def parse_spec(spec: str) -> tuple[Path, str | None, str | None]:
    """`PATH` or `NAME[:SPLIT]=PATH` -> (path, name, split). A spec that exists as a path wins."""
    if "=" in spec and not Path(spec).exists():
        label, path = spec.split("=", 1)
        name, _, split = label.partition(":")
        if not name or not path:
            raise UserError(f"bad dataset spec {spec!r}; expected PATH or NAME[:SPLIT]=PATH")
        return Path(path), name, split or None
    return Path(spec), None, None


def _folder_label(path: Path) -> str:
    return path.resolve().parent.name or "local"


def _bad_lines(source: Path, errors: list[str]) -> UserError:
    shown = "; ".join(errors[:MAX_REPORTED_ERRORS])
    more = f"; and {len(errors) - MAX_REPORTED_ERRORS} more" if len(errors) > MAX_REPORTED_ERRORS else ""
    return UserError(f"{source}: {len(errors)} bad manifest line(s): {shown}{more}")


def _optional_str(entry: dict, key: str, errors: list[str], line: int) -> str | None:
    value = entry.get(key)
    if value is not None and not isinstance(value, str):
        errors.append(f"line {line}: '{key}' must be a string")
        return None
    return value


def read_manifest(path: str | Path, name: str | None = None, split: str | None = None) -> EvalDataset:
    """Read a NeMo jsonl manifest; every malformed line is reported (with its number) in one error."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such manifest file")
    base = path.resolve().parent
    utterances: list[Utterance] = []
    errors: list[str] = []
    with path.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as exc:
                errors.append(f"line {line_no}: not JSON ({exc.msg})")
                continue
            if not isinstance(entry, dict):
                errors.append(f"line {line_no}: expected a JSON object")
                continue
            missing = [k for k in ("audio_filepath", "text") if k not in entry]
            if missing:
                errors.append(f"line {line_no}: missing {', '.join(repr(k) for k in missing)}")
                continue
            audio_path = entry["audio_filepath"]
            if not isinstance(audio_path, str) or not audio_path:
                errors.append(f"line {line_no}: 'audio_filepath' must be a non-empty string")
                continue
            line_errors: list[str] = []
            text = _optional_str(entry, "text", line_errors, line_no)
            translation = _optional_str(entry, "translation", line_errors, line_no)
            lang = _optional_str(entry, "lang", line_errors, line_no)
            translation_lang = _optional_str(entry, "translation_lang", line_errors, line_no)
            numbers = {}
            for key in ("duration", "offset"):
                value = entry.get(key)
                if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
                    line_errors.append(f"line {line_no}: '{key}' must be a non-negative number")
                numbers[key] = value
            if line_errors:
                errors.extend(line_errors)
                continue
            offset = float(numbers["offset"] or 0.0)
            duration = None if numbers["duration"] is None else float(numbers["duration"])
            resolved = Path(audio_path) if Path(audio_path).is_absolute() else base / audio_path
            audio = FileAudio(resolved, offset, duration if offset or "offset" in entry else None)
            utterances.append(
                Utterance(len(utterances), audio_path, text or "", audio, translation, lang, translation_lang, duration)
            )
    if errors:
        raise _bad_lines(path, errors)
    if not utterances:
        raise UserError(f"{path}: the manifest holds no utterances")
    return EvalDataset(_folder_label(path), name or path.stem, split or "test", path, utterances)


def is_hf_dataset(path: Path) -> bool:
    """A save_to_disk folder (Dataset or DatasetDict), a parquet file, or a folder of parquet files."""
    if path.is_file():
        return path.suffix == ".parquet"
    return path.is_dir() and (
        (path / "dataset_dict.json").is_file()
        or (path / "state.json").is_file()
        or any(path.rglob("*.parquet"))
    )


def _read_arrow_folder(folder: Path):
    import pyarrow as pa

    state = json.loads((folder / "state.json").read_text())
    tables = []
    for data_file in state.get("_data_files", []):
        with pa.memory_map(str(folder / data_file["filename"])) as source:
            tables.append(pa.ipc.open_stream(source).read_all())
    if not tables:
        raise UserError(f"{folder}: the dataset holds no data files")
    return pa.concat_tables(tables) if len(tables) > 1 else tables[0], state.get("_split")


def _read_parquet(paths: list[Path]):
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = [pq.read_table(str(p), memory_map=True) for p in paths]
    return pa.concat_tables(tables, promote_options="default") if len(tables) > 1 else tables[0]


def _pyarrow_needed() -> UserError:
    return UserError("reading Hugging Face datasets needs pyarrow: pip install 'speechlora[datasets]' (or pyarrow)")


def _table_to_dataset(table, origin: Path, label: str, name: str, split: str) -> EvalDataset:
    import pyarrow as pa
    import pyarrow.compute as pc

    columns = table.column_names
    audio_column = "audio" if "audio" in columns else None
    if audio_column is None:
        raise UserError(f"{origin}: no 'audio' column (columns: {', '.join(columns)})")
    text_column = next((c for c in TEXT_COLUMNS if c in columns), None)
    if text_column is None:
        raise UserError(
            f"{origin}: no transcript column; expected one of {', '.join(TEXT_COLUMNS)} "
            f"(columns: {', '.join(columns)})"
        )
    wanted = (text_column, "id", "translation", "translation_lang", *LANG_COLUMNS)
    data = {c: table.column(c).to_pylist() for c in wanted if c in columns}
    lang_column = next((c for c in LANG_COLUMNS if c in columns), None)
    audio_type = table.schema.field(audio_column).type
    path_values = None
    if pa.types.is_struct(audio_type) and audio_type.get_field_index("path") >= 0:
        path_values = pc.struct_field(table.column(audio_column), "path").to_pylist()  # not the bytes
    base = origin if origin.is_dir() else origin.parent
    utterances = []
    for row in range(table.num_rows):
        if "id" in data and data["id"][row] is not None:
            audio_id = str(data["id"][row])
        elif path_values and path_values[row]:
            audio_id = path_values[row]
        else:
            audio_id = f"sample_{row}"
        translation = data["translation"][row] if "translation" in data else None
        translation_lang = data["translation_lang"][row] if "translation_lang" in data else None
        lang = data[lang_column][row] if lang_column else None
        utterances.append(
            Utterance(
                index=row,
                audio_id=audio_id,
                text=data[text_column][row] or "",
                audio=ArrowAudio(table, audio_column, row, base),
                translation=translation if isinstance(translation, str) else None,
                lang=lang if isinstance(lang, str) else None,
                translation_lang=translation_lang if isinstance(translation_lang, str) else None,
            )
        )
    if not utterances:
        raise UserError(f"{origin}: the dataset holds no rows")
    return EvalDataset(label, name, split, origin, utterances)


def read_hf_dataset(path: str | Path, name: str | None = None, split: str | None = None) -> list[EvalDataset]:
    """Read a local Hugging Face dataset; a DatasetDict yields one dataset per split (or `split`)."""
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise _pyarrow_needed() from None
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such dataset file or folder")
    label = _folder_label(path)
    folder_name = path.resolve().name
    if path.is_file():
        if path.suffix != ".parquet":
            raise UserError(f"{path}: not a parquet file or a dataset folder")
        table = _read_parquet([path])
        return [_table_to_dataset(table, path, label, name or path.stem, split or "test")]
    if (path / "dataset_dict.json").is_file():
        splits = json.loads((path / "dataset_dict.json").read_text()).get("splits", [])
        if split is not None and split not in splits:
            raise UserError(f"{path}: no split {split!r}; splits: {', '.join(splits)}")
        chosen = [split] if split else splits
        out = []
        for s in chosen:
            table, _ = _read_arrow_folder(path / s)
            out.append(_table_to_dataset(table, path / s, label, name or folder_name, s))
        return out
    if (path / "state.json").is_file():
        table, saved_split = _read_arrow_folder(path)
        return [_table_to_dataset(table, path, label, name or folder_name, split or saved_split or "test")]
    files = sorted(path.rglob("*.parquet"))
    if not files:
        raise UserError(f"{path}: not a Hugging Face dataset (no dataset_dict.json, state.json or parquet files)")
    return [_table_to_dataset(_read_parquet(files), path, label, name or folder_name, split or "test")]


def load_datasets(manifests: list[str], datasets: list[str]) -> list[EvalDataset]:
    """Every `--manifest` and `--dataset` spec, in order; refuses two datasets with one identity."""
    out: list[EvalDataset] = []
    for spec in manifests:
        path, name, split = parse_spec(spec)
        out.append(read_manifest(path, name, split))
    for spec in datasets:
        path, name, split = parse_spec(spec)
        out.extend(read_hf_dataset(path, name, split))
    seen: dict[str, Path] = {}
    for ds in out:
        if ds.dataset_id in seen:
            raise UserError(
                f"{ds.origin} and {seen[ds.dataset_id]} both have the id {ds.dataset_id!r}; "
                "name one of them with NAME[:SPLIT]=PATH"
            )
        seen[ds.dataset_id] = ds.origin
    return out
