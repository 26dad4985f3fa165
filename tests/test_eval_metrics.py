"""Scoring rules: hand-computed S/D/I, normalizer golden cases, rounding and averaging, BLEU/chrF++."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import sacrebleu

from eval.metrics import average, error_rate, round_percent, translation_score, wer
from eval.normalizers import normalize_english, normalize_multilingual, normalizer_for, uses_cer

ROOT = Path(__file__).resolve().parents[1]


# ---- S/D/I, computed by hand -------------------------------------------------------------

def test_substitution_and_deletion():
    # the cat sat on the mat / the cat sit on mat: sat->sit (S), second "the" gone (D); N = 6
    r = error_rate(["the cat sat on the mat"], ["the cat sit on mat"], normalize=False)
    assert (r.substitutions, r.deletions, r.insertions, r.hits) == (1, 1, 0, 4)
    assert r.reference_length == 6
    assert r.percent == 33.33
    assert r.top_substitutions == (("sat", "sit", 1),)
    assert r.top_deletions == (("the", 1),)


def test_insertions_can_push_wer_over_100():
    # a b c / a x b c d e f: x, d, e, f inserted; 4 errors over 3 words
    r = error_rate(["a b c"], ["a x b c d e f"], normalize=False)
    assert (r.substitutions, r.deletions, r.insertions) == (0, 0, 4)
    assert r.percent == 133.33
    assert dict(r.top_insertions) == {"x": 1, "d": 1, "e": 1, "f": 1}


def test_corpus_level_not_mean_of_utterances():
    # utterance 1: 1 error / 1 word (100 %); utterance 2: 0 errors / 9 words. Corpus: 1 / 10.
    refs = ["hello", "one two three four five six seven eight nine"]
    hyps = ["goodbye", "one two three four five six seven eight nine"]
    r = error_rate(refs, hyps, normalize=False)
    assert (r.errors, r.reference_length, r.percent) == (1, 10, 10.0)


def test_deletions_counted_per_word_and_empty_hypothesis():
    r = error_rate(["a b c d", "x"], ["", "x"], normalize=False)
    assert (r.substitutions, r.deletions, r.insertions) == (0, 4, 0)
    assert dict(r.top_deletions) == {"a": 1, "b": 1, "c": 1, "d": 1}
    assert r.percent == 80.0


def test_cer_for_chinese_ignores_spaces():
    # 你好世界 / 你好 时间啊: 世->时, 界->间 (S=2), 啊 inserted (I=1), N = 4 characters
    r = error_rate(["你好世界"], ["你好 时间啊"], lang="zh")
    assert (r.unit, r.metric) == ("char", "CER")
    assert (r.substitutions, r.deletions, r.insertions) == (2, 0, 1)
    assert r.percent == 75.0
    assert uses_cer("ja") and uses_cer("ko-KR") and not uses_cer("fr")


def test_references_dropped_like_the_leaderboard():
    refs = ["", "ignore time segment in scoring", "Ignore time segment in scoring.", "[noise]", "okay"]
    hyps = ["x", "y", "z", "w", "okay"]
    r = error_rate(refs, hyps)
    assert (r.utterances, r.dropped, r.percent) == (1, 4, 0.0)
    assert error_rate([""], ["anything"]).percent is None


def test_normalization_applies_to_both_sides():
    assert wer(["Hello, World! It's Mr. Smith."], ["hello world it is mister smith"]) == 0.0
    assert wer(["Bonjour, le MONDE !"], ["bonjour le monde"], lang="fr") == 0.0
    assert wer(["Bonjour"], ["bonjour"], lang="fr") == 0.0


# ---- normalizer golden cases -------------------------------------------------------------

@pytest.mark.parametrize("raw, expected", [
    ("Mr. Smith isn't here, he's got twenty-five dollars!", "mister smith is not here he has got $25"),  # titles, contractions, numbers, currency
    ("one hundred and one", "101"),
    ("twenty-first century", "21st century"),
    ("I colour the centre", "i color the center"),  # British -> American spelling
    ("won't can't I'd we'll", "will not can not i would we will"),
    ("It's 3 p.m. [noise] (um) hmm", "it is 3 p m"),  # bracketed tags, fillers
    ("Café naïve", "cafe naive"),  # diacritics removed in English
    ("uh, I think so, um...", "i think so"),  # ellipsis (the leaderboard's pre-step)
    ("Wait… what?", "wait what"),
    ("He said: \"Don't!\"", "he said do not"),
])
def test_english_normalizer_golden(raw, expected):
    assert normalize_english(raw) == expected
    assert normalizer_for("en-US")(raw) == expected


@pytest.mark.parametrize("raw, expected", [
    ("¿Qué tal, señor García?", "qué tal señor garcía"),  # punctuation out, diacritics kept
    ("L'été à Paris—c'est génial!", "l été à paris c est génial"),
    ("Ça va ? [bruit] (rires) Très bien…", "ça va très bien"),
    ("ＡＢＣ１２３ ﬁn", "abc123 fin"),  # NFKC: full-width, ligature
    ("Straße", "straße"),
    ("नमस्ते दुनिया।", "नमस्ते दुनिया"),  # combining vowel signs kept, danda removed
    ("你好，世界！", "你好 世界"),
])
def test_multilingual_normalizer_golden(raw, expected):
    assert normalize_multilingual(raw) == expected


# ---- rounding and averaging --------------------------------------------------------------

def test_rounding_to_two_decimals():
    assert round_percent(1 / 3) == 33.33
    assert round_percent(2 / 3) == 66.67
    assert round_percent(1 / 8) == 12.5


def test_average_is_mean_of_rounded_figures():
    per_dataset = [round_percent(2 / 3), round_percent(1 / 6), round_percent(1 / 6)]  # 66.67, 16.67, 16.67
    assert per_dataset == [66.67, 16.67, 16.67]
    assert average(per_dataset) == 33.34  # the rounded figures' mean ...
    assert round(100 * (2 / 3 + 1 / 6 + 1 / 6) / 3, 2) == 33.33  # ... not the raw rates' mean
    assert average([]) is None
    assert average([10.0, None, 20.0]) == 15.0


# ---- translation ---------------------------------------------------------------------------

HYPS = ["The cat sits on the mat.", "It is raining today!", "I like green tea very much."]
REFS = ["The cat sat on the mat.", "It's raining today!", "I really like green tea."]


def test_bleu_and_chrf_match_direct_sacrebleu_calls():
    score = translation_score(HYPS, REFS, "en")
    direct_bleu = sacrebleu.corpus_bleu(HYPS, [REFS], tokenize="13a")
    direct_chrf = sacrebleu.corpus_chrf(HYPS, [REFS], word_order=2)
    assert score.bleu == round(direct_bleu.score, 2)
    assert score.chrf == round(direct_chrf.score, 2)
    assert "tok:13a" in score.bleu_signature and "nrefs:1" in score.bleu_signature
    assert "nw:2" in score.chrf_signature  # chrF++ = chrF with word bigrams
    assert score.bleu_signature in str(score) and score.chrf_signature in str(score)


def test_bleu_uses_the_target_language_tokenizer():
    hyps, refs = ["我喜欢喝绿茶。"], ["我很喜欢喝绿茶。"]
    score = translation_score(hyps, refs, "zh")
    assert "tok:zh" in score.bleu_signature
    assert score.bleu == round(sacrebleu.corpus_bleu(hyps, [refs], tokenize="zh").score, 2)


def test_translation_drops_empty_references():
    score = translation_score(HYPS + ["extra"], REFS + [""], "en")
    assert (score.utterances, score.dropped) == (3, 1)
    assert score.bleu == translation_score(HYPS, REFS, "en").bleu


# ---- no model behind the metrics -----------------------------------------------------------

def test_metric_modules_import_no_model():
    code = (
        "import sys, eval.metrics, eval.normalizers, eval.results;"
        "eval.metrics.wer(['a b'], ['a c']);"
        "heavy = [m for m in ('torch', 'transformers', 'speech.model', 'encoder.conformer') if m in sys.modules];"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
