"""The evaluate stage: every model (base, round-1, ...) on sWUGGY, sBLIMP, sSC, tSC and on generation.

Reads ctx.inputs: benchmarks (benchmarks.json -> root), tokenize (the tokenizer), unitlm, vocoder, corpus
(held-out prompts), train_1..train_R (round-N/train/adapter: cumulative, so base + that adapter alone is the
round-N policy).  Writes ``evaluate/results.json`` plus, per model, ``<model>/scores_<bench>.json``
(utterance scores), ``<model>/generations.jsonl`` (per continuation) and ``submissions/<model>/`` (a
ZeroSpeech 2021 submission).  Every check runs before any scoring; a finished model is not redone.

SALMon per part, ProsAudit, multi-speaker sSC/tSC and continuation-only sSC/tSC (alignslm.eval.suites) are
scored for every model beside the four; GenPPL (alignslm.eval.genppl) beside the judge metric of every
generation model.  The summary gives each new metric's cost in seconds, summed over the models.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alignslm import logger
from alignslm.eval import suites as ev_suites
from alignslm.eval.generation import GenerationSetup
from alignslm.eval.scoring import (
    EvalInputError,
    check_benchmark,
    check_unit_counts,
    headline,
    score_benchmarks,
    tokenize_items,
)
from alignslm.eval.stats import compare_models, paired_win_rate, reject_share_diff
from alignslm.impl import resolve_device
from alignslm.rundir import StageContext, hash_str, read_json, read_jsonl, relative_path, write_json, write_jsonl

if TYPE_CHECKING:
    from alignslm.config import Config


def check(cfg: Config) -> list[str]:
    problems = []
    if cfg.eval.batch_size < 1:
        problems.append("eval.batch_size must be >= 1")
    if cfg.eval.n_prompts < 0 or cfg.eval.bootstrap < 0:
        problems.append("eval.n_prompts and eval.bootstrap must be >= 0")
    return problems


# --------------------------------------------------------------------------------------------------
# Benchmarks
# --------------------------------------------------------------------------------------------------


def load_benchmarks(ctx: StageContext, root: Path, split: str) -> dict:
    """name -> BenchmarkSet (alignslm.eval.benchdata.load_all: all four, complete, or one error listing all).

    Files the loader rejected (not 16 kHz mono, empty) are recorded as rejects here too; their pairs were
    dropped by the loader and are counted in the results (``dropped_pairs``).  Only files of the remaining
    pairs are tokenised and scored.
    """
    from alignslm.eval.benchdata import load_all

    return _keep_paired_files(ctx, load_all(root, split))


def _keep_paired_files(ctx: StageContext, sets: dict) -> dict:
    """Record each set's rejected files as rejects and keep only the files of its remaining pairs."""
    for name, bset in sets.items():
        for fid, reason in bset.rejects:
            ctx.rejects.add(f"{name}/{fid}", f"benchmark audio: {reason}")
        used = {p[k] for p in bset.pairs for k in ("correct_file", "incorrect_file")}
        bset.items = [(f, p) for f, p in bset.items if f in used]
    return sets


def _load_suites(ctx: StageContext, info: dict) -> dict:
    """SALMon parts and ProsAudit where the benchmarks stage recorded them (alignslm.eval.suites.load); rejected
    files are recorded as rejects, and only files of the remaining pairs are tokenised."""
    return _keep_paired_files(ctx, ev_suites.load(ctx.inputs["benchmarks"], info, ctx.cfg.benchmarks.split))


def _voices(bset: Any) -> list[str]:
    return sorted({str(p.get("voice")) for p in bset.pairs if p.get("voice") is not None})


