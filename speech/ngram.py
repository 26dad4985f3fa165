"""A word n-gram language model (ARPA, or its compact .npz form) for shallow fusion in CTC beam search.

Why: the built-in model's CTC head hears well but spells by ear, and its transformer LM only
rescores a handful of finished spellings. A word n-gram scored *during* the prefix beam search
(Hannun et al. 2014, "first-pass large vocabulary continuous speech recognition") keeps the
beams that spell known words in likely orders, which no later rescoring can recover once they
were pruned. This is the decoder every CTC toolkit ships (flashlight, pyctcdecode, k2).

Why our own code and not kenlm + pyctcdecode: kenlm's Python module is a C++ build on every
install (no wheels for our Pythons) and its ARPA builder (`lmplz`) needs Boost, which pip cannot
bring; pyctcdecode is unmaintained since 2023 and would replace, not extend, our CTC search.
The files we write are standard ARPA, so a user can swap in one built by kenlm or SRILM.

Why a second, binary form (``.npz``): ARPA is text, and parsing it is most of a model's load
time once the n-gram grows (the built-in 4-gram, 2 M n-grams: ~10 s from ARPA, a quarter of a
second from .npz). The .npz holds the same model, per order one array each of word ids,
log-probabilities and back-off weights, so it loads with numpy alone and no pickle;
``python -m speech.ngram lm.arpa lm.npz`` converts, both ways (KenLM's ``build_binary`` plays
this role for its own decoder).

In memory every word is an id (its index in ``words``) and every n-gram one int, its ids in
base ``V = len(words)``, kept per order in a sorted array beside its log-probability and back-off
weight (a lookup is a binary search): ~20 bytes an n-gram, where Python dicts took ~200 (the
built-in 4-gram: 40 MB, not 400). A search context is the same packed int, so dropping its
oldest word is a ``%``. The search asked for ~170 n-gram scores a second of audio on the dev
clips (110k for 10.6 min), so the binary search's microseconds are a small cost against the
dict's memory.

Words are spelled as the CTC head hears them (lower case, a-z and apostrophe: `speech.ctc`),
so build and query with the same `normalize`.
"""

from __future__ import annotations

import argparse
import gzip
import math
import zipfile
from array import array
from bisect import bisect_left
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path

import numpy as np

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
LN10 = math.log(10.0)
MEMO_SIZE = 1 << 16  # logp results kept (~10 MB)
NPZ_FORMAT = 1  # bumped when the .npz layout changes; older readers refuse newer files

# A search context: (the last `length` word ids packed in base V, length).
Context = tuple[int, int]


class NgramTable:
    """One order's n-grams: packed keys, ascending (an array of uint64, or a list of ints when
    V ** n passes 64 bits), with each n-gram's ln-probability and ln back-off weight (0: none)."""

    __slots__ = ("keys", "logp", "bow", "size")

    def __init__(self, keys: array | list[int], logp: array, bow: array) -> None:
        if not len(keys) == len(logp) == len(bow):
            raise ValueError("n-gram keys, log-probabilities and back-offs differ in length")
        self.keys, self.logp, self.bow, self.size = keys, logp, bow, len(keys)

    @classmethod
    def build(cls, keys: list[int], logp: list[float], bow: list[float], exact: bool) -> NgramTable:
        """From unsorted parallel lists (`exact`: every key fits in 64 bits)."""
        if exact:
            packed = np.array(keys, dtype=np.uint64)
            order = np.argsort(packed, kind="stable")
            return cls(array("Q", packed[order].tobytes()), array("f", np.array(logp, np.float32)[order].tobytes()),
                       array("f", np.array(bow, np.float32)[order].tobytes()))
        order = sorted(range(len(keys)), key=keys.__getitem__)
        return cls([keys[i] for i in order], array("f", [logp[i] for i in order]), array("f", [bow[i] for i in order]))

    def find(self, key: int) -> int:
        """The row of `key`, or -1."""
        i = bisect_left(self.keys, key)
        return i if i < self.size and self.keys[i] == key else -1

    def packed(self) -> np.ndarray:
        """The keys as a numpy array (uint64, or object past 64 bits)."""
        if isinstance(self.keys, array):
            return np.frombuffer(self.keys, dtype=np.uint64)
        return np.array(self.keys, dtype=object)


