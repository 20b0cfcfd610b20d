"""Mini benchmarks from the demo world, written in exactly the official layouts (read back through
alignslm.eval.benchdata, like the real ones):

* ``lexical/dev/`` (sWUGGY-like): a demo word against a pronounceable non-word whose vowels (all) and
  one or two consonants are changed, the least demo-like spelling of 12 such candidates (a letter
  trigram model of the demo's words decides), so it is unlike any demo word; each pair spoken by every
  voice;
  ``gold.csv``: filename, correct, id, voice, frequency, word, phones, length.
* ``syntactic/dev/`` (sBLIMP-like): a sentence of the demo grammar against a minimal violation
  (subject-verb agreement, determiner-noun agreement, word order); ``gold.csv``: filename, correct, id,
  voice, type, subtype, transcription.
* ``ssc/`` and ``tsc/`` (Spoken StoryCloze-like, one voice): ``<k>_correct.wav`` is a story with its
  coherent ending; ``<k>_incorrect.wav`` the same context with an ending of the same topic that states
  the result of another action (sSC) or an ending from another topic (tSC).

``texts.jsonl`` (outside the official folders) maps every file id to its text, for inspection.
"""

from __future__ import annotations

import csv
import math
import random
import string
from collections import Counter
from pathlib import Path

from alignslm import logger
from alignslm.demo.lexicon import SHARED_ADJECTIVES, plural, third_singular, vocabulary
from alignslm.demo.stories import (
    Story,
    _adjective,
    _cap,
    generate_stories,
    generate_story,
    grammatical,
    incoherent_ending,
    other_topic_ending,
    rng_for,
    subject,
    topics,
)
from alignslm.demo.tts import engine, place_wav, synthesize_many
from alignslm.rundir import atomic_path, write_jsonl

VOWELS = ("a", "e", "i", "o", "u", "ee", "oo", "ai", "oa", "ou")
CONSONANTS = tuple("bdfgklmnprstvz")
SYNTACTIC_KINDS = (("subject_verb_agreement", "transitive"), ("subject_verb_agreement", "copula"),
                   ("determiner_noun_agreement", "this_these"), ("determiner_noun_agreement", "numeral"),
                   ("word_order", "adjective_noun"), ("word_order", "verb_object"),
                   ("word_order", "determiner_noun"))


# --------------------------------------------------------------------------------------------------
# Lexical: words and non-words
# --------------------------------------------------------------------------------------------------


def lexical_words(n_topics: int | None = None) -> list[str]:
    """Content words of the demo (objects, verbs, adjectives, roles, places), 3+ letters, sorted."""
    ws: set[str] = set(SHARED_ADJECTIVES)
    for t in topics(n_topics):
        ws |= set(t.objects) | {a.verb for a in t.actions} | set(t.adjectives) | set(t.roles) | {t.place}
        ws |= {n for _, n in t.locations}
    return sorted(w for w in ws if len(w) >= 3 and " " not in w)


def _segments(word: str) -> list[str]:
    """'kitchen' -> ['k', 'i', 'tch', 'e', 'n']: alternating consonant and vowel runs."""
    segs: list[str] = []
    for i, ch in enumerate(word):
        # 'y' after a consonant is a vowel ("cymbal", "cherry"); written as 'i' so runs stay typed
        is_v = ch in "aeiou" or (ch == "y" and i > 0 and word[i - 1] not in "aeiou")
        ch = "i" if ch == "y" and is_v else ch
        if segs and (segs[-1][0] in "aeiou") == is_v:
            segs[-1] += ch
        else:
            segs.append(ch)
    return segs


