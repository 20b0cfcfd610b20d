"""DPO step: alignslm's trainer vs TRL DPOTrainer, same LoRA config, same model and pairs, on this CPU.

    python bench/bench_dpo.py [--quick]      # --quick: fewer steps, still two alternated runs per provider

Each measurement is a fresh subprocess (so peak RSS is its own), providers alternate A B C A B C ...
Reported: steps/s (median over steps after warm-up, wall time between consecutive step ends, so data
loading, logging and the optimizer are included) and peak RSS (ru_maxrss) of the whole process and its
growth after the model is loaded.  Before timing, the first-step losses of both trainers are checked to
agree in scale (the two trainers shuffle differently, so step 1 sees different pairs).

Providers:
  ours          alignslm.dpo.trainer.DPOTrainer (fp32, reference via disabled adapter, fused chunked lm_head,
                shared-prompt layout)
  ours-precompute  the same with reference log-probs computed once before training (train.precompute_ref;
                the one-off pass is not in the per-step time, it costs about one epoch of reference forwards)
  trl-precompute   TRL matched, with precompute_ref_log_probs=True (the peer of ours-precompute)
  ours-bf16 / trl-bf16  bf16 autocast on both (train.autocast=bf16 / bf16=True), no gradient checkpointing
  trl           TRL DPOTrainer with matched settings: fp32, no gradient checkpointing
  trl-defaults  TRL DPOTrainer as configured by default (bf16 autocast, gradient checkpointing)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

N_UNITS, OFFSET = 100, 2
SHAPE = dict(hidden=256, layers=4, heads=4, inter=1024, n_pairs=64, prompt=50, comp=(60, 100), batch=8, r=32,
             alpha=8)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def make_model(path: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=OFFSET + N_UNITS, hidden_size=SHAPE["hidden"], intermediate_size=SHAPE["inter"],
                      num_hidden_layers=SHAPE["layers"], num_attention_heads=SHAPE["heads"],
                      num_key_value_heads=SHAPE["heads"], max_position_embeddings=512, pad_token_id=0,
                      bos_token_id=1, eos_token_id=1)
    m = LlamaForCausalLM(cfg)
    m.config.offset, m.config.n_units = OFFSET, N_UNITS
    m.save_pretrained(path)


def make_pairs() -> list[dict]:
    rng = random.Random(0)
    lo, hi = SHAPE["comp"]
    return [{"prompt": [rng.randrange(N_UNITS) for _ in range(SHAPE["prompt"])],
             "chosen": [rng.randrange(N_UNITS // 2) for _ in range(rng.randint(lo, hi))],
             "rejected": [rng.randrange(N_UNITS // 2, N_UNITS) for _ in range(rng.randint(lo, hi))]}
            for _ in range(SHAPE["n_pairs"])]


def _intervals(times: list[float], warmup: int) -> list[float]:
    return [b - a for a, b in zip(times[warmup:], times[warmup + 1:])]


# --------------------------------------------------------------------------------------------------
# Workers (one subprocess each)
# --------------------------------------------------------------------------------------------------


def run_ours(model_dir: str, steps: int, out: Path, precompute: bool = False, autocast: str = "none") -> dict:
    import dataclasses

    import torch

    from alignslm.config import TrainConfig
    from alignslm.dpo.trainer import DPOTrainer, prepare_pairs
    from alignslm.lm.unitlm import UnitLM

    lm = UnitLM.from_pretrained(model_dir, support="full", dtype="float32")
    rss_model = _rss_mb()
    ex, _ = prepare_pairs(make_pairs(), lm, 512)
    for e in ex:  # TRL ends completions with EOS; score the same tokens
        e.chosen.append(lm.eos_id)
        e.rejected.append(lm.eos_id)
    cfg = dataclasses.replace(TrainConfig(), lora_r=SHAPE["r"], lora_alpha=SHAPE["alpha"], batch_size=SHAPE["batch"],
                              lr=1e-4, warmup_steps=0, epochs=1, checkpoint_every=10_000, precompute_ref=precompute,
                              autocast=autocast)
    per_epoch = -(-len(ex) // SHAPE["batch"])
    cfg = dataclasses.replace(cfg, epochs=-(-steps // per_epoch))
    tr = DPOTrainer(lm, cfg, out, seed=0)
    torch.manual_seed(0)
    tr.train(ex, stop_after=steps)
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    return {"times": [r["time"] for r in log], "first_logps": log[0]["logps/chosen"], "rss": _rss_mb(),
            "rss_model": rss_model}


def run_trl(model_dir: str, steps: int, out: Path, defaults: bool, precompute: bool = False,
            bf16: bool = False) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    vocab = {"<pad>": 0, "<s>": 1, **{f"u{k}": k + OFFSET for k in range(N_UNITS)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<s>", eos_token="<s>")
    text = lambda us: " ".join(f"u{u}" for u in us)  # noqa: E731
    data = Dataset.from_list([{"prompt": "<s> " + text(p["prompt"]), "chosen": " " + text(p["chosen"]) + " <s>",
                               "rejected": " " + text(p["rejected"]) + " <s>"} for p in make_pairs()])
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32")
    rss_model = _rss_mb()
    extra = {} if defaults else {"bf16": bf16, "gradient_checkpointing": False}
    if precompute:
        extra["precompute_ref_log_probs"] = True
    args = DPOConfig(output_dir=str(out), per_device_train_batch_size=SHAPE["batch"], max_steps=steps,
                     learning_rate=1e-4, lr_scheduler_type="linear", warmup_steps=0, logging_steps=1, report_to=[],
                     save_strategy="no", use_cpu=True, seed=0, max_length=None, dataloader_num_workers=0,
                     disable_tqdm=True, **extra)
    lcfg = LoraConfig(r=SHAPE["r"], lora_alpha=SHAPE["alpha"], lora_dropout=0.0, bias="none",
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], task_type="CAUSAL_LM")
    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, *a, **kw):  # noqa: ANN002, ANN003
            times.append(time.time())

    tr = DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tok, peft_config=lcfg,
                    callbacks=[Clock()])
    tr.train()
    first = next(h["logps/chosen"] for h in tr.state.log_history if "logps/chosen" in h)
    return {"times": times, "first_logps": first, "rss": _rss_mb(), "rss_model": rss_model}


def worker(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))  # the protocol of RESULTS.md: 1 thread each
    out = Path(tempfile.mkdtemp(prefix=f"bench_dpo_{args.worker}_"))
    if args.worker.startswith("ours"):
        res = run_ours(args.model, args.steps, out, precompute=args.worker == "ours-precompute",
                       autocast="bf16" if args.worker == "ours-bf16" else "none")
    else:
        res = run_trl(args.model, args.steps, out, defaults=args.worker == "trl-defaults",
                      precompute=args.worker == "trl-precompute", bf16=args.worker == "trl-bf16")
    print("RESULT " + json.dumps(res))


# --------------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------------


def measure(provider: str, model_dir: Path, steps: int) -> dict:
    r = subprocess.run([sys.executable, __file__, "--worker", provider, "--model", str(model_dir), "--steps",
                        str(steps)], capture_output=True, text=True, cwd=ROOT, timeout=1800)
    line = [x for x in r.stdout.splitlines() if x.startswith("RESULT ")]
    if r.returncode != 0 or not line:
        raise RuntimeError(f"{provider} worker failed:\n{r.stderr[-3000:]}")
    return json.loads(line[0][7:])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--worker")
    ap.add_argument("--model")
    ap.add_argument("--steps", type=int, default=0)
    ap.add_argument("--providers", default="ours,trl,trl-defaults,ours-precompute,trl-precompute")
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    from harness import append_rows, print_table, row

    # --quick keeps the protocol (alternated providers, two runs each, 2 warm-up steps dropped) and only takes
    # fewer steps: one run per provider lets a single load spike decide a ratio on a shared machine
    steps, repeats, warm = (6, 2, 2) if args.quick else (10, 2, 2)
    providers = args.providers.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        make_model(model_dir)
        res: dict[str, list[dict]] = {p: [] for p in providers}
        for _ in range(repeats):  # A B C A B C ...
            for p in providers:
                res[p].append(measure(p, model_dir, steps))
    first = {p: res[p][0]["first_logps"] for p in providers}  # step 1: same model and pairs, before any update
    if max(first.values()) - min(first.values()) > 0.05 * abs(min(first.values())):
        raise RuntimeError(f"first-step logps/chosen disagree beyond batch-order noise: {first}")
    shape = (f"llama h{SHAPE['hidden']} L{SHAPE['layers']} V{OFFSET + N_UNITS} B{SHAPE['batch']}pairs "
             f"T~{SHAPE['prompt'] + sum(SHAPE['comp']) // 2} lora r{SHAPE['r']}")
    rows = []
    sps = {p: [1.0 / dt for r in res[p] for dt in _intervals(r["times"], warm)] for p in providers}
    med = {p: sorted(v)[len(v) // 2] for p, v in sps.items()}
    rss = {p: [r["rss"] for r in res[p]] for p in providers}
    grow = {p: [r["rss"] - r["rss_model"] for r in res[p]] for p in providers}
    peer = {"ours": "trl", "ours-precompute": "trl-precompute", "ours-bf16": "trl-bf16"}  # matched settings
    for metric, unit, vals, pick in (("steps_per_s", "1/s", sps, None), ("peak_rss", "MB", rss, min),
                                     ("rss_growth_after_model_load", "MB", grow, min)):
        for p in providers:
            ref = peer.get(p) or {"trl": "ours", "trl-defaults": "ours", "trl-precompute": "ours-precompute",
                                   "trl-bf16": "ours-bf16"}.get(p)
            num, den = (p, ref) if p in peer else (ref, p)
            if ref not in providers:
                ratio, label = None, ""
            elif pick is None:
                ratio, label = med[num] / med[den], f"{num}/{den}"
            else:
                ratio, label = pick(vals[num]) / max(1e-9, pick(vals[den])), f"{num}/{den}"
            rows.append(row("dpo_step", p, shape, metric, unit, vals[p], label, ratio))
    print_table(rows)
    print("first-step logps/chosen (batch order differs; same scale expected):", first)
    append_rows(rows)


if __name__ == "__main__":
    main()
