"""A word n-gram language model (ARPA format) for shallow fusion in CTC beam search.

Why: the built-in model's CTC head hears well but spells by ear, and its transformer LM only
rescores a handful of finished spellings. A word n-gram scored *during* the prefix beam search
(Hannun et al. 2014, "first-pass large vocabulary continuous speech recognition") keeps the
beams that spell known words in likely orders, which no later rescoring can recover once they
were pruned. This is the decoder every CTC toolkit ships (flashlight, pyctcdecode, k2).

Why our own code and not kenlm + pyctcdecode: kenlm's Python module is a C++ build on every
install (no wheels for our Pythons) and its ARPA builder (`lmplz`) needs Boost, which pip cannot
bring; pyctcdecode is unmaintained since 2023 and would replace, not extend, our CTC search.
A trigram over a ~36k-word vocabulary fits in Python dicts (a few hundred thousand entries,
loaded in well under a second), and the files we write are standard ARPA, so a user can swap in
one built by kenlm or SRILM.

Words are spelled as the CTC head hears them (lower case, a-z and apostrophe: `speech.ctc`),
so build and query with the same `normalize`.
"""

from __future__ import annotations

import gzip
import math
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
LN10 = math.log(10.0)


class WordNgram:
    """Back-off n-gram log-probabilities (natural log) read from an ARPA file."""

    def __init__(self, order: int, probs: list[dict[tuple[str, ...], float]],
                 backoffs: list[dict[tuple[str, ...], float]]) -> None:
        self.order = order
        self.probs = probs  # probs[n - 1][(w1..wn)] = ln P(wn | w1..wn-1)
        self.backoffs = backoffs  # backoffs[n - 1][(w1..wn)] = ln bow(w1..wn)
        self.unk = probs[0].get((UNK,), math.log(1e-7))
        self.vocabulary = frozenset(w for (w,) in probs[0] if w not in (BOS, EOS, UNK))

    @classmethod
    def load(cls, path: str | Path) -> WordNgram:
        """Read an ARPA file (optionally gzipped). Raises ValueError on a malformed file."""
        path = Path(path)
        opener = gzip.open if path.suffix == ".gz" else open
        probs: list[dict] = []
        backoffs: list[dict] = []
        order = 0
        with opener(path, "rt", encoding="utf-8") as f:
            n = 0
            for number, line in enumerate(f, 1):
                line = line.strip()
                if line.startswith("ngram "):  # the header: "ngram N=count"
                    order = max(order, int(line.split()[1].split("=")[0]))
                    continue
                if not line or line == "\\data\\":
                    continue
                if line.startswith("\\"):
                    if line == "\\end\\":
                        break
                    if not line.endswith("-grams:"):
                        raise ValueError(f"{path}:{number}: unexpected section {line!r}")
                    n = int(line[1:].split("-")[0])
                    while len(probs) < n:
                        probs.append({})
                        backoffs.append({})
                    continue
                fields = line.split()
                if n == 0 or len(fields) not in (n + 1, n + 2):
                    raise ValueError(f"{path}:{number}: not an ARPA {n}-gram line: {line[:60]!r}")
                key = tuple(fields[1:n + 1])
                probs[n - 1][key] = float(fields[0]) * LN10
                if len(fields) == n + 2:
                    backoffs[n - 1][key] = float(fields[n + 1]) * LN10
        if not probs or not probs[0]:
            raise ValueError(f"{path}: no unigrams (not an ARPA file?)")
        return cls(order or len(probs), probs, backoffs)

    def score(self, context: tuple[str, ...], word: str) -> float:
        """ln P(word | context), backing off; `context` is the previous words, oldest first."""
        context = context[-(self.order - 1):] if self.order > 1 else ()
        total = 0.0
        while True:
            key = context + (word,)
            found = self.probs[len(key) - 1].get(key) if len(key) <= len(self.probs) else None
            if found is not None:
                return total + found
            if not context:
                return total + self.unk
            total += self.backoffs[len(context) - 1].get(context, 0.0)
            context = context[1:]

    def next_context(self, context: tuple[str, ...], word: str) -> tuple[str, ...]:
        return (context + (word,))[-(self.order - 1):] if self.order > 1 else ()

    def sentence(self, words: list[str]) -> float:
        """ln P(<s> words </s>)."""
        context, total = (BOS,), 0.0
        for word in [*words, EOS]:
            total += self.score(context, word)
            context = self.next_context(context, word)
        return total

    def prefixes(self) -> frozenset[str]:
        """Every prefix of every known word (for the search's partial-word check)."""
        return frozenset(w[:i] for w in self.vocabulary for i in range(1, len(w) + 1))


