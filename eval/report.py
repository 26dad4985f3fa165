"""Scoring a folder of result files and reporting it: markdown + json tables and a PNG chart.

Scoring follows the leaderboard's `score_results`: every `*.jsonl` under the folder (recursively)
is one dataset of one model (read from its `MODEL_..._DATASET_...` name); per dataset WER (CER for
zh/ja/ko) from S/D/I over normalized text, rounded to 2 decimals; RTFx = sum(duration) / sum(time)
when every row is timed; per model, the average is the unweighted mean of the rounded per-dataset
figures and the RTFx is total audio / total time. Speech-translation files (`"task": "translate"`,
or the second output of `"both"`) get BLEU and chrF++ with their sacrebleu signatures.

Files written by other tools score too: rows need only the leaderboard's five fields; the
reference language comes from a row's `lang` or from `--lang`.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from eval.metrics import ErrorRate, TranslationScore, average, error_rate, rtfx, translation_score
from eval.results import parse_result_filename, read_rows, skipped_path
from speech.errors import UserError

log = logging.getLogger(__name__)

REPORT_MD = "report.md"
REPORT_JSON = "report.json"
REPORT_PNG = "wer.png"


@dataclass
class DatasetScore:
    file: Path
    model_id: str
    dataset_id: str
    task: str
    lang: str
    rows: int
    audio_seconds: float
    inference_seconds: float | None
    error: ErrorRate | None = None
    translation: TranslationScore | None = None
    skipped: dict = field(default_factory=dict)  # missing/unreadable/dropped counts from the sidecar

    @property
    def hours(self) -> float:
        return self.audio_seconds / 3600

    @property
    def rtfx(self) -> float | None:
        value = rtfx(self.audio_seconds, self.inference_seconds or 0.0)
        return None if value is None else round(value, 2)

    def to_dict(self) -> dict:
        return {
            "file": self.file.name,
            "model": self.model_id,
            "dataset": self.dataset_id,
            "task": self.task,
            "lang": self.lang,
            "utterances": self.rows,
            "hours": round(self.hours, 4),
            "audio_seconds": self.audio_seconds,
            "inference_seconds": self.inference_seconds,
            "rtfx": self.rtfx,
            "error_rate": self.error.to_dict() if self.error else None,
            "translation": self.translation.to_dict() if self.translation else None,
            "skipped": self.skipped,
        }


def _file_lang(rows: list[dict], key: str, default: str) -> str:
    langs = Counter(row.get(key) or default for row in rows)
    if len(langs) > 1:
        log.warning("rows in several languages %s; normalizing all as %r", dict(langs), langs.most_common(1)[0][0])
    return langs.most_common(1)[0][0] if langs else default


def score_file(path: Path, default_lang: str = "en", top: int = 10) -> DatasetScore:
    """Score one result file (ours or any tool's in the leaderboard's format)."""
    try:
        rows = read_rows(path)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    for number, row in enumerate(rows, start=1):
        absent = [k for k in ("text", "pred_text") if k not in row]
        if absent:
            raise UserError(f"{path}: row {number} lacks {', '.join(absent)}")
    model_id, dataset_id = parse_result_filename(path.name)
    task = rows[0].get("task", "transcribe") if rows else "transcribe"
    lang = _file_lang(rows, "lang", default_lang)
    durations = [row.get("duration") for row in rows]
    times = [row.get("time") for row in rows]
    timed = bool(rows) and all(times) and all(durations)  # the leaderboard's condition
    score = DatasetScore(
        file=path,
        model_id=model_id,
        dataset_id=dataset_id,
        task=task,
        lang=lang,
        rows=len(rows),
        audio_seconds=float(sum(d for d in durations if d)),
        inference_seconds=float(sum(times)) if timed else None,
    )
    refs = [row["text"] or "" for row in rows]
    preds = [row["pred_text"] or "" for row in rows]
    if task == "translate":
        score.translation = translation_score(preds, refs, lang)
    else:
        score.error = error_rate(refs, preds, lang, top=top)
    if task == "both":
        target = _file_lang(rows, "target_lang", "en")
        score.translation = translation_score(
            [row.get("pred_translation") or "" for row in rows], [row.get("translation") or "" for row in rows], target
        )
    sidecar = skipped_path(path)
    if sidecar.exists():
        skipped = json.loads(sidecar.read_text())
        score.skipped = {k: len(v) for k, v in skipped.items()}
    return score


def score_directory(directory: str | Path, default_lang: str = "en", model_id: str | None = None,
                    top: int = 10) -> list[DatasetScore]:
    """Score every result file under `directory` (optionally only one model's)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"{directory}: no such folder")
    files = sorted(directory.rglob("*.jsonl"))
    if model_id:
        wanted = f"MODEL_{model_id.replace('/', '-')}_DATASET_"
        files = [f for f in files if wanted in f.name]
    if not files:
        raise UserError(f"{directory}: no result files (*.jsonl)" + (f" for model {model_id}" if model_id else ""))
    return [score_file(f, default_lang, top) for f in files]


def summarize(scores: list[DatasetScore]) -> dict[str, dict]:
    """Per model: the leaderboard's composite (mean of rounded per-dataset figures) and total RTFx."""
    models: dict[str, dict] = {}
    for model in dict.fromkeys(s.model_id for s in scores):
        mine = [s for s in scores if s.model_id == model]
        timed = [s for s in mine if s.inference_seconds]
        audio = sum(s.audio_seconds for s in timed)
        seconds = sum(s.inference_seconds for s in timed)
        overall = rtfx(audio, seconds) if timed and len(timed) == len(mine) else None
        models[model] = {
            "datasets": len(mine),
            "utterances": sum(s.rows for s in mine),
            "hours": round(sum(s.hours for s in mine), 4),
            "wer": average(s.error.percent for s in mine if s.error and s.error.unit == "word"),
            "cer": average(s.error.percent for s in mine if s.error and s.error.unit == "char"),
            "bleu": average(s.translation.bleu for s in mine if s.translation and s.translation.utterances),
            "chrf": average(s.translation.chrf for s in mine if s.translation and s.translation.utterances),
            "rtfx": None if overall is None else round(overall, 2),
        }
    return models


def _fmt(value, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def render_markdown(scores: list[DatasetScore], summary: dict[str, dict], top: int = 10) -> str:
    lines = ["# Evaluation results", ""]
    for model, totals in summary.items():
        mine = [s for s in scores if s.model_id == model]
        lines += [f"## {model or '(unnamed model)'}", ""]
        lines += ["| dataset | task | utterances | hours | metric | % | S | D | I | BLEU | chrF++ | RTFx | skipped |",
                  "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for s in mine:
            e, t = s.error, s.translation
            skipped = sum(s.skipped.values()) if s.skipped else 0
            lines.append(
                f"| {s.dataset_id} | {s.task} | {s.rows} | {s.hours:.3f} | {e.metric if e else '–'} "
                f"| {_fmt(e.percent if e else None)} | {e.substitutions if e else '–'} | {e.deletions if e else '–'} "
                f"| {e.insertions if e else '–'} | {_fmt(t.bleu if t else None)} | {_fmt(t.chrf if t else None)} "
                f"| {_fmt(s.rtfx)} | {skipped} |"
            )
        averages = ", ".join(f"{label} {_fmt(totals[key])}" for key, label in
                             (("wer", "WER %"), ("cer", "CER %"), ("bleu", "BLEU"), ("chrf", "chrF++"))
                             if totals[key] is not None)
        lines.append(
            f"| **average** | | {totals['utterances']} | {totals['hours']:.3f} | | {averages or '–'} "
            f"| | | | | | {_fmt(totals['rtfx'])} | |"
        )
        lines.append("")
        lines.append("Average = unweighted mean of the rounded per-dataset figures; RTFx = total audio / total time.")
        lines.append("")
        for s in mine:
            if s.translation and s.translation.utterances:
                lines.append(f"- {s.dataset_id}: {s.translation}")
            if s.skipped and any(s.skipped.values()):
                lines.append(f"- {s.dataset_id}: skipped " + ", ".join(f"{v} {k}" for k, v in s.skipped.items() if v))
        lines.append("")
        for s in mine:
            e = s.error
            if not e or not top or not (e.top_substitutions or e.top_insertions or e.top_deletions):
                continue
            lines += [f"### Most frequent errors: {s.dataset_id}", ""]
            lines.append("- substitutions: " + (", ".join(f"{r} → {h} ({n})" for r, h, n in e.top_substitutions) or "–"))
            lines.append("- insertions: " + (", ".join(f"{w} ({n})" for w, n in e.top_insertions) or "–"))
            lines.append("- deletions: " + (", ".join(f"{w} ({n})" for w, n in e.top_deletions) or "–"))
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def plot(scores: list[DatasetScore], path: Path) -> Path | None:
    """Bar chart of WER/CER per dataset, one bar group per model (matplotlib's Agg: no display)."""
    rated = [s for s in scores if s.error and s.error.percent is not None]
    if not rated:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(s.dataset_id for s in rated))
    models = list(dict.fromkeys(s.model_id for s in rated))
    width = 0.8 / len(models)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(datasets) + 2), 4.5))
    for m, model in enumerate(models):
        values = {s.dataset_id: s.error.percent for s in rated if s.model_id == model}
        xs = [d + m * width - 0.4 + width / 2 for d in range(len(datasets))]
        bars = ax.bar(xs, [values.get(d, 0.0) for d in datasets], width, label=model or "model")
        ax.bar_label(bars, labels=[_fmt(values.get(d)) for d in datasets], fontsize=7)
    units = {s.error.metric for s in rated}
    ax.set_ylabel(" / ".join(sorted(units)) + " (%)")
    ax.set_xticks(range(len(datasets)), datasets, rotation=30, ha="right", fontsize=8)
    ax.set_title("Error rate per dataset")
    if len(models) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(scores: list[DatasetScore], out_dir: str | Path, top: int = 10) -> dict[str, Path]:
    """report.md, report.json and wer.png in `out_dir`; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarize(scores)
    paths = {"markdown": out_dir / REPORT_MD, "json": out_dir / REPORT_JSON}
    paths["markdown"].write_text(render_markdown(scores, summary, top), encoding="utf-8")
    data = {"models": {m: {"average": t, "datasets": [s.to_dict() for s in scores if s.model_id == m]}
                       for m, t in summary.items()}}
    paths["json"].write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")
    chart = plot(scores, out_dir / REPORT_PNG)
    if chart:
        paths["chart"] = chart
    return paths


def print_summary(scores: list[DatasetScore]) -> None:
    """The leaderboard's console lines, plus BLEU/chrF++ with signatures."""
    for s in scores:
        line = f"{s.model_id} | {s.dataset_id}:"
        if s.error:
            line += f" {s.error.metric} = {_fmt(s.error.percent)} %"
        if s.translation:
            line += f" {s.translation}"
        if s.rtfx is not None:
            line += f", RTFx = {s.rtfx:.2f}"
        print(line)
    for model, t in summarize(scores).items():
        parts = [f"{label} = {_fmt(t[key])}" for key, label in
                 (("wer", "WER %"), ("cer", "CER %"), ("bleu", "BLEU"), ("chrf", "chrF++")) if t[key] is not None]
        if t["rtfx"] is not None:
            parts.append(f"RTFx = {t['rtfx']:.2f}")
        print(f"{model}: average " + ", ".join(parts))
