"""The demo's gate: does a DPO variant move the held-out judge metric? One round, on a finished demo run.

    python experiments/dpo_variants.py RUN_DIR --tag NAME [--rounds 1,2] [--seed S] [--min-words N] [--no-train]
                                 [key=value ...]

Takes a finished demo run (``python -m alignslm.run``): the pairs are rebuilt from its judged
continuations of ``--rounds`` (1: round 1's; 1,2: both rounds' prompts, i.e. twice the data), a fresh
LoRA is trained by DPO from the base unit LM (``train.*`` overrides apply), and the policy is evaluated
exactly like the ``evaluate`` stage does (same held-out prompts and seeds: ``GenerationSetup``) against
the run's stored base-model generations.  Reported: the paired-bootstrap judge gain (base - policy
ln-perplexity; > 0 = better), its 95% CI and one-sided p, auto-BLEU change, mean continuation length;
and the policy's reward accuracy on the run's round-2 pairs (prompts it never trained on) when
``--rounds 1``.  ``--min-words N``: a continuation whose transcript has fewer than N words gets no
perplexity (it can be neither chosen nor rejected).  ``--no-train``: the base model with the given
sampling overrides (e.g. sample.temperature=0.6), to see what sampling alone does.
Rows are appended to experiments/results.csv (bench=dpo_variants) and printed as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS_CSV = ROOT / "experiments" / "results.csv"  # the studies' rows (bench/harness.py schema)
sys.path.insert(0, str(ROOT / "bench"))  # the shared harness
sys.path.insert(0, str(ROOT))

from harness import append_rows, row  # noqa: E402


def build_examples(run: Path, cfg, rounds: list[int], min_words: int, lm):  # noqa: ANN001, ANN201
    from alignslm.dpo.pairs import Candidate, build_pairs, rules_for_round
    from alignslm.dpo.trainer import prepare_pairs
    from alignslm.rundir import read_jsonl

    prompts: dict = {}
    for rd in rounds:
        judged = {(r["prompt_id"], r["k"]): r for r in read_jsonl(run / f"round-{rd}/judge/judgments.jsonl")}
        for s in read_jsonl(run / f"round-{rd}/sample/samples.jsonl"):
            pid = f"r{rd}-{s['prompt_id']}"  # the same prompt in two rounds stays two prompts
            p = prompts.setdefault(pid, {"prompt": s["prompt"], "prompt_text": "", "candidates": []})
            j = judged.get((s["prompt_id"], s["k"]))
            if j is None:
                continue
            ppl = j.get("perplexity")
            if min_words and len((j.get("text") or "").split()) < min_words:
                ppl = None
            p["prompt_text"] = p["prompt_text"] or j.get("prompt_text", "")
            p["candidates"].append(Candidate(k=s["k"], units=s["continuation"], text=j.get("text", ""),
                                             score=j.get("score"), perplexity=ppl, autobleu=j.get("autobleu")))
    rows, _ = build_pairs(prompts, rules_for_round(cfg, 1))
    return prepare_pairs(rows, lm, cfg.train.max_length)[0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir")
    ap.add_argument("--tag", required=True)
    ap.add_argument("--rounds", default="1")
    ap.add_argument("--seed", type=int, default=123)
    ap.add_argument("--min-words", type=int, default=0)
    ap.add_argument("--no-train", action="store_true")
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args()

    from alignslm.config import load_config
    from alignslm.dpo.trainer import DPOTrainer, prepare_pairs
    from alignslm.eval.generation import GenerationSetup
    from alignslm.eval.stats import compare_models
    from alignslm.lm.unitlm import load_unitlm
    from alignslm.rundir import StageContext, read_json, read_jsonl

    run = Path(a.run_dir).resolve()
    cfg = load_config(run / "config.yaml", a.overrides)
    rounds = [int(x) for x in a.rounds.split(",")]
    work = Path(tempfile.mkdtemp(prefix=f"dpo_variants_{a.tag}_"))
    lm = load_unitlm(run / "unitlm", support=cfg.unitlm.support, device="cpu", dtype="float32")
    res: dict = {"tag": a.tag, "rounds": a.rounds, "seed": a.seed, "min_words": a.min_words,
                 "overrides": a.overrides, "load_start": round(os.getloadavg()[0], 2)}
    t0 = time.perf_counter()
    if a.no_train:
        adapters = []
    else:
        ex = build_examples(run, cfg, rounds, a.min_words, lm)
        tr = DPOTrainer(lm, cfg.train, work / "train", seed=a.seed)
        tr.train(ex)
        res["pairs"] = len(ex)
        res["train_reward_accuracy"] = round(tr.evaluate(ex)["rewards/accuracies"], 3)
        if rounds == [1] and (run / "round-2/pairs/pairs.jsonl").is_file():
            held, _ = prepare_pairs(read_jsonl(run / "round-2/pairs/pairs.jsonl"), lm, cfg.train.max_length)
            res["heldout_reward_accuracy"] = round(tr.evaluate(held)["rewards/accuracies"], 3)
        tr.save_adapter(work / "adapter")
        adapters = [work / "adapter"]
        del tr
    res["train_s"] = round(time.perf_counter() - t0, 1)
    policy = load_unitlm(run / "unitlm", adapters=adapters, merge=True, support=cfg.unitlm.support, device="cpu",
                         dtype="float32")
    ctx = StageContext(name="evaluate", cfg=cfg, run_dir=run, out=work / "evaluate", progress=False,
                       inputs={"corpus": run / "corpus", "tokenize": run / "tokenize", "vocoder": run / "vocoder"})
    t1 = time.perf_counter()
    summary, _ = GenerationSetup.build(ctx).evaluate(ctx, "policy", policy)
    res["eval_s"] = round(time.perf_counter() - t1, 1)
    base = read_json(run / "evaluate/base/model.json")["generation"]
    c = compare_models(base, summary, cfg.eval.bootstrap, 0)
    g = c["judge_gain"]
    res.update(gain=round(g["diff"], 4), lo=round(g["lo"], 4), hi=round(g["hi"], 4), p_le_0=g["p_le_0"],
               n_prompts=g["n"], autobleu_diff=round(c["autobleu"]["diff"], 4),
               mean_units=round(float(np.mean([len(r["continuation"]) for r in
                                               read_jsonl(work / "evaluate/policy/generations.jsonl")])), 1))
    print(json.dumps(res), flush=True)
    append_rows([row("dpo_variants", a.tag, f"rounds={a.rounds} seed={a.seed} min_words={a.min_words} "
                     + " ".join(a.overrides), "judge_gain_ln_ppl", "nats", [res["gain"]])], RESULTS_CSV)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
