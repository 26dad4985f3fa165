"""Corpus-level WER/CER (with S/D/I and the most frequent errors), BLEU/chrF++, RTFx, averaging.

The rules are the Open ASR Leaderboard's, so our numbers can sit beside its table:
- both sides normalized (`eval.normalizers`); references that are empty after normalization, or
  equal to "ignore time segment in scoring", are dropped with their prediction;
- corpus WER = sum(S + D + I) / sum(reference words), reported as a percentage rounded to 2
  decimals; the average over datasets is the unweighted mean of those rounded figures;
- RTFx = total audio seconds / total inference seconds.

Translation is scored on raw (detokenized) text with sacrebleu's object API, using the target
language's tokenizer (13a; zh for Chinese; ja-mecab for Japanese), and the signature is kept with
the score so a reader can reproduce it.

This module imports no model: fine-tuning imports it for validation WER.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Iterable, Sequence

import jiwer

from eval.normalizers import base_language, normalizer_for, uses_cer

log = logging.getLogger(__name__)

IGNORED_REFERENCE = "ignore time segment in scoring"


def is_scored_reference(normalized: str) -> bool:
    """The leaderboard's filter: a reference counts unless empty or the 'ignore' marker."""
    text = normalized.strip()
    return bool(text) and text.lower() != IGNORED_REFERENCE


def round_percent(fraction: float) -> float:
    """A rate in [0, inf) as a percentage rounded to 2 decimals, as the leaderboard rounds it."""
    return round(100 * fraction, 2)


def average(percents: Iterable[float]) -> float | None:
    """The leaderboard's composite: unweighted mean of per-dataset (already rounded) figures."""
    values = [p for p in percents if p is not None]
    if not values:
        return None
    return round(sum(values) / len(values), 2)


def rtfx(audio_seconds: float, inference_seconds: float) -> float | None:
    """Real-time factor inverse: audio seconds processed per second of compute (None if not timed)."""
    if not audio_seconds or not inference_seconds or inference_seconds <= 0:
        return None
    return audio_seconds / inference_seconds


@dataclass(frozen=True)
class ErrorRate:
    """Corpus error counts for one dataset. `unit` is 'word' (WER) or 'char' (CER)."""

    unit: str
    substitutions: int
    deletions: int
    insertions: int
    hits: int
    utterances: int  # scored pairs
    dropped: int  # pairs whose reference was empty or "ignore time segment in scoring"
    top_substitutions: tuple[tuple[str, str, int], ...] = field(default=())
    top_insertions: tuple[tuple[str, int], ...] = field(default=())
    top_deletions: tuple[tuple[str, int], ...] = field(default=())

    @property
    def reference_length(self) -> int:
        return self.substitutions + self.deletions + self.hits

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def rate(self) -> float | None:
        """Errors per reference unit as a fraction (None when nothing was scored)."""
        return self.errors / self.reference_length if self.reference_length else None

    @property
    def percent(self) -> float | None:
        """The reported figure: percentage rounded to 2 decimals."""
        return None if self.rate is None else round_percent(self.rate)

    @property
    def metric(self) -> str:
        return "CER" if self.unit == "char" else "WER"

    def to_dict(self) -> dict:
        data = asdict(self)
        data.update(metric=self.metric, percent=self.percent, reference_length=self.reference_length)
        data["top_substitutions"] = [{"ref": r, "hyp": h, "count": c} for r, h, c in self.top_substitutions]
        data["top_insertions"] = [{"hyp": w, "count": c} for w, c in self.top_insertions]
        data["top_deletions"] = [{"ref": w, "count": c} for w, c in self.top_deletions]
        return data


def _prepare(
    references: Sequence[str], hypotheses: Sequence[str], lang: str | None, normalize: bool
) -> tuple[list[str], list[str], int]:
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    norm = normalizer_for(lang) if normalize else (lambda s: " ".join(s.split()))
    refs, hyps, dropped = [], [], 0
    for ref, hyp in zip(references, hypotheses):
        ref_n = norm(ref or "")
        if not is_scored_reference(ref_n) or not is_scored_reference(ref or ""):
            dropped += 1
            continue
        refs.append(ref_n)
        hyps.append(norm(hyp or ""))
    return refs, hyps, dropped


