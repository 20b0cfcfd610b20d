"""A mini ProsAudit for the demo world: its *lexical* part only, in the released layout
(``<root>/english/<split>/gold.csv`` + wavs, read back through alignslm.eval.prosaudit like the real set).

ProsAudit's lexical task: the same utterance with a pause inserted between two words (natural) or inside a
word (unnatural).  Built here from one eSpeak NG sentence per pair id (a demo story sentence holding a word of
two or more syllables, not first or last; seed apart from the corpus' and the other benchmarks'):

* the pause: ``PAUSE_S`` of digital silence (eSpeak's own pauses are digital silence too) with 5 ms fades
  on both edges, inserted into the same waveform in both stimuli, so they differ only in where it is;
* inside the word: at its syllable boundary, taken as the quietest 10 ms frame in the middle 40% of the word
  (between two syllable nuclei, eSpeak's word times); syllables counted as vowel runs of eSpeak's IPA;
* between words: at the word boundary on the same side of that word (before or after it, drawn per id),
  also inside fluent speech: eSpeak puts no silence between the words of a sentence, so both insertions
  cut running speech and the only difference is whether a word is split.

Not built: ProsAudit's *protosyntax* part (a pause at a strong prosodic boundary vs at a weak one).  eSpeak
marks a strong boundary only where the text has punctuation, and there it also inserts its own pause: a
"strong boundary without a pause" would have to be made by cutting eSpeak's silence out, so the natural
stimulus would carry one edit at a silent junction and the unnatural one a cut through voiced speech -- a
splice cue the LM could use without knowing anything about prosody.

Deterministic given the seed: sentence, word, side and voice of id k come from rng_for(seed, "prosaudit", k);
the speech from the TTS cache (a function of text, voice and rate).
"""

from __future__ import annotations

import csv
import re
import time
from pathlib import Path

import numpy as np

from alignslm import logger
from alignslm.demo.benchmarks import _file_ids
from alignslm.demo.stories import generate_story, rng_for
from alignslm.demo.tts import engine, load_utterance, synthesize_many
from alignslm.rundir import atomic_path
from alignslm.speech.audio import SAMPLE_RATE, write_wav

PAUSE_S, FADE_S = 0.25, 0.005
_IPA_VOWELS = re.compile(r"[aeiouyæɑɒɔəɛɜɪʊʌɐᵻɚɝøœɯɤ]+")
COLUMNS = ("filename", "id", "voice", "type", "subtype", "correct", "transcription")


def syllables(word: str) -> int:
    """Vowel runs in eSpeak's IPA of ``word`` (a diphthong is one run)."""
    return len(_IPA_VOWELS.findall(engine().phonemes(word, ipa=True).replace("ˈ", "").replace("ˌ", "")))


def candidates(seed: int, k: int, n_topics: int | None) -> tuple[str, list[int]]:
    """(sentence, indices of its words with >= 2 syllables, not first or last) of pair id ``k``."""
    bench_seed = int(rng_for(seed, "prosaudit").random() * 2**31)
    for j in range(50):
        story = generate_story(bench_seed, 50 * k + j, n_topics)
        text = rng_for(seed, "prosaudit", k, j).choice(story.sentences)
        words = text.rstrip(".").split()
        idx = [i for i in range(1, len(words) - 1) if syllables(words[i].strip(",")) >= 2]
        if idx:
            return text, idx
    raise RuntimeError(f"demo ProsAudit: no sentence with an inner polysyllabic word for id {k}")


def _insert_pause(x: np.ndarray, at: int) -> np.ndarray:
    """x with PAUSE_S of silence at sample ``at``, the edges faded over FADE_S.  (T + pause,)"""
    w = int(FADE_S * SAMPLE_RATE)
    head, tail = x[:at].copy(), x[at:].copy()
    k = min(w, len(head))
    head[len(head) - k:] *= np.linspace(1, 0, k)
    k = min(w, len(tail))
    tail[:k] *= np.linspace(0, 1, k)
    return np.concatenate([head, np.zeros(int(PAUSE_S * SAMPLE_RATE)), tail])


