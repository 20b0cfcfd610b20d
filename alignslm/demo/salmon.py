"""A mini SALMon for the demo world, in the released layout (``<root>/<part>/sample_{i}_{0,1}.wav``, read
back through alignslm.eval.salmon like the real one), for the parts that eSpeak NG and signal processing
can make honestly.  Each sample is a two-sentence demo text (the last two sentences of a demo story, from a
seed apart from the corpus' and the other benchmarks'); the positive keeps one acoustic condition from start
to end, the negative switches it mid-utterance, as the official generation scripts (slp-rl/salmon
``data_generation/``) build theirs:

* ``speaker_consistency``: the text spoken by voice A; the negative is A up to the middle word gap, then
  voice B (the same gender) saying the rest.  The cut is the official one: word index ``int((n - 1) * 0.5)``,
  midway between that word's end and the next word's start, in each recording (eSpeak's word times).
* ``gender_consistency``: the same with B of the other gender (male <-> female).
* ``bg_all_consistency``: the speech with a synthetic background noise at a fixed SNR; the negative switches
  to another noise type at the cut, at the same SNR (the official "random" distractor keeps the SNR too).
  Types: white, pink, brown, mains hum, hiss (> 4 kHz), rumble (< 250 Hz), crackle (sparse clicks).
* ``bg_level_consistency`` (not a released part): the same noise continues, but its level jumps by 15 dB.
* ``rir_consistency``: the speech in a synthetic room (impulse response = direct path + exponentially
  decaying noise tail, RT60 0.15-0.4 s or 0.8-1.5 s, direct-to-reverberant ratio 0-6 dB); the negative
  switches to a room of the other class at the cut (both rooms convolve the whole utterance, so only the
  room changes, not the speech).

Voices: A and B are drawn per sample (either order), so a model that merely prefers one voice, one noise or
one room over another gains nothing on average.  Every recording is peak-normalised to -1 dBFS as the
official ``Audio`` loader does; noise/room pairs are scaled by one common factor, so the part before the cut
is sample-identical in the positive and the negative.  Splices get a 5 ms (voices) or 20 ms (noise, room)
crossfade, so no click marks the switch.

Not built: sentiment consistency/alignment (eSpeak has no emotional voices: any "sentiment" would be a pitch
or rate change, which is another test) and background alignment (a noise that matches the text's content
needs recorded scenes, not synthetic noise).

Deterministic given the seed: every random choice of sample i of a part comes from its own generator seeded
by (seed, part, i) (numpy's PCG64 and FFTs, no threads), the speech from the TTS cache (audio a function of
text, voice and rate: alignslm.demo.tts), so neither the thread count nor the order files are listed in
changes a sample.  ``metadata.json`` per part records each sample's text, voices, cut, noises, SNRs, rooms.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np

from alignslm import logger
from alignslm.demo.stories import generate_story, rng_for
from alignslm.demo.tts import load_utterance, synthesize_many
from alignslm.rundir import write_text
from alignslm.speech.audio import SAMPLE_RATE, write_wav

PARTS = ("speaker_consistency", "gender_consistency", "bg_all_consistency", "bg_level_consistency",
         "rir_consistency")
NOISES = ("white", "pink", "brown", "hum", "hiss", "rumble", "crackle")
PEAK = 10 ** (-1 / 20)  # -1 dBFS, the official loader's peak normalisation
VOICE_FADE_S, SWITCH_FADE_S = 0.005, 0.02


# --------------------------------------------------------------------------------------------------
# Material: texts, voices, noises, rooms
# --------------------------------------------------------------------------------------------------


def salmon_texts(seed: int, n: int, n_topics: int | None = None) -> list[str]:
    """``n`` two-sentence texts: the last two sentences of demo stories of a seed apart from the corpus'."""
    bench_seed = int(rng_for(seed, "salmon").random() * 2**31)
    return [" ".join(generate_story(bench_seed, i, n_topics).sentences[-2:]) for i in range(n)]