def _top_errors(output, top: int) -> tuple[tuple, tuple, tuple]:
    """Count errors per unit from jiwer's alignment (jiwer's own counter merges runs of deletions)."""
    subs: Counter = Counter()
    ins: Counter = Counter()
    dels: Counter = Counter()
    for ref, hyp, chunks in zip(output.references, output.hypotheses, output.alignments):
        for chunk in chunks:
            r = ref[chunk.ref_start_idx : chunk.ref_end_idx]
            h = hyp[chunk.hyp_start_idx : chunk.hyp_end_idx]
            if chunk.type == "substitute":
                subs.update(zip(r, h))
            elif chunk.type == "delete":
                dels.update(r)
            elif chunk.type == "insert":
                ins.update(h)
    ordered = lambda c: sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))[:top]  # noqa: E731
    return (
        tuple((r, h, n) for (r, h), n in ordered(subs)),
        tuple(ordered(ins)),
        tuple(ordered(dels)),
    )


def error_rate(
    references: Sequence[str],
    hypotheses: Sequence[str],
    lang: str | None = "en",
    *,
    normalize: bool = True,
    unit: str | None = None,
    top: int = 10,
) -> ErrorRate:
    """Corpus WER (or CER for zh/ja/ko) over paired references and hypotheses.

    `unit` forces 'word' or 'char'; by default it follows the language. For CER, whitespace is
    removed after normalization so that word segmentation does not count as an error.
    """
    unit = unit or ("char" if uses_cer(lang) else "word")
    if unit not in ("word", "char"):
        raise ValueError(f"unit must be 'word' or 'char', not {unit!r}")
    refs, hyps, dropped = _prepare(references, hypotheses, lang, normalize)
    if not refs:
        return ErrorRate(unit, 0, 0, 0, 0, 0, dropped)
    if unit == "char":
        refs = ["".join(r.split()) for r in refs]
        hyps = ["".join(h.split()) for h in hyps]
        output = jiwer.process_characters(refs, hyps)
    else:
        output = jiwer.process_words(refs, hyps)
    subs, ins, dels = _top_errors(output, top)
    return ErrorRate(
        unit=unit,
        substitutions=output.substitutions,
        deletions=output.deletions,
        insertions=output.insertions,
        hits=output.hits,
        utterances=len(refs),
        dropped=dropped,
        top_substitutions=subs,
        top_insertions=ins,
        top_deletions=dels,
    )


def wer(references: Sequence[str], hypotheses: Sequence[str], lang: str | None = "en") -> float | None:
    """WER (CER for zh/ja/ko) in percent, rounded to 2 decimals; None if no reference is scored."""
    return error_rate(references, hypotheses, lang, top=0).percent


@dataclass(frozen=True)
class TranslationScore:
    """Corpus BLEU and chrF++ with the sacrebleu signatures that make them reproducible."""

    bleu: float
    chrf: float
    bleu_signature: str
    chrf_signature: str
    utterances: int
    dropped: int
    target_lang: str

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return (
            f"BLEU = {self.bleu:.2f} ({self.bleu_signature}); "
            f"chrF++ = {self.chrf:.2f} ({self.chrf_signature})"
        )


def _bleu_for(target_lang: str):
    from sacrebleu.metrics import BLEU

    try:
        return BLEU(trg_lang=target_lang)
    except RuntimeError as exc:  # ja-mecab / ko-mecab need sacrebleu[ja] / sacrebleu[ko]
        log.warning(
            "BLEU tokenizer for %r unavailable (%s); falling back to 'char' "
            "(the signature says tok:char). Install sacrebleu[%s] for the standard one.",
            target_lang,
            str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__,
            target_lang,
        )
        return BLEU(trg_lang=target_lang, tokenize="char")


def translation_score(
    hypotheses: Sequence[str], references: Sequence[str], target_lang: str
) -> TranslationScore:
    """BLEU and chrF++ (chrF with word bigrams) on raw text; empty references are dropped."""
    from sacrebleu.metrics import CHRF

    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    lang = base_language(target_lang)
    pairs = [(h or "", r) for h, r in zip(hypotheses, references) if (r or "").strip()]
    hyps = [h for h, _ in pairs]
    refs = [[r for _, r in pairs]]
    bleu, chrf = _bleu_for(lang), CHRF(word_order=2)
    if not pairs:
        return TranslationScore(0.0, 0.0, "", "", 0, len(references), lang)
    bleu_score = bleu.corpus_score(hyps, refs)
    chrf_score = chrf.corpus_score(hyps, refs)
    return TranslationScore(
        bleu=round(bleu_score.score, 2),
        chrf=round(chrf_score.score, 2),
        bleu_signature=str(bleu.get_signature()),
        chrf_signature=str(chrf.get_signature()),
        utterances=len(pairs),
        dropped=len(references) - len(pairs),
        target_lang=lang,
    )
