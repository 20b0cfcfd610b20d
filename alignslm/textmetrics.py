"""Text metrics shared by ASR, the judge, the vocoder check and evaluation.

- :func:`normalize_text`: Whisper-style basic normalisation (lowercase, punctuation and symbols removed,
  whitespace collapsed) so that "Hello, World!" and "hello world" compare equal.
- :func:`wer`: corpus-level word error rate = total word edits / total reference words.
- :func:`auto_bleu`: GSLM's auto-BLEU of one text (Lakhotia et al. 2021, as used by Align-SLM with
  bigrams): the share of the text's n-grams that occur again elsewhere in the same text (at a position
  that does not overlap them).  0 = no repetition, 1 = everything repeats.
"""

from __future__ import annotations

import re
import unicodedata
from collections import defaultdict
from collections.abc import Sequence

_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "`": "'"})


def normalize_text(s: str) -> str:
    """Lowercase; drop punctuation and symbols (keep in-word apostrophes); collapse whitespace."""
    s = unicodedata.normalize("NFKC", s).translate(_APOSTROPHES).lower()
    s = re.sub(r"[\[<(][^\]>)]*[\]>)]", " ", s)  # bracketed annotations such as [music] or <unk>
    out = []
    for ch in s:
        cat = unicodedata.category(ch)
        if ch == "'" or cat[0] in "LN":
            out.append(ch)
        else:
            out.append(" ")
    s = "".join(out)
    s = re.sub(r"(?<![a-z0-9])'|'(?![a-z0-9])", " ", s)  # quotes, not apostrophes inside words
    return " ".join(s.split())


def words(s: str) -> list[str]:
    """Normalised words of ``s``."""
    return normalize_text(s).split()


def edit_distance(ref: Sequence[str], hyp: Sequence[str]) -> int:
    """Levenshtein distance between two token sequences (substitutions, insertions, deletions)."""
    if not ref:
        return len(hyp)
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def wer(refs: list[str], hyps: list[str]) -> float:
    """Corpus-level WER of normalised texts: sum of word edits / sum of reference words.

    Raises ValueError when the lists differ in length or when every reference is empty.
    """
    if len(refs) != len(hyps):
        raise ValueError(f"wer: {len(refs)} references but {len(hyps)} hypotheses; pass one per clip")
    errors = 0
    total = 0
    for r, h in zip(refs, hyps):
        rw, hw = words(r), words(h)
        errors += edit_distance(rw, hw)
        total += len(rw)
    if total == 0:
        raise ValueError("wer: all references are empty after normalisation; WER is undefined")
    return errors / total


def auto_bleu(text: str | Sequence[str], n: int = 2) -> float:
    """GSLM auto-BLEU of order ``n``: share of n-grams that reappear elsewhere, non-overlapping.

    ``text`` is a string (normalised and split into words) or an already tokenised sequence (e.g. units).
    A text with fewer than ``n`` tokens has no n-grams and scores 0.0 (nothing repeats).
    """
    if n < 1:
        raise ValueError(f"auto_bleu: n must be >= 1, got {n}")
    toks = words(text) if isinstance(text, str) else list(text)
    grams = [tuple(toks[i:i + n]) for i in range(len(toks) - n + 1)]
    if not grams:
        return 0.0
    where: dict[tuple, list[int]] = defaultdict(list)
    for i, g in enumerate(grams):
        where[g].append(i)
    repeated = 0
    for i, g in enumerate(grams):
        # another occurrence j counts if it does not overlap [i, i+n): j <= i-n or j >= i+n
        if any(abs(j - i) >= n for j in where[g]):
            repeated += 1
    return repeated / len(grams)


def compression_ratio(text: str) -> float:
    """len(text bytes) / len(zlib(text bytes)); Whisper's hallucination guard (> 2.4 is suspicious)."""
    import zlib

    b = text.encode("utf-8")
    if not b:
        return 0.0
    return len(b) / len(zlib.compress(b))
