"""Does the preference signal carry sense through the whole chain?  Signal variants on one demo run.

    python experiments/signal_calibration.py RUN_DIR [--out DIR] [--n-prompts 100]

Needs RUN_DIR's corpus, tokenize, unitlm and vocoder stages.  Once, through the evaluate stage's own code
(alignslm.stages.evaluate.calibration: same prompts, seeds, vocoder, Whisper and judge), it collects for
every held-out prompt: the true continuation resynthesised from its units, the base model's
sample.n_continuations samples, random units, and text probes, each with its transcript, Whisper's
confidence and the judge's ln-perplexities given the prompt and given nothing (``DIR/rows.json``; reused on
a rerun).  Then every variant of alignslm.judge.signal (screen + score) is applied to those rows and scored with
the report's calibration block (alignslm.eval.stats.calibration_summary): ``DIR/variants.json`` and a
markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from alignslm.config import JudgeConfig  # noqa: E402
from alignslm.judge.signal import SignalRules, contrast_prompts, rules_from, screen, sense  # noqa: E402
from alignslm.textmetrics import words  # noqa: E402

DEFAULT = rules_from(JudgeConfig())  # the config is the one place for the defaults
OFF = replace(DEFAULT, kind="lnppl", hallucinations=False, max_autobleu=1.0)  # no screen, plain ln-ppl
NEUTRAL = DEFAULT.neutral
ALL = replace(OFF, kind="pmi", neutral="")  # no screen, all perplexities: every variant computed afterwards

SCREEN = DEFAULT  # the default screen: hallucination/filler list, loops; Whisper's confidence off
WHISPER = dict(max_no_speech=0.5, min_avg_logprob=-1.0)  # faster-whisper's own thresholds

VARIANTS: dict[str, SignalRules] = {
    "A lnppl, no screen (the demo's signal before)": OFF,
    "B pmi vs empty context, no screen": replace(OFF, kind="pmi", neutral=""),
    "C pmi vs neutral context, no screen": replace(OFF, kind="pmi"),
    "D pmi_words vs neutral, no screen": replace(OFF, kind="pmi_words"),
    "E lnppl + screen": replace(SCREEN, kind="lnppl"),
    "F pmi vs empty + screen": replace(SCREEN, kind="pmi", neutral=""),
    "G pmi vs neutral + screen": replace(SCREEN, kind="pmi"),
    "H pmi_words vs neutral + screen": replace(SCREEN, kind="pmi_words"),
    "I H + Whisper confidence (no-speech 0.5, log-prob -1.0)": replace(SCREEN, kind="pmi_words", **WHISPER),
    "J H + words/s >= 1.5": replace(SCREEN, kind="pmi_words", min_words_per_s=1.5),
    "K contrast (other prompts) + screen": replace(SCREEN, kind="contrast"),
    "L contrast_words (other prompts) + screen": replace(SCREEN, kind="contrast_words"),
    "M contrast_words, no screen": replace(OFF, kind="contrast_words"),
    "N pmi_asr (pmi + 2 x Whisper avg log-prob) + screen (default)": replace(SCREEN, kind="pmi_asr"),
    "O pmi_asr, weight 4, + screen": replace(SCREEN, kind="pmi_asr", asr_weight=4.0),
    "P Whisper avg log-prob alone (pmi_asr, weight 1000) + screen": replace(SCREEN, kind="pmi_asr", asr_weight=1000.0),
}


def collect(run_dir: Path, out: Path, n_prompts: int) -> dict[str, list[dict]]:
    from alignslm.config import load_config
    from alignslm.config import replace as cfg_replace
    from alignslm.eval.generation import GenerationSetup
    from alignslm.rundir import StageContext, read_jsonl
    from alignslm.stages.evaluate import _load, calibration

    cfg = cfg_replace(load_config(run_dir / "config.yaml"), **{"eval.n_prompts": n_prompts, "run.device": "cpu"})
    inputs = {k: run_dir / k for k in ("corpus", "tokenize", "unitlm", "vocoder")}
    ctx = StageContext("evaluate", cfg, run_dir, out, inputs=inputs, progress=False)
    t0 = time.time()
    gen = GenerationSetup.build(ctx)
    gen.rules = ALL
    lm = _load(ctx, [])
    gen.evaluate(ctx, "base", lm)
    base = read_jsonl(out / "base" / "generations.jsonl")
    _, classes = calibration(ctx, gen, base, rules=ALL)
    todo = [r for rows in classes.values() for r in rows
            if not r.get("asr_reject") and (r.get("text") or "").strip() and r.get("prompt_text")]
    texts = [r["text"] for r in todo]
    for r, res in zip(todo, gen.ppl.score([NEUTRAL] * len(todo), texts)):
        r["perplexity_neutral"] = res.perplexity
    others = contrast_prompts(list(gen.prompt_texts), DEFAULT.contrast_k)
    for j in range(DEFAULT.contrast_k):  # the contrast kinds' baselines, as alignslm.judge.signal computes them
        idx = [i for i, r in enumerate(todo) if len(others.get(r["prompt_text"], [])) > j]
        res = gen.ppl.score([others[todo[i]["prompt_text"]][j] for i in idx], [texts[i] for i in idx])
        for i, x in zip(idx, res):
            todo[i].setdefault("perplexity_contrast", []).append(x.perplexity)
    logging.info("collected in %.0f s", time.time() - t0)
    keep = ("prompt_id", "k", "text", "prompt_text", "seconds", "avg_logprob", "no_speech_prob", "asr_reject",
            "perplexity", "perplexity_uncond", "perplexity_neutral", "perplexity_contrast")
    return {c: [{k: r.get(k) for k in keep} for r in rows] for c, rows in classes.items()}


def apply(rows: list[dict], rules: SignalRules) -> list[dict]:
    """The rows as the signal ``rules`` sees them: reject (ASR's or the screen's) and sense."""
    out = []
    for r in rows:
        why = r.get("asr_reject") or screen(r.get("text") or "", rules, r.get("seconds"), r.get("avg_logprob"),
                                            r.get("no_speech_prob"))
        lp = math.log(r["perplexity"]) if r.get("perplexity") else None
        if rules.kind.startswith("contrast"):
            c = [math.log(v) for v in (r.get("perplexity_contrast") or [])[:rules.contrast_k] if v]
            lu = sum(c) / len(c) if c else None
        else:
            base = r.get("perplexity_uncond") if rules.neutral == "" else r.get("perplexity_neutral")
            lu = math.log(base) if base else None
        s = None if why else sense(lp, lu, len(words(r.get("text") or "")), rules, r.get("avg_logprob"))
        out.append({**r, "reject": why or (None if s is not None else "no perplexity"), "sense": s})
    return out


def table(results: dict[str, dict]) -> str:
    lines = ["| variant | true > base [95% CI] | true > random [95% CI] | accepted: true / base / random | "
             "classes with a mean >= the truth's | gates |", "|---|---|---|---|---|---|"]
    for name, res in results.items():
        w, c, g = res["wins"], res["classes"], res["gates"]

        def ci(d: dict) -> str:
            return f"{d['mean']:.3f} [{d['lo']:.3f}, {d['hi']:.3f}]" if d.get("mean") is not None else "n/a"

        acc = " / ".join(f"{c[k]['accepted']:.2f}" for k in ("true continuation", "base sample", "random units"))
        ok = "all" if all(v is True for k, v in g.items() if k != "classes_above_truth") else "no"
        lines.append(f"| {name} | {ci(w['base sample'])} | {ci(w['random units'])} | {acc} | "
                     f"{', '.join(g['classes_above_truth']) or 'none'} | {ok} |")
    return "\n".join(lines)


def class_table(res: dict) -> str:
    lines = ["| class | accepted | mean signal [95% CI] | truth wins [95% CI] |", "|---|---|---|---|"]
    for k, c in res["classes"].items():
        w = res["wins"].get(k)
        m = f"{c['mean']:.3f} [{c['lo']:.3f}, {c['hi']:.3f}]" if c.get("mean") is not None else "n/a"
        wt = f"{w['mean']:.3f} [{w['lo']:.3f}, {w['hi']:.3f}]" if w and w.get("mean") is not None else "-"
        lines.append(f"| {k} | {c['accepted']:.2f} | {m} | {wt} |")
    return "\n".join(lines)


def main() -> None:
    from alignslm.eval.stats import calibration_summary

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--out", type=Path, default=None, help="default: RUN_DIR/../<run name>-calibration")
    ap.add_argument("--n-prompts", type=int, default=100)
    ap.add_argument("--bootstrap", type=int, default=2000)
    ap.add_argument("--rows", type=Path, default=None, help="use these collected rows (default: DIR/rows.json)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    out = args.out or args.run_dir.parent / f"{args.run_dir.name}-calibration"
    out.mkdir(parents=True, exist_ok=True)
    cache = args.rows or out / "rows.json"
    if cache.is_file():
        rows = json.loads(cache.read_text())
    else:
        rows = collect(args.run_dir.resolve(), out, args.n_prompts)
        cache.write_text(json.dumps(rows))
    truth = {r["prompt_id"]: r for r in rows["true continuation"]}
    for c in ("hallucination", "filler", "generic sentence", "repetition"):  # rows collected before the probes had it
        for r in rows.get(c, []):
            if r.get("avg_logprob") is None:
                t = truth[r["prompt_id"]]
                r.update({k: t.get(k) for k in ("seconds", "avg_logprob", "no_speech_prob")})
    results = {name: calibration_summary({k: apply(v, rules) for k, v in rows.items()}, "sense", args.bootstrap)
               for name, rules in VARIANTS.items()}
    (out / "variants.json").write_text(json.dumps(results, indent=1))
    print(table(results))
    for name, res in results.items():
        print(f"\n### {name}\n\n{class_table(res)}")


if __name__ == "__main__":
    main()
