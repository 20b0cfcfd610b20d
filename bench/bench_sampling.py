"""Continuation sampling: alignslm.lm.sampler.generate vs transformers generate(do_sample=True, top_k, top_p,
temperature) on the same model and batch (32 prompts x 5 continuations, 150 new units each).

    python bench/bench_sampling.py [--quick] [--model runs/demo/unitlm/model] [--threads N]

Without --model it builds the demo LM architecture (config defaults: unitlm.d_model/n_layers/n_heads, K =
tokenize.n_units) with random weights.
Both providers generate exactly ``max_new`` units per row (EOS suppressed until then: ``min_new`` /
``min_new_tokens``), so tokens/s compare like with like.  Before timing it checks that greedy decoding
gives identical units in both.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import append_rows, print_table, row, time_alternating  # noqa: E402

from alignslm.config import TokenizeConfig, UnitLMConfig  # noqa: E402
from alignslm.lm.sampler import SamplingParams, generate  # noqa: E402
from alignslm.lm.unitlm import UnitLM  # noqa: E402


def demo_lm(path: str | None, n_units: int) -> UnitLM:
    if path:
        return UnitLM.from_pretrained(path)
    from alignslm.lm.pretrain import BOS, EOS, OFFSET, PAD, build_model

    c = UnitLMConfig()
    model = build_model(n_units, c.d_model, c.n_layers, c.n_heads, c.context, seed=0).eval()
    return UnitLM(model, offset=OFFSET, n_units=n_units, bos_id=BOS, eos_id=EOS, pad_id=PAD)


def hf_generate(lm: UnitLM, prompts: list[list[int]], n: int, p: SamplingParams, do_sample: bool = True):
    ids = [[lm.bos_id, *lm.units_to_ids(u)] for u in prompts]
    Lp = max(map(len, ids))
    inp = torch.tensor([[lm.pad_id] * (Lp - len(s)) + s for s in ids])
    att = (torch.arange(Lp).unsqueeze(0) >= torch.tensor([Lp - len(s) for s in ids]).unsqueeze(1)).long()
    kw = dict(do_sample=True, top_k=p.top_k, top_p=p.top_p, temperature=p.temperature) if do_sample else \
        dict(do_sample=False)
    with torch.no_grad():
        out = lm.model.generate(input_ids=inp, attention_mask=att, num_return_sequences=n, max_new_tokens=p.max_new,
                                min_new_tokens=p.min_new, eos_token_id=lm.eos_id, pad_token_id=lm.pad_id, **kw)
    return out[:, Lp:]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer repeats and a shorter continuation")
    ap.add_argument("--model", default=None, help="HF unit LM directory (default: demo architecture, random)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    ap.add_argument("--repeats", type=int, default=0, help="timed rounds per provider (default 5, --quick 2)")
    ap.add_argument("--no-csv", action="store_true")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    lm = demo_lm(a.model, TokenizeConfig().n_units)
    P, N = 32, 5
    max_new = 40 if a.quick else 150
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, lm.n_units, int(rng.integers(30, 60))).tolist() for _ in range(P)]
    # correctness first: greedy units identical (a few prompts, short)
    g = SamplingParams(greedy=True, max_new=20)
    ours = generate(lm, prompts[:4], n=1, params=g)
    ref = hf_generate(lm, prompts[:4], 1, SamplingParams(max_new=20), do_sample=False)
    for i in range(4):
        r = ref[i].tolist()
        r = r[:r.index(lm.eos_id)] if lm.eos_id in r else r
        assert ours[i][0] == [t - lm.offset for t in r], f"greedy mismatch on prompt {i}"
    params = SamplingParams(temperature=0.8, top_k=25, top_p=0.9, max_new=max_new, min_new=max_new)
    seeds = list(range(P * N))
    fns = {"alignslm": lambda: generate(lm, prompts, n=N, params=params, seeds=seeds, batch_size=P),
           "hf_generate": lambda: hf_generate(lm, prompts, N, params)}
    times = time_alternating(fns, repeats=a.repeats or (2 if a.quick else 5), warmup=1)
    tokens = P * N * max_new
    shape = f"P{P}xN{N}x{max_new}new,V{lm.vocab_size},threads{torch.get_num_threads()}"
    tps = {k: [tokens / t for t in v] for k, v in times.items()}
    ratio = float(np.median(tps["alignslm"]) / np.median(tps["hf_generate"]))
    rows = [row("sampling", "hf_generate", shape, "tokens_per_s", "tok/s", tps["hf_generate"]),
            row("sampling", "alignslm", shape, "tokens_per_s", "tok/s", tps["alignslm"], "hf_generate", ratio)]
    print_table(rows)
    if not a.no_csv:
        append_rows(rows)


if __name__ == "__main__":
    main()
