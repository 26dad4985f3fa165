"""The word n-gram (speech/ngram.py) and its shallow fusion into the CTC search (speech/ctc.py).

The n-gram is built from real text (Debian's fortunes when installed, else a fixed paragraph),
written as ARPA, read back, and checked as a distribution: every context's probabilities over
the vocabulary (+ </s>, <unk>) sum to one, pruned or not.
"""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from speech import ctc_search
from speech.ctc import WordFusion, _normalize, prefix_beam_search, prefix_beam_search_python, sequence_log_probs
from speech.ngram import BOS, EOS, WordNgram, build_arpa

CHARS = " 'abcdefghijklmnopqrstuvwxyz"
FALLBACK = """The cat sat on the mat. The dog sat on the log. A cat and a dog met on the mat.
The dog ran to the cat. The cat ran to the dog. The cat sat. The dog sat. A bird sang on the log."""


def _sentences() -> list[list[str]]:
    folder = Path("/usr/share/games/fortunes")
    text = ""
    if folder.is_dir():
        for name in ("fortunes", "wisdom", "people"):
            if (folder / name).is_file():
                text += (folder / name).read_text(encoding="latin-1").replace("%", ".")
    text = text or FALLBACK
    out = []
    for chunk in text.replace("!", ".").replace("?", ".").split("."):
        words = _normalize(chunk, CHARS).split()
        if words:
            out.append(words)
    return out[:3000]


@pytest.fixture(scope="module")
def corpus() -> list[list[str]]:
    return _sentences()


@pytest.mark.parametrize("order", [3, 4])
@pytest.mark.parametrize("min_count", [1, 2])
@pytest.mark.parametrize("form", ["arpa", "npz"])
def test_every_context_is_a_distribution(corpus, tmp_path, min_count, order, form):
    path = tmp_path / "lm.arpa.gz"
    info = build_arpa(corpus, path, order=order, min_count=min_count)
    if form == "npz":  # the compact form holds the same model
        WordNgram.load(path).save(tmp_path / "lm.npz")
        path = tmp_path / "lm.npz"
    lm = WordNgram.load(path)
    assert lm.order == order and info["ngrams"][0] == len(lm.vocabulary) + 3  # + <s>, </s>, <unk>
    assert lm.sizes() == info["ngrams"]
    outcomes = [*lm.vocabulary, EOS]
    common = corpus[0][:3]
    for context in [(BOS,), tuple(common[:1]), tuple(common[:2]), tuple(common), ("the",), ("zzzz", "qqqq"), ()]:
        total = sum(math.exp(lm.score(context, w)) for w in outcomes) + math.exp(lm.unk)
        assert total == pytest.approx(1.0, abs=1e-4), context


def _same_scores(a: WordNgram, b: WordNgram, corpus, tol: float = 0.0) -> None:
    assert a.order == b.order and a.sizes() == b.sizes() and a.vocabulary == b.vocabulary
    for words in corpus[:200]:
        assert b.sentence(words) == pytest.approx(a.sentence(words), abs=tol or 1e-5)
        assert b.sentence(words[::-1]) == pytest.approx(a.sentence(words[::-1]), abs=tol or 1e-5)


def test_npz_and_arpa_convert_both_ways_and_keep_every_score(corpus, tmp_path):
    """ARPA -> .npz -> ARPA (with the command users run): the same n-grams and scores."""
    from speech.ngram import main

    build_arpa(corpus, tmp_path / "lm.arpa.gz", order=4, min_count=1)
    arpa = WordNgram.load(tmp_path / "lm.arpa.gz")
    assert main([str(tmp_path / "lm.arpa.gz"), str(tmp_path / "lm.npz")]) == 0
    compact = WordNgram.load(tmp_path / "lm.npz")
    _same_scores(arpa, compact, corpus)
    assert (tmp_path / "lm.npz").stat().st_size < (tmp_path / "lm.arpa.gz").stat().st_size
    assert main([str(tmp_path / "lm.npz"), str(tmp_path / "back.arpa")]) == 0
    _same_scores(arpa, WordNgram.load(tmp_path / "back.arpa"), corpus)
    # the memo is a cache, not a different answer: cold and warm lookups agree
    fresh = WordNgram.load(tmp_path / "lm.npz")
    context, word = fresh.advance(fresh.begin(), fresh.word_id(corpus[0][0])), fresh.word_id(corpus[0][1])
    assert fresh.logp(context, word) == fresh._logp(context, word) == compact.logp(context, word)


