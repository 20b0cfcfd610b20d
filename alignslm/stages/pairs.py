"""Stage pairs: judgments.jsonl + samples.jsonl (units) -> pairs.jsonl (TRL field names) + a summary.

The summary holds the score histogram (the paper's Figures 3-4; also drawn to score_histogram.png),
pairs per prompt, the share of continuations filtered by auto-BLEU, and prompts without a pair by reason.
"""

from __future__ import annotations

from alignslm.dpo.pairs import Candidate, build_pairs, rules_for_round
from alignslm.rundir import StageContext, read_jsonl, write_json, write_jsonl


def run(ctx: StageContext) -> dict:
    problems = check(ctx.cfg)
    if problems:
        raise ValueError("; ".join(problems))
    rules = rules_for_round(ctx.cfg, ctx.round)
    samples = read_jsonl(ctx.inputs["sample"] / "samples.jsonl")
    judged = {(r["prompt_id"], r["k"]): r for r in read_jsonl(ctx.inputs["judge"] / "judgments.jsonl")}
    prompts: dict = {}
    unjudged = 0
    for s in samples:
        j = judged.get((s["prompt_id"], s["k"]))
        p = prompts.setdefault(s["prompt_id"], {"prompt": s["prompt"], "prompt_text": "", "candidates": []})
        if j is None:
            unjudged += 1
            ctx.rejects.add(f"{s['prompt_id']}/{s['k']}", "no judgment for this continuation")
            continue
        p["prompt_text"] = p["prompt_text"] or j.get("prompt_text", "")
        p["candidates"].append(Candidate(k=s["k"], units=s["continuation"], text=j.get("text", ""),
                                         score=j.get("score"), perplexity=j.get("perplexity"),
                                         autobleu=j.get("autobleu"), sense=j.get("sense"),
                                         screened=bool(j.get("screened"))))
    rows, summary = build_pairs(prompts, rules)
    write_jsonl(ctx.out / "pairs.jsonl", rows)
    summary["unjudged"] = unjudged
    write_json(ctx.out / "summary.json", summary)
    if summary["score_histogram"] and any(summary["score_histogram"].values()):
        _plot(summary, ctx.out / "score_histogram.png", ctx.round)
    return summary


def _plot(summary: dict, path, round_: int | None) -> None:  # noqa: ANN001
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from alignslm.rundir import atomic_path

    h = summary["score_histogram"]
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.bar(list(h.keys()), list(h.values()), color="#4c72b0")
    ax.set_xlabel("judge score")
    ax.set_ylabel("continuations")
    ax.set_title(f"round {round_}: s_c={summary['chosen_min']:g}, s_r={summary['rejected_max']:g}")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def check(cfg) -> list[str]:  # noqa: ANN001 - Config
    if cfg.pairs.mode != cfg.judge.mode:
        return [f"pairs.mode={cfg.pairs.mode} but judge.mode={cfg.judge.mode}: the pairs need the judge's metric; "
                f"set both to score or both to perplexity"]
    try:
        for r in range(1, cfg.curriculum.rounds + 1):
            rules_for_round(cfg, r)
    except ValueError as e:
        return [str(e)]
    return []