def _tokenized(ctx: StageContext, tok: Any, benches: dict) -> tuple[dict, float]:
    """Benchmark units, tokenised once for every model.

    Cached by tokenizer (encoder + quantizer id) and wav content in ``<run.cache_dir>/eval_units/``, so a
    re-run (another eval setting, another run with the same tokenizer) does not encode the audio again.
    """
    key = hash_str(json.dumps(tok.describe(), sort_keys=True, default=str))
    cache_dir = Path(ctx.cfg.run.cache_dir).expanduser() / "eval_units" / key
    units, t0 = {}, time.perf_counter()
    for name, bset in benches.items():
        digests = {fid: hashlib.sha1(Path(p).read_bytes()).hexdigest() for fid, p in bset.items}
        cache = cache_dir / f"{name}.jsonl"
        known = {r["sha1"]: r["units"] for r in read_jsonl(cache)} if cache.is_file() else {}
        todo = [(f, p) for f, p in bset.items if digests[f] not in known]
        if todo:
            new = tokenize_items(tok, todo, ctx.cfg.tokenize.batch_size)
            known.update({digests[f]: u for f, u in new.items()})
            write_jsonl(cache, ({"sha1": h, "units": u} for h, u in known.items()))
        units[name] = {f: known[digests[f]] for f, _ in bset.items}
        logger.info("evaluate: %s: %d files, %d tokenised now, %d from the cache", name, len(bset.items),
                    len(todo), len(bset.items) - len(todo))
    return units, time.perf_counter() - t0


def models_to_evaluate(ctx: StageContext) -> dict[str, list[Path]]:
    """model name -> adapters: base has none; round-N uses its own (cumulative) adapter."""
    models: dict[str, list[Path]] = {"base": []}
    rounds = sorted(int(k.split("_")[1]) for k in ctx.inputs if k.startswith("train_"))
    for r in rounds:
        models[f"round-{r}"] = [ctx.inputs[f"train_{r}"]]
    return models


# --------------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------------


def generation_models(models: dict[str, list[Path]], which: str) -> set[str]:
    """Names of the models that get generation metrics: every one (``all``) or the base and the last round."""
    if which == "all":
        return set(models)
    if which != "final":
        raise EvalInputError(f"eval.generation_models={which!r}: choose final or all")
    rounds = [n for n in models if n != "base"]
    return {"base", *rounds[-1:]}


def run(ctx: StageContext) -> dict:
    from alignslm.speech.tokenizer import load_tokenizer

    cfg = ctx.cfg
    problems = check(cfg)
    if problems:
        raise EvalInputError("; ".join(problems))
    info = read_json(ctx.inputs["benchmarks"] / "benchmarks.json")
    benches = load_benchmarks(ctx, ctx.inputs["benchmarks"] / info["root"], cfg.benchmarks.split)
    suites = _load_suites(ctx, info)
    for name, bset in {**benches, **suites}.items():
        check_benchmark(name, bset.items, bset.pairs)
    models = models_to_evaluate(ctx)
    for name, adapters in models.items():
        for a in adapters:
            if not ((a / "adapter" / "adapter_config.json").is_file() or (a / "adapter_config.json").is_file()):
                raise EvalInputError(f"model {name}: no LoRA adapter in {a} (expected adapter/adapter_config.json)")
    tok = load_tokenizer(ctx.inputs["tokenize"], device=resolve_device(cfg.run.device),
                         batch_size=cfg.tokenize.batch_size)
    tok_src = str(ctx.inputs["tokenize"] / "tokenizer.json")
    meta = read_json(ctx.inputs["unitlm"] / "unitlm.json")
    if meta.get("n_units") is not None:  # cheap check before any model loads
        check_unit_counts(meta["n_units"], tok.n_units, str(ctx.inputs["unitlm"] / "unitlm.json"), tok_src)
    lm = _load(ctx, [])
    check_unit_counts(lm.n_units, tok.n_units, lm.source, tok_src)
    context = lm.max_context()
    units, tok_s = _tokenized(ctx, tok, benches)
    suite_units, suite_tok_s = _tokenized(ctx, tok, suites)
    gen = GenerationSetup.build(ctx) if cfg.eval.n_prompts > 0 else None

    results: dict[str, Any] = {"models": {},
                               "dropped_pairs": {k: len(b.dropped) for k, b in benches.items()},
                               "timing": {"tokenize_benchmarks_s": round(tok_s, 2),
                                          "tokenize_suites_s": round(suite_tok_s, 2)},
                               "salmon": info.get("salmon"), "prosaudit": info.get("prosaudit"),
                               "multispeaker": info.get("multispeaker")}
    with_gen = generation_models(models, cfg.eval.generation_models)
    for name, adapters in models.items():
        done, rejected_file = ctx.out / name / "model.json", ctx.out / name / "rejects.jsonl"
        if done.is_file():  # its rejects are this attempt's too
            results["models"][name] = read_json(done)
            ctx.rejects.replay(read_jsonl(rejected_file) if rejected_file.is_file() else [])
            continue
        lm = lm if name == "base" else _load(ctx, adapters)
        check_unit_counts(lm.n_units, tok.n_units, lm.source, tok_src)
        with ctx.rejects.capture() as rejected:
            res = _evaluate_model(ctx, name, lm, units, benches, gen if name in with_gen else None,
                                  (suite_units, suites))
        res["adapters"] = [relative_path(a, ctx.run_dir) for a in adapters]
        write_jsonl(rejected_file, rejected)
        write_json(done, res)
        results["models"][name] = res
    base_gen = ctx.out / "base" / "generations.jsonl"
    if gen is not None and cfg.eval.calibration and base_gen.is_file():
        results["calibration"] = _calibration(ctx, gen)
    results["comparisons"] = _comparisons(results["models"], cfg.eval.bootstrap, ctx.seed("compare"),
                                          generations=_generations(ctx, results["models"]))
    results["verdict"] = verdict(results)
    results["protocol"] = _protocol(cfg, benches, tok, gen, context)
    results["protocol"].update(ev_suites.protocol(cfg.eval, suites, info))
    results["demo"] = cfg.benchmarks.root is None
    write_json(ctx.out / "results.json", results)
    base = headline(results["models"]["base"]["benchmarks"])
    costs = ev_suites.seconds(results["models"]) | {"tokenize_suites_s": round(suite_tok_s, 2)}
    return {f"base_{k}": v for k, v in base.items() if v is not None} | {"models": len(models)} | costs