def test_ngrams_past_64_bits_are_packed_in_python_ints(corpus, tmp_path):
    """V ** order >= 2 ** 64 (a 5-gram over fortunes' ~8k words) takes the exact slow path."""
    base = len({w for words in corpus for w in words}) + 3
    order = next(n for n in range(2, 40) if base ** n >= 2 ** 64)
    build_arpa(corpus, tmp_path / "lm.arpa", order=order, min_count=1)
    arpa = WordNgram.load(tmp_path / "lm.arpa")
    assert arpa.base == base and isinstance(arpa.tables[-1].keys, list)
    assert not isinstance(arpa.tables[0].keys, list)  # the low orders keep the compact arrays
    arpa.save(tmp_path / "lm.npz")
    _same_scores(arpa, WordNgram.load(tmp_path / "lm.npz"), corpus)
    known = next(words for words in corpus if len(words) > order)  # a full-length context
    assert arpa.sentence(known) == pytest.approx(WordNgram.load(tmp_path / "lm.npz").sentence(known), abs=1e-5)
    assert arpa.sentence(known) > arpa.sentence(known[::-1])


def test_malformed_npz_files_are_refused(corpus, tmp_path):
    import numpy as np

    build_arpa(corpus[:300], tmp_path / "lm.arpa", order=3)
    WordNgram.load(tmp_path / "lm.arpa").save(tmp_path / "good.npz")
    with np.load(tmp_path / "good.npz") as data:
        arrays = {k: data[k] for k in data.files}

    def refused(name: str, match: str, **changes) -> None:
        with open(tmp_path / name, "wb") as f:
            np.savez(f, **{k: v for k, v in {**arrays, **changes}.items() if v is not None})
        with pytest.raises(ValueError, match=match):
            WordNgram.load(tmp_path / name)

    refused("newer.npz", "newer than this reader", format=np.array([99, 3]))
    refused("missing.npz", "not a speechlora n-gram", logp2=None)
    refused("shape.npz", "disagree in shape", bow3=arrays["bow3"][:-1])
    refused("ids.npz", "past the word list", ids2=arrays["ids2"] + 10 ** 6)
    refused("order.npz", "ascending", ids3=arrays["ids3"][::-1].copy())
    (tmp_path / "cut.npz").write_bytes((tmp_path / "good.npz").read_bytes()[:1000])
    with pytest.raises(ValueError, match="cut.npz"):
        WordNgram.load(tmp_path / "cut.npz")


def test_the_convert_command_says_what_is_wrong_in_one_line(tmp_path, capsys):
    from speech.ngram import main

    (tmp_path / "bad.arpa").write_text("hello\n")
    with pytest.raises(SystemExit) as stop:
        main([str(tmp_path / "bad.arpa"), str(tmp_path / "out.npz")])
    assert stop.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "bad.arpa:1" in err and "not an ARPA file" in err and "\n" not in err
    assert not (tmp_path / "out.npz").exists()


def test_pruning_shrinks_the_file_and_keeps_the_order(corpus, tmp_path):
    full = build_arpa(corpus, tmp_path / "a.arpa", min_count=1)
    pruned = build_arpa(corpus, tmp_path / "b.arpa", min_count=2)
    assert pruned["ngrams"][0] == full["ngrams"][0]  # unigrams are never pruned
    assert pruned["ngrams"][2] < full["ngrams"][2]
    lm = WordNgram.load(tmp_path / "b.arpa")
    seen = corpus[0]
    shuffled = list(reversed(seen))
    assert lm.sentence(seen) > lm.sentence(shuffled) or seen == shuffled


def test_arpa_round_trip_matches_the_header(corpus, tmp_path):
    path = tmp_path / "lm.arpa.gz"
    info = build_arpa(corpus, path)
    with gzip.open(path, "rt") as f:
        text = f.read()
    for n, size in enumerate(info["ngrams"], 1):
        assert f"ngram {n}={size}" in text
        section = text.split(f"\\{n}-grams:\n")[1].split("\n\n")[0]
        assert len(section.strip().splitlines()) == size


