"""The demo corpus: one utterance per story (2-5 sentences, ~4-12 s), voices and rates drawn per story,
train/dev/test split by story, and manifest rows in the contract of alignslm.stages (corpus/manifest.jsonl).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path

from alignslm import logger
from alignslm.demo.stories import Story, generate_stories, rng_for
from alignslm.demo.tts import place_wav, synthesize_many

SPLITS = ("train", "dev", "test")


def assign_splits(n: int, shares: Sequence[float], seed: int) -> list[str]:
    """Split label per item: a seeded permutation cut by ``shares`` (train, dev, test; normalised)."""
    if len(shares) != 3 or any(s < 0 for s in shares) or sum(shares) <= 0:
        raise ValueError(f"corpus.split must be three non-negative shares (train, dev, test), got {list(shares)}")
    tot = float(sum(shares))
    n_train = round(n * shares[0] / tot)
    n_dev = round(n * shares[1] / tot)
    if n >= 3:  # every split non-empty when the share is positive
        n_dev = max(n_dev, 1 if shares[1] > 0 else 0)
        n_train = min(n_train, n - n_dev - (1 if shares[2] > 0 else 0))
    order = list(range(n))
    rng_for(seed, "split").shuffle(order)
    labels = [""] * n
    for rank, i in enumerate(order):
        labels[i] = "train" if rank < n_train else "dev" if rank < n_train + n_dev else "test"
    return labels


def voice_and_rate(seed: int, index: int, voices: Sequence[str], rates: Sequence[int]) -> tuple[str, int]:
    rng = rng_for(seed, "voice", index)
    return rng.choice(list(voices)), int(rng.choice(list(rates)))


def sentence_spans(sentences: list[str], words: list[dict]) -> list[list[float]] | None:
    """[start, end] seconds of each sentence from the word times, or None if the words do not line up."""
    counts = [len(re.findall(r"[\w'-]+", s)) for s in sentences]
    if sum(counts) != len(words):
        return None
    spans, i = [], 0
    for c in counts:
        spans.append([words[i]["start"], words[i + c - 1]["end"]])
        i += c
    return spans


def build_demo_corpus(out: Path, *, n_stories: int, seed: int, n_topics: int | None,
                      voices: Sequence[str], rates: Sequence[int], split: Sequence[float],
                      cache_dir: str | Path, workers: int = 1,
                      reject: Callable[[str, str], None] | None = None) -> tuple[list[dict], list[dict]]:
    """Generate, speak and place the corpus under ``out/wavs``. Returns (manifest rows, story rows).
    A story eSpeak fails on is passed to ``reject(utt_id, reason)`` (an error when there is none)."""
    if n_stories < 1:
        raise ValueError(f"corpus.n_stories must be >= 1, got {n_stories}")
    if not voices or not rates:
        raise ValueError("corpus.voices and corpus.rates must not be empty")
    stories: list[Story] = generate_stories(n_stories, seed, n_topics)
    labels = assign_splits(n_stories, split, seed)
    vr = [voice_and_rate(seed, i, voices, rates) for i in range(n_stories)]
    synth = synthesize_many([(s.text, v, r) for s, (v, r) in zip(stories, vr)], cache_dir, workers)
    wav_dir = out / "wavs"
    wav_dir.mkdir(parents=True, exist_ok=True)
    rows, story_rows = [], []
    for s, lab, syn in zip(stories, labels, synth):
        utt_id = s.story_id
        if "error" in syn:
            if reject is None:
                raise RuntimeError(f"speech synthesis failed for story {utt_id}: {syn['error']}")
            reject(utt_id, f"speech synthesis failed: {syn['error']}")
            continue
        dst = wav_dir / f"{utt_id}.wav"
        place_wav(syn["path"], dst)
        rows.append({"utt_id": utt_id, "path": dst.relative_to(out).as_posix(), "text": s.text, "words": syn["words"],
                     "voice": syn["voice"], "rate": syn["rate"], "topic": s.topic, "story_id": s.story_id,
                     "split": lab, "duration": syn["duration"], "sentences": s.sentences,
                     "sentence_spans": sentence_spans(s.sentences, syn["words"])})
        story_rows.append({**s.to_dict(), "split": lab, "utt_id": utt_id})
    n_cached = sum(bool(x.get("cached")) for x in synth)
    logger.info("demo corpus: %d stories, %d synthesised, %d from the cache", n_stories,
                n_stories - n_cached, n_cached)
    return rows, story_rows
