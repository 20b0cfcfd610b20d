"""The demo's mini SALMon (alignslm.demo.salmon): the released layout, honest switches, determinism."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import read_16k_mono

from alignslm.demo import salmon as ds
from alignslm.eval.salmon import load_salmon

pytest.importorskip("espeakng_loader")
VOICES = ["en-us+m2", "en-us+f4", "en-us"]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("salmon")
    out = ds.write_demo_salmon(root / "data", n_pairs=4, seed=3, voices=VOICES, rate=175, n_topics=10,
                               cache_dir=root / "cache")
    return root / "data", out


def test_layout_reads_back_through_the_official_loader(built):
    root, out = built
    assert out["parts"] == {p: 4 for p in ds.PARTS} and out["skipped"] == {} and out["files"] == 40
    sets = load_salmon(root)
    assert sorted(sets) == sorted(f"salmon/{p}" for p in ds.PARTS)
    for bs in sets.values():
        assert [p["correct_file"] for p in bs.pairs] == [f"sample_{i}_0" for i in range(4)]
        assert not bs.rejects
    meta = json.loads((root / "gender_consistency" / "metadata.json").read_text())
    assert [m["index"] for m in meta] == [0, 1, 2, 3]
    for m in meta:  # male <-> female, either direction
        assert {ds.voice_gender(v) for v in m["voices"]} == {"male", "female"}
    for m in json.loads((root / "speaker_consistency" / "metadata.json").read_text()):
        a, b = m["voices"]
        assert a != b and ds.voice_gender(a) == ds.voice_gender(b) == "male"
    for m in json.loads((root / "bg_all_consistency" / "metadata.json").read_text()):
        assert m["noise"][0] != m["noise"][1] and m["snr_db"][0] == m["snr_db"][1]
    for m in json.loads((root / "bg_level_consistency" / "metadata.json").read_text()):
        assert m["noise"][0] == m["noise"][1] and abs(m["snr_db"][0] - m["snr_db"][1]) == pytest.approx(15)
    for m in json.loads((root / "rir_consistency" / "metadata.json").read_text()):
        r1, r2 = (r["rt60_s"] for r in m["rooms"])
        assert max(r1, r2) / min(r1, r2) >= 2


@pytest.mark.parametrize("part", ds.PARTS)
def test_positive_and_negative_agree_before_the_cut_and_differ_after(built, part):
    root, _ = built
    for m in json.loads((root / part / "metadata.json").read_text()):
        pos, neg = (read_16k_mono(root / part / f"sample_{m['index']}_{i}.wav") for i in (0, 1))
        cut = m["cut_s"][0] if isinstance(m["cut_s"], list) else m["cut_s"]
        before = int((cut - 0.03) * 16000)  # the crossfade starts at most 10 ms before the cut
        assert np.array_equal(pos[:before], neg[:before])
        after = int((cut + 0.03) * 16000)
        n = min(len(pos), len(neg))
        assert np.abs(pos[after:n] - neg[after:n]).mean() > 1e-3


def test_rebuilding_with_another_cache_gives_the_same_bytes(built, tmp_path):
    root, _ = built
    ds.write_demo_salmon(tmp_path / "data", n_pairs=4, seed=3, voices=VOICES, rate=175, n_topics=10,
                         cache_dir=tmp_path / "cache")
    for part in ds.PARTS:
        for f in sorted((root / part).iterdir()):
            assert f.read_bytes() == (tmp_path / "data" / part / f.name).read_bytes(), f"{part}/{f.name}"


def test_another_seed_gives_other_samples(built, tmp_path):
    root, _ = built
    ds.write_demo_salmon(tmp_path / "d", n_pairs=1, seed=4, voices=VOICES, rate=175, n_topics=10,
                         cache_dir=tmp_path / "cache")
    assert (root / "rir_consistency" / "sample_0_0.wav").read_bytes() != \
        (tmp_path / "d" / "rir_consistency" / "sample_0_0.wav").read_bytes()


def test_parts_that_the_voices_cannot_make_are_skipped_with_the_reason(tmp_path):
    out = ds.write_demo_salmon(tmp_path / "d", n_pairs=1, seed=0, voices=["en-us+f4", "en-us"], rate=175,
                               n_topics=10, cache_dir=tmp_path / "cache")
    assert "two voices of one gender" in out["skipped"]["speaker_consistency"]
    assert "gender_consistency" in out["parts"] and not (tmp_path / "d" / "speaker_consistency").exists()


def test_noises_are_unit_rms_deterministic_and_differently_coloured():
    def spectrum_share_below(x: np.ndarray, hz: float) -> float:
        p = np.abs(np.fft.rfft(x)) ** 2
        f = np.fft.rfftfreq(len(x), 1 / 16000)
        return float(p[f < hz].sum() / p.sum())

    n = 16000
    for kind in ds.NOISES:
        a = ds.noise(kind, n, np.random.default_rng(1))
        assert np.sqrt(np.mean(a**2)) == pytest.approx(1.0, rel=1e-6)
        assert np.array_equal(a, ds.noise(kind, n, np.random.default_rng(1)))
    low = {k: spectrum_share_below(ds.noise(k, n, np.random.default_rng(2)), 500) for k in ds.NOISES}
    assert low["rumble"] > 0.99 and low["hiss"] < 0.01 and low["brown"] > low["pink"] > low["white"]
    with pytest.raises(ValueError, match="unknown noise"):
        ds.noise("rain", n, np.random.default_rng(0))


def test_room_ir_has_the_direct_path_the_drr_and_the_decay():
    h = ds.room_ir(0.5, 3.0, 0.01, np.random.default_rng(0))
    assert len(h) == int(0.51 * 16000) and h[0] > 0.9
    tail = h[1:]
    assert 10 * np.log10(1.0 / np.sum(tail**2)) == pytest.approx(3.0, abs=0.2)
    t = np.arange(len(h)) / 16000
    early, late = np.sum(h[(t > 0.01) & (t < 0.1)] ** 2), np.sum(h[t > 0.4] ** 2)
    assert 10 * np.log10(early / late) > 30  # 60 dB per 0.5 s: the last 0.1 s is far below the first
