"""The demo's multi-speaker StoryCloze (alignslm.demo.multispeaker) and its loader, scorer and report
(alignslm.eval.multispeaker): the single-speaker layout, two voices per story, the same stories as sSC/tSC."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import read_16k_mono, tiny_lm

from alignslm.eval import multispeaker as ms
from alignslm.eval.benchdata import BenchmarkError
from alignslm.rundir import read_jsonl

VOICES = ["en-us+m2", "en-us+f4", "en-us"]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, dict]:
    pytest.importorskip("espeakng_loader")
    from alignslm.demo.multispeaker import write_demo_multispeaker

    root = tmp_path_factory.mktemp("multispeaker")
    out = write_demo_multispeaker(root / "data", n_pairs=4, seed=3, voices=VOICES, rate=175, n_topics=10,
                                  cache_dir=root / "cache")
    return root, out


def test_layout_reads_back_with_two_voices_per_story_and_the_sSC_stories(built):
    from alignslm.demo.benchmarks import cloze_texts

    root, out = built
    assert out["pairs"] == {"ssc": 4, "tsc": 4} and out["files"] == 16 and out["seconds"] >= out["tts_s"] >= 0
    sets = ms.load_multispeaker(root / "data")
    assert sorted(sets) == ["ssc_multispeaker", "tsc_multispeaker"]
    texts = {(t["benchmark"], t["file"]): t for t in read_jsonl(root / "data" / "texts.jsonl")}
    for kind in ("ssc", "tsc"):
        bs = sets[f"{kind}_multispeaker"]
        assert [p["id"] for p in bs.pairs] == ["0", "1", "2", "3"] and not bs.rejects
        single = cloze_texts(3, 4, 10, kind)  # the demo sSC/tSC of this seed: the same stories and endings
        for p, (sid, good, bad) in zip(bs.pairs, single):
            c, w = texts[(kind, p["correct_file"])], texts[(kind, p["incorrect_file"])]
            assert c["story_id"] == w["story_id"] == sid
            assert f"{c['context']} {c['ending']}" == good and f"{w['context']} {w['ending']}" == bad
            assert c["context_voice"] != c["ending_voice"] and c["ending_voice"] == w["ending_voice"]
            assert {c["context_voice"], c["ending_voice"]} <= set(VOICES)
    pairs = {(t["context_voice"], t["ending_voice"]) for t in texts.values()}
    assert len(pairs) >= 2  # drawn per story, not one fixed pair


def test_a_file_is_the_context_recording_a_pause_and_the_ending_recording(built):
    """The context part is sample-identical in both versions (continuation-only scoring needs it) and is the
    context voice's own recording; the ending is the ending voice's recording, after about PAUSE_S."""
    from alignslm.demo import multispeaker as dms
    from alignslm.demo.tts import synthesize_cached

    root, _ = built
    t = {(x["benchmark"], x["file"]): x for x in read_jsonl(root / "data" / "texts.jsonl")}
    for k in range(4):
        c = t[("ssc", f"{k}_correct")]
        head = synthesize_cached(c["context"], c["context_voice"], 175, root / "cache")
        tail = synthesize_cached(c["ending"], c["ending_voice"], 175, root / "cache")
        a, b = (read_16k_mono(root / "data" / "ssc" / f"{k}_{v}.wav", "int16") for v in ("correct", "incorrect"))
        h, e = read_16k_mono(Path(head["path"]), "int16"), read_16k_mono(Path(tail["path"]), "int16")
        assert np.array_equal(a[: len(h)], h) and np.array_equal(b[: len(h)], h)
        assert np.array_equal(a[len(a) - len(e):], e)
        gap = len(a) - len(h) - len(e)
        assert not a[len(h): len(h) + gap].any()
        pause = (len(h) / 16000 - head["words"][-1]["end"]) + gap / 16000 + tail["words"][0]["start"]
        assert pause == pytest.approx(dms.PAUSE_S, abs=2e-3) or gap == 0


def test_the_same_seed_gives_the_same_bytes(built, tmp_path):
    """A second build with a cold cache (and so fresh eSpeak runs) writes the same files."""
    from alignslm.demo.multispeaker import write_demo_multispeaker

    root, _ = built
    write_demo_multispeaker(tmp_path / "data", n_pairs=2, seed=3, voices=list(reversed(VOICES)), rate=175,
                            n_topics=10, cache_dir=tmp_path / "cache")
    for f in sorted((tmp_path / "data").rglob("*.wav")):
        assert f.read_bytes() == (root / "data" / f.relative_to(tmp_path / "data")).read_bytes(), f


def test_too_few_voices_or_pairs_is_refused():
    from alignslm.demo.multispeaker import write_demo_multispeaker

    for voices, n in ((["en-us", "en-us"], 2), (VOICES, 0)):
        with pytest.raises(ValueError, match="two different voices"):
            write_demo_multispeaker(Path("/nonexistent"), n_pairs=n, seed=0, voices=voices, rate=175, n_topics=2,
                                    cache_dir="/nonexistent")


# ---------------------------------------------------------------------------------------------- loader, scores


def _story(d: Path, sid: str, n: int = 1600) -> None:
    from alignslm.speech.audio import write_wav

    for label, f in (("correct", 220.0), ("incorrect", 330.0)):
        write_wav(d / f"{sid}_{label}.wav", 0.3 * np.sin(2 * np.pi * f * np.arange(n) / 16000))


def test_a_real_set_may_hold_one_of_the_two_and_any_case(tmp_path):
    _story(tmp_path / "real" / "sStoryCloze", "a1")
    _story(tmp_path / "real" / "sStoryCloze", "a2")
    sets = ms.load_multispeaker(tmp_path / "real")
    assert list(sets) == ["ssc_multispeaker"] and [p["id"] for p in sets["ssc_multispeaker"].pairs] == ["a1", "a2"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(BenchmarkError, match="no ssc or tsc directory") as e:
        ms.load_multispeaker(tmp_path / "empty")
    assert "benchmarks.multispeaker_root" in e.value.fix


def test_same_stories_pairs_by_story_id_with_a_bootstrap_ci():
    single = {"per_pair": [1.0, 1.0, 0.0, 1.0]}
    multi = {"per_pair": [0.0, 1.0, 0.0]}
    sp = [{"id": i} for i in ("a", "b", "c", "d")]
    mp = [{"id": i} for i in ("b", "a", "x")]  # x: not in the single-speaker set
    s = ms.same_stories(single, sp, multi, mp, n_boot=500)
    assert s["n"] == 2 and s["one_voice"] == 1.0 and s["two_voices"] == 0.5 and s["diff"] == -0.5
    assert s["lo"] == -1.0 and s["hi"] == 0.0  # two stories: the resampled means are -1, -0.5 or 0
    assert ms.same_stories(single, sp, multi, [{"id": "z"}] * 3) is None


def test_score_is_storycloze_accuracy_with_or_without_continuation_only(tmp_path):
    from alignslm.eval.benchdata import load_storycloze
    from alignslm.eval.scoring import score_storycloze, score_units

    for sid in ("0", "1", "2"):
        _story(tmp_path / "ssc", sid)
    sets = ms.load_multispeaker(tmp_path)
    lm = tiny_lm()
    rng = np.random.default_rng(0)
    units = {"ssc_multispeaker": {f: rng.integers(0, lm.n_units, 12).tolist()
                                  for f, _ in sets["ssc_multispeaker"].items}}
    both = ms.score(lm, units, sets, "mean", 4, continuation_only=True)
    plain = ms.score(lm, units, sets, "mean", 4, continuation_only=False)
    assert set(both) == {"ssc_multispeaker", "ssc_multispeaker_continuation"} and set(plain) == {"ssc_multispeaker"}
    ref = score_storycloze(load_storycloze(tmp_path, "ssc").pairs, score_units(lm, units["ssc_multispeaker"], "mean"))
    assert plain["ssc_multispeaker"]["all"] == ref["all"] == both["ssc_multispeaker"]["all"]
    assert plain["ssc_multispeaker"]["seconds"] >= 0 and both["ssc_multispeaker_continuation"]["seconds"] >= 0


def test_report_table_and_protocol_line():
    same = {"n": 4, "one_voice": 0.75, "two_voices": 0.5, "diff": -0.25, "lo": -0.5, "hi": 0.0}
    b = {"ssc": {"all": 0.75, "n_pairs": 4}, "ssc_multispeaker": {"all": 0.5, "n_pairs": 4, "same_stories": same}}
    results = {"models": {"base": {"benchmarks": b}, "round-1": {"benchmarks": {"ssc": {"all": 0.5}}}},
               "multispeaker": {"note": "demo: two voices"},
               "protocol": {"multispeaker": {"pairs": {"ssc_multispeaker": 4}, "source": "demo", "note": "demo: x",
                                             "continuation_only": True}}}
    md = ms.report_table(results, label=str)
    assert "| model | sSC one voice | sSC multi-speaker | same stories: diff [95% CI] |" in md
    assert "| base | 75.0 | 50.0 | -25.0 [-50.0, +0.0] (n=4) |" in md and "| round-1 | 50.0 | n/a | n/a |" in md
    assert "sSC 4 one-voice / 4 multi-speaker pairs" in md and "Source: demo: two voices." in md
    line = ms.protocol_line(results)
    assert "ssc_multispeaker: 4 pairs" in line and "continuation only" in line
    empty = {"models": {"base": {"benchmarks": {}}}, "multispeaker": {"note": "not measured (why)"}}
    assert ms.report_table(empty) == "not measured (why)\n"
    assert json.dumps(ms.protocol_line({"protocol": {}})) == json.dumps("- Multi-speaker sSC / tSC: not measured.")
