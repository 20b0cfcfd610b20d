"""Is the signal of the demo mini benchmarks learnable from the demo corpus?  Text-level proxies.

    python experiments/demo_learnability.py [--seed 0] [--n-pairs 200]

Two tiny language models are trained on the texts of the 2,000-story demo corpus and score the
benchmark pairs the way the SLM evaluation does (mean log-probability per token, correct > incorrect):
* a letter 5-gram (Witten-Bell interpolation), the stand-in for a unit LM with a short context;
* a word bigram mixed with a story cache (lambda * unigram of the words already said), the stand-in
  for a model that uses the whole story as context (attention).
No audio is involved: these numbers say whether the benchmark contrasts exist in the data, not what
the unit LM reaches.
"""

from __future__ import annotations

import argparse
import math
import re
from collections import Counter, defaultdict

from alignslm.demo.benchmarks import cloze_texts, lexical_rows, syntactic_rows, word_frequencies
from alignslm.demo.stories import generate_stories


class LetterNgram:
    def __init__(self, texts: list[str], n: int = 5):
        self.n = n
        self.count: list[Counter] = [Counter() for _ in range(n + 1)]
        for t in texts:
            t = "^" * n + t.lower() + "$"
            for i in range(n, len(t)):
                for k in range(n + 1):
                    self.count[k][t[i - k: i + 1]] += 1
        self.ctx: list[Counter] = [Counter() for _ in range(n + 1)]
        self.types: list[Counter] = [Counter() for _ in range(n + 1)]
        for k in range(1, n + 1):
            for g, c in self.count[k].items():
                self.ctx[k][g[:-1]] += c
                self.types[k][g[:-1]] += 1
        self.total = sum(self.count[0].values())

    def score(self, text: str) -> float:
        t = "^" * self.n + text.lower() + "$"
        s = 0.0
        for i in range(self.n, len(t)):
            p = (self.count[0][t[i]] + 1) / (self.total + 40)
            for k in range(1, self.n + 1):
                c = self.ctx[k].get(t[i - k: i], 0)
                if c:
                    lam = c / (c + self.types[k][t[i - k: i]])
                    p = lam * self.count[k][t[i - k: i + 1]] / c + (1 - lam) * p
            s += math.log(p)
        return s / (len(t) - self.n)


class CachedBigram:
    def __init__(self, texts: list[str], lam: float = 0.2):
        self.lam = lam
        self.uni: Counter = Counter()
        self.bi: Counter = Counter()
        self.ctx: Counter = Counter()
        for text in texts:
            t = ["<s>"] + self.tokens(text)
            self.uni.update(t)
            for a, b in zip(t, t[1:]):
                self.bi[(a, b)] += 1
                self.ctx[a] += 1
        self.n = sum(self.uni.values())

    @staticmethod
    def tokens(text: str) -> list[str]:
        return re.findall(r"[a-z]+|\.", text.lower())

    def score(self, text: str) -> float:
        t = ["<s>"] + self.tokens(text)
        cache: Counter = Counter()
        s = 0.0
        for a, b in zip(t, t[1:]):
            pb = (self.bi[(a, b)] + 0.1 * (self.uni[b] + 1) / (self.n + len(self.uni))) / (self.ctx[a] + 0.1)
            pc = cache[b] / max(1, sum(cache.values()))
            s += math.log((1 - self.lam) * pb + self.lam * pc + 1e-12)
            cache[b] += 1
        return s / (len(t) - 1)


def accuracy(model, pairs: list[tuple[str, str]]) -> float:  # noqa: ANN001
    return sum(model.score(g) > model.score(b) for g, b in pairs) / len(pairs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-pairs", type=int, default=200)
    a = ap.parse_args()
    texts = [s.text for s in generate_stories(2000, a.seed)]
    lex = lexical_rows(a.seed, a.n_pairs, ["v"], None, word_frequencies(a.seed))
    syn = syntactic_rows(a.seed, a.n_pairs, ["v"], None)
    sets = {"lexical": [(g["word"], b["word"]) for g, b in zip(lex[0::2], lex[1::2])],
            "syntactic": [(g["transcription"], b["transcription"]) for g, b in zip(syn[0::2], syn[1::2])],
            "ssc": [(g, b) for _, g, b in cloze_texts(a.seed, a.n_pairs, None, "ssc")],
            "tsc": [(g, b) for _, g, b in cloze_texts(a.seed, a.n_pairs, None, "tsc")]}
    models = {"letter 5-gram": LetterNgram(texts), "word bigram + story cache": CachedBigram(texts)}
    print(f"{'proxy':<28}" + "".join(f"{k:>11}" for k in sets))
    for name, m in models.items():
        print(f"{name:<28}" + "".join(f"{accuracy(m, p):>11.3f}" for p in sets.values()))
    by: dict[str, list[bool]] = defaultdict(list)
    m = models["letter 5-gram"]
    for g, b in zip(syn[0::2], syn[1::2]):
        by[g["subtype"]].append(m.score(g["transcription"]) > m.score(b["transcription"]))
    print("syntactic by subtype (letter 5-gram): " + ", ".join(f"{k} {sum(v) / len(v):.2f}" for k, v in by.items()))


if __name__ == "__main__":
    main()