def make_nonword(word: str, rng: random.Random, avoid: set[str]) -> str:
    """A pronounceable non-word: every vowel run replaced by another vowel, 1-2 single consonants swapped."""
    for _ in range(100):
        segs = _segments(word)
        silent_e = len(word) > 3 and segs[-1] == "e"  # "cake", "horse": keep the final e silent
        for i, s in enumerate(segs):
            if s[0] in "aeiou" and not (silent_e and i == len(segs) - 1):
                segs[i] = rng.choice([v for v in VOWELS if v != s])
        singles = [i for i, s in enumerate(segs) if s[0] not in "aeiou" and len(s) == 1]
        for i in rng.sample(singles, min(len(singles), 1 if len(word) < 6 else 2)):
            segs[i] = rng.choice([c for c in CONSONANTS if c != segs[i]])
        cand = "".join(segs)
        if cand != word and cand not in avoid and len(cand) >= 3:
            return cand
    raise ValueError(f"could not make a non-word for {word!r}")


class LetterModel:
    """Letter trigram model of the demo's words (add-one smoothing): how demo-like a spelling is."""

    def __init__(self, words: list[str]):
        self.tri: Counter = Counter()
        self.bi: Counter = Counter()
        for w in words:
            t = f"^^{w}$"
            for i in range(2, len(t)):
                self.tri[t[i - 2: i + 1]] += 1
                self.bi[t[i - 2: i]] += 1

    def score(self, word: str) -> float:
        """Mean log-probability per letter (higher = more like the demo words)."""
        t = f"^^{word}$"
        lp = [math.log((self.tri[t[i - 2: i + 1]] + 1) / (self.bi[t[i - 2: i]] + 28)) for i in range(2, len(t))]
        return sum(lp) / len(lp)


def least_demo_like_nonword(word: str, rng: random.Random, avoid: set[str], model: LetterModel,
                            tries: int = 12) -> str:
    """Of ``tries`` candidate non-words, the one whose spelling is least like the demo's words."""
    cands = {make_nonword(word, rng, avoid) for _ in range(tries)}
    return min(sorted(cands), key=model.score)


def ipa_phones(text: str) -> list[str]:
    """eSpeak's IPA for ``text`` split into phones (length marks and ties kept with their phone)."""
    ipa = engine().phonemes(text, ipa=True)
    phones: list[str] = []
    for ch in ipa:
        if ch in "ˈˌ " or ch == "\n":
            continue
        if phones and (ch in "ːˑ" or 0x300 <= ord(ch) <= 0x36F or ch == "͡"):
            phones[-1] += ch
        else:
            phones.append(ch)
    return phones


# --------------------------------------------------------------------------------------------------
# Syntactic: minimal pairs
# --------------------------------------------------------------------------------------------------


def syntactic_pair(rng: random.Random, kind: tuple[str, str], n_topics: int | None = None) -> tuple[str, str]:
    """(grammatical sentence, minimally perturbed one) of the given (type, subtype)."""
    t = rng.choice(topics(n_topics))
    action = rng.choice(t.actions)
    noun = rng.choice(action.objects)
    subj, num = subject(rng, t)
    verb = third_singular(action.verb) if num == "sg" else action.verb
    wrong_verb = action.verb if num == "sg" else third_singular(action.verb)
    adj = _adjective(rng, t, 1.0)
    typ, sub = kind
    if sub == "transitive":
        return (_cap(f"{subj} {verb} the {noun}."), _cap(f"{subj} {wrong_verb} the {noun}."))
    if sub == "copula":
        good_be, bad_be = ("is", "are") if rng.random() < 0.5 else ("are", "is")
        head = noun if good_be == "is" else plural(noun)
        return (f"The {head} {good_be} {adj}.", f"The {head} {bad_be} {adj}.")
    if sub == "this_these":
        if rng.random() < 0.5:
            return (_cap(f"{subj} {verb} this {noun}."), _cap(f"{subj} {verb} these {noun}."))
        return (_cap(f"{subj} {verb} these {plural(noun)}."), _cap(f"{subj} {verb} this {plural(noun)}."))
    if sub == "numeral":
        num_word = rng.choice(("two", "three"))
        return (_cap(f"{subj} {verb} {num_word} {plural(noun)}."), _cap(f"{subj} {verb} {num_word} {noun}."))
    if sub == "adjective_noun":
        return (_cap(f"{subj} {verb} the {adj} {noun}."), _cap(f"{subj} {verb} the {noun} {adj}."))
    if sub == "verb_object":
        return (_cap(f"{subj} {verb} the {noun}."), _cap(f"{subj} the {noun} {verb}."))
    if sub == "determiner_noun":
        return (_cap(f"{subj} {verb} the {noun}."), _cap(f"{subj} {verb} {noun} the."))
    raise ValueError(f"unknown syntactic kind {kind}")


