"""alignslm.judge.signal (the screen and the score shared by the judge stage, the pairs and the evaluation) and the
calibration statistics of alignslm.eval.stats."""

from __future__ import annotations

import math
from dataclasses import replace
from types import SimpleNamespace

import pytest
from helpers import pair_rules, signal_rules

from alignslm.config import JudgeConfig
from alignslm.dpo.pairs import Candidate, build_pairs_for_prompt
from alignslm.eval.stats import calibration_summary, paired_win_rate, reject_share_diff, win_rate
from alignslm.judge.signal import is_stock, judge_rows, rules_from, screen, sense

RULES = signal_rules()
OFF = signal_rules(kind="lnppl", hallucinations=False, max_autobleu=1.0)  # no screen: the demo's old signal


@pytest.mark.parametrize("text", ["Thank you.", "Thank you. Thank you. Thank you!", "you", "Thanks for watching!",
                                  "Um, so, yeah.", "I'm sorry.", "Bye-bye."])
def test_stock_phrases_are_screened(text):
    assert is_stock(text)
    assert screen(text, RULES, 3.0, -0.3, 0.1).startswith("hallucination")
    assert screen(text, OFF, 3.0, -0.3, 0.1) is None  # the old signal let them through


@pytest.mark.parametrize("text", ["Thank you for the red pot.", "The cook washed the pan.", "so the cat sat"])
def test_content_passes(text):
    assert not is_stock(text)
    assert screen(text, RULES, 2.0, -0.3, 0.1) is None


def test_screen_uses_whisper_confidence_words_per_second_and_repetition():
    text = "The cook washed the pan."
    strict = signal_rules(max_no_speech=0.5, min_avg_logprob=-1.0, min_words_per_s=0.6)
    assert "no-speech" in screen(text, strict, 2.0, -0.3, 0.9)
    assert "log-probability" in screen(text, strict, 2.0, -1.5, 0.1)
    assert "under-transcribed" in screen(text, strict, 20.0, -0.3, 0.1)  # 5 words in 20 s
    assert screen(text, RULES, 20.0, -1.5, 0.9) is None  # off by default
    assert "repetition" in screen("the red pan the red pan the red pan the red pan", RULES, 4.0, -0.3, 0.1)
    assert screen("", RULES) == "empty transcript"


def test_sense_kinds():
    # ln-ppl 3 given the prompt, 4 without it: the prompt makes the text 1 nat/token more likely
    assert sense(3.0, 4.0, 10, signal_rules(kind="lnppl")) == -3.0
    assert sense(3.0, 4.0, 10, signal_rules(kind="pmi")) == pytest.approx(1.0)
    assert sense(3.0, 4.0, 10, signal_rules(kind="pmi_words", max_words=40)) == pytest.approx(10.0)
    assert sense(3.0, 4.0, 100, signal_rules(kind="pmi_words", max_words=40)) == pytest.approx(40.0)
    assert sense(None, 4.0, 10, RULES) is None and sense(3.0, None, 10, RULES) is None
    with pytest.raises(ValueError, match="judge.signal"):
        signal_rules(kind="nope")


def test_rules_from_config_section():
    cfg = replace(JudgeConfig(), signal="pmi", screen_hallucinations=False, max_no_speech=0.4, min_avg_logprob=-2.0,
                  min_words_per_s=0.0, max_words=10, max_autobleu=0.5)
    r = rules_from(cfg)
    assert (r.kind, r.hallucinations, r.max_no_speech, r.max_words) == ("pmi", False, 0.4, 10)


class FakePPL:
    """Perplexity e^(words) given a story prompt, e^(words + 1) given the neutral context (the prompt helps 1 nat)."""

    def score(self, prompts, texts):
        return [SimpleNamespace(perplexity=math.exp(len(t.split()) + (1 if p == RULES.neutral else 0)), error=None)
                for p, t in zip(prompts, texts)]


