from __future__ import annotations

import json

import pytest
from helpers import pair_rules

from alignslm.config import load_config
from alignslm.dpo.pairs import (
    Candidate,
    build_pairs,
    build_pairs_for_prompt,
    rules_for_round,
)
from alignslm.judge.rubric import score_histogram


def C(k, score=None, ppl=None, ab=0.0, text=None):  # noqa: N802
    return Candidate(k=k, units=[k, k + 1], text=text or f"text {k}", score=score, perplexity=ppl, autobleu=ab)


def test_score_mode_best_vs_worst():
    r = pair_rules(chosen_min=3, rejected_max=1, mode="score", all_combinations=False)
    pairs, reason = build_pairs_for_prompt([C(0, 3), C(1, 5), C(2, 1), C(3, 2), C(4, 1)], r)
    assert reason == ""
    assert [(c.k, x.k) for c, x in pairs] == [(1, 2)]  # best 5 vs the first worst 1


def test_score_mode_all_combinations():
    r = pair_rules(chosen_min=3, rejected_max=1, all_combinations=True, mode="score")
    pairs, _ = build_pairs_for_prompt([C(0, 3), C(1, 5), C(2, 1), C(3, 2), C(4, 1)], r)
    assert sorted((c.k, x.k) for c, x in pairs) == [(0, 2), (0, 4), (1, 2), (1, 4)]


def test_missing_scores_never_used_and_reasons():
    r = pair_rules(chosen_min=3, rejected_max=1, mode="score", all_combinations=False)
    assert build_pairs_for_prompt([C(0, None), C(1, 5)], r) == ([], "fewer than 2 judged continuations")
    assert build_pairs_for_prompt([C(0, 2), C(1, 2)], r)[1] == "no continuation reaches chosen_min"
    assert build_pairs_for_prompt([C(0, 4), C(1, 2)], r)[1] == "no continuation at or below rejected_max"
    pairs, _ = build_pairs_for_prompt([C(0, None), C(1, 4), C(2, 1)], r)
    assert [(c.k, x.k) for c, x in pairs] == [(1, 2)]


def test_autobleu_rejected_outright():
    r = pair_rules(chosen_min=3, rejected_max=1, autobleu_delta=0.1, mode="score", all_combinations=False)
    # the 5-scored continuation repeats itself: never chosen, and it is a rejected candidate despite its 5
    pairs, _ = build_pairs_for_prompt([C(0, 5, ab=0.5), C(1, 4), C(2, 3)], r)
    assert [(c.k, x.k) for c, x in pairs] == [(1, 0)]
    # worst-first: a score-1 continuation beats a repetitive score-4 one as "the worst"
    pairs, _ = build_pairs_for_prompt([C(0, 4, ab=0.5), C(1, 4), C(2, 1)], r)
    assert [(c.k, x.k) for c, x in pairs] == [(1, 2)]


def test_perplexity_mode():
    r = pair_rules(mode="perplexity", all_combinations=False)
    pairs, _ = build_pairs_for_prompt([C(0, ppl=20.0), C(1, ppl=5.0), C(2, ppl=80.0), C(3, ppl=None)], r)
    assert [(c.k, x.k) for c, x in pairs] == [(1, 2)]
    # a repetitive continuation has a low perplexity but can never be chosen
    pairs, _ = build_pairs_for_prompt([C(0, ppl=2.0, ab=0.6), C(1, ppl=5.0), C(2, ppl=80.0)], r)
    assert [(c.k, x.k) for c, x in pairs] == [(1, 2)]
    r_all = pair_rules(mode="perplexity", all_combinations=True)
    pairs, _ = build_pairs_for_prompt([C(0, ppl=2.0, ab=0.6), C(1, ppl=5.0), C(2, ppl=80.0), C(3, ppl=9.0)], r_all)
    assert sorted((c.k, x.k) for c, x in pairs) == [(1, 0), (1, 2), (1, 3)]
    assert build_pairs_for_prompt([C(0, ppl=2.0, ab=0.6), C(1, ppl=3.0, ab=0.9)], r)[1] == \
        "every judged continuation is repetitive"


def test_rules_for_round_uses_curriculum_thresholds():
    cfg = load_config(overrides=["curriculum.thresholds=[[3,1],[4,2]]", "pairs.chosen_min=3.5",
                                 "pairs.rejected_max=0.5"])
    assert (rules_for_round(cfg, 1).chosen_min, rules_for_round(cfg, 1).rejected_max) == (3.0, 1.0)
    assert (rules_for_round(cfg, 2).chosen_min, rules_for_round(cfg, 2).rejected_max) == (4.0, 2.0)
    assert (rules_for_round(cfg, 3).chosen_min, rules_for_round(cfg, 3).rejected_max) == (3.5, 0.5)  # fallback
    with pytest.raises(ValueError, match="must be below"):
        pair_rules(chosen_min=2, rejected_max=2, mode="score", all_combinations=False)
    with pytest.raises(ValueError, match="pairs.mode"):
        pair_rules(mode="vibes", all_combinations=False)


