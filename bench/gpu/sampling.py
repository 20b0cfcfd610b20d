"""GPU check for sampling (run by bench/gpu_check.sh OUTDIR on one H100; installs nothing).

Timings only; the kernel's agreement with its torch reference on the device (same uniforms, in-kernel
generator; B=1024 x V=501 among others) is the GPU test tests/test_sampling.py::test_gpu_triton_equals_reference.
1. Kernel time per decode step at B=1024, V=501 (CUDA events via triton.testing.do_bench): the Triton
   kernel vs the torch reference on the GPU.  Goal <= 10 us.
2. Decode throughput of alignslm.lm.sampler.generate on a TWIST-1.3B-shaped OPT (random weights, bf16;
   24 layers, d=2048, vocab 504 = offset 4 + 500 units) at 32 prompts x 5 continuations x 150 units, vs
   transformers generate(do_sample=True) on the same batch, and vs the bandwidth floor of
   docs/benchmarks.md: per step (weight bytes + rows x context x KV bytes per token) / 3 TB/s.

Prints a table and writes CSV rows (the bench/harness.py schema) to OUTDIR/sampling.csv.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from harness import append_rows, print_table, row  # noqa: E402

BW = 3.0e12  # bytes/s, measured H100 bandwidth (docs/benchmarks.md)


def kernel_times(rows: list) -> None:
    from alignslm.kernels import sampling as S

    dev = "cuda"
    B, V = 1024, 501
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(B, V, device=dev, generator=g) * 3
    torch.rand(B, device=dev, generator=g)  # drawn as before, so k, p and seed keep their values
    k = torch.randint(1, 2 * V, (B,), device=dev, generator=g)
    p = torch.rand(B, device=dev, generator=g) * 0.95 + 0.05
    seed = torch.randint(0, 1 << 62, (B,), device=dev, generator=g)
    step = torch.tensor(7, device=dev)
    from triton.testing import do_bench

    t25 = torch.full((B,), 0.8, device=dev)
    k25 = torch.full((B,), 25, device=dev, dtype=torch.long)
    cases = [("topk25", k25, torch.ones(B, device=dev)),
             ("topk25_topp0.9", k25, torch.full((B,), 0.9, device=dev)), ("mixed", k, p)]
    for name, kk, pp in cases:
        tri = do_bench(lambda kk=kk, pp=pp: S.sample_triton(x, t25, kk, pp, seed, step), warmup=50, rep=300)
        ref = do_bench(lambda kk=kk, pp=pp: S.sample_torch(x, t25, kk, pp, seed, step), warmup=20, rep=300)
        shape = f"B{B}xV{V},{name}"
        rows.append(row("sampling_gpu", "torch_ref", shape, "kernel_time", "us", ref * 1e3))
        rows.append(row("sampling_gpu", "triton", shape, "kernel_time", "us", tri * 1e3, "torch_ref", ref / tri))


def twist_like() -> tuple:
    from transformers import OPTConfig, OPTForCausalLM

    from alignslm.lm.unitlm import UnitLM

    cfg = OPTConfig(vocab_size=504, hidden_size=2048, ffn_dim=8192, num_hidden_layers=24, num_attention_heads=32,
                    word_embed_proj_dim=2048, max_position_embeddings=2048, bos_token_id=0, eos_token_id=2,
                    pad_token_id=1)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = OPTForCausalLM(cfg).to(torch.bfloat16).eval()
    return UnitLM(model, offset=4, n_units=500, bos_id=0, eos_id=2, pad_id=1), cfg


def decode_bench(rows: list) -> None:
    from alignslm.lm.sampler import SamplingParams, generate

    lm, cfg = twist_like()
    P, N, M = 32, 5, 150
    prompts = [torch.randint(0, 500, (int(n),)).tolist() for n in torch.randint(60, 90, (P,))]
    params = SamplingParams(temperature=0.8, top_k=25, top_p=1.0, max_new=M, min_new=M)

    def ours() -> None:
        generate(lm, prompts, n=N, params=params, seeds=list(range(P * N)), batch_size=P)

    def hf() -> None:
        ids = [[0, *lm.units_to_ids(u)] for u in prompts]
        Lp = max(map(len, ids))
        inp = torch.tensor([[1] * (Lp - len(s)) + s for s in ids], device="cuda")
        att = (inp != 1).long()
        lm.model.generate(input_ids=inp, attention_mask=att, num_return_sequences=N, do_sample=True, top_k=25,
                          temperature=0.8, max_new_tokens=M, min_new_tokens=M, eos_token_id=2, pad_token_id=1)

    res = {}
    for name, fn in [("alignslm", ours), ("hf_generate", hf)]:
        fn()  # warm-up (and CUDA graph capture)
        torch.cuda.synchronize()
        ts = []
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            ts.append(time.perf_counter() - t0)
        res[name] = ts
    tokens = P * N * M
    wbytes = sum(p.numel() * p.element_size() for p in lm.model.parameters())
    kv_tok = 2 * cfg.num_hidden_layers * cfg.hidden_size * 2  # K and V, bf16
    avg_ctx = 75 + 1 + M / 2
    floor_step = (wbytes + P * N * avg_ctx * kv_tok) / BW
    floor_tps = P * N / floor_step
    shape = f"OPT-1.3B-shape,bf16,P{P}xN{N}x{M}"
    tps = {k: [tokens / t for t in v] for k, v in res.items()}
    med = {k: sorted(v)[len(v) // 2] for k, v in tps.items()}
    rows.append(row("decode_gpu", "hf_generate", shape, "tokens_per_s", "tok/s", tps["hf_generate"]))
    rows.append(row("decode_gpu", "alignslm", shape, "tokens_per_s", "tok/s", tps["alignslm"], "hf_generate",
                    med["alignslm"] / med["hf_generate"]))
    rows.append(row("decode_gpu", "alignslm", shape, "frac_of_bw_floor", "frac", med["alignslm"] / floor_tps,
                    "bandwidth_floor", med["alignslm"] / floor_tps))
    print(f"bandwidth floor: {floor_step * 1e3:.3f} ms/step ({floor_tps:.0f} tok/s); weights {wbytes / 1e9:.2f} GB, "
          f"KV {kv_tok} B/token, avg context {avg_ctx:.0f}")


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "bench/out/gpu")
    out.mkdir(parents=True, exist_ok=True)
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to do")
        return
    rows: list = []
    kernel_times(rows)
    try:
        decode_bench(rows)
    except Exception as e:  # noqa: BLE001 - report and keep the kernel rows
        print(f"decode benchmark failed: {type(e).__name__}: {e}")
    print_table(rows)
    append_rows(rows, out / "sampling.csv")


if __name__ == "__main__":
    main()
