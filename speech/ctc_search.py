"""The CTC prefix beam search compiled (numba): the same answers as ``speech.ctc``'s Python search, 10-30x faster.

Why: with the word n-gram fused in, the search was a third of the built-in model's decode time
at beam 64 and over half at beam 128 (4.8 of 8.7 s for 115 dev clips, the encoder 3.1 s), and a
wider search is what dev prefers, but with the search in Python the server could not hold 16
real-time streams with it. The Python search is already written for the interpreter; what is
left is the interpreter itself. Compiled, the built-in model affords beam 128 with six times the
characters tried per slot (prune -11 for -5): 1.2 s for those clips, where Python takes 39 s and
took 2.5 s at the old beam 64, prune -5 (docs/builtin-model.md, "The search compiled").

Why numba and not C++ or flashlight-text: numba is already installed with librosa (one of our
dependencies), so nothing new is built on install and no compiler is needed; the kernel stays
Python-readable beside its reference. flashlight's lexicon decoder would have replaced our
search and its fusion rules (the unknown-word penalty, the partial-word check), not sped them
up. The compiled kernel is cached on disk (numba's ``cache=True``: beside this file, or the
user's cache folder when the package is read-only), so only a machine's first decode pays the
compile (~10 s); later processes load it in a fraction of a second.

Exactness: the kernel makes the same floating-point operations in the same order as
``speech.ctc.prefix_beam_search_python`` and breaks ties the same way (a stable sort of the
beams in the order they were made), so both return the same n-best lists with the same scores;
tests/test_ctc.py, tests/test_ngram.py and tests/test_builtin.py (real clips) hold them to it. The Python search stays the reference and
the fallback (numba missing, or an n-gram whose packed keys do not fit 63 bits).

Everything crosses into the kernel as numpy arrays: the word n-gram as every order's sorted
packed keys, ln-probabilities and back-offs concatenated (``NgramArrays``), and its vocabulary
as a character trie (a node's child per character; the word a node spells, if any).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from speech.ngram import EOS

try:  # numba comes with librosa; without it the Python search is used
    import numba
    from numba import types
    from numba.typed import Dict
except ImportError:  # pragma: no cover - numba is a dependency
    numba = None

NEG_INF = -math.inf


class NgramArrays(NamedTuple):
    """A word n-gram in the form the compiled kernel reads (the fusion weights go in per call)."""

    keys: np.ndarray  # int64: every order's packed keys, ascending within an order, orders concatenated
    logp: np.ndarray  # float64: ln P of each key
    bow: np.ndarray  # float64: ln back-off weight of each key (0: none)
    offsets: np.ndarray  # int64 [order + 1]: order n's rows are offsets[n - 1]:offsets[n]
    powers: np.ndarray  # int64 [order + 1]: base ** n
    lex_child: np.ndarray  # int32 [nodes, characters]: the vocabulary trie (-1: no such prefix)
    lex_word: np.ndarray  # int64 [nodes]: the word id a node spells (<unk>'s id if it is no word)
    ids: np.ndarray  # int64: base, order, unk_id, eos_id, bos context key, bos context length
    unk: float  # ln P(<unk>)


def ngram_arrays(ngram, chars: str) -> NgramArrays | None:
    """`ngram` (a speech.ngram.WordNgram) as kernel arrays, its vocabulary spelled in `chars`;
    None when its packed keys could pass 63 bits (base ** order), which the Python search handles.
    Built once per n-gram (~0.2 s for the built-in 4-gram): WordFusion keeps it."""
    if ngram.base ** ngram.order >= 2 ** 63:
        return None
    keys, logp, bow, offsets = [], [], [], [0]
    for table in ngram.tables:
        keys.append(np.asarray(table.packed(), dtype=np.int64))
        logp.append(np.frombuffer(table.logp, dtype=np.float32).astype(np.float64))
        bow.append(np.frombuffer(table.bow, dtype=np.float32).astype(np.float64))
        offsets.append(offsets[-1] + table.size)
    position = {c: i for i, c in enumerate(chars)}
    child = [[-1] * len(chars)]
    word_of = [ngram.unk_id]
    for word in ngram.vocabulary:  # every prefix the search can spell: WordFusion's prefixes
        node = 0
        for c in word:
            if c not in position:  # a word from a foreign ARPA ("wouldn’t"): its spellable prefix only
                break
            nxt = child[node][position[c]]
            if nxt < 0:
                nxt = child[node][position[c]] = len(child)
                child.append([-1] * len(chars))
                word_of.append(ngram.unk_id)
            node = nxt
        else:
            word_of[node] = ngram.word_id(word)
    begin = ngram.begin()
    return NgramArrays(
        np.concatenate(keys), np.concatenate(logp), np.concatenate(bow), np.array(offsets, dtype=np.int64),
        np.array(ngram.powers, dtype=np.int64), np.array(child, dtype=np.int32), np.array(word_of, dtype=np.int64),
        np.array([ngram.base, ngram.order, ngram.unk_id, ngram.word_id(EOS), begin[0], begin[1]], dtype=np.int64),
        float(ngram.unk))


def _njit(function):
    """Compiled lazily, without the GIL (server threads can search side by side), cached on disk
    where numba finds a writable place (else compiled in each process: numba refuses `cache=True`
    at decoration when it has none)."""
    if numba is None:
        return None
    try:
        return numba.njit(cache=True, nogil=True)(function)
    except RuntimeError:  # "cannot cache function ...: no locator available"
        return numba.njit(nogil=True)(function)


def _find(keys, start, stop, key):
    """The row of `key` in keys[start:stop] (ascending), or -1."""
    i = start + np.searchsorted(keys[start:stop], key)
    return i if i < stop and keys[i] == key else -1


def _ngram_logp(keys, logp, bow, offsets, powers, base, unk, key, length, word):
    """ln P(word | context (key, length)), backing off (speech.ngram.WordNgram._logp)."""
    total = 0.0
    while True:
        i = _find_c(keys, offsets[length], offsets[length + 1], key * base + word)
        if i >= 0:
            return total + logp[i]
        if length == 0:
            return total + unk
        length -= 1
        i = _find_c(keys, offsets[length], offsets[length + 1], key)
        if i >= 0:
            total += bow[i]
        key %= powers[length]


def _close(ng_keys, ng_logp, ng_bow, offsets, powers, lex_word, numbers, ids, score, key, length, lex):
    """A prefix's open word closed (WordFusion._close): (score, context key, context length)."""
    if lex == 0:  # no open word
        return score, key, length
    base, order, unk_id = ids[0], ids[1], ids[2]
    wid = lex_word[lex] if lex > 0 else unk_id
    extra = numbers[2] if wid == unk_id else 0.0
    lp = _ngram_logp_c(ng_keys, ng_logp, ng_bow, offsets, powers, base, numbers[4], key, length, wid)
    score = score + numbers[0] * lp + numbers[1] - extra
    if order == 1:
        return score, 0, 0
    key, length = key * base + wid, length + 1
    if length >= order:
        length = order - 1
        key %= powers[length]
    return score, key, length


