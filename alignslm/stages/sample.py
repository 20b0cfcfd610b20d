"""Round stage ``sample``: N spoken-unit continuations of prompts cut from train-split utterances.

Reads ``corpus/manifest.jsonl`` (split, words), ``tokenize/units.jsonl`` + ``tokenizer.json`` (frame
rate), ``unitlm/unitlm.json`` and, in round N > 1, ``round-(N-1)/train/adapter`` (the adapter is
cumulative: base + it is the round N-1 policy, which samples round N).  Writes
``round-N/sample/samples.jsonl``: prompt_id, utt_id, k, seed, prompt, continuation, prompt_end_s.

Prompts: ``sample.n_prompts`` train utterances in a seeded order of the round; an utterance that cannot
give a prompt (shorter than ``prompt_seconds``, no units) is a reject and the next one is taken.  Every
continuation has its own seed (a hash of run.seed, the round, prompt_id and k), so shards are
independent and a resumed run writes exactly what an uninterrupted one would.  All parameters and
all prompts are checked before the first model call.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

from alignslm import logger
from alignslm.kernels.sampling import SamplingError, check_params
from alignslm.lm.prompts import PromptError, make_prompt
from alignslm.rundir import StageContext, hash_str, read_json, read_jsonl, relative_path, run_sharded

if TYPE_CHECKING:
    from alignslm.config import Config


def check(cfg: Config) -> list[str]:
    s = cfg.sample
    problems = []
    try:
        check_params(s.temperature, s.top_k, s.top_p)
    except SamplingError as e:
        problems.append(str(e))
    if s.prompt_seconds <= 0:
        problems.append(f"sample.prompt_seconds must be > 0, got {s.prompt_seconds}")
    for key in ("n_prompts", "n_continuations", "max_new_units", "batch_size", "shard_size"):
        if getattr(s, key) < 1:
            problems.append(f"sample.{key} must be >= 1, got {getattr(s, key)}")
    return problems


def select_prompts(ctx: StageContext) -> list[dict]:
    """Round N's prompts: the N-th block of ``n_prompts`` usable train prompts in one seeded order.

    The order depends on run.seed only, so the rounds' prompts are disjoint (round N's pairs are new to the
    round N-1 policy, which makes the held-out check in the train stage meaningful).  When the train split
    runs out, a round takes prompts again from the start of the order and says so.  An utterance that gives
    no prompt is a reject (listed by the round that meets it first).
    """
    s = ctx.cfg.sample
    manifest = read_jsonl(ctx.inputs["corpus"] / "manifest.jsonl")
    units = {r["utt_id"]: r for r in read_jsonl(ctx.inputs["tokenize"] / "units.jsonl")}
    frame_rate = float(read_json(ctx.inputs["tokenize"] / "tokenizer.json")["frame_rate"])
    train = sorted((r for r in manifest if r.get("split", "train") == "train"), key=lambda r: r["utt_id"])
    seed = int(hash_str(str(ctx.cfg.run.seed), "sample", "prompts")[:8], 16)  # the same order in every round
    order = np.random.default_rng(seed).permutation(len(train))
    first, last = (ctx.round - 1) * s.n_prompts, ctx.round * s.n_prompts  # this round's block of usable prompts
    usable: list[dict] = []
    for i in order:
        if len(usable) >= last:
            break
        r = train[int(i)]
        u = units.get(r["utt_id"])
        if u is None:
            continue  # the tokenize stage rejected it already (its rejects.jsonl says why)
        try:
            p = make_prompt(u["units"], u.get("durations"), frame_rate, s.prompt_seconds, r.get("words"),
                            s.word_boundary)
        except PromptError as e:
            if len(usable) >= first:
                ctx.rejects.add(r["utt_id"], f"prompt: {e}")
            continue
        usable.append({"prompt_id": r["utt_id"], "utt_id": r["utt_id"], "prompt": p.units, "prompt_end_s": p.end_s})
    if not usable:
        raise PromptError(f"no usable prompt among {len(train)} train utterances (see {ctx.rejects.path}); "
                          f"lower sample.prompt_seconds ({s.prompt_seconds})")
    out = usable[first:last]
    if len(out) < s.n_prompts:
        reused = [usable[(first + j) % len(usable)] for j in range(len(out), min(s.n_prompts, len(usable)))]
        logger.warning("sample round %d: the train split has %d usable prompts, fewer than %d rounds x %d; "
                       "%d of this round's prompts were used by earlier rounds (the train stage's held-out "
                       "check leaves them out)", ctx.round, len(usable), ctx.round, s.n_prompts, len(reused))
        out += [p for p in reused if p not in out]
    if len(out) < s.n_prompts:
        logger.warning("sample: only %d of the %d requested prompts", len(out), s.n_prompts)
    return out


def run(ctx: StageContext) -> dict:
    from alignslm.lm.sampler import SamplingParams, generate, validate
    from alignslm.lm.unitlm import load_unitlm

    s = ctx.cfg.sample
    problems = check(ctx.cfg)
    if problems:
        raise SamplingError("; ".join(problems))
    prompts = select_prompts(ctx)
    adapters = [ctx.inputs["train_prev"]] if "train_prev" in ctx.inputs else []
    lm = load_unitlm(ctx.inputs["unitlm"], adapters=adapters, merge=True, support=ctx.cfg.unitlm.support,
                     device=ctx.cfg.run.device, dtype=ctx.cfg.unitlm.dtype)
    params = SamplingParams(temperature=s.temperature, top_k=s.top_k, top_p=s.top_p, max_new=s.max_new_units)
    n = s.n_continuations
    validate(lm, [p["prompt"] for p in prompts], params, n, None)  # every prompt, before any generation
    t0, n_tokens = time.perf_counter(), [0]

    def process(chunk: list[dict]) -> list[dict]:
        seeds = [ctx.seed("continuation", p["prompt_id"], k) for p in chunk for k in range(n)]
        conts = generate(lm, [p["prompt"] for p in chunk], n=n, params=params, seeds=seeds, batch_size=s.batch_size)
        rows = []
        for i, p in enumerate(chunk):
            for k in range(n):
                rows.append({**{key: p[key] for key in ("prompt_id", "utt_id", "prompt")}, "k": k,
                             "seed": seeds[i * n + k], "continuation": conts[i][k], "prompt_end_s": p["prompt_end_s"]})
                n_tokens[0] += len(conts[i][k])
        return rows

    rows = run_sharded(ctx, prompts, s.shard_size, process, "samples.jsonl")
    secs = time.perf_counter() - t0
    lens = np.array([len(r["continuation"]) for r in rows])
    return {"prompts": len(prompts), "samples": len(rows),
            "adapters": [relative_path(a, ctx.run_dir) for a in adapters],
            "mean_prompt_units": round(float(np.mean([len(p["prompt"]) for p in prompts])), 1),
            "mean_continuation_units": round(float(lens.mean()), 1) if len(rows) else 0.0,
            "eos_rate": round(float((lens < s.max_new_units).mean()), 3) if len(rows) else 0.0,
            "empty_continuations": int((lens == 0).sum()),
            "seconds": round(secs, 1), "units_per_s": round(n_tokens[0] / max(secs, 1e-9), 1)}