def test_build_pairs_rows_and_summary():
    prompts = {
        "p0": {"prompt": [1, 2, 3], "prompt_text": "a b", "candidates": [C(0, 5), C(1, 1), C(2, 4.4, ab=0.3)]},
        "p1": {"prompt": [4], "prompt_text": "c", "candidates": [C(0, 2), C(1, 2.6)]},
        "p2": {"prompt": [5], "prompt_text": "d", "candidates": [C(0, None), C(1, 3)]},
    }
    rows, s = build_pairs(prompts, pair_rules(chosen_min=3, rejected_max=1, mode="score", all_combinations=False))
    assert len(rows) == 1
    row = rows[0]
    assert {"prompt", "chosen", "rejected", "prompt_id", "chosen_score", "rejected_score", "prompt_text",
            "chosen_text", "rejected_text"} <= set(row)
    assert row["prompt"] == [1, 2, 3] and row["chosen"] == [0, 1] and row["rejected"] == [1, 2]
    json.dumps(row)  # serialisable
    assert s["prompts"] == 3 and s["pairs"] == 1 and s["prompts_without_pair"] == 2
    assert s["no_pair_reasons"] == {"no continuation reaches chosen_min": 1, "fewer than 2 judged continuations": 1}
    assert s["autobleu_filtered"] == 1 and s["autobleu_filtered_share"] == pytest.approx(1 / 7)
    assert s["missing_metric"] == 1
    assert s["score_histogram"] == {"1": 1, "2": 1, "3": 2, "4": 1, "5": 1}


def test_score_histogram_rounds_expected_scores():
    assert score_histogram([1.0, 1.49, 1.5, 4.6, 5.0, 0.2, None]) == {"1": 3, "2": 1, "3": 0, "4": 0, "5": 2}


def test_pairs_stage(tmp_path):
    from alignslm.rundir import StageContext, read_jsonl, write_jsonl
    from alignslm.stages import pairs as pairs_stage

    sdir, jdir = tmp_path / "round-2" / "sample", tmp_path / "round-2" / "judge"
    samples, judg = [], []
    scores = {"p0": [5, 2, 4.2, None], "p1": [3, 3, 3, 3], "p2": [4, 1, 2, 5]}
    for pid, ss in scores.items():
        for k, sc in enumerate(ss):
            samples.append({"prompt_id": pid, "utt_id": "u", "k": k, "seed": 0, "prompt": [7, 8],
                            "continuation": [k, k + 10], "prompt_end_s": 1.0})
            if (pid, k) != ("p2", 3):  # one continuation was never judged
                judg.append({"prompt_id": pid, "k": k, "score": sc, "perplexity": None,
                             "autobleu": 0.5 if (pid, k) == ("p2", 0) else 0.0, "raw": "", "prompt_text": "pt",
                             "text": f"{pid} t{k}"})
    write_jsonl(sdir / "samples.jsonl", samples)
    write_jsonl(jdir / "judgments.jsonl", judg)
    cfg = load_config(overrides=["curriculum.thresholds=[[3,1],[4,2]]", "judge.mode=score", "pairs.mode=score",
                                 "pairs.all_combinations=false"])
    ctx = StageContext(name="pairs", cfg=cfg, run_dir=tmp_path, out=tmp_path / "round-2" / "pairs", round=2,
                       inputs={"sample": sdir, "judge": jdir}, progress=False)
    s = pairs_stage.run(ctx)
    rows = read_jsonl(ctx.out / "pairs.jsonl")
    # round 2: s_c = 4, s_r = 2. p0: 5 vs 2. p1: nothing. p2: the 4 repeats itself (auto-BLEU 0.5) -> no chosen
    assert [(r["prompt_id"], r["chosen_k"], r["rejected_k"]) for r in rows] == [("p0", 0, 1)]
    assert rows[0]["prompt"] == [7, 8] and rows[0]["chosen"] == [0, 10] and rows[0]["rejected"] == [1, 11]
    assert rows[0]["chosen_text"] == "p0 t0" and rows[0]["prompt_text"] == "pt"
    assert s["chosen_min"] == 4.0 and s["prompts_without_pair"] == 2 and s["unjudged"] == 1
    assert s["autobleu_filtered"] == 1 and s["missing_metric"] == 1
    assert (ctx.out / "score_histogram.png").stat().st_size > 1000
    assert read_jsonl(ctx.out / "rejects.jsonl")[0]["id"] == "p2/3"
    assert pairs_stage.check(cfg) == []


def test_pairs_mode_must_match_judge_mode():
    from alignslm.stages import pairs as pairs_stage

    problems = pairs_stage.check(load_config(overrides=["judge.mode=perplexity", "pairs.mode=score"]))
    assert problems and "judge.mode=perplexity" in problems[0]