def voice_gender(voice: str) -> str:
    """'female' or 'male': the ``gender`` line of an eSpeak variant file (``en-us+f4``), else male (the base
    voices are male)."""
    if "+" not in voice:
        return "male"
    try:
        import espeakng_loader
    except ImportError:
        return "male"
    f = Path(espeakng_loader.get_data_path()) / "voices" / "!v" / voice.split("+", 1)[1]
    if f.is_file():
        for line in f.read_text(errors="replace").splitlines():
            parts = line.split()
            if parts[:1] == ["gender"] and len(parts) > 1:
                return "female" if parts[1].lower() == "female" else "male"
    return "male"


def sample_rngs(seed: int, part: str, i: int) -> tuple[np.random.Generator, int]:
    """The generator of sample ``i`` of ``part`` (and its integer seed), independent of every other sample."""
    s = int(hashlib.sha256(f"{seed}\0salmon\0{part}\0{i}".encode()).hexdigest()[:16], 16)
    return np.random.default_rng(s), s


def _shaped(n: int, rng: np.random.Generator, gain: np.ndarray | None = None) -> np.ndarray:
    """White Gaussian noise, optionally shaped by ``gain`` (rfft-bin amplitude), scaled to unit RMS.  (n,)"""
    x = rng.standard_normal(n)
    if gain is not None:
        x = np.fft.irfft(np.fft.rfft(x) * gain, n)
    return x / (np.sqrt(np.mean(x**2)) + 1e-12)


