"""ASR on many short clips: alignslm.speech.asr (batched, trimmed windows) vs faster-whisper per file.

    python bench/bench_asr.py [--quick] [--clips N]

Clips: demo stories (alignslm.demo.stories) spoken by eSpeak NG (several voices and rates),
3-10 s each, with their reference text.  First the WER of our path for several window floors
(asr.min_window_s) and of the peer; then clips/s of both providers, alternated (A B A B ...).
Peer: ``faster_whisper.WhisperModel(dir).transcribe(path, beam_size=1, language="en")`` per file,
same model, same beam size, same threads.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import append_rows, print_table, row, time_alternating  # noqa: E402


def demo_clips(n: int, seed: int = 1, min_s: float = 3.0, max_s: float = 10.0) -> list[tuple[str, np.ndarray]]:
    """(reference text, 16 kHz clip) for demo stories (alignslm.demo) spoken by eSpeak NG, 3-10 s each."""
    from alignslm.demo.stories import generate_story
    from alignslm.demo.tts import synthesize

    rng = random.Random(seed)
    voices, rates = ["en-us", "en", "en-us+f3", "en+m3"], [150, 165, 180]
    out: list[tuple[str, np.ndarray]] = []
    i = 0
    while len(out) < n:
        story = generate_story(seed, i)
        i += 1
        text = " ".join(story.sentences[-rng.choice([1, 2, 3]):])  # the ending and up to two sentences before
        w = synthesize(text, rng.choice(voices), rng.choice(rates)).audio
        if min_s <= w.size / 16000 <= max_s:
            out.append((text, w))
    return out


# --------------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--clips", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=None)
    args = ap.parse_args()
    n = args.clips or (16 if args.quick else 48)
    repeats = args.repeats or (2 if args.quick else 3)

    from faster_whisper import WhisperModel

    from alignslm.speech.asr import ASR, default_model_dir
    from alignslm.speech.audio import write_wav
    from alignslm.textmetrics import wer

    model_dir = default_model_dir()
    clips = demo_clips(n, seed=1)
    refs = [t for t, _ in clips]
    tmp = Path(tempfile.mkdtemp(prefix="bench_asr_"))
    paths = []
    for i, (_, w) in enumerate(clips):
        write_wav(tmp / f"{i:04d}.wav", w)
        paths.append(tmp / f"{i:04d}.wav")
    secs = [w.size / 16000 for _, w in clips]
    shape = f"{n}clips_{min(secs):.1f}-{max(secs):.1f}s"
    print(f"{n} clips, {min(secs):.1f}-{max(secs):.1f} s (mean {np.mean(secs):.1f} s), model {model_dir}")

    peer = WhisperModel(str(model_dir), device="cpu")

    def run_peer() -> list[str]:
        return ["".join(s.text for s in peer.transcribe(str(p), beam_size=1, language="en")[0]).strip()
                for p in paths]

    rows = []
    wer_peer = wer(refs, run_peer())
    rows.append(row("asr", "faster-whisper-per-file", shape, "wer", "frac", wer_peer))
    ours_by_window = {}
    for win in ([5.0, 10.0, 30.0] if args.quick else [4.0, 6.0, 8.0, 10.0, 15.0, 30.0]):
        asr = ASR(model_dir, min_window_s=win)
        res = asr.transcribe_paths(paths)
        w = wer(refs, [r.text for r in res])
        ours_by_window[win] = asr
        n_err = sum(r.error is not None for r in res)
        rows.append(row("asr", f"alignslm-window{win:g}s", shape, "wer", "frac", w))
        print(f"window floor {win:>4g} s: WER {w:.4f} (dropped {n_err})   peer WER {wer_peer:.4f}")

    ours = ASR(model_dir, min_window_s=10.0)
    t = time_alternating({"ours": lambda: ours.transcribe_paths(paths), "peer": run_peer},
                         repeats=repeats, warmup=0)
    cps_ours = [n / s for s in t["ours"]]
    cps_peer = [n / s for s in t["peer"]]
    ratio = float(np.median(cps_ours) / np.median(cps_peer))
    rows.append(row("asr", "alignslm-window10s", shape, "throughput", "clips/s", cps_ours,
                    ratio_vs="faster-whisper-per-file", ratio=ratio))
    rows.append(row("asr", "faster-whisper-per-file", shape, "throughput", "clips/s", cps_peer))
    print_table(rows)
    append_rows(rows)


if __name__ == "__main__":
    main()
