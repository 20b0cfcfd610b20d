"""The report: ``report/results.json``, ``report/report.md``, ``report/headline.md``, PNG plots and
``report/index.html`` (one offline page with the tables, plots and audio: alignslm.eval.html).

Inputs are the evaluate stage's ``results.json`` (per model: benchmarks + generation metrics) and the
round directories (``round-N/judge/judgments.jsonl`` for the judge-score histograms,
``round-N/train/train_log.jsonl`` for the reward accuracy during DPO).  Plots use matplotlib's Agg backend.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from alignslm import logger
from alignslm.eval.continuation import report_table as continuation_table
from alignslm.eval.html import write_index
from alignslm.eval.multispeaker import report_table as multispeaker_table
from alignslm.eval.prosaudit import report_table as prosaudit_table
from alignslm.eval.salmon import report_table as salmon_table
from alignslm.eval.suites import protocol_lines
from alignslm.eval.tables import Column, bench, benchmark, model_table
from alignslm.eval.tables import ci as _ci
from alignslm.eval.tables import num as _num
from alignslm.eval.tables import pct as _pct
from alignslm.judge.rubric import score_histogram
from alignslm.rundir import atomic_path, read_json, read_jsonl, write_json, write_text

BENCH_COLS = (("sWUGGY", "lexical"), ("sBLIMP", "syntactic"), ("sSC", "ssc"), ("tSC", "tsc"))
ACC_KEYS = ("rewards/accuracies", "rewards/accuracy", "reward_accuracy")

NOT_COMPARABLE = (
    "**These are demo numbers.** The demo world (eSpeak NG stories, mini benchmarks built from its own "
    "vocabulary, a small unit LM trained here, SmolLM2-135M as the judge) is not LibriSpeech, ZeroSpeech, "
    "Spoken StoryCloze or GPT-4o: its numbers are **not comparable** with published ones (e.g. Align-SLM's "
    "77.9 / 62.3 / 61.1 / 86.8 / 3.50 for TWIST-7B). They show that the method works end to end.")


def model_label(name: str) -> str:
    return "base" if name == "base" else name.replace("round-", "round ")


def judge_metric(results: Mapping) -> str:
    """The judge's signal in these results: score (1-5, higher is better) or perplexity (ln ppl, lower)."""
    for m in results.get("models", {}).values():
        g = m.get("generation") or {}
        if g.get("judge_metric"):
            return str(g["judge_metric"])
    return "score"


def judge_label(results: Mapping) -> str:
    return {"perplexity": "judge ln-perplexity (lower is better)",
            "sense": "signal (alignslm.judge.signal, higher is better)"}.get(judge_metric(results), "judge score")


def calibration_block(results: Mapping) -> str:
    """Does the signal carry sense through the chain?  (alignslm.stages.evaluate.calibration)"""
    cal = results.get("calibration")
    if not cal:
        return "Not measured (eval.calibration=false or no generation metrics).\n"
    sig = cal.get("signal", {})
    lines = [f"Signal `{sig.get('kind', '?')}` with its screen, on the held-out prompts, each candidate through the "
             "same vocoder, Whisper, screen and judge as the rounds (text probes skip the audio). A candidate the "
             "chain rejects loses its pairs (two rejects tie); ties count half; 95% bootstrap CIs over prompts.",
             "", "| candidate | accepted | mean signal [95% CI] | true continuation wins [95% CI] |",
             "|---|---|---|---|"]
    first = ["true continuation", "base sample", "random units"]
    for name in first + sorted(k for k in cal["classes"] if k not in first):
        c, w = cal["classes"].get(name), cal["wins"].get(name)
        if c is None:
            continue
        lines.append(f"| {name} | {_num(c.get('accepted'), '{:.0%}')} | {_ci(c)} | "
                     f"{_ci(w, '{:.3f}') if w else '-'} |")
    g = cal.get("gates", {})
    above = ", ".join(g.get("classes_above_truth") or []) or "none"
    def met(k: str) -> str:
        return "met" if g.get(k) else "not met"

    lines += ["", f"Gates: true > base sample in >= 80% of pairs: **{met('vs_base_ge_0.80')}**; "
              f"true > random units in >= 95%: **{met('vs_random_ge_0.95')}**; "
              f"classes let through with a mean signal >= the truth's: **{above}**."]
    bvr = cal.get("base_vs_random")
    if bvr:
        lines += ["", f"Is the base model worth aligning? Its samples beat random-unit continuations in "
                  f"{_ci(bvr, '{:.3f}')} of pairs (the demo aims at >= 0.90)."]
    return "\n".join(lines) + "\n"