def test_judge_rows_screens_and_scores_in_place():
    rows = [{"prompt_text": "The cook is in the kitchen.", "text": "She washed the pan.", "seconds": 2.0},
            {"prompt_text": "The cook is in the kitchen.", "text": "Thank you.", "seconds": 2.0},
            {"prompt_text": "The cook is in the kitchen.", "text": "", "reject": "asr: no speech"},
            {"prompt_text": "", "text": "She washed the pan.", "seconds": 2.0}]
    judge_rows(rows, FakePPL(), signal_rules(kind="pmi_words"))
    assert rows[0]["reject"] is None and rows[0]["sense"] == pytest.approx(4.0)  # pmi 1 x 4 words
    assert rows[1]["screened"] and rows[1]["sense"] is None
    assert rows[2]["screened"] and rows[2]["asr_reject"] == "asr: no speech"
    assert rows[3]["reject"].startswith("prompt:") and not rows[3]["screened"]


def test_win_rate_rejects_lose_and_ties_count_half():
    truth = [{"prompt_id": "a", "sense": 2.0}, {"prompt_id": "b", "sense": None, "reject": "asr: no speech"}]
    other = [{"prompt_id": "a", "sense": 1.0}, {"prompt_id": "a", "sense": 2.0}, {"prompt_id": "a", "reject": "x"},
             {"prompt_id": "b", "reject": "x"}, {"prompt_id": "b", "sense": 0.0}]
    w = win_rate(truth, other, n_boot=0)
    # prompt a: win, tie, win (vs a reject) = 2.5/3; prompt b: tie (two rejects), loss (reject vs accepted) = 0.25
    assert w["mean"] == pytest.approx((2.5 / 3 + 0.25) / 2) and w["pairs"] == 5


def test_calibration_summary_gates():
    truth = [{"prompt_id": str(i), "sense": 3.0} for i in range(10)]
    base = [{"prompt_id": str(i), "sense": 1.0 if i < 9 else 4.0} for i in range(10)]
    rand = [{"prompt_id": str(i), "reject": "no speech"} for i in range(10)]
    halluc = [{"prompt_id": str(i), "sense": 5.0} for i in range(10)]
    res = calibration_summary({"true continuation": truth, "base sample": base, "random units": rand,
                               "hallucination": halluc}, n_boot=50)
    assert res["wins"]["base sample"]["mean"] == pytest.approx(0.9)
    assert res["wins"]["random units"]["mean"] == 1.0
    assert res["classes"]["random units"]["accepted"] == 0.0
    assert res["base_vs_random"]["mean"] == 1.0  # every base sample accepted, every random unit rejected
    assert res["gates"]["vs_base_ge_0.80"] and res["gates"]["vs_random_ge_0.95"]
    assert res["gates"]["classes_above_truth"] == ["hallucination"] and not res["gates"]["no_class_above_truth"]


def test_pairs_use_the_sense_and_reject_screened_outright():
    cands = [Candidate(0, [1], "a", perplexity=10.0, sense=5.0, autobleu=0.0),
             Candidate(1, [2], "b", perplexity=2.0, sense=1.0, autobleu=0.0),  # lower perplexity, less sense
             Candidate(2, [3], "Thank you.", screened=True)]
    pairs, why = build_pairs_for_prompt(cands, pair_rules(mode="perplexity", all_combinations=True))
    assert why == "" and {(c.k, x.k) for c, x in pairs} == {(0, 1), (0, 2)}


def test_report_calibration_block():
    from alignslm.eval.report import calibration_block

    truth = [{"prompt_id": str(i), "sense": 3.0} for i in range(4)]
    base = [{"prompt_id": str(i), "sense": 1.0} for i in range(4)]
    cal = calibration_summary({"true continuation": truth, "base sample": base, "random units": base}, n_boot=20)
    cal["signal"] = {"kind": "pmi_words"}
    md = calibration_block({"calibration": cal})
    assert "| true continuation | 100% |" in md and "**met**" in md and "**none**" in md
    assert "Not measured" in calibration_block({})


def test_contrast_prompts_are_the_next_distinct_ones_in_sorted_order():
    from alignslm.judge.signal import contrast_prompts

    c = contrast_prompts(["b", "a", "c", "a", ""], 2)
    assert c == {"a": ["b", "c"], "b": ["c", "a"], "c": ["a", "b"]}
    assert contrast_prompts(["a"], 4) == {"a": []}