def log_add(a, b):
    """ln(e^a + e^b), exact at -inf (both searches use it, compiled and not)."""
    if a == NEG_INF:
        return b
    if b == NEG_INF:
        return a
    return max(a, b) + math.log1p(math.exp(-abs(a - b)))


def _search(lp, blank, space, beam, prune, fused, ng_keys, ng_logp, ng_bow, offsets, powers, lex_child, lex_word,
            numbers, ids):
    """The kernel: speech.ctc.prefix_beam_search_python's search in arrays. Returns the final beams'
    nodes and scores (CTC + fusion's finish) and the prefix trie (last character, parent).

    One difference of method, none of answer: the Python search makes a trie node (and its fusion
    state) for every extension it tries, ~12 per beam per slot at prune -11, and sorts them all,
    though at most `beam` survive. Here an extension that is not already a live beam (the only
    case where two paths merge into one prefix) stays a candidate (parent, character, scores) and
    becomes a node only if it is among the best `beam`; they are chosen by a partition and a stable
    sort of the chosen, which keeps the same beams in the same order as the full stable sort.
    """
    n_slots = lp.shape[0]
    live = lp[:, :blank] > prune
    width = blank + 1
    cap = 1024
    last_of = np.empty(cap, np.int64)
    parent_of = np.empty(cap, np.int64)
    f_score = np.empty(cap, np.float64)  # fusion state per node: finished words' score,
    f_key = np.empty(cap, np.int64)  # n-gram context,
    f_len = np.empty(cap, np.int64)
    f_lex = np.empty(cap, np.int64)  # the open word's vocabulary-trie node (0: none open, -1: no known prefix)
    ranks = np.empty(cap, np.float64)
    sp_done = np.zeros(cap, np.bool_)  # the node's word closed by a space, computed once: score, context
    sp_score = np.empty(cap, np.float64)
    sp_key = np.empty(cap, np.int64)
    sp_len = np.empty(cap, np.int64)
    stamp = np.full(cap, -1, np.int64)  # stamp[node] == t: the node is in this slot's candidates, at slot_of[node]
    slot_of = np.empty(cap, np.int64)
    b_stamp = np.full(cap, -1, np.int64)  # b_stamp[node] == t: the node is live beam b_index[node]
    b_index = np.empty(cap, np.int64)
    last_of[0], parent_of[0], ranks[0] = -1, -1, 0.0
    f_score[0], f_key[0], f_len[0], f_lex[0] = 0.0, ids[4], ids[5], 0
    n_nodes = 1
    children = Dict.empty(key_type=types.int64, value_type=types.int64)
    # the live beams, in order: node, P(ends in blank), P(ends in its last character)
    b_node = np.zeros(1, np.int64)
    b_blank = np.zeros(1, np.float64)
    b_char = np.full(1, NEG_INF)
    n_beams = 1
    kid = np.full((1, blank), -1, np.int64)  # kid[k, c]: beam k's child by c when that child is a live beam
    size = 64  # the candidates: a live node (g_node) or a new prefix (g_node -1: g_parent + g_c, its fusion state)
    g_node = np.empty(size, np.int64)
    g_parent = np.empty(size, np.int64)
    g_c = np.empty(size, np.int64)
    g_blank = np.empty(size, np.float64)
    g_char = np.empty(size, np.float64)
    g_rank = np.empty(size, np.float64)
    g_fs = np.empty(size, np.float64)
    g_fk = np.empty(size, np.int64)
    g_fl = np.empty(size, np.int64)
    g_lex = np.empty(size, np.int64)
    tried = np.empty(blank, np.int64)
    for t in range(n_slots):
        p_blank_slot = lp[t, blank]
        n_tried = 0
        for c in range(blank):
            if live[t, c]:
                tried[n_tried] = c
                n_tried += 1
        if n_tried == 0:  # a near-certain blank or a held character: no prefix grows here
            for k in range(n_beams):
                b, c = b_blank[k], b_char[k]
                if b < c:
                    b, c = c, b
                total = b if c == NEG_INF else b + math.log1p(math.exp(c - b))
                node = b_node[k]
                b_blank[k] = total + p_blank_slot
                b_char[k] = b_char[k] + lp[t, last_of[node]] if node else NEG_INF
            continue
        need = n_beams * (n_tried + 1)
        if need > size:
            size = 2 * need
            g_node, g_parent, g_c = np.empty(size, np.int64), np.empty(size, np.int64), np.empty(size, np.int64)
            g_blank, g_char, g_rank = np.empty(size, np.float64), np.empty(size, np.float64), np.empty(size, np.float64)
            g_fs, g_fk = np.empty(size, np.float64), np.empty(size, np.int64)
            g_fl, g_lex = np.empty(size, np.int64), np.empty(size, np.int64)
        if n_nodes + min(beam, need) > cap:  # room for every node this slot can make
            cap = 2 * (n_nodes + min(beam, need))
            last_of, parent_of = _grow_i(last_of, cap, 0), _grow_i(parent_of, cap, 0)
            f_score, f_key = _grow_f(f_score, cap), _grow_i(f_key, cap, 0)
            f_len, f_lex, ranks = _grow_i(f_len, cap, 0), _grow_i(f_lex, cap, 0), _grow_f(ranks, cap)
            sp_done = _grow_b(sp_done, cap)
            sp_score, sp_key, sp_len = _grow_f(sp_score, cap), _grow_i(sp_key, cap, 0), _grow_i(sp_len, cap, 0)
            stamp, slot_of = _grow_i(stamp, cap, -1), _grow_i(slot_of, cap, 0)
            b_stamp, b_index = _grow_i(b_stamp, cap, -1), _grow_i(b_index, cap, 0)
        if kid.shape[0] < n_beams:
            kid = np.full((2 * n_beams, blank), -1, np.int64)
        for k in range(n_beams):
            b_stamp[b_node[k]], b_index[b_node[k]] = t, k
            kid[k, :] = -1
        for k in range(n_beams):
            node = b_node[k]
            if node and b_stamp[parent_of[node]] == t:
                kid[b_index[parent_of[node]], last_of[node]] = node
        n_grown = 0
        for k in range(n_beams):
            node, p_blank, p_char = b_node[k], b_blank[k], b_char[k]
            if p_blank >= p_char:
                total = p_blank if p_char == NEG_INF else p_blank + math.log1p(math.exp(p_char - p_blank))
            else:
                total = p_char + math.log1p(math.exp(p_blank - p_char))
            last = last_of[node]
            stay = total + p_blank_slot
            held = p_char + lp[t, last] if node else NEG_INF
            if stamp[node] != t:
                stamp[node], slot_of[node] = t, n_grown
                g_node[n_grown], g_blank[n_grown], g_char[n_grown] = node, stay, held
                g_rank[n_grown] = ranks[node]
                n_grown += 1
            else:  # a shorter beam's extension got here first
                s = slot_of[node]
                a, b = g_blank[s], stay
                g_blank[s] = (a if a >= b else b) + math.log1p(math.exp(-abs(a - b))) if a != NEG_INF else b
                a, b = g_char[s], held
                if b != NEG_INF:
                    g_char[s] = (a if a >= b else b) + math.log1p(math.exp(-abs(a - b))) if a != NEG_INF else b
            for j in range(n_tried):
                c = tried[j]
                if c == space and (last == space or last < 0):
                    continue
                new = (p_blank if c == last else total) + lp[t, c]  # a repeat needs a blank between
                longer = kid[k, c]
                if longer >= 0:  # a live beam: its candidate is shared
                    if stamp[longer] != t:
                        stamp[longer], slot_of[longer] = t, n_grown
                        g_node[n_grown], g_blank[n_grown], g_char[n_grown] = longer, NEG_INF, new
                        g_rank[n_grown] = ranks[longer]
                        n_grown += 1
                    else:
                        s = slot_of[longer]
                        a = g_char[s]
                        g_char[s] = (a if a >= new else new) + math.log1p(math.exp(-abs(a - new))) \
                            if a != NEG_INF else new
                    continue
                g_node[n_grown], g_parent[n_grown], g_c[n_grown] = -1, node, c
                g_blank[n_grown], g_char[n_grown] = NEG_INF, new
                if fused:
                    score, key, length, lex = f_score[node], f_key[node], f_len[node], f_lex[node]
                    if c != space:
                        if lex >= 0:
                            lex = lex_child[lex, c]
                    else:
                        if not sp_done[node]:
                            sp_score[node], sp_key[node], sp_len[node] = _close_c(
                                ng_keys, ng_logp, ng_bow, offsets, powers, lex_word, numbers, ids, score, key, length,
                                lex)
                            sp_done[node] = True
                        score, key, length, lex = sp_score[node], sp_key[node], sp_len[node], 0
                    g_fs[n_grown], g_fk[n_grown], g_fl[n_grown], g_lex[n_grown] = score, key, length, lex
                    g_rank[n_grown] = score + (numbers[3] if lex < 0 else 0.0)
                else:
                    g_rank[n_grown] = 0.0
                n_grown += 1
        if n_grown > beam:
            scored = np.empty(n_grown, np.float64)
            for s in range(n_grown):
                b, c = g_blank[s], g_char[s]
                if b < c:
                    b, c = c, b
                scored[s] = (b if c == NEG_INF else b + math.log1p(math.exp(c - b))) + g_rank[s]
            # the stable sort's first `beam`: every candidate above the beam-th score, then those
            # equal to it in the order made; then sorted, stably
            bar = -np.partition(-scored, beam - 1)[beam - 1]
            chosen = np.empty(beam, np.int64)
            n = 0
            for s in range(n_grown):
                if scored[s] > bar:
                    chosen[n] = s
                    n += 1
            for s in range(n_grown):
                if n == beam:
                    break
                if scored[s] == bar:
                    chosen[n] = s
                    n += 1
            # n < beam only if scores are NaN (a broken model): keep what was chosen, never garbage
            chosen = chosen[:n][np.argsort(-scored[chosen[:n]], kind="mergesort")]
            n_beams = n
        else:
            chosen = np.arange(n_grown)
            n_beams = n_grown
        if b_node.shape[0] < n_beams:
            b_node = np.empty(2 * n_beams, np.int64)
            b_blank = np.empty(2 * n_beams, np.float64)
            b_char = np.empty(2 * n_beams, np.float64)
        for k in range(n_beams):
            s = chosen[k]
            node = g_node[s]
            if node < 0:  # a new prefix is made a node, or a node made before and pruned is revived
                key = g_parent[s] * width + g_c[s]
                if key in children:
                    node = children[key]
                else:
                    node = n_nodes
                    children[key] = node
                    n_nodes += 1
                    last_of[node], parent_of[node], ranks[node] = g_c[s], g_parent[s], g_rank[s]
                    f_score[node], f_key[node], f_len[node], f_lex[node] = g_fs[s], g_fk[s], g_fl[s], g_lex[s]
                    sp_done[node] = False
            b_node[k], b_blank[k], b_char[k] = node, g_blank[s], g_char[s]
    final = np.empty(n_beams, np.float64)
    for k in range(n_beams):
        node = b_node[k]
        score = _log_add_c(b_blank[k], b_char[k])
        if fused:
            s, key, length = _close_c(ng_keys, ng_logp, ng_bow, offsets, powers, lex_word, numbers, ids,
                                      f_score[node], f_key[node], f_len[node], f_lex[node])
            score += s + numbers[0] * _ngram_logp_c(ng_keys, ng_logp, ng_bow, offsets, powers, ids[0], numbers[4],
                                                     key, length, ids[3])
        final[k] = score
    return b_node[:n_beams].copy(), final, last_of[:n_nodes].copy(), parent_of[:n_nodes].copy()