# --------------------------------------------------------------------------------------------------
# Writing the layouts
# --------------------------------------------------------------------------------------------------


def _file_ids(rng: random.Random, n: int) -> list[str]:
    """``n`` distinct random 11-character ids, like the ZeroSpeech file names."""
    out: set[str] = set()
    alphabet = string.ascii_letters + string.digits
    ids = []
    while len(ids) < n:
        x = "".join(rng.choice(alphabet) for _ in range(11))
        if x not in out:
            out.add(x)
            ids.append(x)
    return ids


def _write_csv(path: Path, columns: tuple[str, ...], rows: list[dict]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns))
        w.writeheader()
        w.writerows(rows)


def word_frequencies(seed: int, n_stories: int = 2000, n_topics: int | None = None) -> Counter:
    """Word counts in the demo corpus of this seed (the 'frequency' column, as LibriSpeech counts are)."""
    c: Counter = Counter()
    for s in generate_stories(n_stories, seed, n_topics):
        c.update(w.strip(".").lower() for w in s.text.split())
    return c


def lexical_rows(seed: int, n_pairs: int, voices: list[str], n_topics: int | None,
                  freq: Counter) -> list[dict]:
    rng = rng_for(seed, "lexical")
    words = lexical_words(n_topics)
    if n_pairs > len(words):
        raise ValueError(f"benchmarks.n_pairs={n_pairs}: the demo lexicon has only {len(words)} content words "
                         f"with {n_topics or 'all'} topics for the lexical benchmark")
    chosen = rng.sample(words, n_pairs)
    avoid = set(vocabulary()) | set(words)
    ids = _file_ids(rng, 2 * n_pairs * len(voices))
    model = LetterModel([w.strip(".").lower() for s in generate_stories(2000, seed, n_topics) for w in s.text.split()])
    rows = []
    for k, w in enumerate(chosen):
        nw = least_demo_like_nonword(w, rng, avoid, model)
        avoid.add(nw)
        pw, pn = ipa_phones(w), ipa_phones(nw)
        for v in voices:
            rows.append({"filename": ids.pop(), "correct": 1, "id": k, "voice": v, "frequency": freq[w],
                         "word": w, "phones": " ".join(pw), "length": len(pw)})
            rows.append({"filename": ids.pop(), "correct": 0, "id": k, "voice": v, "frequency": "",
                         "word": nw, "phones": " ".join(pn), "length": len(pn)})
    return rows


def syntactic_rows(seed: int, n_pairs: int, voices: list[str], n_topics: int | None) -> list[dict]:
    rng = rng_for(seed, "syntactic")
    ids = _file_ids(rng, 2 * n_pairs * len(voices))
    rows, seen = [], set()
    for k in range(n_pairs):
        kind = SYNTACTIC_KINDS[k % len(SYNTACTIC_KINDS)]
        for _ in range(200):
            good, bad = syntactic_pair(rng, kind, n_topics)
            if good not in seen and grammatical(good) and not grammatical(bad):
                break
        else:
            raise RuntimeError(f"could not draw a new {kind} pair (benchmarks.n_pairs too large?)")
        seen.add(good)
        for v in voices:
            for text, correct in ((good, 1), (bad, 0)):
                rows.append({"filename": ids.pop(), "correct": correct, "id": k, "voice": v, "type": kind[0],
                             "subtype": kind[1], "transcription": text.rstrip(".")})
    return rows


def _cloze_stories(seed: int, n_pairs: int, n_topics: int | None) -> list[Story]:
    """``n_pairs`` stories of 3-5 sentences (a context before the ending), from a seed apart from the corpus'."""
    out, i = [], 0
    bench_seed = int(rng_for(seed, "storycloze").random() * 2**31)
    while len(out) < n_pairs:
        s = generate_story(bench_seed, i, n_topics)
        i += 1
        if len(s.sentences) >= 3:
            out.append(s)
    return out


