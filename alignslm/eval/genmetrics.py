"""Generation metrics on held-out prompts and their confidence intervals.

Per model (base, round-1, ...), every continuation of every held-out prompt gets a judge score (1-5, or
None when the judge reply could not be parsed), a transcript perplexity when the judge provides one, and a
bigram auto-BLEU of its transcript.  A continuation without a usable score is a *reject*: it is counted
(``reject_share``), never scored as 0.

Confidence intervals are percentile bootstraps over *prompts* (the unit of sampling: the continuations
of one prompt are not independent).  The comparison of two models uses a paired bootstrap over the prompts
both models answered, with the same prompts and the same seeds on both sides.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from alignslm.config import Config, JudgeConfig


def _finite(xs: Sequence[Any]) -> np.ndarray:
    a = np.array([float(x) for x in xs if x is not None and math.isfinite(float(x))], dtype=np.float64)
    return a


def bootstrap_ci(values: Sequence[float], n_boot: int = 2000, seed: int = 0,
                 alpha: float = 0.05) -> dict[str, float | None]:
    """Mean with a percentile bootstrap (1 - alpha) CI. None values are ignored (and counted)."""
    x = _finite(values)  # (N,)
    out: dict[str, float | None] = {"mean": None, "lo": None, "hi": None, "n": int(x.size)}
    if x.size == 0:
        return out
    out["mean"] = float(x.mean())
    if x.size == 1 or n_boot <= 0:
        out["lo"] = out["hi"] = out["mean"]
        return out
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_boot, x.size))  # (B, N)
    means = x[idx].mean(axis=1)  # (B,)
    out["lo"], out["hi"] = (float(v) for v in np.quantile(means, [alpha / 2, 1 - alpha / 2]))
    return out


def paired_bootstrap(a: Mapping[str, float], b: Mapping[str, float], n_boot: int = 2000, seed: int = 0,
                     alpha: float = 0.05) -> dict[str, Any]:
    """Mean of b - a over the keys both have a value for, with a paired percentile bootstrap CI.

    ``p_le_0`` is the bootstrap share of resamples whose mean difference is <= 0 (a one-sided p-value for
    "b improves over a").
    """
    keys = sorted(k for k in a if k in b and a[k] is not None and b[k] is not None
                  and math.isfinite(a[k]) and math.isfinite(b[k]))
    out: dict[str, Any] = {"diff": None, "lo": None, "hi": None, "p_le_0": None, "n": len(keys)}
    if not keys:
        return out
    d = np.array([b[k] - a[k] for k in keys], dtype=np.float64)  # (N,)
    out["diff"] = float(d.mean())
    if d.size == 1 or n_boot <= 0:
        out["lo"] = out["hi"] = out["diff"]
        return out
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(n_boot, d.size))].mean(axis=1)  # (B,)
    out["lo"], out["hi"] = (float(v) for v in np.quantile(means, [alpha / 2, 1 - alpha / 2]))
    out["p_le_0"] = float((means <= 0).mean())
    return out


def per_prompt_mean(rows: Sequence[Mapping], field: str) -> dict[str, float]:
    """prompt_id -> mean of ``field`` over that prompt's continuations with a value (None skipped)."""
    acc: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        v = r.get(field)
        if v is not None and math.isfinite(float(v)):
            acc[str(r["prompt_id"])].append(float(v))
    return {k: float(np.mean(v)) for k, v in acc.items()}


def log_perplexity_rows(rows: Sequence[Mapping]) -> list[dict]:
    """Rows with ``log_perplexity`` = ln(perplexity) (the judge's mean NLL per token) where a perplexity exists."""
    out = []
    for r in rows:
        v = r.get("perplexity")
        ok = v is not None and math.isfinite(float(v)) and float(v) > 0
        out.append({**r, "log_perplexity": math.log(float(v)) if ok else None})
    return out


JUDGE_FIELDS = {"score": "score", "perplexity": "log_perplexity", "sense": "sense"}
HIGHER_IS_BETTER = {"score": True, "perplexity": False, "sense": True}


