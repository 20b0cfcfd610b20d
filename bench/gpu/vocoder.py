"""GPU check for the unit HiFi-GAN (issue 5), one H100, nothing downloaded:  python bench/gpu/vocoder.py OUTDIR

A TWIST/textlesslib-shaped unit HiFi-GAN (512 channels, hop 320, duration predictor; random weights):
seconds of audio per second, batched (B=16) vs one-at-a-time (the public code's way), fp32 and bf16 autocast
(goal: batched >= 3x one-at-a-time).  Timings only: that a padded batch gives the same waveforms as
one-at-a-time calls at this size is the GPU test
tests/test_vocoder_hifigan.py::test_batch_vocode_matches_single_on_gpu_at_twist_size.
Prints a table and writes CSV rows to OUTDIR/vocoder.csv.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
from bench_vocoder import HIFIGAN, _units  # noqa: E402
from harness import append_rows, print_table, row  # noqa: E402

from alignslm.vocoder.hifigan import CodeGenerator, HifiganVocoder  # noqa: E402


def timed(fn, reps: int = 5) -> list[float]:
    fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    outdir = Path(sys.argv[1] if len(sys.argv) > 1 else "bench/out/gpu")
    outdir.mkdir(parents=True, exist_ok=True)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    model = CodeGenerator(HIFIGAN).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, 0.0, 0.02)
    torch.nn.init.constant_(model.dur_predictor.proj.bias, 1.0)
    voc = HifiganVocoder(model.cuda())
    units = _units(16, 40, 150, 500)  # up to 150 new units, as the paper's sampler
    audio_s = sum(w.size for w in voc.vocode(units, batch_size=16)) / voc.sample_rate
    rows = []
    for dtype in ("fp32", "bf16"):
        ctx = torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == "bf16")
        with ctx:
            tb = timed(lambda: voc.vocode(units, batch_size=16))
            ts = timed(lambda: [voc.vocode([u], batch_size=1) for u in units])
        ratio = float(np.median(ts) / np.median(tb))
        shape = f"B16 ch512 units40-150 {dtype}"
        rows += [row("gpu_vocoder_hifigan", "batched", shape, "audio_s_per_s", "x", [audio_s / t for t in tb],
                     "one-at-a-time", ratio),
                 row("gpu_vocoder_hifigan", "one-at-a-time", shape, "audio_s_per_s", "x", [audio_s / t for t in ts])]
    print_table(rows)
    append_rows(rows, outdir / "vocoder.csv")


if __name__ == "__main__":
    main()
