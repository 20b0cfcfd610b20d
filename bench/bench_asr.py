"""ASR on many short clips: alignslm.asr (batched, trimmed windows) vs faster-whisper per file.

    python bench/bench_asr.py [--quick] [--clips N]

Clips: demo-world sentences (alignslm.demo.lexicon) spoken by eSpeak NG (several voices and rates),
3-10 s each, with their reference text.  First the WER of our path for several window floors
(asr.min_window_s) and of the peer; then clips/s of both providers, alternated (A B A B ...).
Peer: ``faster_whisper.WhisperModel(dir).transcribe(path, beam_size=1, language="en")`` per file,
same model, same beam size, same threads.
"""

from __future__ import annotations

import argparse
import ctypes
import random
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import append_rows, print_table, row, time_alternating  # noqa: E402

# --------------------------------------------------------------------------------------------------
# A tiny eSpeak NG driver (ctypes), so the bench and the tests do not depend on the demo corpus.
# --------------------------------------------------------------------------------------------------

_ESPEAK: dict = {}
_CB_TYPE = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


def _espeak() -> dict:
    if not _ESPEAK:
        import espeakng_loader as el

        lib = ctypes.CDLL(el.get_library_path())
        sr = lib.espeak_Initialize(2, 0, el.get_data_path().encode(), 0)  # 2 = AUDIO_OUTPUT_SYNCHRONOUS
        if sr <= 0:
            raise RuntimeError(f"espeak_Initialize failed ({sr})")
        chunks: list[np.ndarray] = []

        def cb(wav, n, events):  # noqa: ANN001 - C callback
            if n > 0:
                chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
            return 0

        keep = _CB_TYPE(cb)
        lib.espeak_SetSynthCallback(keep)
        _ESPEAK.update(lib=lib, sr=sr, chunks=chunks, cb=keep)
    return _ESPEAK


def say(text: str, voice: str = "en-us", rate: int = 160) -> np.ndarray:
    """Speak ``text`` with eSpeak NG; (T,) float32 at 16 kHz."""
    from scipy.signal import resample_poly

    e = _espeak()
    e["chunks"].clear()
    e["lib"].espeak_SetVoiceByName(voice.encode())
    e["lib"].espeak_SetParameter(1, rate, 0)  # 1 = espeakRATE (words per minute)
    b = text.encode()
    e["lib"].espeak_Synth(b, len(b) + 1, 0, 1, 0, 0, None, None)
    e["lib"].espeak_Synchronize()
    x = np.concatenate(e["chunks"]).astype(np.float32) / 32768.0
    return resample_poly(x, 320, 441).astype(np.float32) if e["sr"] == 22050 else x


def demo_sentences(n: int, seed: int = 0) -> list[str]:
    """``n`` texts of one to three demo-world sentences."""
    from alignslm.demo.lexicon import NAMES, TOPICS

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        sents = []
        for _ in range(rng.choice([1, 2, 2, 3])):
            t = rng.choice(TOPICS)
            a = rng.choice(t.actions)
            obj = rng.choice(a.objects)
            sents.append(f"{rng.choice(NAMES)} the {rng.choice(t.roles)} will {a.verb} the "
                         f"{rng.choice(t.adjectives)} {obj} {t.prep} the {t.place}.")
        out.append(" ".join(sents))
    return out


def demo_clips(n: int, seed: int = 0, min_s: float = 3.0, max_s: float = 10.0) -> list[tuple[str, np.ndarray]]:
    """(reference text, 16 kHz clip) pairs, each clip between ``min_s`` and ``max_s`` seconds."""
    rng = random.Random(seed)
    voices = ["en-us", "en", "en-us+f3", "en+m3"]
    out: list[tuple[str, np.ndarray]] = []
    k = 0
    while len(out) < n:
        text = demo_sentences(1, seed=seed * 100_003 + k)[0]
        k += 1
        w = say(text, rng.choice(voices), rng.choice([150, 165, 180]))
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

    from alignslm.asr import ASR, default_model_dir
    from alignslm.audio import write_wav
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
