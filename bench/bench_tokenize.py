"""Tokenizer throughput: seconds of audio tokenised per wall-clock second, and where the time goes.

    python bench/bench_tokenize.py [--quick] [--k 100]

Audio: demo-world stories spoken by eSpeak NG in the demo corpus' voices and rates (synthesised into
--cache on first use).  Providers, timed alternately (harness.time_alternating), all producing units
through alignslm.speech.tokenizer:
- ``demo`` = the demo default (``tokenize.*`` of alignslm.config: log-mel front end, its feature norm
  and K), the ratio reference;
- ``whisper-<rate>`` (CTranslate2 Whisper tiny.en encoder, batched equal-length windows),
  ``whisper-<rate>-int8`` (int8 weights; also reports how many frames get the same unit as float32),
  ``whisper-<rate>-single`` (one utterance per call).
Correctness first: batched and one-at-a-time units must be identical (demo and whisper).
For the demo default and for whisper it reports the share of time in the encoder, the k-means
assignment and deduplication.  Rows go to bench/results.csv (bench=tokenize).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import append_rows, pcts, print_table, row, time_alternating  # noqa: E402

from alignslm.speech.audio import read_audio  # noqa: E402
from alignslm.speech.encoders import build_encoder  # noqa: E402
from alignslm.speech.quantizer import IMPL, Quantizer, fit  # noqa: E402
from alignslm.speech.tokenizer import Tokenizer, dedup, feature_scale  # noqa: E402


def demo_voices() -> list[tuple[str, int]]:
    from alignslm.config import Config

    c = Config().corpus
    return [(v, r) for r in c.rates for v in c.voices]


def stories_audio(n: int, cache: str) -> list[np.ndarray]:
    from alignslm.demo.stories import generate_stories
    from alignslm.demo.tts import synthesize_many

    voices = demo_voices()
    items = [(s.text, *voices[i % len(voices)]) for i, s in enumerate(generate_stories(n, seed=7))]
    return [read_audio(r["path"]) for r in synthesize_many(items, cache, workers=2)]


def make_tokenizer(kind: str, pool: int, k: int, wavs: list[np.ndarray], compute_type: str = "default",
                   batch_size: int = 16, **enc_kw) -> Tokenizer:
    enc = build_encoder(kind, pool=pool, compute_type=compute_type, batch_size=batch_size, **enc_kw)
    X = np.concatenate(enc.encode(wavs[: max(4, len(wavs) // 2)]))  # (N, D)
    scale = feature_scale(X)
    return Tokenizer(enc, Quantizer(fit(np.ascontiguousarray(X * scale), k, iters=10, seed=0)), scale=scale)


def split_times(tok: Tokenizer, wavs: list[np.ndarray], repeats: int) -> dict[str, list[float]]:
    """Wall seconds per repeat in encoder / assignment / dedup for the whole set."""
    out: dict[str, list[float]] = {"encoder": [], "quantizer": [], "dedup": []}
    for _ in range(repeats):
        t0 = time.perf_counter()
        feats = tok.encoder.encode(wavs)
        t1 = time.perf_counter()
        units = [tok.quantizer.assign(np.ascontiguousarray(f * tok.scale)) for f in feats]
        t2 = time.perf_counter()
        for u in units:
            dedup(u)
        t3 = time.perf_counter()
        for k, v in zip(out, (t1 - t0, t2 - t1, t3 - t2)):
            out[k].append(v)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--k", type=int, default=None, help="K (default: tokenize.n_units of the demo config)")
    ap.add_argument("--pool", type=int, default=2, help="whisper pooling of the default (2 = 25 Hz)")
    ap.add_argument("--cache", default="/tmp/tokbench/cache")
    args = ap.parse_args()
    from alignslm.config import Config

    t = Config().tokenize
    args.k = args.k or t.n_units
    n, repeats = (12, 3) if args.quick else (48, 5)
    wavs = stories_audio(n, args.cache)
    secs = sum(w.size for w in wavs) / 16000
    rate = f"{50 // args.pool}Hz"
    shape = f"{n} stories {secs:.0f}s K={args.k}"
    demo = make_tokenizer(t.encoder, t.pool, args.k, wavs, norm=t.norm, cepstra=t.cepstra)
    main_tok = make_tokenizer("whisper", args.pool, args.k, wavs)
    int8 = make_tokenizer("whisper", args.pool, args.k, wavs, compute_type="int8")
    int8.quantizer, int8.scale = main_tok.quantizer, main_tok.scale  # same centroids: compare units

    for tok in (demo, main_tok):
        batched = tok.encode(wavs)
        single = [tok.encode([w])[0] for w in wavs]
        assert all(np.array_equal(a[0], b[0]) for a, b in zip(batched, single)), "batched units differ from single"
    def frame_units(tok: Tokenizer) -> list[np.ndarray]:
        return [tok.quantizer.assign(np.ascontiguousarray(f * tok.scale)) for f in tok.encoder.encode(wavs)]

    fu, fu8 = frame_units(main_tok), frame_units(int8)
    agree = float(np.mean(np.concatenate([a == b for a, b in zip(fu, fu8)])))

    dname = f"demo:{demo.encoder.name}"
    providers = {dname: lambda: demo.encode(wavs),
                 f"whisper-{rate}": lambda: main_tok.encode(wavs),
                 f"whisper-{rate}-int8": lambda: int8.encode(wavs),
                 f"whisper-{rate}-single": lambda: [main_tok.encode([w]) for w in wavs]}
    times = time_alternating(providers, repeats=repeats, warmup=1)
    base = dname
    rows = []
    for name, ts in times.items():
        xrt = [secs / t for t in ts]
        ratio = pcts(times[base])[0] / pcts(ts)[0]
        rows.append(row("tokenize", name, shape, "x_realtime", "audio s / wall s", xrt, base, ratio))
    rows.append(row("tokenize", f"whisper-{rate}-int8", shape, "unit_agreement", "frac", agree))
    for name, tok in ((dname, demo), (f"whisper-{rate}", main_tok)):
        parts = split_times(tok, wavs, repeats)
        total = sum(pcts(v)[0] for v in parts.values())
        for k, v in parts.items():
            rows.append(row("tokenize", f"{name}:{k}", shape, "time_share", "frac", pcts(v)[0] / total))
    print_table(rows)
    print(f"quantizer impl: {IMPL}; audio {secs:.0f} s in {n} stories; int8 unit agreement {agree:.3f}")
    append_rows(rows)


if __name__ == "__main__":
    main()