def test_malformed_files_are_refused(tmp_path):
    bad = tmp_path / "bad.arpa"
    bad.write_text("\\data\\\nngram 1=2\n\n\\1-grams:\n-1.0\n\\end\\\n")
    with pytest.raises(ValueError, match="bad.arpa:5"):
        WordNgram.load(bad)
    (tmp_path / "empty.arpa").write_text("hello\n")
    with pytest.raises(ValueError):
        WordNgram.load(tmp_path / "empty.arpa")


def _spell(text: str, sharp: float = 4.0) -> torch.Tensor:
    """CTC log-probs that spell `text` one character per slot with blanks between (peaked)."""
    blank = len(CHARS)
    rows = []
    for c in text:
        rows += [CHARS.index(c), blank]
    logits = torch.zeros(len(rows), blank + 1, dtype=torch.float64)
    for t, i in enumerate(rows):
        logits[t, i] = sharp
    return F.log_softmax(logits, -1)


def test_fusion_prefers_known_words_over_a_near_spelling(corpus, tmp_path):
    """CTC slightly prefers "tha cat" over "the cat"; the n-gram knows "the" and flips it."""
    path = tmp_path / "lm.arpa.gz"
    build_arpa(corpus + [["the", "cat"]] * 5, path)
    lm = WordNgram.load(path)
    lp = _spell("tha cat")
    e, a = CHARS.index("e"), CHARS.index("a")
    slot = 2 * 2  # the third character's slot
    lp[slot, a], lp[slot, e] = math.log(0.5), math.log(0.4)
    lp[slot] = torch.log_softmax(lp[slot], -1)
    plain = prefix_beam_search(lp, len(lp), CHARS, beam=16)
    assert plain[0][0] == "tha cat"
    fused = prefix_beam_search(lp, len(lp), CHARS, beam=16, fusion=WordFusion(lm, CHARS, alpha=1.0, beta=0.0))
    assert fused[0][0] == "the cat"
    # the fused score is CTC's plus the n-gram's (CTC's: the beam's alignments, with a trailing
    # space or not, so near the exact sum over alignments, not equal to it)
    fusion = WordFusion(lm, CHARS, alpha=1.0, beta=0.5)
    fused = dict(prefix_beam_search(lp, len(lp), CHARS, beam=64, fusion=fusion))
    exact = sequence_log_probs(lp, len(lp), ["the cat"], CHARS)[0]
    ctc_part = fused["the cat"] - fusion.text_score("the cat")
    assert abs(ctc_part - exact) < 0.1 < abs(fusion.text_score("the cat"))


def test_oov_penalty_turns_an_unknown_spelling_into_a_known_word(corpus, tmp_path):
    """CTC prefers "the cxt" (no such word); with the n-gram silent (alpha 0) only the OOV penalty
    can flip it to "the cat", and it does so both in the search and in whole-text rescoring."""
    path = tmp_path / "lm.arpa.gz"
    build_arpa(corpus + [["the", "cat"]] * 5, path)
    lm = WordNgram.load(path)
    assert "cat" in lm.vocabulary and "cxt" not in lm.vocabulary
    lp = _spell("the cxt")
    x, a = CHARS.index("x"), CHARS.index("a")
    slot = 2 * 5  # "c" is the fifth character, "x" the sixth
    lp[slot, x], lp[slot, a] = math.log(0.5), math.log(0.2)
    lp[slot] = torch.log_softmax(lp[slot], -1)
    silent = WordFusion(lm, CHARS, alpha=0.0, beta=0.0)
    assert prefix_beam_search(lp, len(lp), CHARS, beam=16, fusion=silent)[0][0] == "the cxt"
    strict = WordFusion(lm, CHARS, alpha=0.0, beta=0.0, oov_penalty=5.0)
    assert prefix_beam_search(lp, len(lp), CHARS, beam=16, fusion=strict)[0][0] == "the cat"
    assert strict.text_score("the cxt") == pytest.approx(-5.0)
    assert strict.text_score("the cat") == 0.0 == silent.text_score("the cxt")