def raise_if_judge_failed(name: str, gen: dict, max_share: float) -> None:
    """The stage-failure rule for the judge calls of one model's generation metrics (before model.json is
    written, so that a resumed run asks the judge again)."""
    from alignslm.pipeline import StageFailed, failure_problem

    problem = failure_problem(f"evaluate ({name}: judge)", {"items_tried": gen.get("judge_tried"),
                                                            "items_failed": gen.get("judge_failed")}, max_share)
    if problem:
        raise StageFailed(problem + f"; see evaluate/{name}/generations.jsonl (reject)")


def _load(ctx: StageContext, adapters: list[Path]) -> Any:
    from alignslm.lm.unitlm import load_unitlm

    return load_unitlm(ctx.inputs["unitlm"], adapters=adapters, merge=True, support=ctx.cfg.unitlm.support,
                       device=resolve_device(ctx.cfg.run.device), dtype=ctx.cfg.unitlm.dtype)


def _evaluate_model(ctx: StageContext, name: str, lm: Any, units: dict, benches: dict, gen: Any,
                    suites: tuple[dict, dict] = ({}, {})) -> dict:
    cfg = ctx.cfg
    t0 = time.perf_counter()
    zr = {k: v for k, v in benches.items() if k not in ev_suites.one_pass(cfg.eval)}  # the rest: alignslm.eval.suites
    bench = score_benchmarks(lm, units, zr, cfg.eval.score, cfg.eval.batch_size,
                             submission_dir=ctx.out / "submissions" / name, split=cfg.benchmarks.split)
    bench.update(ev_suites.score_model(lm, units, benches, *suites, cfg.eval, ctx.out / "submissions" / name))
    ev_suites.add_comparisons(bench, benches, suites[1], cfg.eval)  # multi-speaker vs one voice, same stories
    score_s = time.perf_counter() - t0
    for bname, r in bench.items():
        write_json(ctx.out / name / f"scores_{bname.replace('/', '-')}.json", {"scores": r.pop("scores"),
                                                             "by_pair": r.pop("by_pair", None),
                                                             "per_pair": r.pop("per_pair", None)})
    out: dict[str, Any] = {"benchmarks": bench, "timing": {"score_s": round(score_s, 2)}}
    if gen is not None:
        t1 = time.perf_counter()
        out["generation"], out["examples"] = gen.evaluate(ctx, name, lm)
        raise_if_judge_failed(name, out["generation"], ctx.cfg.run.max_failed_share)
        out["timing"]["generation_s"] = round(time.perf_counter() - t1, 2)
    else:
        out["generation"], out["examples"] = None, []
    return out


