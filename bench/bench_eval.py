"""Benchmark scoring speed: 1,000 utterances through the demo-sized unit LM (criterion: <= 60 s on CPU).

    python bench/bench_eval.py [--quick] [--n 1000] [--unitlm RUN/unitlm] [--units RUN/evaluate/units]
                               [--tokenize N]

Providers (same model, same utterances, alternated A B A B ...):
- ``alignslm``: alignslm.eval.scoring.score_units -> UnitLM.score_sequences (length-sorted batches of 64);
- ``per-utt``: the plain way (one forward per utterance, log-softmax over the unit support, sum).
Both first have to agree (relative difference <= 1e-5 per utterance, fp32, on 50 utterances).
``--quick`` times ours once (wall and CPU seconds) and skips the slow side-by-side peer timing.
On a loaded shared machine the wall time is inflated by the load; CPU seconds / threads is the estimate of
the wall time on an idle machine (both are printed with the load average).
Utterances: the demo run's tokenised benchmark units when ``--units`` is given, else a synthetic mix with
the demo benchmarks' length profile (40 % words 8-25 units, 40 % sentences 40-120, 20 % stories 200-450).
The model: the demo unit LM when ``--unitlm`` is given, else a LLaMA with the demo shape (d_model 256,
4 layers, 4 heads, 100 units) and random weights -- the same compute.
Tokenisation (audio -> units) is *not* in the scoring time; ``--tokenize N`` times it separately on N
eSpeak NG demo sentences with the demo encoder (Whisper tiny.en, CTranslate2) and reports seconds / 1,000.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import append_rows, print_table, row, time_alternating  # noqa: E402

N_UNITS = 100


def demo_shaped_lm(tmp: Path):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from alignslm.config import UnitLMConfig
    from alignslm.lm.unitlm import load_unitlm

    c = UnitLMConfig()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=N_UNITS + 2, hidden_size=c.d_model, intermediate_size=4 * c.d_model,
                      num_hidden_layers=c.n_layers, num_attention_heads=c.n_heads, num_key_value_heads=c.n_heads,
                      max_position_embeddings=c.context, bos_token_id=1, eos_token_id=1, pad_token_id=0)
    LlamaForCausalLM(cfg).save_pretrained(tmp / "hf")
    (tmp / "unitlm.json").write_text(json.dumps({"path": str(tmp / "hf"), "offset": 2, "n_units": N_UNITS,
                                                 "bos_id": 1, "eos_id": 1, "pad_id": 0}))
    return load_unitlm(tmp)


def synthetic_units(n: int, n_units: int, seed: int = 0) -> dict[str, list[int]]:
    rng = np.random.default_rng(seed)
    kinds = rng.choice(3, size=n, p=[0.4, 0.4, 0.2])
    lo_hi = {0: (8, 25), 1: (40, 120), 2: (200, 450)}
    return {f"u{i:05d}": rng.integers(0, n_units, size=rng.integers(*lo_hi[k])).tolist()
            for i, k in enumerate(kinds)}


def real_units(d: Path, n: int) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for f in sorted(d.glob("*.jsonl")):
        for line in f.read_text().splitlines():
            r = json.loads(line)
            out[f"{f.stem}/{r.get('id') or r['sha1']}"] = r["units"]
    keys = list(out)
    rng = np.random.default_rng(0)
    pick = rng.choice(len(keys), size=n, replace=len(keys) < n)
    return {f"{keys[i]}#{j}": out[keys[i]] for j, i in enumerate(pick)}


def per_utterance(lm, units: dict[str, list[int]]) -> dict[str, float]:
    """The plain peer: one forward per utterance, log-softmax over the unit support + EOS, sum."""
    import torch

    support = lm.support_ids  # (S,)
    pos = {int(t): i for i, t in enumerate(support.tolist())}
    out = {}
    with torch.no_grad():
        for k, u in units.items():
            ids = torch.tensor([[lm.bos_id, *lm.units_to_ids(u), lm.eos_id]])  # (1, T)
            logits = lm.model(input_ids=ids).logits[0, :-1][:, support]  # (T-1, S)
            lp = torch.log_softmax(logits.float(), dim=-1)
            tgt = torch.tensor([pos[int(t)] for t in ids[0, 1:]])
            out[k] = float(lp[torch.arange(len(tgt)), tgt].sum())
    return out


def time_tokenize(n: int) -> float:
    """Seconds to tokenise ``n`` demo sentences (eSpeak NG audio) with the demo encoder + a k-means."""
    from alignslm.demo.stories import generate_stories
    from alignslm.demo.tts import synthesize
    from alignslm.speech.encoders import build_encoder

    texts = [s for st in generate_stories(n, seed=7) for s in st.sentences][:n]
    wavs = [synthesize(t).audio for t in texts]
    enc = build_encoder("whisper")
    t0 = time.perf_counter()
    feats = enc.encode(wavs)
    centroids = np.random.default_rng(0).normal(size=(N_UNITS, feats[0].shape[1])).astype(np.float32)
    _ = [np.argmin(((f[:, None, :] - centroids[None]) ** 2).sum(-1), axis=1) for f in feats]
    return time.perf_counter() - t0


def main() -> None:
    import tempfile

    import torch

    from alignslm.eval.scoring import score_units
    from alignslm.lm.unitlm import load_unitlm

    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--unitlm", type=Path)
    ap.add_argument("--units", type=Path)
    ap.add_argument("--tokenize", type=int, default=0)
    ap.add_argument("--no-csv", action="store_true")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    lm = load_unitlm(a.unitlm) if a.unitlm else demo_shaped_lm(tmp)
    units = real_units(a.units, a.n) if a.units else synthetic_units(a.n, lm.n_units)
    n_tok = sum(len(u) + 1 for u in units.values())
    ours = score_units(lm, units, "sum", 64)
    check = dict(list(units.items())[:50])
    peer = per_utterance(lm, check)
    err = max(abs(ours[k] - peer[k]) / max(1.0, abs(peer[k])) for k in check)
    assert err <= 1e-5, f"providers disagree by {err:.2e} (relative)"  # fp32 sums over up to 450 tokens
    c0, w0 = time.process_time(), time.perf_counter()
    score_units(lm, units, "mean", 64)
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    shape = f"{a.n}utt_{n_tok}tok_{'real' if a.units else 'synthetic'}"
    rows = [row("eval_score", "alignslm", shape, "cpu_seconds_per_1000_utt", "s", cpu * 1000 / a.n)]
    p_ours = wall
    if not a.quick:  # the side-by-side ratio (costly: the peer is slow)
        t = time_alternating({"alignslm": lambda: score_units(lm, units, "mean", 64),
                              "per-utt": lambda: per_utterance(lm, units)}, repeats=3, warmup=0)
        p_ours, p_peer = float(np.median(t["alignslm"])), float(np.median(t["per-utt"]))
        rows += [row("eval_score", "alignslm", shape, "seconds_per_1000_utt", "s",
                     [x * 1000 / a.n for x in t["alignslm"]], "per-utt", p_peer / p_ours),
                 row("eval_score", "per-utt", shape, "seconds_per_1000_utt", "s",
                     [x * 1000 / a.n for x in t["per-utt"]])]
    else:
        rows.append(row("eval_score", "alignslm", shape, "seconds_per_1000_utt", "s", wall * 1000 / a.n))
    if a.tokenize:
        s = time_tokenize(a.tokenize)
        rows.append(row("eval_tokenize", "whisper-tiny+kmeans", f"{a.tokenize}utt", "seconds_per_1000_utt", "s",
                        s * 1000 / a.tokenize))
    print_table(rows)
    print(f"max relative |ours - peer| = {err:.2e}; scoring {a.n} utterances: {p_ours:.1f} s wall (goal <= 60 s, "
          f"tokenisation excluded); last run {wall:.1f} s wall, {cpu:.1f} s CPU over {torch.get_num_threads()} "
          f"threads (load average {os.getloadavg()[0]:.1f})")
    if not a.no_csv:
        append_rows(rows)


if __name__ == "__main__":
    main()
