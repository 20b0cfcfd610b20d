"""eSpeak NG through ctypes: 16 kHz audio, word times from word events, voices, rates, the cache."""

from __future__ import annotations

import re

import numpy as np
import pytest
import soundfile as sf

from alignslm.demo import tts

TEXT = "The cook washes the red pan. Now the pan is clean."


def _rms(x: np.ndarray, t0: float, t1: float) -> float:
    seg = x[int(t0 * 16000): int(t1 * 16000)]
    return float(np.sqrt(np.mean(seg ** 2))) if seg.size else 0.0


def test_synthesis_has_word_times_within_the_audio():
    u = tts.synthesize(TEXT, "en-us", 165)
    assert u.audio.dtype == np.float32 and u.audio.ndim == 1
    assert 2.0 < u.duration < 6.0
    assert [w["word"] for w in u.words] == re.findall(r"[A-Za-z]+", TEXT)
    starts = [w["start"] for w in u.words]
    assert starts == sorted(starts) and len(set(starts)) == len(starts)
    for w in u.words:
        assert 0.0 <= w["start"] < w["end"] <= u.duration + 1e-6
    for a, b in zip(u.words, u.words[1:]):
        assert a["end"] <= b["start"] + 1e-6
    # the pause between the sentences lies between "pan" and "Now", and it is quiet
    pan, now = u.words[5], u.words[6]
    assert now["start"] - pan["end"] > 0.08
    assert _rms(u.audio, pan["end"] + 0.01, now["start"] - 0.01) < 0.1 * _rms(u.audio, pan["start"], pan["end"])


@pytest.mark.parametrize("voice", ["en-us", "en", "en-us+f3", "en+m3"])
def test_voices_differ(voice):
    u = tts.synthesize("The farmer feeds the goat.", voice, 165)
    ref = tts.synthesize("The farmer feeds the goat.", "en-us", 165)
    assert len(u.words) == 5
    if voice != "en-us":
        assert u.audio.shape != ref.audio.shape or not np.allclose(u.audio, ref.audio)


def test_rate_changes_duration():
    slow = tts.synthesize(TEXT, "en-us", 130)
    fast = tts.synthesize(TEXT, "en-us", 200)
    assert slow.duration > 1.25 * fast.duration


def test_cache_is_keyed_by_text_voice_rate_and_reused(tmp_path):
    a = tts.synthesize_cached(TEXT, "en", 150, tmp_path)
    assert not a["cached"]
    info = sf.info(a["path"])
    assert (info.samplerate, info.channels) == (16000, 1)
    b = tts.synthesize_cached(TEXT, "en", 150, tmp_path)
    assert b["cached"] and b["path"] == a["path"] and b["words"] == a["words"]
    c = tts.synthesize_cached(TEXT, "en", 180, tmp_path)
    d = tts.synthesize_cached(TEXT, "en+m3", 150, tmp_path)
    assert len({a["path"], c["path"], d["path"]}) == 3
    assert tts.cache_key(TEXT, "en", 150) != tts.cache_key(TEXT + " ", "en", 150)
    rows = tts.synthesize_many([(TEXT, "en", 150), ("Tom nods.", "en", 150)], tmp_path)
    assert [r["cached"] for r in rows] == [True, False]


def test_unknown_voice_is_a_clear_error():
    with pytest.raises(tts.TTSError, match="no voice 'xx-nonexistent'"):
        tts.synthesize("hello", "xx-nonexistent", 165)


def test_phonemes():
    assert tts.engine().phonemes("cat", ipa=True) == "kˈæt"
    assert tts.engine().phonemes("cat", ipa=True, voice="en") == "kˈat"
    assert tts.engine().phonemes("cat") == "k'at"


def test_words_espeak_joins_get_interpolated_times():
    u = tts.synthesize("Tom is in the kitchen.", "en-us", 165)
    assert [w["word"] for w in u.words] == ["Tom", "is", "in", "the", "kitchen"]
    assert [bool(w.get("approx")) for w in u.words] == [False, False, False, True, False]
    assert u.words[2]["start"] < u.words[3]["start"] < u.words[4]["start"]