# Text-level probes of outputs the chain may let through, judged on every held-out prompt as if transcribed.
PROBES = {"hallucination": "Thank you very much.", "filler": "And then, you know, it was like that.",
          "generic sentence": "The man went to the store and bought some bread."}


def calibration(ctx: StageContext, gen: Any, base_rows: list[dict], rules: Any = None) -> tuple[dict, dict]:
    """Does the signal carry sense through the whole chain?  On the held-out prompts, through the same
    vocoder, Whisper, screen and judge as the rounds: the true continuation (the utterance's own units after
    the prompt, capped at sample.max_new_units, resynthesised), the base model's samples, random units
    (corpus unigram, the true continuation's length) and text probes (PROBES, plus the prompt's last three
    words four times).  Returns (calibration_summary, rows by class).  ``rules`` overrides gen.rules."""
    import numpy as np

    from alignslm.eval.stats import calibration_summary
    from alignslm.judge.signal import judge_rows

    rules = rules or gen.rules
    cap = ctx.cfg.sample.max_new_units
    counts = np.zeros(gen.vocoder.n_units, dtype=np.float64)
    for r in read_jsonl(ctx.inputs["tokenize"] / "units.jsonl"):
        np.add.at(counts, np.asarray(r["units"], dtype=np.int64), 1.0)
    probs = counts / counts.sum()
    truth, rand, probes = [], [], {k: [] for k in [*PROBES, "repetition"]}
    for i, p in enumerate(gen.prompts):
        t = p["truth"][:cap]
        rng = np.random.default_rng(ctx.seed("calibration", p["prompt_id"]))
        base = {"prompt_id": p["prompt_id"], "k": 0, "prompt_text": gen.prompt_texts[i], "reject": None}
        truth.append({**base, "continuation": t})
        rand.append({**base, "continuation": rng.choice(len(probs), size=max(1, len(t)), p=probs).tolist()})
    saved = gen.rules
    gen.rules = rules
    try:
        gen.judge_rows(truth, "calibration/true")
        gen.judge_rows(rand, "calibration/random")
        # a probe stands for the true continuation's audio transcribed as the probe: its Whisper meta
        meta = {r["prompt_id"]: {k: r.get(k) for k in ("seconds", "avg_logprob", "no_speech_prob")} for r in truth}
        for i, p in enumerate(gen.prompts):
            last = gen.prompt_texts[i].rstrip(" .!?").split()[-3:]
            texts = {**PROBES, "repetition": " ".join(last * 4) + "." if last else "the the the the."}
            for k, text in texts.items():
                probes[k].append({"prompt_id": p["prompt_id"], "k": 0, "prompt_text": gen.prompt_texts[i],
                                  "text": text, **meta[p["prompt_id"]], "reject": None})
        judge_rows([r for v in probes.values() for r in v], gen.ppl, rules, list(gen.prompt_texts))
    finally:
        gen.rules = saved
    classes = {"true continuation": truth, "base sample": base_rows, "random units": rand, **probes}
    return calibration_summary(classes, "sense", ctx.cfg.eval.bootstrap, ctx.seed("calibration")), classes


def _calibration(ctx: StageContext, gen: Any) -> dict:
    """The calibration block (see calibration), computed once per evaluate output directory."""
    path = ctx.out / "calibration" / "calibration.json"
    if path.is_file():
        return read_json(path)
    t0 = time.perf_counter()
    summary, classes = calibration(ctx, gen, read_jsonl(ctx.out / "base" / "generations.jsonl"))
    summary["signal"] = {"metric": gen.metric, **{k: v for k, v in vars(gen.rules).items()}}
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    for name, rows in classes.items():
        if name != "base sample":
            write_jsonl(ctx.out / "calibration" / f"{name.replace(' ', '_')}.jsonl", rows)
    write_json(path, summary)
    return summary


