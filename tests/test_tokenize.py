"""Tokenizer and the tokenize stage: dedup invariants, k-means round trips, determinism, rejects, resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from alignslm.config import Config, replace
from alignslm.rundir import StageContext, read_jsonl, write_jsonl
from alignslm.speech.encoders import LogMelEncoder
from alignslm.speech.quantizer import Quantizer
from alignslm.speech.tokenizer import Tokenizer, TokenizerError, dedup, feature_scale, load_tokenizer
from alignslm.stages import tokenize as stage


def speechlike(n: int, seed: int) -> np.ndarray:
    """Harmonic tone with a wandering pitch and a syllable-rate envelope: (n,) float32 at 16 kHz."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000
    phase = 2 * np.pi * np.cumsum(120 + 60 * rng.random() + 30 * np.sin(2 * np.pi * rng.random() * t)) / 16000
    x = sum(rng.random() / k * np.sin(k * phase) for k in range(1, 8))
    env = 0.5 + 0.5 * np.sin(2 * np.pi * (3 + 2 * rng.random()) * t) ** 2
    return (0.3 * x * env + 0.01 * rng.standard_normal(n)).astype(np.float32)


# ---------------------------------------------------------------------------------------------- dedup


@pytest.mark.parametrize("seq", [[], [3], [1, 1, 1], [0, 1, 0, 1], [5, 5, 2, 2, 2, 5, 1, 1]])
def test_dedup_examples(seq):
    u, d = dedup(seq)
    assert d.sum() == len(seq)
    assert np.array_equal(np.repeat(u, d), np.asarray(seq, dtype=np.int64))
    assert not np.any(u[1:] == u[:-1])
    assert (d >= 1).all()


def test_dedup_random_invariants():
    rng = np.random.default_rng(0)
    for _ in range(200):
        seq = rng.integers(0, rng.integers(1, 6), size=rng.integers(1, 60))
        u, d = dedup(seq)
        assert d.sum() == seq.size and (d >= 1).all()
        assert not np.any(u[1:] == u[:-1])
        assert np.array_equal(np.repeat(u, d), seq)
    assert dedup([2, 2, 7])[0].tolist() == [2, 7] and dedup([2, 2, 7])[1].tolist() == [2, 1]


# ---------------------------------------------------------------------------------------------- tokenizer


def test_tokenizer_same_audio_same_units_and_dim_check():
    enc = LogMelEncoder()
    wavs = [speechlike(16000 + 700 * i, i) for i in range(4)]
    X = np.concatenate(enc.encode(wavs))
    rng = np.random.default_rng(0)
    tok = Tokenizer(enc, Quantizer(X[rng.choice(len(X), 12, replace=False)]))
    a, b = tok.encode(wavs), tok.encode(wavs)
    for (ua, da), (ub, db), w in zip(a, b, wavs):
        assert np.array_equal(ua, ub) and np.array_equal(da, db)
        assert da.sum() == enc.n_frames(w.size)
    with pytest.raises(TokenizerError, match="dimension 7 does not match"):
        Tokenizer(enc, Quantizer(np.zeros((4, 7), np.float32)))


# ---------------------------------------------------------------------------------------------- the stage


