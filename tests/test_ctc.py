"""CTC rescoring (speech/ctc.py): beam search and sequence scores against brute force over all
alignments, and the lexicon that respells CTC's words."""

from __future__ import annotations

import itertools
import math
from collections import defaultdict

import pytest
import torch
import torch.nn.functional as F

from speech import ctc_search
from speech.ctc import (
    Lexicon,
    build_lexicon,
    char_ids,
    prefix_beam_search,
    prefix_beam_search_python,
    sequence_log_probs,
)

CHARS = " ab"
BLANK = len(CHARS)


def _collapse(path: tuple[int, ...]) -> str:
    out, prev = [], BLANK
    for i in path:
        if i != BLANK and i != prev:
            out.append(CHARS[i])
        prev = i
    return "".join(out)


def _brute_force(lp: torch.Tensor) -> dict[str, float]:
    """P(text) for every text, summing the probability of every alignment of a short utterance."""
    totals: dict[str, float] = defaultdict(float)
    for path in itertools.product(range(BLANK + 1), repeat=lp.shape[0]):
        totals[_collapse(path)] += math.exp(sum(lp[t, i].item() for t, i in enumerate(path)))
    return totals


@pytest.fixture()
def log_probs():
    torch.manual_seed(0)
    return F.log_softmax(torch.randn(6, BLANK + 1, dtype=torch.float64) * 2, dim=-1)


def test_sequence_log_probs_match_brute_force(log_probs):
    truth = _brute_force(log_probs)
    texts = ["a", "ab", "a b", "ba", ""]
    scores = sequence_log_probs(log_probs, 6, texts, CHARS)
    for text, score in zip(texts, scores):
        assert score == pytest.approx(math.log(truth[text]), abs=1e-9)


# the compiled search (speech/ctc_search.py, the default) and its Python reference
SEARCHES = [pytest.param(prefix_beam_search, id="compiled",
                         marks=pytest.mark.skipif(not ctc_search.available(), reason="numba is not installed")),
            pytest.param(prefix_beam_search_python, id="python")]


@pytest.mark.parametrize("search", SEARCHES)
def test_prefix_beam_search_finds_the_likeliest_transcripts(log_probs, search):
    """With a beam wide enough to keep every prefix, the n-best list is exact.

    The search never starts with a space or doubles one, and a trailing space is the same
    transcript, so the brute-force totals are folded the same way.
    """
    folded: dict[str, float] = defaultdict(float)
    for text, p in _brute_force(log_probs).items():
        if not text.startswith(" ") and "  " not in text:
            folded[text.rstrip(" ")] += p
    expected = sorted(folded.items(), key=lambda kv: -kv[1])[:5]
    found = search(log_probs, 6, CHARS, beam=10_000, prune=-math.inf)[:5]
    assert [t for t, _ in found] == [t for t, _ in expected]
    for (_, got), (_, want) in zip(found, expected):
        assert got == pytest.approx(math.log(want), abs=1e-9)


@pytest.mark.parametrize("search", SEARCHES)
def test_prefix_beam_search_honours_the_length(log_probs, search):
    """Slots past an utterance's length (batch padding) are not part of it."""
    short = search(log_probs, 4, CHARS, beam=10_000, prune=-math.inf)
    alone = search(log_probs[:4].clone(), 4, CHARS, beam=10_000, prune=-math.inf)
    assert short[:3] == alone[:3]


def test_char_ids_spell_as_the_head_was_trained():
    alphabet = " 'abcdefghijklmnopqrstuvwxyz"
    assert "".join(alphabet[i] for i in char_ids("Ça va,  Yahweh's 3 sons!", alphabet)) == "ca va yahweh's three sons"


ALPHABET = " 'abcdefghijklmnopqrstuvwxyz"
TEXT = [
    "Now the word of God came to Jerusalem.",
    "Now is the time. Now we go.",
    "We go up to Jerusalem now, and the programmer will examine it.",
    "The surface of the ground was dry, and the programmer saw it.",
]


def test_build_lexicon_keeps_usual_casing_by_frequency():
    words = build_lexicon(TEXT, ALPHABET)
    assert words[0] == "the"
    assert "Jerusalem" in words and "God" in words
    assert "now" in words and "Now" not in words  # capitalized only where it starts a sentence


def test_lexicon_writes_and_respells_ctc_text():
    lexicon = Lexicon(build_lexicon(TEXT, ALPHABET), ALPHABET)
    assert lexicon.write("we go up to jerusalem") == "We go up to Jerusalem."
    proposals = lexicon.respellings("The serfice of the ground was dri.")
    assert (1, 1, "surface") in proposals
    assert (6, 1, "dry.") in proposals  # the punctuation stays
    assert (0, 1, "The") not in [p[:3] for p in proposals]  # known words are left alone
    split = lexicon.respellings("The programerwill examine it.")
    assert (1, 1, "programmer will") in split
    joined = lexicon.respellings("the grou nd was dry")
    assert any(i == 1 and n == 2 and w == "ground" for i, n, w in joined)


def test_tuned_settings_round_trip_through_the_head_file(tmp_path):
    """tune_ctc writes its choices into ctc_head.safetensors; load reads them (inf margin = absent)."""
    import math

    import torch
    from safetensors.torch import save_file

    from speech.builtin_recipe.tune_ctc import store_weight
    from speech.ctc import DEFAULT_PRUNE, HEAD_FILE, decode_settings, head_metadata

    save_file({"weight": torch.zeros(6, 4), "bias": torch.zeros(6)}, str(tmp_path / HEAD_FILE),
              metadata={"chars": " ab", "upsample": "1"})
    assert decode_settings(head_metadata(tmp_path / HEAD_FILE))["empty_margin"] == math.inf
    assert decode_settings(head_metadata(tmp_path / HEAD_FILE))["oov_penalty"] == 0.0  # a head never tuned
    assert decode_settings(head_metadata(tmp_path / HEAD_FILE))["prune"] == DEFAULT_PRUNE
    store_weight(tmp_path, 0.5, 16, {"dev_wer": {}}, 0.3, 2.0, 10.0, 6.0, -7.0)
    meta = head_metadata(tmp_path / HEAD_FILE)
    assert meta["chars"] == " ab"
    assert decode_settings(meta) == {"decode_weight": 0.5, "beam": 16, "ngram_weight": 0.3, "word_bonus": 2.0,
                                     "empty_margin": 10.0, "oov_penalty": 6.0, "prune": -7.0}
    store_weight(tmp_path, 0.7, 8, {"dev_wer": {}}, 0.3, 2.0)
    assert decode_settings(head_metadata(tmp_path / HEAD_FILE))["empty_margin"] == math.inf
