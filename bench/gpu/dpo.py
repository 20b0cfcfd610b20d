"""GPU checks for DPO (issue 8), one H100, nothing downloaded:  python bench/gpu/dpo.py OUTDIR

Timings only; the kernel's parity with fp64 at these shapes (fp32 forward and gradient, the bf16 rule) is
the GPU test tests/test_logprobs.py::test_triton_token_logprobs_parity_at_bench_shapes (gpu_check.sh runs it).
1. Time of the fused lm_head + log-softmax + gather (forward + backward, frozen lm_head as in LoRA)
   against torch.compile of the plain computation (goal: <= 1.1x), and against our torch path.
2. DPO step throughput on a TWIST-1.3B-shaped OPT (random weights, bf16, LoRA r=32 on q/k/v/o):
   tokens/s per GPU, shared-prompt layout vs the plain [chosen; rejected] layout.
Prints a table and writes CSV rows to OUTDIR/dpo.csv.
"""

from __future__ import annotations

import dataclasses
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
from harness import append_rows, print_table, row  # noqa: E402

try:
    from alignslm.kernels.logprobs import fused_linear_token_logprobs
except ImportError:  # package not installed: import the kernels directory directly
    from kernels.logprobs import fused_linear_token_logprobs  # type: ignore[no-redef]


def bench_ms(fn, reps: int = 50) -> list[float]:
    import triton.testing

    ms = triton.testing.do_bench(fn, warmup=10, rep=reps, return_mode="all")
    return list(ms) if isinstance(ms, (list, tuple)) else [float(ms)]


def plain(rows: torch.Tensor, w: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    logp = torch.log_softmax((rows @ w.t()).float(), dim=-1)  # (N, V)
    return logp.gather(1, tgt[:, None]).squeeze(1)  # (N,)


def kernel_time(rows_out: list[dict]) -> None:
    compiled = torch.compile(plain)
    for n, h, v, dt in [(2400, 2048, 504, torch.bfloat16), (4096, 4096, 32_512, torch.bfloat16),
                        (2400, 2048, 504, torch.float32)]:
        x = torch.randn(n, h, device="cuda", dtype=dt, requires_grad=True)
        w = torch.randn(v, h, device="cuda", dtype=dt) / h ** 0.5
        t = torch.randint(0, v, (n,), device="cuda")
        go = torch.randn(n, device="cuda")

        def step(f, x=x, w=w, t=t, go=go):  # noqa: ANN001, ANN202
            def run() -> None:
                x.grad = None
                f(x, w, t).backward(go)
            return run

        provs = {"ours-triton": step(lambda a, b, c: fused_linear_token_logprobs(a, b, c, impl="triton")),
                 "ours-torch": step(lambda a, b, c: fused_linear_token_logprobs(a, b, c, impl="torch")),
                 "torch.compile": step(compiled)}
        ms = {k: bench_ms(f) for k, f in provs.items()}
        med = {k: sorted(v_)[len(v_) // 2] for k, v_ in ms.items()}
        shape = f"N{n} H{h} V{v} {str(dt).split('.')[-1]}"
        for k in provs:
            ratio = med[k] / med["torch.compile"] if k != "torch.compile" else None
            rows_out.append(row("dpo_logprob_fwd_bwd", k, shape, "time", "ms", ms[k],
                                "" if ratio is None else f"{k}/torch.compile", ratio))


TWIST_1B3 = dict(hidden_size=2048, num_hidden_layers=24, ffn_dim=8192, num_attention_heads=32, word_embed_proj_dim=2048)


def twist_tokens_per_s(rows_out: list[dict], dims: dict = TWIST_1B3, device: str = "cuda", n_pairs: int = 96) -> None:
    try:
        import peft  # noqa: F401
        from transformers import OPTConfig, OPTForCausalLM

        from alignslm.config import TrainConfig
        from alignslm.dpo.trainer import DPOTrainer, prepare_pairs
        from alignslm.lm.unitlm import UnitLM
    except ImportError as e:
        print(f"SKIP tokens/s: {e} (transformers + peft needed)")
        return
    cfg = OPTConfig(vocab_size=504, max_position_embeddings=2048, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                    dropout=0.0, attention_dropout=0.0, **dims)
    with torch.device(device):
        model = OPTForCausalLM(cfg).to(torch.bfloat16 if device == "cuda" else torch.float32)
    lm = UnitLM(model, offset=4, n_units=500, bos_id=0, eos_id=2, pad_id=1)
    rng = random.Random(0)
    pairs = [{"prompt": [rng.randrange(500) for _ in range(75)],
              "chosen": [rng.randrange(500) for _ in range(rng.randint(100, 150))],
              "rejected": [rng.randrange(500) for _ in range(rng.randint(100, 150))]} for _ in range(n_pairs)]
    ex, _ = prepare_pairs(pairs, lm, 1024)
    tokens = sum(len(e.prompt) + len(e.chosen) + len(e.rejected) for e in ex)
    for shared in (True, False):
        tc = dataclasses.replace(TrainConfig(), batch_size=8, lora_r=32, lora_alpha=8, lr=1e-5, warmup_steps=0,
                                 epochs=1, checkpoint_every=10_000, share_prompt=shared)
        with tempfile.TemporaryDirectory() as tmp:
            tr = DPOTrainer(lm, tc, tmp, seed=0, device=device)
            tr.train(ex)
            import json

            log = [json.loads(x) for x in (Path(tmp) / "train_log.jsonl").read_text().splitlines()]
            tr.peft.unload()  # leave the base model without adapters for the next layout
        dts = [b["time"] - a["time"] for a, b in zip(log[2:], log[3:])]
        tps = [tokens / len(log) / dt for dt in dts]
        name = "shared-prompt" if shared else "concat"
        print(f"TWIST-1.3B-shaped DPO step ({name}): {sorted(dts)[len(dts) // 2] * 1e3:.1f} ms/step, "
              f"{sorted(tps)[len(tps) // 2]:.0f} tokens/s")
        rows_out.append(row("dpo_step_twist1.3b", f"ours-{name}", "OPT h2048 L24 bf16 B8 P75 C100-150 lora r32",
                            "tokens_per_s", "tok/s", tps))


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "bench/out/gpu")
    out.mkdir(parents=True, exist_ok=True)
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device")
    t0 = time.time()
    for section in (kernel_time, twist_tokens_per_s):  # rows are written after each section
        rows: list[dict] = []
        section(rows)
        if rows:
            print_table(rows)
            append_rows(rows, out / "dpo.csv")
        print(f"{section.__name__} done at {time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()