class WordNgram:
    """Back-off n-gram log-probabilities (natural log), read from ARPA or .npz (`load`)."""

    def __init__(self, order: int, words: list[str], tables: list[NgramTable]) -> None:
        if UNK not in words:
            raise ValueError("the word list needs <unk> (the id of every word outside the model)")
        if len(tables) != order or not tables[0].size:
            raise ValueError(f"an order-{order} n-gram needs {order} tables, unigrams first")
        self.order = order
        self.words = words
        self.ids = {w: i for i, w in enumerate(words)}
        self.base = len(words)
        self.powers = [self.base ** n for n in range(order + 1)]
        self.tables = tables  # tables[n - 1]: the n-grams
        self.unk_id = self.ids[UNK]
        row = tables[0].find(self.unk_id)
        self.unk = tables[0].logp[row] if row >= 0 else math.log(1e-7)
        self.vocabulary = frozenset(self.words[i] for i in tables[0].keys) - {BOS, EOS, UNK}
        self._memo: dict[tuple[Context, int], float] = {}

    # -- the search's interface: ids and packed contexts ---------------------------------------

    def word_id(self, word: str) -> int:
        """The word's id; every word outside the model shares <unk>'s."""
        return self.ids.get(word, self.unk_id)

    def begin(self) -> Context:
        """The context at a sentence start (<s>)."""
        return (self.ids[BOS], 1) if self.order > 1 and BOS in self.ids else (0, 0)

    def advance(self, context: Context, word: int) -> Context:
        """The context after `word`: the last order - 1 words."""
        if self.order == 1:
            return 0, 0
        key, length = context
        key, length = key * self.base + word, length + 1
        if length >= self.order:
            length = self.order - 1
            key %= self.powers[length]
        return key, length

    def logp(self, context: Context, word: int) -> float:
        """ln P(word | context), backing off to shorter contexts (memoized: the search asks for
        the same word after the same context in ~60 % of its calls, from different prefixes)."""
        memo = self._memo
        found = memo.get((context, word))
        if found is None:
            found = self._logp(context, word)
            if len(memo) >= MEMO_SIZE:  # a bound, not an LRU: the next utterances refill it
                memo.clear()
            memo[context, word] = found
        return found

    def _logp(self, context: Context, word: int) -> float:
        key, length = context
        tables, base = self.tables, self.base
        total = 0.0
        while True:
            table = tables[length]
            i = table.find(key * base + word)
            if i >= 0:
                return total + table.logp[i]
            if not length:
                return total + self.unk
            length -= 1
            lower = tables[length]
            i = lower.find(key)
            if i >= 0:
                total += lower.bow[i]
            key %= self.powers[length]

    # -- words ---------------------------------------------------------------------------------

    def score(self, context: tuple[str, ...], word: str) -> float:
        """ln P(word | context); `context` is the previous words, oldest first."""
        state: Context = (0, 0)
        for w in context[-(self.order - 1):] if self.order > 1 else ():
            state = self.advance(state, self.word_id(w))
        return self.logp(state, self.word_id(word))

    def sentence(self, words: list[str]) -> float:
        """ln P(<s> words </s>)."""
        context, total = self.begin(), 0.0
        for word in [*words, EOS]:
            wid = self.word_id(word)
            total += self.logp(context, wid)
            context = self.advance(context, wid)
        return total

    def prefixes(self) -> frozenset[str]:
        """Every prefix of every known word (for the search's partial-word check)."""
        return frozenset(w[:i] for w in self.vocabulary for i in range(1, len(w) + 1))

    def sizes(self) -> list[int]:
        """N-grams per order."""
        return [t.size for t in self.tables]

    def grams(self, n: int) -> Iterable[tuple[tuple[str, ...], float, float]]:
        """The n-grams of order `n`: (words, ln P, ln back-off), in key order."""
        table = self.tables[n - 1]
        for key, logp, bow in zip(table.keys, table.logp, table.bow):
            gram = []
            for _ in range(n):
                key, wid = divmod(key, self.base)
                gram.append(self.words[wid])
            yield tuple(reversed(gram)), logp, bow

    # -- files ---------------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path) -> WordNgram:
        """Read an ARPA file (optionally gzipped) or a .npz from `save`. Raises ValueError on a
        malformed file."""
        path = Path(path)
        if path.suffix == ".npz":
            return cls._load_npz(path)
        return cls._load_arpa(path)

    @classmethod
    def _load_arpa(cls, path: Path) -> WordNgram:
        opener = gzip.open if path.suffix == ".gz" else open
        rows: list[tuple[list[int], list[float], list[float]]] = []  # per order: keys, ln P, ln bow
        words: list[str] = []
        ids: dict[str, int] = {}
        order = n = 0
        with opener(path, "rt", encoding="utf-8") as f:
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
                    if n > 1 and UNK not in ids:  # <unk> gets an id (no probability) before the
                        ids[UNK] = len(words)  # n-grams are packed in base len(words)
                        words.append(UNK)
                    while len(rows) < n:
                        rows.append(([], [], []))
                    continue
                fields = line.split()
                if n == 0:
                    raise ValueError(f"{path}:{number}: {line[:60]!r} before any \\1-grams: section (not an ARPA file?)")
                if len(fields) not in (n + 1, n + 2):
                    raise ValueError(f"{path}:{number}: not an ARPA {n}-gram line: {line[:60]!r}")
                if n == 1:
                    word = fields[1]
                    if word not in ids:
                        ids[word] = len(words)
                        words.append(word)
                    key = ids[word]
                else:
                    key = 0
                    try:
                        for w in fields[1:n + 1]:
                            key = key * len(words) + ids[w]
                    except KeyError as e:
                        raise ValueError(f"{path}:{number}: word {e.args[0]!r} is not among the 1-grams") from None
                keys, logp, bow = rows[n - 1]
                keys.append(key)
                logp.append(float(fields[0]) * LN10)
                bow.append(float(fields[n + 1]) * LN10 if len(fields) == n + 2 else 0.0)
        if not rows or not rows[0][0]:
            raise ValueError(f"{path}: no unigrams (not an ARPA file?)")
        if UNK not in ids:  # a unigram-only file
            words.append(UNK)
        order = order or len(rows)
        while len(rows) < order:  # a header promising more orders than the file holds
            rows.append(([], [], []))
        base = len(words)
        tables = [NgramTable.build(*r, exact=base ** n < 2 ** 64) for n, r in enumerate(rows, 1)]
        return cls(order, words, tables)

    def save(self, path: str | Path) -> None:
        """Write the compact form (.npz, compressed): per order n, ``ids{n}`` (count x n word ids,
        ascending), ``logp{n}`` and ``bow{n}`` (natural log, float32; bow 0 where none)."""
        arrays: dict[str, np.ndarray] = {
            "format": np.array([NPZ_FORMAT, self.order], dtype=np.int64),
            "words": np.frombuffer("\n".join(self.words).encode("utf-8"), dtype=np.uint8),
        }
        for n, table in enumerate(self.tables, 1):
            packed = table.packed()
            exact = packed.dtype == np.uint64
            base = np.uint64(self.base) if exact else self.base
            ids = np.empty((table.size, n), dtype=np.uint32)
            for i in range(n - 1, -1, -1):  # the last word is the lowest digit
                ids[:, i] = (packed % base).astype(np.uint32)
                packed = packed // base
            arrays[f"ids{n}"] = ids
            arrays[f"logp{n}"] = np.frombuffer(table.logp, dtype=np.float32)
            arrays[f"bow{n}"] = np.frombuffer(table.bow, dtype=np.float32)
        with open(path, "wb") as f:  # a file object: numpy would append ".npz" to a bare name
            np.savez_compressed(f, **arrays)

    def write_arpa(self, path: str | Path) -> None:
        """Write the model as ARPA (gzipped if the name ends in .gz), n-grams sorted by their words."""
        path = Path(path)
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "wt", encoding="utf-8") as f:
            f.write("\\data\\\n")
            for n, size in enumerate(self.sizes(), 1):
                f.write(f"ngram {n}={size}\n")
            for n in range(1, self.order + 1):
                f.write(f"\n\\{n}-grams:\n")
                for gram, logp, bow in sorted(self.grams(n)):
                    line = f"{logp / LN10:.6f}\t{' '.join(gram)}"
                    if bow and n < self.order:
                        line += f"\t{bow / LN10:.6f}"
                    f.write(line + "\n")
            f.write("\n\\end\\\n")

    @classmethod
    def _load_npz(cls, path: Path) -> WordNgram:
        try:
            with np.load(path, allow_pickle=False) as data:
                version, order = (int(v) for v in data["format"])
                if version > NPZ_FORMAT:
                    raise ValueError(f"{path}: n-gram format {version} is newer than this reader ({NPZ_FORMAT})")
                words = bytes(data["words"]).decode("utf-8").split("\n")
                base = len(words)
                tables = []
                for n in range(1, order + 1):
                    ids, logp, bow = data[f"ids{n}"], data[f"logp{n}"], data[f"bow{n}"]
                    if ids.ndim != 2 or ids.shape[1] != n or not len(ids) == len(logp) == len(bow):
                        raise ValueError(f"{path}: the {n}-gram arrays disagree in shape")
                    if len(ids) and int(ids.max()) >= base:
                        raise ValueError(f"{path}: a {n}-gram names a word id past the word list")
                    exact = base ** n < 2 ** 64  # else Python ints (object arrays): slower, exact
                    packed = np.zeros(len(ids), dtype=np.uint64 if exact else object)
                    for i in range(n):
                        packed = packed * (np.uint64(base) if exact else base) + ids[:, i].astype(packed.dtype)
                    if len(packed) > 1 and not (packed[1:] > packed[:-1]).all():
                        raise ValueError(f"{path}: the {n}-grams are not in ascending order")
                    keys = array("Q", packed.tobytes()) if exact else packed.tolist()
                    tables.append(NgramTable(keys, array("f", logp.astype(np.float32).tobytes()),
                                             array("f", bow.astype(np.float32).tobytes())))
        except (KeyError, zipfile.BadZipFile, OSError, EOFError) as e:
            raise ValueError(f"{path}: not a speechlora n-gram .npz ({e})") from None
        return cls(order, words, tables)


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
                f.write(f"-99\t{BOS}" + (f"\t{math.log10(backoffs[0][(BOS,)]):.6f}" if (BOS,) in backoffs[0] else "")
                        + "\n")
            for gram, p in sorted(probs[n - 1].items()):
                line = f"{math.log10(p):.6f}\t{' '.join(gram)}"  # 6 places: ~1e-6 relative
                if n < order and gram in backoffs[n - 1]:
                    line += f"\t{math.log10(backoffs[n - 1][gram]):.6f}"
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m speech.ngram",
        description="Convert a word n-gram between ARPA (text, what kenlm's lmplz and SRILM write) and the "
                    "compact .npz that loads in a fraction of the time. A model folder's ngram.npz is used "
                    "before its ngram.arpa.gz. Words must be spelled as the CTC head hears them (lower case "
                    "a-z and apostrophe for the built-in model).",
        epilog="example: python -m speech.ngram my-4gram.arpa.gz my-model/ngram.npz")
    parser.add_argument("source", type=Path, help="an .arpa, .arpa.gz or .npz")
    parser.add_argument("target", type=Path, help="where to write: .npz, or .arpa / .arpa.gz")
    args = parser.parse_args(argv)
    try:
        lm = WordNgram.load(args.source)
    except (OSError, ValueError) as e:
        parser.exit(1, f"error: {e}\n")
    if args.target.suffix == ".npz":
        lm.save(args.target)
    else:
        lm.write_arpa(args.target)
    print(f"{args.target}: order {lm.order}, n-grams {lm.sizes()}, {args.target.stat().st_size / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
