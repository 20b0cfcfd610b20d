"""Demo vocoder (units -> spectrogram -> Griffin-Lim) and the vocoder / vocode stages, on a synthetic
tone corpus: unit k is a sine at 300 + 200 k Hz, so what the vocoder learned can be checked by ear-free FFT."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from alignslm.config import load_config
from alignslm.rundir import StageContext, read_jsonl
from alignslm.vocoder import VocoderInputError, load_vocoder
from alignslm.vocoder.demo import DemoSpec, Utterance, expand, griffin_lim, train

SR, FR, K = 16000, 50.0, 6
SPF = int(SR / FR)


def tone_of(k: int) -> float:
    return 300.0 + 200.0 * k


def synth(units: list[int], durs: list[int]) -> np.ndarray:
    f = np.repeat([tone_of(u) for u in units], np.asarray(durs) * SPF)
    return (0.3 * np.sin(2 * np.pi * np.cumsum(f) / SR)).astype(np.float32)


def corpus(n: int, seed: int = 0) -> list[tuple[list[int], list[int]]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        m = int(rng.integers(4, 12))
        u = [int(rng.integers(0, K))]
        while len(u) < m:
            x = int(rng.integers(0, K))
            if x != u[-1]:
                u.append(x)
        out.append((u, [1 + (x % 3) for x in u]))  # unit k lasts 1 + k % 3 frames
    return out


def utterances(n: int, seed: int = 0) -> list[Utterance]:
    return [Utterance(u, d, (synth(u, d) * 32767).astype(np.int16), 0) for u, d in corpus(n, seed)]


@pytest.fixture(scope="module")
def vocoder():
    spec = DemoSpec(n_units=K, frame_rate=FR, dim=16, layers=1, kernel=3, gl_iters=16)
    voc, summary = train(utterances(24), utterances(6, seed=1), spec, steps=3, batch_size=4, crop=32)
    return voc, summary


def dominant_hz(x: np.ndarray) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return float(np.argmax(spec) * SR / x.size)


def test_learns_unit_spectra_and_durations(vocoder):
    voc, summary = vocoder
    assert summary["duration_model"] in ("mean", "conv") and summary["duration_mae_mean"] < 0.05
    assert voc.predict_durations([[0, 1, 2, 5]]) == [[1, 2, 3, 3]] if voc.spec.duration == "mean" else True
    for k in range(K):
        wav = voc.vocode([[k]], durations=[[10]])[0]
        assert wav.shape == (10 * SPF,)
        assert abs(dominant_hz(wav[SPF:-SPF]) - tone_of(k)) < 40, f"unit {k}"


def test_batch_equals_one_at_a_time_and_trims(vocoder, monkeypatch):
    monkeypatch.setattr("alignslm.vocoder.demo.CPU_MIN_FILL", 0.0)  # one padded batch of all 5 lengths
    voc, _ = vocoder
    units = [u for u, _ in corpus(5, seed=7)]
    batched = voc.vocode(units, batch_size=5)
    durs = voc.predict_durations(units)
    for i, u in enumerate(units):
        single = voc.vocode([u], batch_size=1)[0]
        assert batched[i].shape == (sum(durs[i]) * SPF,)
        np.testing.assert_allclose(batched[i], single, atol=1e-4, err_msg=f"item {i}")


def test_griffin_lim_padded_batch_matches_single():
    torch.manual_seed(0)
    mags = [torch.rand(n, 257) for n in (20, 33)]
    batch = torch.zeros(2, 33, 257)
    for i, m in enumerate(mags):
        batch[i, : m.shape[0]] = m
    lengths = torch.tensor([20 * 160, 33 * 160])
    out = griffin_lim(batch, lengths, 512, 160, 8)
    for i, m in enumerate(mags):
        one = griffin_lim(m[None], lengths[i:i + 1], 512, 160, 8)[0]
        torch.testing.assert_close(out[i, : one.shape[0]], one, atol=1e-4, rtol=1e-3)
        assert (out[i, one.shape[0]:] == 0).all()


def test_expand_positions():
    f, p = expand([4, 2], [3, 1])
    assert f.tolist() == [4, 4, 4, 2]
    np.testing.assert_allclose(p[:, 0], [1 / 6, 3 / 6, 5 / 6, 0.5])
    np.testing.assert_allclose(p[:, 1], np.log([3, 3, 3, 1]))


def _bad_units_then_save_load(voc, tmp_path):
    """Out-of-range and empty items are clear errors naming the item; a saved vocoder reloads identical."""
    with pytest.raises(VocoderInputError, match=r"item 1: unit id 6 is outside the embedding table \[0, 6\)"):
        voc.vocode([[1], [6]])
    with pytest.raises(VocoderInputError, match="item 0: empty"):
        voc.vocode([[]])
    voc.save(tmp_path)
    again = load_vocoder(tmp_path)
    np.testing.assert_allclose(again.vocode([[1, 2, 3]])[0], voc.vocode([[1, 2, 3]])[0], atol=1e-6)
    return again


def test_bad_units_and_save_load(vocoder, tmp_path):
    voc, _ = vocoder
    _bad_units_then_save_load(voc, tmp_path)


# --------------------------------------------------------------------------------------------------
# Stages
# --------------------------------------------------------------------------------------------------


def _world(tmp_path, n: int = 16) -> dict:
    """corpus/manifest.jsonl + tokenize/units.jsonl + tokenizer.json for the tone corpus."""
    from alignslm.speech.audio import write_wav

    (tmp_path / "corpus").mkdir()
    (tmp_path / "tokenize").mkdir()
    man, units = [], []
    for i, (u, d) in enumerate(corpus(n, seed=3)):
        p = tmp_path / "corpus" / f"u{i}.wav"
        write_wav(p, synth(u, d))
        man.append({"utt_id": f"u{i}", "path": str(p), "split": "dev" if i % 4 == 0 else "train",
                    "voice": "en-us" if i % 2 else "en"})
        units.append({"utt_id": f"u{i}", "units": u, "durations": d, "n_frames": sum(d)})
    (tmp_path / "corpus" / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in man))
    (tmp_path / "tokenize" / "units.jsonl").write_text("".join(json.dumps(r) + "\n" for r in units))
    (tmp_path / "tokenize" / "tokenizer.json").write_text(json.dumps({"frame_rate": FR, "n_units": K}))
    return {"corpus": tmp_path / "corpus", "tokenize": tmp_path / "tokenize"}


def test_vocoder_and_vocode_stages(tmp_path):
    from alignslm.stages import vocode as vocode_stage
    from alignslm.stages import vocoder as vocoder_stage

    inputs = _world(tmp_path)
    cfg = load_config(overrides=["vocoder.steps=2", "vocoder.dim=16", "vocoder.layers=1", "vocoder.gl_iters=4",
                                 "vocoder.batch_size=2"])
    assert vocoder_stage.check(cfg) == []
    ctx = StageContext(name="vocoder", cfg=cfg, run_dir=tmp_path, out=tmp_path / "vocoder", inputs=inputs,
                       progress=False)
    summary = vocoder_stage.run(ctx)
    assert summary["kind"] == "demo" and summary["train_utterances"] == 12
    meta = json.loads((tmp_path / "vocoder" / "vocoder.json").read_text())
    assert meta["kind"] == "demo" and meta["voice"] in ("en", "en-us")

    sdir = tmp_path / "round-1" / "sample"
    sdir.mkdir(parents=True)
    samples = [{"prompt_id": "u1", "utt_id": "u1", "k": 0, "continuation": [1, 2, 3], "prompt_end_s": 0.05},
               {"prompt_id": "u1", "utt_id": "u1", "k": 1, "continuation": [], "prompt_end_s": 0.05},
               {"prompt_id": "u1", "utt_id": "u1", "k": 2, "continuation": [4, 99], "prompt_end_s": 0.05},
               {"prompt_id": "u2", "utt_id": "u2", "k": 0, "continuation": [5, 0], "prompt_end_s": 0.1},
               {"prompt_id": "zz", "utt_id": "zz", "k": 0, "continuation": [5], "prompt_end_s": 0.1}]
    (sdir / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in samples))
    vctx = StageContext(name="vocode", cfg=cfg, run_dir=tmp_path, out=tmp_path / "round-1" / "vocode", round=1,
                        inputs={"sample": sdir, "vocoder": tmp_path / "vocoder", "corpus": inputs["corpus"]},
                        progress=False)
    s = vocode_stage.run(vctx)
    rows = read_jsonl(vctx.out / "audio.jsonl")
    assert [(r["prompt_id"], r["k"]) for r in rows] == [("u1", 0), ("u2", 0)] and s["continuations"] == 2
    rejects = {r["id"]: r["reason"] for r in read_jsonl(vctx.out / "rejects.jsonl")}
    assert rejects["u1/1"].startswith("empty continuation")
    assert "unit id 99" in rejects["u1/2"] and "prompt audio" in rejects["zz/0"]
    from alignslm.speech.audio import read_audio

    assert read_audio(vctx.out / rows[0]["prompt_path"]).size == 800  # 0.05 s cut from the original
    assert read_audio(vctx.out / rows[1]["path"]).size == rows[1]["seconds"] * SR


def test_vocoder_stage_hifigan_checks_unit_table(tmp_path):
    from helpers import TINY_HIFIGAN, save_hifigan, weight_normed_generator

    from alignslm.stages import vocoder as vocoder_stage

    inputs = _world(tmp_path, n=2)
    d = save_hifigan(tmp_path, TINY_HIFIGAN, weight_normed_generator(TINY_HIFIGAN))
    cfg = load_config(overrides=["vocoder.kind=hifigan", f"vocoder.path={d}"])
    assert vocoder_stage.check(cfg) == []
    ctx = StageContext(name="vocoder", cfg=cfg, run_dir=tmp_path, out=tmp_path / "vocoder", inputs=inputs,
                       progress=False)
    assert vocoder_stage.run(ctx)["n_units"] == 20
    assert load_vocoder(tmp_path / "vocoder").vocode([[1, 2]])[0].size > 0
    (inputs["tokenize"] / "tokenizer.json").write_text(json.dumps({"frame_rate": FR, "n_units": 50}))
    with pytest.raises(ValueError, match="num_embeddings=20 but the tokenizer has 50 units"):
        vocoder_stage.run(ctx)
    (tmp_path / "empty").mkdir()
    bad = load_config(overrides=["vocoder.kind=hifigan", f"vocoder.path={tmp_path}/empty"])
    assert any("generator.pt is missing" in p for p in vocoder_stage.check(bad))
    gone = load_config(overrides=["vocoder.kind=hifigan", f"vocoder.path={tmp_path}/nope"])
    assert vocoder_stage.check(gone) == []  # a path that does not exist is said once, by run.check_paths


# --------------------------------------------------------------------------------------------------
# Exemplar method
# --------------------------------------------------------------------------------------------------


def test_exemplar_longest_match_backs_off():
    from alignslm.vocoder.demo import ExemplarBank

    # bank: [-1] 1 2 3 4 [-1] 2 3 5 ; durations = 1 except the second "2 3" run lengths (4, 4)
    units = np.array([-1, 1, 2, 3, 4, -1, 2, 3, 5])
    durs = np.array([0, 1, 1, 1, 1, 0, 4, 4, 1])
    start = np.concatenate([[0], np.cumsum(durs)[:-1]]) * 2
    bank = ExemplarBank(units, durs, start, np.zeros((int(durs.sum()) * 2, 3), np.uint8), 2, 8, 512)
    n, pos = bank.longest([1, 2, 3, 4, 9])
    assert n == 4 and pos.tolist() == [1]
    n, pos = bank.longest([2, 3, 7])  # "2 3" twice; 7 never: backs off to the bigram
    assert n == 2 and pos.tolist() == [2, 6]
    assert bank.longest([7, 1])[0] == 0  # an unseen unit
    assert bank.longest([3, 5])[1].tolist() == [7]  # never across an utterance boundary: "4 -1 2" is no match
    # durations pick among occurrences: long runs -> the second "2 3"; own durations follow the median
    steps, d = bank.plan([2, 3], [4, 4])
    assert steps == [(0, 6, 2)] and d == [4, 4]
    steps, d = bank.plan([2, 3], [1, 1])
    assert steps == [(0, 2, 2)]
    # a unit never banked gets the fallback frame; the plan goes on after it
    steps, d = bank.plan([1, 2, 7, 5])
    assert [s[1] for s in steps] == [1, -1, 8] and len(d) == 4
    lm, d2 = bank.select([1, 2, 7, 5], [1, 2, 3, 1])
    assert lm.shape == (7 * 2, 3) and d2 == [1, 2, 3, 1]


@pytest.fixture(scope="module")
def exemplar_vocoder():
    spec = DemoSpec(n_units=K, frame_rate=FR, dim=16, layers=1, kernel=3, gl_iters=16, method="exemplar")
    voc, summary = train(utterances(24), utterances(6, seed=1), spec, steps=3, batch_size=4, crop=32,
                         duration="exemplar")
    return voc, summary


def test_exemplar_vocoder_tones_durations_batches(exemplar_vocoder, monkeypatch, tmp_path):
    voc, summary = exemplar_vocoder
    assert summary["duration_mae_exemplar"] == 0.0 and voc.spec.duration == "exemplar"
    assert voc.predict_durations([[0, 1, 2, 5]]) == [[1, 2, 3, 3]]
    for k in range(K):
        wav = voc.vocode([[k]], durations=[[10]])[0]
        assert wav.shape == (10 * SPF,)
        assert abs(dominant_hz(wav[SPF:-SPF]) - tone_of(k)) < 40, f"unit {k}"
    monkeypatch.setattr("alignslm.vocoder.demo.CPU_MIN_FILL", 0.0)
    units = [u for u, _ in corpus(5, seed=7)]
    batched = voc.vocode(units, batch_size=5)
    for i, u in enumerate(units):
        np.testing.assert_allclose(batched[i], voc.vocode([u], batch_size=1)[0], atol=1e-4, err_msg=f"item {i}")
    again = _bad_units_then_save_load(voc, tmp_path)
    assert again.spec.method == "exemplar"