def test_fusion_with_zero_weights_is_plain_ctc(corpus, tmp_path):
    path = tmp_path / "lm.arpa.gz"
    build_arpa(corpus, path)
    torch.manual_seed(0)
    lp = F.log_softmax(torch.randn(12, len(CHARS) + 1, dtype=torch.float64) * 3, -1)
    plain = prefix_beam_search(lp, 12, CHARS, beam=8)
    zero = prefix_beam_search(lp, 12, CHARS, beam=8, fusion=WordFusion(WordNgram.load(path), CHARS, 0.0, 0.0))
    assert [t for t, _ in plain] == [t for t, _ in zero]
    assert [s for _, s in plain] == pytest.approx([s for _, s in zero])


def _spoken_log_probs(words: list[str], seed: int) -> torch.Tensor:
    """Log-probs that spell `words` with CTC's uncertainty: each character's slot puts most of its
    mass on the character and spreads the rest (noise), and a blank slot follows, so every beam
    has rivals, misspellings and unknown words to weigh."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for c in " ".join(words):
        for target in (CHARS.index(c), len(CHARS)):
            logits = torch.randn(len(CHARS) + 1, generator=generator, dtype=torch.float64) * 1.5
            logits[target] += 4.0
            rows.append(logits)
    return F.log_softmax(torch.stack(rows), -1)


@pytest.mark.skipif(not ctc_search.available(), reason="numba is not installed")
@pytest.mark.parametrize("order", [2, 4])
def test_compiled_search_gives_the_python_search_answer(corpus, tmp_path, order):
    """The compiled search (speech/ctc_search.py) keeps the Python reference's n-best lists and
    scores exactly, fused or not, across weights, bonuses, penalties, beams and pruning."""
    # a word the head cannot spell whole (from a foreign ARPA): its spellable prefix "zqx" is still a
    # known prefix, so an open "zqx" pays no unknown-word penalty in either search
    build_arpa(corpus + [["the", "zqx’y"]] * 3, tmp_path / "lm.arpa", order=order, min_count=1)
    lm = WordNgram.load(tmp_path / "lm.arpa")
    assert "zqx" in lm.prefixes() and "zqx" not in lm.vocabulary
    fusions = [None, WordFusion(lm, CHARS, 0.7, 1.0, 8.0), WordFusion(lm, CHARS, 1.5, -0.5, 0.0),
               WordFusion(lm, CHARS, 0.0, 0.0, 3.0)]
    checked = 0
    for seed, words in enumerate([["the", "zqx", "cat"], ["zqx"]] + corpus[:12]):
        lp = _spoken_log_probs(words[:8], seed)
        for fusion, beam, prune in zip(fusions * 2, [4, 16, 64, 8, 32, 1, 128, 2], [-7.0, -4.0, -math.inf, -12.0] * 2):
            fast = prefix_beam_search(lp, len(lp) - seed % 3, CHARS, beam=beam, prune=prune, fusion=fusion)
            slow = prefix_beam_search_python(lp, len(lp) - seed % 3, CHARS, beam=beam, prune=prune, fusion=fusion)
            assert fast == slow, (words, beam, prune)
            checked += len(fast)
    assert checked > 500  # the lists are long enough to disagree if the searches did
    with pytest.raises(ValueError, match="beam"):
        prefix_beam_search(lp, len(lp), CHARS, beam=0, fusion=fusions[1])


def test_an_ngram_past_63_bits_uses_the_python_search(corpus, tmp_path):
    """Packed keys that could pass int64 (base ** order >= 2 ** 63) cannot go to the compiled
    kernel; the search falls back to Python and answers the same."""
    base = len({w for words in corpus for w in words}) + 3
    order = next(n for n in range(2, 40) if base ** n >= 2 ** 63)
    build_arpa(corpus, tmp_path / "lm.arpa", order=order, min_count=1)
    fusion = WordFusion(WordNgram.load(tmp_path / "lm.arpa"), CHARS, 0.7, 1.0, 8.0)
    assert fusion.arrays() is None
    lp = _spoken_log_probs(corpus[0][:6], 0)
    assert prefix_beam_search(lp, len(lp), CHARS, beam=16, fusion=fusion) == \
        prefix_beam_search_python(lp, len(lp), CHARS, beam=16, fusion=fusion)
