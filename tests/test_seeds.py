"""python -m alignslm.seeds merge: per-seed values, mean, sd and a 95% t-interval across run directories."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pytest
import yaml

from alignslm import seeds as sd
from alignslm.rundir import read_json, write_json

T975 = {1: 12.706204736174694, 2: 4.302652729749462}  # Student t, 0.975 quantile, 1 and 2 degrees of freedom


def test_across_seeds_exact():
    s = sd.across_seeds([0.5, 0.6, 0.7])
    half = T975[2] * 0.1 / math.sqrt(3)
    assert s["n"] == 3 and s["mean"] == pytest.approx(0.6, abs=1e-15) and s["sd"] == pytest.approx(0.1, abs=1e-15)
    assert (s["lo"], s["hi"]) == (pytest.approx(0.6 - half, abs=1e-12), pytest.approx(0.6 + half, abs=1e-12))
    s = sd.across_seeds([1.0, None, 3.0])  # a seed without the metric is left out of n
    assert s["values"] == [1.0, None, 3.0] and s["n"] == 2 and s["mean"] == 2.0
    assert s["sd"] == pytest.approx(math.sqrt(2), abs=1e-15)
    assert s["hi"] - s["mean"] == pytest.approx(T975[1] * math.sqrt(2) / math.sqrt(2), abs=1e-12)
    assert sd.across_seeds([0.7]) == {"values": [0.7], "n": 1, "mean": 0.7, "sd": None, "lo": None, "hi": None}
    assert sd.across_seeds([None])["mean"] is None


def _run(root: Path, seed: int, win: float, lex: float, top_k: int = 25, calibrated: bool = True) -> Path:
    """A finished run directory as seeds.merge reads it: config.yaml and evaluate/results.json."""
    run = root / f"seed-{seed}"
    (run / "evaluate").mkdir(parents=True)
    cfg = {"run": {"run_dir": str(run), "seed": seed, "cache_dir": str(run / "cache"), "smoke": False},
           "sample": {"top_k": top_k, "temperature": 1.0}}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))

    def gen(judge: float, rej: float) -> dict:
        return {"judge_metric": "sense", "judge": {"mean": judge, "lo": judge - 0.1, "hi": judge + 0.1, "n": 50},
                "autobleu": {"mean": 0.02, "n": 50}, "reject_share": rej, "n_continuations": 200}

    bench = {"lexical": {"all": lex, "invocab": 0.9}, "syntactic": {"all": 0.6}, "tsc": {"all": 0.5},
             "ssc": {"all": 0.55}}
    write_json(run / "evaluate" / "results.json", {
        "models": {"base": {"benchmarks": bench, "generation": gen(-2.0, 0.3)},
                   "round-2": {"benchmarks": {**bench, "lexical": {"all": lex + 0.01}},
                               "generation": gen(-2.0 + win - 0.5, 0.25)}},
        "comparisons": {"round-2": {"win_rate": {"mean": win, "lo": win - 0.05, "hi": win + 0.05, "n": 50},
                                    "judge_gain": {"diff": win - 0.5, "lo": 0.0, "hi": 0.2, "n": 50},
                                    "reject_share": {"diff": -0.05, "lo": -0.1, "hi": 0.0, "n": 50},
                                    "judge_metric": "sense", "benchmarks": {"lexical": 0.01, "tsc": -0.01}}},
        "calibration": {"wins": {"random units": {"mean": 0.9 + win / 10}},
                        "base_vs_random": {"mean": 0.8}, "gates": {"vs_random_ge_0.95": calibrated}},
        "verdict": {"state": "improved" if win > 0.55 else "unchanged", "line": "..."}})
    return run


def test_merge_three_seeds_exact_numbers(tmp_path):
    runs = [_run(tmp_path, s, w, lex) for s, w, lex in ((0, 0.5, 0.70), (1, 0.6, 0.72), (2, 0.7, 0.74))]
    m = sd.merge_dirs(runs, tmp_path / "out")
    assert m["n_seeds"] == 3 and [r["seed"] for r in m["runs"]] == [0, 1, 2]
    assert sorted(m["config_diff"]) == ["run.cache_dir", "run.run_dir", "run.seed"]
    half = T975[2] * 0.1 / math.sqrt(3)
    win = m["comparisons"]["round-2"]["win rate"]
    assert win["values"] == [0.5, 0.6, 0.7] and win["mean"] == pytest.approx(0.6)
    assert (win["lo"], win["hi"]) == (pytest.approx(0.6 - half), pytest.approx(0.6 + half))
    gain = m["comparisons"]["round-2"]["judge gain (> 0 = better)"]
    assert gain["values"] == pytest.approx([0.0, 0.1, 0.2]) and gain["sd"] == pytest.approx(0.1)
    rej = m["comparisons"]["round-2"]["reject share diff"]
    assert rej["mean"] == pytest.approx(-0.05) and rej["sd"] == pytest.approx(0.0) and rej["lo"] == pytest.approx(-0.05)
    assert m["comparisons"]["round-2"]["sWUGGY diff"]["values"] == [0.01] * 3
    lex = m["models"]["base"]["sWUGGY"]
    assert lex["values"] == [0.70, 0.72, 0.74] and lex["sd"] == pytest.approx(0.02)
    assert lex["hi"] - lex["mean"] == pytest.approx(T975[2] * 0.02 / math.sqrt(3))
    assert list(m["models"]["base"]) == ["sWUGGY", "sBLIMP", "sSC", "tSC", "judge (sense)", "auto-BLEU",
                                         "reject share"]  # counts (n_continuations) are not metrics
    assert m["models"]["round-2"]["judge (sense)"]["values"] == pytest.approx([-2.0, -1.9, -1.8])
    cal = m["calibration"]
    assert cal["true continuation beats random units"]["values"] == pytest.approx([0.95, 0.96, 0.97])
    assert cal["base sample beats random units"]["sd"] == 0.0 and cal["gate vs_random_ge_0.95 (1 = met)"]["mean"] == 1
    assert m["verdicts"] == ["unchanged", "improved", "improved"]
    md = (tmp_path / "out" / "seeds.md").read_text()
    assert "| win rate | 0.5000 | 0.6000 | 0.7000 | 3 | 0.6000 | 0.1000 | [0.3516, 0.8484] |" in md
    assert "| sWUGGY | 0.7000 | 0.7200 | 0.7400 | 3 | 0.7200 | 0.0200 | [0.6703, 0.7697] |" in md
    assert "Student t-interval" in md and "equal except run.seed" in md
    assert json.loads((tmp_path / "out" / "seeds.json").read_text()) == json.loads(json.dumps(m))


def test_one_seed_has_no_spread_and_says_na(tmp_path):
    m = sd.merge_dirs([_run(tmp_path, 3, 0.6, 0.7)], tmp_path / "out")
    assert m["comparisons"]["round-2"]["win rate"] == {"values": [0.6], "n": 1, "mean": 0.6, "sd": None,
                                                       "lo": None, "hi": None}
    assert "| win rate | 0.6000 | 1 | 0.6000 | n/a | n/a |" in (tmp_path / "out" / "seeds.md").read_text()


def test_a_config_difference_is_named_and_refused_unless_allowed(tmp_path, capsys):
    a, b = _run(tmp_path, 0, 0.5, 0.7), _run(tmp_path, 1, 0.6, 0.7, top_k=50)
    assert sd.main(["merge", str(a), str(b), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"sample.top_k: {a}=25, {b}=50" in err and "--allow-config-diff" in err
    assert not (tmp_path / "out").exists()
    assert sd.main(["merge", str(a), str(b), "--out", str(tmp_path / "out"), "--allow-config-diff"]) == 0
    assert "configs differ in sample.top_k" in capsys.readouterr().out
    md = (tmp_path / "out" / "seeds.md").read_text()
    assert "**The configs differ beyond the seed**" in md and "- `sample.top_k`: seed 0: `25`, seed 1: `50`" in md


def test_the_same_seed_twice_and_an_unfinished_run_are_refused(tmp_path):
    a = _run(tmp_path, 0, 0.5, 0.7)
    b = tmp_path / "copy"
    shutil.copytree(a, b)
    with pytest.raises(sd.MergeError, match="both have run.seed=0"):
        sd.merge_dirs([a, b], tmp_path / "out", allow_config_diff=True)
    (b / "evaluate" / "results.json").unlink()
    with pytest.raises(sd.MergeError, match="results.json not found"):
        sd.merge_dirs([a, b], tmp_path / "out")


@pytest.mark.skipif(not os.environ.get("ALIGNSLM_TEST_RUN_DIR"),
                    reason="ALIGNSLM_TEST_RUN_DIR (a finished run directory, e.g. the smoke demo's) not set")
def test_merge_a_real_run_and_a_shifted_copy(tmp_path):
    """A real run directory and a copy posing as seed +1 with its last round's win rate and base sWUGGY shifted."""
    real = Path(os.environ["ALIGNSLM_TEST_RUN_DIR"])
    runs = []
    for i, shift in enumerate((0.0, 0.1)):
        run = tmp_path / f"run-{i}"
        (run / "evaluate").mkdir(parents=True)
        cfg = yaml.safe_load((real / "config.yaml").read_text())
        cfg["run"].update(seed=cfg["run"]["seed"] + i, run_dir=str(run))
        (run / "config.yaml").write_text(yaml.safe_dump(cfg))
        res = read_json(real / "evaluate" / "results.json")
        last = sorted(res["comparisons"])[-1]
        res["comparisons"][last]["win_rate"]["mean"] += shift
        res["models"]["base"]["benchmarks"]["lexical"]["all"] += shift
        write_json(run / "evaluate" / "results.json", res)
        runs.append(run)
    assert sd.main(["merge", *map(str, runs), "--out", str(tmp_path / "out")]) == 0
    m = read_json(tmp_path / "out" / "seeds.json")
    res = read_json(real / "evaluate" / "results.json")
    w0 = res["comparisons"][last]["win_rate"]["mean"]
    win = m["comparisons"][last]["win rate"]
    assert win["values"] == pytest.approx([w0, w0 + 0.1]) and win["sd"] == pytest.approx(0.1 / math.sqrt(2))
    assert win["hi"] - win["mean"] == pytest.approx(T975[1] * 0.05)  # t * (0.1 / sqrt 2) / sqrt 2
    assert m["models"]["base"]["sWUGGY"]["sd"] == pytest.approx(0.1 / math.sqrt(2))
    judge = next(k for k in m["models"]["base"] if k.startswith("judge ("))
    assert m["models"]["base"][judge]["sd"] == 0.0  # unchanged between the copies
    assert set(m["models"]) == set(res["models"]) and m["calibration"]
