"""``python -m alignslm.data``: LibriSpeech, MLS and a folder of wavs + transcripts, built here in those layouts,
turned into a manifest the corpus stage accepts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from alignslm.data import DataError, build_manifest, read_alignments
from alignslm.rundir import read_jsonl

ROOT = Path(__file__).resolve().parents[1]


def _audio(path: Path, seconds: float, fmt: str = "FLAC") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    x = 0.2 * np.sin(np.arange(int(16000 * seconds)) / 9.0).astype(np.float32)
    sf.write(str(path), x, 16000, format=fmt)


def _librispeech(root: Path) -> None:
    ch = root / "train-clean-100" / "19" / "198"
    _audio(ch / "19-198-0000.flac", 2.0)
    _audio(ch / "19-198-0001.flac", 1.5)
    (ch / "19-198.trans.txt").write_text("19-198-0000 NORTHANGER ABBEY\n19-198-0001 THE CAT SAT\n"
                                         "19-198-0002 NO AUDIO FOR THIS ONE\n")


def test_librispeech_with_alignments(tmp_path):
    _librispeech(tmp_path / "LibriSpeech")
    al = tmp_path / "align" / "19" / "198"
    al.mkdir(parents=True)
    (al / "19-198.alignment.txt").write_text('19-198-0000 ",NORTHANGER,ABBEY," "0.490,1.200,1.800,2.000"\n')
    out = tmp_path / "manifest.jsonl"
    rep = build_manifest("librispeech", tmp_path / "LibriSpeech" / "train-clean-100", out, tmp_path / "align")
    rows = read_jsonl(out)
    assert [r["utt_id"] for r in rows] == ["19-198-0000", "19-198-0001"]
    assert rows[0]["text"] == "northanger abbey" and rows[0]["speaker"] == "19" and rows[0]["duration"] == 2.0
    assert rows[0]["words"] == [{"word": "northanger", "start": 0.49, "end": 1.2},
                                {"word": "abbey", "start": 1.2, "end": 1.8}]
    assert "words" not in rows[1] and Path(rows[1]["path"]).is_absolute()
    assert rep["skipped"] == {"no audio file": 1} and rep["with_word_times"] == 1
    assert "1 of 2 utterances have no word times" in rep["prompt_cut"]


def test_mls_and_cli_report(tmp_path):
    split = tmp_path / "mls_english" / "train"
    _audio(split / "audio" / "4800" / "10003" / "4800_10003_000000.flac", 3.0)
    _audio(split / "audio" / "4800" / "10003" / "4800_10003_000001.flac", 1.0)
    (split / "transcripts.txt").write_text("4800_10003_000000\tcountry dances are\n4800_10003_000001\tand so\n")
    out = tmp_path / "m.jsonl"
    r = subprocess.run([sys.executable, "-m", "alignslm.data", "mls", str(split), str(out)], capture_output=True,
                       text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "2 utterances" in r.stdout and "ASR transcript of the cut prompt" in r.stdout
    rows = read_jsonl(out)
    assert rows[0] == {"utt_id": "4800_10003_000000", "path": str(split / "audio/4800/10003/4800_10003_000000.flac"),
                       "text": "country dances are", "speaker": "4800", "duration": 3.0}
    r = subprocess.run([sys.executable, "-m", "alignslm.data", "mls", str(tmp_path), str(out)], capture_output=True,
                       text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 2 and "transcripts.txt not found" in r.stderr and "Traceback" not in r.stderr


def test_folder_with_textgrid_alignments_feeds_the_corpus_stage(tmp_path):
    from alignslm.config import load_config
    from alignslm.rundir import StageContext
    from alignslm.stages.corpus import load_manifest

    _audio(tmp_path / "wavs" / "anna" / "a.wav", 2.0, "WAV")
    (tmp_path / "wavs" / "anna" / "a.txt").write_text("Anna washed the pan.\n")
    _audio(tmp_path / "wavs" / "bob" / "b.wav", 1.0, "WAV")
    tg = tmp_path / "tg" / "anna__a.TextGrid"
    tg.parent.mkdir()
    tg.write_text('File type = "ooTextFile"\nitem [1]:\n    name = "words"\n    intervals [1]:\n'
                  '        xmin = 0.0\n        xmax = 0.3\n        text = ""\n    intervals [2]:\n'
                  '        xmin = 0.3\n        xmax = 0.71\n        text = "Anna"\n'
                  'item [2]:\n    name = "phones"\n    intervals [1]:\n        xmin = 0.3\n        xmax = 0.4\n'
                  '        text = "AE1"\n')
    assert read_alignments(tmp_path / "tg") == {"anna__a": [{"word": "anna", "start": 0.3, "end": 0.71}]}
    out = tmp_path / "f.jsonl"
    build_manifest("folder", tmp_path / "wavs", out, tmp_path / "tg")
    rows = read_jsonl(out)
    assert [(r["utt_id"], r["speaker"], r["text"]) for r in rows] == [("anna__a", "anna", "Anna washed the pan."),
                                                                      ("bob__b", "bob", "")]
    cfg = load_config(overrides=[f"corpus.manifest={out}"])
    ctx = StageContext(name="corpus", cfg=cfg, run_dir=tmp_path, out=tmp_path / "corpus", progress=False)
    got = load_manifest(out, cfg.corpus.split, ctx)
    assert len(got) == 2 and got[0]["words"] == rows[0]["words"] and ctx.rejects.count == 0
    with pytest.raises(DataError, match="no audio files"):
        build_manifest("folder", tmp_path / "tg", tmp_path / "x.jsonl")
    assert json.loads(out.read_text().splitlines()[0])["duration"] == 2.0


def test_a_manifest_whose_audio_is_mostly_missing_fails_the_corpus_stage(tmp_path):
    from alignslm.config import load_config
    from alignslm.pipeline import STAGES, StageFailed, Step, run_step
    from alignslm.rundir import Manifest

    _audio(tmp_path / "a.flac", 1.0)
    rows = [{"utt_id": "a", "path": str(tmp_path / "a.flac")}, {"utt_id": "b", "path": "b.flac"},
            {"utt_id": "c", "path": "c.flac"}]  # relative paths that resolve nowhere
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = tmp_path / "run"
    cfg = load_config(overrides=[f"corpus.manifest={tmp_path / 'm.jsonl'}", f"run.run_dir={run}"])
    with pytest.raises(StageFailed, match=r"stage corpus: 2 of 3 items failed \(rejects by reason: bad audio: 2\)"):
        run_step(Step(STAGES["corpus"], None), cfg, run, Manifest(run), progress=False)
    assert not Manifest(run).entry("corpus")["finished"]
    ok = load_config(overrides=[f"corpus.manifest={tmp_path / 'm.jsonl'}", f"run.run_dir={run}",
                                "run.max_failed_share=0.7"])
    ran, summary = run_step(Step(STAGES["corpus"], None), ok, run, Manifest(run), progress=False)
    assert ran and summary["utterances"] == 1 and summary["items_failed"] == 2
