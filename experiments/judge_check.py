"""Judge check: does the judge rank a true continuation above a wrong one?

    python experiments/judge_check.py [--stories 60] [--generate 0] [--model PATH]

On held-out demo stories (alignslm.demo.stories, a seed the demo corpus does not use) the prompt is the
story without its ending, and three continuations are judged: the true ending, an ending from another
topic (stories.other_topic_ending) and the true ending with its words shuffled.  A case counts when the
true ending is ranked strictly above the wrong one (a tie counts as a failure).  Modes:

- perplexity: the text LM's perplexity of the continuation given the prompt (lower = better);
- expected score: E[1-5 score] from the five digits' probabilities after a forced "Score: " (rubric);
- score (free generation + parsing), on the first ``--generate`` stories only (slow on a CPU).

Prints a table, appends rows to experiments/results.csv, and says which mode passes the 85 % bar.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS_CSV = ROOT / "experiments" / "results.csv"  # the studies' rows (bench/harness.py schema)
sys.path.insert(0, str(ROOT / "bench"))  # the shared harness
sys.path.insert(0, str(ROOT))

from harness import append_rows, print_table, row  # noqa: E402

from alignslm.demo.stories import generate_stories, other_topic_ending  # noqa: E402
from alignslm.judge import LLMScoreJudge, PerplexityJudge, TransformersBackend, default_judge_model  # noqa: E402

HELD_OUT_SEED = 7_000_007


def cases(n: int, seed: int = HELD_OUT_SEED) -> list[dict]:
    """Prompt, true / other-topic / shuffled continuation for ``n`` held-out stories."""
    out = []
    for s in generate_stories(n, seed):
        rng = random.Random(f"{seed}-{s.story_id}")
        true = s.sentences[-1]
        other = other_topic_ending(s, rng)
        words = true.rstrip(".").lower().split()
        shuffled = words[:]
        for _ in range(10):
            rng.shuffle(shuffled)
            if shuffled != words:
                break
        shuf = " ".join(shuffled).capitalize() + "."
        out.append({"prompt": " ".join(s.context), "true": true, "other": other, "shuffled": shuf, "topic": s.topic})
    return out


def accuracy(vals: list[tuple[float | None, float | None, float | None]], higher_is_better: bool) -> dict:
    """Share of cases where the true continuation beats the other-topic / the shuffled one (ties fail)."""
    def beats(a: float | None, b: float | None) -> bool:
        if a is None or b is None:
            return False
        return a > b if higher_is_better else a < b

    n = len(vals)
    return {"vs_other_topic": sum(beats(t, o) for t, o, _ in vals) / n,
            "vs_shuffled": sum(beats(t, s) for t, _, s in vals) / n,
            "both": sum(beats(t, o) and beats(t, s) for t, o, s in vals) / n,
            "missing": sum(v is None for trio in vals for v in trio)}


def judge_mode(name: str, judge, cs: list[dict], higher_is_better: bool, attr: str) -> tuple[dict, float]:  # noqa: ANN001
    prompts = [c["prompt"] for c in cs for _ in range(3)]
    conts = [c[k] for c in cs for k in ("true", "other", "shuffled")]
    t0 = time.perf_counter()
    res = judge.score(prompts, conts)
    secs = time.perf_counter() - t0
    v = [getattr(r, attr) for r in res]
    trios = [(v[i], v[i + 1], v[i + 2]) for i in range(0, len(v), 3)]
    acc = accuracy(trios, higher_is_better)
    acc["items_per_s"] = len(conts) / secs
    print(f"{name:>15}: vs other topic {acc['vs_other_topic']:.3f}, vs shuffled {acc['vs_shuffled']:.3f}, "
          f"both {acc['both']:.3f}, missing {acc['missing']}, {acc['items_per_s']:.2f} items/s")
    return acc, secs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--stories", type=int, default=60)
    ap.add_argument("--generate", type=int, default=0, help="stories also judged by free generation")
    ap.add_argument("--model", default=None, help="HF directory or GGUF file (default: the demo SmolLM2)")
    ap.add_argument("--no-csv", action="store_true")
    args = ap.parse_args()
    model = Path(args.model) if args.model else default_judge_model()
    cs = cases(args.stories)
    be = TransformersBackend(model, batch_size=8)
    shape = f"{args.stories}stories"
    results = {}
    results["perplexity"], _ = judge_mode("perplexity", PerplexityJudge(be), cs, False, "perplexity")
    results["expected_score"], _ = judge_mode("expected score", LLMScoreJudge(be, expected=True), cs, True, "score")
    if args.generate:
        results["score_generate"], _ = judge_mode("score (generate)", LLMScoreJudge(be, expected=False),
                                                  cs[:args.generate], True, "score")
    rows = []
    for mode, acc in results.items():
        n = args.generate if mode == "score_generate" else args.stories
        for metric in ("vs_other_topic", "vs_shuffled", "both"):
            rows.append(row("judge_check", f"{Path(model).name}:{mode}", f"{n}stories", metric, "frac", acc[metric]))
        rows.append(row("judge_check", f"{Path(model).name}:{mode}", f"{n}stories", "throughput", "items/s",
                        acc["items_per_s"]))
    print_table(rows)
    if not args.no_csv:
        append_rows(rows, RESULTS_CSV)
    best = max(results, key=lambda m: results[m]["both"])
    ok = min(results[best]["vs_other_topic"], results[best]["vs_shuffled"]) >= 0.85
    print(f"best mode: {best} ({'passes' if ok else 'does not pass'} the 85% bar on both comparisons); shape {shape}")


if __name__ == "__main__":
    main()
