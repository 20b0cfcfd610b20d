"""GPU smoke of the pipeline's GPU stages with TWIST-1.3B-shaped random weights (issue 10, criterion 5).

    python bench/gpu/pipeline.py OUTDIR

sample (alignslm.lm.sampler on an OPT-1.3B-shaped unit LM, bf16, 64 prompts x 5 continuations x <=150 units)
-> vocode (a textlesslib-shaped unit HiFi-GAN with duration prediction, random weights, batch 64)
-> train (alignslm.dpo.trainer on one pair per prompt, LoRA r=32, bf16).  Reports continuations/s per GPU for each.
ASR (CTranslate2) and the 7B judge are not part of the device image, so they are not timed here.
Random weights make the audio noise; what is measured is throughput, not quality.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
from harness import append_rows, print_table, row  # noqa: E402


def timed(fn):  # noqa: ANN001, ANN201
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "bench/out/gpu")
    out.mkdir(parents=True, exist_ok=True)
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to do")
        return
    from bench_vocoder import HIFIGAN
    from gpu.sampling import twist_like

    from alignslm.config import TrainConfig
    from alignslm.dpo.trainer import DPOTrainer, prepare_pairs
    from alignslm.lm.sampler import SamplingParams, generate
    from alignslm.vocoder.hifigan import CodeGenerator, HifiganVocoder

    rows: list = []
    lm, _ = twist_like()
    P, N, M = 64, 5, 150
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 500, (int(n),), generator=g).tolist() for n in torch.randint(60, 90, (P,), generator=g)]
    params = SamplingParams(temperature=0.8, top_k=25, top_p=1.0, max_new=M)
    generate(lm, prompts[:8], n=N, params=params, batch_size=8)  # warm-up (CUDA graphs)
    conts, dt = timed(lambda: generate(lm, prompts, n=N, params=params, seeds=list(range(P * N)), batch_size=P))
    flat = [c for per in conts for c in per]
    rows.append(row("pipeline_gpu", "sample", f"OPT-1.3B bf16 P{P}xN{N}x{M}", "continuations_per_s", "1/s",
                    len(flat) / dt))

    torch.manual_seed(0)
    gen = CodeGenerator(HIFIGAN).eval()
    for p in gen.parameters():
        torch.nn.init.normal_(p, 0.0, 0.02)
    voc = HifiganVocoder(gen.cuda())
    units = [c if c else [0] for c in flat]
    voc.vocode(units[:16], batch_size=16)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        wavs, dt = timed(lambda: voc.vocode(units, batch_size=64))
    audio_s = sum(w.size for w in wavs) / voc.sample_rate
    rows.append(row("pipeline_gpu", "vocode", f"HiFi-GAN ch512 bf16 B64, {audio_s:.0f}s audio", "continuations_per_s",
                    "1/s", len(wavs) / dt))

    pairs = [{"prompt": prompts[i], "chosen": conts[i][0] or [1], "rejected": conts[i][1] or [2]} for i in range(P)]
    ex, _ = prepare_pairs(pairs, lm, 1024)
    tc = dataclasses.replace(TrainConfig(), batch_size=8, lora_r=32, lora_alpha=8, lr=1e-5, warmup_steps=0,
                             epochs=1, checkpoint_every=10_000)
    with tempfile.TemporaryDirectory() as tmp:
        tr = DPOTrainer(lm, tc, tmp, seed=0, device="cuda")
        _, dt = timed(lambda: tr.train(ex))
        log = [json.loads(x) for x in (Path(tmp) / "train_log.jsonl").read_text().splitlines()]
    rows.append(row("pipeline_gpu", "train", f"DPO LoRA r32 bf16 B8, {len(log)} steps", "continuations_per_s", "1/s",
                    2 * len(ex) / dt))
    print_table(rows)
    append_rows(rows, out / "pipeline.csv")


if __name__ == "__main__":
    main()