def _judge_ci(g: Mapping) -> Mapping | None:
    return g.get("judge") or g.get("judge_score")


def verdict_line(results: Mapping) -> str:
    """The evaluate stage's one-line verdict (win rate of the last round against the base, calibration)."""
    v = results.get("verdict") or {}
    return v.get("line") or "No verdict (the evaluate stage did not write one)."


def headline_table(results: Mapping) -> str:
    """Markdown table in the shape of the paper's: rows = models, columns = the six headline metrics (and
    GenPPL beside the judge metric when it was measured: alignslm.eval.genppl)."""
    models = results["models"]
    cols = [Column(title, bench(key)) for title, key in BENCH_COLS]
    cols.append(Column(f"{judge_label(results)} [95% CI]", lambda m: _ci(_judge_ci(_gen(m)))))
    if any(_gen(m).get("genppl") for m in models.values()):
        cols.append(Column("GenPPL [95% CI]", lambda m: _ci(_gen(m).get("genppl"), "{:.1f}")))
    cols.append(Column("auto-BLEU", lambda m: _num((_gen(m).get("autobleu") or {}).get("mean"), "{:.3f}")))
    return "\n".join(model_table(models, cols, model_label)) + "\n"


def comparison_table(results: Mapping) -> str:
    """Each round against the base model: paired bootstrap 95% CIs of the differences."""
    comps = results.get("comparisons") or {}
    if not comps:
        return ""
    gain = {"perplexity": "judge gain = base - model ln-perplexity",
            "sense": "signal gain = model - base"}.get(judge_metric(results), "judge score gain")
    lines = [f"| model vs base | win rate [95% CI] | {gain} [95% CI] | P(gain <= 0) | reject share diff [95% CI] |"
             " auto-BLEU diff [95% CI] | prompts | sWUGGY diff | sBLIMP diff | sSC diff | tSC diff |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, c in comps.items():
        s, a = c.get("judge_gain") or c.get("score", {}), c.get("autobleu", {})
        w, rj = c.get("win_rate"), c.get("reject_share")
        bd = c.get("benchmarks", {})
        diffs = [("n/a" if bd.get(k) is None else f"{100 * bd[k]:+.1f}") for _, k in BENCH_COLS]
        lines.append(f"| {model_label(name)} | {_ci(w, '{:.3f}')} | {_ci(s, '{:+.3f}')} | "
                     f"{_num(s.get('p_le_0'), '{:.3f}')} | {_ci(rj, '{:+.3f}')} | "
                     f"{_ci(a, '{:+.4f}')} | {s.get('n', 0)} | " + " | ".join(diffs) + " |")
    lines += ["", "Win rate: the model's continuation against the base model's for the same held-out prompt and "
              "seed (a rejected continuation loses, two rejects tie, ties count half); 0.5 = no difference."]
    return "\n".join(lines) + "\n"


def _gen(m: Mapping) -> Mapping:
    return m.get("generation") or {}


def _ties(key: str) -> Callable[[Mapping], str]:
    return lambda m: str(benchmark(m, key).get("ties", "n/a"))


def _detail_tables(results: Mapping) -> str:
    cols = [Column("sWUGGY all", bench("lexical")), Column("sWUGGY in-vocab", bench("lexical", "invocab")),
            Column("sWUGGY pair mean", bench("lexical", "pair_mean")), Column("sBLIMP all", bench("syntactic")),
            Column("sBLIMP pair mean", bench("syntactic", "pair_mean")), Column("sSC ties", _ties("ssc")),
            Column("tSC ties", _ties("tsc")),
            Column("perplexity", lambda m: _ci(_gen(m).get("perplexity"), "{:.1f}")),
            Column("prompt WER", lambda m: _num(_gen(m).get("prompt_wer"), "{:.3f}")),
            Column("rejects", lambda m: _num(_gen(m).get("reject_share"), "{:.1%}"))]
    out = model_table(results["models"], cols, model_label)
    by_type = {}
    for name, m in results["models"].items():
        for t, v in (m.get("benchmarks", {}).get("syntactic", {}).get("by_type") or {}).items():
            by_type.setdefault(t, {})[name] = v.get("score")
    if by_type:
        names = list(results["models"])
        out += ["", "sBLIMP by type (%):", "", "| type | " + " | ".join(map(model_label, names)) + " |",
                "|---|" + "---|" * len(names)]
        for t, row in sorted(by_type.items()):
            out.append(f"| {t} | " + " | ".join(_pct(row.get(n)) for n in names) + " |")
    return "\n".join(out) + "\n"


def protocol_text(results: Mapping) -> str:
    p = results.get("protocol", {})
    voices = p.get("voices") or {}
    vtxt = "; ".join(f"{k}: {', '.join(map(str, v))}" for k, v in voices.items()) or "n/a"
    return "\n".join([
        f"- Utterance score: log-likelihood of [BOS, units, EOS] under the unit LM, "
        f"**{'per-token mean' if p.get('score') == 'mean' else 'sum'}** over the predicted tokens "
        f"(units + EOS); softmax support: {p.get('support', 'n/a')}.",
        "- sWUGGY / sBLIMP: official ZeroSpeech 2021 scoring (pair = 1 if s(correct) > s(incorrect), 0.5 on a tie; "
        "mean over the voices of a pair id, then over ids; sWUGGY in-vocabulary excludes the oov band). "
        "The plain mean over all pairs is in the detail table.",
        "- sSC / tSC: share of pairs whose correct story scores strictly higher (ties count as wrong).",
        f"- Utterances longer than the unit LM's context ({p.get('context', 'n/a')} tokens) are scored with a "
        f"sliding window (stride = context / 2): {_windowed(results)}.",
        f"- Benchmark split: {p.get('split', 'n/a')}; voices: {vtxt}.",
        f"- Generation: {p.get('n_prompts', 'n/a')} held-out prompts ({p.get('prompt_split', 'n/a')}), "
        f"{p.get('n_continuations', 'n/a')} continuations each, the same prompts and seeds for every model; "
        f"sampling {p.get('sampling', {})}; judge: {p.get('judge', 'n/a')}. Judge score CIs: percentile bootstrap "
        f"over prompts ({p.get('bootstrap', 'n/a')} resamples); differences: paired bootstrap over prompts.",
        f"- Prompts: cut at the last word end before {p.get('prompt_seconds', 'n/a')} s (word times in the "
        f"manifest) for {p.get('prompts_at_word_end', 'n/a')} of {p.get('n_prompts', 'n/a')}; the others at that "
        "time on a unit boundary. The judge's prompt text is always Whisper's transcript of the cut prompt audio.",
        f"- Prompt WER: prompts resynthesised (units -> vocoder -> ASR) against their reference text (the words "
        f"before the cut: needs word times; {p.get('prompt_wer_n', 'n/a')} prompts have it).",
        *protocol_lines(results),
    ]) + "\n"


def data_problems(results: Mapping) -> str:
    """Benchmark pairs left out of our numbers and files written with the pair-losing score in the submission."""
    dropped = {k: n for k, n in (results.get("dropped_pairs") or {}).items() if n}
    lines = []
    if dropped:
        lines.append("- Pairs left out of the numbers above (a file the loader rejected, see rejects.jsonl): "
                     + ", ".join(f"{k}: {n}" for k, n in dropped.items()) + ".")
    base = next(iter(results.get("models", {}).values()), {})
    for name, b in (base.get("benchmarks") or {}).items():
        filled = b.get("submission_filled") or []
        if not filled:
            continue
        lines.append(f"- {name} submission: {len(filled)} file(s) written with the pair-losing score (the "
                     "official number is a lower bound):")
        lines += [f"  - `{f.get('file')}` ({f.get('side')} side of pair {f.get('pair')}): {f.get('reason')}"
                  for f in filled[:20]]
        if len(filled) > 20:
            lines.append(f"  - ... and {len(filled) - 20} more (results.json: submission_filled)")
    return "\n".join(lines or ["None: every benchmark file was read and scored."]) + "\n"


def _windowed(results: Mapping) -> str:
    base = next(iter(results.get("models", {}).values()), {})
    counts = {k: v.get("windowed", 0) for k, v in (base.get("benchmarks") or {}).items()}
    return ", ".join(f"{k}: {n}" for k, n in counts.items() if n) or "none here"


# --------------------------------------------------------------------------------------------------
# Plots (matplotlib Agg)
# --------------------------------------------------------------------------------------------------


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _counts(h: Mapping) -> list[int]:
    """A round's judge-score counts for 1..5 (alignslm.judge.rubric.score_histogram), [] when it has none."""
    return list((h.get("score_histogram") or {}).values())


def plot_judge_histograms(hists: Mapping[str, Mapping], path: Path) -> Path:
    """Per round: judge-score counts (1..5, grouped bars), or in perplexity mode the distribution of
    ln(perplexity) of the sampled continuations (step histograms)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if any(sum(_counts(h)) for h in hists.values()):
        w = 0.8 / max(1, len(hists))
        for i, (name, h) in enumerate(hists.items()):
            counts = _counts(h)
            total = max(1, sum(counts))
            ax.bar([s + (i - (len(hists) - 1) / 2) * w for s in range(1, 6)], [c / total for c in counts],
                   width=w, label=f"{name} (n={sum(counts)}, missing {h['missing']})")
        ax.set_xlabel("judge score (rounded)")
        ax.set_xticks(range(1, 6))
        ax.set_title("Judge scores of sampled continuations per round")
    else:
        logs_ = {n: np.log(h["perplexities"]) for n, h in hists.items() if h.get("perplexities")}
        if logs_:
            lo, hi = min(v.min() for v in logs_.values()), max(v.max() for v in logs_.values())
            bins = np.linspace(lo, hi + 1e-9, 30)
            for name, v in logs_.items():
                ax.hist(v, bins=bins, weights=np.full(v.size, 1.0 / v.size), histtype="step",
                        label=f"{name} (n={v.size}, median ppl {float(np.exp(np.median(v))):.0f})")
        ax.set_xlabel("ln perplexity of the continuation transcript (lower = more plausible to the judge)")
        ax.set_title("Judge perplexities of sampled continuations per round")
    ax.set_ylabel("share of continuations")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_metrics_per_round(results: Mapping, path: Path) -> Path:
    plt = _plt()
    names = list(results["models"])
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.5))
    for col, key in BENCH_COLS:
        ys = [results["models"][n].get("benchmarks", {}).get(key, {}).get("all") for n in names]
        if any(y is not None for y in ys):
            a1.plot(range(len(names)), [100 * y if y is not None else float("nan") for y in ys], "o-", label=col)
    a1.set_ylabel("accuracy (%)")
    a1.legend(fontsize=7)
    js = [_judge_ci(results["models"][n].get("generation") or {}) or {} for n in names]
    m = [j.get("mean") if j.get("mean") is not None else float("nan") for j in js]
    lo = [m[i] - j["lo"] if j.get("lo") is not None else 0.0 for i, j in enumerate(js)]
    hi = [j["hi"] - m[i] if j.get("hi") is not None else 0.0 for i, j in enumerate(js)]
    a2.errorbar(range(len(names)), m, yerr=[lo, hi], fmt="o-", capsize=4)
    a2.set_ylabel(f"{judge_label(results)} (95% CI)", fontsize=8)
    for ax in (a1, a2):
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels([model_label(n) for n in names])
    fig.suptitle("Metrics per round")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_reward_accuracy(logs: Mapping[str, Sequence[Mapping]], path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, rows in logs.items():
        pts = [(r.get("step", i), r[k]) for i, r in enumerate(rows) for k in ACC_KEYS[:1] if k in r]
        pts = pts or [(r.get("step", i), r[k]) for i, r in enumerate(rows) for k in ACC_KEYS[1:] if k in r]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=name)
    ax.set_xlabel("DPO step")
    ax.set_ylabel("reward accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=7)
    ax.set_title("Reward accuracy during training")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------------
# Assembly
# --------------------------------------------------------------------------------------------------


def round_inputs(run_dir: Path, rounds: int) -> tuple[dict, dict]:
    """(per-round judge summaries, train logs) from the run directory; absent files are noted.

    A judge summary holds the 1-5 score histogram, the continuations' perplexities (perplexity mode), the
    pairs built (pairs/summary.json) and the train stage's policy.json (final and held-out reward accuracy).
    """
    hists, logs = {}, {}
    for r in range(1, rounds + 1):
        rd = run_dir / f"round-{r}"
        j = rd / "judge" / "judgments.jsonl"
        if j.is_file():
            rows = read_jsonl(j)
            scores = [row.get("score") for row in rows]
            h: dict = {"score_histogram": score_histogram(scores), "missing": sum(s is None for s in scores)}
            h["perplexities"] = [float(row["perplexity"]) for row in rows
                                 if isinstance(row.get("perplexity"), (int, float)) and row["perplexity"] > 0]
            for key, f in (("pairs", rd / "pairs" / "summary.json"), ("policy", rd / "train" / "policy.json")):
                if f.is_file():
                    h[key] = read_json(f)
            hists[f"round {r}"] = h
        else:
            logger.warning("report: %s not found; no judge histogram for round %d", j, r)
        t = rd / "train" / "train_log.jsonl"
        if t.is_file():
            logs[f"round {r}"] = read_jsonl(t)
        else:
            logger.warning("report: %s not found; no reward-accuracy curve for round %d", t, r)
    return hists, logs


def copy_examples(results: Mapping, out: Path, n_examples: int, base: Path | None = None) -> list[dict]:
    """Copy the example continuations' wavs into ``out/examples/<model>/`` and return their rows.

    ``base``: the directory the examples' relative paths start from (the evaluate stage's)."""
    rows = []
    for name, m in results["models"].items():
        for ex in (m.get("examples") or [])[:n_examples]:
            row = dict(ex)
            for key in ("path", "prompt_path"):
                src = ex.get(key)
                src = (base / src) if (src and base is not None) else src
                if src and Path(src).is_file():
                    dst = out / "examples" / name / Path(src).name
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    with atomic_path(dst) as tmp:
                        shutil.copyfile(src, tmp)
                    row[key] = str(dst.relative_to(out))
            rows.append({"model": name, **row})
    return rows


def _examples_md(examples: list[dict]) -> str:
    if not examples:
        return "No example continuations were recorded.\n"
    lines = ["| model | prompt (transcript) | continuation (transcript) | judge | audio |", "|---|---|---|---|---|"]
    for e in examples:
        audio = f"[continuation]({e['path']})" if e.get("path") else "n/a"
        if e.get("prompt_path"):
            audio += f", [prompt]({e['prompt_path']})"
        esc = lambda s: str(s or "").replace("|", "\\|").replace("\n", " ")  # noqa: E731
        judged = (_num(e.get("score")) if e.get("score") is not None
                  else f"ppl {_num(e.get('perplexity'), '{:.1f}')}")
        lines.append(f"| {model_label(e['model'])} | {esc(e.get('prompt_text'))} | {esc(e.get('text'))} | "
                     f"{judged} | {audio} |")
    return "\n".join(lines) + "\n"


def rounds_table(hists: Mapping[str, Mapping], logs: Mapping[str, Sequence[Mapping]]) -> str:
    """Per training round: its judged continuations (1-5 scores or perplexities, whichever the judge gave),
    the pairs built, the reward accuracy over all its pairs after training, and the previous round's policy
    on this round's pairs before training (prompts it never trained on: 0.5 = nothing carried over)."""
    names = sorted(set(hists) | set(logs))
    if not names:
        return "No round directories with judgments or training logs were found.\n"
    lines = ["| round | continuations judged | without a judgement | judge signal | pairs | reward accuracy "
             "(all pairs, after training) | previous policy on these pairs (held out) |",
             "|---|---|---|---|---|---|---|"]
    for n in names:
        h = hists.get(n) or {}
        counts, ppl = _counts(h), h.get("perplexities") or []
        if counts and sum(counts):
            judged = sum(counts)
            signal = f"mean score {sum((i + 1) * c for i, c in enumerate(counts)) / judged:.2f} (rounded)"
        elif ppl:
            judged = len(ppl)
            signal = f"median perplexity {float(np.median(ppl)):.0f}"
        else:
            judged, signal = (0 if h else None), "n/a"
        pairs = h.get("pairs") or {}
        total = (pairs["continuations"] + pairs.get("unjudged", 0)) if "continuations" in pairs else None
        missing = (total - judged) if (total is not None and judged is not None) else h.get("missing")
        pol = h.get("policy") or {}
        acc = pol.get("final_reward_accuracy")
        if acc is None:  # older runs: the last logged step
            acc = next((r[k] for r in reversed(list(logs.get(n, []))) for k in ACC_KEYS if k in r), None)
        prior_d = pol.get("prior_policy_on_these_pairs") or {}
        prior = prior_d.get("reward_accuracy")
        prior_cell = "n/a (round 1, or reference moves)" if prior is None else _num(prior, "{:.3f}") + (
            f" ({prior_d['pairs']} pairs)" if prior_d.get("pairs") is not None else "")
        lines.append(f"| {n} | {judged if judged is not None else 'n/a'} | "
                     f"{missing if missing is not None else 'n/a'} | {signal} | "
                     f"{pairs.get('pairs', 'n/a')} | {_num(acc, '{:.3f}')} | "
                     f"{prior_cell} |")
    return "\n".join(lines) + "\n"


