"""The demo's mini ProsAudit (lexical part, alignslm.demo.prosaudit): the layout, a pause that moves and
nothing else, determinism."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from alignslm.demo import prosaudit as dp
from alignslm.eval.prosaudit import load_prosaudit

pytest.importorskip("espeakng_loader")
VOICES = ["en-us+m2", "en-us+f4", "en-us"]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pa")
    dp.write_demo_prosaudit(root / "data", n_pairs=4, seed=2, voices=VOICES, rate=175, n_topics=10,
                            cache_dir=root / "cache")
    return root / "data"


def _silence(x: np.ndarray) -> tuple[int, int]:
    """(start, end) of the longest run of exact zeros."""
    z = np.concatenate([[0], (x == 0).astype(int), [0]])
    edges = np.flatnonzero(np.diff(z))
    runs = list(zip(edges[::2], edges[1::2]))
    return max(runs, key=lambda r: r[1] - r[0])


def test_lexical_pairs_read_back_through_the_prosaudit_loader(built):
    bs = load_prosaudit(built, "dev")
    assert len(bs.pairs) == 4 and {p["type"] for p in bs.pairs} == {"lexical"} and not bs.rejects
    assert {p["voice"] for p in bs.pairs} <= set(VOICES)
    for p in bs.pairs:
        assert "|" in p["sentence"] and "(|)" in p["non_sentence"]


def test_the_two_stimuli_differ_only_in_where_the_same_pause_is(built):
    bs = load_prosaudit(built, "dev")
    n_pause = int(dp.PAUSE_S * 16000)
    fade = int(dp.FADE_S * 16000)
    for p in bs.pairs:
        good, _ = sf.read(p["correct_path"], dtype="int16")
        bad, _ = sf.read(p["incorrect_path"], dtype="int16")
        assert len(good) == len(bad)
        (g0, g1), (b0, b1) = _silence(good), _silence(bad)
        assert g1 - g0 >= n_pause and b1 - b0 >= n_pause and abs(g0 - b0) > 800  # moved by > 50 ms
        g = np.delete(good, np.arange(g0, g0 + n_pause)).astype(int)
        b = np.delete(bad, np.arange(b0, b0 + n_pause)).astype(int)
        keep = np.ones(len(g), bool)
        for c0, c1 in ((g0, g1), (b0, b1)):  # the 5 ms fades on both sides of what is left of the zero run
            keep[max(0, c0 - fade - 2): c1 - n_pause + fade + 2] = False
        assert np.array_equal(g[keep], b[keep])


def test_the_inner_pause_falls_inside_a_word_and_the_other_between_words(built):
    rows = list(csv.DictReader(open(built / "english" / "dev" / "gold.csv")))
    good = [r for r in rows if r["correct"] == "1"]
    bad = [r for r in rows if r["correct"] == "0"]
    for g, b in zip(good, bad):
        gw, bw = g["transcription"].split(), b["transcription"].split()
        assert "|" in gw and " ".join(w for w in gw if w != "|") == " ".join(w.replace("(|)", "") for w in bw)
        word = next(w for w in bw if w.endswith("(|)"))[:-3]
        assert dp.syllables(word) >= 2
        k = gw.index("|")
        assert word in (gw[k - 1], gw[k + 1])  # the natural pause is at an edge of the split word


def test_rebuilding_with_another_cache_gives_the_same_bytes(built, tmp_path):
    dp.write_demo_prosaudit(tmp_path / "data", n_pairs=4, seed=2, voices=VOICES, rate=175, n_topics=10,
                            cache_dir=tmp_path / "cache")
    for f in sorted((built / "english" / "dev").iterdir()):
        assert f.read_bytes() == (tmp_path / "data" / "english" / "dev" / f.name).read_bytes(), f.name


def test_syllables_and_cut_points():
    assert dp.syllables("strawberries") == 3 and dp.syllables("cook") == 1 and dp.syllables("table") == 2
    x = np.ones(16000)
    x[4960:5120] = 0.01  # a quiet 10 ms frame (frame 31)
    assert dp.quietest(x, 0.2, 0.5) == 4960 + 80
    words = [{"word": "a", "start": 0.0, "end": 0.3}, {"word": "b", "start": 0.33, "end": 0.6}]
    assert dp.boundary_cut(x, words, 1, before=True) == 5040
    assert dp.syllable_cut(x, {"start": 0.2, "end": 0.4}) == 5040