def _grow_i(a, cap, fill):
    out = np.full(cap, fill, np.int64)
    out[: a.shape[0]] = a
    return out


def _grow_b(a, cap):
    out = np.zeros(cap, np.bool_)
    out[: a.shape[0]] = a
    return out


def _grow_f(a, cap):
    out = np.empty(cap, np.float64)
    out[: a.shape[0]] = a
    return out


_find_c = _njit(_find)
_ngram_logp_c = _njit(_ngram_logp)
_close_c = _njit(_close)
_log_add_c = _njit(log_add)
_grow_i = _njit(_grow_i)
_grow_f = _njit(_grow_f)
_grow_b = _njit(_grow_b)
_search_c = _njit(_search)

_EMPTY_I = np.zeros(1, np.int64)
_EMPTY_F = np.zeros(1, np.float64)
_EMPTY_LEX = np.full((1, 1), -1, np.int32)


def available() -> bool:
    """Whether the compiled search can run here (numba imports)."""
    return numba is not None


def search(lp: np.ndarray, chars: str, beam: int, prune: float, arrays: NgramArrays | None = None,
           alpha: float = 0.0, beta: float = 0.0, oov_penalty: float = 0.0) -> list[tuple[str, float]]:
    """The `beam` best transcripts of log-probs `lp` [slots, len(chars) + 1], best first, with
    scores: speech.ctc.prefix_beam_search_python's answer, with the word n-gram `arrays` fused at
    weight `alpha`, bonus `beta` and unknown-word penalty `oov_penalty` (WordFusion's), or none."""
    if beam < 1:
        raise ValueError(f"the beam must be at least 1, not {beam}")
    blank, space = len(chars), chars.index(" ")
    if arrays is None:
        fused, parts = False, (_EMPTY_I, _EMPTY_F, _EMPTY_F, _EMPTY_I, _EMPTY_I, _EMPTY_LEX, _EMPTY_I,
                               np.zeros(5), np.zeros(6, np.int64))
    else:
        numbers = np.array([alpha, beta, oov_penalty, alpha * arrays.unk - oov_penalty, arrays.unk])
        fused, parts = True, (*arrays[:-2], numbers, arrays.ids)
    nodes, scores, last_of, parent_of = _search_c(np.ascontiguousarray(lp, dtype=np.float64), blank, space, int(beam),
                                                  float(prune), fused, *parts)
    return nbest(nodes.tolist(), scores.tolist(), last_of, parent_of, chars)


def nbest(nodes: Sequence[int], scores: Sequence[float], last_of: Sequence[int], parent_of: Sequence[int],
          chars: str) -> list[tuple[str, float]]:
    """The final beams (prefix-trie nodes and their scores) as texts, best first; beams spelled
    alike (a trailing space or not) are one transcript, their probabilities added. Both searches
    end here."""
    merged: dict[str, float] = {}
    for node, score in zip(nodes, scores):
        spelled = []
        while node > 0:
            spelled.append(chars[last_of[node]])
            node = parent_of[node]
        text = "".join(reversed(spelled)).strip()
        merged[text] = log_add(merged.get(text, NEG_INF), score)
    return sorted(merged.items(), key=lambda kv: -kv[1])


def warm() -> None:
    """Compile the kernel now (and cache it on disk) rather than in the first decode: ~10 s once
    per machine and install (setup.sh runs this), a fraction of a second after."""
    if available():
        search(np.log(np.full((4, 3), 1 / 3)), " a", beam=2, prune=-7.0)


if __name__ == "__main__":
    import time

    start = time.perf_counter()
    warm()
    print(f"compiled CTC search: {'ready' if available() else 'numba missing, the Python search is used'} "
          f"({time.perf_counter() - start:.1f} s)")