def summarize_generations(rows: Sequence[Mapping], n_boot: int = 2000, seed: int = 0,
                          prompt_wer: float | None = None, judge_metric: str = "score") -> dict[str, Any]:
    """Metrics of one model's continuations.

    ``rows``: one per continuation with prompt_id, k, score (float|None), perplexity (float|None),
    autobleu (float|None), reject (str|None: why the continuation has no usable judgement).
    ``judge_metric`` names the judge's signal (the one the pairs were built from): ``score`` (1-5, higher is
    better), ``perplexity`` (the judge LM's perplexity of the transcript given the prompt's; compared as
    ln(perplexity), lower is better) or ``sense`` (alignslm.judge.signal, higher is better).  ``judge`` holds that
    metric's per-prompt mean with its CI.
    """
    if judge_metric not in JUDGE_FIELDS:
        raise ValueError(f"judge_metric={judge_metric!r}: expected one of {sorted(JUDGE_FIELDS)}")
    n = len(rows)
    rows = log_perplexity_rows(rows)
    field_ = JUDGE_FIELDS[judge_metric]
    rejected = [r for r in rows if r.get("reject") or r.get(field_) is None]
    per_prompt = {f: per_prompt_mean(rows, f) for f in ("score", "perplexity", "log_perplexity", "autobleu", "sense")}
    ppl = _finite([r.get("perplexity") for r in rows])
    out = {
        "n_prompts": len({str(r["prompt_id"]) for r in rows}),
        "n_continuations": n,
        "judge_metric": judge_metric,
        "judge": bootstrap_ci(list(per_prompt[field_].values()), n_boot, seed),
        "judge_score": bootstrap_ci(list(per_prompt["score"].values()), n_boot, seed),
        "perplexity": bootstrap_ci(list(per_prompt["perplexity"].values()), n_boot, seed) if ppl.size else None,
        "log_perplexity": (bootstrap_ci(list(per_prompt["log_perplexity"].values()), n_boot, seed)
                           if ppl.size else None),
        "perplexity_median": float(np.median(ppl)) if ppl.size else None,
        "autobleu": bootstrap_ci(list(per_prompt["autobleu"].values()), n_boot, seed),
        "reject_share": (len(rejected) / n) if n else None,
        "n_rejects": len(rejected),
        "prompt_wer": prompt_wer,
        "per_prompt": per_prompt,
    }
    return out


def summarize_genppl(rows: Sequence[Mapping], n_boot: int = 2000, seed: int = 0) -> dict:
    """exp of the bootstrap CI of the per-prompt mean ln GenPPL (a geometric mean with its CI)."""
    per = per_prompt_mean(rows, "log_genppl")
    ci = bootstrap_ci(list(per.values()), n_boot, seed)
    out = {k: (math.exp(ci[k]) if ci[k] is not None else None) for k in ("mean", "lo", "hi")}
    out.update(n=ci["n"], missing=sum(r.get("log_genppl") is None for r in rows), log=ci)
    return out


def compare_models(base: Mapping[str, Any], other: Mapping[str, Any], n_boot: int = 2000,
                   seed: int = 0) -> dict[str, Any]:
    """Paired bootstrap of ``other - base`` per metric over the prompts both models answered.

    ``judge_gain`` is the improvement in the judge's own metric, signed so that > 0 is better: ``other -
    base`` for a 1-5 score, ``base - other`` for ln(perplexity); its ``p_le_0`` is the one-sided bootstrap
    p-value of "no improvement".
    """
    out: dict[str, Any] = {}
    for f in ("score", "perplexity", "log_perplexity", "autobleu", "sense", "log_genppl"):
        a = base.get("per_prompt", {}).get(f, {})
        b = other.get("per_prompt", {}).get(f, {})
        out[f] = paired_bootstrap(a, b, n_boot, seed)
    metric = other.get("judge_metric", base.get("judge_metric", "score"))
    f = JUDGE_FIELDS.get(metric, "score")
    a = base.get("per_prompt", {}).get(f, {})
    b = other.get("per_prompt", {}).get(f, {})
    out["judge_metric"] = metric
    higher = HIGHER_IS_BETTER.get(metric, True)
    out["judge_gain"] = paired_bootstrap(a, b, n_boot, seed) if higher else paired_bootstrap(b, a, n_boot, seed)
    return out


def _outcome(a: Mapping, b: Mapping, key: str) -> float:
    """1 if a beats b, 0.5 for a tie, 0 if b wins.  A rejected item loses against an accepted one; two
    rejects tie; otherwise the higher ``key`` wins."""
    va = None if a.get("reject") else a.get(key)
    vb = None if b.get("reject") else b.get(key)
    if va is None or vb is None:
        return 0.5 if va is None and vb is None else (1.0 if vb is None else 0.0)
    return 1.0 if va > vb else 0.5 if va == vb else 0.0