def noise(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n,) float64 noise of ``kind`` (one of NOISES) at unit RMS, 16 kHz."""
    f = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)  # (n//2+1,) Hz
    f1 = np.maximum(f, 20.0)  # no DC blow-up for the coloured noises
    if kind == "white":
        return _shaped(n, rng)
    if kind == "pink":
        return _shaped(n, rng, 1 / np.sqrt(f1))
    if kind == "brown":
        return _shaped(n, rng, 1 / f1)
    if kind == "hiss":
        return _shaped(n, rng, (f > 4000).astype(float))
    if kind == "rumble":
        return _shaped(n, rng, (f < 250).astype(float))
    if kind == "hum":
        t = np.arange(n) / SAMPLE_RATE
        base = rng.choice([50.0, 60.0])
        x = sum(rng.uniform(0.2, 1.0) / k * np.sin(2 * np.pi * base * k * t + rng.uniform(0, 2 * np.pi))
                for k in range(1, 9))
        x = x + 0.05 * rng.standard_normal(n)
        return x / np.sqrt(np.mean(x**2))
    if kind == "crackle":
        x = np.zeros(n)
        hits = rng.random(n) < 40 / SAMPLE_RATE  # ~40 clicks per second
        x[hits] = rng.standard_normal(int(hits.sum())) * rng.uniform(0.3, 1.0, int(hits.sum()))
        x = np.convolve(x, np.exp(-np.arange(32) / 6.0), mode="same")  # 2 ms decaying clicks
        return x / (np.sqrt(np.mean(x**2)) + 1e-12)
    raise ValueError(f"unknown noise kind {kind!r}; expected one of {NOISES}")


def room_ir(rt60: float, drr_db: float, predelay_s: float, rng: np.random.Generator) -> np.ndarray:
    """(L,) impulse response: a unit direct path, then after ``predelay_s`` a Gaussian tail decaying by 60 dB
    in ``rt60`` seconds, scaled so that direct / tail energy = ``drr_db``."""
    n = int((predelay_s + rt60) * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    tail = rng.standard_normal(n) * 10 ** (-3 * np.maximum(t - predelay_s, 0) / rt60)
    tail[t < predelay_s] = 0.0
    tail *= np.sqrt(10 ** (-drr_db / 10) / np.sum(tail**2))  # the direct path has energy 1
    tail[0] += 1.0
    return tail


def _convolve(x: np.ndarray, h: np.ndarray) -> np.ndarray:
    """x * h by FFT, cut to len(x) (as the official simulate_rir).  (T,)"""
    n = len(x) + len(h) - 1
    size = 1 << (n - 1).bit_length()
    return np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(h, size), size)[: len(x)]


def _peak(x: np.ndarray) -> np.ndarray:
    return x * (PEAK / (np.abs(x).max() + 1e-12))


def _switch(a: np.ndarray, b: np.ndarray, cut: int, fade_s: float) -> np.ndarray:
    """a before ``cut``, b after, with a linear crossfade of ``fade_s`` centred on the cut (same lengths)."""
    w = max(1, int(fade_s * SAMPLE_RATE))
    ramp = np.clip((np.arange(len(a)) - (cut - w // 2)) / w, 0.0, 1.0)  # 0 before, 1 after
    return a * (1 - ramp) + b * ramp


def cut_time(words: list[dict]) -> float:
    """The official cut: midway between the end of word int((n - 1) * 0.5) and the start of the next one."""
    k = int((len(words) - 1) * 0.5)
    return (float(words[k]["end"]) + float(words[k + 1]["start"])) / 2


# --------------------------------------------------------------------------------------------------
# One sample of each part: (positive, negative, metadata)
# --------------------------------------------------------------------------------------------------


def voice_switch(a: np.ndarray, a_words: list[dict], b: np.ndarray, b_words: list[dict]) -> tuple:
    """Speaker/gender consistency: A whole vs A up to the cut + B from its own cut (same text)."""
    a, b = _peak(a), _peak(b)
    ca, cb = int(cut_time(a_words) * SAMPLE_RATE), int(cut_time(b_words) * SAMPLE_RATE)
    w = int(VOICE_FADE_S * SAMPLE_RATE)
    head = a[:ca].copy()
    tail = b[cb:].copy()
    k = min(w, len(head))
    head[len(head) - k:] *= np.linspace(1, 0, k)
    k = min(w, len(tail))
    tail[:k] *= np.linspace(0, 1, k)
    return a, np.concatenate([head, tail]), {"cut_s": [round(ca / SAMPLE_RATE, 3), round(cb / SAMPLE_RATE, 3)]}


def noise_switch(x: np.ndarray, words: list[dict], rng: np.random.Generator, level: bool) -> tuple:
    """Background consistency: the speech with one noise throughout vs a switch at the cut (another type at
    the same SNR, or with ``level`` the same noise 15 dB louder or softer)."""
    x = _peak(x)
    cut = int(cut_time(words) * SAMPLE_RATE)
    power = float(np.mean(x**2))
    k1 = str(rng.choice(NOISES))
    n1 = noise(k1, len(x), rng)
    if level:
        snr1 = float(rng.uniform(5, 25))
        snr2 = snr1 + (15.0 if snr1 < 15 else -15.0)
        k2, n2 = k1, n1
    else:
        snr1 = snr2 = float(rng.uniform(5, 20))
        k2 = str(rng.choice([k for k in NOISES if k != k1]))
        n2 = noise(k2, len(x), rng)
    g1, g2 = np.sqrt(power * 10 ** (-snr1 / 10)), np.sqrt(power * 10 ** (-snr2 / 10))
    pos = x + g1 * n1
    neg = x + _switch(g1 * n1, g2 * n2, cut, SWITCH_FADE_S)
    s = PEAK / max(np.abs(pos).max(), np.abs(neg).max())
    return pos * s, neg * s, {"cut_s": round(cut / SAMPLE_RATE, 3), "noise": [k1, k2],
                              "snr_db": [round(snr1, 2), round(snr2, 2)]}


def room_switch(x: np.ndarray, words: list[dict], rng: np.random.Generator) -> tuple:
    """Room consistency: the speech in one room throughout vs a switch to a room of the other class."""
    x = _peak(x)
    cut = int(cut_time(words) * SAMPLE_RATE)
    dry, wet = (0.15, 0.4), (0.8, 1.5)
    first, second = (dry, wet) if rng.random() < 0.5 else (wet, dry)
    rooms = []
    for span in (first, second):
        rooms.append({"rt60_s": round(float(rng.uniform(*span)), 3), "drr_db": round(float(rng.uniform(0, 6)), 2),
                      "predelay_s": round(float(rng.uniform(0.003, 0.015)), 4)})
    h1, h2 = (room_ir(r["rt60_s"], r["drr_db"], r["predelay_s"], rng) for r in rooms)
    w1, w2 = _convolve(x, h1), _convolve(x, h2)
    pos, neg = w1, _switch(w1, w2, cut, SWITCH_FADE_S)
    s = PEAK / max(np.abs(pos).max(), np.abs(neg).max())
    return pos * s, neg * s, {"cut_s": round(cut / SAMPLE_RATE, 3), "rooms": rooms}


# --------------------------------------------------------------------------------------------------
# Writing the layout
# --------------------------------------------------------------------------------------------------


def _plan(seed: int, n_pairs: int, voices: list[str], n_topics: int | None) -> tuple[dict, dict]:
    """(part -> [(i, text, voices)], part -> why it is skipped)."""
    texts = salmon_texts(seed, n_pairs, n_topics)
    by_gender: dict[str, list[str]] = {}
    for v in voices:
        by_gender.setdefault(voice_gender(v), []).append(v)
    same = next((vs for vs in by_gender.values() if len(vs) >= 2), None)
    plan: dict[str, list] = {}
    skipped: dict[str, str] = {}
    for part in PARTS:
        rows = []
        for i, text in enumerate(texts):
            r = rng_for(seed, "salmon", part, i)
            if part == "speaker_consistency":
                if same is None:
                    skipped[part] = f"needs two voices of one gender in benchmarks.voices ({voices})"
                    break
                vs = r.sample(sorted(same), 2)
            elif part == "gender_consistency":
                if len(by_gender) < 2:
                    skipped[part] = f"needs a male and a female voice in benchmarks.voices ({voices})"
                    break
                a = r.choice(sorted(voices))
                vs = [a, r.choice(sorted(v for v in voices if voice_gender(v) != voice_gender(a)))]
            else:
                vs = [r.choice(sorted(voices))]
            rows.append((i, text, vs))
        if part not in skipped:
            plan[part] = rows
    return plan, skipped


def write_demo_salmon(root: Path, *, n_pairs: int, seed: int, voices: list[str], rate: int,
                      n_topics: int | None, cache_dir: str | Path, workers: int = 1) -> dict:
    """Write every buildable part under ``root`` (``<root>/<part>/sample_{i}_{0,1}.wav`` + metadata.json).
    Returns {parts: {part: pairs}, skipped: {part: why}, files, seconds}."""
    if n_pairs < 1 or not voices:
        raise ValueError("benchmarks.salmon_pairs must be >= 1 and benchmarks.voices non-empty")
    t0 = time.perf_counter()
    plan, skipped = _plan(seed, n_pairs, list(voices), n_topics)
    jobs = sorted({(text, v, int(rate)) for rows in plan.values() for _, text, vs in rows for v in vs})
    synth = dict(zip(jobs, synthesize_many(jobs, cache_dir, workers)))
    failed = [f"{t[:40]!r} ({v}): {s['error']}" for (t, v, _), s in synth.items() if "error" in s]
    if failed:
        raise RuntimeError(f"demo SALMon: {len(failed)} utterance(s) failed to synthesise: {'; '.join(failed[:5])}")
    tts_s = time.perf_counter() - t0

    def speech(text: str, v: str) -> tuple[np.ndarray, list[dict]]:
        s = synth[(text, v, int(rate))]
        return load_utterance(s["path"]).astype(np.float64), s["words"]

    files = 0
    for part, rows in plan.items():
        meta = []
        for i, text, vs in rows:
            rng, s = sample_rngs(seed, part, i)
            x, words = speech(text, vs[0])
            if part in ("speaker_consistency", "gender_consistency"):
                y, y_words = speech(text, vs[1])
                pos, neg, info = voice_switch(x, words, y, y_words)
            elif part == "rir_consistency":
                pos, neg, info = room_switch(x, words, rng)
            else:
                pos, neg, info = noise_switch(x, words, rng, level=part == "bg_level_consistency")
            write_wav(root / part / f"sample_{i}_0.wav", pos)
            write_wav(root / part / f"sample_{i}_1.wav", neg)
            files += 2
            meta.append({"index": i, "text": text, "voices": vs, "seed": s, **info})
        write_text(root / part / "metadata.json", json.dumps(meta, indent=1) + "\n")
    for part, why in skipped.items():
        logger.warning("demo SALMon: part %s not built: %s", part, why)
    out = {"parts": {p: len(r) for p, r in plan.items()}, "skipped": skipped, "files": files,
           "tts_s": round(tts_s, 2), "seconds": round(time.perf_counter() - t0, 2)}
    logger.info("demo SALMon: %d files in %d parts under %s (%.1fs)", files, len(plan), root, out["seconds"])
    return out