def test_contrast_kind_judges_against_other_prompts():
    class Topical:
        """ln-ppl 2 when the text shares its first word with the prompt, else 4."""

        def score(self, prompts, texts):
            return [SimpleNamespace(perplexity=math.exp(2.0 if p.split()[0] == t.split()[0] else 4.0), error=None)
                    for p, t in zip(prompts, texts)]

    rows = [{"prompt_text": "sea waves", "text": "sea boats"}, {"prompt_text": "farm cows", "text": "sea boats"}]
    judge_rows(rows, Topical(), signal_rules(kind="contrast", contrast_k=1))
    assert rows[0]["sense"] == pytest.approx(2.0) and rows[1]["sense"] == pytest.approx(-2.0)


def test_pmi_asr_adds_whisper_confidence():
    r = signal_rules(kind="pmi_asr", asr_weight=2.0)
    assert sense(3.0, 4.0, 5, r, avg_logprob=-0.5) == pytest.approx(0.0)
    assert sense(3.0, 4.0, 5, r, avg_logprob=None) is None


def test_paired_win_rate_pairs_by_prompt_and_seed_and_rejects_lose():
    base = [{"prompt_id": "a", "k": 0, "sense": 1.0}, {"prompt_id": "a", "k": 1, "sense": 3.0},
            {"prompt_id": "b", "k": 0, "sense": 2.0}, {"prompt_id": "b", "k": 1, "reject": "asr: no speech"}]
    other = [{"prompt_id": "a", "k": 0, "sense": 2.0}, {"prompt_id": "a", "k": 1, "sense": 3.0},
             {"prompt_id": "b", "k": 0, "reject": "screen: filler"}, {"prompt_id": "b", "k": 1, "sense": -9.0}]
    w = paired_win_rate(base, other, "sense", n_boot=0)
    # a: k0 win, k1 tie = 0.75; b: k0 loss (a reject loses), k1 win (vs a reject) = 0.5
    assert w["mean"] == pytest.approx((0.75 + 0.5) / 2) and w["pairs"] == 4 and w["unpaired"] == 0
    # reversed roles give the complement; more rejects cannot win
    assert paired_win_rate(other, base, "sense", n_boot=0)["mean"] == pytest.approx(1 - w["mean"])
    all_rejected = [{**r, "reject": "x"} for r in other]
    assert paired_win_rate(base, all_rejected, "sense", n_boot=0)["mean"] < 0.5
    # ln-perplexity: lower wins
    pb = [{"prompt_id": "a", "k": 0, "perplexity": 10.0}]
    po = [{"prompt_id": "a", "k": 0, "perplexity": 5.0}]
    assert paired_win_rate(pb, po, "perplexity", n_boot=0)["mean"] == 1.0
    d = reject_share_diff(base, all_rejected, "sense", n_boot=0)
    assert d["diff"] == pytest.approx(1 - 0.25)  # 4/4 rejected against 1/4


def test_verdict_line_says_improved_worse_or_unchanged_and_the_calibration():
    from alignslm.stages.evaluate import verdict

    def res(lo, hi, gates):
        return {"comparisons": {"round-1": {}, "round-2": {"win_rate": {"mean": (lo + hi) / 2, "lo": lo, "hi": hi,
                                                                           "pairs": 500}}},
                "calibration": {"gates": gates}}

    ok = {"vs_base_ge_0.80": True, "vs_random_ge_0.95": True, "no_class_above_truth": True, "classes_above_truth": []}
    v = verdict(res(0.55, 0.65, ok))
    assert v["model"] == "round-2" and v["improved"] and "IMPROVED" in v["line"] and "passed" in v["line"]
    v = verdict(res(0.45, 0.58, {**ok, "vs_base_ge_0.80": False}))
    assert v["state"] == "unchanged" and not v["improved"] and "FAILED its calibration" in v["line"]
    assert verdict(res(0.30, 0.45, ok))["state"] == "worse"
    assert verdict({"comparisons": {}})["improved"] is None
