"""Alignments for the report, from jiwer's public alignment chunks (`process_words`, `process_characters`):
word-level operations per utterance (equal, substitution, deletion, insertion), the most frequent character
substitutions and word errors with example utterances, and WER grouped by a key (length bin, speaker).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

EQUAL, SUB, DEL, INS = "=", "S", "D", "I"
_KIND = {"equal": EQUAL, "substitute": SUB, "delete": DEL, "insert": INS}
EMPTY = "∅"  # the missing side of a deletion or insertion
SPACE = "␣"  # a word boundary in the character confusions


@dataclass(frozen=True)
class Op:
    kind: str  # EQUAL, SUB, DEL or INS
    ref: str  # reference word ("" for an insertion)
    hyp: str  # hypothesis word ("" for a deletion)


def word_ops(refs: Sequence[str], hyps: Sequence[str]) -> list[list[Op]]:
    """Per utterance, the word operations of jiwer's alignment, one Op per word."""
    import jiwer

    if not refs:
        return []
    out = jiwer.process_words(list(refs), list(hyps))
    result = []
    for chunks, r, h in zip(out.alignments, out.references, out.hypotheses, strict=True):
        ops = []
        for c in chunks:
            kind = _KIND[c.type]
            if kind in (EQUAL, SUB):
                ops += [Op(kind, r[i], h[j]) for i, j in zip(range(c.ref_start_idx, c.ref_end_idx),
                                                            range(c.hyp_start_idx, c.hyp_end_idx), strict=True)]
            elif kind == DEL:
                ops += [Op(DEL, r[i], "") for i in range(c.ref_start_idx, c.ref_end_idx)]
            else:
                ops += [Op(INS, "", h[j]) for j in range(c.hyp_start_idx, c.hyp_end_idx)]
        result.append(ops)
    return result


def errors(ops: list[Op]) -> int:
    return sum(o.kind != EQUAL for o in ops)


def ref_words(ops: list[Op]) -> int:
    return sum(o.kind != INS for o in ops)


def char_substitutions(refs: Sequence[str], hyps: Sequence[str]) -> list[list[tuple[str, str]]]:
    """Per utterance, the (reference char, hypothesis char) pairs jiwer's character alignment substitutes."""
    import jiwer

    if not refs:
        return []
    out = jiwer.process_characters(list(refs), list(hyps))
    result = []
    for chunks, r, h in zip(out.alignments, out.references, out.hypotheses, strict=True):
        pairs = []
        for c in chunks:
            if c.type == "substitute":
                pairs += [(r[i].replace(" ", SPACE), h[j].replace(" ", SPACE)) for i, j in zip(
                    range(c.ref_start_idx, c.ref_end_idx), range(c.hyp_start_idx, c.hyp_end_idx), strict=True)]
        result.append(pairs)
    return result


@dataclass
class Tally:
    """Counts of keys with up to `keep` example utterance ids each."""

    keep: int = 3
    counts: Counter = field(default_factory=Counter)
    examples: dict = field(default_factory=lambda: defaultdict(list))

    def add(self, key, example: str) -> None:
        self.counts[key] += 1
        ex = self.examples[key]
        if len(ex) < self.keep and example not in ex:
            ex.append(example)

    def top(self, n: int) -> list[tuple[object, int, list[str]]]:
        return [(k, c, self.examples[k]) for k, c in self.counts.most_common(n)]


def char_confusions(ids: Sequence[str], refs: Sequence[str], hyps: Sequence[str]) -> Tally:
    t = Tally()
    for uid, pairs in zip(ids, char_substitutions(refs, hyps), strict=True):
        for pair in pairs:
            t.add(pair, uid)
    return t


def word_confusions(ids: Sequence[str], ops: Sequence[list[Op]]) -> Tally:
    """(kind, ref word, hyp word) of every word error, EMPTY standing for the missing side."""
    t = Tally()
    for uid, uops in zip(ids, ops, strict=True):
        for o in uops:
            if o.kind != EQUAL:
                t.add((o.kind, o.ref or EMPTY, o.hyp or EMPTY), uid)
    return t


def wer_by(keys: Sequence[str], ops: Sequence[list[Op]]) -> dict[str, tuple[float, int]]:
    """key -> (corpus WER of the utterances with that key, number of utterances)."""
    err: Counter = Counter()
    n: Counter = Counter()
    utts: Counter = Counter()
    for k, uops in zip(keys, ops, strict=True):
        err[k] += errors(uops)
        n[k] += ref_words(uops)
        utts[k] += 1
    return {k: (err[k] / n[k] if n[k] else 0.0, utts[k]) for k in utts}


# length bins in seconds: short prompts, typical read sentences, long sentences, paragraphs
LENGTH_BINS = (2.0, 4.0, 6.0, 10.0, 20.0)


def length_bin(seconds: float, bins: Sequence[float] = LENGTH_BINS) -> str:
    lo = 0.0
    for hi in bins:
        if seconds < hi:
            return f"{lo:g}-{hi:g} s"
        lo = hi
    return f"≥{lo:g} s"


def bin_order(bins: Sequence[float] = LENGTH_BINS) -> list[str]:
    edges = [0.0, *bins]
    return [f"{a:g}-{b:g} s" for a, b in zip(edges, edges[1:], strict=False)] + [f"≥{edges[-1]:g} s"]

