"""The demo world is a function of run.seed: two cold builds in separate processes (each with an empty
run.cache_dir) give byte-identical corpus audio, benchmark audio, units and quantizer.

The second build first speaks an unrelated sentence in every voice and uses a pool of two synthesis workers:
before alignslm.demo.tts loaded a fresh eSpeak per utterance, that history alone changed most wavs.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("espeakng_loader")

SIZES = ["run.smoke=true", "corpus.n_stories=60", "corpus.n_topics=3", "benchmarks.n_pairs=4",
         "benchmarks.n_topics=3", "tokenize.n_units=20", "tokenize.fit_iters=4"]

DRIVER = textwrap.dedent("""
    import sys
    from alignslm.demo import tts
    if sys.argv[1] == "history":  # speak something first: eSpeak's carried state would leak into the world
        for v in ("en-us", "en-us+m2", "en-us+f4"):
            tts.synthesize("An unrelated sentence, spoken first.", v, 150)
    from alignslm.run import main
    for stage in ("corpus", "benchmarks", "tokenize"):
        if main(sys.argv[2:] + ["--stage", stage, "--quiet"]) != 0:
            sys.exit(f"stage {stage} failed")
""")


def _build(tmp: Path, name: str, history: bool) -> Path:
    run_dir, cache = tmp / name / "run", tmp / name / "cache"
    args = [sys.executable, "-c", DRIVER, "history" if history else "plain",
            f"run.run_dir={run_dir}", f"run.cache_dir={cache}", "run.device=cpu", *SIZES]
    r = subprocess.run(args, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return run_dir


def _digests(run_dir: Path) -> dict[str, str]:
    """relative path -> sha1 of every artifact that makes the world (audio, units, quantizer)."""
    files = [*(run_dir / "corpus" / "wavs").glob("*.wav"), *(run_dir / "benchmarks").rglob("*.wav"),
             run_dir / "tokenize" / "quantizer.npy", run_dir / "tokenize" / "units.jsonl"]
    return {str(f.relative_to(run_dir)): hashlib.sha1(f.read_bytes()).hexdigest() for f in files}


@pytest.mark.integration
def test_two_cold_builds_give_the_same_world(tmp_path):
    a = _digests(_build(tmp_path, "a", history=False))
    b = _digests(_build(tmp_path, "b", history=True))
    assert len(a) > 60 and any("benchmarks" in k for k in a)
    assert a.keys() == b.keys()
    differ = sorted(k for k in a if a[k] != b[k])
    assert not differ, f"{len(differ)} of {len(a)} artifacts differ, e.g. {differ[:5]}"


def test_same_utterance_after_other_speech_is_identical():
    """The in-process part of the above, fast: an utterance does not depend on what was spoken before."""
    from alignslm.demo import tts

    text = "The cook washes the red pan."
    first = {v: tts.synthesize(text, v, 170).audio for v in ("en-us", "en-us+m2", "en-us+f4")}
    tts.synthesize("A farmer feeds the hungry goats before the rain.", "en-us+m3", 185)
    for v, ref in first.items():
        again = tts.synthesize(text, v, 170).audio
        assert again.shape == ref.shape and (again == ref).all(), v


def test_breath_voices_are_flagged():
    from alignslm.demo import tts

    assert not tts.voice_is_reproducible("en-us+f2")
    assert tts.voice_is_reproducible("en-us+f4") and tts.voice_is_reproducible("en-us")
