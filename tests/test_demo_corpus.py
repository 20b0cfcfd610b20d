"""Stages corpus and benchmarks: the demo corpus, a real manifest, the demo benchmarks read back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from alignslm.config import load_config
from alignslm.demo.corpus import assign_splits
from alignslm.demo.lexicon import vocabulary
from alignslm.demo.stories import grammatical, predict_topic
from alignslm.eval.benchdata import load_all
from alignslm.run import check_paths
from alignslm.rundir import StageContext, read_jsonl
from alignslm.stages import benchmarks as bench_stage
from alignslm.stages import corpus as corpus_stage

FIELDS = {"utt_id", "path", "text", "words", "voice", "rate", "topic", "story_id", "split", "duration",
          "sentences"}


def _ctx(tmp_path: Path, name: str, *overrides: str) -> StageContext:
    cfg = load_config(overrides=[f"run.cache_dir={tmp_path / 'cache'}", *overrides])
    return StageContext(name, cfg, tmp_path / "run", tmp_path / "run" / name, progress=False)


def test_demo_corpus_stage(tmp_path):
    ctx = _ctx(tmp_path, "corpus", "corpus.n_stories=12")
    summary = corpus_stage.run(ctx)
    assert summary["utterances"] == 12 and (summary["n_train"], summary["n_dev"], summary["n_test"]) == (10, 1, 1)
    rows = read_jsonl(ctx.out / "manifest.jsonl")
    stories = {s["story_id"]: s for s in read_jsonl(ctx.out / "stories.jsonl")}
    assert len({r["voice"] for r in rows}) >= 2 and len({r["rate"] for r in rows}) >= 2
    for r in rows:
        assert FIELDS <= set(r) and r["path"] == f"wavs/{r['utt_id']}.wav"  # relative: the run dir moves
        assert (ctx.out / r["path"]).stat().st_nlink == 1  # a copy: editing it cannot change the TTS cache
        info = sf.info(ctx.out / r["path"])
        assert (info.samplerate, info.channels) == (16000, 1)
        assert abs(info.frames / 16000 - r["duration"]) < 1e-3
        assert r["words"][-1]["end"] <= r["duration"] + 1e-6
        assert " ".join(r["sentences"]) == r["text"] == stories[r["story_id"]]["text"]
        assert r["split"] == stories[r["story_id"]]["split"] and predict_topic(r["text"]) == r["topic"]
        assert len(r["sentence_spans"]) == len(r["sentences"])
    # a rerun in a new run directory comes from the cache
    ctx2 = StageContext("corpus", ctx.cfg, tmp_path / "run2", tmp_path / "run2" / "corpus", progress=False)
    corpus_stage.run(ctx2)
    assert [r["words"] for r in read_jsonl(ctx2.out / "manifest.jsonl")] == [r["words"] for r in rows]


def test_splits_are_by_story_and_seeded():
    a = assign_splits(100, (0.8, 0.1, 0.1), seed=0)
    assert (a.count("train"), a.count("dev"), a.count("test")) == (80, 10, 10)
    assert a == assign_splits(100, (0.8, 0.1, 0.1), seed=0) != assign_splits(100, (0.8, 0.1, 0.1), seed=1)
    with pytest.raises(ValueError, match="three non-negative shares"):
        assign_splits(10, (0.5, 0.5), seed=0)


def _wav(path: Path, n: int = 8000, sr: int = 16000) -> None:
    sf.write(str(path), (0.2 * np.sin(np.arange(n) / 5)).astype(np.float32), sr)


def test_real_manifest_is_validated_with_rejects(tmp_path):
    audio = tmp_path / "audio"
    audio.mkdir()
    _wav(audio / "a.wav")
    _wav(audio / "empty.wav", n=0)
    _wav(audio / "b.wav", sr=22050)
    lines = [{"utt_id": "a", "path": "audio/a.wav", "text": "hello"},  # relative to the manifest
             {"utt_id": "gone", "path": str(audio / "missing.wav")},
             {"utt_id": "e", "path": str(audio / "empty.wav")},
             {"path": str(audio / "a.wav")},
             {"utt_id": "a", "path": str(audio / "a.wav")},
             {"utt_id": "b", "path": str(audio / "b.wav"), "split": "test",
              "words": [{"word": "x", "start": 0.0, "end": 0.1}]}]
    man = tmp_path / "man.jsonl"
    man.write_text("".join(json.dumps(x) + "\n" for x in lines))
    ctx = _ctx(tmp_path, "corpus", f"corpus.manifest={man}")
    summary = corpus_stage.run(ctx)
    rows = read_jsonl(ctx.out / "manifest.jsonl")
    assert [r["utt_id"] for r in rows] == ["a", "b"] and summary["utterances"] == 2
    assert rows[0]["path"] == str((audio / "a.wav").resolve()) and rows[0]["duration"] == 0.5
    assert rows[1]["split"] == "test" and rows[0]["split"] in ("train", "dev", "test")
    rej = read_jsonl(ctx.out / "rejects.jsonl")
    assert [r["id"] for r in rej] == ["gone", "e", f"{man}:4", "a"]
    assert "does not exist" in rej[0]["reason"] and "zero-length" in rej[1]["reason"]
    assert "missing field(s) utt_id" in rej[2]["reason"] and "duplicate" in rej[3]["reason"]
    assert corpus_stage.check(ctx.cfg) == []


def test_demo_benchmarks_stage_reads_back_through_the_loaders(tmp_path):
    ctx = _ctx(tmp_path, "benchmarks", "benchmarks.n_pairs=6", "benchmarks.voices=[en-us, en+m3]",
               "benchmarks.salmon_pairs=3", "benchmarks.prosaudit_pairs=3", "benchmarks.multispeaker_pairs=3")
    summary = bench_stage.run(ctx)
    assert summary["lexical_pairs"] == 12 and summary["ssc_pairs"] == 6 and summary["source"] == "demo"
    assert not (ctx.out / "rejects.jsonl").exists()
    info = json.loads((ctx.out / "benchmarks.json").read_text())
    assert info["root"] == "data"  # relative to the stage dir
    assert info["salmon"]["root"] == "data/salmon" and info["salmon"]["source"] == "demo"
    assert set(info["salmon"]["parts"]) == {"salmon/speaker_consistency", "salmon/bg_all_consistency",
                                            "salmon/bg_level_consistency", "salmon/rir_consistency"}
    assert "gender_consistency" in info["salmon"]["note"]  # two male voices: skipped, and the note says so
    assert summary["salmon_parts"] == 4 and summary["salmon_s"] >= 0
    assert info["prosaudit"]["root"] == "data/prosaudit" and info["prosaudit"]["pairs"] == 3
    assert "lexical part only" in info["prosaudit"]["note"] and summary["prosaudit_pairs"] == 3
    multi = info["multispeaker"]
    assert multi["root"] == "data/multispeaker" and multi["source"] == "demo"
    assert multi["pairs"] == {"ssc_multispeaker": 3, "tsc_multispeaker": 3} and "first 3 stories" in multi["note"]
    assert summary["multispeaker_pairs"] == 6 and summary["multispeaker_s"] >= 0
    root = ctx.out / "data"
    sets = load_all(root)
    assert {k: len(v.pairs) for k, v in sets.items()} == {"lexical": 12, "syntactic": 12, "ssc": 6, "tsc": 6}
    assert {p["voice"] for p in sets["lexical"].pairs} == {"en-us", "en+m3"}
    vocab = set(vocabulary())
    for p in sets["lexical"].pairs:
        assert p["word"] in vocab and p["non_word"] not in vocab and p["length"] > 0
    for p in sets["syntactic"].pairs:
        assert grammatical(p["sentence"]) and not grammatical(p["non_sentence"])
    texts = {(t["benchmark"], t["file"]): t["text"] for t in read_jsonl(root / "texts.jsonl")}
    for p in sets["tsc"].pairs:
        good, bad = texts[("tsc", p["correct_file"])], texts[("tsc", p["incorrect_file"])]
        end_good, end_bad = good.split(". ")[-1], bad.split(". ")[-1]
        assert predict_topic(good) == predict_topic(end_good) != predict_topic(end_bad)
    for p in sets["ssc"].pairs:
        good, bad = texts[("ssc", p["correct_file"])], texts[("ssc", p["incorrect_file"])]
        assert good != bad and predict_topic(bad) == predict_topic(good)
        assert good.rsplit(". ", 1)[0] == bad.rsplit(". ", 1)[0]  # same context, another ending
    assert bench_stage.check(ctx.cfg) == []
    (tmp_path / "empty").mkdir()
    real = load_config(overrides=[f"benchmarks.root={tmp_path / 'empty'}"])
    problems = bench_stage.check(real)  # the four missing sets, then the fix
    assert len(problems) == 5 and problems[-1].startswith("benchmarks.root: fix: lexical: Download the ZeroSpeech")
    multi = load_config(overrides=[f"benchmarks.multispeaker_root={tmp_path / 'empty'}"])
    assert bench_stage.check(multi)[0].startswith("benchmarks.multispeaker_root: no ssc or tsc directory")
    gone = load_config(overrides=[f"benchmarks.root={tmp_path / 'nowhere'}",
                                  f"benchmarks.multispeaker_root={tmp_path / 'nowhere'}"])
    assert bench_stage.check(gone) == []  # a root that does not exist is said once, by run.check_paths
    assert sorted(p.split(":")[0] for p in check_paths(gone)) == ["benchmarks.multispeaker_root", "benchmarks.root"]


def test_a_story_espeak_fails_on_is_a_reject(tmp_path):
    ctx = _ctx(tmp_path, "corpus", "corpus.n_stories=8", "corpus.voices=[en-us, xx-nope]")
    summary = corpus_stage.run(ctx)
    rej = read_jsonl(ctx.out / "rejects.jsonl")
    rows = read_jsonl(ctx.out / "manifest.jsonl")
    assert rej and summary["utterances"] == len(rows) == 8 - len(rej)
    assert all("no voice 'xx-nope'" in r["reason"] for r in rej)
    assert {r["voice"] for r in rows} == {"en-us"}


@pytest.mark.integration
def test_smoke_corpus_and_benchmarks_through_the_driver(tmp_path):
    """Smoke sizes through alignslm.pipeline: both stages run, rerun is skipped, the loaders read it all."""
    from alignslm.pipeline import STAGES, Step, run_step
    from alignslm.rundir import Manifest

    cfg = load_config(overrides=["run.smoke=true", f"run.run_dir={tmp_path / 'run'}",
                                 f"run.cache_dir={tmp_path / 'cache'}"])
    run_dir = Path(cfg.run.run_dir)
    man = Manifest(run_dir)
    for name in ("corpus", "benchmarks"):
        ran, summary = run_step(Step(STAGES[name], None), cfg, run_dir, man, progress=False)
        assert ran and summary["rejects"] == 0
        assert run_step(Step(STAGES[name], None), cfg, run_dir, man, progress=False)[0] is False
    rows = read_jsonl(run_dir / "corpus" / "manifest.jsonl")
    assert len(rows) == 100 and len({r["topic"] for r in rows}) == 10
    root = run_dir / "benchmarks" / json.loads((run_dir / "benchmarks" / "benchmarks.json").read_text())["root"]
    assert {k: len(v.pairs) for k, v in load_all(root).items()} == {"lexical": 60, "syntactic": 60, "ssc": 20,
                                                                     "tsc": 20}