def _generations(ctx: StageContext, models: dict) -> dict[str, list[dict]]:
    """Each model's held-out continuations (evaluate/<model>/generations.jsonl), for the paired comparisons."""
    out = {}
    for name in models:
        path = ctx.out / name / "generations.jsonl"
        if path.is_file():
            out[name] = read_jsonl(path)
    return out


def _comparisons(models: dict, n_boot: int, seed: int, generations: dict[str, list[dict]] | None = None) -> dict:
    out = {}
    base = models["base"]
    generations = generations or {}
    for name, m in models.items():
        if name == "base":
            continue
        c = compare_models(base.get("generation") or {}, m.get("generation") or {}, n_boot, seed)
        c["benchmarks"] = {k: m["benchmarks"][k]["all"] - base["benchmarks"][k]["all"]
                           for k in m["benchmarks"] if k in base["benchmarks"]}
        if "base" in generations and name in generations:
            metric = (m.get("generation") or {}).get("judge_metric", "sense")
            c["win_rate"] = paired_win_rate(generations["base"], generations[name], metric, n_boot, seed)
            c["reject_share"] = reject_share_diff(generations["base"], generations[name], metric, n_boot, seed)
        out[name] = c
    return out


def last_round(results: Mapping) -> str | None:
    """The last round's model (``round-R``) that has a comparison with the base model, or None."""
    rounds = sorted((int(k.split("-")[1]), k) for k in results.get("comparisons", {}) if k.startswith("round-"))
    return rounds[-1][1] if rounds else None


def verdict(results: Mapping) -> dict[str, Any]:
    """One line: did alignment improve the model on this run, and did the run's signal pass its calibration?

    Improved = the last round's continuations beat the base model's (same prompt, same seed; rejects lose)
    with a 95% CI above 0.5.  Worse = CI below 0.5.  Otherwise no measurable change.
    """
    name = last_round(results)
    w = (results.get("comparisons", {}).get(name) or {}).get("win_rate") if name else None
    gates = (results.get("calibration") or {}).get("gates") or {}
    passed = all(v for v in gates.values() if isinstance(v, bool)) if gates else None
    cal_txt = ("the signal passed its calibration" if passed else
               "the signal FAILED its calibration (see the report's calibration block)" if gates
               else "no signal calibration")
    if not w or w.get("mean") is None:
        return {"model": name, "improved": None, "calibration_passed": passed,
                "line": f"No paired win rate (no held-out generations of a round and the base model); {cal_txt}."}
    lo, hi, mean = w["lo"], w["hi"], w["mean"]
    state = "improved" if lo > 0.5 else "worse" if hi < 0.5 else "unchanged"
    what = {"improved": "alignment IMPROVED the model", "worse": "alignment made the model WORSE",
            "unchanged": "no measurable effect of alignment (the CI contains 0.5)"}[state]
    line = (f"{what}: {name} beats the base model in {mean:.1%} of paired held-out continuations "
            f"[95% CI {lo:.1%}, {hi:.1%}; 50% = no change; {w['pairs']} pairs, rejects lose]; {cal_txt}.")
    return {"model": name, "state": state, "improved": state == "improved", "win_rate": mean, "win_rate_ci": [lo, hi],
            "calibration_passed": passed, "line": line}


def _protocol(cfg: Config, benches: dict, tok: Any, gen: Any, context: int | None) -> dict:
    p = {"score": cfg.eval.score, "bos_eos": True, "support": cfg.unitlm.support, "split": cfg.benchmarks.split,
         "voices": {k: _voices(b) for k, b in benches.items()},
         "pairs": {k: len(b.pairs) for k, b in benches.items()},
         "tokenizer": {k: v for k, v in tok.describe().items() if isinstance(v, (str, int, float, bool))},
         "bootstrap": cfg.eval.bootstrap, "context": context}
    if gen is not None:
        p.update(gen.protocol())
    return p

