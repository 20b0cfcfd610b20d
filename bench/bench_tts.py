"""Demo speech synthesis throughput: eSpeak NG (ctypes) -> 16 kHz wav + word times, into a fresh cache.

    python bench/bench_tts.py [--quick] [--n 1000]

Providers: one process vs a pool of 2 worker processes (each with its own engine), alternated A B A B;
then a rerun from the cache.  Reports utterances/s and x real time; rows go to bench/results.csv.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import append_rows, row  # noqa: E402

from alignslm.config import CorpusConfig  # noqa: E402
from alignslm.demo.corpus import voice_and_rate  # noqa: E402
from alignslm.demo.stories import generate_stories  # noqa: E402
from alignslm.demo.tts import synthesize_many  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="200 utterances, one repeat")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    n, repeats = (200, 1) if a.quick else (a.n, a.repeats)
    c = CorpusConfig()
    stories = generate_stories(n, seed=123)
    items = [(s.text, *voice_and_rate(123, i, c.voices, c.rates)) for i, s in enumerate(stories)]
    times: dict[str, list[float]] = {"workers=1": [], "workers=2": []}
    audio_s = 0.0
    for _ in range(repeats):
        for prov, w in (("workers=1", 1), ("workers=2", 2)):
            cache = Path(tempfile.mkdtemp(prefix="alignslm-tts-bench-"))
            t0 = time.perf_counter()
            rows = synthesize_many(items, cache, workers=w)
            times[prov].append(time.perf_counter() - t0)
            audio_s = sum(r["duration"] for r in rows)
            t0 = time.perf_counter()
            synthesize_many(items, cache, workers=w)
            cached = time.perf_counter() - t0
            shutil.rmtree(cache)
    shape = f"{n} utts, {audio_s:.0f} s audio"
    out = []
    base = sorted(times["workers=1"])[len(times["workers=1"]) // 2]
    print(f"{'provider':<12}{'seconds':>10}{'utt/s':>10}{'x real time':>14}")
    for prov, ts in times.items():
        med = sorted(ts)[len(ts) // 2]
        print(f"{prov:<12}{med:>10.1f}{n / med:>10.1f}{audio_s / med:>14.0f}")
        out.append(row("tts", prov, shape, "wall", "s", ts, "workers=1", med / base))
        out.append(row("tts", prov, shape, "utt_per_s", "utt/s", [n / t for t in ts]))
    print(f"rerun from the cache: {cached:.2f} s")
    out.append(row("tts", "cache_hit", shape, "wall", "s", cached))
    append_rows(out)


if __name__ == "__main__":
    main()
