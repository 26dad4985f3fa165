"""CTC rescoring for the built-in model: a character CTC head proposes, the speech LM judges.

Why: the built-in model's small LM decoder, still learning to read its audio, makes fluent
guesses ("the Lord is like a way" for "the veil is taken away"), while a character CTC head on
the same encoder hears well but spells by ear ("god has shon feroa"). Together they do better
than either (WeNet's "attention rescoring"): a CTC prefix beam search proposes an n-best list
of spellings, the LM's own greedy transcript joins it, and every candidate is scored by both
models, ``w * log P_ctc + (1 - w) * log P_lm(candidate | audio prompt)``. The LM knows how words
are spelled; CTC knows which words are in the audio and when it ends (an empty transcript is a
candidate too, so silence does not get a hallucinated sentence).

We tried the other classic, one-pass joint CTC/attention decoding (ESPnet), first: with an LM
this weak its few best next pieces rarely hold the right one, and one wrong word derails the
alignment for the rest of the clip (dev WER 64.9 -> 67-80 %; rescoring: 27.5 %).

CTC spells by ear, and a correct word is often not among its n-best ("serfice", "dri"). When
the folder has a word list (``lexicon.txt``, the words of the LM's training text), the best
transcript's unknown words are also tried replaced by their nearest known spellings (edit
distance, rapidfuzz), each scored the same way; a replacement is kept only if it wins, so a
word that is really new stays as heard.

The search itself can fuse in a word n-gram (``ngram.npz`` or ``ngram.arpa.gz``, speech/ngram.py, class
WordFusion): beams are ranked by ``log P_ctc + alpha * ln P_ngram(words) + beta * words`` as
they grow, so the n-best list already spells known words in likely orders, and the rescoring
keeps those terms (``w * (CTC + n-gram) + (1 - w) * LM``; at w = 1 the LM pass is skipped).

This is an option of the model folder, not of the architecture: the real Phi-4-multimodal
checkpoint has no CTC head and decodes exactly as before. The built-in model ships one
(``ctc_head.safetensors``, trained with the encoder in stage 2 of its recipe); it applies only
to English transcription, the language its characters were trained on.
"""

from __future__ import annotations

import math
import re
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn

from speech import ctc_search
from speech.checkpoint import CTC_FILES
from speech.ngram import EOS, Context, WordNgram
from speech.numbers import spell_numbers

HEAD_FILE, LEXICON_FILE = CTC_FILES[:2]
# the search's default pruning (log-prob below which a character is not tried in a slot), for a
# head whose tuning stored none
DEFAULT_PRUNE = -5.0
NGRAM_FILES = CTC_FILES[2:]  # the first found is used: the compact form, then ARPA


