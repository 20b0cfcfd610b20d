"""Which demo encoder (and K) gives the best units?  Measured on eSpeak NG stories of the demo world.

    python experiments/choose_encoder.py [--quick] [--out /tmp/tokbench]

For each candidate (encoder, pooling, K) it fits k-means on the train stories and tokenises held-out
stories and a lexical (word vs non-word) set, then reports:
- ``resyn_wer``: word error rate of Whisper tiny.en on audio resynthesised from the units by a unit ->
  mean log-mel lookup table (fit on the train stories) and Griffin-Lim, with the true unit durations.
  A stand-in for the demo vocoder: it keeps only what the units carry.  ``topline``: the same
  Griffin-Lim on the original log-mel.
- ``lex_acc``: sWUGGY-like accuracy of an add-k interpolated trigram unit LM (trained on the train
  stories' units): share of (word, non-word) pairs, same voice, where the word scores higher (mean
  log-prob per unit).  A stand-in for the unit LM's benchmark scores.
- ``abx_err``: word ABX error on the units of all stories (eSpeak word times): A and X the same word in
  two different voices, B another word; error when edit distance(A, X) > (B, X) on deduplicated units
  (ties count 1/2).  Speaker-invariant word identity, which is what a unit LM can learn from.
- ``units_per_s`` (after dedup) and ``encode_xrt`` (seconds of audio per second of encoding).
Rows are appended to experiments/results.csv (bench=choose_encoder).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS_CSV = ROOT / "experiments" / "results.csv"  # the studies' rows (bench/harness.py schema)
sys.path.insert(0, str(ROOT / "bench"))  # the shared harness
sys.path.insert(0, str(ROOT))

from harness import append_rows, row  # noqa: E402

from alignslm.speech.audio import read_audio  # noqa: E402
from alignslm.speech.encoders import build_encoder  # noqa: E402
from alignslm.speech.quantizer import Quantizer, fit  # noqa: E402
from alignslm.speech.tokenizer import Tokenizer, dedup, feature_scale  # noqa: E402
from alignslm.textmetrics import wer  # noqa: E402

VOICES = [("en-us", 150), ("en+m3", 180), ("en-us+f3", 165), ("en", 150), ("en-us", 180), ("en+m3", 150)]
N_FFT, HOP = 400, 160


# ---------------------------------------------------------------------------------------------- data


def build_data(out: Path, n_train: int, n_test: int, n_lex: int) -> dict:
    from alignslm.demo.lexicon import vocabulary
    from alignslm.demo.stories import generate_stories
    from alignslm.demo.tts import synthesize_many

    stories = generate_stories(n_train + n_test, seed=123)
    items = [(s.text, *VOICES[i % len(VOICES)]) for i, s in enumerate(stories)]
    rows = synthesize_many(items, out / "cache", workers=2)
    words = [w for w in vocabulary() if w.isalpha() and len(w) >= 4]
    rng = random.Random(0)
    rng.shuffle(words)
    vocab = set(vocabulary())
    pairs = []
    for w in words:
        nw = _nonword(w, rng, vocab)
        if nw:
            pairs.append((w, nw, VOICES[len(pairs) % 3][0]))
        if len(pairs) == n_lex:
            break
    lex = synthesize_many([(t, v, 160) for w, nw, v in pairs for t in (w, nw)], out / "cache", workers=2)
    return {"train": rows[:n_train], "test": rows[n_train:], "lex": lex}


def _nonword(w: str, rng: random.Random, vocab: set[str]) -> str | None:
    """Change one vowel (or swap two inner letters): pronounceable, not in the vocabulary."""
    vowels = [i for i, c in enumerate(w) if c in "aeiou"]
    for _ in range(10):
        if vowels:
            i = rng.choice(vowels)
            cand = w[:i] + rng.choice([v for v in "aeiou" if v != w[i]]) + w[i + 1:]
        else:
            i = rng.randrange(1, len(w) - 2)
            cand = w[:i] + w[i + 1] + w[i] + w[i + 2:]
        if cand not in vocab:
            return cand
    return None


# ---------------------------------------------------------------------------------------------- resynthesis


def _mel_filters() -> np.ndarray:
    from faster_whisper.feature_extractor import FeatureExtractor

    return FeatureExtractor(80).mel_filters  # (80, 201)


def log_mel(x: np.ndarray, F: np.ndarray) -> np.ndarray:
    """(S,) -> (S // HOP, 80) natural-log power mel at 100 Hz."""
    from scipy.signal import stft

    _, _, Z = stft(x, nperseg=N_FFT, noverlap=N_FFT - HOP, boundary="even", padded=True)  # (201, T)
    return np.log(F @ (np.abs(Z) ** 2) + 1e-8).T[: x.size // HOP]


def griffin_lim(logmel: np.ndarray, F: np.ndarray, iters: int = 32) -> np.ndarray:
    """(T, 80) log power mel -> waveform: multiplicative NNLS to linear power, then Griffin-Lim."""
    from scipy.signal import istft, stft

    M = np.exp(logmel.T)  # (80, T)
    S = F.T @ M + 1e-8  # (201, T)
    for _ in range(15):
        S *= (F.T @ (M / (F @ S + 1e-10))) / (F.T.sum(axis=1, keepdims=True) + 1e-10)
    mag = np.sqrt(S)
    rng = np.random.default_rng(0)
    Z = mag * np.exp(2j * np.pi * rng.random(mag.shape))
    for _ in range(iters):
        _, x = istft(Z, nperseg=N_FFT, noverlap=N_FFT - HOP, boundary=True)
        _, _, Z2 = stft(x, nperseg=N_FFT, noverlap=N_FFT - HOP, boundary="even", padded=True)
        Z2 = Z2[:, : mag.shape[1]]
        if Z2.shape[1] < mag.shape[1]:
            Z2 = np.pad(Z2, ((0, 0), (0, mag.shape[1] - Z2.shape[1])))
        Z = mag * np.exp(1j * np.angle(Z2))
    _, x = istft(Z, nperseg=N_FFT, noverlap=N_FFT - HOP, boundary=True)
    return (0.5 * x / (np.abs(x).max() + 1e-9)).astype(np.float32)


class Transcriber:
    def __init__(self) -> None:
        from faster_whisper import WhisperModel

        from alignslm.speech.encoders import default_whisper_dir

        self.model = WhisperModel(str(default_whisper_dir()), device="cpu", compute_type="int8", cpu_threads=2)

    def __call__(self, wav: np.ndarray) -> str:
        segs, _ = self.model.transcribe(wav, language="en", beam_size=1, vad_filter=False,
                                        condition_on_previous_text=False)
        return " ".join(s.text for s in segs)


# ---------------------------------------------------------------------------------------------- unit LM


class Trigram:
    """Interpolated add-k trigram over units (with BOS/EOS); ``score_sequences`` as alignslm.eval.scoring wants."""

    def __init__(self, seqs: list[list[int]], k: int, lam: tuple[float, float, float] = (0.5, 0.3, 0.2)):
        self.V, self.lam = k + 2, lam
        self.c1, self.c2, self.c3 = Counter(), Counter(), Counter()
        self.h1, self.h2 = Counter(), Counter()
        for s in seqs:
            t = [k, k, *s, k + 1]
            for i in range(2, len(t)):
                self.c1[t[i]] += 1
                self.c2[(t[i - 1], t[i])] += 1
                self.h1[t[i - 1]] += 1
                self.c3[(t[i - 2], t[i - 1], t[i])] += 1
                self.h2[(t[i - 2], t[i - 1])] += 1
        self.n = sum(self.c1.values())
        self.bos = k

    def score(self, s: list[int]) -> float:
        t = [self.bos, self.bos, *s, self.bos + 1]
        lp = 0.0
        a = 0.1
        for i in range(2, len(t)):
            p1 = (self.c1[t[i]] + a) / (self.n + a * self.V)
            p2 = (self.c2[(t[i - 1], t[i])] + a) / (self.h1[t[i - 1]] + a * self.V)
            p3 = (self.c3[(t[i - 2], t[i - 1], t[i])] + a) / (self.h2[(t[i - 2], t[i - 1])] + a * self.V)
            lp += np.log(self.lam[0] * p3 + self.lam[1] * p2 + self.lam[2] * p1)
        return lp / (len(t) - 2)

    def score_sequences(self, seqs: list[list[int]], add_bos_eos: bool = True, reduce: str = "sum",
                        batch_size: int = 64) -> np.ndarray:
        return np.array([self.score(list(s)) * (1 if reduce == "mean" else len(s) + 1) for s in seqs])


SUBSET = {"lexical": 100, "syntactic": 60, "ssc": 0, "tsc": 0}  # pairs scored per benchmark (CPU budget)


def _subset(bset: object, n: int) -> object:
    import dataclasses

    pairs = bset.pairs[:n]
    keep = {f for p in pairs for f in (p["correct_file"], p["incorrect_file"])}
    return dataclasses.replace(bset, pairs=pairs, items=[it for it in bset.items if it[0] in keep])


def lm_benchmarks(run_dir: Path, bench_root: Path, n_gram_units: int) -> dict:
    """Demo benchmarks (sWUGGY/sBLIMP/sSC/tSC-like) scored by a trigram unit LM trained on the run's units."""
    from alignslm.eval.benchdata import load_all
    from alignslm.eval.scoring import headline, score_benchmarks, tokenize_items
    from alignslm.rundir import read_jsonl
    from alignslm.speech.tokenizer import load_tokenizer

    manifest = {r["utt_id"]: r for r in read_jsonl(run_dir / "corpus" / "manifest.jsonl")}
    train = [r["units"] for r in read_jsonl(run_dir / "tokenize" / "units.jsonl")
             if manifest[r["utt_id"]].get("split") == "train"]
    lm = Trigram(train, n_gram_units)
    tok = load_tokenizer(run_dir / "tokenize")
    benches = {name: _subset(b, SUBSET[name]) for name, b in load_all(bench_root).items() if SUBSET[name]}
    units = {name: tokenize_items(tok, b.items) for name, b in benches.items()}
    return headline(score_benchmarks(lm, units, benches, mode="mean"))


# ---------------------------------------------------------------------------------------------- one candidate


def evaluate(name: str, kind: str, pool: int, k: int, audio: dict, asr: Transcriber, F: np.ndarray,
             compute_type: str = "default") -> dict:
    enc = build_encoder(kind, pool=pool, compute_type=compute_type, batch_size=16)
    t0 = time.perf_counter()
    feats = {s: enc.encode(audio[s]) for s in ("train", "test", "lex")}
    enc_s = time.perf_counter() - t0
    secs = sum(w.size for s in ("train", "test", "lex") for w in audio[s]) / 16000
    X = np.concatenate(feats["train"])
    rng = np.random.default_rng(0)
    X = X[rng.permutation(len(X))[:200_000]]
    scale = feature_scale(X)
    tok = Tokenizer(enc, Quantizer(fit(np.ascontiguousarray(X * scale), k, iters=20, seed=0)), dedup=False,
                    scale=scale)  # frame-level units here; deduplicated where a metric needs it
    frame_units = {s: [tok.units_of(f)[0] for f in feats[s]] for s in feats}
    # unit -> mean log-mel table (train), at mel frames per unit frame = 100 / frame_rate
    r = int(round(100 / enc.frame_rate))
    sums, counts = np.zeros((k, 80)), np.zeros(k)
    for w, u in zip(audio["train"], frame_units["train"]):
        m = log_mel(w, F)[: len(u) * r].reshape(-1, r, 80).mean(1)  # (T, 80)
        np.add.at(sums, u[: len(m)], m)
        counts += np.bincount(u[: len(m)], minlength=k)
    table = sums / np.maximum(counts, 1)[:, None]
    hyps = []
    for u in frame_units["test"]:
        m = np.repeat(table[u], r, axis=0)  # (T * r, 80)
        m = np.apply_along_axis(lambda c: np.convolve(c, np.ones(3) / 3, mode="same"), 0, m)
        hyps.append(asr(griffin_lim(m, F)))
    lm = Trigram([_dedup(u) for u in frame_units["train"]], k)
    lex = [lm.score(_dedup(u)) for u in frame_units["lex"]]
    acc = np.mean([1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(lex[0::2], lex[1::2])])
    n_units = sum(len(_dedup(u)) for u in frame_units["test"])
    test_s = sum(w.size for w in audio["test"]) / 16000
    abx = abx_error(audio["train_rows"] + audio["test_rows"], frame_units["train"] + frame_units["test"],
                    enc.frame_rate)
    return {"name": name, "resyn_wer": wer(audio["test_text"], hyps), "lex_acc": float(acc), "abx_err": abx,
            "units_per_s": n_units / test_s, "encode_xrt": secs / enc_s, "used": int((counts > 0).sum()),
            "example": hyps[0]}


def _dedup(u: np.ndarray) -> list[int]:
    return dedup(u)[0].tolist()


def _edit(a: list[int], b: list[int]) -> float:
    """Levenshtein distance / the longer length."""
    d = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        prev, d[0] = d[:], i
        for j in range(1, len(b) + 1):
            d[j] = min(prev[j] + 1, d[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1]))
    return d[-1] / max(len(a), len(b), 1)


def abx_error(rows: list[dict], units: list[np.ndarray], fr: float, n: int = 1500) -> float:
    by_word: dict[str, list[tuple[str, list[int]]]] = {}
    for r, u in zip(rows, units):
        for w in r["words"]:
            a, b = int(w["start"] * fr), int(w["end"] * fr)
            if b - a >= 3:
                key = w["word"].lower().strip(".,")
                by_word.setdefault(key, []).append((f"{r['voice']}{r['rate']}", _dedup(u[a:b])))
    words = sorted(w for w, v in by_word.items() if len({x[0] for x in v}) >= 2)
    rng, err = random.Random(0), []
    for _ in range(n):
        w = rng.choice(words)
        (va, ua), (vx, ux) = rng.sample(by_word[w], 2)
        if va == vx:
            continue
        ub = rng.choice(by_word[rng.choice([x for x in words if x != w])])[1]
        da, db = _edit(ua, ux), _edit(ub, ux)
        err.append(1.0 if da > db else 0.5 if da == db else 0.0)
    return float(np.mean(err))


CANDIDATES = [  # name, encoder, pool, K
    ("whisper-50Hz-K100", "whisper", 1, 100), ("whisper-25Hz-K100", "whisper", 2, 100),
    ("whisper-25Hz-K200", "whisper", 2, 200),
    ("logmel-50Hz-K100", "logmel", 1, 100), ("logmel-25Hz-K100", "logmel", 2, 100),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default="/tmp/tokbench")
    ap.add_argument("--only", default="", help="comma-separated candidate names")
    ap.add_argument("--lm", default="", help="comma-separated run dirs (corpus + tokenize done): score the "
                                             "demo benchmarks with a trigram unit LM instead")
    ap.add_argument("--bench-root", default="", help="with --lm: the benchmarks root (benchmarks stage)")
    args = ap.parse_args()
    if args.lm:
        for rd in args.lm.split(","):
            k = json.loads((Path(rd) / "tokenize" / "tokenizer.json").read_text())["n_units"]
            res = {m: v for m, v in lm_benchmarks(Path(rd), Path(args.bench_root), k).items() if v is not None}
            print(rd, {m: round(v, 3) for m, v in res.items()}, flush=True)
            append_rows([row("choose_encoder", Path(rd).name, "demo-benchmarks trigram", m, "acc", v)
                         for m, v in res.items()], RESULTS_CSV)
        return
    n_train, n_test, n_lex = (60, 8, 40) if args.quick else (240, 24, 120)
    data = build_data(Path(args.out), n_train, n_test, n_lex)
    audio = {s: [read_audio(r["path"]) for r in data[s]] for s in data}
    audio["test_text"] = [r["text"] for r in data["test"]]
    audio["train_rows"], audio["test_rows"] = data["train"], data["test"]
    F = _mel_filters()
    asr = Transcriber()
    ref_json = Path(args.out) / f"reference_wer_{len(audio['test'])}.json"
    if ref_json.is_file():
        orig, top = json.loads(ref_json.read_text())
    else:
        top = wer(audio["test_text"], [asr(griffin_lim(log_mel(w, F), F)) for w in audio["test"]])
        orig = wer(audio["test_text"], [asr(w) for w in audio["test"]])
        ref_json.write_text(json.dumps([orig, top]))
    print(f"train {sum(w.size for w in audio['train']) / 16000:.0f} s, test {len(audio['test'])} stories, "
          f"lex pairs {len(audio['lex']) // 2}; WER original audio {orig:.3f}, Griffin-Lim topline {top:.3f}")
    rows = [row("choose_encoder", "original", "test", "wer", "frac", orig),
            row("choose_encoder", "griffin-lim-topline", "test", "wer", "frac", top)]
    only = set(filter(None, args.only.split(",")))
    for name, kind, pool, k in CANDIDATES:
        if only and name not in only:
            continue
        res = evaluate(name, kind, pool, k, audio, asr, F)
        print(f"{name:20s} resyn_wer {res['resyn_wer']:.3f}  abx_err {res['abx_err']:.3f}  "
              f"lex_acc {res['lex_acc']:.3f}  units/s "
              f"{res['units_per_s']:.1f}  used {res['used']}/{k}  encode {res['encode_xrt']:.0f}x RT  "
              f"| {res['example'][:70]}", flush=True)
        for metric in ("resyn_wer", "abx_err", "lex_acc", "units_per_s", "encode_xrt"):
            rows.append(row("choose_encoder", name, "demo-stories", metric, "", res[metric]))
    append_rows(rows, RESULTS_CSV)


if __name__ == "__main__":
    main()