def build_arpa(sentences: Iterable[list[str]], path: str | Path, order: int = 3, min_count: int = 2) -> dict:
    """Write an interpolated Kneser-Ney n-gram (one discount per order) as an ARPA file.

    N-grams of order >= 2 seen fewer than `min_count` times are pruned; their probability mass
    goes to the back-off weight, computed so every stored distribution still sums to one. Returns
    counts per order. Unigrams are never pruned, so the vocabulary is every word seen.
    """
    counts: list[Counter] = [Counter() for _ in range(order)]
    for words in sentences:
        padded = [BOS, *words, EOS]
        for n in range(1, order + 1):
            for i in range(1 if n == 1 else 0, len(padded) - n + 1):  # <s> is context only
                counts[n - 1][tuple(padded[i:i + n])] += 1
    # Kneser-Ney: below the top order, an n-gram counts the distinct words seen before it,
    # except n-grams that start the sentence, which have no left context to count.
    adjusted: list[Counter] = [Counter() for _ in range(order)]
    adjusted[order - 1] = counts[order - 1]
    for n in range(order - 1, 0, -1):
        for gram in counts[n]:
            adjusted[n - 1][gram[1:]] += 1
        for gram, c in counts[n - 1].items():
            if gram[0] == BOS:
                adjusted[n - 1][gram] = c
    adjusted[0].pop((BOS,), None)
    discounts = []
    for n in range(order):
        hist = Counter(c for c in adjusted[n].values() if c <= 2)
        n1, n2 = hist.get(1, 0), hist.get(2, 0)
        discounts.append(min(0.9, max(0.1, n1 / (n1 + 2 * n2))) if n1 else 0.5)

    # Unigrams: discounted continuation counts, the freed mass spread over the vocabulary + <unk>.
    total = sum(adjusted[0].values())
    vocab = len(adjusted[0]) + 1
    floor = discounts[0] * len(adjusted[0]) / total / vocab
    probs: list[dict] = [{g: (c - discounts[0]) / total + floor for g, c in adjusted[0].items()}]
    probs[0][(UNK,)] = floor
    backoffs: list[dict] = [{} for _ in range(order)]

    for n in range(2, order + 1):
        d, grams = discounts[n - 1], adjusted[n - 1]
        context_total: defaultdict[tuple, int] = defaultdict(int)
        context_types: defaultdict[tuple, int] = defaultdict(int)
        for gram, c in grams.items():
            context_total[gram[:-1]] += c
            context_types[gram[:-1]] += 1
        kept: dict = {}
        for gram, c in grams.items():
            if counts[n - 1][gram] < min_count:
                continue
            h = gram[:-1]
            gamma = d * context_types[h] / context_total[h]
            kept[gram] = max(c - d, 0) / context_total[h] + gamma * _lower(probs, backoffs, gram[1:])
        probs.append(kept)
        mass: defaultdict[tuple, float] = defaultdict(float)
        lower_mass: defaultdict[tuple, float] = defaultdict(float)
        for gram, p in kept.items():
            mass[gram[:-1]] += p
            lower_mass[gram[:-1]] += _lower(probs, backoffs, gram[1:])
        for h in context_total:  # what the pruned and unseen words leave, over what they get below
            if h == (BOS,) or h in probs[n - 2]:
                left, lower_left = 1.0 - mass.get(h, 0.0), 1.0 - lower_mass.get(h, 0.0)
                backoffs[n - 2][h] = max(left, 1e-12) / max(lower_left, 1e-12)

    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8") as f:
        f.write("\\data\\\n")
        sizes = [len(probs[0]) + 1] + [len(p) for p in probs[1:]]
        for n, size in enumerate(sizes, 1):
            f.write(f"ngram {n}={size}\n")
        for n in range(1, order + 1):
            f.write(f"\n\\{n}-grams:\n")
            if n == 1:
                f.write(f"-99\t{BOS}" + (f"\t{math.log10(backoffs[0][(BOS,)]):.4f}" if (BOS,) in backoffs[0] else "")
                        + "\n")
            for gram, p in sorted(probs[n - 1].items()):
                line = f"{math.log10(p):.4f}\t{' '.join(gram)}"
                if n < order and gram in backoffs[n - 1]:
                    line += f"\t{math.log10(backoffs[n - 1][gram]):.4f}"
                f.write(line + "\n")
        f.write("\n\\end\\\n")
    return {"order": order, "min_count": min_count, "discounts": [round(d, 3) for d in discounts],
            "ngrams": sizes}


def _lower(probs: list[dict], backoffs: list[dict], gram: tuple[str, ...]) -> float:
    """P(gram[-1] | gram[:-1]) in the model built so far (probabilities, not logs)."""
    weight = 1.0
    while True:
        table = probs[len(gram) - 1]
        if gram in table:
            return weight * table[gram]
        if len(gram) == 1:
            return weight * probs[0][(UNK,)]
        weight *= backoffs[len(gram) - 2].get(gram[:-1], 1.0)
        gram = gram[1:]