def cloze_endings(seed: int, n_pairs: int, n_topics: int | None, kind: str) -> list[tuple[str, list[str], str, str]]:
    """[(story id, context sentences, correct ending, incorrect ending)] for 'ssc' or 'tsc'; the first ``m`` of
    ``n_pairs`` > m are the same as with ``n_pairs`` = m."""
    rng = rng_for(seed, kind)
    rows = []
    for s in _cloze_stories(seed, n_pairs, n_topics):
        wrong = incoherent_ending(s, rng) if kind == "ssc" else other_topic_ending(s, rng, n_topics)
        rows.append((s.story_id, s.context, s.sentences[-1], wrong))
    return rows


def cloze_texts(seed: int, n_pairs: int, n_topics: int | None, kind: str) -> list[tuple[str, str, str]]:
    """[(story id, correct text, incorrect text)] for 'ssc' or 'tsc'."""
    return [(sid, " ".join([*ctx, good]), " ".join([*ctx, bad]))
            for sid, ctx, good, bad in cloze_endings(seed, n_pairs, n_topics, kind)]


def write_demo_benchmarks(root: Path, *, n_pairs: int, seed: int, voices: list[str], rate: int,
                          story_voice: str, n_topics: int | None, cache_dir: str | Path,
                          workers: int = 1, split: str = "dev") -> dict:
    """Write lexical/<split>, syntactic/<split>, ssc, tsc under ``root``. Returns a summary."""
    if n_pairs < 1 or not voices:
        raise ValueError("benchmarks.n_pairs must be >= 1 and benchmarks.voices non-empty")
    root.mkdir(parents=True, exist_ok=True)
    freq = word_frequencies(seed, n_topics=n_topics)
    jobs: list[tuple[str, str, int, Path]] = []  # (text, voice, rate, destination)
    texts: list[dict] = []
    lex = lexical_rows(seed, n_pairs, voices, n_topics, freq)
    syn = syntactic_rows(seed, n_pairs, voices, n_topics)
    for task, rows, key in (("lexical", lex, "word"), ("syntactic", syn, "transcription")):
        d = root / task / split
        d.mkdir(parents=True, exist_ok=True)
        for r in rows:
            jobs.append((r[key], r["voice"], rate, d / f"{r['filename']}.wav"))
            texts.append({"benchmark": task, "file": r["filename"], "text": r[key], "correct": r["correct"]})
    for kind in ("ssc", "tsc"):
        for k, (sid, good, bad) in enumerate(cloze_texts(seed, n_pairs, n_topics, kind)):
            for text, label in ((good, "correct"), (bad, "incorrect")):
                jobs.append((text, story_voice, rate, root / kind / f"{k}_{label}.wav"))
                texts.append({"benchmark": kind, "file": f"{k}_{label}", "text": text, "story_id": sid,
                              "correct": int(label == "correct")})
    synth = synthesize_many([(t, v, r) for t, v, r, _ in jobs], cache_dir, workers)
    failed = [f"{dst.relative_to(root)} ({s['text'][:40]!r}): {s['error']}" for (*_, dst), s in zip(jobs, synth)
              if "error" in s]
    if failed:  # a benchmark with holes would be scored on other pairs than intended
        raise RuntimeError(f"demo benchmarks: {len(failed)} file(s) failed to synthesise: {'; '.join(failed[:5])}")
    for (_, _, _, dst), s in zip(jobs, synth):
        place_wav(s["path"], dst)
    _write_csv(root / "lexical" / split / "gold.csv",
               ("filename", "correct", "id", "voice", "frequency", "word", "phones", "length"), lex)
    _write_csv(root / "syntactic" / split / "gold.csv",
               ("filename", "correct", "id", "voice", "type", "subtype", "transcription"), syn)
    write_jsonl(root / "texts.jsonl", texts)
    logger.info("demo benchmarks: %d files under %s", len(jobs), root)
    return {"files": len(jobs), "pairs_per_benchmark": n_pairs, "voices": len(voices)}