def write_corpus(root, n=6, bad=True) -> list[dict]:
    """A manifest of synthetic utterances, plus one of each kind of bad audio when ``bad``."""
    (root / "corpus" / "wav").mkdir(parents=True)
    rows = []
    for i in range(n):
        p = root / "corpus" / "wav" / f"u{i}.wav"
        sf.write(p, speechlike(12000 + 3000 * i, i), 16000)
        rows.append({"utt_id": f"u{i}", "path": str(p), "split": "train" if i < n - 1 else "test"})
    if bad:
        w = root / "corpus" / "wav"
        (w / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunk")
        sf.write(w / "empty.wav", np.zeros(0, np.float32), 16000)
        sf.write(w / "silent.wav", np.zeros(16000, np.float32), 16000)
        nan = speechlike(16000, 9)
        nan[100] = np.nan
        sf.write(w / "nan.wav", nan, 16000, subtype="FLOAT")
        sf.write(w / "tiny.wav", speechlike(200, 9), 16000)
        for name in ["corrupt", "empty", "silent", "nan", "tiny", "missing"]:
            rows.append({"utt_id": name, "path": str(w / f"{name}.wav"), "split": "train"})
    write_jsonl(root / "corpus" / "manifest.jsonl", rows)
    return rows


def make_ctx(root, **over) -> StageContext:
    base = {"tokenize.encoder": "logmel", "tokenize.n_units": 8, "tokenize.fit_iters": 4,
            "tokenize.shard_size": 4, "tokenize.batch_size": 3}
    cfg = replace(Config(), **{**base, **over})
    return StageContext(name="tokenize", cfg=cfg, run_dir=root, out=root / "tokenize",
                        inputs={"corpus": root / "corpus"}, progress=False)


def test_stage_units_rejects_and_reload(tmp_path):
    rows = write_corpus(tmp_path)
    summary = stage.run(make_ctx(tmp_path))
    out = read_jsonl(tmp_path / "tokenize" / "units.jsonl")
    assert [r["utt_id"] for r in out] == [f"u{i}" for i in range(6)]
    rejects = {r["id"]: r["reason"] for r in read_jsonl(tmp_path / "tokenize" / "rejects.jsonl")}
    assert set(rejects) == {"corrupt", "empty", "silent", "nan", "tiny", "missing"}
    assert "zero-length" in rejects["empty"] and "silence" in rejects["silent"] and "NaN" in rejects["nan"]
    assert "corrupt" in rejects["corrupt"] and "too short" in rejects["tiny"]
    assert summary["utterances"] == 6 and summary["rejected_total"] == 6 and summary["n_units"] == 8
    tok = load_tokenizer(tmp_path / "tokenize")
    assert tok.frame_rate == 50.0 and tok.n_units == 8 and tok.dedup
    for r, row in zip(out, rows):
        assert set(r) == {"utt_id", "units", "durations", "n_frames", "encoder", "quantizer"}
        assert sum(r["durations"]) == r["n_frames"] and all(a != b for a, b in zip(r["units"], r["units"][1:]))
        assert r["quantizer"] == tok.quantizer_id and r["encoder"] == tok.encoder.name
        (u, d), = tok.encode([sf.read(row["path"], dtype="float32")[0]])
        assert u.tolist() == r["units"] and d.tolist() == r["durations"]  # load_tokenizer reproduces the stage
    assert tok.encoder.norm == "cepstra" and tok.encoder.dim == 19  # the demo default (tokenize.norm)
    assert tok.scale is not None and tok.scale.shape == (19,)  # standardize is on by default
    meta = json.loads((tmp_path / "tokenize" / "quantizer.json").read_text())
    assert meta["k"] == 8 and meta["dim"] == 19


def test_stage_is_deterministic_and_resumes(tmp_path):
    write_corpus(tmp_path, n=9, bad=False)
    stage.run(make_ctx(tmp_path))
    first = (tmp_path / "tokenize" / "units.jsonl").read_text()
    shards = sorted((tmp_path / "tokenize" / "shards").iterdir())
    assert len(shards) == 3
    # a killed run: the last shard and the merge are missing; the rerun redoes only them
    shards[-1].unlink()
    (tmp_path / "tokenize" / "units.jsonl").unlink()
    mtime0 = shards[0].stat().st_mtime_ns
    stage.run(make_ctx(tmp_path))
    assert (tmp_path / "tokenize" / "units.jsonl").read_text() == first
    assert shards[0].stat().st_mtime_ns == mtime0
    # a fresh run directory with the same seed gives the same quantizer and units
    other = tmp_path / "again"
    write_corpus(other, n=9, bad=False)
    stage.run(make_ctx(other))
    again = read_jsonl(other / "tokenize" / "units.jsonl")
    assert [r["units"] for r in again] == [r["units"] for r in read_jsonl(tmp_path / "tokenize" / "units.jsonl")]


def test_redone_shards_list_their_rejects_once(tmp_path):
    """A crash after a shard's rejects were written but before the shard file: the redo must not list
    them twice (rejects.jsonl is idempotent per item)."""
    write_corpus(tmp_path)  # 6 good, then 6 bad rows; shards of 4: the bad ones are in shards 1 and 2
    first = stage.run(make_ctx(tmp_path))
    assert first["rejected_total"] == 6
    out = tmp_path / "tokenize"
    for sh in sorted((out / "shards").iterdir())[1:]:
        sh.unlink()
    (out / "units.jsonl").unlink()
    ctx = make_ctx(tmp_path)
    summary = stage.run(ctx)
    ids = [r["id"] for r in read_jsonl(out / "rejects.jsonl")]
    assert sorted(ids) == sorted({"corrupt", "empty", "silent", "nan", "tiny", "missing"})
    assert summary["rejected_total"] == 6 and ctx.rejects.summary()["rejects"] == 6
    assert len(read_jsonl(out / "units.jsonl")) == 6


def test_stage_dedup_off_keeps_frames(tmp_path):
    write_corpus(tmp_path, n=3, bad=False)
    stage.run(make_ctx(tmp_path, **{"tokenize.dedup": False, "tokenize.standardize": False}))
    for r in read_jsonl(tmp_path / "tokenize" / "units.jsonl"):
        assert len(r["units"]) == r["n_frames"] and set(r["durations"]) == {1}
    assert json.loads((tmp_path / "tokenize" / "tokenizer.json").read_text())["feature_scale"] is None
    assert load_tokenizer(tmp_path / "tokenize").scale is None


def test_feature_scale_standardises_and_is_applied_before_assign():
    rng = np.random.default_rng(0)
    X = (rng.standard_normal((500, 4)) * [1, 10, 0.1, 3]).astype(np.float32)
    s = feature_scale(X)
    np.testing.assert_allclose((X * s).std(0), 1, rtol=1e-4)
    enc = LogMelEncoder()
    w = speechlike(16000, 1)
    f = enc.encode([w])[0]
    C = f[:6] * 3.0
    tok = Tokenizer(enc, Quantizer(C), dedup=False, scale=np.full(80, 3.0, np.float32))
    assert tok.encode([w])[0][0].tolist() == Quantizer(C).assign(f * 3.0).tolist()
    with pytest.raises(TokenizerError, match="feature scale"):
        Tokenizer(enc, Quantizer(C), scale=np.ones(3, np.float32))


def test_joblib_kmeans_round_trip(tmp_path):
    joblib = pytest.importorskip("joblib")
    from sklearn.cluster import KMeans

    write_corpus(tmp_path, n=4, bad=False)
    enc = LogMelEncoder(norm="cepstra")  # the stage's default features
    wavs = [sf.read(r["path"], dtype="float32")[0] for r in read_jsonl(tmp_path / "corpus" / "manifest.jsonl")]
    feats = enc.encode(wavs)
    km = KMeans(n_clusters=10, n_init=1, random_state=0).fit(np.concatenate(feats))
    joblib.dump(km, tmp_path / "km.bin")
    with pytest.raises(PermissionError, match="trust_pickle"):
        stage.run(make_ctx(tmp_path, **{"tokenize.quantizer": str(tmp_path / "km.bin")}))
    assert not (tmp_path / "tokenize" / "units.jsonl").exists()
    stage.run(make_ctx(tmp_path, **{"tokenize.quantizer": str(tmp_path / "km.bin"), "tokenize.trust_pickle": True}))
    out = read_jsonl(tmp_path / "tokenize" / "units.jsonl")
    for r, f in zip(out, feats):
        u, d = dedup(km.predict(f))
        assert r["units"] == u.tolist() and r["durations"] == d.tolist()
    tok = load_tokenizer(tmp_path / "tokenize")  # saved as plain .npy: reloading needs no pickle
    np.testing.assert_array_equal(tok.quantizer.centroids, km.cluster_centers_.astype(np.float32))


def test_dim_mismatch_fails_before_any_work(tmp_path, monkeypatch):
    write_corpus(tmp_path, n=2, bad=True)
    np.save(tmp_path / "q.npy", np.zeros((16, 384), np.float32))  # a whisper-sized quantizer
    calls = []
    monkeypatch.setattr(stage, "read_audio", lambda *a, **k: calls.append(a))
    with pytest.raises(TokenizerError, match="dimension 384 does not match encoder logmel"):
        stage.run(make_ctx(tmp_path, **{"tokenize.quantizer": str(tmp_path / "q.npy")}))
    assert calls == []
    assert not (tmp_path / "tokenize" / "rejects.jsonl").exists()
    assert not (tmp_path / "tokenize" / "shards").exists()


def test_check_reports_config_problems(tmp_path):
    (tmp_path / "km.bin").write_bytes(b"x")
    cfg = replace(Config(), **{"tokenize.encoder": "hubert", "tokenize.quantizer": str(tmp_path / "km.bin")})
    problems = " ".join(stage.check(cfg))
    assert "encoder_path" in problems and "trust_pickle" in problems
    assert stage.check(Config()) == []


def test_stage_whisper_default_encoder(tmp_path):
    write_corpus(tmp_path, n=3, bad=False)
    summary = stage.run(make_ctx(tmp_path, **{"tokenize.encoder": "whisper"}))
    assert summary["utterances"] == 3 and summary["frame_rate"] == 50.0
    tok = load_tokenizer(tmp_path / "tokenize")
    assert tok.encoder.dim == 384 and json.loads((tmp_path / "tokenize" / "tokenizer.json").read_text())[
        "encoder_path"] is None