def build_report(results: Mapping, run_dir: Path, out: Path, rounds: int, n_examples: int = 3,
                 demo: bool = True, listen_k: int = 3) -> dict:
    """Write every report file into ``out``; return a summary dict.  ``listen_k``: continuation indices per
    prompt in index.html's listening section (alignslm.eval.html.listening_sample)."""
    out.mkdir(parents=True, exist_ok=True)
    hists, logs = round_inputs(run_dir, rounds)
    plots = {"metrics_per_round": plot_metrics_per_round(results, out / "metrics_per_round.png")}
    if hists:
        plots["judge_histograms"] = plot_judge_histograms(hists, out / "judge_histograms.png")
    if logs:
        plots["reward_accuracy"] = plot_reward_accuracy(logs, out / "reward_accuracy.png")
    examples = copy_examples(results, out, n_examples, run_dir / "evaluate")
    table = headline_table(results)
    comp = comparison_table(results)
    line = verdict_line(results)
    comp_txt = ("\nEach round against the base model (paired bootstrap over the same prompts and seeds):\n\n"
                + comp) if comp else ""
    write_text(out / "headline.md", line + "\n\n" + table + comp_txt)
    md = ["# alignslm report", "", f"**Verdict:** {line}", ""]
    if demo:
        md += [NOT_COMPARABLE, ""]
    judge_txt = {"perplexity": "the judge's ln-perplexity of the continuation transcripts given the prompt's (the "
                               "signal the pairs were built from; lower is better)",
                 "sense": "the signal the pairs were built from (alignslm.judge.signal: what the prompt adds to the "
                          "judge LM's likelihood of the transcript, screened; higher is better)"}.get(
        judge_metric(results), "judge score 1-5")
    sections = [("Results", f"Benchmarks in %, {judge_txt} with a bootstrap 95% CI over prompts, bigram "
                 "auto-BLEU of the continuation transcripts (lower = less repetition).\n\n" + table),
                ("Each round against the base model", comparison_table(results) or "No rounds to compare.\n"),
                ("SALMon (acoustic consistency)", salmon_table(results, model_label)),
                ("ProsAudit (prosody)", prosaudit_table(results, model_label)),
                ("Spoken StoryCloze: one voice vs multi-speaker", multispeaker_table(results, model_label)),
                ("Spoken StoryCloze: whole story vs continuation only", continuation_table(results, model_label)),
                ("Signal calibration", calibration_block(results)),
                ("Training rounds", rounds_table(hists, logs)),
                ("Details", _detail_tables(results)), ("Benchmark data problems", data_problems(results)),
                ("Protocol", protocol_text(results))]
    for title, text in sections:
        md += [f"## {title}", "", text]
    md += ["## Plots", ""]
    md += [f"![{k}]({p.name})" for k, p in plots.items()]
    md += ["", "## Example continuations", "", _examples_md(examples)]
    write_text(out / "report.md", "\n".join(md) + "\n")
    full = {**results, "judge_histograms": hists, "examples": examples,
            "plots": {k: p.name for k, p in plots.items()}}
    write_json(out / "results.json", full)
    t0 = time.perf_counter()
    page = write_index(out / "index.html", results, run_dir, sections, plots, n_examples, judge_metric(results),
                       model_label, line, NOT_COMPARABLE if demo else None, listen_k)
    page["seconds"] = round(time.perf_counter() - t0, 3)
    return {"models": len(results["models"]), "plots": len(plots), "examples": len(examples), "index_html": page}