def quietest(x: np.ndarray, start: float, end: float) -> int:
    """Sample index (the middle) of the quietest 10 ms frame between ``start`` and ``end`` seconds."""
    f0 = max(0, int(start * 100))
    f1 = min(max(int(end * 100), f0 + 1), len(x) // 160)
    frames = np.array([np.sqrt(np.mean(x[f * 160:(f + 1) * 160] ** 2) + 1e-12) for f in range(f0, f1)])
    return (f0 + int(np.argmin(frames))) * 160 + 80


def syllable_cut(x: np.ndarray, word: dict) -> int:
    """Inside a word: the quietest frame of its middle 40% (a syllable boundary, between two nuclei)."""
    a, b = float(word["start"]), float(word["end"])
    return quietest(x, a + 0.3 * (b - a), b - 0.3 * (b - a))


def boundary_cut(x: np.ndarray, words: list[dict], wi: int, before: bool) -> int:
    """Between word ``wi`` and its neighbour: the quietest frame within 40 ms of the gap between their
    (voiced-trimmed) times.  eSpeak's word times leave out a quiet onset burst or final fricative, so the
    gap itself can sit inside a word's edge consonant; the quietest frame nearby is the closure or the
    junction between the words."""
    a, b = (words[wi - 1], words[wi]) if before else (words[wi], words[wi + 1])
    return quietest(x, float(a["end"]) - 0.04, float(b["start"]) + 0.04)


def write_demo_prosaudit(root: Path, *, n_pairs: int, seed: int, voices: list[str], rate: int, n_topics: int | None,
                         cache_dir: str | Path, workers: int = 1, split: str = "dev") -> dict:
    """Write ``<root>/english/<split>/`` (gold.csv + wavs): ``n_pairs`` lexical pairs, id k spoken by voice
    k mod len(voices).  Returns {pairs, files, seconds}."""
    if n_pairs < 1 or not voices:
        raise ValueError("benchmarks.prosaudit_pairs must be >= 1 and benchmarks.voices non-empty")
    t0 = time.perf_counter()
    plan = []
    for k in range(n_pairs):
        r = rng_for(seed, "prosaudit", k)
        text, idx = candidates(seed, k, n_topics)
        plan.append((k, text, sorted(voices)[k % len(voices)], r.choice(idx), r.random() < 0.5))
    synth = synthesize_many([(t, v, rate) for _, t, v, _, _ in plan], cache_dir, workers)
    failed = [s["error"] for s in synth if "error" in s]
    if failed:
        raise RuntimeError(f"demo ProsAudit: {len(failed)} utterance(s) failed to synthesise: {failed[:3]}")
    d = root / "english" / split
    ids = _file_ids(rng_for(seed, "prosaudit", "ids"), 2 * n_pairs)
    good, bad = [], []
    for (k, text, voice, wi, before), s in zip(plan, synth):
        x = load_utterance(s["path"]).astype(np.float64)
        words = s["words"]
        word_cut = boundary_cut(x, words, wi, before)
        inner = syllable_cut(x, words[wi])
        toks = text.rstrip(".").split()
        at_word = toks[:wi + (0 if before else 1)] + ["|"] + toks[wi + (0 if before else 1):]
        split_word = toks[:wi] + [f"{toks[wi]}(|)"] + toks[wi + 1:]
        for correct, at, shown, rows in ((1, word_cut, at_word, good), (0, inner, split_word, bad)):
            fid = ids.pop()
            write_wav(d / f"{fid}.wav", _insert_pause(x, at))
            rows.append({"filename": fid, "id": k, "voice": voice, "type": "lexical",
                         "subtype": f"pause_{int(PAUSE_S * 1000)}ms", "correct": correct,
                         "transcription": " ".join(shown)})
    with atomic_path(d / "gold.csv") as tmp, open(tmp, "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=list(COLUMNS))
        wr.writeheader()
        wr.writerows(good + bad)  # the official pairing: k-th correct row with the k-th incorrect row
    out = {"pairs": n_pairs, "files": 2 * n_pairs, "seconds": round(time.perf_counter() - t0, 2)}
    logger.info("demo ProsAudit (lexical): %d pairs under %s (%.1fs)", n_pairs, d, out["seconds"])
    return out