def win_rate(a_rows: Sequence[Mapping], b_rows: Sequence[Mapping], key: str = "sense", n_boot: int = 2000,
             seed: int = 0) -> dict[str, Any]:
    """How often a prompt's ``a`` row beats its ``b`` rows (every a x b pair of the same prompt_id; ties
    half, rejects lose): the mean over prompts of each prompt's share, with a bootstrap CI over prompts."""
    by_a: dict[str, list[Mapping]] = defaultdict(list)
    for r in a_rows:
        by_a[str(r["prompt_id"])].append(r)
    per: dict[str, list[float]] = defaultdict(list)
    for r in b_rows:
        for x in by_a.get(str(r["prompt_id"]), []):
            per[str(r["prompt_id"])].append(_outcome(x, r, key))
    out = bootstrap_ci([float(np.mean(v)) for v in per.values()], n_boot, seed)
    out["pairs"] = sum(len(v) for v in per.values())
    return out


def paired_win_rate(base_rows: Sequence[Mapping], other_rows: Sequence[Mapping], judge_metric: str = "sense",
                    n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """How often ``other``'s continuation beats ``base``'s for the same prompt and continuation index ``k``
    (the same sampling seed on both sides).  A rejected continuation loses against an accepted one, two
    rejects tie, ties count half, so a model cannot win by having more of its outputs rejected.  Mean over
    prompts of each prompt's share, with a percentile bootstrap CI over prompts; 0.5 = no difference.
    """
    field_ = JUDGE_FIELDS[judge_metric]
    sign = 1.0 if HIGHER_IS_BETTER[judge_metric] else -1.0

    def keyed(rows: Sequence[Mapping]) -> dict[tuple[str, int], dict]:
        out = {}
        for r in log_perplexity_rows(rows):
            v = r.get(field_)
            ok = not r.get("reject") and v is not None and math.isfinite(float(v))
            out[(str(r["prompt_id"]), int(r.get("k", 0)))] = {"reject": None if ok else "rejected",
                                                                "v": sign * float(v) if ok else None}
        return out

    a, b = keyed(base_rows), keyed(other_rows)
    per: dict[str, list[float]] = defaultdict(list)
    for key in sorted(set(a) & set(b)):
        per[key[0]].append(_outcome(b[key], a[key], "v"))
    out = bootstrap_ci([float(np.mean(v)) for v in per.values()], n_boot, seed)
    out["pairs"] = sum(len(v) for v in per.values())
    out["unpaired"] = len(set(a) ^ set(b))
    return out


def reject_share_diff(base_rows: Sequence[Mapping], other_rows: Sequence[Mapping], judge_metric: str = "sense",
                      n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Paired bootstrap over prompts of ``other``'s reject share minus ``base``'s (> 0: more rejects); a
    reject is what ``summarize_generations`` counts as one (a reason, or no value of the judge metric)."""
    field_ = JUDGE_FIELDS[judge_metric]

    def share(rows: Sequence[Mapping]) -> dict[str, float]:
        acc: dict[str, list[float]] = defaultdict(list)
        for r in log_perplexity_rows(rows):
            acc[str(r["prompt_id"])].append(1.0 if r.get("reject") or r.get(field_) is None else 0.0)
        return {k: float(np.mean(v)) for k, v in acc.items()}

    return paired_bootstrap(share(base_rows), share(other_rows), n_boot, seed)


def class_summary(rows: Sequence[Mapping], key: str = "sense", n_boot: int = 2000, seed: int = 0) -> dict:
    """Accepted share and the mean ``key`` (with a bootstrap CI) of one class of outputs."""
    vals = [r.get(key) for r in rows if not r.get("reject") and r.get(key) is not None]
    out = bootstrap_ci(vals, n_boot, seed)
    out["accepted"] = len(vals) / len(rows) if rows else None
    out["n_rows"] = len(rows)
    return out


def calibration_summary(classes: Mapping[str, Sequence[Mapping]], key: str = "sense", n_boot: int = 2000,
                        seed: int = 0, truth: str = "true continuation") -> dict[str, Any]:
    """The calibration block: per class (truth, base samples, random units, probes) the accepted share and
    mean signal; the truth's win rate against every other class; and whether the gates hold (truth beats
    base samples in >= 80% of pairs, random units in >= 95%, and no other class that the chain lets through
    has a higher mean than the truth)."""
    t = classes[truth]
    out: dict[str, Any] = {"key": key, "classes": {k: class_summary(v, key, n_boot, seed) for k, v in classes.items()},
                           "wins": {k: win_rate(t, v, key, n_boot, seed) for k, v in classes.items() if k != truth}}
    if "base sample" in classes and "random units" in classes:  # is the base model worth aligning? (>= 0.90)
        out["base_vs_random"] = win_rate(classes["base sample"], classes["random units"], key, n_boot, seed)
    tm = out["classes"][truth]["mean"]
    beaten_by = [k for k, c in out["classes"].items()
                 if k != truth and c["mean"] is not None and tm is not None and c["mean"] >= tm]
    w = out["wins"]
    out["gates"] = {"vs_base_ge_0.80": (w.get("base sample") or {}).get("mean", 0) is not None
                    and (w.get("base sample") or {}).get("mean", 0) >= 0.80,
                    "vs_random_ge_0.95": (w.get("random units") or {}).get("mean", 0) is not None
                    and (w.get("random units") or {}).get("mean", 0) >= 0.95,
                    "no_class_above_truth": not beaten_by, "classes_above_truth": beaten_by}
    return out


# --------------------------------------------------------------------------------------------------
# Generation on held-out prompts, through the pipeline's own components
# --------------------------------------------------------------------------------------------------


def held_out_prompts(manifest: Sequence[Mapping], units: Mapping[str, Mapping], frame_rate: float, n: int,
                     seconds: float, word_boundary: bool, rejects: Any = None) -> list[dict]:
    """Up to ``n`` prompts from the test split, then dev (sorted by utt_id): never from train.

    Utterances that cannot give a prompt are recorded in ``rejects`` (when given) and skipped.
    """
    from alignslm.lm.prompts import PromptError, make_prompt

    rank = {"test": 0, "dev": 1}
    pool = sorted((r for r in manifest if r.get("split") in rank), key=lambda r: (rank[r["split"]], r["utt_id"]))
    out: list[dict] = []
    for r in pool:
        if len(out) >= n:
            break
        u = units.get(r["utt_id"])
        if u is None:
            continue  # rejected by the tokenize stage (its rejects.jsonl says why)
        try:
            p = make_prompt(u["units"], u.get("durations"), frame_rate, seconds, r.get("words"), word_boundary)
        except PromptError as e:
            if rejects is not None:
                rejects.add(r["utt_id"], f"prompt: {e}")
            continue
        words_ = [w["word"] for w in (r.get("words") or []) if float(w["end"]) <= p.end_s + 1e-6]
        out.append({"prompt_id": r["utt_id"], "prompt": p.units, "prompt_end_s": p.end_s, "path": r["path"],
                    "split": r["split"], "reference": " ".join(words_) if words_ else None,
                    "at_word": p.at_word_boundary,
                    "truth": [int(x) for x in u["units"][len(p.units):]]})  # the true continuation
    return out


class GenerationSetup:
    """Held-out prompts + the model-independent components (vocoder, ASR, judge), loaded once.

    :meth:`evaluate` samples ``sample.n_continuations`` continuations per prompt with the given unit LM and
    fixed seeds (the same for every model), vocodes, transcribes and judges them (alignslm.lm.sampler,
    alignslm.vocoder, alignslm.speech.asr, alignslm.judge), and returns (summary, examples).
    """

    def __init__(self, cfg: Config, prompts: list[dict], vocoder: Any, asr: Any, backend: Any, out: Any,
                 seeds: list[int]):
        from alignslm.judge import LLMScoreJudge, PerplexityJudge
        from alignslm.judge.signal import rules_from

        self.cfg, self.prompts, self.vocoder, self.asr, self.out = cfg, prompts, vocoder, asr, out
        self.seeds = seeds  # prompt-major, one per continuation
        self.rules = rules_from(cfg.judge)  # the screen and the signal, as in the judge stage
        self.metric = signal_metric(cfg.judge)  # the judge's signal, the one the pairs were built from
        self.judge = None  # the 1-5 score: in score mode, or on request (eval.also_score; slow on a CPU)
        if self.metric == "score" or cfg.eval.also_score:
            self.judge = LLMScoreJudge(backend, expected=cfg.judge.expected_score,
                                       max_new_tokens=cfg.judge.max_new_tokens)
        self.ppl = PerplexityJudge(backend)
        self.prompt_texts, self.prompt_wer, self.prompt_paths = self._prompt_side()

    @classmethod
    def build(cls, ctx: Any) -> GenerationSetup:
        from alignslm.judge import load_backend
        from alignslm.rundir import read_json, read_jsonl
        from alignslm.speech.asr import asr_device, load_asr
        from alignslm.vocoder import load_vocoder

        cfg = ctx.cfg
        manifest = [{**r, "path": str(ctx.inputs["corpus"] / r["path"])}  # paths relative to the corpus dir
                    for r in read_jsonl(ctx.inputs["corpus"] / "manifest.jsonl")]
        units = {r["utt_id"]: r for r in read_jsonl(ctx.inputs["tokenize"] / "units.jsonl")}
        frame_rate = float(read_json(ctx.inputs["tokenize"] / "tokenizer.json")["frame_rate"])
        prompts = held_out_prompts(manifest, units, frame_rate, cfg.eval.n_prompts, cfg.sample.prompt_seconds,
                                   cfg.sample.word_boundary, ctx.rejects)
        if not prompts:
            raise ValueError(f"no held-out (test/dev) utterance of {ctx.inputs['corpus']}/manifest.jsonl gives "
                             f"a {cfg.sample.prompt_seconds} s prompt; lower sample.prompt_seconds or set "
                             "eval.n_prompts=0")
        n = cfg.sample.n_continuations
        seeds = [ctx.seed("generation", p["prompt_id"], k) for p in prompts for k in range(n)]
        from alignslm.impl import resolve_device

        dev = resolve_device(cfg.run.device)
        return cls(cfg, prompts, load_vocoder(ctx.inputs["vocoder"], device=dev),
                   load_asr(cfg.asr, device=asr_device(cfg.run.device)),
                   load_backend(cfg.judge, ctx.out / "judge_cache.jsonl", device=dev, cache_dir=cfg.run.cache_dir),
                   ctx.out, seeds)

    def protocol(self) -> dict:
        s = self.cfg.sample
        return {"n_prompts": len(self.prompts), "n_continuations": s.n_continuations,
                "prompt_split": "/".join(sorted({p["split"] for p in self.prompts})),
                "prompt_seconds": s.prompt_seconds,
                "sampling": {"temperature": s.temperature, "top_k": s.top_k, "top_p": s.top_p,
                             "max_new_units": s.max_new_units},
                "judge": f"{self.cfg.judge.backend}:{self.cfg.judge.model_path or 'SmolLM2-135M-Instruct'} "
                         + (f"({'expected digit score' if self.cfg.judge.expected_score else 'parsed score'})"
                            if self.metric == "score" else "(perplexity of the transcript given the prompt's)"),
                "judge_metric": self.metric,
                "genppl": {"lm": f"{self.cfg.judge.backend}:{self.cfg.judge.model_path or 'SmolLM2-135M-Instruct'}",
                           "context": self.rules.neutral} if self.cfg.eval.genppl else None,
                "prompt_wer_n": sum(p["reference"] is not None for p in self.prompts),
                "prompts_at_word_end": sum(bool(p.get("at_word")) for p in self.prompts)}

    def _prompt_side(self) -> tuple[list[str], float | None, list[str]]:
        """Transcripts of the original prompt audio (the judge's context), cut, written and transcribed as the
        round's vocode and transcribe stages do, and the resynthesis WER."""
        from alignslm.speech.audio import write_prompt_wav
        from alignslm.textmetrics import wer

        paths = []
        for p in self.prompts:
            path = f"prompts/{p['prompt_id']}.wav"  # relative to the evaluate directory
            write_prompt_wav(p["path"], p["prompt_end_s"], self.out / path)
            paths.append(path)
        texts = [r.text for r in self.asr.transcribe_paths([self.out / path for path in paths])]
        with_ref = [i for i, p in enumerate(self.prompts) if p["reference"]]
        pwer = None
        if with_ref:
            hyps = self.asr.transcribe(self._vocode([self.prompts[i]["prompt"] for i in with_ref]))
            pwer = wer([self.prompts[i]["reference"] for i in with_ref], hyps)
        return texts, pwer, paths

    def _vocode(self, units_list: list[list[int]]) -> list:
        from alignslm.vocoder import vocode_16k

        return vocode_16k(self.vocoder, units_list, self.cfg.vocoder.batch_size, self.cfg.vocoder.threads)

    def evaluate(self, ctx: Any, name: str, lm: Any) -> tuple[dict, list[dict]]:
        from alignslm.eval.genppl import add_genppl
        from alignslm.judge import judge_asked
        from alignslm.judge.rubric import score_histogram
        from alignslm.lm.sampler import SamplingParams, generate

        s, n = self.cfg.sample, self.cfg.sample.n_continuations
        params = SamplingParams(temperature=s.temperature, top_k=s.top_k, top_p=s.top_p, max_new=s.max_new_units)
        conts = generate(lm, [p["prompt"] for p in self.prompts], n=n, params=params, seeds=self.seeds,
                         batch_size=s.batch_size)  # [P][n] unit lists
        rows = [{"prompt_id": p["prompt_id"], "k": k, "seed": self.seeds[i * n + k], "continuation": conts[i][k],
                 "prompt_text": self.prompt_texts[i], "prompt_path": self.prompt_paths[i], "reject": None}
                for i, p in enumerate(self.prompts) for k in range(n)]
        self.judge_rows(rows, name)
        genppl = (add_genppl(rows, self.ppl.backend, self.rules.neutral, self.rules.kind)  # alignslm.eval.genppl
                  if self.cfg.eval.genppl else None)
        for r in rows:
            if r["reject"]:
                ctx.rejects.add(f"{name}/{r['prompt_id']}/{r['k']}", r["reject"])
        from alignslm.rundir import write_jsonl

        write_jsonl(self.out / name / "generations.jsonl", rows)
        summary = summarize_generations(rows, self.cfg.eval.bootstrap, 0, self.prompt_wer, self.metric)
        summary["score_histogram"] = score_histogram([r.get("score") for r in rows])  # alignslm.judge.rubric
        if genppl is not None:
            summary["genppl"] = {**summarize_genppl(rows, self.cfg.eval.bootstrap, 0), **genppl}
            summary["per_prompt"]["log_genppl"] = per_prompt_mean(rows, "log_genppl")
        asked = [r for r in rows if judge_asked(r)]  # as the judge stage counts (run.max_failed_share)
        summary["judge_tried"] = len(asked)  # sent to the judge; judge_failed: it gave nothing back
        summary["judge_failed"] = sum((r["reject"] or "").startswith("judge:") for r in asked)
        examples = [r for r in rows if r["k"] == 0][: self.cfg.eval.n_examples]
        return summary, [{k: r.get(k) for k in ("prompt_id", "k", "prompt_text", "text", "score", "perplexity",
                                                "path", "prompt_path")} for r in examples]

    def judge_rows(self, rows: list[dict], name: str) -> list[dict]:
        """Vocode, transcribe and judge rows (prompt_id, k, continuation units, prompt_text) in place, with the
        round stages' component functions and filters; audio goes to ``<out>/<name>/audio``."""
        self._audio_and_text(rows, name)
        self._judge(rows)
        return rows

    def _audio_and_text(self, rows: list[dict], name: str) -> None:
        """The vocode and transcribe stages' path: alignslm.vocoder.unit_problem / vocode_16k, a 16-bit wav,
        Whisper on that file, alignslm.speech.asr.transcript_error."""
        from alignslm.judge import transcription_reject
        from alignslm.speech.asr import transcript_error
        from alignslm.speech.audio import write_wav
        from alignslm.vocoder import unit_problem

        for r in rows:
            r["reject"] = r.get("reject") or unit_problem(r["continuation"], self.vocoder.n_units)
        ok = [r for r in rows if not r["reject"]]
        for r, w in zip(ok, self._vocode([r["continuation"] for r in ok])):
            r["path"] = f"{name}/audio/{r['prompt_id']}_k{r['k']}.wav"  # relative to the evaluate directory
            write_wav(self.out / r["path"], w)
        results = self.asr.transcribe_paths([self.out / r["path"] for r in ok]) if ok else []
        for r, a in zip(ok, results):
            r["text"] = a.text
            r["seconds"], r["avg_logprob"], r["no_speech_prob"] = a.seconds, a.avg_logprob, a.no_speech_prob
            r["reject"] = transcription_reject(transcript_error(a), a.text)

    def _judge(self, rows: list[dict]) -> None:
        """The judge stage's path (alignslm.judge.judge_transcripts: auto-BLEU, screen, perplexities, sense),
        plus, in score mode or with eval.also_score, the 1-5 score."""
        from alignslm.judge import judge_transcripts

        judge_transcripts(rows, self.ppl, self.judge, self.rules, list(self.prompt_texts),
                          score_required=self.metric == "score")


def signal_metric(judge_cfg: JudgeConfig) -> str:
    """The metric the pairs are built from: score (1-5), perplexity (ln-ppl) or sense (alignslm.judge.signal)."""
    if judge_cfg.mode == "score":
        return "score"
    return "perplexity" if judge_cfg.signal == "lnppl" else "sense"