class CTCHead(nn.Module):
    """Linear map from each encoder frame to `upsample` CTC slots over `chars` + blank."""

    def __init__(self, hidden_size: int, chars: str, upsample: int) -> None:
        super().__init__()
        self.chars, self.upsample, self.blank = chars, upsample, len(chars)
        self.proj = nn.Linear(hidden_size, upsample * (len(chars) + 1))

    def forward(self, states: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder states [B, T, H] -> log-probs [B, T * upsample, V + 1] and slot lengths [B]."""
        logits = self.proj(states)
        logits = logits.reshape(logits.shape[0], -1, self.blank + 1)
        return torch.log_softmax(logits.float(), dim=-1), lengths * self.upsample


def head_metadata(path: Path) -> dict[str, str]:
    """A ctc_head.safetensors file's metadata (alphabet, upsampling, tuned decoding settings)."""
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def decode_settings(meta: dict[str, str]) -> dict[str, float]:
    """The tuned decoding settings in a head's metadata, with the defaults for a head never tuned."""
    return {"decode_weight": float(meta.get("decode_weight", 0.5)), "beam": int(meta.get("beam", 8)),
            "ngram_weight": float(meta.get("ngram_weight", 0.5)), "word_bonus": float(meta.get("word_bonus", 1.0)),
            "empty_margin": float(meta.get("empty_margin", "inf")), "oov_penalty": float(meta.get("oov_penalty", 0.0)),
            "prune": float(meta.get("prune", DEFAULT_PRUNE))}


def load_ctc_head(root: Path, hidden_size: int, device: torch.device) -> tuple[CTCHead, dict[str, float]] | None:
    """The head in `root`/ctc_head.safetensors and its decoding settings, or None if absent."""
    path = root / HEAD_FILE
    if not path.exists():
        return None
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
        weight, bias = f.get_tensor("weight"), f.get_tensor("bias")
    head = CTCHead(hidden_size, meta["chars"], int(meta["upsample"]))
    head.proj.load_state_dict({"weight": weight.float(), "bias": bias.float()})
    return head.to(device).eval(), decode_settings(meta)


def ngram_file(root: Path) -> Path | None:
    """The folder's word n-gram file (ngram.npz, else ngram.arpa.gz), or None."""
    return next((root / name for name in NGRAM_FILES if (root / name).is_file()), None)


def load_fusion(root: Path, chars: str, settings: dict[str, float]) -> WordFusion | None:
    """The folder's word n-gram (`ngram_file`) with the head's tuned weights, or None if absent."""
    path = ngram_file(root)
    if path is None:
        return None
    return WordFusion(WordNgram.load(path), chars, settings["ngram_weight"], settings["word_bonus"],
                      settings.get("oov_penalty", 0.0))


def _normalize(text: str, chars: str) -> str:
    """What CTC can hear of a piece of text: numbers spelled, lower-cased, accents stripped, the rest spaces."""
    text = unicodedata.normalize("NFKD", spell_numbers(text).lower())
    text = "".join(c for c in text if not unicodedata.combining(c))
    return "".join(c if c in chars else " " for c in text)


def heard_words(text: str, chars: str) -> list[str]:
    """A text's words as the head spells them (the word n-gram's vocabulary)."""
    return _normalize(text, chars).split()


def char_ids(text: str, chars: str) -> list[int]:
    """A transcript as the head spells it: lower case, accents stripped, single spaces."""
    return [chars.index(c) for c in " ".join(_normalize(text, chars).split())]


class WordFusion:
    """Shallow fusion of a word n-gram into the prefix search (speech.ngram).

    A prefix scores ``log P_ctc + alpha * ln P_ngram(its words) + beta * len(words)``; a word is
    scored when the space after it (or the end) arrives, and a partial word that is no known
    word's prefix pays ``alpha * ln P(<unk>)`` at once, so misspelled beams fall out early
    instead of crowding the beam until their word ends.

    ``oov_penalty`` (nats) is charged on top for each word outside the n-gram's vocabulary. Why:
    Kneser-Ney gives <unk> about the probability of a rare known word, so at alpha 0.5 an unknown
    spelling costs no more than "blasphemer" does, and on voices the head hears badly the search
    kept spelling by ear ("lasfemor"): on the held-out flite voices 18 % of the words written were
    unknown against 0.5 % of the words spoken. pyctcdecode's ``unk_score_offset`` (-10) is the
    same knob.
    """

    def __init__(self, ngram: WordNgram, chars: str, alpha: float, beta: float, oov_penalty: float = 0.0) -> None:
        self.ngram, self.chars, self.alpha, self.beta = ngram, chars, alpha, beta
        self.oov_penalty = oov_penalty
        self.space = chars.index(" ")
        self.prefixes = ngram.prefixes()
        self.oov = alpha * ngram.unk - oov_penalty
        self.eos = ngram.word_id(EOS)

    def arrays(self) -> ctc_search.NgramArrays | None:
        """The n-gram as the compiled search reads it (built at the first call, then kept with the
        n-gram, so re-weighted fusions of one n-gram share it), or None where it cannot be."""
        cache = self.ngram.__dict__.setdefault("_search_arrays", {})
        if self.chars not in cache:
            cache[self.chars] = ctc_search.ngram_arrays(self.ngram, self.chars)
        return cache[self.chars]

    def start(self) -> tuple[float, Context, str]:
        """The empty prefix's state: (score of finished words, n-gram context, the open word)."""
        return 0.0, self.ngram.begin(), ""

    def extend(self, state: tuple, c: int) -> tuple:
        """The state of a prefix one character `c` longer."""
        if c != self.space:
            return state[0], state[1], state[2] + self.chars[c]
        return self._close(state) + ("",)

    def rank(self, state: tuple) -> float:
        """The fusion score of a prefix so far (finished words, and the open word's OOV penalty)."""
        word = state[2]
        return state[0] + (self.oov if word and word not in self.prefixes else 0.0)

    def finish(self, state: tuple) -> float:
        """The fusion score of a finished transcript: its last word and the sentence end."""
        score, context = self._close(state)
        return score + self.alpha * self.ngram.logp(context, self.eos)

    def _close(self, state: tuple) -> tuple[float, Context]:
        score, context, word = state
        if not word:
            return score, context
        ngram = self.ngram
        wid = ngram.word_id(word)
        extra = self.oov_penalty if wid == ngram.unk_id else 0.0
        return score + self.alpha * ngram.logp(context, wid) + self.beta - extra, ngram.advance(context, wid)

    def text_score(self, text: str) -> float:
        """alpha * ln P_ngram(text) + beta * words - oov_penalty * unknown words, for a whole transcript
        (rescoring)."""
        words = heard_words(text, self.chars)
        unknown = sum(w not in self.ngram.vocabulary for w in words) if self.oov_penalty else 0
        return self.alpha * self.ngram.sentence(words) + self.beta * len(words) - self.oov_penalty * unknown


def prefix_beam_search(log_probs: torch.Tensor, length: int, chars: str, beam: int = 8,
                       prune: float = DEFAULT_PRUNE, fusion: WordFusion | None = None) -> list[tuple[str, float]]:
    """The `beam` best transcripts of one utterance under CTC (and `fusion`), best first, with scores.

    The compiled search (speech.ctc_search) where it can run, else the Python one
    (`prefix_beam_search_python`); both give the same answer.
    """
    if beam < 1:
        raise ValueError(f"the beam must be at least 1, not {beam}")
    arrays = fusion.arrays() if fusion is not None else None
    if not ctc_search.available() or (fusion is not None and arrays is None):
        return prefix_beam_search_python(log_probs, length, chars, beam, prune, fusion)
    lp = log_probs[:length].double().cpu().numpy()
    if fusion is None:
        return ctc_search.search(lp, chars, beam, prune)
    return ctc_search.search(lp, chars, beam, prune, arrays, fusion.alpha, fusion.beta, fusion.oov_penalty)


_POOLS: dict[int, ThreadPoolExecutor] = {}


def prefix_beam_searches(rows: list[tuple[torch.Tensor, int]], chars: str, beam: int = 8, prune: float = DEFAULT_PRUNE,
                         fusion: WordFusion | None = None, threads: int = 1) -> list[list[tuple[str, float]]]:
    """`prefix_beam_search` for several utterances ((log-probs, length) each), on up to `threads`
    threads when the compiled search runs: it holds no GIL, so a batch's searches use every core the
    encoder used a moment before (the server decodes one batch at a time). Same answers, in order.
    """
    if fusion is not None:
        fusion.arrays()  # built once, before the threads want it
    if threads <= 1 or len(rows) <= 1 or not ctc_search.available():
        return [prefix_beam_search(lp, n, chars, beam, prune, fusion) for lp, n in rows]
    pool = _POOLS.get(threads)
    if pool is None:
        pool = _POOLS.setdefault(threads, ThreadPoolExecutor(threads, thread_name_prefix="speechlora-ctc"))
    return list(pool.map(lambda row: prefix_beam_search(row[0], row[1], chars, beam, prune, fusion), rows))


def prefix_beam_search_python(log_probs: torch.Tensor, length: int, chars: str, beam: int = 8,
                              prune: float = DEFAULT_PRUNE, fusion: WordFusion | None = None) -> list[tuple[str, float]]:
    """The `beam` best transcripts of one utterance under CTC (and `fusion`), best first, with scores:
    the reference search, in Python.

    The textbook prefix search (blank/non-blank probabilities per prefix), with characters below
    `prune` (log-prob) in a slot not tried there; no leading or double spaces. With `fusion`,
    beams are ranked and returned by CTC + word n-gram score (WordFusion).

    It runs in Python, written for the interpreter (locals, inlined log-add, plain floats): most
    slots are near-certain blanks that only carry each beam's two probabilities forward, and the
    rest touch a few characters each. A prefix is a node of a trie (an int: its parent and last
    character in lists, its children in one dict keyed by ``node * width + character``), so
    growing and looking up a prefix costs the same at any length; keyed by tuples of characters,
    every lookup hashed the whole prefix. Each rewrite kept the n-best lists and scores exactly.
    """
    inf = math.inf
    log1p, exp = math.log1p, math.exp
    lp = log_probs[:length].double().cpu().numpy()
    blank, space = len(chars), chars.index(" ")
    width = blank + 1
    live = lp[:, :blank] > prune
    rows, active = lp.tolist(), live.any(1).tolist()
    # the trie: node 0 is the empty prefix; last[n], parent[n]; children[n * width + c]
    last_of, parent_of, children = [-1], [-1], {}
    states = [fusion.start()] if fusion else None
    ranks = [0.0]
    # live node -> [P(ends in blank), P(ends in its last character)], natural log
    beams: dict[int, list[float]] = {0: [0.0, -inf]}
    for t, row in enumerate(rows):
        p_blank_slot = row[blank]
        if not active[t]:  # a near-certain blank or a held character: no prefix grows here
            for node, probs in beams.items():
                b, c = probs
                if b < c:
                    b, c = c, b
                total = b if c == -inf else b + log1p(exp(c - b))
                probs[0], probs[1] = total + p_blank_slot, (probs[1] + row[last_of[node]] if node else -inf)
            continue
        tried = [(c, row[c]) for c in np.flatnonzero(live[t]).tolist()]
        grown: dict[int, list[float]] = {}
        for node, (p_blank, p_char) in beams.items():
            if p_blank >= p_char:
                total = p_blank if p_char == -inf else p_blank + log1p(exp(p_char - p_blank))
            else:
                total = p_char + log1p(exp(p_blank - p_char))
            last = last_of[node]
            stay = total + p_blank_slot
            held = p_char + row[last] if node else -inf
            old = grown.get(node)
            if old is None:
                grown[node] = [stay, held]
            else:  # a shorter beam's extension got here first
                a, b = old[0], stay
                old[0] = (a if a >= b else b) + log1p(exp(-abs(a - b))) if a != -inf else b
                a, b = old[1], held
                if b != -inf:
                    old[1] = (a if a >= b else b) + log1p(exp(-abs(a - b))) if a != -inf else b
            base = node * width
            for c, p in tried:
                if c == space and (last == space or last < 0):
                    continue
                longer = children.get(base + c)
                if longer is None:
                    longer = children[base + c] = len(last_of)
                    last_of.append(c)
                    parent_of.append(node)
                    if states is not None:
                        state = fusion.extend(states[node], c)
                        states.append(state)
                        ranks.append(fusion.rank(state))
                    else:
                        ranks.append(0.0)
                new = (p_blank if c == last else total) + p  # a repeat needs a blank between
                old = grown.get(longer)
                if old is None:
                    grown[longer] = [-inf, new]
                else:
                    a = old[1]
                    old[1] = (a if a >= new else new) + log1p(exp(-abs(a - new))) if a != -inf else new
        if len(grown) > beam:
            scored = []
            for node, (b, c) in grown.items():
                if b < c:
                    b, c = c, b
                scored.append(((b if c == -inf else b + log1p(exp(c - b))) + ranks[node], node))
            scored.sort(key=_first, reverse=True)
            beams = {node: grown[node] for _, node in scored[:beam]}
        else:
            beams = grown
    scores = [ctc_search.log_add(*probs) + (fusion.finish(states[node]) if fusion else 0.0)
              for node, probs in beams.items()]
    return ctc_search.nbest(list(beams), scores, last_of, parent_of, chars)


def _first(item: tuple) -> float:
    return item[0]


def sequence_log_probs(log_probs: torch.Tensor, length: int, texts: list[str], chars: str) -> list[float]:
    """log P_ctc(text | audio) for each of `texts` (the full-sequence CTC probability)."""
    if not texts:
        return []
    targets = [char_ids(t, chars) for t in texts]
    n = len(texts)
    lp = log_probs[:length, None].expand(-1, n, -1)
    flat = torch.tensor([i for t in targets for i in t], dtype=torch.long)
    loss = F.ctc_loss(lp, flat, torch.full((n,), length, dtype=torch.long),
                      torch.tensor([len(t) for t in targets], dtype=torch.long),
                      blank=len(chars), reduction="none", zero_infinity=False)
    return [-x for x in loss.tolist()]


class Lexicon:
    """Known words and their usual casing, to respell words CTC misheard and write its text."""

    def __init__(self, surfaces: list[str], chars: str) -> None:
        self.chars = chars
        self.surface = {}
        for form in surfaces:
            self.surface.setdefault(_normalize(form, chars).strip(), form)
        self.by_length: dict[int, list[str]] = {}
        for w in self.surface:
            self.by_length.setdefault(len(w), []).append(w)
        self._pools: dict[tuple[int, int], list[str]] = {}
        self._nearest: dict[tuple[str, int], list[str]] = {}

    @classmethod
    def load(cls, root: Path, chars: str) -> Lexicon | None:
        path = root / LEXICON_FILE
        if not path.exists():
            return None
        return cls([line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()], chars)

    def write(self, text: str) -> str:
        """CTC's lower-case text as a sentence: known words in their usual case, a capital, a period."""
        words = [self.surface.get(w, w) for w in text.split()]
        if not words:
            return ""
        return words[0][:1].upper() + " ".join(words)[1:] + "."

    def nearest(self, word: str, limit: int) -> list[str]:
        """Up to `limit` known words within edit distance max(1, len/3) of `word`, nearest first."""
        from rapidfuzz import process
        from rapidfuzz.distance import Levenshtein

        if (word, limit) not in self._nearest:
            cutoff = max(1, len(word) // 3)
            key = (len(word), cutoff)
            if key not in self._pools:
                self._pools[key] = [w for n in range(len(word) - cutoff, len(word) + cutoff + 1)
                                    for w in self.by_length.get(n, [])]
            hits = process.extract(word, self._pools[key], scorer=Levenshtein.distance, limit=limit,
                                   score_cutoff=cutoff)
            if len(self._nearest) > 100_000:
                self._nearest.clear()
            self._nearest[(word, limit)] = [w for w, _, _ in hits]
        return self._nearest[(word, limit)]

    def _known_or_near(self, word: str) -> str | None:
        """`word` if known; else its nearest known word, for words of 4+ letters; else None."""
        if word in self.surface:
            return word
        near = self.nearest(word, 1) if len(word) >= 4 else []
        return near[0] if near else None

    def respellings(self, text: str, limit: int = 6) -> list[tuple[int, int, str]]:
        """Ways to respell `text`'s unknown words: (first word, words replaced, replacement).

        Each unknown word is tried as its near known words, as two known words (CTC often
        drops the space: "programerto"), and joined with a neighbour ("in compitance"); two
        known words that are also one known word are tried joined ("my self"). A
        replacement keeps the words' outer punctuation and takes the known words' usual casing.
        """
        tokens = text.split()
        words = [_normalize(t, self.chars).strip() for t in tokens]
        out: list[tuple[int, int, str]] = []

        def add(i: int, n: int, known: list[str]) -> None:
            first, last = tokens[i], tokens[i + n - 1]
            lead = re.match(r"[^\w']*", first).group()
            trail = re.search(r"[^\w']*$", last).group()
            form = " ".join(self.surface[w] for w in known)
            if i == 0:
                form = form[:1].upper() + form[1:]
            out.append((i, n, lead + form + trail))

        for i in range(len(words) - 1):  # two known words that are one ("my self", "when ever")
            if words[i] in self.surface and words[i + 1] in self.surface and words[i] + words[i + 1] in self.surface:
                add(i, 2, [words[i] + words[i + 1]])
        for i, word in enumerate(words):
            if not word or " " in word or word in self.surface:
                continue
            for w in self.nearest(word, limit):
                add(i, 1, [w])
            for cut in range(1, len(word)):
                if min(cut, len(word) - cut) >= 2 or word[:cut] in "ai" or word[cut:] in "ai":
                    halves = [self._known_or_near(word[:cut]), self._known_or_near(word[cut:])]
                    if all(halves):
                        add(i, 1, halves)
            for j in (i - 1, i + 1):
                if 0 <= j < len(words) and words[j] and " " not in words[j]:
                    joined = words[min(i, j)] + words[max(i, j)]
                    for w in ([joined] if joined in self.surface else self.nearest(joined, 2)):
                        add(min(i, j), 2, [w])
        return out


def build_lexicon(lines, chars: str) -> list[str]:
    """Words of a text, each in its most frequent casing, most frequent first (for lexicon.txt).

    Sentence-initial words count for frequency but not for casing ("Now" and "Hi" start more
    sentences than they are written capitalized).
    """
    from collections import Counter

    frequency: Counter[str] = Counter()
    casing: Counter[str] = Counter()
    for line in lines:
        initial = True
        for token in spell_numbers(line).split():
            form = token.strip(".,;:!?\"()[]{}<>*_-`")
            key = _normalize(form, chars).strip()
            if form and key and " " not in key:
                frequency[key] += 1
                casing[form] += 0 if initial else 1
                casing[form.lower()] += 0
            initial = token.endswith((".", "!", "?", ":"))
    usual: dict[str, str] = {}
    for form, n in casing.items():
        key = _normalize(form, chars).strip()
        if key in frequency and (key not in usual or n > casing[usual[key]]):
            usual[key] = form
    return [usual[key] for key, _ in frequency.most_common() if usual[key].strip("'")]
